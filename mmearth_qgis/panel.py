"""The dock panel *MMEarth few-shot mapping*: click labels on the map, see the class map change,
label where the model is unsure, map the whole raster.

The work happens in ``mpmae_core.runtime.heads.session``: the encoder runs once per raster and model
(a QGIS background task fills the on-disk stage cache), then each new label fits a quick head and
previews the visible extent, also in a task, in a fraction of a second. The preview's layers sit
in a group just above the raster and below the labels and suggestions; later previews update the
same layers, so their visibility and order are the user's (confidence starts hidden).

Labels live in a GeoPackage (points and polygons, field ``class``): beside the project file
(``<project>_mmearth_labels.gpkg``), or one the user chooses, or, for a project not saved yet, in
the QGIS profile's ``mmearth/labels`` folder; every click is committed at once, so a crash, a
closed project or QGIS's exit never loses one, and the layers come back with the project. An
existing point or polygon layer with a class field can be adopted instead.

*Map whole raster* trains the self-choosing head of ``mmearth:train_head`` on every label and maps
the raster from the cached features (no second encoder run), writing the same files as the
Processing algorithms (the head ``.onnx``, its report and a styled class map), so the run repeats
headless with ``qgis_process``; a cancel leaves none of them. Errors also go to QGIS's message bar.
The panel's state is saved in the project and restored when it is reopened; its temporary folder
is removed when the panel closes or the plugin unloads. Only ``qgis.PyQt``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from qgis.core import (
    Qgis,
    QgsApplication,
    QgsCoordinateTransform,
    QgsFeature,
    QgsGeometry,
    QgsMapLayerProxyModel,
    QgsMessageLog,
    QgsPointXY,
    QgsProject,
    QgsRasterLayer,
    QgsVectorLayer,
    QgsWkbTypes,
)
from qgis.gui import QgsCheckableComboBox, QgsDockWidget, QgsFileWidget, QgsMapLayerComboBox, QgsMapTool, \
    QgsMapToolEmitPoint, QgsRubberBand
from qgis.PyQt.QtCore import QTimer, Qt, pyqtSignal
from qgis.PyQt.QtGui import QColor, QIcon, QPixmap
from qgis.PyQt.QtWidgets import (QCheckBox, QColorDialog, QComboBox, QFormLayout, QHBoxLayout, QInputDialog, QLabel,
                                 QLineEdit, QListWidget, QListWidgetItem, QPushButton, QScrollArea, QSpinBox,
                                 QVBoxLayout, QWidget)

from . import models
from .layers import first_feeding_layer, mark_output
from .tasks import BackgroundTask

CLASS_FIELD = "class"
PROJECT_SCOPE = "mmearth_fewshot"
LOG_TAG = "MMEarth"
PREVIEW_PROPERTY = "mmearth/preview"  # preview layers: files of the panel's temporary folder


def colour_icon(rgb) -> QIcon:
    pix = QPixmap(14, 14)
    pix.fill(QColor(*rgb))
    return QIcon(pix)


class PolygonTool(QgsMapTool):
    """Left clicks add vertices, a right click (or a double click) closes the polygon."""

    finished = pyqtSignal(object)  # QgsGeometry in the canvas CRS

    def __init__(self, canvas):
        super().__init__(canvas)
        self.points = []
        self.band = QgsRubberBand(canvas, QgsWkbTypes.PolygonGeometry)
        self.band.setColor(QColor(255, 0, 0, 90))

    def canvasReleaseEvent(self, event):  # noqa: N802
        point = self.toMapCoordinates(event.pos())
        if event.button() == Qt.LeftButton:
            self.points.append(QgsPointXY(point))
            self.band.addPoint(QgsPointXY(point))
        elif event.button() == Qt.RightButton:
            self.close_polygon()

    def canvasDoubleClickEvent(self, event):  # noqa: N802
        self.close_polygon()

    def close_polygon(self):
        if len(self.points) >= 3:
            self.finished.emit(QgsGeometry.fromPolygonXY([self.points + [self.points[0]]]))
        self.points = []
        self.band.reset(QgsWkbTypes.PolygonGeometry)

    def deactivate(self):
        self.band.reset(QgsWkbTypes.PolygonGeometry)
        super().deactivate()


def _while_alive(fn):
    """A slot of the project's signals: once the panel's widgets are deleted (the dock destroyed),
    it disconnects itself instead of raising in QGIS's signal handling."""
    import functools

    @functools.wraps(fn)
    def slot(self, *args):
        try:
            return fn(self, *args)
        except RuntimeError as exc:
            if "has been deleted" not in str(exc):
                raise
            self._disconnect_project()
            return None

    return slot


