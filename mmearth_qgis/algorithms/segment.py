"""mmearth:segment - a raster, a model and a head (or the model's own landcover head) -> a class map."""

from qgis.core import QgsProcessingParameterRasterDestination

from .base import InferenceAlgorithm, model_parameter


class SegmentAlgorithm(InferenceAlgorithm):
    HEAD = "HEAD"
    MODEL_PARAMS = ("MODEL", "HEAD")
    OUTPUT = "OUTPUT"
    PROBABILITIES = "PROBABILITIES"

    def name(self):
        return "segment"

    def displayName(self):  # noqa: N802
        return "Landcover map (segment)"

    def shortHelpString(self):  # noqa: N802
        return (
            "Produces a class map from a Sentinel-2 raster: either with an encoder and a head trained on it (for "
            "instance a few-shot head from 'Train few-shot head'), or with a segmenter model that carries its own "
            "landcover head (e.g. ESA WorldCover, exported with `python -m training.export CKPT --head "
            "esa_worldcover`). The class map carries the class names and colours; 255 marks pixels without data. "
            "Optionally writes one probability band per class. With other dates of the same place, the input and "
            "those dates are a series, mapped by a head trained on that series (its temporal features: medians, "
            "percentiles and spread over the cloud-free dates). The input may also be another model's embedding "
            "(AlphaEarth, TESSERA) read alone, mapped by a head trained on it alone: no model is used then."
        )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.add_model_parameters(embedding_alone=True)
        self.addParameter(model_parameter(self.HEAD, "Head (by name or .onnx file; leave empty for a segmenter model)",
                                          optional=True))
        self.add_area_parameters()
        self.add_series_parameters()
        self.add_other_embedding_parameters()
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, "Class map"))
        self.addParameter(QgsProcessingParameterRasterDestination(
            self.PROBABILITIES, "Class probabilities", optional=True, createByDefault=False))
        self.add_advanced_parameters()

    def process(self, parameters, context, feedback):
        from mpmae_core.runtime.inference.predict import segment

        source = self.raster_source(parameters, self.INPUT, context)
        model, alone = self.encoder_or_alone(parameters, context, source, feedback)
        head_value = self.parameterAsString(parameters, self.HEAD, context)
        head = self.model_path(parameters, self.HEAD, context, "head") if head_value else None
        out = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        probs = self.parameterAsOutputLayer(parameters, self.PROBABILITIES, context) \
            if parameters.get(self.PROBABILITIES) else None
        opts = self.inference_options(parameters, context)
        opts["aoi"] = self.area_of_interest(parameters, context, feedback, source)
        source, series = self.series_source(parameters, context, source)
        other = alone or self.other_embedding(parameters, context)
        res = self.run_guarded(lambda **kw: segment(source, model, out, head_path=head, probabilities_path=probs,
                                                    **opts, **series, **other, **kw), feedback)
        feedback.pushInfo(f"classes: {', '.join(res['classes'])}; {res['run']} tiles run, {res['skipped']} empty "
                          f"tiles skipped, on {res['provider']}")
        self.style_on_load(context, out)
        results = {self.OUTPUT: out}
        if probs:
            results[self.PROBABILITIES] = probs
        return results
