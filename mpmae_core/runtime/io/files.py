"""Outputs that appear whole or not at all, and checks that refuse a bad output before any work.

Every file the toolkit writes goes through :class:`PendingOutput` (or :func:`atomic_output`): it is
written under a temporary name in the destination folder, checked, and renamed onto the target
only when complete. A failure, a cancel or a full disk leaves the previous file at the target
untouched and no temporary file behind; a temporary file orphaned by a killed process is removed by
the next write to the same target.

:func:`check_output` runs before any compute: it refuses a folder, a parent that is a file, an
unwritable location, an extension that is not the format written, and an output that is the same
file as one of the inputs. Pure Python.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

#: Files GDAL writes beside a raster (PAM metadata, overviews, masks): they follow the raster.
SIDECARS = (".aux.xml", ".ovr", ".msk")
#: Extensions of the GeoTIFFs the runtime writes.
GEOTIFF_EXTENSIONS = (".tif", ".tiff")


class Cancelled(Exception):
    """The run was cancelled; nothing was written."""


class OutputError(ValueError):
    """An output cannot be written where asked; the message names the problem and the fix."""


def describe_os_error(exc: OSError, path, action: str = "write") -> str:
    """An analyst's sentence for an OSError on ``path``: what happened and what to do."""
    path = str(path)
    folder = os.path.dirname(os.path.abspath(path)) or "."
    code = getattr(exc, "errno", None)
    if code == errno.ENOSPC or code == errno.EDQUOT:
        return (f"could not {action} '{path}': no space left on the disk holding '{folder}'. Free some space or "
                "choose an output folder on another disk; nothing was written.")
    if code in (errno.EACCES, errno.EPERM):
        return f"could not {action} '{path}': permission denied. Choose a folder you can write to."
    if code == errno.EROFS:
        return f"could not {action} '{path}': the file system is read-only. Choose a writable folder."
    if code == errno.EISDIR:
        return f"could not {action} '{path}': it is a folder. Give a file name inside it."
    if code in (errno.ENOTDIR,):
        return f"could not {action} '{path}': a part of the path is a file, not a folder. Fix the path."
    if code == errno.ENOENT:
        return f"could not {action} '{path}': the folder does not exist or cannot hold files. Fix the path."
    reason = getattr(exc, "strerror", None) or str(exc)
    return f"could not {action} '{path}': {reason}."


# ------------------------------------------------------------------------------------------
# Checks before any work
# ------------------------------------------------------------------------------------------

def user_cache_dir() -> Path:
    """Where the runtime keeps what it can make again (feature caches, product stacks):
    $MMEARTH_CACHE, else $XDG_CACHE_HOME/mmearth, else ~/.cache/mmearth."""
    env = os.environ.get("MMEARTH_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")) / "mmearth"


def same_file(a, b) -> bool:
    """Whether two paths name the same file: same inode when both exist, else the same resolved path."""
    try:
        pa, pb = Path(a), Path(b)
    except TypeError:
        return False
    if pa.exists() and pb.exists():
        try:
            return os.path.samefile(pa, pb)
        except OSError:
            pass
    try:
        return pa.resolve() == pb.resolve()
    except OSError:
        return os.path.abspath(pa) == os.path.abspath(pb)


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_output(path, inputs: Iterable = (), what: str = "output",
                 extensions: Optional[Sequence[str]] = None, format_name: str = "") -> Path:
    """Refuse, before any work, an output that cannot be written or would destroy an input.

    ``inputs`` are paths (or GDAL file lists) that are read; an output naming one of them is
    refused. ``extensions`` are the suffixes of the format written (e.g. GEOTIFF_EXTENSIONS).
    Returns the output as a Path. Raises :class:`OutputError` naming the problem and the fix.
    """
    if path is None or str(path).strip() == "":
        raise OutputError(f"no {what} file was given: give a file path")
    dest = Path(os.path.expanduser(str(path)))
    if dest.is_dir():
        example = dest / ("output" + (extensions[0] if extensions else ""))
        raise OutputError(f"the {what} '{dest}' is a folder: give a file name inside it, e.g. '{example}'")
    if extensions and dest.suffix.lower() not in extensions:
        raise OutputError(
            f"the {what} '{dest}' ends in '{dest.suffix or '(no extension)'}' but this writes "
            f"{format_name or 'a ' + extensions[0] + ' file'}: name it with {' or '.join(extensions)}, "
            f"e.g. '{dest.with_suffix(extensions[0]).name}'")
    for src in inputs:
        if src and same_file(dest, src):
            raise OutputError(
                f"the {what} '{dest}' is the same file as the input '{src}': writing it would destroy the input. "
                "Choose another output file name.")
    anchor = _nearest_existing(dest.parent)
    if not anchor.is_dir():
        raise OutputError(f"cannot write the {what} '{dest}': '{anchor}' is a file, not a folder. Fix the path.")
    folder = dest.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".mmearth-write-test.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(describe_os_error(exc, dest, f"write the {what}")) from None
    return dest


