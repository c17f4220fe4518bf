"""Many scenes on a Dask cluster: ``python -m mpmae_core.runtime batch {embed,segment} INPUTS MODEL OUT_DIR``.

Inputs (one argument): a glob, a text file of paths, a local STAC ItemCollection or catalogue JSON
(each item's band assets become a VRT, ``/vsicurl/`` for remote ones), or VRTs. Every scene gets one
output in OUT_DIR, a manifest beside it (the identity of every input file, of the model and head,
and the options), a VRT mosaic of all outputs (one per CRS) and a run report of done, skipped and
failed scenes with the reasons.

The engine is Dask distributed: a LocalCluster of ``--workers`` processes by default, or the
scheduler at ``--scheduler tcp://HOST:8786``. A task is one block of tile rows of a scene
(``TiledPredictor.run(block=...)``: the numbers are those of the whole run) and a last task per scene
puts its blocks together, so memory per worker stays bounded whatever the scene size, and a
worker reads its own inputs: only paths pass through the client. Faults:

- a scene that fails (a corrupt file, a missing band) is reported and does not stop the others;
- a worker that dies: Dask runs its tasks again elsewhere (outputs are written atomically, and
  a scene whose output is complete and current is never written again);
- a re-run skips every scene whose output is complete and current and redoes those that changed.
"""

from __future__ import annotations

import glob as globmod
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

from mpmae_core import registry
from mpmae_core.runtime.io.files import PendingOutput, atomic_write_text

MANIFEST_VERSION = 1
REPORT_NAME = "batch_report.json"


class BatchError(ValueError):
    """Inputs or options a batch cannot start from; the message names the problem and the fix."""


@dataclass
class Scene:
    id: str
    source: str  # what GDAL opens: a raster file or a VRT
    error: str = ""  # a scene that cannot be run (a broken STAC item): reported as failed, nothing else stops


# ----------------------------------------------------------------------------- inputs

