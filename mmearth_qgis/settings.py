"""The plugin's settings page (Settings > Options > MMEarth): the models folder, the catalogue of
released MMEarth models with a Download button (progress and Cancel; the download runs as a QGIS
background task through QGIS's network settings), a download mirror and authentication, and
whether onnxruntime is there (with the exact command to install it for QGIS's Python when not)."""

from qgis.core import QgsApplication, QgsSettings
from qgis.gui import QgsAuthConfigSelect, QgsFileWidget, QgsOptionsPageWidget, QgsOptionsWidgetFactory
from qgis.PyQt.QtCore import Qt, pyqtSignal
from qgis.PyQt.QtWidgets import (QAbstractItemView, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QProgressBar,
                                 QPushButton, QTableWidget, QTableWidgetItem, QWidget)

from . import models
from .network import AUTHCFG_KEY, BASE_URL_KEY
from .tasks import BackgroundTask


def onnxruntime_status() -> tuple[bool, str]:
    """(installed, one line for the analyst): the onnxruntime version and devices, or the
    runtime's own message with the command that installs it for this Python."""
    from mpmae_core.runtime.models.model import ModelError, cuda_driver_present, onnxruntime

    try:
        ort = onnxruntime()
    except ModelError as exc:
        return False, str(exc)
    gpu = "CUDAExecutionProvider" in ort.get_available_providers() and cuda_driver_present()
    return True, f"onnxruntime {ort.__version__} ({'GPU and CPU' if gpu else 'CPU'})"


class FetchTask(BackgroundTask):
    """One released model fetched in the background (``releases.fetch`` with QGIS's network)."""

    def __init__(self, name: str, folder: str, base_url: str = ""):
        super().__init__(f"MMEarth: fetching {name}", self._fetch,
                         "cancelled: nothing was installed (the part already downloaded is resumed next time)")
        self.name_, self.folder, self.base_url = name, folder, base_url

    def _fetch(self, progress, cancelled):
        from mpmae_core.runtime.releases.fetch import fetch_model

        from .network import qgis_download

        return fetch_model(self.name_, self.folder, base_url=self.base_url or None, downloader=qgis_download,
                           progress=progress, cancelled=cancelled)


class CataloguePanel(QWidget):
    """The released models, which are installed, and Download / Cancel with progress."""

    finished = pyqtSignal(bool, str)

    def __init__(self, folder_of, base_url_of, parent=None):
        super().__init__(parent)
        from mpmae_core import registry

        self.folder_of, self.base_url_of = folder_of, base_url_of
        self.entries = list(registry.released_models().values())
        self.table = QTableWidget(len(self.entries), 3)
        self.table.setHorizontalHeaderLabels(["model", "installed", "what it is"])
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        for row, entry in enumerate(self.entries):
            note = "" if entry.confirmed else " (file name not stated by the authors)"
            self.table.setItem(row, 0, QTableWidgetItem(entry.name))
            self.table.setItem(row, 2, QTableWidgetItem(entry.describe() + note))
            self.table.item(row, 2).setToolTip(entry.describe() + note)
        self.table.resizeColumnToContents(0)  # the whole name: "mmearth-atto-1M-p8-unweighted", not "mmearth-..."
        self.table.setColumnWidth(1, max(self.table.columnWidth(1), 70))
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setMinimumWidth(self.table.columnWidth(0) + 300)
        self.download = QPushButton("Download")
        self.cancel = QPushButton("Cancel")
        self.cancel.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextSelectableByMouse)
        buttons = QHBoxLayout()
        buttons.addWidget(self.download)
        buttons.addWidget(self.cancel)
        buttons.addWidget(self.progress, 1)
        self.licence = QLabel(f"<b>Licence of the released weights</b>: {registry.released_weights_licence()}")
        self.licence.setWordWrap(True)
        layout = QFormLayout(self)
        layout.addRow(self.table)
        layout.addRow(self.licence)
        layout.addRow(buttons)
        layout.addRow(self.status)
        self.download.clicked.connect(self.start)
        self.cancel.clicked.connect(self.stop)
        self.task = None
        self.table.selectRow(0)
        self.refresh()

    def refresh(self) -> None:
        installed = set(models.available_models(self.folder_of()))
        for row, entry in enumerate(self.entries):
            self.table.setItem(row, 1, QTableWidgetItem("yes" if entry.name in installed else ""))

    def selected(self):
        rows = self.table.selectionModel().selectedRows()
        return self.entries[rows[0].row()] if rows else None

    def start(self) -> None:
        entry = self.selected()
        if entry is None or self.task is not None:
            return
        self.task = FetchTask(entry.name, self.folder_of(), self.base_url_of())
        self.task.progressChanged.connect(lambda p: self.progress.setValue(int(p)))
        self.task.taskCompleted.connect(lambda: self._done(True))
        self.task.taskTerminated.connect(lambda: self._done(False))
        self.download.setEnabled(False)
        self.cancel.setEnabled(True)
        self.progress.setValue(0)
        self.status.setText(f"fetching {entry.name} ...")
        QgsApplication.taskManager().addTask(self.task)

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def _done(self, ok: bool) -> None:
        task, self.task = self.task, None
        self.download.setEnabled(True)
        self.cancel.setEnabled(False)
        if ok and task.result_:
            res = task.result_
            heads = ", ".join(res["segmenters"]) or "none"
            self.status.setText(f"installed {res['name']} (landcover heads: {heads})")
            self.progress.setValue(100)
        else:
            self.status.setText(task.error or "the download stopped")
        self.refresh()
        self.finished.emit(ok, self.status.text())


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
        self.base_url = QLineEdit(QgsSettings().value(BASE_URL_KEY, "", type=str))
        from mpmae_core import registry

        self.base_url.setPlaceholderText(registry.model_base_url())
        self.auth = QgsAuthConfigSelect()
        self.auth.setConfigId(QgsSettings().value(AUTHCFG_KEY, "", type=str))
        self.catalogue = CataloguePanel(self.folder.filePath, lambda: self.base_url.text().strip(), self)
        self.runtime = QLabel(onnxruntime_status()[1])
        self.runtime.setWordWrap(True)
        self.runtime.setTextInteractionFlags(Qt.TextSelectableByMouse)  # the install command can be copied
        layout.addRow("Models folder", self.folder)
        layout.addRow("", self.listing)
        layout.addRow("Released models", self.catalogue)
        layout.addRow("Download address (mirror)", self.base_url)
        layout.addRow("Authentication", self.auth)
        layout.addRow("Runtime", self.runtime)
        self._update_listing(self.folder.filePath())

    def _update_listing(self, path):
        names = models.available_models(path)
        self.listing.setText(f"{len(names)} model(s): {', '.join(names)}" if names else
                             "no .onnx models in this folder yet: download a released one below, or export one "
                             "with `python -m training.export`")
        if hasattr(self, "catalogue"):
            self.catalogue.refresh()

    def apply(self):
        models.set_models_folder(self.folder.filePath())
        QgsSettings().setValue(BASE_URL_KEY, self.base_url.text().strip())
        QgsSettings().setValue(AUTHCFG_KEY, self.auth.configId())


class MMEarthOptionsFactory(QgsOptionsWidgetFactory):
    def __init__(self):
        super().__init__()
        self.setTitle("MMEarth")

    def createWidget(self, parent):  # noqa: N802
        return MMEarthOptionsPage(parent)
