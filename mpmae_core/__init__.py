"""mpmae_core: MMEarth multi-pretext masked autoencoders, data pipeline and inference runtime.

Importing this package (or ``mpmae_core.registry`` / ``mpmae_core.runtime``) must stay cheap and
torch-free: the QGIS plugin imports it inside QGIS, where torch is not available.
"""

__version__ = "0.1.0"
