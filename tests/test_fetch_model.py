"""Released MMEarth models without torch: the allowlisting checkpoint reader, the torch-free
converter (parity with the torch export), and fetch-model against an HTTP server on 127.0.0.1
that the test starts itself (resumable downloads, truncation, 404, wrong checksums, cancel)."""

import argparse
import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from mpmae_core import registry
from mpmae_core.checkpoints import export_reference_layout, save_checkpoint
from mpmae_core.export import export_checkpoint
from mpmae_core.models import build_encoder, build_mpmae
from mpmae_core.runtime.releases import fetch as F
from mpmae_core.runtime.releases.pth_to_onnx import ConvertError, convert
from mpmae_core.runtime.io.files import Cancelled
from mpmae_core.runtime.releases.pth import CheckpointReadError, read_pth

ROOT = Path(__file__).resolve().parents[1]


def _nontrivial(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".grn." in name or "norm" in name or "mask_token" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def reference_checkpoint(path, size="atto", patch=16, tasks="all_mod", seed=0, extra=None):
    """A seeded MP-MAE saved in the released sparse-pretraining layout, as MMEarth-train saves it
    (model, optimizer-like state, epoch, pickled argparse.Namespace)."""
    torch.manual_seed(seed)
    model = _nontrivial(build_mpmae(size, tasks, patch_size=patch, share_decoder=True), seed)
    args = argparse.Namespace(patch_size=patch, input_size=7 * patch, loss_aggr="uncertainty",
                              out_modalities={t: 1 for t in model.tasks}, output_dir=Path("/x/pt-all_mod"))
    torch.save({"model": export_reference_layout(model), "epoch": 199, "args": args,
                "scaler": {"scale": 65536.0}, **(extra or {})}, path)
    return model


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpts")
    out = {}
    for key, size, patch in (("atto16", "atto", 16), ("atto8", "atto", 8)):
        folder = d / f"pt-all_mod_{size}_1M_{'128' if patch == 16 else '64'}_uncertainty_{7 * patch}-{patch}"
        folder.mkdir()
        out[key] = folder / "checkpoint-199.pth"
        reference_checkpoint(out[key], size, patch, seed=patch)
    tiny = d / "tiny" / "checkpoint-199.pth"
    tiny.parent.mkdir()
    reference_checkpoint(tiny, "tiny", 16, tasks="S2", seed=3)
    out["tiny16"] = tiny
    return out


class Server:
    """An HTTP server on 127.0.0.1 serving a folder, with Range and If-Range (ETag: the file's hash;
    Last-Modified), as real file hosts answer; ``truncate_next`` makes the next GET of a path send only
    part of the body and close; ``hits`` records (path, Range) of each request; ``validators=False``
    serves without ETag and Last-Modified; ``bad_length`` sends a malformed Content-Length."""

    def __init__(self, root: Path):
        self.root, self.truncate_next, self.hits, self.delay = root, {}, [], 0.0
        self.validators, self.bad_length, self.range_ok = True, False, True
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):  # noqa: N802
                path = outer.root / self.path.lstrip("/")
                outer.hits.append((self.path, self.headers.get("Range")))
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
                start = 0
                rng = self.headers.get("Range")
                if_range = self.headers.get("If-Range")
                if rng and if_range is not None and if_range != etag:
                    rng = None  # the file changed: the whole new file
                if rng and rng.startswith("bytes=") and outer.range_ok:
                    start = int(rng[6:].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                if outer.validators:
                    self.send_header("ETag", etag)
                    self.send_header("Last-Modified", "Wed, 02 Dec 2026 10:00:00 GMT")
                body = data[start:]
                self.send_header("Content-Length", "12abc" if outer.bad_length else str(len(body)))
                self.end_headers()
                cut = outer.truncate_next.pop(self.path, None)
                body = body[:cut] if cut is not None else body
                step = 64 * 1024 if outer.delay else len(body) or 1
                try:
                    for i in range(0, len(body), step):
                        self.wfile.write(body[i:i + step])
                        if outer.delay:
                            time.sleep(outer.delay)
                except (BrokenPipeError, ConnectionResetError):
                    return
                if cut is not None or outer.bad_length:
                    self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.fixture
def server(ckpts):
    s = Server(ckpts["atto16"].parents[1])
    yield s
    s.close()


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MMEARTH_DOWNLOADS", str(tmp_path / "downloads"))


# ----------------------------------------------------------------------------- reading and conversion

def test_reader_rebuilds_every_tensor_exactly_and_refuses_foreign_globals(tmp_path):
    sd = {"w": torch.randn(3, 4), "h": torch.randn(2, 3).half(), "bf": torch.randn(5).to(torch.bfloat16),
          "view": torch.randn(4, 6)[:, ::2], "i": torch.arange(7), "empty": torch.zeros(0, 3),
          "scalar": torch.tensor(2.5), "p": torch.nn.Parameter(torch.ones(2))}
    args = argparse.Namespace(lr=1e-3, path=Path("/a/b"), best=np.float64(0.5))
    torch.save({"model": sd, "args": args, "epoch": 199}, tmp_path / "c.pth")
    obj = read_pth(tmp_path / "c.pth")
    for k, v in sd.items():
        ref = v.detach().float().numpy() if v.dtype == torch.bfloat16 else v.detach().numpy()
        assert obj["model"][k].shape == ref.shape and np.array_equal(obj["model"][k].astype(np.float64),
                                                                      ref.astype(np.float64)), k
    assert obj["args"].lr == 1e-3 and obj["args"].path == "/a/b" and obj["epoch"] == 199

    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"model": sd, "x": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointReadError, match=r"names '(posix|os)\.system'.*refused"):
        read_pth(tmp_path / "evil.pth")
    assert not marker.exists()
    (tmp_path / "junk.pth").write_bytes(os.urandom(4000))
    with pytest.raises(CheckpointReadError, match="not a PyTorch checkpoint"):
        read_pth(tmp_path / "junk.pth")
    with zipfile.ZipFile(tmp_path / "cut.pth", "w") as z:  # data.pkl present, a storage file missing
        with zipfile.ZipFile(tmp_path / "c.pth") as src:
            for n in src.namelist():
                if not n.endswith("data/0"):
                    z.writestr(n, src.read(n))
    with pytest.raises(CheckpointReadError, match="lacks the storage file"):
        read_pth(tmp_path / "cut.pth")


