"""mmearth:fetch_model through real Processing and the real qgis_process (with torch blocked), the
settings page's catalogue (Download, progress, Cancel; pytest-qt), and the model drop-down, all
against an HTTP server on 127.0.0.1 that the test starts itself."""

import json
import os
import subprocess
from pathlib import Path

import pytest
from osgeo import gdal

from test_fetch_model import Server, reference_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A release folder as the authors' share serves it: two atto checkpoints in their folders."""
    root = tmp_path_factory.mktemp("release")
    for folder, patch in (("pt-all_mod_atto_1M_128_uncertainty_112-16", 16),
                          ("pt-all_mod_atto_1M_64_uncertainty_56-8", 8)):
        (root / folder).mkdir()
        reference_checkpoint(root / folder / "checkpoint-199.pth", "atto", patch, seed=patch)
    return root


@pytest.fixture
def server(release):
    s = Server(release)
    yield s
    s.close()


@pytest.fixture
def env(server, tmp_path, monkeypatch):
    monkeypatch.setenv("MMEARTH_MODEL_BASE_URL", server.url)
    monkeypatch.setenv("MMEARTH_DOWNLOADS", str(tmp_path / "downloads"))
    monkeypatch.setenv("MMEARTH_MODELS", str(tmp_path / "models"))
    return tmp_path / "models"


@pytest.fixture(scope="module")
def crop(tmp_path_factory):
    from mpmae_core.data import sample

    path = tmp_path_factory.mktemp("crop") / "crop.tif"
    gdal.Translate(str(path), str(sample.build(verbose=False)["stack"]), srcWin=[0, 0, 384, 256])
    return str(path)


def test_fetch_model_algorithm_installs_models_the_others_use_by_name(run_alg, env, crop, tmp_path):
    result, feedback = run_alg("mmearth:fetch_model", {"NAME": "mmearth-atto-1M-p16"})
    assert result["MODEL"] == str(env / "mmearth-atto-1M-p16.onnx") and Path(result["MODEL"]).is_file()
    assert {Path(p).name for p in result["SEGMENTERS"].split(";")} == {
        "mmearth-atto-1M-p16-dynamic_world.onnx", "mmearth-atto-1M-p16-esa_worldcover.onnx"}
    assert any("recorded SHA-256" in m for m in feedback.infos)
    run_alg("mmearth:embed", {"INPUT": crop, "MODEL": "mmearth-atto-1M-p16", "OUTPUT": str(tmp_path / "e.tif")})
    assert gdal.Open(str(tmp_path / "e.tif")).RasterCount == 320
    out, _ = run_alg("mmearth:segment", {"INPUT": crop, "MODEL": "mmearth-atto-1M-p16-esa_worldcover",
                                          "OUTPUT": str(tmp_path / "wc.tif")})
    ds = gdal.Open(str(tmp_path / "wc.tif"))
    band = ds.GetRasterBand(1)
    band.GetNoDataValue()
    assert band.GetCategoryNames()[0] == "tree cover"
    # a file the analyst downloaded by hand, and a bad one
    from qgis.core import QgsProcessingException

    with pytest.raises(QgsProcessingException, match="HTTP 404"):
        run_alg("mmearth:fetch_model", {"NAME": "(the URL or FILE below)",
                                        "URL": os.environ["MMEARTH_MODEL_BASE_URL"] + "/missing/c.pth"})
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(QgsProcessingException, match="not a PyTorch checkpoint"):
        run_alg("mmearth:fetch_model", {"NAME": "(the URL or FILE below)", "FILE": str(junk)})
    assert sorted(p.name for p in env.glob("*.onnx")) == [
        "mmearth-atto-1M-p16-dynamic_world.onnx", "mmearth-atto-1M-p16-esa_worldcover.onnx",
        "mmearth-atto-1M-p16.onnx"]


