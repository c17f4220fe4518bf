"""mmearth:compare_features - which features map this place best? Every feature source on the labels."""

from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputString,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorLayer,
)

from .base import InferenceAlgorithm


class CompareFeaturesAlgorithm(InferenceAlgorithm):
    LABELS = "LABELS"
    CLASS_FIELD = "CLASS_FIELD"
    VALIDATION = "VALIDATION"
    REFERENCE_FIELD = "REFERENCE_FIELD"
    REPORT = "REPORT"
    TABLE = "TABLE"
    BEST = "BEST"

    def name(self):
        return "compare_features"

    def displayName(self):  # noqa: N802
        return "Compare feature sources"

    def shortHelpString(self):  # noqa: N802
        return (
            "Which features map this place best? Every feature source the input offers (the Sentinel-2 spectra, "
            "MMEarth's encoder, another model's embedding such as AlphaEarth or TESSERA, their combinations, and "
            "a series' temporal features) is given the same self-choosing head on the same labels. The table "
            "shows each one's cross-validated balanced accuracy, grouped by labelled feature and in spatial "
            "blocks. With a validation sample ('Validation sample design', its points given their reference "
            "class), each source's head is also assessed at those points with the sample's own stratified "
            "design, so every source is judged on the same points: that figure, not the cross-validation, says "
            "which map is better. The input may be another model's embedding read alone (no model)."
        )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.add_model_parameters(embedding_alone=True)
        self.add_label_parameters(self.LABELS, self.CLASS_FIELD)
        self.addParameter(QgsProcessingParameterVectorLayer(
            self.VALIDATION, "Validation sample (points with their reference class; from 'Validation sample "
            "design')", [QgsProcessing.TypeVectorPoint], optional=True))
        self.addParameter(QgsProcessingParameterString(
            self.REFERENCE_FIELD, "Field of the validation points' reference classes", "reference"))
        self.addParameter(QgsProcessingParameterFileDestination(
            self.REPORT, "Comparison table", "HTML files (*.html)"))
        self.addParameter(QgsProcessingParameterFileDestination(
            self.TABLE, "Comparison table as CSV", "CSV files (*.csv)", optional=True, createByDefault=False))
        self.add_series_parameters()
        self.add_other_embedding_parameters()
        self.add_advanced_parameters()
        self.addOutput(QgsProcessingOutputString(self.BEST, "The best feature source, and by which figure"))

    def process(self, parameters, context, feedback):
        from mpmae_core.runtime.heads.compare import compare_features

        source = self.raster_source(parameters, self.INPUT, context)
        model, alone = self.encoder_or_alone(parameters, context, source, feedback)
        features, names, ids = self.class_labels(parameters, context, feedback, self.source_crs(source))
        validation = None
        if parameters.get(self.VALIDATION):
            layer = self.parameterAsVectorLayer(parameters, self.VALIDATION, context)
            if layer is None or layer.providerType() != "ogr":
                raise QgsProcessingException("The validation sample must be a file layer (the GeoPackage "
                                             "'Validation sample design' wrote).")
            validation = layer.source().split("|")[0]
        report = self.parameterAsFileOutput(parameters, self.REPORT, context)
        table = self.parameterAsFileOutput(parameters, self.TABLE, context) if parameters.get(self.TABLE) else None
        opts = self.inference_options(parameters, context)
        source, series = self.series_source(parameters, context, source)
        other = alone or self.other_embedding(parameters, context)
        feedback.pushInfo(f"{len(features)} labelled features in {len(names)} classes: {', '.join(names)}")
        res = self.run_guarded(lambda **kw: compare_features(
            source, model, features, names, validation=validation,
            reference_field=self.parameterAsString(parameters, self.REFERENCE_FIELD, context) or "reference",
            report=report, table=table, feature_ids=ids, **opts, **series, **other,
            **kw), feedback)
        for line in res["text"].splitlines():
            feedback.pushInfo(line)
        results = {self.REPORT: report, self.BEST: res["best"]}
        if table:
            results[self.TABLE] = table
        return results