# ------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------

def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_PARTIAL = re.compile(r"\.(?P<pid>\d+)-[^.]+\.partial")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_orphans(dest: Path) -> list[Path]:
    """Remove temporary files of ``dest`` left by a process that no longer runs (e.g. SIGKILL)."""
    removed = []
    with contextlib.suppress(OSError):
        for leftover in dest.parent.glob(f".{glob_escape(dest.name)}.*.partial*"):
            m = _PARTIAL.search(leftover.name[len(dest.name) + 1:])
            if m and not _pid_alive(int(m.group("pid"))):
                with contextlib.suppress(OSError):
                    leftover.unlink()
                    removed.append(leftover)
    return removed


def glob_escape(name: str) -> str:
    return re.sub(r"([\[\]*?])", r"[\1]", name)


class PendingOutput:
    """A file being written under a temporary name beside ``dest``; ``commit`` renames it.

    ``companion(final)`` gives a temporary path for a file that must appear together with the main
    one (a .qml style, a report); it is renamed just before the main file. ``commit(verify)`` calls
    ``verify(tmp)`` first: if that raises, nothing is renamed. ``abort`` removes every temporary file.
    GDAL sidecars written under the temporary name move with it; stale sidecars of an older file at
    the target are removed.
    """

    def __init__(self, dest, suffix: Optional[str] = None):
        self.dest = Path(dest)
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        remove_orphans(self.dest)
        ext = suffix if suffix is not None else "".join(self.dest.suffixes[-1:])
        self.tmp = self._temp(self.dest, ext)
        self.companions: list[tuple[Path, Path]] = []
        self.done = False

    @staticmethod
    def _temp(dest: Path, ext: str) -> Path:
        fd, name = tempfile.mkstemp(prefix=f".{dest.name}.{os.getpid()}-", suffix=f".partial{ext}", dir=dest.parent)
        os.close(fd)
        return Path(name)

    def companion(self, final) -> Path:
        final = Path(final)
        remove_orphans(final)
        tmp = self._temp(final, final.suffix)
        self.companions.append((tmp, final))
        return tmp

    def _all_temps(self) -> list[Path]:
        out = [self.tmp] + [Path(f"{self.tmp}{s}") for s in SIDECARS]
        for tmp, _ in self.companions:
            out += [tmp] + [Path(f"{tmp}{s}") for s in SIDECARS]
        return out

    def commit(self, verify: Optional[Callable[[Path], None]] = None) -> Path:
        try:
            if verify is not None:
                verify(self.tmp)
            mode = _default_mode()
            for tmp, final in self.companions + [(self.tmp, self.dest)]:
                os.chmod(tmp, mode)
                for side in SIDECARS:
                    if Path(f"{tmp}{side}").exists():
                        os.replace(f"{tmp}{side}", f"{final}{side}")
                    elif Path(f"{final}{side}").exists():
                        os.unlink(f"{final}{side}")  # stale: it described the file being replaced
                os.replace(tmp, final)
        except BaseException:
            self.abort()
            raise
        self.done = True
        return self.dest

    def abort(self) -> None:
        for leftover in self._all_temps():
            with contextlib.suppress(FileNotFoundError, OSError):
                leftover.unlink()


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, suffix: Optional[str] = None,
                  verify: Optional[Callable[[Path], None]] = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds
    (and ``verify(tmp)``, when given, passes).

    The temporary file lives in the destination folder (so the rename is atomic on one file
    system) and keeps the destination's extension (so drivers that pick a format by extension
    still work). On any exception, cancellation included, the temporary file and its sidecars are
    removed and ``path`` is left untouched.
    """
    pending = PendingOutput(path, suffix)
    try:
        yield pending.tmp
    except BaseException:
        pending.abort()
        raise
    pending.commit(verify)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    def same_text(tmp: Path) -> None:
        if tmp.read_text(encoding=encoding) != text:
            raise OSError(errno.EIO, "the file read back differs from what was written")

    with atomic_output(path, verify=same_text) as tmp:
        with open(tmp, "w", encoding=encoding) as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def check_outputs(outputs: dict, inputs: list) -> None:
    """Refuse before any work: each output in ``outputs`` (what -> path, None skipped) must be a
    writable GeoTIFF location, distinct from every input and from the other outputs."""
    given = [(what, path) for what, path in outputs.items() if path]
    for i, (what, path) in enumerate(given):
        others = [p for _, p in given[:i]]
        check_output(path, list(inputs) + others, what, GEOTIFF_EXTENSIONS, "a GeoTIFF")
