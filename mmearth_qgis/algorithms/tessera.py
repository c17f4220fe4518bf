"""mmearth:tessera_tile - a GeoTessera tile (.npy, its _scales.npy and landmask) as a GeoTIFF layer."""

from qgis.core import QgsProcessingException, QgsProcessingParameterFile, QgsProcessingParameterRasterDestination

from .base import MMEarthAlgorithm, error_message


class TesseraTileAlgorithm(MMEarthAlgorithm):
    INPUT = "INPUT"
    OUTPUT = "OUTPUT"

    def name(self):
        return "tessera_tile"

    def displayName(self):  # noqa: N802
        return "Open a TESSERA embedding tile"

    def group(self):
        return "Inputs"

    def groupId(self):  # noqa: N802
        return "inputs"

    def shortHelpString(self):  # noqa: N802
        return (
            "Turns a GeoTessera tile as it is downloaded (grid_LON_LAT.npy: int8 values; grid_LON_LAT_scales.npy: "
            "one float scale per pixel; its landmask GeoTIFF beside it or in landmasks/, which carries the tile's "
            "UTM grid) into a float32 GeoTIFF of 128 bands, each value its int8 times its pixel's scale, and no "
            "data where the scale is 0 or not finite. QGIS cannot open .npy files; the GeoTIFF is a layer like any "
            "other: 'Train few-shot head' and 'Landcover map' read it alone (no model) or beside a Sentinel-2 "
            "raster, and 'Similarity search' finds places like a point in it."
        )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterFile(self.INPUT, "TESSERA tile (.npy, or its _scales.npy)",
                                                     fileFilter="NumPy arrays (*.npy)"))
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, "Embedding (GeoTIFF)"))

    def process(self, parameters, context, feedback):
        from mpmae_core.runtime.inference.embedding_sources import write_tessera_tile
        from mpmae_core.runtime.io.embeddings import inspect_embedding

        path = self.parameterAsFile(parameters, self.INPUT, context)
        if not path:
            raise QgsProcessingException("Choose the tile's .npy file (INPUT).")
        out = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        try:
            for line in inspect_embedding(path) or []:
                feedback.pushInfo(line)
            write_tessera_tile(path, out)
        except (ValueError, OSError) as exc:
            raise QgsProcessingException(error_message(exc)) from None
        return {self.OUTPUT: out}
