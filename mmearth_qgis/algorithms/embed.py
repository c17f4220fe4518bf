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
    PER_PIXEL = "PER_PIXEL"

    def name(self):
        return "embed"

    def displayName(self):  # noqa: N802
        return "Compute embeddings"

    def shortHelpString(self):  # noqa: N802
        return (
            "Runs an MMEarth encoder (an .onnx model exported with its metadata) over a Sentinel-2 raster and "
            "writes its embeddings: one band per feature, one pixel per patch (16 x 16 px = 160 m), or per pixel "
            "with 'Upsample'. With 'Per-pixel features' it writes instead, for every 10 m pixel, the features a "
            "few-shot head uses: the pixel's normalised bands and every encoder stage upsampled to it (612 bands "
            "for an atto encoder; reuse them in 'Train few-shot head' or in other tools). Bands are matched by "
            "name; the raster is processed in overlapping tiles, so any size works. Pixels without data give "
            "no-data embeddings. Needs onnxruntime, not torch."
        )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.add_model_parameters()
        self.add_area_parameters()
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, "Embeddings"))
        self.add_advanced_parameters()
        for p in (QgsProcessingParameterBoolean(self.UPSAMPLE, "Upsample embeddings to pixels", False),
                  QgsProcessingParameterBoolean(self.PER_PIXEL, "Per-pixel features (spectra and every encoder "
                                                "stage, as few-shot heads use them)", False),
                  QgsProcessingParameterEnum(self.DTYPE, "Data type", DTYPES, defaultValue=0)):
            p.setFlags(p.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
            self.addParameter(p)

    def process(self, parameters, context, feedback):
        from mpmae_core.runtime.inference.predict import embed, features

        source = self.raster_source(parameters, self.INPUT, context)
        model = self.model_path(parameters, self.MODEL, context)
        out = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        opts = self.inference_options(parameters, context)
        opts["aoi"] = self.area_of_interest(parameters, context, feedback, source)
        if self.parameterAsBool(parameters, self.PER_PIXEL, context):
            res = self.run_guarded(lambda **kw: features(
                source, model, out, dtype=DTYPES[self.parameterAsEnum(parameters, self.DTYPE, context)], **opts, **kw),
                feedback)
            blocks = ", ".join(f"{n} ({c})" for n, c, _ in res["blocks"])
            feedback.pushInfo(f"{res['bands']} per-pixel feature bands ({blocks}), {res['width']} x {res['height']} px; "
                              f"{res['run']} tiles run, {res['skipped']} empty tiles skipped, on {res['provider']}")
            return {self.OUTPUT: out}
        res = self.run_guarded(lambda **kw: embed(
            source, model, out, upsample=self.parameterAsBool(parameters, self.UPSAMPLE, context),
            dtype=DTYPES[self.parameterAsEnum(parameters, self.DTYPE, context)], **opts, **kw), feedback)
        self.style_on_load(context, out)
        feedback.pushInfo(f"{res['bands']} embedding bands, {res['width']} x {res['height']} cells; {res['run']} tiles "
                          f"run, {res['skipped']} empty tiles skipped, on {res['provider']}")
        return {self.OUTPUT: out}
