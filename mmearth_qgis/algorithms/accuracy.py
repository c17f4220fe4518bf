"""mmearth:sample_design and mmearth:assess - a map's accuracy from a validation sample it did not choose."""

from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
)

from .base import MMEarthAlgorithm

GROUP, GROUP_ID = "Accuracy and area", "accuracy"
DESIGNS = ["stratified", "simple"]


class _Accuracy(MMEarthAlgorithm):
    def group(self):
        return GROUP

    def groupId(self):  # noqa: N802
        return GROUP_ID

    def map_path(self, parameters, context) -> str:
        layer = self.parameterAsRasterLayer(parameters, "MAP", context)
        if layer is None or not layer.isValid():
            raise QgsProcessingException(f"Could not load the class map {parameters.get('MAP')!r}.")
        if layer.providerType() != "gdal":
            raise QgsProcessingException(f"The class map '{layer.name()}' is not a file GDAL reads: save it as a "
                                         "GeoTIFF first.")
        return layer.source()

    def vector_path(self, parameters, name, context, feedback) -> str:
        """A file OGR reads for a vector parameter (QGIS writes a temporary copy of layers that are not one)."""
        return self.parameterAsCompatibleSourceLayerPath(parameters, name, context, ["gpkg", "shp", "geojson"],
                                                         "gpkg", feedback)


class SampleDesignAlgorithm(_Accuracy):
    OUTPUT = "OUTPUT"

    def name(self):
        return "sample_design"

    def displayName(self):  # noqa: N802
        return "Validation sample design"

    def shortHelpString(self):  # noqa: N802
        return (
            "Draws a stratified random sample of validation points from a class map, the strata being its classes "
            "(Olofsson et al. 2014): the size from a target standard error of the overall accuracy (their eq. 13) "
            "and an anticipated user's accuracy, every class at least a minimum, the rest in proportion to area; "
            "optionally away from the training labels. Writes a GeoPackage whose layer 'validation' has an empty "
            "'reference' field: fill it in (from the scene, or better imagery), then run 'Accuracy and area'. Its "
            "table 'design' lists the strata, their pixels, weights and sample sizes."
        )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer("MAP", "Class map"))
        self.addParameter(QgsProcessingParameterNumber("TARGET_SE", "Target standard error of overall accuracy",
                                                       QgsProcessingParameterNumber.Double, 0.01, minValue=0.001,
                                                       maxValue=0.5))
        self.addParameter(QgsProcessingParameterNumber("USERS_ACCURACY", "Anticipated user's accuracy",
                                                       QgsProcessingParameterNumber.Double, 0.8, minValue=0.01,
                                                       maxValue=0.99))
        self.addParameter(QgsProcessingParameterNumber("MIN_PER_CLASS", "Points per class at least",
                                                       QgsProcessingParameterNumber.Integer, 50, minValue=0))
        self.addParameter(QgsProcessingParameterNumber("SIZE", "Total points (0: from the target standard error)",
                                                       QgsProcessingParameterNumber.Integer, 0, minValue=0))
        self.addParameter(QgsProcessingParameterFeatureSource(
            "EXCLUDE", "Training labels to keep away from (optional)",
            [QgsProcessing.TypeVectorPoint, QgsProcessing.TypeVectorPolygon], optional=True))
        self.addParameter(QgsProcessingParameterNumber("BUFFER", "Distance from the training labels (metres)",
                                                       QgsProcessingParameterNumber.Double, 0.0, minValue=0.0))
        self.addParameter(QgsProcessingParameterNumber("SEED", "Random seed", QgsProcessingParameterNumber.Integer, 0))
        self.addParameter(QgsProcessingParameterFileDestination(self.OUTPUT, "Validation points",
                                                                "GeoPackage (*.gpkg)"))
        self.addOutput(QgsProcessingOutputNumber("POINTS", "Points drawn"))

    def process(self, parameters, context, feedback):
        from mpmae_core.runtime.heads.validation import sample_design

        class_map = self.map_path(parameters, context)
        exclude = self.vector_path(parameters, "EXCLUDE", context, feedback) if parameters.get("EXCLUDE") else None
        out = self.parameterAsFileOutput(parameters, self.OUTPUT, context)
        size = self.parameterAsInt(parameters, "SIZE", context)
        res = sample_design(class_map, out, target_se=self.parameterAsDouble(parameters, "TARGET_SE", context),
                            users_accuracy=self.parameterAsDouble(parameters, "USERS_ACCURACY", context),
                            min_per_class=self.parameterAsInt(parameters, "MIN_PER_CLASS", context),
                            size=size or None, exclude_labels=exclude,
                            buffer_m=self.parameterAsDouble(parameters, "BUFFER", context),
                            seed=self.parameterAsInt(parameters, "SEED", context), log=feedback.pushInfo)
        for s in res["strata"]:
            feedback.pushInfo(f"{s['stratum']}: {s['pixels']} pixels (weight {s['weight']:.3f}), {s['sample']} points")
        from qgis.core import QgsProcessingContext

        context.addLayerToLoadOnCompletion(f"{out}|layername=validation", QgsProcessingContext.LayerDetails(
            "Validation points", context.project(), "validation"))
        return {self.OUTPUT: out, "POINTS": res["size"]}


