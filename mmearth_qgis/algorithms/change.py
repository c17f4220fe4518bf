"""mmearth:change - two dates (or two periods) of one place -> how much changed, and with labelled
change types a map of them."""

from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
)

from .base import CLASS_FIELD_WIDGET, InferenceAlgorithm, class_order, model_parameter


class ChangeAlgorithm(InferenceAlgorithm):
    AFTER = "AFTER"
    BEFORE_OTHER = "BEFORE_OTHER"
    AFTER_OTHER = "AFTER_OTHER"
    OUTPUT = "OUTPUT"
    LABELS = "LABELS"
    CLASS_FIELD = "CLASS_FIELD"
    HEAD = "HEAD"
    MODEL_PARAMS = ("MODEL", "HEAD")
    MAP = "MAP"
    HEAD_OUTPUT = "HEAD_OUTPUT"
    REPORT = "REPORT"
    COSINE_THRESHOLD = "COSINE_THRESHOLD"
    SPECTRAL_THRESHOLD = "SPECTRAL_THRESHOLD"
    CHOSEN = "CHOSEN"

    def name(self):
        return "change"

    def displayName(self):  # noqa: N802
        return "Change between two dates"

    def shortHelpString(self):  # noqa: N802
        return (
            "Compares two dates of one place, or two periods (a date and other dates of the same period). Writes "
            "the change raster: band 1, the cosine distance of the encoder's features (0 the same, 1 unrelated); "
            "band 2, the spectral change (the change vector of the normalised bands, in standard deviations). Each "
            "gets a suggested threshold (Otsu's, from its histogram): a suggestion, not a tested rule; check it "
            "against places you know. Where one date is cloudy, the other's pixels stand in before the encoder "
            "runs, so cloud edges do not look like change; pixels cloudy on either side are no data. "
            "With labelled examples of change types (points or polygons, e.g. 'no change', 'forest to field') the "
            "self-choosing few-shot head trains on both dates' features and their differences and writes a map of "
            "the change types; a change head trained before maps them again. 'Validation sample design' and "
            "'Accuracy and area' then give that map's accuracy and the area of each change, with confidence "
            "intervals."
        )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(
            self.INPUT, "Earlier date (a raster or a Sentinel-2 product)"))
        self.addParameter(QgsProcessingParameterRasterLayer(self.AFTER, "Later date (a raster or a Sentinel-2 product)"))
        self.addParameter(model_parameter(self.MODEL, "Model (a model of the models folder by name, or an .onnx file; "
                                                      "not used for two embeddings of another model)", optional=True))
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, "Change (cosine distance, spectral "
                                                                               "change)"))
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.LABELS, "Labelled examples of change types",
            [QgsProcessing.TypeVectorPoint, QgsProcessing.TypeVectorPolygon], optional=True))
        field = QgsProcessingParameterField(self.CLASS_FIELD, "Change type field", parentLayerParameterName=self.LABELS,
                                            optional=True)
        field.setMetadata({"widget_wrapper": {"class": CLASS_FIELD_WIDGET, "parent_param": self.LABELS}})
        self.addParameter(field)
        self.addParameter(model_parameter(self.HEAD, "Change head trained before (instead of labelled examples)", optional=True))
        self.addParameter(QgsProcessingParameterRasterDestination(
            self.MAP, "Change types (with labelled examples or a change head)", optional=True, createByDefault=False))
        self.addParameter(QgsProcessingParameterFileDestination(
            self.HEAD_OUTPUT, "Change head (with labelled examples)", "ONNX model (*.onnx)", optional=True,
            createByDefault=False))
        self.addParameter(QgsProcessingParameterFileDestination(
            self.REPORT, "Change head report", "HTML files (*.html)", optional=True, createByDefault=False))
        self.add_area_parameters()
        for name, what in ((self.BEFORE_OTHER, "Other dates of the earlier period"),
                           (self.AFTER_OTHER, "Other dates of the later period")):
            p = QgsProcessingParameterMultipleLayers(name, what, QgsProcessing.TypeRaster, optional=True)
            p.setFlags(p.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
            self.addParameter(p)
        self.add_advanced_parameters()
        self.addOutput(QgsProcessingOutputNumber(self.COSINE_THRESHOLD, "Suggested threshold on the cosine distance "
                                                 "(Otsu)"))
        self.addOutput(QgsProcessingOutputNumber(self.SPECTRAL_THRESHOLD, "Suggested threshold on the spectral change "
                                                 "(Otsu)"))
        self.addOutput(QgsProcessingOutputString(self.CHOSEN, "Chosen change head"))

    def side(self, parameters, context, name, others):
        """One side's source: one date, or with its other dates a period (a list: a series)."""
        source = self.raster_source(parameters, name, context)
        extra = self.other_date_sources(parameters, others, context)
        return ([source] + extra) if extra else source

    def process(self, parameters, context, feedback):
        from mpmae_core.runtime.heads.change import change_map
        from mpmae_core.runtime.inference.change import change_magnitude

        before = self.side(parameters, context, self.INPUT, self.BEFORE_OTHER)
        after = self.side(parameters, context, self.AFTER, self.AFTER_OTHER)
        first = before[0] if isinstance(before, list) else before
        model, alone = self.encoder_or_alone(parameters, context, first, feedback)
        out = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        has_labels = bool(parameters.get(self.LABELS))
        head_value = self.parameterAsString(parameters, self.HEAD, context)
        map_out = self.parameterAsOutputLayer(parameters, self.MAP, context) if parameters.get(self.MAP) else None
        if has_labels and head_value:
            raise QgsProcessingException("Give labelled examples of change types or a change head trained before, "
                                         "not both.")
        if (has_labels or head_value) and not map_out:
            raise QgsProcessingException("Labelled examples or a change head map the change types: choose where to "
                                         "save the map ('Change types').")
        if map_out and not (has_labels or head_value):
            raise QgsProcessingException("The change types map needs labelled examples of change types (and their "
                                         "field) or a change head trained before.")
        opts = self.inference_options(parameters, context)
        opts.pop("batch", None)
        opts.update(alone)
        opts["aoi"] = self.area_of_interest(parameters, context, feedback, first)
        res = self.run_guarded(lambda **kw: change_magnitude(before, after, model, out, **opts, **kw), feedback)
        results = {self.OUTPUT: out, self.COSINE_THRESHOLD: res["thresholds"]["cosine_distance"],
                   self.SPECTRAL_THRESHOLD: res["thresholds"].get("spectral_change", float("nan")), self.CHOSEN: ""}
        self.style_on_load(context, out)
        if map_out:
            features = names = ids = None
            if has_labels:
                field = self.parameterAsString(parameters, self.CLASS_FIELD, context)
                if not field:
                    raise QgsProcessingException("Choose the field of the change types (CLASS_FIELD).")
                labelled = self.features_in(parameters, self.LABELS, context, feedback, self.source_crs(first),
                                            class_field=field)
                names = class_order(v for _, v, _ in labelled)
                index = {n: i for i, n in enumerate(names)}
                features = [(wkb, index[str(v).strip()]) for wkb, v, _ in labelled]
                ids = [fid for _, _, fid in labelled]
                feedback.pushInfo(f"{len(features)} labelled examples of {len(names)} change types: "
                                  f"{', '.join(names)}")
            head = self.model_path(parameters, self.HEAD, context, "head") if head_value else None
            head_out = self.parameterAsFileOutput(parameters, self.HEAD_OUTPUT, context) \
                if parameters.get(self.HEAD_OUTPUT) else None
            report = self.parameterAsFileOutput(parameters, self.REPORT, context) if parameters.get(self.REPORT) \
                else None
            got = self.run_guarded(lambda **kw: change_map(
                before, after, model, map_out, head_path=head, features=features, class_names=names, feature_ids=ids,
                head_output=head_out, report_path=report, **opts, **kw), feedback)
            if "training" in got:
                for line in got["training"]["text"].splitlines():
                    feedback.pushInfo(line)
                results[self.CHOSEN] = got["training"]["chosen"]
                results[self.HEAD_OUTPUT] = got["head"]
                if report:
                    results[self.REPORT] = report
            self.style_on_load(context, map_out)
            results[self.MAP] = map_out
        return results