def test_cancelled_fetch_installs_nothing(qgis_app, env):
    import processing
    from qgis.core import QgsProcessingException, QgsProcessingFeedback

    feedback = QgsProcessingFeedback()
    feedback.cancel()
    with pytest.raises(QgsProcessingException, match="Cancelled: nothing was installed"):
        processing.run("mmearth:fetch_model", {"NAME": "mmearth-atto-1M-p8"}, feedback=feedback)
    assert not env.exists() or not list(env.iterdir())


@pytest.mark.slow
@pytest.mark.qgis_process
def test_qgis_process_fetches_then_embeds_trains_and_maps_by_name_with_torch_blocked(server, crop, tmp_path):
    from mpmae_core.data import sample

    blocker = tmp_path / "startup.py"
    marker = tmp_path / "torch_import_attempted"
    blocker.write_text(
        "import sys\n"
        f"open({str(tmp_path / 'startup_ran')!r}, 'w').close()\n"
        "class _Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        f"            open({str(marker)!r}, 'a').write(name + '\\n')\n"
        "            raise ImportError('torch is blocked in this test')\n"
        "sys.meta_path.insert(0, _Block())\n")
    models = tmp_path / "models"
    env = dict(os.environ, PYQGIS_STARTUP=str(blocker), MMEARTH_MODELS=str(models),
               MMEARTH_DOWNLOADS=str(tmp_path / "dl"), QGIS_CUSTOM_CONFIG_PATH=str(tmp_path / "profile"))
    qp = [str(ROOT / "scripts" / "qgis_process"), "run"]
    url = f"{server.url}/pt-all_mod_atto_1M_64_uncertainty_56-8/checkpoint-199.pth"

    def run(*args):
        proc = subprocess.run(qp + list(args), capture_output=True, text=True, env=env, timeout=600)
        text = proc.stdout + proc.stderr
        assert proc.returncode == 0 and "Traceback" not in text, text[-3000:]
        return text

    text = run("mmearth:fetch_model", "--", "NAME=(the URL or FILE below)", f"URL={url}")
    assert "installed mmearth-atto-1M-p8" in text
    assert (tmp_path / "startup_ran").exists()
    sample.label_points(tmp_path / "pts.gpkg", per_class=4, seed=0, classes=["forest", "farm"])
    run("mmearth:embed", "--", f"INPUT={crop}", "MODEL=mmearth-atto-1M-p8", f"OUTPUT={tmp_path / 'e.tif'}")
    run("mmearth:train_head", "--", f"INPUT={sample.stack_path()}", "MODEL=mmearth-atto-1M-p8",
        f"LABELS={tmp_path / 'pts.gpkg'}", "CLASS_FIELD=landuse", f"OUTPUT={tmp_path / 'h.onnx'}")
    run("mmearth:segment", "--", f"INPUT={crop}", "MODEL=mmearth-atto-1M-p8", f"HEAD={tmp_path / 'h.onnx'}",
        f"OUTPUT={tmp_path / 'm.tif'}")
    run("mmearth:segment", "--", f"INPUT={crop}", "MODEL=mmearth-atto-1M-p8-dynamic_world",
        f"OUTPUT={tmp_path / 'dw.tif'}")
    for out in ("e.tif", "m.tif", "dw.tif"):
        assert gdal.Open(str(tmp_path / out)) is not None
    assert not marker.exists(), marker.read_text()


def test_settings_page_downloads_with_progress_and_cancels(qtbot, qgis_app, env, server, release, tmp_path):
    from mmearth_qgis.settings import MMEarthOptionsFactory

    page = MMEarthOptionsFactory().createWidget(None)
    qtbot.addWidget(page)
    page.folder.setFilePath(str(env))
    panel = page.catalogue
    names = [panel.table.item(r, 0).text() for r in range(panel.table.rowCount())]
    row = names.index("mmearth-atto-1M-p8")
    panel.table.selectRow(row)
    assert panel.table.item(row, 1).text() == ""
    progress = []
    panel.progress.valueChanged.connect(progress.append)
    with qtbot.waitSignal(panel.finished, timeout=120_000) as done:
        panel.download.click()
        assert not panel.download.isEnabled() and panel.cancel.isEnabled()
    assert done.args[0] is True, done.args[1]
    assert panel.table.item(row, 1).text() == "yes" and "installed mmearth-atto-1M-p8" in panel.status.text()
    assert (env / "mmearth-atto-1M-p8.onnx").is_file() and progress and max(progress) == 100
    # a slow download, cancelled: nothing installed
    row16 = names.index("mmearth-atto-1M-p16")
    panel.table.selectRow(row16)
    server.delay = 0.05
    with qtbot.waitSignal(panel.finished, timeout=120_000) as done:
        panel.download.click()
        qtbot.wait(300)
        panel.cancel.click()
    assert done.args[0] is False and "cancelled" in done.args[1]
    assert not (env / "mmearth-atto-1M-p16.onnx").exists() and panel.table.item(row16, 1).text() == ""


