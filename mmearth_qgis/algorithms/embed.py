"""mmearth:embed - a raster and a model -> an embedding raster."""

from qgis.core import (
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterRasterDestination,
)

from .base import InferenceAlgorithm

DTYPES = ["float32", "float16"]


class EmbedAlgorithm(InferenceAlgorithm):
    OUTPUT = "OUTPUT"
    UPSAMPLE = "UPSAMPLE"
    DTYPE = "DTYPE"

    def name(self):
        return "embed"

    def displayName(self):  # noqa: N802
        return "Compute embeddings"

    def shortHelpString(self):  # noqa: N802
        return (
            "Runs an MMEarth encoder (an .onnx model exported with its metadata) over a Sentinel-2 raster and "
            "writes its embeddings: one band per feature, one pixel per patch (16 x 16 px = 160 m), or per pixel "
            "with 'Upsample'. Bands are matched by name; the raster is processed in overlapping, blended tiles, "
            "so any size works. Pixels without data give no-data embeddings. Needs onnxruntime, not torch."
        )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.add_model_parameters()
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, "Embeddings"))
        self.add_advanced_parameters()
        for p in (QgsProcessingParameterBoolean(self.UPSAMPLE, "Upsample embeddings to pixels", False),
                  QgsProcessingParameterEnum(self.DTYPE, "Data type", DTYPES, defaultValue=0)):
            p.setFlags(p.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
            self.addParameter(p)

    def process(self, parameters, context, feedback):
        from mpmae_core.runtime.predict import embed

        source = self.raster_source(parameters, self.INPUT, context)
        model = self.model_path(parameters, self.MODEL, context)
        out = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        opts = self.inference_options(parameters, context)
        res = self.run_guarded(lambda **kw: embed(
            source, model, out, upsample=self.parameterAsBool(parameters, self.UPSAMPLE, context),
            dtype=DTYPES[self.parameterAsEnum(parameters, self.DTYPE, context)], **opts, **kw), feedback)
        self.style_on_load(context, out)
        feedback.pushInfo(f"{res['bands']} embedding bands, {res['width']} x {res['height']} cells; {res['run']} tiles "
                          f"run, {res['skipped']} empty tiles skipped, on {res['provider']}")
        return {self.OUTPUT: out}
