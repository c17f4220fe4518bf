"""Test set-up: a real QgsApplication with real Processing and the mmearth provider, created once.

It is created at import time, before pytest-qt's ``qapp`` fixture, which then reuses it. The QGIS
profile is a throw-away folder, so tests never touch a user's QGIS settings.
"""

import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_PROFILE = tempfile.mkdtemp(prefix="mmearth-test-qgis-profile-")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ["QGIS_CUSTOM_CONFIG_PATH"] = _PROFILE
_runtime = Path(_PROFILE) / "xdg-runtime"
_runtime.mkdir(mode=0o700)
os.environ.setdefault("XDG_RUNTIME_DIR", str(_runtime))

from qgis.core import QgsApplication  # noqa: E402

QGS = QgsApplication([], True)
QGS.initQgis()
sys.path.append(str(Path(QgsApplication.pkgDataPath()) / "python" / "plugins"))
from processing.core.Processing import Processing  # noqa: E402

Processing.initialize()

from mmearth_qgis import classFactory  # noqa: E402

PLUGIN = classFactory(None)  # no iface: headless, as under qgis_process
PLUGIN.initGui()

from helpers import write_geotiff  # noqa: E402,F401  (re-exported for tests)


@pytest.fixture(scope="session")
def qgis_app():
    return QGS


@pytest.fixture(scope="session")
def mmearth_plugin():
    return PLUGIN


@pytest.fixture(scope="session")
def sample_stack():
    """The embedded real Sentinel-2 L1C scene as a 13-band 10 m GeoTIFF (built by scripts/setup)."""
    from mpmae_core.data import sample

    return sample.build(verbose=False)["stack"]


@pytest.fixture
def run_alg(qgis_app):
    """processing.run with a feedback that records what the algorithm reported."""
    import processing
    from qgis.core import QgsProcessingContext, QgsProcessingFeedback, QgsProject

    class RecordingFeedback(QgsProcessingFeedback):
        def __init__(self):
            super().__init__()
            self.errors, self.infos, self.warnings = [], [], []

        def reportError(self, error, fatalError=False):  # noqa: N802,N803
            self.errors.append(error)

        def pushInfo(self, info):  # noqa: N802
            self.infos.append(info)

        def pushWarning(self, warning):  # noqa: N802
            self.warnings.append(warning)

    def run(alg_id, params):
        feedback = RecordingFeedback()
        context = QgsProcessingContext()
        context.setProject(QgsProject.instance())
        try:
            result = processing.run(alg_id, params, feedback=feedback, context=context)
        except Exception as exc:
            exc.feedback = feedback
            raise
        return result, feedback

    return run


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    """A random-weight atto encoder and a 3-class head, in a models folder set as $MMEARTH_MODELS."""
    import torch

    from mpmae_core import registry
    from mpmae_core.export import export_encoder, export_head
    from mpmae_core.models import build_encoder
    from mpmae_core.runtime.models.metadata import default_normalisation

    d = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    export_encoder(build_encoder("atto", patch_size=16).eval(), d / "atto_test.onnx", registry.S2_MMEARTH_BANDS,
                   default_normalisation(registry.S2_MMEARTH_BANDS))
    export_head(torch.randn(3, 320) * 0.2, torch.zeros(3), d / "head3.onnx", ["water", "forest", "field"],
                [[0, 0, 255], [0, 128, 0], [255, 255, 0]])
    old = os.environ.get("MMEARTH_MODELS")
    os.environ["MMEARTH_MODELS"] = str(d)
    yield d
    if old is None:
        os.environ.pop("MMEARTH_MODELS", None)
    else:
        os.environ["MMEARTH_MODELS"] = old