def test_model_parameter_is_a_drop_down_of_the_installed_models(qtbot, qgis_app, models_dir):
    from processing.gui.wrappers import WidgetWrapperFactory
    from qgis.core import QgsApplication

    # segment's model is optional (another model's embedding needs none); embed's is not
    for alg_id, param_name, optional in (("mmearth:embed", "MODEL", False), ("mmearth:segment", "MODEL", True),
                                         ("mmearth:segment", "HEAD", True)):
        param = QgsApplication.processingRegistry().algorithmById(alg_id).parameterDefinition(param_name)

        class Dialog:  # a standard dialog for the wrapper's purposes
            pass

        wrapper = WidgetWrapperFactory.create_wrapper(param, Dialog())
        qtbot.addWidget(wrapper.widget)
        items = [wrapper.combo.itemText(i) for i in range(wrapper.combo.count())]
        assert items == ([""] if optional else []) + ["atto_test", "head3"]
        wrapper.combo.setCurrentIndex(items.index("atto_test"))
        assert wrapper.value() == "atto_test"
        wrapper.setValue("/some/where/model.onnx")  # a file path still works
        assert wrapper.value() == "/some/where/model.onnx"


def test_qgis_downloader_resumes_only_the_same_file_and_heals_a_416(qgis_app, server, release, tmp_path):
    """QGIS's network stack, like urllib: a part is continued with Range + If-Range; after the file
    changed the whole new file comes (no splice); a part the server refuses (416) is discarded."""
    import hashlib

    from mmearth_qgis.network import qgis_download
    from mpmae_core.runtime.releases.fetch import PartFile

    src = release / "pt-all_mod_atto_1M_64_uncertainty_56-8" / "checkpoint-199.pth"
    url = f"{server.url}/{src.parent.name}/checkpoint-199.pth"
    part = tmp_path / "q.pth.part"
    server.truncate_next[f"/{src.parent.name}/checkpoint-199.pth"] = 30_000
    logs = []
    qgis_download(url, part, log=logs.append)  # breaks off once, resumed with If-Range
    assert part.read_bytes() == src.read_bytes()
    ranges = [r for _, r in server.hits]
    assert ranges[0] is None and ranges[-1] == "bytes=30000-"
    # the part of an old file, whose ETag no longer matches: the whole new file comes
    part.write_bytes(src.read_bytes()[:50_000])
    PartFile(part).meta.write_text(json.dumps({"url": url, "etag": '"stale"', "bytes": 1}))
    qgis_download(url, part, log=logs.append)
    assert hashlib.sha256(part.read_bytes()).digest() == hashlib.sha256(src.read_bytes()).digest()
    assert any("changed since the partial download" in m for m in logs), logs
    # a part longer than the file with the right ETag: HTTP 416, discarded, downloaded again
    part.write_bytes(src.read_bytes() + b"tail")
    etag = '"' + hashlib.sha256(src.read_bytes()).hexdigest()[:16] + '"'
    PartFile(part).meta.write_text(json.dumps({"url": url, "etag": etag, "bytes": 1}))
    qgis_download(url, part, log=logs.append)
    assert part.read_bytes() == src.read_bytes()
    assert any("416" in m and "discarded" in m for m in logs), logs
