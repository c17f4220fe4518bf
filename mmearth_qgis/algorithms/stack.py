"""mmearth:stack - a Sentinel-2 product as the one 10 m stack the model sees, to look at."""

from qgis.core import QgsProcessingException, QgsProcessingParameterRasterDestination, QgsProcessingParameterRasterLayer

from .base import InferenceAlgorithm, product_value


class StackAlgorithm(InferenceAlgorithm):
    OUTPUT = "OUTPUT"

    def name(self):
        return "stack"

    def displayName(self):  # noqa: N802
        return "Stack a Sentinel-2 product (what the model sees)"

    def group(self):
        return "Inputs"

    def groupId(self):  # noqa: N802
        return "inputs"

    def shortHelpString(self):  # noqa: N802
        return (
            "Writes a Sentinel-2 product (a SAFE .zip, .SAFE folder or MTD_MSIL1C.xml / MTD_MSIL2A.xml, a STAC item, "
            "or a folder of band files) as one 10 m stack, its bands by name in product order; the 20 m and 60 m "
            "bands by nearest neighbour, as the model was trained. A .tif output is a Cloud-Optimised GeoTIFF with a "
            "last band MASK: 1 where the masks make a pixel no data (the product's cloud mask and the mask options), "
            "0 elsewhere. A .vrt output is a few kilobytes pointing at the product's own files. Both are styled in "
            "natural colour, and can be cut to an area of interest."
        )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(
            self.INPUT, "Sentinel-2 product (a SAFE .zip, folder or MTD xml, a STAC item, a band folder)"))
        self.add_area_parameters()
        self.addParameter(QgsProcessingParameterRasterDestination(
            self.OUTPUT, "Stack (.tif: a COG with the MASK band; .vrt: pointing at the product)"))
        self.add_mask_parameters()

    def process(self, parameters, context, feedback):
        from mpmae_core.runtime.io.stack import write_stack

        product = product_value(parameters.get(self.INPUT))
        if not product:
            raise QgsProcessingException(
                f"{parameters.get(self.INPUT)!r} is not a Sentinel-2 product: give a SAFE .zip, .SAFE folder or "
                "MTD_MSIL1C.xml / MTD_MSIL2A.xml, a STAC item, or a folder of band files (a stacked raster is "
                "already a stack).")
        out = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        cog = not out.lower().endswith(".vrt")
        if cog and not out.lower().endswith((".tif", ".tiff")):
            raise QgsProcessingException(f"The stack '{out}' must be a .tif (a COG) or a .vrt.")
        aoi = self.area_of_interest(parameters, context, feedback, self.raster_source(parameters, self.INPUT, context))
        res = write_stack(product, out, cog=cog, aoi=aoi, masks=self.mask_options(parameters, context),
                          log=feedback.pushInfo)
        feedback.pushInfo(f"bands {', '.join(res['bands'])}; level {res['level'].upper() or 'unknown'}")
        self.style_on_load(context, out)
        return {self.OUTPUT: out}
