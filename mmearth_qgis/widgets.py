"""Processing dialog widgets: the MODEL and HEAD parameters as a drop-down of the installed
models by name (editable: a file path still works), with a button to browse for a file."""

from processing.gui.wrappers import WidgetWrapper
from qgis.PyQt.QtCore import QVariant
from qgis.PyQt.QtWidgets import QComboBox, QFileDialog, QHBoxLayout, QToolButton, QWidget

from . import models


class ModelWidgetWrapper(WidgetWrapper):
    def createWidget(self, **kwargs):  # noqa: N802
        widget = QWidget()
        layout = QHBoxLayout(widget)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(6)
        self.combo = QComboBox()
        self.combo.setEditable(True)
        self.combo.setToolTip(f"models in {models.models_folder()} by name, or an .onnx file")
        self.refresh()
        layout.addWidget(self.combo, 1)
        browse = QToolButton()
        browse.setText("…")
        browse.setToolTip("Choose an .onnx file")
        browse.clicked.connect(self.browse)
        layout.addWidget(browse)
        return widget

    def refresh(self) -> None:
        current = self.combo.currentText()
        self.combo.clear()
        if self.parameterDefinition().flags() & self.parameterDefinition().FlagOptional:
            self.combo.addItem("")
        self.combo.addItems(models.available_models())
        self.combo.setEditText(current)

    def browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self.combo, "Choose a model", str(models.models_folder()),
                                              "ONNX models (*.onnx)")
        if path:
            self.combo.setEditText(path)

    def setValue(self, value):  # noqa: N802
        self.combo.setEditText("" if value is None else str(value))

    def value(self):
        text = self.combo.currentText().strip()
        return text or None


class ClassFieldWidgetWrapper(WidgetWrapper):
    """The class field of a labels layer: a drop-down of the chosen layer's fields that starts on the
    field most likely to hold classes (``labels.suggest_class_field``: class, landuse, label ...; never
    an id such as fid). Follows the labels parameter named in the metadata's ``parent``."""

    def createWidget(self, parent_param: str = "LABELS", **kwargs):  # noqa: N802
        self.parent_param = parent_param
        self.combo = QComboBox()
        self.combo.setEditable(True)
        self.combo.setToolTip("the field holding each feature's class")
        return self.combo

    def postInitialize(self, wrappers):  # noqa: N802
        for wrapper in wrappers:
            if wrapper.parameterDefinition().name() == self.parent_param:
                wrapper.widgetValueHasChanged.connect(self.parent_changed)
                self.parent_changed(wrapper)

    def parent_changed(self, wrapper) -> None:
        from qgis.core import QgsProcessingContext, QgsProcessingUtils, QgsProject, QgsVectorLayer

        from mpmae_core.runtime.io.labels import suggest_class_field

        value = wrapper.parameterValue() if hasattr(wrapper, "parameterValue") else wrapper.value()
        source = getattr(value, "source", None)
        if source is not None:  # a QgsProcessingFeatureSourceDefinition
            value = source.staticValue() if hasattr(source, "staticValue") else value
        context = QgsProcessingContext()
        context.setProject(QgsProject.instance())
        layer = QgsProcessingUtils.mapLayerFromString(str(value), context) if value else None
        current = self.combo.currentText()
        self.combo.clear()
        if not isinstance(layer, QgsVectorLayer):
            self.combo.setEditText(current)
            return
        fields = [(f.name(), f.type() == QVariant.String) for f in layer.fields()]
        self.combo.addItems([n for n, _ in fields])
        names = [n for n, _ in fields]
        keep = current if current in names and current.lower() not in ("fid", "id") else ""
        self.combo.setCurrentText(keep or suggest_class_field(fields))

    def setValue(self, value):  # noqa: N802
        if value:
            self.combo.setEditText(str(value))

    def value(self):
        text = self.combo.currentText().strip()
        return text or None
