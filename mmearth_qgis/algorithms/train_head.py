"""mmearth:train_head - a raster, labelled points or polygons and an encoder -> a few-shot head (ONNX)."""

from qgis.core import (
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
)

from .base import InferenceAlgorithm


FEATURE_SETS = ["spectra", "encoder", "both", "t-spectra", "t-encoder", "t-both", "embedding", "embedding+spectra",
                "embedding+encoder"]
FEATURE_SET_LABELS = ["spectra", "encoder", "both", "spectra over a series' dates (median, percentiles, spread)",
                      "encoder over a series' dates (medians)", "both over a series' dates",
                      "another model's embedding", "that embedding and the spectra",
                      "that embedding and MMEarth's features"]
CLASSIFIERS = ["logistic", "forest"]
CLASSIFIER_LABELS = ["logistic regression (3 strengths)", "random forest"]


CHOOSE_ON = ["grouped by labelled feature (default)", "spatial blocks"]
CHOOSE_ON_VALUES = ["grouped", "spatial"]


class TrainHeadAlgorithm(InferenceAlgorithm):
    LABELS = "LABELS"
    CLASS_FIELD = "CLASS_FIELD"
    OUTPUT = "OUTPUT"
    REPORT = "REPORT"
    BUFFER = "BUFFER"
    FEATURE_SETS = "FEATURE_SETS"
    CLASSIFIERS = "CLASSIFIERS"
    MAX_PIXELS = "MAX_PIXELS"
    ACCURACY = "ACCURACY"
    BALANCED_ACCURACY = "BALANCED_ACCURACY"
    CHOSEN = "CHOSEN"
    BLOCK_SIZE = "BLOCK_SIZE"
    CHOOSE_ON = "CHOOSE_ON"
    GROUPED_ACCURACY = "GROUPED_ACCURACY"
    BLOCK_M = "BLOCK_M"
    SPATIAL_ACCURACY = "SPATIAL_ACCURACY"

    def name(self):
        return "train_head"

    def displayName(self):  # noqa: N802
        return "Train few-shot head"

    def shortHelpString(self):  # noqa: N802
        return (
            "Trains a per-pixel landcover head from a handful of labelled points or polygons. A point labels its "
            "10 m pixel (and, with 'Point buffer', the pixels within that distance); a polygon labels the pixels it "
            "covers (at most 'Most pixels per class', every polygon kept). Each labelled pixel gets its own spectra "
            "and the encoder's features at every scale, and the head chooses itself: spectra only, encoder features "
            "only or both, with logistic regression at three strengths or a random forest, or the mean of the best "
            "heads of the three best of those, by cross-validation grouped by labelled feature (the pixels of one "
            "point or polygon never test a head trained on them). "
            "The report lists every candidate's accuracy, balanced accuracy and mIoU and why the chosen one won. "
            "With other dates of the same place (a series), the candidates also include temporal features: the "
            "median, 10th and 90th percentiles and spread of the spectra over the cloud-free dates, and the median "
            "of the encoder's features; the input's own features stay candidates only where it is clear at every "
            "label. "
            "With another model's embedding of the place (AlphaEarth, TESSERA), its dimensions join as feature "
            "sets of their own; given as the input itself, the embedding is read alone, without Sentinel-2 and "
            "without a model. "
            "The head is saved as an .onnx file for 'Landcover map', which runs it per pixel. Labels in another "
            "CRS are reprojected; labels outside the raster are skipped with a warning; each class needs at least "
            "2 labelled features and there must be at least 2 classes."
        )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.add_model_parameters(embedding_alone=True)
        self.add_label_parameters(self.LABELS, self.CLASS_FIELD)
        self.addParameter(QgsProcessingParameterFileDestination(self.OUTPUT, "Few-shot head", "ONNX model (*.onnx)"))
        self.addParameter(QgsProcessingParameterFileDestination(
            self.REPORT, "Report", "HTML files (*.html)", optional=True, createByDefault=True))
        self.addParameter(QgsProcessingParameterNumber(
            self.BUFFER, "Point buffer (metres; 0 = a point labels its own pixel)", QgsProcessingParameterNumber.Double,
            0.0, minValue=0.0, maxValue=1000.0))
        self.add_area_parameters()
        self.add_series_parameters()
        self.add_other_embedding_parameters()
        self.add_embeddings_parameter()
        advanced = [
            QgsProcessingParameterEnum(self.FEATURE_SETS, "Feature sets to try (none chosen: every set the input "
                                       "offers; the temporal ones need other dates)", FEATURE_SET_LABELS,
                                       allowMultiple=True, optional=True, defaultValue=[]),
            QgsProcessingParameterEnum(self.CLASSIFIERS, "Classifiers to try", CLASSIFIER_LABELS, allowMultiple=True,
                                       defaultValue=[0, 1]),
            QgsProcessingParameterNumber(self.MAX_PIXELS, "Most labelled pixels per class",
                                         QgsProcessingParameterNumber.Integer, 1000, minValue=10),
            QgsProcessingParameterNumber(self.BLOCK_SIZE, "Spatial block size for cross-validation (metres; 0: from "
                                         "the labels' spread)", QgsProcessingParameterNumber.Double, 0.0,
                                         minValue=0.0),
            QgsProcessingParameterEnum(self.CHOOSE_ON, "Choose the head on folds", CHOOSE_ON, defaultValue=0),
        ]
        for p in advanced:
            p.setFlags(p.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
            self.addParameter(p)
        self.add_advanced_parameters()
        self.addOutput(QgsProcessingOutputNumber(self.ACCURACY, "Cross-validated accuracy of the chosen head, on the "
                                                 "folds it was chosen on (not a map accuracy)"))
        self.addOutput(QgsProcessingOutputNumber(self.BALANCED_ACCURACY, "Cross-validated balanced accuracy"))
        self.addOutput(QgsProcessingOutputNumber(self.SPATIAL_ACCURACY, "Cross-validated accuracy in spatial blocks"))
        self.addOutput(QgsProcessingOutputString(self.CHOSEN, "Chosen head"))
        self.addOutput(QgsProcessingOutputNumber(self.GROUPED_ACCURACY, "Cross-validated accuracy, folds grouped by "
                                                 "labelled feature"))
        self.addOutput(QgsProcessingOutputNumber(self.BLOCK_M, "Spatial block size used (metres; 0: none)"))

    def add_embeddings_parameter(self):
        from qgis.core import QgsProcessingParameterRasterLayer

        p = QgsProcessingParameterRasterLayer(
            self.EMBEDDINGS, "Precomputed per-pixel features (from 'Compute embeddings' with 'Per-pixel features' "
            "and this model; optional)", optional=True)
        p.setFlags(p.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(p)

    def grid_crs(self, parameters, context):
        return self.source_crs(self.raster_source(parameters, self.INPUT, context))

    def process(self, parameters, context, feedback):
        from mpmae_core.runtime.heads.pixelhead import train_pixel_head

        source = self.raster_source(parameters, self.INPUT, context)
        stored = self.embeddings_source(parameters, context)
        model, alone = self.encoder_or_alone(parameters, context, source, feedback)
        features, names, ids = self.class_labels(parameters, context, feedback, self.grid_crs(parameters, context))
        out = self.parameterAsFileOutput(parameters, self.OUTPUT, context)
        report = self.parameterAsFileOutput(parameters, self.REPORT, context) if parameters.get(self.REPORT) else ""
        sets = [FEATURE_SETS[i] for i in self.parameterAsEnums(parameters, self.FEATURE_SETS, context)] or None
        clfs = [CLASSIFIERS[i] for i in self.parameterAsEnums(parameters, self.CLASSIFIERS, context)] or CLASSIFIERS
        opts = self.inference_options(parameters, context)
        opts["aoi"] = self.area_of_interest(parameters, context, feedback, source)
        source, series = self.series_source(parameters, context, source)
        other = alone or self.other_embedding(parameters, context)
        feedback.pushInfo(f"{len(features)} labelled features in {len(names)} classes: {', '.join(names)}")
        res = self.run_guarded(lambda **kw: train_pixel_head(
            source, model, features, names, out, report_path=report or None,
            feature_ids=ids, buffer_m=self.parameterAsDouble(parameters, self.BUFFER, context),
            feature_sets=sets, classifiers=clfs, feature_raster=stored,
            max_pixels_per_class=self.parameterAsInt(parameters, self.MAX_PIXELS, context),
            block_m=self.parameterAsDouble(parameters, self.BLOCK_SIZE, context) or None,
            choose_on=CHOOSE_ON_VALUES[self.parameterAsEnum(parameters, self.CHOOSE_ON, context)], **opts, **series,
            **other, **kw),
            feedback)
        for line in res["text"].splitlines():
            feedback.pushInfo(line)
        detail = res["cv_detail"]
        results = {self.OUTPUT: out, self.ACCURACY: res["cv"]["accuracy"],
                   self.BALANCED_ACCURACY: res["cv"]["balanced_accuracy"], self.CHOSEN: res["chosen"],
                   self.GROUPED_ACCURACY: (detail.get("grouped") or {}).get("accuracy", float("nan")),
                   self.SPATIAL_ACCURACY: (detail.get("spatial") or {}).get("accuracy", float("nan")),
                   self.BLOCK_M: detail["block_m"]}
        if report:
            results[self.REPORT] = report
        return results
