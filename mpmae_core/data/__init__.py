"""MMEarth data: the embedded real sample (``sample``); readers and loaders come with torch lazily."""
