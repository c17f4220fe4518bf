"""Shared pieces of the mmearth algorithms: raster inputs with clear errors."""

from qgis.core import (
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingParameterRasterLayer,
    QgsRasterLayer,
)


def raster_problem(raw) -> str:
    """Why a raster parameter value cannot be used, in an analyst's words; '' if GDAL can open it."""
    from mpmae_core.runtime.io.gdal_io import RasterError, open_raster

    if isinstance(raw, QgsRasterLayer):
        raw = raw.source()
    if not isinstance(raw, str) or not raw:
        return ""
    try:
        open_raster(raw)
    except RasterError as exc:
        return str(exc)
    return ""


def product_value(raw):
    """The product a raster parameter's value names (a SAFE zip, folder or MTD xml, a STAC item file
    or URL, a band folder, or a layer QGIS opened from a product with GDAL's SENTINEL2 driver, which
    holds one resolution's bands only), or None for an ordinary raster."""
    from mpmae_core.runtime.io.products import is_product, product_of_gdal_name

    if isinstance(raw, QgsRasterLayer):
        return product_of_gdal_name(raw.source())
    if isinstance(raw, str) and raw:
        from qgis.core import QgsProject

        layer = QgsProject.instance().mapLayer(raw)
        if isinstance(layer, QgsRasterLayer):
            return product_of_gdal_name(layer.source())
        named = QgsProject.instance().mapLayersByName(raw)
        if named and isinstance(named[0], QgsRasterLayer):
            return product_of_gdal_name(named[0].source())
        if is_product(raw):
            return raw
    return None


def error_message(exc: BaseException) -> str:
    """One sentence for any error reaching Processing: ours as they are, the rest named as a bug."""
    from mpmae_core.runtime.io.files import OutputError, describe_os_error
    from mpmae_core.runtime.io.gdal_io import RasterError
    from mpmae_core.runtime.models.metadata import MetadataError
    from mpmae_core.runtime.models.model import ModelError

    if isinstance(exc, (RasterError, ModelError, MetadataError, OutputError, ValueError)):
        return str(exc)
    if isinstance(exc, OSError):
        return describe_os_error(exc, getattr(exc, "filename", None) or "", "use")
    if isinstance(exc, MemoryError):
        return "Out of memory: use smaller tiles (Advanced: tile size) or a machine with more memory."
    from mpmae_core.runtime.cli import crash_log

    log = crash_log(exc)
    return (f"Unexpected {type(exc).__name__}: {exc}. This is a bug in the MMEarth plugin: please report it"
            + (f"; the details were saved to {log}" if log else "") + ".")


def class_order(values) -> list:
    """Distinct class values in a stable, natural order: numbers numerically, otherwise by text."""
    distinct = {str(v).strip(): v for v in values}
    try:
        return sorted(distinct, key=float)
    except ValueError:
        return sorted(distinct, key=str.casefold)


