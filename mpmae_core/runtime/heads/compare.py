"""Which features map this place best? Every feature source the input offers (Sentinel-2 spectra,
MMEarth's encoder, another model's embedding, their combinations, a series' temporal features),
each given the same self-choosing head on the user's own labels.

For each feature set the candidates of that set alone (logistic regression at three strengths, a
random forest, the mean of the two) are cross-validated on the same folds grouped by labelled
feature, the best is chosen by its class-balanced Brier score, as ``pixelhead`` chooses, and the
chosen head is also scored in spatial blocks. Both figures come from the labels, which sit on
chosen places. With a validation sample (``mmearth sample-design``, its points given a reference
class), each set's head is fitted on every label and assessed at the sample's points with the
sample's own design: the stratified estimator of the design's strata (the map the sample was
drawn on), which is unbiased for any map of the place, so every source is judged by the same
points and the same estimator. That figure, not the cross-validation, says which map is better.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from html import escape
from typing import Optional, Sequence

import numpy as np

from mpmae_core.runtime.heads import accuracy as A
from mpmae_core.runtime.heads.pixelhead import CLASSIFIERS, PixelHead, candidates, choose, offered_feature_sets, \
    score_candidates
from mpmae_core.runtime.inference.pixel_features import feature_set_blocks, feature_set_columns, is_external
from mpmae_core.runtime.inference.tiling import DEFAULT_OVERLAP, DEFAULT_TILE


@dataclass
class ValidationSample:
    """Validation points on the input's grid: their pixels, reference classes (indices of the
    head's classes), strata and the design's stratum sizes (pixels)."""

    rows: np.ndarray
    cols: np.ndarray
    reference: np.ndarray
    strata: np.ndarray
    sizes: dict
    design: str  # "stratified" (the sample's own design) or "simple"
    path: str = ""


def set_title(feature_set: str, blocks) -> str:
    """A feature set in words, naming another model's embedding by its source."""
    ext = [b.name[len("ext-"):] for b in blocks if is_external(b.name)]
    other = {"alphaearth": "AlphaEarth", "tessera": "TESSERA"}.get(ext[0] if ext else "", "another embedding")
    titles = {"spectra": "Sentinel-2 spectra", "encoder": "MMEarth encoder", "both": "spectra + MMEarth encoder",
              "t-spectra": "spectra over the dates", "t-encoder": "MMEarth encoder over the dates",
              "t-both": "spectra + encoder over the dates", "embedding": other,
              "embedding+spectra": f"{other} + spectra", "embedding+encoder": f"{other} + MMEarth encoder"}
    return titles.get(feature_set, feature_set)


MAX_STRATA = 1000


def sample_design_strata(text: str, path="") -> Optional[tuple[dict, dict]]:
    """(stratum name -> value, value -> pixels) of the design ``sample-design`` stores in its
    points file (JSON in the file's metadata, so a stranger's bytes): a malformed one is refused in
    words; None when it names no strata."""
    bad = A.AccuracyError(f"the sample design stored in '{path}' is damaged: draw the sample again with "
                          "sample-design, or give the points without it (they are then a simple random sample)")
    if len(text) > 1_000_000:
        raise bad
    try:
        design = json.loads(text)
    except (ValueError, RecursionError):
        raise bad from None
    strata = design.get("strata") if isinstance(design, dict) else None
    if not strata:
        return None
    if not isinstance(strata, list) or len(strata) > MAX_STRATA:
        raise bad
    names, sizes = {}, {}
    for st in strata:
        if not isinstance(st, dict):
            raise bad
        name, value, pixels = st.get("stratum"), st.get("value"), st.get("pixels")
        if not isinstance(name, str) or isinstance(value, bool) or not isinstance(value, int) or \
                isinstance(pixels, bool) or not isinstance(pixels, (int, float)) or not np.isfinite(pixels) or \
                pixels <= 0 or name in names or value in sizes:
            raise bad
        names[name], sizes[value] = value, float(pixels)
    return names, sizes