class FewShotPanel(QgsDockWidget):
    """The dock panel. ``canvas`` is the map canvas (iface.mapCanvas() in QGIS)."""

    preview_ready = pyqtSignal()
    map_finished = pyqtSignal(bool, str)
    compare_finished = pyqtSignal(bool, str)
    cache_ready = pyqtSignal(bool, str)

    def __init__(self, canvas, parent=None, message_bar=None):
        super().__init__("MMEarth few-shot mapping", parent)
        self.setObjectName("MMEarthFewShotPanel")
        self.canvas = canvas
        self.message_bar = message_bar
        self.labels_path = None
        self.added = []  # label layers in the order labels were added (for Undo label)
        self.session = None
        self.tasks = []
        self.head = None
        self.last_preview = None
        self.preview_layers = {}
        self.suggestion_layer = None
        self.point_layer = None
        self.polygon_layer = None
        self.validation_layer = None
        self.validation_result = None  # the last accuracy report's figures (heads.validation.assess_map)
        self.last_map = None  # the last whole-raster class map
        self.workdir = new_workdir()
        self.preview_count = 0
        self.preview_group = None
        self._build()
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(300)
        self._debounce.timeout.connect(self.preview)
        project = QgsProject.instance()
        self._project_slots = [(project.writeProject, self.save_state), (project.readProject, self.restore_state),
                               (project.layersAdded, self._pick_default_raster),
                               (project.layersAdded, self.fill_other_dates),
                               (project.layersRemoved, self.fill_other_dates)]
        for signal, slot in self._project_slots:
            signal.connect(slot)
        self._pick_default_raster()

    def _disconnect_project(self) -> None:
        for signal, slot in getattr(self, "_project_slots", []):
            try:
                signal.disconnect(slot)
            except (TypeError, RuntimeError):
                pass
        self._project_slots = []

    # ------------------------------------------------------------------------- messages and clean-up
    def error(self, text: str) -> None:
        """An error: in the panel's status line and in QGIS's message bar, which people read."""
        self.status.setText(text)
        QgsMessageLog.logMessage(text, LOG_TAG, Qgis.Warning)
        if self.message_bar is not None:
            self.message_bar.pushMessage("MMEarth", text, Qgis.Warning, 10)

    def remove_preview_layers(self) -> None:
        project = QgsProject.instance()
        for layer in list(self.preview_layers.values()):
            if layer is not None and _alive(layer):
                project.removeMapLayer(layer.id())
        self.preview_layers = {}
        group = self.preview_group
        if group is not None:
            try:
                if not group.children() and group.parent() is not None:
                    group.parent().removeChildNode(group)
            except RuntimeError:
                pass
        self.preview_group = None

    def shutdown(self) -> None:
        """Close and unload: stop the tasks, drop the preview layers, remove the temporary folder."""
        for task in list(self.tasks):
            try:
                task.cancel()
            except RuntimeError:
                pass
        self._disconnect_project()
        self.remove_preview_layers()
        if not referenced(self.workdir):  # a class map mapped into it stays while the project shows it
            shutil.rmtree(self.workdir, ignore_errors=True)

    def closeEvent(self, event):  # noqa: N802
        self.remove_preview_layers()
        for path in self.workdir.glob("preview*"):
            try:
                path.unlink()
            except OSError:
                pass
        super().closeEvent(event)

    # ------------------------------------------------------------------------- the widget
    def _build(self):
        body = QWidget()
        layout = QVBoxLayout(body)
        form = QFormLayout()
        self.raster = QgsMapLayerComboBox()
        self.raster.setFilters(QgsMapLayerProxyModel.RasterLayer)
        self.raster.setAllowEmptyLayer(True)
        self.raster.setLayer(None)
        self.raster.layerChanged.connect(self._inputs_changed)
        self.findings = QLabel("choose a Sentinel-2 raster")
        self.findings.setWordWrap(True)
        self.model = QComboBox()
        self.model.setEditable(True)
        self.model.addItems([""] + models.available_models())
        self.model.currentTextChanged.connect(self._inputs_changed)
        self.product_button = QPushButton("Product...")
        self.product_button.setToolTip("Add a Sentinel-2 product as it was downloaded (a SAFE .zip, its "
                                       "MTD_MSIL*.xml, or a STAC item): its 10 m stack, with its cloud mask")
        self.product_button.clicked.connect(self.choose_product)
        row = QHBoxLayout()
        row.addWidget(self.raster, 1)
        row.addWidget(self.product_button)
        form.addRow("Raster", row)
        self.other_dates = QgsCheckableComboBox()
        self.other_dates.setToolTip("other dates of the same place (rasters or products in the project): with them "
                                    "the raster is the reference date of a series, and the heads may use the "
                                    "temporal features (medians, percentiles, spread over the cloud-free dates)")
        self.other_dates.setDefaultText("none (one date)")
        self.other_dates.checkedItemsChanged.connect(self._inputs_changed)
        form.addRow("Other dates", self.other_dates)
        self.embedding = QgsMapLayerComboBox()
        self.embedding.setFilters(QgsMapLayerProxyModel.RasterLayer)
        self.embedding.setAllowEmptyLayer(True)
        self.embedding.setLayer(None)
        self.embedding.setToolTip("another model's embedding of the place (AlphaEarth, TESSERA as a GeoTIFF: "
                                  "Processing > MMEarth > Open a TESSERA embedding tile) beside the raster: its "
                                  "feature sets join the head's candidates. To read an embedding alone, choose it "
                                  "as the raster")
        self.embedding.layerChanged.connect(self._inputs_changed)
        form.addRow("Embedding beside", self.embedding)
        form.addRow("", self.findings)
        form.addRow("Model", self.model)
        layout.addLayout(form)

        layout.addWidget(QLabel("Classes"))
        self.classes = QListWidget()
        self.classes.setMaximumHeight(130)
        layout.addWidget(self.classes)
        row = QHBoxLayout()
        self.class_name = QLineEdit()
        self.class_name.setMinimumWidth(140)
        self.class_name.setPlaceholderText("new class, e.g. water")
        self.class_name.returnPressed.connect(self.add_class_from_field)
        self.add_button = QPushButton("Add")
        self.add_button.clicked.connect(self.add_class_from_field)
        self.rename_button = QPushButton("Rename")
        self.rename_button.clicked.connect(self.rename_class)
        self.colour_button = QPushButton("Colour")
        self.colour_button.clicked.connect(self.recolour_class)
        self.remove_button = QPushButton("Remove")
        self.remove_button.clicked.connect(self.remove_class)
        row.addWidget(self.class_name, 1)
        layout.addLayout(row)
        buttons = QHBoxLayout()
        for w in (self.add_button, self.rename_button, self.colour_button, self.remove_button):
            buttons.addWidget(w)
        layout.addLayout(buttons)

        labels = QHBoxLayout()
        self.point_tool_button = QPushButton("Click points")
        self.point_tool_button.setCheckable(True)
        self.point_tool_button.toggled.connect(self._point_tool_toggled)
        self.polygon_tool_button = QPushButton("Draw polygons")
        self.polygon_tool_button.setCheckable(True)
        self.polygon_tool_button.toggled.connect(self._polygon_tool_toggled)
        self.undo_button = QPushButton("Undo label")
        self.undo_button.setToolTip("remove the last label you added")
        self.undo_button.clicked.connect(self.undo_label)
        labels.addWidget(self.point_tool_button)
        labels.addWidget(self.polygon_tool_button)
        labels.addWidget(self.undo_button)
        layout.addLayout(labels)
        store = QHBoxLayout()
        self.labels_file = QgsFileWidget()
        self.labels_file.setStorageMode(QgsFileWidget.SaveFile)
        self.labels_file.setFilter("GeoPackage (*.gpkg)")
        self.labels_file.setToolTip("where new labels are saved (empty: beside the project file)")
        self.labels_file.lineEdit().setPlaceholderText("beside the project (automatic)")
        self.labels_file.setMinimumWidth(160)
        store.addWidget(QLabel("Labels file"))
        store.addWidget(self.labels_file, 1)
        layout.addLayout(store)
        adopt = QHBoxLayout()
        self.adopt_layer = QgsMapLayerComboBox()
        self.adopt_layer.setFilters(QgsMapLayerProxyModel.PointLayer | QgsMapLayerProxyModel.PolygonLayer)
        self.adopt_layer.setAllowEmptyLayer(True)
        self.adopt_layer.setLayer(None)
        self.adopt_field = QLineEdit(CLASS_FIELD)
        self.adopt_button = QPushButton("Adopt")
        self.adopt_button.clicked.connect(self.adopt)
        adopt.addWidget(QLabel("or use layer"))
        adopt.addWidget(self.adopt_layer, 1)
        adopt.addWidget(self.adopt_field)
        adopt.addWidget(self.adopt_button)
        layout.addLayout(adopt)

        run = QHBoxLayout()
        self.auto = QCheckBox("update after each label")
        self.auto.setChecked(True)
        self.preview_button = QPushButton("Preview")
        self.preview_button.clicked.connect(self.preview)
        run.addWidget(self.auto)
        run.addWidget(self.preview_button)
        layout.addLayout(run)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        self.counts = QLabel("")
        self.counts.setWordWrap(True)
        layout.addWidget(self.counts)

        suggest = QHBoxLayout()
        self.suggest_count = QSpinBox()
        self.suggest_count.setRange(1, 200)
        self.suggest_count.setValue(10)
        self.suggest_button = QPushButton("Suggest where to label")
        self.suggest_button.clicked.connect(self.suggest)
        suggest.addWidget(self.suggest_button)
        suggest.addWidget(self.suggest_count)
        layout.addLayout(suggest)

        layout.addWidget(QLabel("Class map of the whole raster"))
        self.output = QgsFileWidget()
        self.output.setStorageMode(QgsFileWidget.SaveFile)
        self.output.setFilter("GeoTIFF (*.tif)")
        self.output.setMinimumWidth(200)
        self.output.lineEdit().setPlaceholderText("landcover.tif (in the panel's working folder if empty)")
        self.output.fileChanged.connect(lambda *_: self.output.lineEdit().setCursorPosition(0))
        layout.addWidget(self.output)
        out = QHBoxLayout()
        self.map_button = QPushButton("Map whole raster")
        self.map_button.clicked.connect(self.map_raster)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel_map)
        out.addWidget(self.map_button, 1)
        out.addWidget(self.cancel_button)
        layout.addLayout(out)

        layout.addWidget(QLabel("Check accuracy (a validation sample the map did not choose)"))
        check = QHBoxLayout()
        self.validation_size = QSpinBox()
        self.validation_size.setRange(10, 2000)
        self.validation_size.setValue(100)
        self.validation_size.setToolTip("validation points to draw (stratified by mapped class, at least 5 per class)")
        self.validation_button = QPushButton("Draw validation sample")
        self.validation_button.clicked.connect(self.draw_validation)
        check.addWidget(self.validation_button, 1)
        check.addWidget(self.validation_size)
        layout.addLayout(check)
        check2 = QHBoxLayout()
        self.validation_tool_button = QPushButton("Label validation points")
        self.validation_tool_button.setCheckable(True)
        self.validation_tool_button.setToolTip("choose a class, then click a validation point: it takes that class")
        self.validation_tool_button.toggled.connect(self._validation_tool_toggled)
        self.report_button = QPushButton("Accuracy report")
        self.report_button.clicked.connect(self.accuracy_report)
        check2.addWidget(self.validation_tool_button)
        check2.addWidget(self.report_button)
        layout.addLayout(check2)
        self.accuracy = QLabel("")
        self.accuracy.setWordWrap(True)
        layout.addWidget(self.accuracy)
        self.compare_button = QPushButton("Compare feature sources")
        self.compare_button.setToolTip("every feature source of the raster (spectra, MMEarth's encoder, another "
                                       "model's embedding, their combinations) given the same head on these labels; "
                                       "with labelled validation points, each assessed at them: which features map "
                                       "this place best?")
        self.compare_button.clicked.connect(self.compare_sources)
        layout.addWidget(self.compare_button)
        self.comparison = QLabel("")
        self.comparison.setWordWrap(True)
        layout.addWidget(self.comparison)
        layout.addStretch(1)
        body.setMinimumWidth(340)
        # in a scroll area: on a short screen the rows keep their height (a squeezed form overlaps its
        # rows, as the desktop's screenshots showed) and the panel scrolls
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)  # the rows wrap; only the height scrolls
        scroll.setMinimumWidth(body.minimumWidth() + scroll.verticalScrollBar().sizeHint().width() + 4)
        scroll.setWidget(body)
        self.scroll = scroll
        self.setWidget(scroll)
        self.point_tool = QgsMapToolEmitPoint(self.canvas)
        self.point_tool.canvasClicked.connect(self.add_point)
        self.validation_tool = QgsMapToolEmitPoint(self.canvas)
        self.validation_tool.canvasClicked.connect(self.label_validation_point)
        self.polygon_tool = PolygonTool(self.canvas)
        self.polygon_tool.finished.connect(self.add_polygon)

    # ------------------------------------------------------------------------- inputs
    @_while_alive
    def _pick_default_raster(self, *_):
        """With no raster chosen yet, the first layer that can feed a model: a multi-band GDAL raster
        that is not one of this plugin's outputs (a preview, a confidence, a class map)."""
        if self.raster.currentLayer() is not None:
            return
        layer = first_feeding_layer()
        if layer is not None:
            self.raster.setLayer(layer)

    def fill_other_dates(self, *_):
        """The other dates offered: every raster of the project that can feed a model and holds bands,
        not features (another model's embedding, an embedding or feature raster), but the raster; the
        ones checked stay checked."""
        from .layers import can_be_a_date

        checked = set(self.other_dates.checkedItemsData())
        chosen = self.raster.currentLayer()
        self.other_dates.blockSignals(True)
        self.other_dates.clear()
        for layer in QgsProject.instance().layerTreeRoot().layerOrder():
            if layer is chosen or not can_be_a_date(layer):
                continue
            state = Qt.Checked if layer.id() in checked else Qt.Unchecked
            self.other_dates.addItemWithCheckState(layer.name(), state, layer.id())
        self.other_dates.blockSignals(False)

    def other_date_sources(self) -> list:
        """What the runtime reads for each checked other date."""
        out = []
        for layer_id in self.other_dates.checkedItemsData():
            layer = QgsProject.instance().mapLayer(layer_id)
            if isinstance(layer, QgsRasterLayer) and layer.isValid():
                out.append(self.raster_source(layer))
        return out

    def raster_layer(self):
        layer = self.raster.currentLayer()
        return layer if isinstance(layer, QgsRasterLayer) and layer.isValid() else None

    def raster_source(self, layer) -> str:
        """What the runtime reads for ``layer``: the whole product's 10 m stack for a layer QGIS
        opened from a product (GDAL's SENTINEL2 driver gives one resolution's bands), else its file."""
        from mpmae_core.runtime.io.products import product_of_gdal_name, stack_path

        product = product_of_gdal_name(layer.source())
        return stack_path(product) if product else layer.source()

    def choose_product(self):
        from qgis.PyQt.QtWidgets import QFileDialog

        path, _ = QFileDialog.getOpenFileName(self, "Sentinel-2 product", "",
                                              "Sentinel-2 products (*.zip *.xml *.json);;All files (*)")
        if path:
            self.add_product(path)

    def add_product(self, path: str):
        """Add a product's 10 m stack as a layer in natural colour and choose it; None (and a
        message) when it cannot be read."""
        from mpmae_core import registry
        from mpmae_core.runtime.io.products import open_product, stack_path
        from mpmae_core.runtime.io.styles import write_natural_colour_style

        try:
            stack = stack_path(path)
            product = open_product(path)
            offset = registry.SENTINEL2.detect_offset(product.metadata) or 0.0
            write_natural_colour_style(stack, product.order(), product.spec, offset)
        except Exception as exc:  # noqa: BLE001 - ProductError, OSError: the message is what matters
            from .algorithms.base import error_message

            self.error(error_message(exc))
            return None
        layer = QgsRasterLayer(stack, Path(str(path).rstrip("/")).stem, "gdal")
        if not layer.isValid():
            self.error(f"the stack of '{path}' could not be opened as a layer")
            return None
        QgsProject.instance().addMapLayer(layer)
        self.raster.setLayer(layer)
        return layer

    def model_path(self):
        text = self.model.currentText().strip()
        if not text:
            return None
        try:
            return models.resolve_model(text)
        except Exception as exc:  # noqa: BLE001 - QgsProcessingException: the message is what matters
            self.findings.setText(str(exc))
            return None

    def embedding_source(self):
        """The file of the 'Embedding beside' layer, or None."""
        layer = self.embedding.currentLayer()
        if isinstance(layer, QgsRasterLayer) and layer.isValid() and layer is not self.raster.currentLayer():
            return layer.source()
        return None

    def _inputs_changed(self, *_):
        from mpmae_core.runtime.inference.embedding_sources import external_embedding
        from mpmae_core.runtime.io.embeddings import describe
        from mpmae_core.runtime.io.inspect import inspect_raster, summary_lines

        self.session = None
        self.validation_result = None  # the accuracy of a map of other inputs says nothing of these
        if self.sender() is self.raster:
            self.fill_other_dates()
        layer = self.raster_layer()
        if layer is None:
            self.findings.setText("choose a Sentinel-2 raster, or another model's embedding")
            return
        try:
            source = self.raster_source(layer)
            other = external_embedding(source)
            if other is not None:  # another model's embedding: read alone, no model
                self.findings.setText(describe(other.spec, other.ds).split(". It is")[0] +
                                      "\nread alone: no model is needed")
                self.open_session(source, None)
                return
            lines = summary_lines(inspect_raster(source))
            verdict = [ln for ln in lines if ln.startswith("Can feed")]
            masked = [ln.split(": ", 1)[-1] for ln in lines if "masked as no data by the product" in ln]
            self.findings.setText("\n".join((verdict or lines[:2]) + masked))
        except Exception as exc:  # noqa: BLE001
            from .algorithms.base import error_message

            self.findings.setText(error_message(exc))
            return
        path = self.model_path()
        if path:
            self.open_session(source, path, self.other_date_sources(), self.embedding_source())

    def open_session(self, raster: str, model, other_dates=(), embedding=None):
        """A mapping session of ``raster`` with ``model`` (None: the raster is another model's
        embedding, read alone), the other dates and another model's ``embedding`` beside."""
        from mpmae_core.runtime.heads.session import MappingSession

        try:
            self.session = MappingSession(raster, model, other_dates=list(other_dates), embedding=embedding,
                                          log=lambda m: QgsMessageLog.logMessage(m, LOG_TAG, Qgis.Info))
            if self.session.is_series:
                dates = self.session.prep.dates
                self.findings.setText(self.findings.text() + f"\nseries of {len(dates)} dates: "
                                      + ", ".join(str(d) for d in dates))
        except Exception as exc:  # noqa: BLE001
            from .algorithms.base import error_message

            self.error(error_message(exc))
            self.session = None
            return
        if self.session.ready:
            self.status.setText("features ready (the embedding itself)" if self.session.alone else
                                "features ready (cached)")
            self.cache_ready.emit(True, "cached")
            return
        self.status.setText("computing the encoder's features once for this raster and model ...")
        session = self.session
        task = BackgroundTask("MMEarth: encoder features", lambda progress, cancelled: session.ensure_cache(progress,
                                                                                                      cancelled))
        self._start(task, lambda ok: self._cache_done(task, ok))

    def _cache_done(self, task, ok):
        if ok:
            self.status.setText(f"features ready (computed in {task.result_:.1f} s)")
            if self.auto.isChecked() and self.label_count() >= 2:
                self.schedule_preview()
        elif task.error:
            self.error(task.error)
        else:
            self.status.setText("cancelled: the features were not computed")
        self.cache_ready.emit(ok, task.error or "")

    def _start(self, task, on_done):
        self.tasks.append(task)

        def done(ok):
            try:
                if task in self.tasks:
                    self.tasks.remove(task)
                on_done(ok)
            except RuntimeError as exc:  # the panel was deleted while its task ran: nothing to show
                if "has been deleted" not in str(exc):
                    raise

        task.taskCompleted.connect(lambda: done(True))
        task.taskTerminated.connect(lambda: done(False))
        QgsApplication.taskManager().addTask(task)

    # ------------------------------------------------------------------------- classes
    def class_names(self) -> list:
        return [self.classes.item(i).text() for i in range(self.classes.count())]

    def class_colours(self) -> list:
        return [list(self.classes.item(i).data(Qt.UserRole)) for i in range(self.classes.count())]

    def add_class(self, name: str, colour=None):
        from mpmae_core import registry

        name = name.strip()
        if not name or name in self.class_names():
            return
        names = self.class_names() + [name]
        rgb = list(colour) if colour else registry.suggest_class_colours(names)[-1]
        item = QListWidgetItem(colour_icon(rgb), name)
        item.setData(Qt.UserRole, [int(v) for v in rgb])
        self.classes.addItem(item)
        self.classes.setCurrentItem(item)
        self.restyle_labels()

    def add_class_from_field(self):
        self.add_class(self.class_name.text())
        self.class_name.clear()

    def selected_class(self):
        item = self.classes.currentItem()
        return item.text() if item else None

    def rename_class(self, new_name=None):
        item = self.classes.currentItem()
        if item is None:
            return
        old = item.text()
        if not isinstance(new_name, str):
            new_name, ok = QInputDialog.getText(self, "Rename class", "New name", text=old)
            if not ok:
                return
        new_name = new_name.strip()
        if not new_name or new_name in self.class_names():
            return
        item.setText(new_name)
        for layer in self.label_layers():
            idx = layer.fields().lookupField(self.field_of(layer))
            for f in layer.getFeatures():
                if f[idx] == old:
                    layer.changeAttributeValue(f.id(), idx, new_name)
        self.restyle_labels()

    def recolour_class(self, colour=None):
        item = self.classes.currentItem()
        if item is None:
            return
        if colour is None:
            chosen = QColorDialog.getColor(QColor(*item.data(Qt.UserRole)), self)
            if not chosen.isValid():
                return
            colour = (chosen.red(), chosen.green(), chosen.blue())
        item.setData(Qt.UserRole, [int(v) for v in colour])
        item.setIcon(colour_icon(colour))
        self.restyle_labels()

    def remove_class(self):
        row = self.classes.currentRow()
        if row >= 0:
            self.classes.takeItem(row)

    # ------------------------------------------------------------------------- labels
    def label_layers(self) -> list:
        return [lyr for lyr in (self.point_layer, self.polygon_layer) if lyr is not None and _alive(lyr)]

    def field_of(self, layer) -> str:
        return layer.customProperty("mmearth/class_field", CLASS_FIELD)

    def labels_store(self) -> Path:
        """The GeoPackage new labels go to: the one chosen, else beside the project file, else (a project
        not saved yet) a new one in the QGIS profile's mmearth/labels folder. Fixed once chosen."""
        chosen = self.labels_file.filePath().strip()
        if chosen:
            path = Path(chosen)
            return path if path.suffix.lower() == ".gpkg" else path.with_suffix(".gpkg")
        if self.labels_path is not None:
            return self.labels_path
        project = QgsProject.instance().fileName()
        if project:
            p = Path(project)
            return p.with_name(f"{p.stem}_mmearth_labels.gpkg")
        folder = Path(QgsApplication.qgisSettingsDirPath()) / "mmearth" / "labels"
        return folder / f"labels-{time.strftime('%Y%m%d-%H%M%S')}.gpkg"

    def _new_label_layer(self, kind: str):
        from osgeo import ogr, osr

        layer_crs = self.raster_layer().crs() if self.raster_layer() else self.canvas.mapSettings().destinationCrs()
        path = self.labels_store()
        table = "points" if kind == "Point" else "polygons"
        try:
            ds = open_geopackage(path)
            if ds.GetLayerByName(table) is None:
                srs = osr.SpatialReference()
                srs.ImportFromWkt(layer_crs.toWkt())
                out = ds.CreateLayer(table, srs=srs, geom_type=ogr.wkbPoint if kind == "Point" else ogr.wkbPolygon)
                if out is None or out.CreateField(ogr.FieldDefn(CLASS_FIELD, ogr.OFTString)) != 0:
                    raise OSError(f"cannot create the table '{table}' in '{path}'")
            ds = None
        except (OSError, RuntimeError) as exc:
            self.error(f"could not store the labels in '{path}': {exc}. Choose another labels file")
            return None
        self.labels_path = path
        layer = QgsVectorLayer(f"{path}|layername={table}", f"MMEarth labels ({table})", "ogr")
        if not layer.isValid():
            self.error(f"could not open the labels in '{path}': choose another labels file")
            return None
        layer.setCustomProperty("mmearth/class_field", CLASS_FIELD)
        QgsProject.instance().addMapLayer(layer, False)
        QgsProject.instance().layerTreeRoot().insertLayer(0, layer)  # labels above everything
        layer.startEditing()
        self._watch(layer)
        return layer

    def restyle_labels(self):
        """Label layers drawn in their classes' colours (a categorized renderer on the class field)."""
        from qgis.core import QgsCategorizedSymbolRenderer, QgsRendererCategory, QgsSymbol

        for layer in self.label_layers():
            cats = []
            for name, rgb in zip(self.class_names(), self.class_colours()):
                sym = QgsSymbol.defaultSymbol(layer.geometryType())
                sym.setColor(QColor(*rgb))
                if layer.geometryType() == QgsWkbTypes.PointGeometry:
                    sym.setSize(3.2)
                    sym.symbolLayer(0).setStrokeColor(QColor(255, 255, 255))
                else:
                    sym.setOpacity(0.5)
                cats.append(QgsRendererCategory(name, sym, name))
            layer.setRenderer(QgsCategorizedSymbolRenderer(self.field_of(layer), cats))
            layer.triggerRepaint()

    def _watch(self, layer):
        layer.featureAdded.connect(self._labels_changed)
        layer.featureDeleted.connect(self._labels_changed)
        layer.attributeValueChanged.connect(self._labels_changed)
        layer.geometryChanged.connect(self._labels_changed)

    def adopt(self):
        layer = self.adopt_layer.currentLayer()
        field = self.adopt_field.text().strip() or CLASS_FIELD
        if not isinstance(layer, QgsVectorLayer) or layer.fields().lookupField(field) < 0:
            self.status.setText(f"choose a point or polygon layer with a field '{field}'")
            return
        layer.setCustomProperty("mmearth/class_field", field)
        if layer.geometryType() == QgsWkbTypes.PointGeometry:
            self.point_layer = layer
        else:
            self.polygon_layer = layer
        self._watch(layer)
        for value in sorted({str(f[field]) for f in layer.getFeatures() if f[field] not in (None, "")}):
            self.add_class(value)
        self._labels_changed()

    def _add_label(self, geom, kind):
        name = self.selected_class()
        if name is None:
            self.status.setText("add a class and select it before labelling")
            return
        attr = "point_layer" if kind == "Point" else "polygon_layer"
        layer = getattr(self, attr)
        if layer is None or not _alive(layer):
            layer = self._new_label_layer(kind)
            if layer is None:
                return
            setattr(self, attr, layer)
            self.restyle_labels()
        if not layer.isEditable():
            layer.startEditing()
        canvas_crs = self.canvas.mapSettings().destinationCrs()
        if canvas_crs != layer.crs():
            geom = QgsGeometry(geom)
            geom.transform(QgsCoordinateTransform(canvas_crs, layer.crs(), QgsProject.instance()))
        feature = QgsFeature(layer.fields())
        feature.setGeometry(geom)
        feature.setAttribute(self.field_of(layer), name)
        layer.beginEditCommand(f"MMEarth label {name}")
        layer.addFeature(feature)
        layer.endEditCommand()
        self._commit(layer)
        self.added.append(layer)
        layer.triggerRepaint()

    def _commit(self, layer) -> bool:
        """Save the layer's edits now (staying in edit mode): a click is never only in memory."""
        if layer.commitChanges(False):
            return True
        self.error(f"could not save the label in '{layer.source()}': {'; '.join(layer.commitErrors())}")
        return False

    def undo_label(self):
        """Remove the last label added from the panel (saved at once, like the click)."""
        while self.added:
            layer = self.added.pop()
            if not _alive(layer):
                continue
            ids = sorted(f.id() for f in layer.getFeatures())
            if not ids:
                continue
            if not layer.isEditable():
                layer.startEditing()
            layer.deleteFeature(ids[-1])
            self._commit(layer)
            layer.triggerRepaint()
            return

    def add_point(self, point, button=None):
        self._add_label(QgsGeometry.fromPointXY(QgsPointXY(point)), "Point")

    def add_polygon(self, geom):
        self._add_label(geom, "Polygon")

    def _point_tool_toggled(self, on):
        if on:
            self.validation_tool_button.setChecked(False)
            self.polygon_tool_button.setChecked(False)
            self.canvas.setMapTool(self.point_tool)
        elif self.canvas.mapTool() is self.point_tool:
            self.canvas.unsetMapTool(self.point_tool)

    def _polygon_tool_toggled(self, on):
        if on:
            self.validation_tool_button.setChecked(False)
            self.point_tool_button.setChecked(False)
            self.canvas.setMapTool(self.polygon_tool)
        elif self.canvas.mapTool() is self.polygon_tool:
            self.canvas.unsetMapTool(self.polygon_tool)

    def labelled_features(self):
        """[(WKB in the raster's CRS, class index)], the class names and the per-class counts."""
        names = self.class_names()
        index = {n: i for i, n in enumerate(names)}
        raster = self.raster_layer()
        out, counts = [], {n: 0 for n in names}
        for layer in self.label_layers():
            field = self.field_of(layer)
            transform = None
            if raster is not None and layer.crs() != raster.crs():
                transform = QgsCoordinateTransform(layer.crs(), raster.crs(), QgsProject.instance())
            for f in layer.getFeatures():
                value = f[field]
                if value is None or str(value) not in index or f.geometry().isEmpty():
                    continue
                geom = QgsGeometry(f.geometry())
                if transform is not None:
                    geom.transform(transform)
                out.append((bytes(geom.asWkb()), index[str(value)]))
                counts[str(value)] += 1
        return out, names, counts

    def label_count(self) -> int:
        return len(self.labelled_features()[0])

    def _labels_changed(self, *_):
        # counted once the edit is committed (during a commit a new feature is seen twice)
        QTimer.singleShot(0, self._count_labels)
        if self.auto.isChecked():
            self.schedule_preview()

    def _count_labels(self):
        try:
            _, _, counts = self.labelled_features()
            self.counts.setText("labels: " + ", ".join(f"{n} {c}" for n, c in counts.items()))
        except RuntimeError:  # the panel was deleted meanwhile
            pass

    def schedule_preview(self):
        self._debounce.start()

    # ------------------------------------------------------------------------- preview
    def view_window(self):
        """The canvas extent as a pixel window of the raster (x0, y0, w, h)."""
        raster = self.raster_layer()
        extent = self.canvas.extent()
        canvas_crs = self.canvas.mapSettings().destinationCrs()
        if canvas_crs != raster.crs():
            extent = QgsCoordinateTransform(canvas_crs, raster.crs(), QgsProject.instance()).transformBoundingBox(extent)
        gt = self.session.prep.geotransform
        x0 = int((extent.xMinimum() - gt[0]) / gt[1])
        x1 = int((extent.xMaximum() - gt[0]) / gt[1]) + 1
        y0 = int((extent.yMaximum() - gt[3]) / gt[5])
        y1 = int((extent.yMinimum() - gt[3]) / gt[5]) + 1
        x0, y0 = max(x0, 0), max(y0, 0)
        x1, y1 = min(x1, self.session.prep.width), min(y1, self.session.prep.height)
        return (x0, y0, max(1, x1 - x0), max(1, y1 - y0))

    def not_ready_reason(self) -> str:
        """Why a preview or a map cannot start now, in words that are true ('' when it can)."""
        if self.raster_layer() is None:
            return "choose a Sentinel-2 raster first"
        alone = self.session is not None and self.session.alone
        if not alone and not self.model.currentText().strip():
            return "choose a model first (or, as the raster, another model's embedding: it needs none)"
        if self.session is None:
            return "the raster and model could not be opened together: " + (self.findings.text() or "see above")
        if not self.session.ready:
            if any("encoder features" in t.description() for t in self.tasks):
                return "the encoder's features are still being computed for this raster: wait until they are ready"
            return "the encoder's features were not computed (cancelled or failed): choose the raster again"
        return ""

    def preview(self):
        reason = self.not_ready_reason()
        if reason:
            self.status.setText(reason)
            return
        features, names, counts = self.labelled_features()
        if sum(1 for c in counts.values() if c) < 2:
            self.status.setText("label at least two classes to see a map")
            return
        session, colours, window = self.session, self.class_colours(), self.view_window()
        self.preview_count += 1
        stem = f"preview{self.preview_count}"
        projection = session.prep.projection
        folder = self.workdir

        def work(progress, cancelled):
            from mpmae_core.runtime.heads.session import write_preview

            head, cv = session.quick_head(features, names, colours)
            pv = session.preview(head, window, max_pixels=200_000)
            paths = write_preview(pv, head, folder, projection, stem)
            return head, cv, pv, paths

        task = BackgroundTask("MMEarth: preview", work)
        self._start(task, lambda ok: self._preview_done(task, ok))

    def _preview_group_node(self):
        """The layer-tree group of the preview, just above the raster (so below labels and suggestions)."""
        group = self.preview_group
        try:
            if group is not None and group.parent() is not None:
                return group
        except RuntimeError:  # deleted with its project
            pass
        parent, index = self._above_raster()
        self.preview_group = parent.insertGroup(index, "MMEarth preview")
        return self.preview_group

    def _above_raster(self):
        """(layer-tree group, index) just above the raster's node (the top of the tree without one)."""
        root = QgsProject.instance().layerTreeRoot()
        raster = self.raster_layer()
        node = root.findLayer(raster.id()) if raster is not None else None
        parent = node.parent() if node is not None else root
        index = next((i for i, child in enumerate(parent.children())
                      if node is not None and getattr(child, "layerId", lambda: None)() == raster.id()), 0)
        return parent, index

    def _show_raster(self, key: str, path, title: str, visible: bool):
        """Show ``path`` as the preview layer ``key``: the same layer as before with its new data (its
        place, visibility, name and opacity stay the user's), or a new one in the preview group."""
        layer = self.preview_layers.get(key)
        style = str(Path(path).with_suffix(".qml"))
        if layer is not None and _alive(layer):
            old = Path(layer.source())
            opacity = layer.renderer().opacity() if layer.renderer() else 1.0
            layer.setDataSource(str(path), layer.name(), "gdal")
            layer.loadNamedStyle(style)
            if layer.renderer():
                layer.renderer().setOpacity(opacity)
            layer.triggerRepaint()
            if old.parent == self.workdir and old != Path(path):
                for stale in (old, old.with_suffix(".qml"), Path(str(old) + ".aux.xml")):
                    try:
                        stale.unlink()
                    except OSError:
                        pass
            return layer
        layer = mark_output(QgsRasterLayer(str(path), title, "gdal"))
        layer.setCustomProperty(PREVIEW_PROPERTY, True)
        layer.loadNamedStyle(style)
        QgsProject.instance().addMapLayer(layer, False)
        node = self._preview_group_node().addLayer(layer)
        node.setItemVisibilityChecked(visible)
        self.preview_layers[key] = layer
        return layer

    def _preview_done(self, task, ok):
        if not ok:
            if task.error:
                self.error(task.error)
            else:
                self.status.setText("the preview was cancelled")
            return
        head, cv, pv, (class_path, conf_path) = task.result_
        self.head, self.last_preview = head, pv
        cells = getattr(self.session, "label_conflicts", None) if self.session is not None else None
        warning = cells.conflict_warning(self.class_names()) if cells is not None else ""
        self._show_raster("classes", class_path, "MMEarth preview", True)
        self._show_raster("confidence", conf_path, "MMEarth confidence", False)
        text = "preview of the view"
        if cv:
            text += (f"; agreement with the labels in cross-validation {cv['accuracy']:.0%}, balanced "
                     f"{cv['balanced_accuracy']:.0%} ({head.describe()})")
            if self.validation_result is None:
                text += "; that is not the map's accuracy: check it with a validation sample"
        if self.validation_result is not None:
            oa = self.validation_result["overall_accuracy"]
            text += (f"; map accuracy {oa['estimate']:.0%} +- {oa['ci95']:.0%} from "
                     f"{self.validation_result['sample_size']} validation points")
        self.status.setText(text)
        if warning:
            self.error(warning)  # the same place labelled with two classes: said, and left out
        self.preview_ready.emit()

    # ------------------------------------------------------------------------- suggestions
    def suggest(self):
        if self.last_preview is None:
            self.status.setText("make a preview first (label two classes, then Preview)")
            return
        from mpmae_core.runtime.heads.session import MappingSession

        n = self.suggest_count.value()
        places = MappingSession.suggest(self.last_preview, n, min_distance_px=5)
        raster = self.raster_layer()
        old = self.suggestion_layer
        if old is not None and _alive(old):
            QgsProject.instance().removeMapLayer(old.id())
        # a table of the labels' GeoPackage, not a memory layer: saved with the project, no question at exit
        path = self.labels_store()
        try:
            write_points(path, "suggestions", raster.crs().toWkt(), [(x, y) for x, y, _ in places],
                         {"confidence": [p for _, _, p in places]})
        except OSError as exc:
            self.error(f"could not save the suggestions in '{path}': {exc}")
            return
        self.labels_path = self.labels_path or path
        layer = QgsVectorLayer(f"{path}|layername=suggestions", "MMEarth: label here next", "ogr")
        from qgis.core import QgsMarkerSymbol, QgsSingleSymbolRenderer

        layer.setRenderer(QgsSingleSymbolRenderer(QgsMarkerSymbol.createSimple(
            {"name": "cross2", "color": "0,0,0", "size": "4.5", "outline_width": "0.8", "outline_color": "0,0,0"})))
        mark_output(layer)
        QgsProject.instance().addMapLayer(layer, False)
        QgsProject.instance().layerTreeRoot().insertLayer(0, layer)  # on top, with the labels
        self.suggestion_layer = layer
        self.status.setText(f"{len(places)} places where the model is least sure (lowest top-class probability): "
                            "label some of them")

    # ------------------------------------------------------------------------- the whole raster
    def map_raster(self, output=None):
        reason = self.not_ready_reason()
        if reason:
            self.status.setText(reason)
            return
        out = Path(output or self.output.filePath() or (self.workdir / "landcover.tif"))
        self.output.setFilePath(str(out))
        features, names, _ = self.labelled_features()
        session, colours = self.session, self.class_colours()
        head_path = out.with_name(out.stem + "_head.onnx")
        report = out.with_name(out.stem + "_head.html")
        self.map_button.setEnabled(False)
        self.cancel_button.setEnabled(True)

        def work(progress, cancelled):
            # The head and report are written under temporary names and take their own only when the
            # map is complete: a cancel or an error at any point leaves no file of any kind.
            tag = f"mmearth-tmp{os.getpid()}-{time.time_ns()}"
            tmp_head = out.with_name(f".{out.stem}_head.{tag}.onnx")
            tmp_report = out.with_name(f".{out.stem}_head.{tag}.html")
            try:
                trained = session.train_full_head(features, names, tmp_head, class_colours=colours,
                                                  report_path=tmp_report, cancelled=cancelled)
                progress(0.2)
                res = session.map_to_file(trained["head"], out, progress=lambda f: progress(0.2 + 0.8 * f),
                                          cancelled=cancelled)
                os.replace(tmp_head, head_path)
                os.replace(tmp_report, report)
            finally:
                for tmp in (tmp_head, tmp_report):
                    try:
                        tmp.unlink()
                    except OSError:
                        pass
            return trained, res

        self.map_task = BackgroundTask("MMEarth: landcover map of the whole raster", work)
        self._start(self.map_task, lambda ok: self._map_done(self.map_task, ok, out, head_path))

    def cancel_map(self):
        task = getattr(self, "map_task", None)
        if task is not None:
            task.cancel()

    def _map_done(self, task, ok, out, head_path):
        self.map_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if ok:
            trained, res = task.result_
            layer = mark_output(QgsRasterLayer(str(out), Path(out).stem, "gdal"))
            layer.loadNamedStyle(str(Path(out).with_suffix(".qml")))
            QgsProject.instance().addMapLayer(layer, False)
            parent, index = self._above_raster()  # below the labels and suggestions, like the preview
            parent.insertLayer(index, layer)
            inputs = "INPUT=..." if self.session.alone else "INPUT=... MODEL=..." + (
                " OTHER_EMBEDDING=..." if self.embedding_source() else "")
            text = (f"wrote {out.name} ({res['seconds']:.1f} s from the cached features) and its head "
                    f"{head_path.name} ({trained['chosen']}); `qgis_process run mmearth:segment -- HEAD={head_path} "
                    f"{inputs} OUTPUT=...` repeats it headless")
            QgsMessageLog.logMessage(f"wrote {out} and {head_path}", LOG_TAG, Qgis.Info)
            self.status.setText(text)
            self.last_map = Path(out)
            self.validation_result = None  # a new map: its accuracy is not yet known
        elif task.error and not task.isCanceled():
            text = task.error
            self.error(text)
        else:
            text = "cancelled: nothing was written"
            self.status.setText(text)
        self.map_finished.emit(ok, text)

    # ------------------------------------------------------------------------- check accuracy
    def validation_path(self) -> Path:
        """Where a new validation sample is written: beside the labels."""
        store = self.labels_store()
        return store.with_name(store.stem + "_validation.gpkg")

    def validation_file(self) -> Path:
        """The file of the validation sample in use: its layer's (which a reopened project brings back
        wherever it was drawn), else where a new one would go."""
        layer = self.validation_layer
        if layer is not None and _alive(layer):
            return Path(layer.source().split("|")[0])
        return self.validation_path()

    def draw_validation(self):
        """A stratified random sample of the last whole-raster map, away from the training labels,
        loaded as a layer whose points the analyst labels with clicks (``label_validation_point``)."""
        from mpmae_core.runtime.heads.validation import sample_design
        from mpmae_core.runtime.io.aoi import Area

        if self.last_map is None or not Path(self.last_map).is_file():
            self.accuracy.setText("map the whole raster first: the validation sample is drawn from its map")
            return
        raster = self.raster_layer()
        features, _, _ = self.labelled_features()
        exclude = Area(tuple(bytes(w) for w, _ in features), raster.crs().toWkt(), "the training labels") \
            if features and raster is not None else None
        path = self.validation_path()
        old = self.validation_layer
        if old is not None and _alive(old):
            QgsProject.instance().removeMapLayer(old.id())
        self.validation_layer = None
        try:
            design = sample_design(self.last_map, path, size=self.validation_size.value(), min_per_class=5,
                                   exclude_labels=exclude, buffer_m=50.0, seed=int(time.time()) % 100_000)
        except Exception as exc:  # noqa: BLE001 - the message is what matters
            from .algorithms.base import error_message

            self.error(error_message(exc))
            return
        layer = QgsVectorLayer(f"{path}|layername=validation", "MMEarth validation points", "ogr")
        from qgis.core import QgsCategorizedSymbolRenderer, QgsMarkerSymbol, QgsRendererCategory

        def ring(fill: str):  # yellow rings: hollow until labelled, then filled with the class's colour
            return QgsMarkerSymbol.createSimple({"name": "circle", "color": fill, "size": "3.5",
                                                 "outline_width": "0.7", "outline_color": "255,255,0"})

        cats = [QgsRendererCategory(n, ring(",".join(str(v) for v in c[:3])), n)
                for n, c in zip(self.class_names(), self.class_colours())]
        cats.append(QgsRendererCategory(None, ring("255,255,255,0"), "not labelled yet"))
        layer.setRenderer(QgsCategorizedSymbolRenderer("reference", cats))
        mark_output(layer)
        QgsProject.instance().addMapLayer(layer, False)
        QgsProject.instance().layerTreeRoot().insertLayer(0, layer)
        self.validation_layer = layer
        self.validation_result = None
        self.accuracy.setText(f"{design['size']} validation points drawn from {Path(self.last_map).name} (stratified "
                              "by mapped class, 50 m from the labels): choose a class, turn on 'Label validation "
                              "points' and click each point with what you see; then 'Accuracy report'")

    def _validation_tool_toggled(self, on):
        if on:
            self.point_tool_button.setChecked(False)
            self.polygon_tool_button.setChecked(False)
            self.canvas.setMapTool(self.validation_tool)
        elif self.canvas.mapTool() is self.validation_tool:
            self.canvas.unsetMapTool(self.validation_tool)

    def label_validation_point(self, point, button=None):
        """The validation point nearest the click (within 8 screen pixels) takes the chosen class; it
        never becomes a training label."""
        layer = self.validation_layer
        name = self.selected_class()
        if layer is None or not _alive(layer):
            self.accuracy.setText("draw a validation sample first")
            return
        if not name:
            self.accuracy.setText("choose the class of the point first")
            return
        from qgis.core import QgsCoordinateTransform, QgsRectangle

        canvas_crs = self.canvas.mapSettings().destinationCrs()
        pt = QgsPointXY(point)
        if canvas_crs != layer.crs():
            pt = QgsCoordinateTransform(canvas_crs, layer.crs(), QgsProject.instance()).transform(pt)
        tol = 8 * self.canvas.mapUnitsPerPixel()
        best, dist = None, None
        for f in layer.getFeatures(QgsRectangle(pt.x() - tol, pt.y() - tol, pt.x() + tol, pt.y() + tol)):
            d = f.geometry().asPoint().distance(pt)
            if dist is None or d < dist:
                best, dist = f, d
        if best is None:
            self.accuracy.setText("no validation point there: click on one of the yellow circles")
            return
        if not layer.isEditable():
            layer.startEditing()
        layer.changeAttributeValue(best.id(), layer.fields().indexOf("reference"), name)
        if not layer.commitChanges():
            self.error(f"could not save the validation label: {'; '.join(layer.commitErrors())}")
            return
        layer.triggerRepaint()
        done = sum(1 for f in layer.getFeatures() if f["reference"] not in (None, "") and
                   not (hasattr(f["reference"], "isNull") and f["reference"].isNull()))
        self.accuracy.setText(f"{done} of {layer.featureCount()} validation points labelled")

    def compare_sources(self):
        """``MappingSession.compare`` in the background: the table as an HTML page beside the
        panel's map, and the best source (by the validation sample when its points are labelled)."""
        reason = self.not_ready_reason()
        if reason:
            self.comparison.setText(reason)
            return
        features, names, counts = self.labelled_features()
        if sum(1 for c in counts.values() if c) < 2:
            self.comparison.setText("label at least two classes first")
            return
        validation = self.validation_file() if self.validation_layer is not None and \
            _alive(self.validation_layer) else None
        report = self.workdir / "feature_comparison.html"
        session = self.session
        self.compare_button.setEnabled(False)
        self.comparison.setText("comparing every feature source on the labels ...")

        def work(progress, cancelled):
            return session.compare(features, names, validation=validation, report=report, cancelled=cancelled,
                                   log=lambda m: QgsMessageLog.logMessage(m, LOG_TAG, Qgis.Info))

        task = BackgroundTask("MMEarth: compare feature sources", work)
        self._start(task, lambda ok: self._compare_done(task, ok))

    def _compare_done(self, task, ok):
        self.compare_button.setEnabled(True)
        if ok:
            res = task.result_
            lines = [f"{r['title']}: " + (f"validation {r['validation']['overall']:.0%} "
                                          f"+- {r['validation']['ci95']:.0%}" if "validation" in r else
                                          f"CV balanced {r.get('spatial', r['grouped'])['balanced_accuracy']:.0%}")
                     for r in res["rows"]]
            text = (f"best: {res['best']} (by {res['by']})\n" + "\n".join(lines) +
                    f"\ntable: {Path(res['report']).name}")
            QgsMessageLog.logMessage(res["text"], LOG_TAG, Qgis.Info)
            self.comparison.setText(text)
            QTimer.singleShot(150, lambda: self.scroll.ensureWidgetVisible(self.comparison, 10, 10))
        else:
            text = task.error or "cancelled"
            if task.error:
                self.error(task.error)
            self.comparison.setText(text)
        self.compare_finished.emit(ok, text)

    def accuracy_report(self):
        """The accuracy and area report of the last map from the labelled validation points."""
        from mpmae_core.runtime.heads.validation import assess_map

        if self.validation_layer is None or self.last_map is None:
            self.accuracy.setText("draw a validation sample and label its points first")
            return
        report = Path(self.last_map).with_name(Path(self.last_map).stem + "_accuracy.html")
        try:
            res = assess_map(self.last_map, self.validation_file(), report=report,
                             table=report.with_suffix(".csv"), figures=report.with_suffix(".json"))
        except Exception as exc:  # noqa: BLE001
            from .algorithms.base import error_message

            self.error(error_message(exc))
            return
        self.validation_result = res
        oa = res["overall_accuracy"]
        worst = min(res["per_class"], key=lambda c: c["users_accuracy"]["estimate"]
                    if c["users_accuracy"]["estimate"] is not None else 2)
        self.accuracy.setText(
            f"map accuracy {oa['estimate']:.1%} +- {oa['ci95']:.1%} (95 %), from {res['sample_size']} validation "
            f"points ({res['estimator']} estimator); least reliable class: {worst['class']} (user's accuracy "
            f"{(worst['users_accuracy']['estimate'] or 0):.0%}). Report: {report}")
        QgsMessageLog.logMessage(f"wrote {report}", LOG_TAG, Qgis.Info)

    # ------------------------------------------------------------------------- project state
    def state(self) -> dict:
        raster = self.raster_layer()
        return {"raster": raster.id() if raster else "", "model": self.model.currentText().strip(),
                "classes": [[n, c] for n, c in zip(self.class_names(), self.class_colours())],
                "point_layer": self.point_layer.id() if self.point_layer and _alive(self.point_layer) else "",
                "polygon_layer": self.polygon_layer.id() if self.polygon_layer and _alive(self.polygon_layer) else "",
                "auto": self.auto.isChecked(), "output": self.output.filePath(),
                "other_dates": list(self.other_dates.checkedItemsData()),
                "embedding": self.embedding.currentLayer().id() if self.embedding_source() else "",
                "validation_layer": self.validation_layer.id() if self.validation_layer is not None and
                _alive(self.validation_layer) else "",
                "last_map": str(self.last_map) if self.last_map else ""}

    @_while_alive
    def save_state(self, document=None):
        QgsProject.instance().writeEntry(PROJECT_SCOPE, "state", json.dumps(self.state()))

    @_while_alive
    def restore_state(self, document=None):
        text, ok = QgsProject.instance().readEntry(PROJECT_SCOPE, "state", "")
        if not ok or not text:
            return
        try:
            state = json.loads(text)
        except json.JSONDecodeError:
            return
        project = QgsProject.instance()
        # a saved project holds the last preview's layers, whose files were temporary: the next preview
        # makes new ones where they were
        stale = [lyr.id() for lyr in project.mapLayers().values() if lyr.customProperty(PREVIEW_PROPERTY, False)]
        project.removeMapLayers(stale)
        for group in project.layerTreeRoot().findGroups():
            if group.name() == "MMEarth preview" and not group.children():
                group.parent().removeChildNode(group)
        self.preview_layers, self.preview_group = {}, None
        self.classes.clear()
        for name, colour in state.get("classes", []):
            self.add_class(name, colour)
        for attr in ("point_layer", "polygon_layer"):
            layer = project.mapLayer(state.get(attr, "")) if state.get(attr) else None
            setattr(self, attr, layer)
            if layer is not None:
                self._watch(layer)
        self.auto.setChecked(bool(state.get("auto", True)))
        self.output.setFilePath(state.get("output", ""))
        # the inputs are set quietly, then opened once: a session opened on half of them would start
        # computing features for a raster and model the project does not use
        for widget in (self.model, self.raster, self.embedding):
            widget.blockSignals(True)
        self.model.setEditText(state.get("model", ""))
        raster = project.mapLayer(state.get("raster", "")) if state.get("raster") else None
        self.raster.setLayer(raster)
        self.embedding.setLayer(project.mapLayer(state.get("embedding", "")) if state.get("embedding") else None)
        for widget in (self.model, self.raster, self.embedding):
            widget.blockSignals(False)
        self.fill_other_dates()
        self.other_dates.blockSignals(True)
        wanted = set(state.get("other_dates", []))
        for i in range(self.other_dates.count()):
            if self.other_dates.itemData(i) in wanted:
                self.other_dates.setItemCheckState(i, Qt.Checked)
        self.other_dates.blockSignals(False)
        self._inputs_changed()
        # the validation sample and the map it was drawn from: labelling its points and the accuracy
        # report go on where they were left
        last = state.get("last_map") or ""
        self.last_map = Path(last) if last and Path(last).is_file() else None
        val = project.mapLayer(state.get("validation_layer", "")) if state.get("validation_layer") else None
        self.validation_layer = val if isinstance(val, QgsVectorLayer) and val.isValid() else None