class MMEarthAlgorithm(QgsProcessingAlgorithm):
    """Base class: every mmearth algorithm is re-creatable and reports errors an analyst understands.

    Subclasses implement ``process`` (not ``processAlgorithm``; QGIS owns ``run``): any error it raises reaches QGIS as
    one QgsProcessingException with a message, never as a Python traceback.
    """

    #: File parameters that also accept a model name from the models folder.
    MODEL_PARAMS: tuple = ()

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        try:
            return self.process(parameters, context, feedback)
        except QgsProcessingException:
            raise
        except BaseException as exc:  # noqa: BLE001 - Processing must get a message, not a traceback
            if isinstance(exc, KeyboardInterrupt):
                raise QgsProcessingException("Cancelled: no output was written.") from None
            raise QgsProcessingException(error_message(exc)) from None

    def process(self, parameters, context, feedback):
        raise NotImplementedError

    def createInstance(self):  # noqa: N802
        return type(self)()

    def helpUrl(self):  # noqa: N802
        return ""

    def checkParameterValues(self, parameters, context):  # noqa: N802
        """QGIS's own check says 'not found' for any raster it cannot load, and refuses model names:
        resolve model names first, and say precisely why a raster cannot be used."""
        from ..models import resolve_model

        from mpmae_core.runtime.io.products import stack_path

        parameters = dict(parameters)
        for definition in self.parameterDefinitions():  # a product stands in as its 10 m stack
            if isinstance(definition, QgsProcessingParameterRasterLayer):
                product = product_value(parameters.get(definition.name()))
                if product:
                    try:
                        parameters[definition.name()] = stack_path(product)
                    except (ValueError, OSError) as exc:
                        return False, error_message(exc)
        for name in self.MODEL_PARAMS:
            value = parameters.get(name)
            if isinstance(value, str) and value:
                try:
                    parameters[name] = resolve_model(value)
                except QgsProcessingException as exc:
                    return False, str(exc)
        ok, message = super().checkParameterValues(parameters, context)
        if not ok:
            for definition in self.parameterDefinitions():
                if isinstance(definition, QgsProcessingParameterRasterLayer):
                    problem = raster_problem(parameters.get(definition.name()))
                    if problem:
                        return False, problem
        return ok, message

    def raster_source(self, parameters, name, context) -> str:
        """The GDAL source of a raster parameter (for a product, its 10 m stack: every band, its
        quality layer named), or a QgsProcessingException naming what is wrong."""
        from mpmae_core.runtime.io.products import stack_path

        product = product_value(parameters.get(name))
        if product:
            try:
                return stack_path(product)
            except (ValueError, OSError) as exc:
                raise QgsProcessingException(error_message(exc)) from None
        layer = self.parameterAsRasterLayer(parameters, name, context)
        if layer is None or not layer.isValid():
            raw = parameters.get(name)
            problem = raster_problem(raw)
            if problem:
                raise QgsProcessingException(problem)
            raise QgsProcessingException(
                f"Could not load the raster given for {name} ({raw!r}). Give a raster file path or the "
                "name or id of a raster layer in the current project."
            )
        if layer.providerType() != "gdal":
            raise QgsProcessingException(
                f"The layer '{layer.name()}' comes from the '{layer.providerType()}' provider; mmearth reads "
                "rasters through GDAL. Save it as a GeoTIFF (Export > Save As...) and use that file."
            )
        return layer.source()


DEVICES = ["auto", "cpu", "cuda"]


def _levels():
    from mpmae_core import registry

    return list(registry.S2_LEVEL_CHOICES)


LEVELS = _levels()


