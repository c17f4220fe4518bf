"""MMEarth QGIS plugin: the ``mmearth`` Processing provider.

Loading the plugin imports only QGIS, the standard library and ``mpmae_core``'s torch-free parts
(registry and runtime). Heavy packages (onnxruntime) are imported inside the algorithms that need
them, so QGIS always loads the plugin and the algorithms say what is missing.
"""

import sys
from pathlib import Path


def _ensure_core_importable() -> None:
    """Make ``mpmae_core`` importable: installed, vendored in the plugin zip, or the dev checkout."""
    try:
        import mpmae_core  # noqa: F401
        return
    except ImportError:
        pass
    here = Path(__file__).resolve().parent
    for candidate in (here / "vendor", here.parent):
        if (candidate / "mpmae_core" / "__init__.py").is_file():
            sys.path.insert(0, str(candidate))
            return


_ensure_core_importable()


def classFactory(iface):  # noqa: N802 - QGIS's name
    from .plugin import MMEarthPlugin

    return MMEarthPlugin(iface)