WORK_KEEP_DAYS = 7


def work_root() -> Path:
    """The panels' working folders: in the QGIS profile, not the system's temporary folder (QGIS asks
    about 'temporary layers' at exit for any layer whose file lies there)."""
    return Path(QgsApplication.qgisSettingsDirPath()) / "mmearth" / "work"


def referenced(folder: Path) -> bool:
    """Whether a layer of the current project reads a file inside ``folder``."""
    prefix = str(folder) + os.sep
    return any(lyr.source().startswith(prefix) for lyr in QgsProject.instance().mapLayers().values())


def new_workdir() -> Path:
    """A fresh working folder for one panel; folders of earlier sessions older than a week that no
    open project reads are removed first."""
    root = work_root()
    root.mkdir(parents=True, exist_ok=True)
    cutoff = time.time() - WORK_KEEP_DAYS * 86400
    for old in root.iterdir():
        try:
            if old.is_dir() and old.stat().st_mtime < cutoff and not referenced(old):
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass
    folder = root / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{time.time_ns() % 1_000_000}"
    folder.mkdir()
    return folder


def open_geopackage(path: Path):
    """The GeoPackage ``path`` open for writing, created (with its folder) when missing; OSError if not."""
    from osgeo import ogr

    path.parent.mkdir(parents=True, exist_ok=True)
    ds = ogr.Open(str(path), 1) if path.exists() else ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    if ds is None:
        raise OSError(f"cannot open or create the GeoPackage '{path}'")
    return ds


