"""The plugin's settings page (Settings > Options > MMEarth): the models folder, and whether
onnxruntime is there (with the exact command to install it for QGIS's Python when it is not)."""

from qgis.gui import QgsFileWidget, QgsOptionsPageWidget, QgsOptionsWidgetFactory
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import QFormLayout, QLabel

from . import models


def onnxruntime_status() -> tuple[bool, str]:
    """(installed, one line for the analyst): the onnxruntime version and devices, or the
    runtime's own message with the command that installs it for this Python."""
    from mpmae_core.runtime.model import ModelError, cuda_driver_present, onnxruntime

    try:
        ort = onnxruntime()
    except ModelError as exc:
        return False, str(exc)
    gpu = "CUDAExecutionProvider" in ort.get_available_providers() and cuda_driver_present()
    return True, f"onnxruntime {ort.__version__} ({'GPU and CPU' if gpu else 'CPU'})"


class MMEarthOptionsPage(QgsOptionsPageWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        layout = QFormLayout(self)
        self.folder = QgsFileWidget()
        self.folder.setStorageMode(QgsFileWidget.GetDirectory)
        self.folder.setFilePath(str(models.models_folder()))
        self.folder.fileChanged.connect(self._update_listing)
        self.listing = QLabel()
        self.listing.setWordWrap(True)
        self.runtime = QLabel(onnxruntime_status()[1])
        self.runtime.setWordWrap(True)
        self.runtime.setTextInteractionFlags(Qt.TextSelectableByMouse)  # the install command can be copied
        layout.addRow("Models folder", self.folder)
        layout.addRow("", self.listing)
        layout.addRow("Runtime", self.runtime)
        self._update_listing(self.folder.filePath())

    def _update_listing(self, path):
        names = models.available_models(path)
        self.listing.setText(f"{len(names)} model(s): {', '.join(names)}" if names else
                             "no .onnx models in this folder yet: export one with `python -m training.export`")

    def apply(self):
        models.set_models_folder(self.folder.filePath())


class MMEarthOptionsFactory(QgsOptionsWidgetFactory):
    def __init__(self):
        super().__init__()
        self.setTitle("MMEarth")

    def createWidget(self, parent):  # noqa: N802
        return MMEarthOptionsPage(parent)
