"""Files in and out, knowing nothing of models: safe outputs (``files``), GDAL (``gdal_io``),
what a raster holds (``inspect``), label files (``labels``), QGIS styles (``styles``) and
preview pictures (``preview``)."""
