"""Plugin entry: registers the Processing provider for the GUI and for qgis_process."""

from qgis.core import QgsApplication


class MMEarthPlugin:
    def __init__(self, iface=None):
        self.iface = iface
        self.provider = None

    def initProcessing(self):  # noqa: N802 - QGIS's name; called by qgis_process and by initGui
        if self.provider is None:
            from .provider import MMEarthProvider

            # Keep the reference: a provider only referenced by the registry is garbage collected
            # by Python and its algorithms vanish.
            self.provider = MMEarthProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):  # noqa: N802
        self.initProcessing()

    def unload(self):
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