class AssessAlgorithm(_Accuracy):
    REPORT = "REPORT"

    def name(self):
        return "assess"

    def displayName(self):  # noqa: N802
        return "Accuracy and area"

    def shortHelpString(self):  # noqa: N802
        return (
            "The accuracy of a class map and the areas of its classes, from labelled validation points (from "
            "'Validation sample design', or any probability sample): the error matrix in sample counts and in "
            "estimated area proportions; overall, user's and producer's accuracy and F1; and every class's area "
            "adjusted for the map's errors, next to its mapped (pixel-counted) area; each with a 95 % confidence "
            "interval (Olofsson et al. 2014; Stehman 2014 for strata that are not the map's classes). Writes an HTML "
            "report, with a CSV and a JSON of every figure beside it. A figure computed from the training labels, "
            "cross-validated or not, is not a map accuracy: this one is."
        )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer("MAP", "Class map"))
        self.addParameter(QgsProcessingParameterFeatureSource("POINTS", "Labelled validation points",
                                                              [QgsProcessing.TypeVectorPoint]))
        self.addParameter(QgsProcessingParameterField("REFERENCE_FIELD", "Reference class field (default: "
                                                      "'reference')", "reference", parentLayerParameterName="POINTS",
                                                      optional=True))
        self.addParameter(QgsProcessingParameterRasterLayer("STRATA", "Strata the sample was drawn in (default: the "
                                                            "map's classes)", optional=True))
        self.addParameter(QgsProcessingParameterEnum("DESIGN", "Sample design", DESIGNS, defaultValue=0))
        self.addParameter(QgsProcessingParameterFileDestination(self.REPORT, "Report", "HTML files (*.html)"))
        self.addOutput(QgsProcessingOutputNumber("OVERALL_ACCURACY", "Overall accuracy"))
        self.addOutput(QgsProcessingOutputNumber("OVERALL_ACCURACY_CI95", "Overall accuracy: 95 % interval half-width"))
        self.addOutput(QgsProcessingOutputString("ESTIMATOR", "Estimator"))

    def process(self, parameters, context, feedback):
        from pathlib import Path

        from mpmae_core.runtime.heads.validation import assess_map

        class_map = self.map_path(parameters, context)
        points = self.vector_path(parameters, "POINTS", context, feedback)
        strata = None
        if parameters.get("STRATA"):
            layer = self.parameterAsRasterLayer(parameters, "STRATA", context)
            strata = layer.source() if layer is not None else None
        report = Path(self.parameterAsFileOutput(parameters, self.REPORT, context))
        res = assess_map(class_map, points, self.parameterAsString(parameters, "REFERENCE_FIELD", context) or "reference",
                         strata=strata, design=DESIGNS[self.parameterAsEnum(parameters, "DESIGN", context)],
                         report=report, table=report.with_suffix(".csv"), figures=report.with_suffix(".json"),
                         log=feedback.pushInfo)
        for c in res["per_class"]:
            u, a = c["users_accuracy"], c["area"]
            feedback.pushInfo(f"{c['class']}: user's accuracy {u['estimate']:.3f} +- {u['ci95']:.3f}; area "
                              f"{a['estimate']:,.1f} +- {a['ci95']:,.1f} {res['area_unit']} (mapped "
                              f"{c['mapped_area']:,.1f})")
        oa = res["overall_accuracy"]
        return {self.REPORT: str(report), "OVERALL_ACCURACY": oa["estimate"], "OVERALL_ACCURACY_CI95": oa["ci95"],
                "ESTIMATOR": res["estimator"]}