class InferenceAlgorithm(MMEarthAlgorithm):
    """Shared parameters and error handling of the algorithms that run a model over a raster."""

    INPUT = "INPUT"
    MODEL = "MODEL"
    MODEL_PARAMS = ("MODEL",)
    TILE = "TILE"
    OVERLAP = "OVERLAP"
    DEVICE = "DEVICE"
    LEVEL = "LEVEL"
    DN_OFFSET = "DN_OFFSET"
    SCALE = "SCALE"
    BAND_MAP = "BAND_MAP"
    EMBEDDINGS = "EMBEDDINGS"
    PRODUCT_MASK = "PRODUCT_MASK"
    MASK_SNOW = "MASK_SNOW"
    CLOUD_PROBABILITY = "CLOUD_PROBABILITY"
    MASK = "MASK"
    MASK_DILATE = "MASK_DILATE"

    def group(self):
        return "Embeddings and landcover"

    def groupId(self):  # noqa: N802
        return "inference"

    def createCustomParametersWidget(self, parent=None):  # noqa: N802
        """QGIS's own dialog, with the raster input on a layer that can feed a model: QGIS starts it on
        the active layer, which is often one of this plugin's outputs (a confidence or class map)."""
        from processing.gui.AlgorithmDialog import AlgorithmDialog
        from qgis.core import QgsProcessingContext, QgsProject

        from ..layers import can_feed, first_feeding_layer

        dialog = AlgorithmDialog(self.create(), parent=parent)
        wrapper = (getattr(dialog.mainWidget(), "wrappers", None) or {}).get(self.INPUT)
        if wrapper is not None and hasattr(wrapper, "parameterValue"):
            context = QgsProcessingContext()
            context.setProject(QgsProject.instance())
            current = wrapper.parameterValue()
            layer = current if hasattr(current, "bandCount") else QgsProject.instance().mapLayer(str(current or ""))
            if not can_feed(layer):
                better = first_feeding_layer()
                if better is not None:
                    wrapper.setParameterValue(better.id(), context)
        return dialog

    def add_model_parameters(self, embedding_alone: bool = False):
        """The input and the model; with ``embedding_alone`` the input may be another model's
        embedding read alone (``encoder_or_alone``), and the model is then optional."""
        if embedding_alone:
            self.addParameter(QgsProcessingParameterRasterLayer(
                self.INPUT, "Sentinel-2 raster or product (a SAFE .zip, folder or MTD xml, a STAC item, a band "
                "folder), or another model's embedding read alone (AlphaEarth, TESSERA)"))
            self.addParameter(model_parameter(self.MODEL, "Model (a model of the models folder by name, or an .onnx "
                                                          "file; not used for another model's embedding)",
                                              optional=True))
            return
        self.addParameter(QgsProcessingParameterRasterLayer(
            self.INPUT, "Sentinel-2 raster or product (a SAFE .zip, folder or MTD xml, a STAC item, a band folder)"))
        self.addParameter(model_parameter(self.MODEL, "Model (a model of the models folder by name, or an .onnx file)"))

    def encoder_or_alone(self, parameters, context, source, feedback) -> tuple:
        """(the model's path, embedding options): the encoder for a Sentinel-2 input, or (None,
        {"embedding_kind": ...}) when the input is another model's embedding, read alone (a
        recognised file; or, with no model, any float raster declared by 'What that embedding
        is' when no other embedding is given). A model chosen beside an embedding is not used, and
        the log says so."""
        from mpmae_core.runtime.inference.embedding_sources import external_embedding

        value = (self.parameterAsString(parameters, self.MODEL, context) or "").strip()
        kind = None
        if self.parameterDefinition(self.OTHER_EMBEDDING_KIND) is not None:
            kind = [None, "alphaearth", "tessera", "embedding"][
                self.parameterAsEnum(parameters, self.OTHER_EMBEDDING_KIND, context)]
        found = external_embedding(source)
        if found is not None:
            if value:
                feedback.pushInfo(f"the input is {found.spec.title}: it is read alone, so the model '{value}' is not "
                                  "used")
            return None, {"embedding_kind": kind}
        if not value:
            if kind and not parameters.get(self.OTHER_EMBEDDING):
                return None, {"embedding_kind": kind}
            raise QgsProcessingException("Choose a model (MODEL): the input is a Sentinel-2 raster, which the encoder "
                                         "reads. (Without a model, the input must be another model's embedding: "
                                         "AlphaEarth, TESSERA, or a float raster with 'What that embedding is' set.)")
        return self.model_path(parameters, self.MODEL, context), {}

    AREA = "AREA"
    EXTENT = "EXTENT"

    def add_area_parameters(self):
        """The area of interest: polygons, or the standard extent parameter (either, not both)."""
        from qgis.core import QgsProcessing, QgsProcessingParameterExtent, QgsProcessingParameterFeatureSource

        self.addParameter(QgsProcessingParameterFeatureSource(
            self.AREA, "Area of interest (polygons; reading, compute and outputs are cut to it; optional)",
            [QgsProcessing.TypeVectorPolygon], optional=True))
        self.addParameter(QgsProcessingParameterExtent(
            self.EXTENT, "Area of interest as an extent (optional; instead of polygons)", optional=True))

    def area_of_interest(self, parameters, context, feedback, source):
        """The runtime's area of interest (io.aoi.Area of the polygons, or an extent string in the
        raster's CRS), or None."""
        from qgis.core import QgsCoordinateReferenceSystem

        has_area = bool(parameters.get(self.AREA)) and self.parameterDefinition(self.AREA) is not None
        has_extent = bool(parameters.get(self.EXTENT)) and self.parameterDefinition(self.EXTENT) is not None
        if has_area and has_extent:
            raise QgsProcessingException("Give the area of interest as polygons or as an extent, not both.")
        if not (has_area or has_extent):
            return None
        crs = self.source_crs(source)
        if has_extent:
            rect = self.parameterAsExtent(parameters, self.EXTENT, context, crs)
            if rect.isNull() or rect.isEmpty():
                raise QgsProcessingException("The area of interest's extent is empty: draw or type a larger one.")
            return f"{rect.xMinimum()!r},{rect.yMinimum()!r},{rect.xMaximum()!r},{rect.yMaximum()!r}"
        from mpmae_core.runtime.io.aoi import Area

        feats = self.features_in(parameters, self.AREA, context, feedback, crs)
        layer = self.parameterAsSource(parameters, self.AREA, context)
        title = f"the polygons of '{layer.sourceName() if layer is not None else 'the area layer'}'"
        return Area(tuple(wkb for wkb, _, _ in feats), QgsCoordinateReferenceSystem(crs).toWkt(), title)

    OTHER_EMBEDDING = "OTHER_EMBEDDING"
    OTHER_EMBEDDING_KIND = "OTHER_EMBEDDING_KIND"
    EMBEDDING_KINDS = ["recognise from the file", "alphaearth", "tessera", "embedding (any float raster)"]

    def add_other_embedding_parameters(self):
        """Another model's embedding of the place (AlphaEarth, TESSERA, any float raster)."""
        from qgis.core import QgsProcessingParameterDefinition, QgsProcessingParameterEnum

        self.addParameter(QgsProcessingParameterRasterLayer(
            self.OTHER_EMBEDDING, "Another model's embedding of the place (AlphaEarth, TESSERA, or a float raster: "
            "its feature sets join the head's candidates)", optional=True))
        p = QgsProcessingParameterEnum(self.OTHER_EMBEDDING_KIND, "What that embedding is", self.EMBEDDING_KINDS,
                                       defaultValue=0)
        p.setFlags(p.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(p)

    def other_embedding(self, parameters, context) -> dict:
        """The runtime's embedding options (``embedding``, ``embedding_kind``), empty without one."""
        if self.parameterDefinition(self.OTHER_EMBEDDING) is None or not parameters.get(self.OTHER_EMBEDDING):
            return {}
        path = self.raster_source(parameters, self.OTHER_EMBEDDING, context)
        kind = self.parameterAsEnum(parameters, self.OTHER_EMBEDDING_KIND, context)
        return {"embedding": path, "embedding_kind": [None, "alphaearth", "tessera", "embedding"][kind]}

    OTHER_DATES = "OTHER_DATES"
    DATES = "DATES"
    MIN_VALID = "MIN_VALID"
    SEASONS = "SEASONS"

    def add_series_parameters(self):
        """Other dates of the same place: the input then is the reference date of a series."""
        from qgis.core import (
            QgsProcessing,
            QgsProcessingParameterDefinition,
            QgsProcessingParameterMultipleLayers,
            QgsProcessingParameterNumber,
            QgsProcessingParameterString,
        )

        self.addParameter(QgsProcessingParameterMultipleLayers(
            self.OTHER_DATES, "Other dates of the same place (a series: the input is its reference date)",
            QgsProcessing.TypeRaster, optional=True))
        for p in (QgsProcessingParameterString(
                      self.DATES, "Dates of a series, YYYY-MM-DD, the input's first, then the other dates' in order "
                      "(only when their metadata and names do not say)", optional=True),
                  QgsProcessingParameterNumber(
                      self.MIN_VALID, "A series' pixels with fewer valid (cloud-free) dates are no data",
                      QgsProcessingParameterNumber.Integer, 1, minValue=1),
                  QgsProcessingParameterString(
                      self.SEASONS, "Seasons of a series, MM-DD:MM-DD,... (each one's median spectra join the "
                      "temporal features; a head trained with them maps with them by itself)", optional=True)):
            p.setFlags(p.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
            self.addParameter(p)

    def other_date_sources(self, parameters, name, context) -> list:
        """The files of a list of other dates (a multiple-layer parameter), each a GDAL raster."""
        if not parameters.get(name):
            return []
        out = []
        for layer in self.parameterAsLayerList(parameters, name, context):
            if layer.type() != layer.RasterLayer or layer.providerType() != "gdal":
                raise QgsProcessingException(f"The other date '{layer.name()}' is not a GDAL raster: save it as a "
                                             "GeoTIFF and use that file.")
            out.append(layer.source())
        return out

    def series_source(self, parameters, context, source) -> tuple:
        """(the source, options for the runtime): the input alone, or the input and the other
        dates as a series whose reference is the input."""
        if self.parameterDefinition(self.OTHER_DATES) is None:
            return source, {}
        others = self.other_date_sources(parameters, self.OTHER_DATES, context)
        if not others:
            return source, {}
        sources = [source] + others
        if len(set(sources)) < len(sources):
            raise QgsProcessingException("A raster is given twice among the input and the other dates: give each "
                                         "date once.")
        text = self.parameterAsString(parameters, self.DATES, context).strip()
        dates = [d.strip() for d in text.split(",") if d.strip()] if text else None
        seasons = [t.strip() for t in self.parameterAsString(parameters, self.SEASONS, context).split(",") if t.strip()]
        from mpmae_core.runtime.inference.temporal import parse_season

        for item in seasons:
            try:
                parse_season(item)
            except ValueError as exc:
                raise QgsProcessingException(str(exc)) from None
        return sources, {"series": True, "reference": source, "dates": dates, "seasons": seasons,
                         "min_valid": self.parameterAsInt(parameters, self.MIN_VALID, context)}

    @staticmethod
    def source_crs(source):
        layer = QgsRasterLayer(source, "input", "gdal")
        if not layer.isValid():
            raise QgsProcessingException(f"Could not open '{source}' to read its CRS.")
        return layer.crs()

    def add_advanced_parameters(self):
        from qgis.core import (
            QgsProcessingParameterDefinition,
            QgsProcessingParameterEnum,
            QgsProcessingParameterNumber,
            QgsProcessingParameterString,
        )

        from mpmae_core.runtime.inference.tiling import DEFAULT_OVERLAP, DEFAULT_TILE

        params = [
            QgsProcessingParameterNumber(self.TILE, "Largest tile side (pixels, multiple of the patch size)",
                                         QgsProcessingParameterNumber.Integer, DEFAULT_TILE, minValue=16),
            QgsProcessingParameterNumber(self.OVERLAP, "Least tile overlap (pixels)",
                                         QgsProcessingParameterNumber.Integer, DEFAULT_OVERLAP, minValue=0),
            QgsProcessingParameterEnum(self.DEVICE, "Device", DEVICES, defaultValue=0),
            QgsProcessingParameterEnum(self.LEVEL, "Sentinel-2 processing level", LEVELS, defaultValue=0),
            QgsProcessingParameterString(self.DN_OFFSET, "DN offset ('auto' from the raster's metadata, 0, or 1000 "
                                         "for products of processing baseline 04.00 or later)", defaultValue="auto"),
            QgsProcessingParameterNumber(self.SCALE, "Scale factor (raw values are multiplied by it: 10000 for "
                                         "reflectance 0-1, 10 for reflectance x 1000)",
                                         QgsProcessingParameterNumber.Double, 1.0, minValue=1e-9),
            QgsProcessingParameterString(self.BAND_MAP, "Band map (raster band numbers for the model's bands, "
                                         "comma-separated; only for rasters without band names; a number may "
                                         "repeat to stand in for a missing band)", optional=True),
        ]
        for p in params:
            p.setFlags(p.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
            self.addParameter(p)
        self.add_mask_parameters()

    def add_mask_parameters(self):
        """The mask options (advanced): the product's cloud mask, snow, cloud probability, a user's mask, dilation."""
        from qgis.core import (
            QgsProcessingParameterBoolean,
            QgsProcessingParameterDefinition,
            QgsProcessingParameterMapLayer,
            QgsProcessingParameterNumber,
        )

        params = [
            QgsProcessingParameterBoolean(self.PRODUCT_MASK, "Apply the product's cloud mask (SCL, or MSK_CLASSI "
                                          "for Level-1C)", defaultValue=True),
            QgsProcessingParameterBoolean(self.MASK_SNOW, "Mask snow and ice too", defaultValue=False),
            QgsProcessingParameterNumber(self.CLOUD_PROBABILITY, "Also mask a cloud probability (Level-2A "
                                         "MSK_CLDPRB) of at least this percentage (optional)",
                                         QgsProcessingParameterNumber.Double, None, optional=True, minValue=1,
                                         maxValue=100),
            QgsProcessingParameterMapLayer(self.MASK, "Mask (a raster on the input's grid: non-zero masks; or a "
                                           "polygon layer: inside masks; optional)", optional=True),
            QgsProcessingParameterNumber(self.MASK_DILATE, "Grow the masks by (pixels; cloud edges leak)",
                                         QgsProcessingParameterNumber.Integer, 0, minValue=0, maxValue=100),
        ]
        for p in params:
            p.setFlags(p.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
            self.addParameter(p)

    def inference_options(self, parameters, context) -> dict:
        text = (self.parameterAsString(parameters, self.BAND_MAP, context) or "").strip()
        band_map = None
        if text:
            try:
                band_map = [int(v) for v in text.replace(" ", "").split(",")]
            except ValueError:
                raise QgsProcessingException(f"Band map '{text}' is not a list of band numbers such as 1,2,3") from None
        offset_text = (self.parameterAsString(parameters, self.DN_OFFSET, context) or "auto").strip()
        if offset_text.lower() == "auto":
            dn_offset = "auto"
        else:
            try:
                dn_offset = float(offset_text)
            except ValueError:
                raise QgsProcessingException(f"DN offset '{offset_text}' is not 'auto' or a number such as 0 or "
                                             "1000") from None
        return dict(tile=self.parameterAsInt(parameters, self.TILE, context),
                    overlap=self.parameterAsInt(parameters, self.OVERLAP, context),
                    device=DEVICES[self.parameterAsEnum(parameters, self.DEVICE, context)],
                    level=LEVELS[self.parameterAsEnum(parameters, self.LEVEL, context)],
                    dn_offset=dn_offset, scale=self.parameterAsDouble(parameters, self.SCALE, context),
                    band_map=band_map, masks=self.mask_options(parameters, context))

    def mask_options(self, parameters, context):
        """The MaskOptions the advanced parameters ask for (None: the defaults)."""
        from qgis.core import QgsVectorLayer

        from mpmae_core.runtime.io.masks import MaskError, MaskOptions

        user = None
        if parameters.get(self.MASK):
            layer = self.parameterAsLayer(parameters, self.MASK, context)
            if layer is None or not layer.isValid():
                raise QgsProcessingException(f"Could not load the mask {parameters.get(self.MASK)!r}: give a raster "
                                             "on the input's grid or a polygon layer.")
            if isinstance(layer, QgsVectorLayer):
                from mpmae_core.runtime.io.aoi import Area

                wkbs = tuple(bytes(f.geometry().asWkb()) for f in layer.getFeatures() if f.hasGeometry())
                user = Area(wkbs, layer.crs().toWkt(), f"the polygons of '{layer.name()}'")
            else:
                user = layer.source()
        probability = parameters.get(self.CLOUD_PROBABILITY)
        probability = None if probability in (None, "") else self.parameterAsDouble(parameters, self.CLOUD_PROBABILITY,
                                                                                     context)
        try:
            opts = MaskOptions(product=self.parameterAsBool(parameters, self.PRODUCT_MASK, context),
                               snow=self.parameterAsBool(parameters, self.MASK_SNOW, context),
                               cloud_probability=probability, user=user,
                               dilate=self.parameterAsInt(parameters, self.MASK_DILATE, context))
        except MaskError as exc:
            raise QgsProcessingException(str(exc)) from None
        return None if opts == MaskOptions() else opts

    def model_path(self, parameters, name, context, what="model") -> str:
        from ..models import resolve_model

        return resolve_model(self.parameterAsString(parameters, name, context), what)

    @staticmethod
    def run_guarded(fn, feedback):
        """Run a runtime call with QGIS progress and cancel; turn its errors into Processing errors."""
        from mpmae_core.runtime.inference.predict import Cancelled

        def log(message: str):
            if message.startswith("warning: "):
                feedback.pushWarning(message[len("warning: "):])
            else:
                feedback.pushInfo(message)

        try:
            return fn(progress=lambda f: feedback.setProgress(100.0 * f), cancelled=feedback.isCanceled, log=log)
        except Cancelled:  # other errors become messages in processAlgorithm
            raise QgsProcessingException("Cancelled: no output was written.") from None

    @staticmethod
    def style_on_load(context, output: str) -> None:
        """Apply the .qml the runtime wrote beside ``output`` when Processing loads it into the project."""
        from mpmae_core.runtime.io.styles import style_path

        if context.willLoadLayerOnCompletion(output):
            details = context.layerToLoadOnCompletionDetails(output)
            details.setPostProcessor(LoadStyle.create(str(style_path(output))))

    def embeddings_source(self, parameters, context):
        """The optional precomputed embeddings raster (EMBEDDINGS), or None."""
        if not parameters.get(self.EMBEDDINGS):
            return None
        return self.raster_source(parameters, self.EMBEDDINGS, context)

    def grid_crs(self, parameters, context):
        """The CRS labels are reprojected to: the embeddings raster's, else the input raster's."""
        name = self.EMBEDDINGS if parameters.get(self.EMBEDDINGS) else self.INPUT
        return self.source_crs(self.raster_source(parameters, name, context))

    def add_embeddings_parameter(self):
        from qgis.core import QgsProcessingParameterDefinition

        p = QgsProcessingParameterRasterLayer(
            self.EMBEDDINGS, "Precomputed embeddings (from 'Compute embeddings' with this model; optional)",
            optional=True)
        p.setFlags(p.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(p)

    def add_label_parameters(self, labels: str = "LABELS", field_param: str = "CLASS_FIELD") -> None:
        """Labelled points or polygons and their class field (a drop-down that follows the layer)."""
        from qgis.core import QgsProcessing, QgsProcessingParameterFeatureSource, QgsProcessingParameterField

        self.addParameter(QgsProcessingParameterFeatureSource(
            labels, "Labelled points or polygons", [QgsProcessing.TypeVectorPoint, QgsProcessing.TypeVectorPolygon]))
        field = QgsProcessingParameterField(field_param, "Class field", parentLayerParameterName=labels)
        field.setMetadata({"widget_wrapper": {"class": CLASS_FIELD_WIDGET, "parent_param": labels}})
        self.addParameter(field)

    def class_labels(self, parameters, context, feedback, crs, labels: str = "LABELS",
                     field_param: str = "CLASS_FIELD") -> tuple:
        """([(WKB in ``crs``, class index)], class names in natural order, feature ids) of a labels
        parameter and its class field, or a message naming the missing field."""
        field = self.parameterAsString(parameters, field_param, context)
        if not field:
            raise QgsProcessingException(f"Choose the class field of the labels ({field_param}).")
        labelled = self.features_in(parameters, labels, context, feedback, crs, class_field=field)
        names = class_order(v for _, v, _ in labelled)
        index = {n: i for i, n in enumerate(names)}
        return [(wkb, index[str(v).strip()]) for wkb, v, _ in labelled], names, [fid for _, _, fid in labelled]

    def features_in(self, parameters, name, context, feedback, crs, class_field=None):
        """(WKB in ``crs``, class value, feature id) per feature of a vector parameter, reprojected when needed;
        features without a geometry or class are warned about and skipped."""
        from qgis.core import QgsFeatureRequest

        source = self.parameterAsSource(parameters, name, context)
        if source is None:
            raise QgsProcessingException(f"Could not load the vector layer given for {name}.")
        src_crs = source.sourceCrs()
        if not src_crs.isValid() or crs_undefined(src_crs):
            raise QgsProcessingException(
                f"The layer given for {name} has no defined CRS ({src_crs.description() or 'none'}): set its CRS "
                "(Layer Properties > Source > Assigned Coordinate Reference System, or 'Assign projection' in the "
                "Processing Toolbox) so its features can be placed on the raster.")
        request = QgsFeatureRequest()
        if source.sourceCrs() != crs:
            feedback.pushInfo(f"reprojecting {name.lower()} from {source.sourceCrs().authid() or 'their CRS'} to the "
                              f"raster's {crs.authid() or crs.description()}")
            request.setDestinationCrs(crs, context.transformContext())
        out, no_class, no_geom = [], 0, 0
        index = source.fields().lookupField(class_field) if class_field else -1
        if class_field and index < 0:
            raise QgsProcessingException(f"The labels have no field '{class_field}'; they have "
                                         f"{', '.join(source.fields().names())}.")
        for feature in source.getFeatures(request):
            if feedback.isCanceled():
                raise QgsProcessingException("Cancelled: no output was written.")
            value = feature.attribute(index) if index >= 0 else 0
            geom = feature.geometry()
            if geom is None or geom.isEmpty():
                no_geom += 1
                continue
            if value is None or (hasattr(value, "isNull") and value.isNull()) or str(value).strip() == "":
                no_class += 1
                continue
            out.append((bytes(geom.asWkb()), value, feature.id()))
        if no_geom:
            feedback.pushWarning(f"skipped {no_geom} feature(s) of {name.lower()} without a geometry")
        if no_class:
            feedback.pushWarning(f"skipped {no_class} feature(s) of {name.lower()} without a value in "
                                 f"'{class_field}'")
        if not out:
            raise QgsProcessingException(f"The layer given for {name} has no usable features: {no_geom} without a "
                                         f"geometry, {no_class} without a class value.")
        return out


MODEL_WIDGET = "mmearth_qgis.widgets.ModelWidgetWrapper"
CLASS_FIELD_WIDGET = "mmearth_qgis.widgets.ClassFieldWidgetWrapper"


def model_parameter(name: str, description: str, optional: bool = False):
    """A model parameter: text that is a model's name in the models folder or an .onnx path, shown as a
    drop-down of the installed models (the widget loads only in the GUI; qgis_process takes the text).

    A string parameter, not a file one: QGIS's dialog checks a file parameter's value against its
    extension before the algorithm sees it, and so refused every name picked from the drop-down.
    ``checkParameterValues`` resolves the text and names what is wrong."""
    from qgis.core import QgsProcessingParameterString

    param = QgsProcessingParameterString(name, description, optional=optional)
    param.setMetadata({"widget_wrapper": {"class": MODEL_WIDGET}})
    return param


def crs_undefined(crs) -> bool:
    """QGIS gives a GeoPackage layer whose SRS is 'undefined' (srs_id 0 or -1) a CRS object that is valid
    but says nothing: no authority id and an 'Undefined' name, or no way to transform it."""
    text = f"{crs.authid()} {crs.description()} {crs.toWkt()}".lower()
    return not crs.authid() and ("undefined" in text or "unknown" in text or not crs.toProj())


class LoadStyle:
    """Post-processor applying a .qml to a layer Processing loads; instances are kept alive here
    (QGIS holds only a C++ pointer, and a collected Python object would crash it)."""

    _alive: list = []

    @classmethod
    def create(cls, qml_path: str):
        from qgis.core import QgsProcessingLayerPostProcessorInterface

        class _Apply(QgsProcessingLayerPostProcessorInterface):
            def postProcessLayer(self, layer, context, feedback):  # noqa: N802
                import os

                if layer is not None and os.path.exists(qml_path):
                    layer.loadNamedStyle(qml_path)
                    layer.triggerRepaint()

        inst = _Apply()
        cls._alive.append(inst)
        return inst
