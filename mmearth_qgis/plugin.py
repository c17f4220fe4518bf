"""Plugin entry: registers the Processing provider for the GUI and for qgis_process."""

from qgis.core import QgsApplication


class MMEarthPlugin:
    def __init__(self, iface=None):
        self.iface = iface
        self.provider = None
        self.options_factory = None

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
            installed, status = onnxruntime_status()
            if not installed:
                from qgis.core import Qgis, QgsMessageLog

                QgsMessageLog.logMessage(status, "MMEarth", Qgis.Warning)
                self.iface.messageBar().pushMessage("MMEarth", status.replace("\n", " "), Qgis.Warning, 0)

    def unload(self):
        if self.options_factory is not None and self.iface is not None:
            self.iface.unregisterOptionsWidgetFactory(self.options_factory)
            self.options_factory = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