def test_the_reader_has_no_unpickler():
    src = (ROOT / "mpmae_core" / "runtime" / "releases" / "pth.py").read_text()
    assert "import pickle" not in src and "Unpickler" not in src


@pytest.mark.slow
@pytest.mark.parametrize("key", ["atto16", "atto8", "tiny16"])
def test_torch_free_model_equals_the_torch_export(ckpts, key, tmp_path):
    res = convert(ckpts[key], tmp_path / "models", "m")
    export_checkpoint(ckpts[key], tmp_path / "torch.onnx")
    x = np.random.default_rng(1).normal(size=(1, 12, 64, 96)).astype(np.float32)
    ours = ort.InferenceSession(res["encoder"]).run(None, {"image": x})
    theirs = ort.InferenceSession(str(tmp_path / "torch.onnx")).run(None, {"image": x})
    assert len(ours) == len(theirs) == 4
    for a, b in zip(ours, theirs):
        assert np.abs(a - b).max() / np.abs(b).max() <= 1e-5
    if key != "tiny16":  # an all-modality checkpoint carries the two landcover heads
        assert set(res["segmenters"]) == {"dynamic_world", "esa_worldcover"}
        # both heads against torch at patch 16; at patch 8 one (the torch export of a head is slow)
        for task, path in sorted(res["segmenters"].items())[:2 if key == "atto16" else 1]:
            export_checkpoint(ckpts[key], tmp_path / f"torch_{task}.onnx", head=task)
            a = ort.InferenceSession(path).run(None, {"image": x})[0]
            b = ort.InferenceSession(str(tmp_path / f"torch_{task}.onnx")).run(None, {"image": x})[0]
            assert a.shape == b.shape and np.abs(a - b).max() / np.abs(b).max() <= 1e-5
    else:
        assert res["segmenters"] == {}
    from mpmae_core.runtime.models.model import OnnxModel

    meta = OnnxModel(res["encoder"], device="cpu").metadata
    torch_meta = OnnxModel(tmp_path / "torch.onnx", device="cpu").metadata
    for field in ("kind", "input_bands", "normalisation", "patch_size", "embedding_dim", "convention", "stages",
                  "model_size"):
        assert getattr(meta, field) == getattr(torch_meta, field), field