def read_validation(path, reference_field: str, geotransform, width: int, height: int, projection: str,
                    class_names: Sequence[str], log=lambda m: None) -> ValidationSample:
    """The labelled points of a validation sample on the grid; its design from the file that
    ``sample-design`` wrote (its strata and their pixels), else a simple random sample, said."""
    from osgeo import ogr

    from mpmae_core.runtime.heads.validation import read_points

    pts, empty = read_points(path, reference_field, projection, also="stratum")
    if empty:
        log(f"{empty} validation point(s) without a reference class are left out")
    lookup = {n.lower(): i for i, n in enumerate(class_names)}
    unknown = sorted({t for _, _, t, _ in pts if t.lower() not in lookup})
    if unknown:
        raise A.AccuracyError(f"reference class(es) {', '.join(unknown)} of '{path}' are not classes of the labels "
                              f"({', '.join(class_names)}): correct the spelling, or label that class too")
    gt = geotransform
    cols = np.array([int(np.floor((x - gt[0]) / gt[1])) for x, _, _, _ in pts], np.int64)
    rows = np.array([int(np.floor((y - gt[3]) / gt[5])) for _, y, _, _ in pts], np.int64)
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    if (~inside).any():
        log(f"{int((~inside).sum())} validation point(s) off the raster are left out")
    ref = np.array([lookup.get(t.lower(), -1) for _, _, t, _ in pts], np.int64)
    ds = ogr.Open(str(path))
    meta = ds.GetMetadataItem("MMEARTH_SAMPLE_DESIGN") if ds is not None else None
    design = sample_design_strata(meta, path) if meta else None
    if design:
        names, sizes = design
        strata = np.array([names.get(str(st), -1) for _, _, _, st in pts], np.int64)
        if (inside & (strata < 0)).any():
            raise A.AccuracyError(f"points of '{path}' lie in strata its design does not name: give the sample as "
                                  "sample-design wrote it")
        kind = "stratified"
    else:
        log(f"'{path}' does not carry a sample design (mmearth sample-design writes one): its points are taken as a "
            "simple random sample of the raster")
        strata, sizes, kind = np.zeros(len(pts), np.int64), {0: float(width * height)}, "simple"
    return ValidationSample(rows[inside], cols[inside], ref[inside], strata[inside], sizes, kind, str(path))


def compare_sets(x, y, groups, blocks, class_names, feature_sets: Optional[Sequence[str]] = None, *,
                 positions=None, pixel_size_m: float = 10.0, block_m: Optional[float] = None,
                 classifiers: Sequence[str] = CLASSIFIERS, folds: int = 5, seed: int = 0,
                 validation: Optional[ValidationSample] = None, validation_x: Optional[np.ndarray] = None,
                 cancelled=lambda: False, progress=lambda f: None, log=lambda m: None) -> list[dict]:
    """One row per feature set (default: every set ``blocks`` offer): the head it chooses, its
    grouped and spatial cross-validated figures, and with a ``validation`` sample (its features
    ``validation_x``, of all ``blocks``) the assessment at its points."""
    from mpmae_core.runtime.heads import spatial
    from mpmae_core.runtime.io.files import Cancelled

    sets = list(feature_sets or offered_feature_sets(blocks))
    fold_groups = None
    if positions is not None:
        rows, cols = positions
        side = max(1, int(round(block_m / pixel_size_m))) if block_m else spatial.block_side(rows, cols, groups, folds)
        fold_groups = spatial.spatial_groups(rows, cols, groups, side)
        if len(set(fold_groups.tolist())) < 2:
            fold_groups = None
    keep_val = None
    if validation is not None:
        keep_val = np.isfinite(validation_x).all(1)
        if (~keep_val).any():
            log(f"{int((~keep_val).sum())} validation point(s) over pixels some source has no data at are left out, "
                "so that every source is judged on the same points")
    out = []
    for i, fs in enumerate(sets):
        if cancelled():
            raise Cancelled("cancelled by the user; no output was written")
        t0 = time.time()
        sub, cols_ = feature_set_columns(blocks, fs)
        cands = candidates([fs], classifiers)
        scores = score_candidates(x, y, groups, blocks, class_names, cands, folds=folds, seed=seed,
                                  cancelled=cancelled)
        k, _ = choose(scores, blocks)
        best = scores[k]
        row = {"feature_set": fs, "title": set_title(fs, sub), "features": int(len(cols_)), "head": best["name"],
               "grouped": {m: best[m] for m in ("accuracy", "balanced_accuracy", "brier", "folds")}}
        if fold_groups is not None:
            cand = best["candidate"]
            members = list(cand.members) if cand.classifier == "ensemble" else [cand]
            sp = score_candidates(x, y, groups, blocks, class_names, members, folds=folds, seed=seed,
                                  cancelled=cancelled, fold_groups=fold_groups)[-1]
            row["spatial"] = {m: sp[m] for m in ("accuracy", "balanced_accuracy", "brier", "folds")}
        if validation is not None:
            head = PixelHead.fit(x[:, cols_], y, sub, best["candidate"], class_names, seed=seed)
            vx = validation_x[keep_val][:, cols_]
            mapped = head.predict(vx)
            v = validation
            sel = keep_val
            res = A.assess(mapped, v.reference[sel], v.strata[sel], v.sizes, list(class_names))
            producers = [p.value for p in res.producers if np.isfinite(p.value)]
            row["validation"] = {"overall": res.overall.value, "ci95": res.overall.ci95,
                                 "mean_producers": float(np.mean(producers)) if producers else float("nan"),
                                 "points": int(sel.sum()), "estimator": res.estimator,
                                 "predicted": mapped.tolist(), "used": np.flatnonzero(sel).tolist()}
        row["seconds"] = time.time() - t0
        out.append(row)
        progress((i + 1) / len(sets))
    return out