def _safe_id(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "scene"


def expand_inputs(spec: str, work_dir: Path, exclude: Optional[Path] = None,
                  log: Callable[[str], None] = lambda m: None) -> list[Scene]:
    """The scenes of one INPUTS argument (see the module's docstring); VRTs for STAC items go to
    ``work_dir``. Files inside ``exclude`` (the output folder) are left out, and a file listed more
    than once is run once (both with a note). Scene ids are unique (a file name, made unique with
    its parent folder)."""
    spec = str(spec)
    path = Path(spec)
    stac = path.is_file() and path.suffix.lower() in (".json", ".geojson")
    if stac:
        scenes = stac_scenes(path, work_dir)  # its VRTs live in work_dir, inside the output folder
    elif path.is_file() and path.suffix.lower() in (".txt", ".lst", ".list"):
        base = path.parent
        lines = [ln for ln in (list_line(raw) for raw in path.read_text(errors="replace").splitlines()) if ln]
        scenes = [Scene("", str((base / ln) if not os.path.isabs(ln) and "://" not in ln else ln)) for ln in lines]
    elif path.is_file():
        scenes = [Scene("", str(path))]
    else:
        matches = sorted(globmod.glob(spec, recursive=True))
        if not matches:
            raise BatchError(f"'{spec}' matches no file: give a glob (quoted, e.g. 'scenes/*.tif'), a text file of "
                             "paths, a STAC ItemCollection or catalogue JSON, or a raster")
        scenes = [Scene("", m) for m in matches if Path(m).is_file() or list(Path(m).glob("MTD_MSIL*.xml"))]
    scenes = scenes if stac else _without_outputs(scenes, exclude, log)
    scenes = [s if s.error or stac else _product_scene(s, work_dir) for s in scenes]
    scenes = _without_duplicates(_tiles_not_parts(scenes, log), log)
    used: dict = {}
    for s in scenes:
        if not s.id:
            p = Path(s.source)
            s.id = _safe_id(p.stem)
            if s.id in used:
                s.id = _safe_id(f"{p.parent.name}_{p.stem}")
        n, base_id = 2, s.id
        while s.id in used:
            s.id = f"{base_id}_{n}"
            n += 1
        used[s.id] = s
    if not scenes:
        raise BatchError(f"'{spec}' holds no scene" + (f" outside the output folder '{exclude}'" if exclude else ""))
    return scenes


def list_line(raw: str) -> str:
    """A path from a line of a list file: '#' starts a comment (at the line's start, or after a space)."""
    import re

    return re.split(r"(?:^|\s)#", raw, maxsplit=1)[0].strip()


def _local_key(source: str) -> Optional[str]:
    if "://" in source or source.startswith("/vsi"):
        return source
    try:
        return str(Path(source).resolve())
    except (OSError, RuntimeError):
        return source


def _without_outputs(scenes: list, exclude: Optional[Path], log) -> list:
    if exclude is None:
        return scenes
    root = str(Path(exclude).resolve())
    keep = [s for s in scenes if s.error or not (_local_key(s.source) or "").startswith(root + os.sep)]
    if len(keep) < len(scenes):
        log(f"note: left out {len(scenes) - len(keep)} file(s) inside the output folder '{exclude}' (this batch's own "
            "outputs are not inputs)")
    return keep


def _tiles_not_parts(scenes: list, log) -> list:
    """A TESSERA tile's ``NAME_scales.npy`` is part of the tile ``NAME.npy``, not a scene of its own (a
    glob '*.npy' names both): it stands for its tile, once, with a note."""
    from mpmae_core.runtime.io.embeddings import tessera_tile_of

    sources = {_local_key(s.source) for s in scenes}
    keep, parts = [], 0
    for s in scenes:
        if not s.error and s.source.endswith("_scales.npy"):
            parts += 1
            tile = str(tessera_tile_of(s.source))
            if _local_key(tile) in sources:
                continue
            sources.add(_local_key(tile))
            s = Scene(s.id, tile)
        keep.append(s)
    if parts:
        log(f"note: {parts} TESSERA scales file(s) taken as part of their tile, not as scenes")
    return keep


def _without_duplicates(scenes: list, log) -> list:
    seen: dict = {}
    keep = []
    for s in scenes:
        key = f"{s.source}#{s.id}" if s.error else _local_key(s.source)
        if key in seen:
            seen[key] += 1
            continue
        seen[key] = 1
        keep.append(s)
    twice = {k: n for k, n in seen.items() if n > 1}
    if twice:
        listed = ", ".join(f"{Path(k).name} ({n} times)" for k, n in list(twice.items())[:5])
        log(f"note: {len(twice)} input(s) listed more than once, each run once: {listed}"
            + (" ..." if len(twice) > 5 else ""))
    return keep


def stac_scenes(path: Path, work_dir: Path) -> list[Scene]:
    """Scenes of a local STAC ItemCollection, catalogue or single item: one VRT per item, its
    Sentinel-2 band assets stacked by name (10 m grid, nearest), described by band name."""
    items = list(_stac_items(path))
    if not items:
        raise BatchError(f"'{path}' is a JSON file but holds no STAC item")
    work_dir.mkdir(parents=True, exist_ok=True)
    scenes = []
    for i, (item, base) in enumerate(items):
        if not isinstance(item, dict):
            scenes.append(Scene(f"item{i}", str(path), error=f"item {i} of '{path}' is not a JSON object: fix or "
                                                              "remove it"))
            continue
        sid = _safe_id(str(item.get("id") or f"item{i}"))
        try:
            scenes.append(Scene(sid, str(_item_vrt(item, base, work_dir))))
        except BatchError as exc:  # one broken item fails only itself
            scenes.append(Scene(sid, str(path), error=str(exc)))
    return scenes


def _stac_items(path: Path, depth: int = 0):
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BatchError(f"'{path}' is not a readable JSON file: {exc}") from None
    if not isinstance(doc, dict):
        raise BatchError(f"'{path}' holds a JSON {type(doc).__name__}, not a STAC ItemCollection, catalogue or item "
                         "(an object with \"type\": \"FeatureCollection\", \"Catalog\", \"Collection\" or "
                         "\"Feature\")")
    kind = doc.get("type")
    if kind == "FeatureCollection":
        features = doc.get("features", [])
        for feat in features if isinstance(features, list) else []:
            yield feat, path.parent
    elif kind == "Feature":
        yield doc, path.parent
    elif kind in ("Catalog", "Collection") and depth < 5:
        links = doc.get("links", [])
        for link in links if isinstance(links, list) else []:
            href = link.get("href") if isinstance(link, dict) else None
            if isinstance(href, str) and link.get("rel") in ("item", "child") and "://" not in href:
                yield from _stac_items((path.parent / href).resolve(), depth + 1)
    else:
        raise BatchError(f"'{path}' is not a STAC ItemCollection, catalogue or item (type {kind!r})")


def _product_scene(scene: Scene, work_dir: Path) -> Scene:
    """A SAFE product (zip, folder, MTD xml) as a scene: its 10 m stack (a VRT in ``work_dir``), named
    after the product; a damaged product fails only itself."""
    import re

    from mpmae_core.runtime.io import products

    src = scene.source
    name = Path(src.rstrip("/")).name
    if not (name.lower().endswith(".zip") or re.fullmatch(r"MTD_MSIL(1C|2A)\.xml", name, re.I)
            or Path(src).is_dir()):
        return scene
    sid = _safe_id(Path(src).parent.stem if name.upper().startswith("MTD_") else Path(src.rstrip("/")).stem)
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
        return Scene(sid, str(products.build_vrt(products.open_product(src), work_dir / f"{sid}.vrt")))
    except products.ProductError as exc:
        return Scene(sid, src, error=str(exc))


def _item_vrt(item: dict, base: Path, work_dir: Path) -> Path:
    """The item's bands stacked by name on its 10 m grid (``io.products``, as for one product)."""
    from mpmae_core.runtime.io import products

    label = f"the STAC item '{item.get('id')}'"
    try:
        product = products.stac_item(item, base, source=str(base), label=label)
        return products.build_vrt(product, work_dir / f"{_safe_id(item.get('id') or 'item')}.vrt")
    except products.ProductError as exc:
        raise BatchError(str(exc)) from None


# ----------------------------------------------------------------------------- identity

SAMPLE_BLOCK = 64 << 10
SAMPLE_BLOCKS = 16


def content_sample(path: str, size: int) -> str:
    """SHA-256 of the file's size and of ``SAMPLE_BLOCKS`` blocks spread over it (first and last
    included; the whole file when small): a file replaced by another of the same size and time
    differs here, at the cost of reading about 1 MiB."""
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= SAMPLE_BLOCK * SAMPLE_BLOCKS:
            h.update(f.read())
        else:
            for i in range(SAMPLE_BLOCKS):
                f.seek((size - SAMPLE_BLOCK) * i // (SAMPLE_BLOCKS - 1))
                h.update(f.read(SAMPLE_BLOCK))
    return h.hexdigest()


def series_scene(spec: str, work_dir: Path, options: dict, log: Callable[[str], None]) -> list[Scene]:
    """A series of dates (``options["series"]``) as one scene: its members listed in a text file in
    ``work_dir`` (what every worker reads), named after the reference date."""
    from mpmae_core.runtime.inference.series import dated_members, expand_series

    members = dated_members(expand_series(spec), options.get("dates"))
    reference = members[min(int(options.get("reference") or 0), len(members) - 1)]
    work_dir.mkdir(parents=True, exist_ok=True)
    listing = work_dir / f"{_safe_id(Path(reference.source).stem)}_series.txt"
    text = "".join(f"{Path(m.source).resolve() if '://' not in m.source else m.source}\n" for m in members)
    if not listing.is_file() or listing.read_text() != text:
        atomic_write_text(listing, text)
    options["dates"] = [str(m.date) for m in members]  # in the listing's order, so workers need no metadata
    log(f"one series of {len(members)} dates: " + ", ".join(str(m.date) for m in members) + "; its tile rows are "
        "shared among the workers")
    return [Scene(_safe_id(f"{Path(reference.source).stem}_series"), str(listing))]


def file_identity(path: str) -> dict:
    if "://" in path or path.startswith("/vsi"):
        return {"path": path}
    st = os.stat(path)
    return {"path": str(Path(path).resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns,
            "sample_sha256": content_sample(path, st.st_size)}


def input_identity(source: str) -> list:
    """Every file a scene reads (a VRT's sources too), by path, size and modification time."""
    from mpmae_core.runtime.inference.predict import input_files

    seen, out = set(), []
    for f in input_files(source):
        if f in seen:
            continue
        seen.add(f)
        try:
            out.append(file_identity(f))
        except OSError:
            out.append({"path": f, "missing": True})
    return out


def model_identity(path) -> dict:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return {"path": str(Path(path).resolve()), "sha256": h.hexdigest()}


def options_identity(options: dict) -> dict:
    """The options as JSON, with the area of interest's and the mask's files by identity (a changed
    file is another run)."""
    import dataclasses

    out = {}
    for k, v in options.items():
        if dataclasses.is_dataclass(v):
            v = {f: (str(x) if x is not None and not isinstance(x, (int, float, bool)) else x)
                 for f, x in dataclasses.asdict(v).items()}
            if v.get("user") and Path(str(v["user"]).partition("|")[0]).is_file():
                v["user"] = file_identity(str(v["user"]).partition("|")[0])
        elif k == "aoi" and v and Path(str(v).partition("|")[0]).is_file():
            v = {"text": str(v), "file": file_identity(str(v).partition("|")[0])}
        out[k] = v
    return out


def manifest_path(output: Path) -> Path:
    return output.with_name(output.name + ".json")


def is_current(output: Path, manifest: dict) -> bool:
    """The output exists, was completed, and was made from exactly these inputs and options."""
    mp = manifest_path(output)
    if not output.is_file() or not mp.is_file():
        return False
    try:
        old = json.loads(mp.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    keys = ("version", "mode", "inputs", "model", "head", "options")
    return all(old.get(k) == manifest.get(k) for k in keys) and old.get("bytes") == output.stat().st_size


# ----------------------------------------------------------------------------- tasks (run on workers)

@dataclass
class Job:
    mode: str  # "embed" or "segment"
    model: str
    head: Optional[str]
    options: dict  # passed to embed()/segment(): tile, overlap, level, dn_offset, scale, band_map, dtype ...
    device: str = "auto"


def output_for(scene: Scene, out_dir: Path, mode: str) -> Path:
    return Path(out_dir) / f"{scene.id}_{'embeddings' if mode == 'embed' else 'classes'}.tif"


def plan_blocks(scene: Scene, job: Job, rows_per_block: int) -> tuple[int, list]:
    """(tile rows of the scene, [(a, b), ...] blocks of at most ``rows_per_block`` tile rows)."""
    from mpmae_core.runtime.io.gdal_io import open_raster
    from mpmae_core.runtime.models.model import read_metadata
    from mpmae_core.runtime.inference.tiling import DEFAULT_OVERLAP, DEFAULT_TILE, raster_windows

    from mpmae_core.runtime.inference.embedding_sources import without_model
    from mpmae_core.runtime.inference.series import reference_source
    from mpmae_core.runtime.io.products import stack_path

    opts = job.options
    if opts.get("series"):
        ds = open_raster(stack_path(reference_source(scene.source, series=True, dates=opts.get("dates"),
                                                     reference=opts.get("reference") or 0)))
    else:
        ds = open_raster(scene.source)
    alone = without_model(job.model)  # another model's embedding read alone: pixel by pixel, no overlap
    patch = 1 if alone else read_metadata(job.model).patch_size
    overlap = 0 if alone else job.options.get("overlap", DEFAULT_OVERLAP)
    height, width = ds.RasterYSize, ds.RasterXSize
    if job.options.get("aoi"):  # the tiles of the area's window (AoiError: the scene lies outside it)
        from mpmae_core.runtime.io.aoi import aoi_window, read_aoi

        _, _, width, height = aoi_window(read_aoi(job.options["aoi"], ds.GetProjection()), ds.GetGeoTransform(),
                                         width, height, patch)
    n = len(raster_windows(height, width, job.options.get("tile", DEFAULT_TILE), overlap, patch))
    step = max(1, int(rows_per_block))
    return n, [(a, min(a + step, n)) for a in range(0, n, step)]


def run_block(scene: Scene, job: Job, block: tuple, path: str) -> dict:
    """One block of tile rows of a scene into its own GeoTIFF (a worker reads the scene itself)."""
    from mpmae_core.runtime.inference.predict import embed, segment

    t = time.time()
    kw = dict(job.options, device=job.device, block=tuple(block), style=False)
    try:
        if job.mode == "embed":
            res = embed(scene.source, job.model, path, **kw)
        else:
            kw.pop("dtype", None)
            res = segment(scene.source, job.model, path, head_path=job.head, **kw)
    except (ValueError, OSError) as exc:  # the scene's own fault (our messages name it): no retry, no traceback
        return {"path": path, "error": _reason(exc)}
    return {"path": path, "seconds": time.time() - t, "provider": res["provider"], "run": res["run"],
            "worker_pid": os.getpid()}


def assemble(scene: Scene, job: Job, block_results: list, output: str, manifest: dict) -> dict:
    """Put a scene's blocks together into its output (verified, atomic), with its style and manifest;
    nothing is written when the output is already complete and current."""
    from mpmae_core.runtime.io.gdal_io import RasterError, gdal, gdal_errors

    out = Path(output)
    failed = [r["error"] for r in block_results if r.get("error")]
    if failed:
        _cleanup(block_results)
        return {"error": failed[0]}
    if is_current(out, manifest):
        _cleanup(block_results)
        return {"written": False}
    g = gdal()
    parts = [r["path"] for r in block_results]
    pending = PendingOutput(out)
    try:
        with gdal_errors() as errors:
            if len(parts) == 1:
                os.replace(parts[0], pending.tmp)
                for side in (".aux.xml",):
                    if Path(parts[0] + side).exists():
                        os.replace(parts[0] + side, str(pending.tmp) + side)
            else:
                vrt = g.BuildVRT(str(pending.tmp) + ".vrt", parts)
                if vrt is None:
                    raise RasterError(f"could not put the blocks of {scene.id} together: {errors.text()}")
                first = g.Open(parts[0])
                opts = ["TILED=YES", "BLOCKXSIZE=256", "BLOCKYSIZE=256", "COMPRESS=DEFLATE", "BIGTIFF=IF_SAFER",
                        "SPARSE_OK=TRUE", "PREDICTOR=3" if first.GetRasterBand(1).DataType == g.GDT_Float32
                        else "PREDICTOR=2"]
                names = first.GetRasterBand(1).GetCategoryNames()
                table = first.GetRasterBand(1).GetRasterColorTable()
                ds = g.Translate(str(pending.tmp), vrt, format="GTiff", creationOptions=opts)
                if ds is None or errors:
                    raise RasterError(f"could not write {out}: {errors.text()}")
                if names:
                    ds.GetRasterBand(1).SetCategoryNames(names)
                if table is not None:
                    ds.GetRasterBand(1).SetRasterColorTable(table)
                ds.FlushCache()
                ds, vrt, first = None, None, None
                os.unlink(str(pending.tmp) + ".vrt")
        style = _style_for(out, job)
        if style:
            pending.companion(out.with_suffix(".qml")).write_text(style, encoding="utf-8")
        pending.commit(_verify_raster)
    except BaseException:
        pending.abort()
        raise
    finally:
        _cleanup(block_results)
    manifest = dict(manifest, bytes=out.stat().st_size, written=time.strftime("%Y-%m-%d %H:%M:%S"))
    atomic_write_text(manifest_path(out), json.dumps(manifest, indent=1))
    return {"written": True}


def _verify_raster(tmp) -> None:
    from mpmae_core.runtime.io.gdal_io import gdal
    from mpmae_core.runtime.inference.raster import RasterError

    ds = gdal().Open(str(tmp))
    if ds is None or ds.GetRasterBand(ds.RasterCount).ReadAsArray(0, ds.RasterYSize - 1, ds.RasterXSize, 1) is None:
        raise RasterError(f"the finished output {tmp} does not read back complete")


def _style_for(out: Path, job: Job) -> str:
    """The class map's .qml (names and colours of the head or segmenter); none for embeddings."""
    from mpmae_core.runtime.models.model import read_metadata
    from mpmae_core.runtime.io.styles import paletted_qml

    if job.mode != "segment":
        return ""
    meta = read_metadata(job.head or job.model)
    names = meta.class_names
    return paletted_qml(names, meta.class_colours or registry.suggest_class_colours(names))


def _cleanup(block_results: list) -> None:
    for r in block_results:
        for p in (r["path"], r["path"] + ".aux.xml"):
            try:
                os.unlink(p)
            except OSError:
                pass


# ----------------------------------------------------------------------------- the client side

@dataclass
class BatchReport:
    mode: str
    out_dir: str
    done: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    outside: list = field(default_factory=list)  # scenes the area of interest does not reach
    mosaics: list = field(default_factory=list)
    seconds: float = 0.0
    workers: int = 0
    dashboard: str = ""

    def text(self) -> str:
        lines = [f"{len(self.done)} done, {len(self.skipped)} skipped (complete and current), {len(self.failed)} "
                 f"failed, in {self.seconds:.1f} s on {self.workers} worker(s)"
                 + (f"; {len(self.outside)} outside the area of interest" if self.outside else "")]
        lines += [f"  failed: {f['scene']}: {f['reason']}" for f in self.failed]
        lines += [f"  mosaic: {m}" for m in self.mosaics]
        return "\n".join(lines)


def _client(workers: int, scheduler: Optional[str], log):
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise BatchError("the batch command needs Dask distributed: pip install 'dask[distributed]' (it is in the "
                         "toolkit's [batch] extra)") from None
    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise BatchError(f"cannot reach the Dask scheduler at {scheduler}: {exc}. Start one with `dask "
                             "scheduler` and workers with `dask worker SCHEDULER`, or leave --scheduler out to use a "
                             "local cluster") from None
        return client, None
    threads = max(1, (os.cpu_count() or 1) // workers)  # each worker's ONNX Runtime gets its share of the CPUs
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                           silence_logs=50, env={"MMEARTH_ORT_THREADS": str(threads)})
    return Client(cluster), cluster


def run_batch(mode: str, inputs: str, model: str, out_dir, *, head: Optional[str] = None, workers: int = 2,
              scheduler: Optional[str] = None, rows_per_block: int = 8, options: Optional[dict] = None,
              device: str = "auto", progress: Callable[[float], None] = lambda f: None,
              log: Callable[[str], None] = lambda m: None, client=None) -> BatchReport:
    """Embed or map every scene of ``inputs`` into ``out_dir`` on a Dask cluster (see the module)."""
    from mpmae_core.runtime.io.files import check_output
    from mpmae_core.runtime.models.model import read_metadata

    if mode not in ("embed", "segment"):
        raise BatchError(f"unknown batch mode {mode!r}: embed or segment")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise BatchError(f"the output folder '{out_dir}' is a file: give a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    check_output(out_dir / REPORT_NAME, [], "report", (".json",), "a JSON report")
    from mpmae_core.runtime.inference.embedding_sources import without_model

    alone = without_model(model)  # the scenes are another model's embeddings, read alone by a head trained so
    if alone:
        if mode != "segment" or not head:
            raise BatchError("embeddings read alone (the model 'none') are mapped by a head trained on them: use "
                             "batch segment with --head HEAD.onnx")
        if (options or {}).get("series"):
            raise BatchError("an embedding read alone is one file per place, not a series of dates")
    else:
        meta = read_metadata(model)
        if mode == "segment" and head is None and meta.kind != "segmenter":
            raise BatchError(f"'{model}' is an encoder: give --head HEAD.onnx to map classes, or a segmenter model")
    if head:
        read_metadata(head)
    options = dict(options or {})
    job = Job(mode, "none" if alone else str(Path(model).resolve()), str(Path(head).resolve()) if head else None,
              options, device)
    if options.get("series") and mode != "segment":
        raise BatchError("a series is mapped with a head trained on it: use batch segment --series --head HEAD.onnx")
    scenes = series_scene(inputs, out_dir / "_inputs", options, log) if options.get("series") else \
        expand_inputs(inputs, out_dir / "_inputs", exclude=out_dir, log=log)
    t0 = time.time()
    ident = {"model": None if alone else model_identity(model), "head": model_identity(head) if head else None}
    own = client is None
    cluster = None
    if own:
        client, cluster = _client(workers, scheduler, log)
    report = BatchReport(mode, str(out_dir), workers=len(client.scheduler_info().get("workers", {})))
    try:
        report.dashboard = client.dashboard_link or ""
    except Exception:  # noqa: BLE001 - no dashboard (bokeh missing): fine
        report.dashboard = ""
    if report.dashboard:
        log(f"Dask dashboard: {report.dashboard}")
    blocks_dir = out_dir / "_blocks"
    blocks_dir.mkdir(exist_ok=True)
    futures, final = {}, {}
    try:
        for scene in scenes:
            if scene.error:
                report.failed.append({"scene": scene.id, "source": scene.source, "reason": scene.error})
                continue
            out = output_for(scene, out_dir, mode)
            try:
                manifest = {"version": MANIFEST_VERSION, "mode": mode, "inputs": input_identity(scene.source),
                            "model": ident["model"], "head": ident["head"], "options": options_identity(options),
                            "scene": scene.id,
                            "source": scene.source}
            except Exception as exc:  # noqa: BLE001 - a scene that cannot even be listed is a failed scene
                report.failed.append({"scene": scene.id, "source": scene.source, "reason": str(exc)})
                continue
            if is_current(out, manifest):
                report.skipped.append({"scene": scene.id, "output": str(out)})
                continue
            try:
                _, blocks = plan_blocks(scene, job, rows_per_block)
            except Exception as exc:  # noqa: BLE001
                from mpmae_core.runtime.io.aoi import AoiError

                if isinstance(exc, AoiError) and "outside the raster" in str(exc):
                    report.outside.append({"scene": scene.id, "source": scene.source})
                    log(f"{scene.id}: outside the area of interest, left out")
                    continue
                report.failed.append({"scene": scene.id, "source": scene.source, "reason": _reason(exc)})
                continue
            parts = [client.submit(run_block, scene, job, blk, str(blocks_dir / f"{scene.id}.{i}.tif"),
                                   key=f"block-{scene.id}-{i}-{time.time_ns()}", retries=1, pure=False)
                     for i, blk in enumerate(blocks)]
            fut = client.submit(assemble, scene, job, parts, str(out), manifest, key=f"assemble-{scene.id}-"
                                f"{time.time_ns()}", retries=1, pure=False)
            futures[fut] = scene
            final[scene.id] = out
        from distributed import as_completed

        total = max(1, len(futures))
        for i, fut in enumerate(as_completed(list(futures)), start=1):
            scene = futures[fut]
            try:
                res = fut.result()
            except Exception as exc:  # noqa: BLE001 - one failed scene never stops the others
                res = {"error": _reason(exc)}
            if res.get("error"):
                report.failed.append({"scene": scene.id, "source": scene.source, "reason": res["error"]})
            else:
                report.done.append({"scene": scene.id, "output": str(final[scene.id]), "written": res["written"]})
            progress(i / total)
    finally:
        if own:
            client.close()
            if cluster is not None:
                cluster.close()
    for stale in blocks_dir.glob("*"):
        try:
            stale.unlink()
        except OSError:
            pass
    try:
        blocks_dir.rmdir()
    except OSError:
        pass
    report.mosaics = write_mosaics(out_dir, [Path(d["output"]) for d in report.done + report.skipped], mode)
    report.seconds = time.time() - t0
    atomic_write_text(out_dir / REPORT_NAME, json.dumps(asdict(report), indent=1))
    return report


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())[:2000]


def write_mosaics(out_dir: Path, outputs: list, mode: str) -> list:
    """One VRT mosaic of the outputs per CRS (GDAL mosaics need one CRS)."""
    from mpmae_core.runtime.io.gdal_io import gdal

    g = gdal()
    by_crs: dict = {}
    for p in outputs:
        ds = g.Open(str(p))
        if ds is None:
            continue
        srs = ds.GetSpatialRef()
        code = (srs.GetAuthorityCode(None) if srs is not None else None) or "unknown"
        by_crs.setdefault(code, []).append(str(p))
    out = []
    stem = "mosaic_embeddings" if mode == "embed" else "mosaic_classes"
    for code, files in sorted(by_crs.items()):
        name = out_dir / (f"{stem}.vrt" if len(by_crs) == 1 else f"{stem}_EPSG{code}.vrt")
        pending = PendingOutput(name)
        try:
            vrt = g.BuildVRT(str(pending.tmp), sorted(files))
            if vrt is None:
                raise OSError(f"could not build the mosaic {name}")
            vrt = None
            pending.commit()
        except BaseException:
            pending.abort()
            raise
        out.append(str(name))
    return out