def test_converter_runs_where_torch_cannot_be_imported(ckpts, tmp_path):
    code = (
        "import sys, json\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('torch is blocked in this test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from mpmae_core.runtime.releases.fetch import fetch_model\n"
        f"r = fetch_model({str(ckpts['atto8'])!r}, {str(tmp_path / 'models')!r})\n"
        "print(json.dumps([r['name'], sorted(r['segmenters']), 'torch' in sys.modules]))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    name, heads, has_torch = json.loads(proc.stdout.strip().splitlines()[-1])
    assert name == "mmearth-atto-1M-p8" and heads == ["dynamic_world", "esa_worldcover"] and not has_torch


def test_our_own_checkpoints_convert_too(tmp_path):
    torch.manual_seed(0)
    enc = _nontrivial(build_encoder("atto", patch_size=16), 4)
    save_checkpoint(tmp_path / "enc.pt", enc)
    res = convert(tmp_path / "enc.pt", tmp_path / "models", "ours")
    x = torch.randn(1, 12, 48, 64)
    with torch.no_grad():
        ref = enc(x).numpy()
    got = ort.InferenceSession(res["encoder"]).run(["embedding"], {"image": x.numpy()})[0]
    assert np.abs(got - ref).max() / np.abs(ref).max() <= 1e-5


def test_unknown_layouts_and_foreign_objects_are_refused_and_nothing_is_installed(tmp_path):
    torch.save({"model": {"backbone.conv1.weight": torch.randn(4, 3, 3, 3)}}, tmp_path / "other.pth")
    with pytest.raises(ConvertError, match="not an MMEarth ConvNeXt V2 checkpoint"):
        convert(tmp_path / "other.pth", tmp_path / "models", "x")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(ConvertError, match="not a model checkpoint"):
        convert(tmp_path / "list.pth", tmp_path / "models", "x")
    assert not (tmp_path / "models").exists() or not list((tmp_path / "models").iterdir())


# ----------------------------------------------------------------------------- fetching

def test_fetch_by_url_records_the_hash_and_checks_it_next_time(server, ckpts, tmp_path):
    url = f"{server.url}/{ckpts['atto16'].parent.name}/checkpoint-199.pth"
    models = tmp_path / "models"
    logs = []
    res = F.fetch_model(url, models, log=logs.append)
    assert res["name"] == "mmearth-atto-1M-p16"  # the release folder names the catalogue entry
    assert sorted(p.name for p in models.glob("*.onnx")) == [
        "mmearth-atto-1M-p16-dynamic_world.onnx", "mmearth-atto-1M-p16-esa_worldcover.onnx", "mmearth-atto-1M-p16.onnx"]
    digest = hashlib.sha256(ckpts["atto16"].read_bytes()).hexdigest()
    assert res["sha256"] == digest and F.read_record(models)[url]["sha256"] == digest
    assert any("recorded SHA-256" in m for m in logs)
    assert not list(F.downloads_dir().glob("*"))  # the download itself is not kept
    # the file at the URL changes: refused, the installed models untouched, nothing new written
    before = (models / "mmearth-atto-1M-p16.onnx").read_bytes()
    original = ckpts["atto16"].read_bytes()
    try:
        reference_checkpoint(ckpts["atto16"], "atto", 16, seed=99)
        with pytest.raises(F.FetchError, match="not the recorded"):
            F.fetch_model(url, models, name="again")
    finally:
        ckpts["atto16"].write_bytes(original)
    assert not (models / "again.onnx").exists() and (models / "mmearth-atto-1M-p16.onnx").read_bytes() == before
    with pytest.raises(F.FetchError, match="not the given"):
        F.fetch_model(url, models, name="third", sha256="0" * 64)
    assert not (models / "third.onnx").exists()


def test_a_broken_connection_is_resumed_with_a_range_request(server, ckpts, tmp_path):
    path = f"/{ckpts['atto8'].parent.name}/checkpoint-199.pth"
    server.truncate_next[path] = 50_000
    res = F.fetch_model(server.url + path, tmp_path / "models")
    assert res["sha256"] == hashlib.sha256(ckpts["atto8"].read_bytes()).hexdigest()
    assert [h for h in server.hits if h[0] == path] == [(path, None), (path, "bytes=50000-")]


def test_a_cancelled_download_leaves_nothing_installed_and_resumes_later(server, ckpts, tmp_path):
    path = f"/{ckpts['atto8'].parent.name}/checkpoint-199.pth"
    calls = {"n": 0}

    def cancel_after_first_chunk():
        calls["n"] += 1
        return calls["n"] > 1

    with pytest.raises(Cancelled, match="resumed by the next fetch"):
        F.fetch_model(server.url + path, tmp_path / "models", cancelled=cancel_after_first_chunk)
    assert not (tmp_path / "models").exists() or not list((tmp_path / "models").iterdir())
    parts = list(F.downloads_dir().glob("*.part"))
    kept = parts[0].stat().st_size if len(parts) == 1 else 0
    assert 0 < kept < ckpts["atto8"].stat().st_size
    logs = []
    F.fetch_model(server.url + path, tmp_path / "models", log=logs.append)
    assert any("resuming the download" in m for m in logs)
    assert server.hits[-1] == (path, f"bytes={kept}-")


def test_cancel_during_conversion_installs_nothing(ckpts, tmp_path):
    calls = {"n": 0}

    def cancel_later():
        calls["n"] += 1
        return calls["n"] > 1

    with pytest.raises(Cancelled):
        F.fetch_model(str(ckpts["atto16"]), tmp_path / "models", cancelled=cancel_later)
    assert not (tmp_path / "models").exists() or not list((tmp_path / "models").iterdir())


def test_404_and_an_unreachable_host_name_the_manual_download(server, tmp_path):
    with pytest.raises(F.FetchError, match=r"HTTP 404.*not found.*by hand.*FILE in QGIS"):
        F.fetch_model(f"{server.url}/nope/checkpoint-199.pth", tmp_path / "models")
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(F.FetchError, match=r"cannot reach .*no network.*by hand"):
        F.fetch_model(f"http://127.0.0.1:{port}/x/checkpoint-199.pth", tmp_path / "models")


def test_catalogue_names_use_the_overridable_base_url(server, ckpts, tmp_path, monkeypatch):
    monkeypatch.setenv(registry.MODEL_BASE_URL_ENV, server.url)
    res = F.fetch_model("mmearth-atto-1M-p8", tmp_path / "models")
    assert res["origin"] == f"{server.url}/pt-all_mod_atto_1M_64_uncertainty_56-8/checkpoint-199.pth"
    catalogue = registry.released_models()
    assert {m.size for m in catalogue.values()} == {"atto", "tiny"} and {m.patch_size for m in catalogue.values()} == {8, 16}
    listing = F.list_models(tmp_path / "models")
    assert any("mmearth-atto-1M-p8 " in line and "installed" in line for line in listing)
    with pytest.raises(F.FetchError, match="neither a model of the catalogue"):
        F.fetch_model("mmearth-huge", tmp_path / "models")


def test_command_line_fetch_then_embed_and_segment_by_name_without_torch(server, ckpts, tmp_path):
    from mpmae_core.data import sample

    url = f"{server.url}/{ckpts['atto16'].parent.name}/checkpoint-199.pth"
    env = dict(os.environ, MMEARTH_MODELS=str(tmp_path / "models"), MMEARTH_DOWNLOADS=str(tmp_path / "dl"))
    proc = subprocess.run([sys.executable, "-m", "mpmae_core.runtime", "fetch-model", url], capture_output=True,
                          text=True, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "wrote" in proc.stderr and "landcover with no labels: esa_worldcover" in proc.stderr
    listing = subprocess.run([sys.executable, "-m", "mpmae_core.runtime", "fetch-model", "--list"],
                             capture_output=True, text=True, cwd=ROOT, env=env)
    assert "mmearth-atto-1M-p16" in listing.stdout and "installed" in listing.stdout
    bad = subprocess.run([sys.executable, "-m", "mpmae_core.runtime", "fetch-model", f"{server.url}/missing.pth"],
                         capture_output=True, text=True, cwd=ROOT, env=env)
    assert bad.returncode != 0 and "HTTP 404" in bad.stderr and "Traceback" not in bad.stderr
    scene = sample.build(verbose=False)["stack"]
    crop = tmp_path / "crop.tif"
    from osgeo import gdal

    gdal.Translate(str(crop), str(scene), srcWin=[0, 0, 256, 256])
    models = tmp_path / "models"
    code = (
        "import sys, json\n"
        "from mpmae_core.runtime.inference.predict import embed, segment\n"
        f"m = {str(models)!r}\n"
        f"embed({str(crop)!r}, m + '/mmearth-atto-1M-p16.onnx', {str(tmp_path / 'e.tif')!r}, device='cpu')\n"
        f"r = segment({str(crop)!r}, m + '/mmearth-atto-1M-p16-esa_worldcover.onnx', {str(tmp_path / 'wc.tif')!r}, "
        "device='cpu')\n"
        "print(json.dumps([r['classes'][:2], 'torch' in sys.modules]))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    classes, has_torch = json.loads(proc.stdout.strip().splitlines()[-1])
    assert classes == ["tree cover", "shrubland"] and not has_torch


def test_the_catalogue_as_published(tmp_path):
    catalogue = registry.released_models()
    assert registry.model_share_page().endswith("/g23YOnaaTp")
    assert "mmearth-tiny-1M-p16" not in catalogue  # appears in no source
    folders = {m.folder for m in catalogue.values()}
    for folder in ("pt-img_mod_atto_1M_64_uncertainty_56-8", "pt-pix_mod_atto_1M_64_uncertainty_56-8",
                   "pt-rgb_atto_1M_64_uncertainty_56-8", "pt-rgb_atto_1M_128_uncertainty_112-16",
                   "pt-all_mod_atto_100k_128_uncertainty_112-16", "pt-all_mod_tiny_1M_64_uncertainty_56-8"):
        assert folder in folders
    assert {m.source for m in catalogue.values()} == {"hub", "readme"}
    assert all(m.input_bands == ("B2", "B3", "B4") for m in catalogue.values() if "rgb" in m.folder)
    listing = "\n".join(F.list_models(tmp_path))
    assert "file name not stated by the authors" in listing and "bands B2, B3, B4" in listing
    assert "weights licence: Not stated" in listing and "CC BY-NC 4.0" in listing


def test_an_rgb_model_takes_blue_green_red_by_name(tmp_path, monkeypatch):
    """An RGB release fetched by its catalogue name: the encoder's metadata says B2, B3, B4, and a
    raster whose bands come as B4, B3, B2 (named) gives the same embeddings as one in B2, B3, B4 order."""
    from helpers import write_geotiff
    from mpmae_core.runtime.inference.predict import embed
    from osgeo import gdal

    entry = registry.released_models()["mmearth-atto-1M-p16-rgb"]
    root = tmp_path / "srv"
    (root / entry.folder).mkdir(parents=True)
    reference_checkpoint(root / entry.folder / entry.file, "atto", 16, tasks="rgb", seed=5)
    server = Server(root)
    try:
        monkeypatch.setenv(registry.MODEL_BASE_URL_ENV, server.url)
        res = F.fetch_model("mmearth-atto-1M-p16-rgb", tmp_path / "models")
    finally:
        server.close()
    from mpmae_core.runtime.models.model import OnnxModel

    meta = OnnxModel(res["encoder"], device="cpu").metadata
    assert meta.input_bands == ["B2", "B3", "B4"] and meta.input_source == "sentinel2_rgb"
    assert meta.licence == entry.licence and "non-commercial" in meta.licence  # the catalogue's words travel along
    rgb = np.random.default_rng(0).integers(300, 3000, (3, 96, 96)).astype("uint16")
    write_geotiff(tmp_path / "bgr.tif", rgb, ["B2", "B3", "B4"], nodata=0)
    write_geotiff(tmp_path / "rgb.tif", rgb[::-1], ["B4", "B3", "B2"], nodata=0)
    for name in ("bgr", "rgb"):
        embed(tmp_path / f"{name}.tif", res["encoder"], tmp_path / f"e_{name}.tif", device="cpu", tile=96, overlap=32,
              level="l2a")
    a = gdal.Open(str(tmp_path / "e_bgr.tif")).ReadAsArray()
    b = gdal.Open(str(tmp_path / "e_rgb.tif")).ReadAsArray()
    np.testing.assert_array_equal(a, b)
