"""The ``mmearth`` Processing provider."""

from pathlib import Path

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .algorithms import all_algorithms

PROVIDER_ID = "mmearth"


class MMEarthProvider(QgsProcessingProvider):
    def id(self):
        return PROVIDER_ID

    def name(self):
        return "MMEarth"

    def longName(self):  # noqa: N802
        return "MMEarth: Sentinel-2 foundation-model embeddings and landcover maps"

    def icon(self):
        return QIcon(str(Path(__file__).with_name("icon.svg")))

    def loadAlgorithms(self):  # noqa: N802
        for alg in all_algorithms():
            self.addAlgorithm(alg)
