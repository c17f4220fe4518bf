"""Which layers of a project can feed a model, and marking the plugin's own outputs (QGIS only)."""

from qgis.core import QgsProject, QgsRasterLayer

OUTPUT_PROPERTY = "mmearth/output"


def can_feed(layer) -> bool:
    """A raster layer that may feed a model: GDAL, at least three bands (RGB models take three), and
    not one of this plugin's outputs (a preview, a confidence, a class map)."""
    return (isinstance(layer, QgsRasterLayer) and layer.isValid() and layer.providerType() == "gdal"
            and layer.bandCount() >= 3 and not layer.customProperty(OUTPUT_PROPERTY, False))


def can_be_a_date(layer) -> bool:
    """A layer that may be another date of a Sentinel-2 series: one that can feed a model and holds a
    sensor's bands, not features (another model's embedding, an embedding or feature raster)."""
    if not can_feed(layer):
        return False
    from mpmae_core.runtime.io.embeddings import features_not_bands
    from mpmae_core.runtime.io.gdal_io import RasterError, open_raster

    try:
        ds = open_raster(layer.source())
    except RasterError:
        return False
    return features_not_bands(ds, layer.source()) is None


def mark_output(layer):
    layer.setCustomProperty(OUTPUT_PROPERTY, True)
    return layer


def first_feeding_layer(prefer=None):
    """``prefer`` when it can feed a model, else the first project layer that can (in layer-tree order)."""
    if can_feed(prefer):
        return prefer
    for layer in QgsProject.instance().layerTreeRoot().layerOrder():
        if can_feed(layer):
            return layer
    return None
