"""mmearth:similarity - a raster, an encoder and a few query points -> a similarity map."""

from qgis.core import (
    QgsProcessing,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterRasterDestination,
)

from .base import InferenceAlgorithm

AGGREGATES = ["max", "mean"]


class SimilarityAlgorithm(InferenceAlgorithm):
    QUERY = "QUERY"
    AGGREGATE = "AGGREGATE"
    OUTPUT = "OUTPUT"

    def name(self):
        return "similarity"

    def displayName(self):  # noqa: N802
        return "Similarity map"

    def shortHelpString(self):  # noqa: N802
        return (
            "Finds places that look like a few examples: the encoder embeds the raster (or 'Precomputed embeddings' "
            "are reused) and every 160 m cell gets the cosine similarity of its embedding to the embeddings at the "
            "query points or polygons, after centring on the scene's mean embedding (1 = same, 0 = unrelated). With "
            "several queries, 'max' keeps the best match and 'mean' compares with their average. Queries in another "
            "CRS are reprojected; queries outside the raster are skipped with a warning. The input may also be another "
            "model's embedding (AlphaEarth, TESSERA): no model is used then, and the map is at its own 10 m cells."
        )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.add_model_parameters(embedding_alone=True)
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.QUERY, "Query points or polygons", [QgsProcessing.TypeVectorPoint, QgsProcessing.TypeVectorPolygon]))
        self.addParameter(QgsProcessingParameterEnum(self.AGGREGATE, "Several queries", AGGREGATES, defaultValue=0))
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, "Similarity"))
        self.add_embeddings_parameter()
        self.add_advanced_parameters()

    def process(self, parameters, context, feedback):
        from mpmae_core.runtime.inference.similarity import similarity

        source = self.raster_source(parameters, self.INPUT, context)
        embeddings = self.embeddings_source(parameters, context)
        model, _ = self.encoder_or_alone(parameters, context, source, feedback)
        if model is None:  # another model's embedding: the input is the embedding
            source, embeddings = None, source
        queries = [wkb for wkb, _, _ in self.features_in(parameters, self.QUERY, context, feedback,
                                                        self.grid_crs(parameters, context))]
        out = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        opts = self.inference_options(parameters, context)
        aggregate = AGGREGATES[self.parameterAsEnum(parameters, self.AGGREGATE, context)]
        res = self.run_guarded(lambda **kw: similarity(source, model, queries, out, embeddings=embeddings,
                                                       aggregate=aggregate, **opts, **kw), feedback)
        feedback.pushInfo(f"{res['queries']} query cell(s); similarity from {res['min']:.2f} to {res['max']:.2f}")
        self.style_on_load(context, out)
        return {self.OUTPUT: out}
