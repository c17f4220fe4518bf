"""Get a released MMEarth model into a models folder in one step: download (resumable, checked),
convert without torch (``convert``), install atomically.

``fetch_model(spec, folder)`` takes a catalogue name (``registry.released_models``), a URL or a
local checkpoint file. Downloads go to a cache folder outside the models folder
(``$MMEARTH_DOWNLOADS``, else ``~/.cache/mmearth/downloads``) under a ``.part`` name, one fetch
of a URL at a time (a lock that a second fetch waits on). An interrupted or cancelled download is
resumed from where it stopped by the next call, with HTTP Range and If-Range, so only when the
server's ETag or Last-Modified shows the same file (otherwise it starts again); a connection that
drops mid-file is resumed at once (up to 3 times). A part the server will not continue (HTTP 416),
a download that is not a checkpoint (an HTML page) or that does not convert is deleted, with a
message that says so, and a full disk deletes the part and names the cache's disk. Nothing ever
appears in the models folder before the converted models are complete and verified. The SHA-256 of every
download is checked against the catalogue's, the one given, or the one recorded at the first
download of that URL (``.mmearth-downloads.json`` in the models folder: the catalogue does not
know the released files' hashes, so the first download records them).

The downloader is a parameter: the command line uses urllib; the QGIS plugin passes one that goes
through QGIS's network stack, so its proxy and authentication settings apply.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from mpmae_core import registry
from mpmae_core.runtime.io.files import Cancelled, atomic_write_text, check_output, describe_os_error

HASH_RECORD = ".mmearth-downloads.json"
CHUNK = 1 << 20
RETRIES = 3


class FetchError(ValueError):
    """A model that cannot be fetched; the message names the problem and the way around it."""


def downloads_dir() -> Path:
    env = os.environ.get("MMEARTH_DOWNLOADS")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mmearth" / "downloads"


def manual_hint(url: str = "") -> str:
    return (f"download the checkpoint by hand (the released models are listed at {registry.model_share_page()}"
            f"{'; this one is ' + url if url else ''}) and give the file instead: "
            "`python -m mpmae_core.runtime fetch-model path/to/checkpoint-199.pth`, or FILE in QGIS")


@dataclass
class Target:
    name: str
    url: Optional[str] = None
    path: Optional[Path] = None
    sha256: Optional[str] = None
    entry: Optional[registry.ReleasedModel] = None


NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def check_name(name: str) -> str:
    if not NAME_RE.match(name or "") or name.endswith(".onnx"):
        raise FetchError(f"the model name {name!r} is not usable as a file name: use letters, digits, '-', '_' "
                         "and '.', without a path or extension")
    return name


def resolve_target(spec: str, name: Optional[str] = None, base_url: Optional[str] = None) -> Target:
    """A catalogue name, an http(s) URL, or an existing checkpoint file."""
    catalogue = registry.released_models()
    spec = str(spec).strip()
    by_folder = {m.folder: m for m in catalogue.values()}
    if spec in catalogue:
        entry = catalogue[spec]
        return Target(check_name(name or spec), url=entry.url(base_url), sha256=entry.sha256, entry=entry)
    if re.match(r"^https?://", spec, re.I):
        parts = [p for p in spec.split("?")[0].split("/") if p]
        folder = parts[-2] if len(parts) >= 2 else ""
        entry = by_folder.get(folder)
        default = entry.name if entry else (folder if parts and re.match(r"checkpoint-\d+\.pth$", parts[-1]) else
                                            Path(parts[-1]).stem if parts else "model")
        return Target(check_name(name or _safe(default)), url=spec, sha256=entry.sha256 if entry else None,
                      entry=entry)
    path = Path(spec)
    if path.is_file():
        entry = by_folder.get(path.parent.name)
        default = entry.name if entry else (path.parent.name if re.match(r"checkpoint-\d+\.pth$", path.name)
                                            and path.parent.name else path.stem)
        return Target(check_name(name or _safe(default)), path=path, entry=entry)
    if path.suffix or "/" in spec or os.sep in spec:
        raise FetchError(f"the checkpoint file '{spec}' does not exist")
    raise FetchError(f"'{spec}' is neither a model of the catalogue ({', '.join(catalogue)}), an http(s) URL, "
                     "nor an existing checkpoint file (`fetch-model --list` shows the catalogue)")


def _safe(text: str) -> str:
    out = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "model"
    return out[:100]


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- downloading

def header_int(value) -> Optional[int]:
    """A non-negative integer header (Content-Length), or None for a missing or malformed one."""
    try:
        v = int(str(value).strip())
    except (TypeError, ValueError):
        return None
    return v if 0 <= v < 1 << 50 else None


def content_range(value) -> Optional[tuple[int, Optional[int]]]:
    """(first byte, total or None) of ``bytes A-B/T``; None when malformed."""
    m = re.match(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", str(value or ""))
    if not m:
        return None
    return int(m.group(1)), (int(m.group(3)) if m.group(3) != "*" else None)


class PartFile:
    """A download in progress: ``part`` (the bytes so far) and ``part.json`` (the server's validators
    for them). A resume sends Range with If-Range, so a server whose file changed sends the whole
    new file (200) instead of the rest of the old one; a part without validators is never resumed."""

    def __init__(self, part: Path):
        self.part = Path(part)
        self.meta = self.part.with_name(self.part.name + ".json")

    def size(self) -> int:
        try:
            return self.part.stat().st_size
        except OSError:
            return 0

    def validators(self) -> dict:
        try:
            data = json.loads(self.meta.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def discard(self) -> None:
        for p in (self.part, self.meta):
            try:
                p.unlink()
            except FileNotFoundError:
                pass

    def complete(self, url: str) -> bool:
        """A part of ``url`` that already holds all the bytes its server announced (a kept download)."""
        meta = self.validators()
        return bool(meta.get("url") == url and meta.get("bytes") and self.size() == meta["bytes"])

    def request_headers(self, url: str, log: Callable[[str], None] = lambda m: None) -> dict:
        have = self.size()
        meta = self.validators()
        validator = meta.get("etag") or meta.get("last_modified")
        if have and validator and meta.get("url") == url:
            return {"Range": f"bytes={have}-", "If-Range": str(validator)}
        if have or self.meta.exists():
            log(f"the partial download {self.part.name} cannot be checked against the server's file (no ETag or "
                "Last-Modified recorded): discarded, downloading from the start")
            self.discard()
        return {}

    def begin(self, url: str, status: int, header: Callable[[str], Optional[str]]) -> tuple[str, int, Optional[int]]:
        """(file mode, bytes already there, total or None) for a 200 or 206 answer; records validators."""
        have = self.size()
        length = header_int(header("Content-Length"))
        if status == 206 and have:
            rng = content_range(header("Content-Range"))
            recorded = self.validators().get("bytes")
            if rng is None or rng[0] != have or (recorded and rng[1] and rng[1] != recorded):
                raise Restart("the server's answer to the resume does not continue the partial download")
            return "ab", have, rng[1] or (have + length if length is not None else None)
        total = length
        self.discard()
        meta = {"url": url, "etag": header("ETag"), "last_modified": header("Last-Modified"), "bytes": total}
        atomic_write_text(self.meta, json.dumps(meta))
        return "wb", 0, total


class Restart(Exception):
    """The partial download cannot be continued: discard it and download from the start."""


def write_error(exc: OSError, partfile: PartFile, path: Optional[Path] = None,
                total: Optional[int] = None) -> FetchError:
    """The FetchError for an OSError while writing a download: for a full disk (ENOSPC/EDQUOT) one
    that names the download cache's disk (the part deleted), else ``describe_os_error`` of ``path``
    (default the part). Both downloaders use it."""
    import errno
    import shutil

    if getattr(exc, "errno", None) not in (errno.ENOSPC, errno.EDQUOT):
        return FetchError(describe_os_error(exc, path or partfile.part))
    partfile.discard()
    folder = partfile.part.parent
    try:
        free = f"{shutil.disk_usage(folder).free / 1e6:.0f} MB free"
    except OSError:
        free = "full"
    need = f"; the checkpoint needs {total / 1e6:.0f} MB" if total else ""
    return FetchError(f"no space left on the disk holding the download cache '{folder}' ({free}{need}): the partial "
                      "download was deleted. Free space on that disk, or set MMEARTH_DOWNLOADS to a folder on another "
                      "disk")


def http_download(url: str, part: Path, progress: Callable[[int, Optional[int]], None] = lambda d, t: None,
                  cancelled: Callable[[], bool] = lambda: False, timeout: float = 60.0,
                  log: Callable[[str], None] = lambda m: None) -> None:
    """Download ``url`` into ``part``, continuing what is there only when the server's validators show
    the same file (``PartFile``); a dropped connection is resumed up to RETRIES times. Raises
    FetchError with the reason and the way around it."""
    import http.client
    import socket
    import urllib.error
    import urllib.request

    partfile = PartFile(part)
    if partfile.complete(url):
        return
    restarted = False
    for attempt in range(RETRIES + 2):
        headers = {"User-Agent": "mmearth-toolkit (fetch-model)", **partfile.request_headers(url, log)}
        have = partfile.size()
        request = urllib.request.Request(url, headers=headers)
        try:
            response = urllib.request.urlopen(request, timeout=timeout)  # nosec B310 - http(s) only (resolve_target)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have and not restarted:
                log(f"the server refused to continue the partial download (HTTP 416: it is longer than the file or "
                    f"the file changed): {part.name} was discarded, downloading from the start")
                partfile.discard()
                restarted = True
                continue
            reason = {404: "not found (the file moved, or the catalogue's address is out of date: set "
                           f"{registry.MODEL_BASE_URL_ENV} or the plugin's download address to a mirror)",
                      401: "authentication needed", 403: "access refused"}.get(exc.code, exc.reason)
            raise FetchError(f"the server answered HTTP {exc.code} for {url}: {reason}; or "
                             f"{manual_hint()}") from None
        except (urllib.error.URLError, socket.timeout, OSError, ValueError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
            raise FetchError(f"cannot reach {url} ({reason}): no network, the host is down, or it answered "
                             f"something that is not HTTP. Try again later, or {manual_hint(url)}") from None
        with response:
            status = getattr(response, "status", 200)
            try:
                mode, done, total = partfile.begin(url, status, response.headers.get)
                if have and mode == "wb":
                    log(f"the file at {url} changed since the partial download (or the server cannot resume): "
                        "downloading it from the start")
            except Restart as exc:
                if restarted:
                    raise FetchError(f"the server at {url} answers range requests inconsistently: {exc}. "
                                     f"{manual_hint(url)}") from None
                log(f"{exc}: {part.name} was discarded, downloading from the start")
                partfile.discard()
                restarted = True
                continue
            except OSError as exc:
                raise write_error(exc, partfile, partfile.meta) from None
            try:
                with open(part, mode) as f:
                    while True:
                        if cancelled():
                            raise Cancelled(f"download cancelled; the part kept in {part.parent} is resumed by the "
                                            "next fetch of the same model")
                        block = response.read(CHUNK)
                        if not block:
                            break
                        f.write(block)
                        done += len(block)
                        progress(done, total)
                    f.flush()
                    os.fsync(f.fileno())
            except (http.client.HTTPException, ConnectionError, socket.timeout) as exc:
                if attempt < RETRIES:
                    time.sleep(0.5 * (attempt + 1))
                    continue
                raise FetchError(f"the download of {url} kept breaking off ({type(exc).__name__}) at {done} bytes: "
                                 "run the same command again to resume it") from None
            except OSError as exc:
                raise write_error(exc, partfile, total=total) from None
            if total is not None and done < total:
                if attempt < RETRIES:
                    continue
                raise FetchError(f"the download of {url} stopped at {done} of {total} bytes: run the same command "
                                 "again to resume it")
            return
    raise FetchError(f"the download of {url} could not be completed: run the same command again")


def check_download(partfile: PartFile, url: str) -> None:
    """A finished download must be a checkpoint (a zip); otherwise it is deleted, and the message says
    what it looks like."""
    try:
        with open(partfile.part, "rb") as f:
            head = f.read(512)
    except OSError as exc:
        raise FetchError(describe_os_error(exc, partfile.part, "read")) from None
    if head[:4] == b"PK\x03\x04":
        return
    partfile.discard()
    text = head.lstrip().lower()
    what = ("an HTML page (a login, error or 'download' page, not the file itself)"
            if text.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head")) else
            "empty" if not head else "not a checkpoint (not a zip archive)")
    raise FetchError(f"the download of {url} is {what}: it was deleted. Check the address (the link must give the "
                     f".pth file itself), or {manual_hint(url)}")


@contextmanager
def download_lock(path: Path, cancelled: Callable[[], bool] = lambda: False,
                  log: Callable[[str], None] = lambda m: None, wait_s: Optional[float] = None):
    """Hold ``path`` exclusively (one fetch per download at a time); a second fetch waits for the first,
    up to ``wait_s`` (``$MMEARTH_FETCH_WAIT``, default an hour), then says so. The lock file is removed
    by its holder; a waiter that wakes on a removed file takes the new one."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here; one fetch at a time is then up to the user
        yield
        return
    if wait_s is None:
        wait_s = float(os.environ.get("MMEARTH_FETCH_WAIT", "3600"))
    deadline, told = time.monotonic() + wait_s, False
    while True:
        fh = open(path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            if not told:
                log("another fetch of the same model is running: waiting for it to finish")
                told = True
            if cancelled():
                raise Cancelled("cancelled while waiting for another fetch of the same model") from None
            if time.monotonic() > deadline:
                raise FetchError(f"another fetch of the same model has been running for over {wait_s:.0f} s (lock "
                                 f"{path}): wait for it to finish, or stop it and run this again") from None
            time.sleep(0.2)
            continue
        try:
            same = os.fstat(fh.fileno()).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        fh.close()
    try:
        yield
    finally:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        fh.close()


# ----------------------------------------------------------------------------- hash record

def read_record(folder: Path) -> dict:
    try:
        data = json.loads((Path(folder) / HASH_RECORD).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def write_record(folder: Path, url: str, sha256: str, size: int) -> None:
    record = read_record(folder)
    record[url] = {"sha256": sha256, "bytes": size, "recorded": time.strftime("%Y-%m-%d")}
    atomic_write_text(Path(folder) / HASH_RECORD, json.dumps(record, indent=1, sort_keys=True))


# ----------------------------------------------------------------------------- the whole step

def fetch_model(spec: str, out_dir, *, name: Optional[str] = None, base_url: Optional[str] = None,
                sha256: Optional[str] = None, heads: bool = True, downloader=None, keep_download: bool = False,
                progress: Callable[[float], None] = lambda f: None, cancelled: Callable[[], bool] = lambda: False,
                log: Callable[[str], None] = lambda m: None) -> dict:
    """Download (if a name or URL), check, convert and install; returns what was written.

    One fetch of a URL at a time: a second waits for the first (``download_lock``)."""
    out_dir = Path(out_dir)
    target = resolve_target(spec, name, base_url)
    check_output(out_dir / f"{target.name}.onnx", [target.path] if target.path else [], "model", (".onnx",),
                 "an ONNX model")
    if not target.url:
        digest, size = sha256_of(target.path), target.path.stat().st_size
        return _convert_install(target, target.path, str(target.path), digest, size, out_dir, heads, progress,
                                cancelled, log)
    cache = downloads_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FetchError(describe_os_error(exc, cache)) from None
    key = hashlib.sha256(target.url.encode()).hexdigest()[:12]
    partfile = PartFile(cache / f"{target.name}-{key}.pth.part")
    with download_lock(cache / f"{target.name}-{key}.lock", cancelled, log):
        expected = (sha256 or target.sha256 or "").lower() or None
        recorded = read_record(out_dir).get(target.url, {}).get("sha256")
        if partfile.size():
            log(f"resuming the download of {target.url} at {partfile.size()} bytes")
        else:
            log(f"downloading {target.url}")

        def on_bytes(done, total):
            if total:
                progress(0.8 * done / total)

        (downloader or http_download)(target.url, partfile.part, on_bytes, cancelled, log=log)
        check_download(partfile, target.url)
        digest, size = sha256_of(partfile.part), partfile.size()
        want = expected or recorded
        if want and digest != want:
            partfile.discard()
            where = "given" if expected else f"recorded at the first download ({HASH_RECORD} in {out_dir})"
            raise FetchError(f"the download of {target.url} has SHA-256 {digest}, not the {where} {want}: it was "
                             "deleted and nothing was installed. If the authors published a new file, give its "
                             "checksum with --sha256 (QGIS: SHA256), or remove the record")
        from mpmae_core.runtime.releases.pth_to_onnx import ConvertError

        try:
            res = _convert_install(target, partfile.part, target.url, digest, size, out_dir, heads, progress,
                                   cancelled, log)
        except ConvertError as exc:  # the download is no usable checkpoint: never resume it again
            partfile.discard()
            raise ConvertError(f"{exc} (the download was deleted: the next fetch downloads it again)") from None
        if not (sha256 or target.sha256) and target.url not in read_record(out_dir):
            write_record(out_dir, target.url, digest, size)
            log(f"recorded SHA-256 {digest} for {target.url} (the catalogue does not know it; later downloads are "
                f"checked against it, {HASH_RECORD} in {out_dir})")
        if not keep_download:
            partfile.discard()
        return res


def _convert_install(target: Target, source_file: Path, origin: str, digest: str, size: int, out_dir: Path, heads,
                     progress, cancelled, log) -> dict:
    from mpmae_core.runtime.releases.pth_to_onnx import convert

    log(f"converting ({size / 1e6:.1f} MB, SHA-256 {digest[:16]}...) without torch")
    res = convert(source_file, out_dir, target.name, heads=heads, cancelled=cancelled, log=log,
                  source=f"{target.name} from {origin} (sha256 {digest})",
                  input_bands=target.entry.input_bands if target.entry else None,
                  licence=target.entry.licence if target.entry else "")
    progress(1.0)
    return dict(res, name=target.name, origin=origin, sha256=digest, bytes=size)


def list_models(out_dir) -> list[str]:
    """The catalogue with what is installed in ``out_dir``, then any other models there."""
    out_dir = Path(out_dir)
    installed = {p.stem for p in out_dir.glob("*.onnx")} if out_dir.is_dir() else set()
    lines = [f"catalogue of released MMEarth models (download base {registry.model_base_url()}):",
             f"  weights licence: {registry.released_weights_licence()}"]
    for name, m in registry.released_models().items():
        mark = "installed" if name in installed else "-"
        note = "" if m.confirmed else "  (folder from the README table; file name not stated by the authors)"
        lines.append(f"  {name:<32} {mark:<10} {m.describe()}{note}")
    heads = tuple(f"-{t}" for t in registry.PRETEXT_CLASSES)
    others = sorted(n for n in installed if n not in registry.released_models() and not n.endswith(heads))
    if others:
        lines.append(f"other models in {out_dir}: {', '.join(others)}")
    return lines
