"""Plugin entry: registers the Processing provider for the GUI and for qgis_process."""

from qgis.core import QgsApplication


class MMEarthPlugin:
    def __init__(self, iface=None):
        self.iface = iface
        self.provider = None
        self.options_factory = None
        self.panel = None
        self.action = None

    def initProcessing(self):  # noqa: N802 - QGIS's name; called by qgis_process and by initGui
        if self.provider is None:
            from .provider import MMEarthProvider

            # Keep the reference: a provider only referenced by the registry is garbage collected
            # by Python and its algorithms vanish.
            self.provider = MMEarthProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):  # noqa: N802
        self.initProcessing()
        if self.iface is not None:
            from .settings import MMEarthOptionsFactory, onnxruntime_status

            self.options_factory = MMEarthOptionsFactory()
            self.iface.registerOptionsWidgetFactory(self.options_factory)
            self._add_panel_action()
            installed, status = onnxruntime_status()
            if not installed:
                from qgis.core import Qgis, QgsMessageLog

                QgsMessageLog.logMessage(status, "MMEarth", Qgis.Warning)
                self.iface.messageBar().pushMessage("MMEarth", status.replace("\n", " "), Qgis.Warning, 0)

    def _add_panel_action(self):
        from pathlib import Path

        from qgis.PyQt.QtGui import QIcon
        from qgis.PyQt.QtWidgets import QAction

        self.action = QAction(QIcon(str(Path(__file__).with_name("icon.svg"))), "MMEarth few-shot mapping",
                              self.iface.mainWindow())
        self.action.setCheckable(True)
        self.action.toggled.connect(self.show_panel)
        self.iface.addToolBarIcon(self.action)
        self.iface.addPluginToMenu("&MMEarth", self.action)

    def show_panel(self, visible=True):
        from qgis.PyQt.QtCore import Qt

        from .panel import FewShotPanel

        if self.panel is None:
            self.panel = FewShotPanel(self.iface.mapCanvas(), self.iface.mainWindow(),
                                      message_bar=self.iface.messageBar())
            self.iface.addDockWidget(Qt.RightDockWidgetArea, self.panel)
            self.panel.visibilityChanged.connect(lambda v: self.action.setChecked(v) if self.action else None)
        self.panel.setVisible(bool(visible))

    def unload(self):
        if self.action is not None and self.iface is not None:
            self.iface.removeToolBarIcon(self.action)
            self.iface.removePluginMenu("&MMEarth", self.action)
            self.action = None
        if self.panel is not None:
            self.panel.shutdown()  # tasks stopped, preview layers removed, temporary folder deleted
        if self.panel is not None and self.iface is not None:
            self.iface.removeDockWidget(self.panel)
            self.panel.deleteLater()
            self.panel = None
        if self.options_factory is not None and self.iface is not None:
            self.iface.unregisterOptionsWidgetFactory(self.options_factory)
            self.options_factory = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
