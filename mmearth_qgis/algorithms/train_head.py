"""mmearth:train_head - a raster, labelled points or polygons and an encoder -> a few-shot head (ONNX)."""

from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
)

from .base import InferenceAlgorithm


def class_order(values) -> list:
    """Distinct class values in a stable, natural order: numbers numerically, otherwise by text."""
    distinct = {str(v).strip(): v for v in values}
    try:
        return sorted(distinct, key=float)
    except ValueError:
        return sorted(distinct, key=str.casefold)


class TrainHeadAlgorithm(InferenceAlgorithm):
    LABELS = "LABELS"
    CLASS_FIELD = "CLASS_FIELD"
    OUTPUT = "OUTPUT"
    REPORT = "REPORT"
    REGULARISATION = "REGULARISATION"
    ACCURACY = "ACCURACY"
    BALANCED_ACCURACY = "BALANCED_ACCURACY"

    def name(self):
        return "train_head"

    def displayName(self):  # noqa: N802
        return "Train few-shot head"

    def shortHelpString(self):  # noqa: N802
        return (
            "Trains a landcover head from a handful of labelled points or polygons: the encoder embeds the raster "
            "(or 'Precomputed embeddings' are reused), the embeddings under each label are collected (a point: its "
            "160 m cell; a polygon: the cells it covers) and a linear classifier is fitted, as in the MMEarth "
            "paper's linear probe (LayerNorm, then a linear layer). The report gives the samples per class, "
            "cross-validated per-class accuracy (folds grouped by labelled feature, so cells of one polygon never "
            "test themselves) and the confusion matrix. The head is saved as an .onnx file for 'Landcover map'. "
            "Labels in another CRS are reprojected; labels outside the raster are skipped with a warning; each "
            "class needs at least 2 labelled features and there must be at least 2 classes."
        )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.add_model_parameters()
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.LABELS, "Labelled points or polygons",
            [QgsProcessing.TypeVectorPoint, QgsProcessing.TypeVectorPolygon]))
        self.addParameter(QgsProcessingParameterField(self.CLASS_FIELD, "Class field", parentLayerParameterName=self.LABELS))
        self.addParameter(QgsProcessingParameterFileDestination(self.OUTPUT, "Few-shot head", "ONNX model (*.onnx)"))
        self.addParameter(QgsProcessingParameterFileDestination(
            self.REPORT, "Report", "HTML files (*.html)", optional=True, createByDefault=True))
        self.add_embeddings_parameter()
        p = QgsProcessingParameterNumber(self.REGULARISATION, "L2 regularisation", QgsProcessingParameterNumber.Double,
                                         0.01, minValue=0.0)
        p.setFlags(p.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(p)
        self.add_advanced_parameters()
        self.addOutput(QgsProcessingOutputNumber(self.ACCURACY, "Cross-validated accuracy"))
        self.addOutput(QgsProcessingOutputNumber(self.BALANCED_ACCURACY, "Cross-validated balanced accuracy"))

    def process(self, parameters, context, feedback):
        from mpmae_core.runtime.fewshot import train_head

        source = self.raster_source(parameters, self.INPUT, context)
        embeddings = self.embeddings_source(parameters, context)
        model = self.model_path(parameters, self.MODEL, context)
        field = self.parameterAsString(parameters, self.CLASS_FIELD, context)
        if not field:
            raise QgsProcessingException("Choose the class field of the labels (CLASS_FIELD).")
        labelled = self.features_in(parameters, self.LABELS, context, feedback, self.grid_crs(parameters, context),
                                    class_field=field)
        names = class_order(v for _, v, _ in labelled)
        index = {n: i for i, n in enumerate(names)}
        features = [(wkb, index[str(v).strip()]) for wkb, v, _ in labelled]
        out = self.parameterAsFileOutput(parameters, self.OUTPUT, context)
        report = self.parameterAsFileOutput(parameters, self.REPORT, context) if parameters.get(self.REPORT) else ""
        opts = self.inference_options(parameters, context)
        feedback.pushInfo(f"{len(features)} labelled features in {len(names)} classes: {', '.join(names)}")
        res = self.run_guarded(lambda **kw: train_head(
            source, model, features, names, out, embeddings=embeddings, report_path=report or None,
            feature_ids=[fid for _, _, fid in labelled],
            l2=self.parameterAsDouble(parameters, self.REGULARISATION, context), **opts, **kw), feedback)
        for line in res["text"].splitlines():
            feedback.pushInfo(line)
        results = {self.OUTPUT: out, self.ACCURACY: res["cv"]["accuracy"],
                   self.BALANCED_ACCURACY: res["cv"]["balanced_accuracy"]}
        if report:
            results[self.REPORT] = report
        return results