def best_row(rows: list[dict]) -> tuple[int, str]:
    """The row with the best figure and which figure: validation overall accuracy when there is a
    sample, else the spatial (or grouped) cross-validated balanced accuracy."""
    if rows and "validation" in rows[0]:
        return max(range(len(rows)), key=lambda i: rows[i]["validation"]["overall"]), "validation overall accuracy"
    kind = "spatial" if rows and "spatial" in rows[0] else "grouped"
    return max(range(len(rows)), key=lambda i: rows[i][kind]["balanced_accuracy"]), \
        f"{kind} cross-validated balanced accuracy"


CAVEAT = ("Cross-validated figures come from the labels, which sit on clear, chosen places; they rank sources but are "
          "not a map's accuracy. A validation sample (mmearth sample-design, then label its points) gives that, for "
          "every source on the same points.")


def table_text(rows: list[dict]) -> str:
    has_sp, has_val = any("spatial" in r for r in rows), any("validation" in r for r in rows)
    w = max(12, *(len(r["title"]) for r in rows))
    head = f"{'features':<{w}}  {'dims':>5}  {'CV bal.':>7}" + (f"  {'spatial':>7}" if has_sp else "") + \
        (f"  {'validation (95 % CI)':>21}" if has_val else "") + "  head"
    lines = [head]
    k, why = best_row(rows)
    for i, r in enumerate(rows):
        line = f"{r['title']:<{w}}  {r['features']:>5}  {r['grouped']['balanced_accuracy']:>7.1%}"
        if has_sp:
            line += f"  {r['spatial']['balanced_accuracy']:>7.1%}" if "spatial" in r else f"  {'-':>7}"
        if has_val:
            v = r["validation"]
            line += f"  {v['overall']:>12.1%} +- {v['ci95']:.1%}"
        lines.append(line + f"  {'*' if i == k else ' '}{r['head']}")
    lines.append(f"* best by {why}: {rows[k]['title']}")
    if has_val:
        v = rows[k]["validation"]
        lines.append(f"validation: {v['points']} points, {v['estimator']} estimator; intervals that overlap do not "
                     "separate two sources")
    lines.append(CAVEAT)
    return "\n".join(lines)


def csv_text(rows: list[dict]) -> str:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["feature_set", "title", "dimensions", "head", "cv_grouped_accuracy", "cv_grouped_balanced_accuracy",
                "cv_spatial_accuracy", "cv_spatial_balanced_accuracy", "validation_overall_accuracy",
                "validation_ci95", "validation_mean_producers_accuracy", "validation_points"])
    for r in rows:
        sp, v = r.get("spatial") or {}, r.get("validation") or {}
        w.writerow([r["feature_set"], r["title"], r["features"], r["head"], f"{r['grouped']['accuracy']:.4f}",
                    f"{r['grouped']['balanced_accuracy']:.4f}",
                    f"{sp['accuracy']:.4f}" if sp else "", f"{sp['balanced_accuracy']:.4f}" if sp else "",
                    f"{v['overall']:.4f}" if v else "", f"{v['ci95']:.4f}" if v else "",
                    f"{v['mean_producers']:.4f}" if v else "", v.get("points", "")])
    return buf.getvalue()


def html_text(rows: list[dict], title: str) -> str:
    k, why = best_row(rows)
    has_sp, has_val = any("spatial" in r for r in rows), any("validation" in r for r in rows)
    head = ("<tr><th>features</th><th>dimensions</th><th>CV balanced accuracy (grouped)</th>"
            + ("<th>CV balanced accuracy (spatial blocks)</th>" if has_sp else "")
            + ("<th>validation overall accuracy</th><th>95 % interval</th><th>mean producer's accuracy</th>"
               if has_val else "") + "<th>head chosen</th></tr>")
    body = ""
    for i, r in enumerate(rows):
        cells = f"<td>{escape(r['title'])}</td><td>{r['features']}</td><td>{r['grouped']['balanced_accuracy']:.1%}</td>"
        if has_sp:
            cells += f"<td>{r['spatial']['balanced_accuracy']:.1%}</td>" if "spatial" in r else "<td>-</td>"
        if has_val:
            v = r["validation"]
            cells += (f"<td>{v['overall']:.1%}</td><td>{v['overall'] - v['ci95']:.1%} to {v['overall'] + v['ci95']:.1%}"
                      f"</td><td>{v['mean_producers']:.1%}</td>")
        cells += f"<td>{escape(r['head'])}</td>"
        body += f"<tr{' style=font-weight:bold' if i == k else ''}>{cells}</tr>"
    return (f"<html><head><meta charset='utf-8'><title>{escape(title)}</title></head><body><h1>{escape(title)}</h1>"
            f"<p>Best by {escape(why)}: <b>{escape(rows[k]['title'])}</b>.</p><table border='1'>{head}{body}</table>"
            f"<p>{escape(CAVEAT)}</p></body></html>")


