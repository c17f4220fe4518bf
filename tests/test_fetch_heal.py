"""Downloads that heal: one fetch per target at a time, resumes only of the same file (If-Range),
parts that cannot be resumed or are no checkpoint discarded with a message, a full disk that names
the download cache's disk and leaves no part. Against an HTTP server on 127.0.0.1 (test_fetch_model's)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mpmae_core.runtime.releases import fetch as F
from mpmae_core.runtime.releases.pth_to_onnx import ConvertError
from test_fetch_model import Server, ckpts, reference_checkpoint  # noqa: F401 - ckpts is a fixture

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def release(ckpts, tmp_path):  # noqa: F811
    """A writable copy of one release folder, served by its own server."""
    root = tmp_path / "srv"
    folder = root / ckpts["atto8"].parent.name
    folder.mkdir(parents=True)
    (folder / "checkpoint-199.pth").write_bytes(ckpts["atto8"].read_bytes())
    s = Server(root)
    yield s, folder / "checkpoint-199.pth", f"/{folder.name}/checkpoint-199.pth"
    s.close()


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MMEARTH_DOWNLOADS", str(tmp_path / "downloads"))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_two_fetches_of_one_url_at_once_both_succeed(release, tmp_path):
    """Before: both failed with 'unexpected BadZipFile ... This is a bug' and a .part longer than the
    file. Now the second waits for the first; both install the same, checked model."""
    server, ckpt, path = release
    server.delay = 0.02  # about 1.5 s of download, so the two overlap
    env = dict(os.environ, MMEARTH_DOWNLOADS=str(tmp_path / "dl"), PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "mpmae_core.runtime", "fetch-model", server.url + path, "--out", str(tmp_path / "m")]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    time.sleep(0.5)
    second = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    outs = [p.communicate(timeout=300) for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outs
    assert any("waiting for it to finish" in err for _, err in outs), outs
    assert "Traceback" not in "".join(o + e for o, e in outs)
    assert (tmp_path / "m" / "mmearth-atto-1M-p8.onnx").is_file()
    assert not list((tmp_path / "dl").iterdir())  # no part, no sidecar, no lock left
    assert F.read_record(tmp_path / "m")[server.url + path]["sha256"] == _sha(ckpt)


def test_a_resume_after_the_file_changed_starts_again_instead_of_splicing(release, tmp_path):
    server, ckpt, path = release
    calls = {"n": 0}

    def cancel_after_first_chunk():
        calls["n"] += 1
        return calls["n"] > 1

    with pytest.raises(F.Cancelled):
        F.fetch_model(server.url + path, tmp_path / "m", cancelled=cancel_after_first_chunk)
    assert len(list(F.downloads_dir().glob("*.part"))) == 1
    reference_checkpoint(ckpt, "atto", 8, seed=77)  # the publisher replaces the file
    logs = []
    res = F.fetch_model(server.url + path, tmp_path / "m", log=logs.append)
    assert res["sha256"] == _sha(ckpt)  # the new file, whole: not old bytes + new bytes
    assert any("changed since the partial download" in m for m in logs), logs


def test_a_part_without_validators_is_not_resumed(release, tmp_path):
    """A part whose server gave no ETag nor Last-Modified cannot be proven to be the same file: the
    download starts again (no Range sent)."""
    server, ckpt, path = release
    server.validators = False
    part = F.downloads_dir() / "x.pth.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"old bytes of some other file")
    logs = []
    F.http_download(server.url + path, part, log=logs.append)
    assert _sha(part) == _sha(ckpt)
    assert any("cannot be checked against the server's file" in m for m in logs), logs
    assert server.hits == [(path, None)]


def test_http_416_discards_the_part_and_downloads_again(release, tmp_path):
    server, ckpt, path = release
    part = F.downloads_dir() / "y.pth.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(ckpt.read_bytes() + b"extra bytes from an older, longer file")
    F.PartFile(part).meta.write_text('{"url": "%s", "etag": "\\"%s\\"", "bytes": 1}'
                                     % (server.url + path, hashlib.sha256(ckpt.read_bytes()).hexdigest()[:16]))
    logs = []
    F.http_download(server.url + path, part, log=logs.append)
    assert _sha(part) == _sha(ckpt)
    assert any("HTTP 416" in m and "discarded" in m for m in logs), logs


def test_an_html_page_is_deleted_and_never_resumed(tmp_path):
    root = tmp_path / "srv"
    (root / "d").mkdir(parents=True)
    (root / "d" / "checkpoint-199.pth").write_text("<!DOCTYPE html><html><body>Sign in to download</body></html>")
    server = Server(root)
    try:
        for _ in range(2):  # the second run is told the same, not HTTP 416 on a stuck part
            with pytest.raises(F.FetchError, match="is an HTML page.*it was deleted"):
                F.fetch_model(server.url + "/d/checkpoint-199.pth", tmp_path / "m", name="page")
            assert not list(F.downloads_dir().iterdir())
        assert all(rng is None for _, rng in server.hits)
    finally:
        server.close()


def test_a_truncated_file_on_the_server_is_deleted_after_it_fails_to_convert(release, tmp_path):
    server, ckpt, path = release
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    for _ in range(2):
        with pytest.raises(ConvertError, match="the download was deleted"):
            F.fetch_model(server.url + path, tmp_path / "m")
        assert not list(F.downloads_dir().iterdir())
    assert not (tmp_path / "m").exists() or not list((tmp_path / "m").glob("*.onnx"))


def test_a_malformed_content_length_is_a_clear_message(release, tmp_path):
    server, ckpt, path = release
    server.bad_length = True
    res = F.fetch_model(server.url + path, tmp_path / "m")  # read to the end of the body instead
    assert res["sha256"] == _sha(ckpt)


def test_a_full_download_disk_is_named_and_leaves_no_part(release, tmp_path, monkeypatch):
    server, ckpt, path = release
    mnt = tmp_path / "full"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "mmearth-dl", str(mnt)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        monkeypatch.setenv("MMEARTH_DOWNLOADS", str(mnt))
        with pytest.raises(F.FetchError, match=rf"no space left on the disk holding the download cache '{mnt}'.*"
                                               r"partial download was deleted.*MMEARTH_DOWNLOADS"):
            F.fetch_model(server.url + path, tmp_path / "m")
        assert [p.name for p in mnt.iterdir()] == []
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_kept_download_is_used_again_without_a_request(release, tmp_path):
    server, ckpt, path = release
    F.fetch_model(server.url + path, tmp_path / "m", keep_download=True)
    hits = len(server.hits)
    res = F.fetch_model(server.url + path, tmp_path / "m2", keep_download=True)
    assert len(server.hits) == hits and res["sha256"] == _sha(ckpt)
