"""Get a released MMEarth model into a models folder in one step: download (resumable, checked),
convert without torch (``convert``), install atomically.

``fetch_model(spec, folder)`` takes a catalogue name (``registry.released_models``), a URL or a
local checkpoint file. Downloads go to a cache folder outside the models folder
(``$MMEARTH_DOWNLOADS``, else ``~/.cache/mmearth/downloads``) under a ``.part`` name: an
interrupted or cancelled download is resumed from where it stopped (HTTP Range) by the next call,
a connection that drops mid-file is resumed at once (up to 3 times), and nothing ever appears in
the models folder before the converted models are complete and verified. The SHA-256 of every
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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from mpmae_core import registry
from mpmae_core.runtime.files import Cancelled, atomic_write_text, check_output

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

def http_download(url: str, part: Path, progress: Callable[[int, Optional[int]], None] = lambda d, t: None,
                  cancelled: Callable[[], bool] = lambda: False, timeout: float = 60.0) -> None:
    """Download ``url`` into ``part``, continuing what is there (HTTP Range); a dropped connection
    is resumed up to RETRIES times. Raises FetchError with the reason and the way around it."""
    import http.client
    import socket
    import urllib.error
    import urllib.request

    for attempt in range(RETRIES + 1):
        have = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": "mmearth-toolkit (fetch-model)"}
        if have:
            headers["Range"] = f"bytes={have}-"
        request = urllib.request.Request(url, headers=headers)
        try:
            response = urllib.request.urlopen(request, timeout=timeout)  # nosec B310 - http(s) only (resolve_target)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:  # nothing left to send: the file is complete
                return
            reason = {404: "not found (the file moved, or the catalogue's address is out of date: set "
                           f"{registry.MODEL_BASE_URL_ENV} or the plugin's download address to a mirror)",
                      401: "authentication needed", 403: "access refused"}.get(exc.code, exc.reason)
            raise FetchError(f"the server answered HTTP {exc.code} for {url}: {reason}; or "
                             f"{manual_hint()}") from None
        except (urllib.error.URLError, socket.timeout, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise FetchError(f"cannot reach {url} ({reason}): no network, or the host is down. Try again later, "
                             f"or {manual_hint(url)}") from None
        with response:
            status = getattr(response, "status", 200)
            length = response.headers.get("Content-Length")
            if status == 206:
                total = have + int(length) if length else None
                mode = "ab"
            else:  # the server ignored the range: start over
                total, mode, have = (int(length) if length else None), "wb", 0
            done = have
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
            except (http.client.IncompleteRead, ConnectionError, socket.timeout) as exc:
                if attempt < RETRIES:
                    time.sleep(0.5 * (attempt + 1))
                    continue
                raise FetchError(f"the download of {url} kept breaking off ({type(exc).__name__}) at {done} bytes: "
                                 "run the same command again to resume it") from None
            except OSError as exc:
                from mpmae_core.runtime.files import describe_os_error

                raise FetchError(describe_os_error(exc, part)) from None
            if total is not None and done < total:
                if attempt < RETRIES:
                    continue
                raise FetchError(f"the download of {url} stopped at {done} of {total} bytes: run the same command "
                                 "again to resume it")
            return


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
    """Download (if a name or URL), check, convert and install; returns what was written."""
    from mpmae_core.runtime.convert import convert

    out_dir = Path(out_dir)
    target = resolve_target(spec, name, base_url)
    check_output(out_dir / f"{target.name}.onnx", [target.path] if target.path else [], "model", (".onnx",),
                 "an ONNX model")
    digest, size = None, None
    if target.url:
        expected = (sha256 or target.sha256 or "").lower() or None
        recorded = read_record(out_dir).get(target.url, {}).get("sha256")
        cache = downloads_dir()
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            from mpmae_core.runtime.files import describe_os_error

            raise FetchError(describe_os_error(exc, cache)) from None
        key = hashlib.sha256(target.url.encode()).hexdigest()[:12]
        part = cache / f"{target.name}-{key}.pth.part"
        if part.exists():
            log(f"resuming the download of {target.url} at {part.stat().st_size} bytes")
        else:
            log(f"downloading {target.url}")

        def on_bytes(done, total):
            if total:
                progress(0.8 * done / total)

        (downloader or http_download)(target.url, part, on_bytes, cancelled)
        digest, size = sha256_of(part), part.stat().st_size
        want = expected or recorded
        if want and digest != want:
            part.unlink()
            where = "given" if expected else f"recorded at the first download ({HASH_RECORD} in {out_dir})"
            raise FetchError(f"the download of {target.url} has SHA-256 {digest}, not the {where} {want}: it was "
                             "deleted and nothing was installed. If the authors published a new file, give its "
                             "checksum with --sha256 (QGIS: SHA256), or remove the record")
        source_file = part
        origin = target.url
    else:
        source_file, origin = target.path, str(target.path)
        digest, size = sha256_of(target.path), target.path.stat().st_size
    log(f"converting ({size / 1e6:.1f} MB, SHA-256 {digest[:16]}...) without torch")
    res = convert(source_file, out_dir, target.name, heads=heads, cancelled=cancelled, log=log,
                  source=f"{target.name} from {origin} (sha256 {digest})")
    progress(1.0)
    if target.url:
        if not (sha256 or target.sha256) and target.url not in read_record(out_dir):
            write_record(out_dir, target.url, digest, size)
            log(f"recorded SHA-256 {digest} for {target.url} (the catalogue does not know it; later downloads are "
                f"checked against it, {HASH_RECORD} in {out_dir})")
        if not keep_download:
            source_file.unlink()
    return dict(res, name=target.name, origin=origin, sha256=digest, bytes=size)


def list_models(out_dir) -> list[str]:
    """The catalogue with what is installed in ``out_dir``, then any other models there."""
    out_dir = Path(out_dir)
    installed = {p.stem for p in out_dir.glob("*.onnx")} if out_dir.is_dir() else set()
    lines = [f"catalogue of released MMEarth models (download base {registry.model_base_url()}):"]
    for name, m in registry.released_models().items():
        mark = "installed" if name in installed else "-"
        note = "" if m.source == "confirmed" else "  (folder name from the README's pattern, not confirmed)"
        lines.append(f"  {name:<32} {mark:<10} {m.describe()}{note}")
    heads = tuple(f"-{t}" for t in registry.PRETEXT_CLASSES)
    others = sorted(n for n in installed if n not in registry.released_models() and not n.endswith(heads))
    if others:
        lines.append(f"other models in {out_dir}: {', '.join(others)}")
    return lines
