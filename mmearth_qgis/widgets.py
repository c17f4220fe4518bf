"""Processing dialog widgets: the MODEL and HEAD parameters as a drop-down of the installed
models by name (editable: a file path still works), with a button to browse for a file."""

from processing.gui.wrappers import WidgetWrapper
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