def compare_features(source, model_path, features, class_names, *, validation=None,
                     reference_field: str = "reference", report=None, table=None, feature_ids=None,
                     feature_sets: Optional[Sequence[str]] = None, classifiers: Sequence[str] = CLASSIFIERS,
                     buffer_m: float = 0.0, max_pixels_per_class: int = 1000, folds: int = 5, seed: int = 0,
                     block_m: Optional[float] = None, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP,
                     embedding=None, embedding_kind: Optional[str] = None, progress=lambda f: None,
                     cancelled=lambda: False, log=lambda m: None, **input_options) -> dict:
    """The comparison (see the module) on ``source`` (a raster with ``model_path``, with another
    model's ``embedding`` beside; or an embedding alone with no model), ``features`` its labels.
    Writes the HTML ``report`` and the CSV ``table`` (each optional, whole or not at all)."""
    from mpmae_core.runtime.heads.pixelhead import gather_pixels, open_head_input
    from mpmae_core.runtime.inference.embedding_sources import without_model
    from mpmae_core.runtime.inference.pixel_features import sample_features
    from mpmae_core.runtime.inference.predict import check_tiling, input_files
    from mpmae_core.runtime.inference.series import source_blocks
    from mpmae_core.runtime.io.files import atomic_write_text, check_output

    check_tiling(tile, 0 if without_model(model_path) else overlap, 0)
    inputs = input_files(source) + ([] if without_model(model_path) else [str(model_path)]) + \
        ([str(validation)] if validation else [])
    for path, what, ext, kind in ((report, "report", (".html", ".htm"), "an HTML page"),
                                  (table, "table", (".csv",), "a CSV table")):
        if path:
            check_output(path, inputs, what, ext, kind)
    model, meta, prep, overlap = open_head_input(source, model_path, embedding=embedding,
                                                 embedding_kind=embedding_kind, tile=tile, overlap=overlap,
                                                 log=log, **input_options)
    for note in prep.notes:
        log(note)
    available = source_blocks(prep, meta)
    sets = list(feature_sets or offered_feature_sets(available))
    empty = [fs for fs in sets if not feature_set_blocks(available, fs)]
    if empty:
        raise ValueError(f"the feature set(s) {', '.join(empty)} hold nothing on this input")
    used = {b.name for fs in sets for b in feature_set_blocks(available, fs)}
    blocks = [b for b in available if b.name in used]
    x, y, groups, samples, positions = gather_pixels(prep, model, blocks, features, class_names, buffer_m=buffer_m,
                                                     max_per_class=max_pixels_per_class, seed=seed, tile=tile,
                                                     overlap=overlap, feature_ids=feature_ids, log=log,
                                                     progress=lambda f: progress(0.3 * f), cancelled=cancelled)
    val = vx = None
    if validation:
        val = read_validation(validation, reference_field, prep.geotransform, prep.width, prep.height,
                              prep.projection, class_names, log)
        if val.rows.size == 0:
            raise A.AccuracyError(f"no labelled validation point of '{validation}' lies on the raster")
        vx = sample_features(prep, model, blocks, val.rows, val.cols, tile, overlap, cancelled=cancelled,
                             progress=lambda f: progress(0.3 + 0.1 * f))
    rows = compare_sets(x, y, groups, blocks, class_names, sets, positions=positions,
                        pixel_size_m=abs(prep.geotransform[1]), block_m=block_m, classifiers=classifiers,
                        folds=folds, seed=seed, validation=val, validation_x=vx, cancelled=cancelled,
                        progress=lambda f: progress(0.4 + 0.6 * f), log=log)
    if table:
        atomic_write_text(table, csv_text(rows))
    if report:
        atomic_write_text(report, html_text(rows, "Which features map this place best?"))
    return {"rows": rows, "text": table_text(rows), "samples": samples, "best": rows[best_row(rows)[0]]["title"],
            "validation": val.design if val is not None else ""}