def write_points(path: Path, table: str, crs_wkt: str, points, fields: dict) -> None:
    """(Re)write ``table`` of the GeoPackage ``path`` (created if needed) as these points with float
    ``fields``; OSError naming the problem."""
    from osgeo import ogr, osr

    ds = open_geopackage(path)
    for i in range(ds.GetLayerCount()):
        if ds.GetLayerByIndex(i).GetName() == table:
            ds.DeleteLayer(i)
            break
    srs = osr.SpatialReference()
    srs.ImportFromWkt(crs_wkt)
    layer = ds.CreateLayer(table, srs=srs, geom_type=ogr.wkbPoint)
    if layer is None:
        raise OSError(f"cannot create the table '{table}'")
    for name in fields:
        layer.CreateField(ogr.FieldDefn(name, ogr.OFTReal))
    layer.StartTransaction()
    for i, (x, y) in enumerate(points):
        f = ogr.Feature(layer.GetLayerDefn())
        g = ogr.Geometry(ogr.wkbPoint)
        g.AddPoint_2D(float(x), float(y))
        f.SetGeometry(g)
        for name, values in fields.items():
            f.SetField(name, float(values[i]))
        if layer.CreateFeature(f) != 0:
            raise OSError(f"cannot write to the table '{table}'")
    if layer.CommitTransaction() != 0:
        raise OSError(f"cannot save the table '{table}'")
    ds = None


def _alive(layer) -> bool:
    try:
        return QgsProject.instance().mapLayer(layer.id()) is not None
    except RuntimeError:  # the C++ layer was deleted
        return False
