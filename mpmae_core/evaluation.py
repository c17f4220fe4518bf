"""Linear probing and few-shot benchmarks of frozen encoders against a raw-spectra baseline.

Protocol (MMEarth paper, section on linear probing): the encoder is frozen; a sample's feature is
the global average of the encoder's feature map over the sample's window; a LayerNorm and a
linear layer are trained on top (``runtime.linear.LinearHead``: LayerNorm, standardisation,
L2-regularised softmax regression). The raw-spectra baseline is the same classifier on the
average of the window's normalised band values. Every representation sees the same splits in one
run, so differences are paired.

Tasks on a labelled scene (an image with a label raster):

- classification: non-overlapping windows (default 32 px) labelled with the class covering at
  least half of their pixels; k-shot (k per class for training, every other window for testing)
  and a linear probe (half of each class for training), each over many seeds;
- few-shot segmentation: k labelled cells (one patch, mostly one class) per class train a head on
  cell embeddings; every labelled pixel outside those cells is predicted (the cell's class,
  as the QGIS map does at patch resolution) and scored with mIoU. The spectra baseline trains on
  every pixel of the same cells and predicts per pixel.

Pure numpy functions (splits, aggregation, summaries) are kept apart from the torch parts.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from mpmae_core import registry
from mpmae_core.runtime.heads import linear, metrics
from mpmae_core.runtime.io.labels import window_labels
from mpmae_core.runtime.inference.tiling import DEFAULT_OVERLAP, DEFAULT_TILE

SPECTRA = "raw spectra"


# ----------------------------------------------------------------------------- splits (pure)

def kshot_split(y: np.ndarray, k: int, seed: int, classes: Optional[Sequence[int]] = None) -> tuple:
    """k random samples of each class to train on, every other sample of those classes to test.
    Classes with k or fewer samples cannot be both trained and tested and are left out; the
    classes used are returned as well."""
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    classes = [c for c in (np.unique(y) if classes is None else classes) if (y == c).sum() > k]
    train = np.concatenate([rng.choice(np.flatnonzero(y == c), k, replace=False) for c in classes]) \
        if classes else np.empty(0, int)
    test = np.setdiff1d(np.flatnonzero(np.isin(y, classes)), train)
    return np.sort(train), test, list(classes)


def spatial_kshot_split(y: np.ndarray, blocks: np.ndarray, k: Optional[int], seed: int,
                        test_share: float = 0.5) -> tuple:
    """A split by place: a random ``test_share`` of the spatial blocks is held out; k samples of
    each class (all of them with ``k`` None: a linear probe) are drawn from the other blocks to
    train on, and every sample of the held-out blocks is tested. No test sample lies in a block
    that was trained on. Classes without k samples in the training blocks, or none in the held-out
    ones, are left out; the classes used are returned as well."""
    y, blocks = np.asarray(y), np.asarray(blocks)
    rng = np.random.default_rng(seed)
    ub = np.unique(blocks)
    rng.shuffle(ub)
    held = ub[: max(1, min(len(ub) - 1, int(round(len(ub) * test_share))))]
    in_test = np.isin(blocks, held)
    pool, rest = np.flatnonzero(~in_test), np.flatnonzero(in_test)
    need = 1 if k is None else k
    classes = [c for c in np.unique(y) if (y[pool] == c).sum() >= need and (y[rest] == c).sum() > 0]
    if not classes:
        return np.empty(0, int), np.empty(0, int), []
    if k is None:
        train = pool[np.isin(y[pool], classes)]
    else:
        train = np.concatenate([rng.choice(pool[y[pool] == c], k, replace=False) for c in classes])
    test = rest[np.isin(y[rest], classes)]
    return np.sort(train), np.sort(test), list(classes)


def fraction_split(y: np.ndarray, fraction: float, seed: int) -> tuple:
    """A stratified split: ``fraction`` of each class (at least one, never all) to train on."""
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    train = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        if len(idx) < 2:
            continue
        n = int(np.clip(round(fraction * len(idx)), 1, len(idx) - 1))
        train.append(rng.choice(idx, n, replace=False))
    train = np.sort(np.concatenate(train)) if train else np.empty(0, int)
    test = np.setdiff1d(np.flatnonzero(np.isin(y, np.unique(y[train]))), train)
    return train, test, sorted(np.unique(y[train]).tolist())


def block_mean(x: np.ndarray, factor: int) -> np.ndarray:
    """(C, H, W) -> (C, H/f, W/f) averages of f x f blocks (H, W cropped to multiples of f)."""
    c, h, w = x.shape[0], x.shape[1] // factor, x.shape[2] // factor
    return x[:, :h * factor, :w * factor].reshape(c, h, factor, w, factor).mean((2, 4))


def block_all(mask: np.ndarray, factor: int) -> np.ndarray:
    """(H, W) bool -> (H/f, W/f): whether every pixel of each f x f block is set (cropped to multiples of f)."""
    h, w = mask.shape[0] // factor, mask.shape[1] // factor
    return mask[:h * factor, :w * factor].reshape(h, factor, w, factor).all(axis=(1, 3))


def mean_std(values) -> tuple[float, float]:
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    return (float(v.mean()), float(v.std())) if v.size else (float("nan"), float("nan"))


# ----------------------------------------------------------------------------- the benchmark runs

@dataclass
class RunResult:
    """Scores of one representation, one setting (k or 'probe'), one seed."""

    representation: str
    setting: str
    seed: int
    task: str  # "classification" or "segmentation"
    confusion: np.ndarray
    classes: list

    def scores(self) -> dict:
        s = metrics.summary(self.confusion, self.classes)
        return {"accuracy": s["accuracy"], "balanced_accuracy": s["balanced_accuracy"], "miou": s["miou"],
                "f1": {n: v["f1"] for n, v in s["per_class"].items()},
                "iou": {n: v["iou"] for n, v in s["per_class"].items()}}


def classify(features: dict, y: np.ndarray, class_names: Sequence[str], shots: Sequence[int], seeds: int,
             probe_fraction: float = 0.5, l2: float = 1e-2, log=lambda m: None,
             blocks: Optional[np.ndarray] = None) -> list[RunResult]:
    """k-shot and linear-probe classification for every representation on the same splits; with
    ``blocks`` (each sample's spatial block) the same again on splits by place
    (:func:`spatial_kshot_split`), as the task "classification_spatial"."""
    out = []
    settings = [(str(k), k) for k in shots] + [("probe", None)]
    tasks = [("classification", None)] + ([("classification_spatial", blocks)] if blocks is not None else [])
    for task, bl in tasks:
        for name, k in settings:
            for seed in range(seeds):
                if bl is not None:
                    train, test, used = spatial_kshot_split(y, bl, k, seed)
                elif k is None:
                    train, test, used = fraction_split(y, probe_fraction, seed)
                else:
                    train, test, used = kshot_split(y, k, seed)
                if len(used) < 2:
                    log(f"{task} {name}-shot: fewer than 2 classes have more than {k} samples; skipped")
                    break
                for rep, feats in features.items():
                    head = linear.LinearHead.fit(feats[train], y[train], list(class_names), l2=l2)
                    cm = metrics.confusion_matrix(y[test], head.predict(feats[test]), len(class_names))
                    out.append(RunResult(rep, name, seed, task, cm, list(class_names)))
    return out


def segment_cells(cell_features: dict, cell_labels: np.ndarray, pixel_labels: np.ndarray, patch: int,
                  pixel_spectra: Optional[np.ndarray], class_names: Sequence[str], shots: Sequence[int], seeds: int,
                  nodata: int = 0, l2: float = 1e-2, max_pixels: int = 2000) -> list[RunResult]:
    """Few-shot segmentation: k cells per class train; every labelled pixel outside them is tested.

    ``cell_features``: name -> (h, w, D) per-cell features; ``cell_labels`` (h, w) the class of
    cells mostly one class (else ``nodata``); ``pixel_labels`` (h*patch, w*patch); ``pixel_spectra``
    (C, h*patch, w*patch) for the per-pixel spectra baseline (or None)."""
    h, w = cell_labels.shape
    K = len(class_names)
    flat = cell_labels.ravel()
    candidates = np.flatnonzero(flat != nodata)
    pix = pixel_labels[:h * patch, :w * patch]
    out = []
    for k in shots:
        for seed in range(seeds):
            train_idx, _, used = kshot_split(flat[candidates], k, seed)
            if len(used) < 2:
                break
            cells = candidates[train_idx]
            y_cells = flat[cells]
            in_train = np.zeros((h, w), bool)
            in_train.flat[cells] = True
            train_pixels = np.kron(in_train, np.ones((patch, patch), bool))
            test_mask = (pix != nodata) & ~train_pixels & np.isin(pix, used)
            truth = pix[test_mask]
            for rep, feats in cell_features.items():
                f = feats.reshape(h * w, -1)
                head = linear.LinearHead.fit(f[cells], y_cells, list(class_names), l2=l2)
                pred_cells = head.predict(f).reshape(h, w)
                pred = np.kron(pred_cells, np.ones((patch, patch), pred_cells.dtype))[test_mask]
                out.append(RunResult(rep, str(k), seed, "segmentation", metrics.confusion_matrix(truth, pred, K),
                                     list(class_names)))
            if pixel_spectra is not None:
                c = pixel_spectra.shape[0]
                spec = pixel_spectra[:, :h * patch, :w * patch].reshape(c, -1).T
                train_pix = train_pixels.ravel() & (pix.ravel() != nodata)
                xi, yi = spec[train_pix], pix.ravel()[train_pix]
                keep = linear.cap_per_class(yi, max_pixels, seed)
                head = linear.LinearHead.fit(xi[keep], yi[keep], list(class_names), l2=l2)
                pred = head.predict(spec[test_mask.ravel()])
                out.append(RunResult(SPECTRA, str(k), seed, "segmentation", metrics.confusion_matrix(truth, pred, K),
                                     list(class_names)))
    return out


def aggregate(results: list[RunResult]) -> dict:
    """task -> setting -> representation -> {metric: (mean, std), seeds, per-class means, confusion sum}."""
    table: dict = {}
    for r in results:
        table.setdefault(r.task, {}).setdefault(r.setting, {}).setdefault(r.representation, []).append(r)
    out: dict = {}
    for task, by_setting in table.items():
        for setting, by_rep in by_setting.items():
            for rep, runs in by_rep.items():
                scores = [r.scores() for r in runs]
                entry = {m: mean_std([s[m] for s in scores]) for m in ("accuracy", "balanced_accuracy", "miou")}
                names = runs[0].classes
                entry["f1"] = {n: mean_std([s["f1"][n] for s in scores])[0] for n in names}
                entry["iou"] = {n: mean_std([s["iou"][n] for s in scores])[0] for n in names}
                entry["seeds"] = len(runs)
                entry["confusion"] = np.sum([r.confusion for r in runs], axis=0).tolist()
                entry["classes"] = names
                out.setdefault(task, {}).setdefault(setting, {})[rep] = entry
    return out


def paired_difference(results: list[RunResult], task: str, setting: str, a: str, b: str,
                      metric: str = "accuracy") -> tuple[float, float, int]:
    """Mean and std over seeds of metric(a) - metric(b), seed by seed (same splits); and how many
    seeds ``a`` wins."""
    by = {(r.representation, r.seed): r.scores()[metric] for r in results if r.task == task and r.setting == setting}
    seeds = sorted({s for rep, s in by if rep == a} & {s for rep, s in by if rep == b})
    diffs = np.array([by[(a, s)] - by[(b, s)] for s in seeds])
    if not len(diffs):
        return float("nan"), float("nan"), 0
    return float(diffs.mean()), float(diffs.std()), int((diffs > 0).sum())


# ----------------------------------------------------------------------------- report

@dataclass
class Report:
    title: str
    dataset: str
    representations: list
    shots: list
    seeds: int
    summary: dict
    comparisons: list = field(default_factory=list)  # (text) lines
    notes: list = field(default_factory=list)


def _fmt(ms) -> str:
    m, s = ms
    return "n/a" if not np.isfinite(m) else f"{100 * m:.1f} ± {100 * s:.1f}"


TASK_TITLES = {"pixel": "Per-pixel few-shot mapping (k labelled points per class)",
               "classification_spatial": "Classification, split by place (spatial blocks: trained on half of the "
                                         "blocks, tested on the other half)"}


def markdown(report: Report, images: dict) -> str:
    lines = [f"# {report.title}", "", f"Data: {report.dataset}", "",
             f"Representations: {', '.join(report.representations)}. Each score is the mean ± standard deviation "
             f"over {report.seeds} seeds (random splits, the same for every representation), in percent.", ""]
    if report.comparisons:
        lines += ["## Findings", ""] + [f"- {c}" for c in report.comparisons] + [""]
    for task, by_setting in report.summary.items():
        settings = sorted(by_setting, key=lambda s: (s == "probe", int(s) if s.isdigit() else 0))
        reps = [r for r in report.representations if any(r in by_setting[st] for st in settings)]
        lines += [f"## {TASK_TITLES.get(task, task.capitalize())}", ""]
        for metric, label in (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"), ("miou", "mIoU")):
            lines += [f"**{label}**", "", "| representation | " + " | ".join(
                f"{s}-shot" if s.isdigit() else "linear probe (50 %)" for s in settings) + " |",
                "|---|" + "---|" * len(settings)]
            for rep in reps:
                cells = [_fmt(by_setting[s][rep][metric]) if rep in by_setting[s] else "n/a" for s in settings]
                lines.append(f"| {rep} | " + " | ".join(cells) + " |")
            lines.append("")
        lines += ["**classes scored** (a k-shot setting uses the classes with more than k samples, so columns with "
                  "different class sets are not comparable with each other; rows are):", ""]
        for st in settings:
            e = next(iter(by_setting[st].values()))
            present = [n for n, row in zip(e["classes"], e["confusion"]) if sum(row)]
            lines.append(f"- {st + '-shot' if st.isdigit() else 'linear probe'}: {', '.join(present)}")
        lines.append("")
        ref = "5" if "5" in by_setting else settings[0]
        lines += [f"**per-class F1 and IoU at {ref}-shot** (mean over seeds)", ""]
        names = next(iter(by_setting[ref].values()))["classes"]
        lines += ["| representation | " + " | ".join(f"{n} F1 / IoU" for n in names) + " |",
                  "|---|" + "---|" * len(names)]
        for rep in reps:
            if rep in by_setting[ref]:
                e = by_setting[ref][rep]
                lines.append(f"| {rep} | " + " | ".join(
                    "n/a" if not np.isfinite(e["f1"][n]) else f"{100 * e['f1'][n]:.0f} / {100 * e['iou'][n]:.0f}"
                    for n in names) + " |")
        lines.append("")
        for key in (f"{task}_shots", f"{task}_confusion"):
            if key in images:
                lines += [f"![{key}]({images[key]})", ""]
    if report.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in report.notes] + [""]
    return "\n".join(lines)


def plots(report: Report, out_dir: Path) -> dict:
    """PNG plots: accuracy vs shots (mean ± std) and pooled confusion matrices at 5 shots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mpmae_core.runtime.io.files import atomic_output

    def save(fig, name: str) -> str:
        fig.tight_layout()
        with atomic_output(out_dir / name) as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)
        return name

    images = {}
    for task, by_setting in report.summary.items():
        metric = "accuracy" if task.startswith("classification") else "miou"
        shots = sorted((s for s in by_setting if s.isdigit()), key=int)
        fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
        for rep in report.representations:
            pts = [(int(s), *by_setting[s][rep][metric]) for s in shots if rep in by_setting[s]]
            if pts:
                k, m, sd = map(np.array, zip(*pts))
                ax.errorbar(k, 100 * m, yerr=100 * sd, marker="o", capsize=3, label=rep)
        ax.set_xscale("log")
        ax.set_xticks([int(s) for s in shots])
        ax.set_xticklabels(shots)
        ax.set_xlabel("labelled samples per class (shots)")
        ax.set_ylabel(f"{'accuracy' if metric == 'accuracy' else 'mIoU'} (%)")
        ax.set_title(f"{task}: mean ± std over {report.seeds} seeds")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        images[f"{task}_shots"] = save(fig, f"{task}_shots.png")
        ref = "5" if "5" in by_setting else shots[0] if shots else "probe"
        reps = [r for r in report.representations if r in by_setting[ref]
                and (task != "pixel" or r in PIXEL_BASELINES or r.endswith(CHOSEN))]
        fig, axes = plt.subplots(1, len(reps), figsize=(3.6 * len(reps), 3.6), dpi=110, squeeze=False)
        for ax, rep in zip(axes[0], reps):
            e = by_setting[ref][rep]
            cm = np.array(e["confusion"], np.float64)
            norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
            ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
            ax.set_xticks(range(len(e["classes"])))
            ax.set_xticklabels(e["classes"], rotation=60, fontsize=7)
            ax.set_yticks(range(len(e["classes"])))
            ax.set_yticklabels(e["classes"], fontsize=7)
            ax.set_title(rep, fontsize=9)
            ax.set_xlabel("predicted", fontsize=8)
        axes[0][0].set_ylabel("true (rows sum to 1)", fontsize=8)
        fig.suptitle(f"{task}, {ref}-shot: confusion pooled over seeds", fontsize=10)
        images[f"{task}_confusion"] = save(fig, f"{task}_confusion.png")
    return images


def write_report(report: Report, out_dir: Path, results: list[RunResult]) -> Path:
    from mpmae_core.runtime.io.files import atomic_write_text

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = plots(report, out_dir)
    atomic_write_text(out_dir / "results.json", json.dumps({
        "summary": report.summary, "comparisons": report.comparisons, "notes": report.notes,
        "runs": [{"representation": r.representation, "setting": r.setting, "seed": r.seed, "task": r.task,
                  **{k: v for k, v in r.scores().items() if k in ("accuracy", "balanced_accuracy", "miou")}}
                 for r in results]}, indent=1, default=float))
    path = out_dir / "report.md"
    atomic_write_text(path, markdown(report, images))
    return path


# ----------------------------------------------------------------------------- a whole run (torch)

_ROOT = Path(__file__).resolve().parents[1]


class EvaluationError(ValueError):
    """Inputs that cannot be evaluated; the message names the problem and the fix."""


# ----------------------------------------------------------------------------- data

def load_image(path) -> tuple[np.ndarray, np.ndarray, object]:
    """Normalised (12, H, W) float32 in MMEarth band order, valid mask, and the prepared input."""
    from mpmae_core.runtime.models.metadata import ModelMetadata, default_normalisation
    from mpmae_core.runtime.inference.raster import prepare_input, read_block

    bands = list(registry.S2_MMEARTH_BANDS)
    meta = ModelMetadata(kind="encoder", input_bands=bands, normalisation=default_normalisation(bands))
    prep = prepare_input(str(path), meta)
    x, valid = read_block(prep, 0, 0, prep.height, prep.width)
    return x, valid, prep


def load_labels(path, prep, class_field: str = "") -> tuple[np.ndarray, list]:
    """(H, W) int labels on the image's grid (0 = unlabelled) and names of classes 1..K."""
    from mpmae_core.runtime.io.labels import labels_on_grid

    return labels_on_grid(path, prep, class_field)


# ----------------------------------------------------------------------------- encoders

def load_encoder(spec: str):
    """(name, encoder) from NAME=CHECKPOINT or CHECKPOINT (ours, or a reference .pth imported on the fly)."""
    from mpmae_core.checkpoints import load_any

    name, _, path = spec.rpartition("=") if "=" in spec else (Path(spec).stem, "", spec)
    model = load_any(path).model
    return name, getattr(model, "encoder", model).eval()


def random_encoder(size: str, seed: int = 0):
    import torch

    from mpmae_core.models import build_encoder

    torch.manual_seed(seed)
    return f"random {size}", build_encoder(size).eval()


def cell_features(encoder, x: np.ndarray, valid: np.ndarray, tile: int = 512) -> np.ndarray:
    """(h, w, D) encoder features per patch cell, computed in tiles of ``tile`` px; NaN where a
    cell has an invalid pixel."""
    import torch

    p = encoder.patch_size
    c, height, width = x.shape
    h, w = height // p, width // p
    tile = max(p, tile - tile % p)
    out = np.full((h, w, encoder.embed_dim), np.nan, np.float32)
    with torch.no_grad():
        for y0 in range(0, h * p, tile):
            for x0 in range(0, w * p, tile):
                y1, x1 = min(y0 + tile, h * p), min(x0 + tile, w * p)
                feats = encoder(torch.from_numpy(np.ascontiguousarray(x[None, :, y0:y1, x0:x1])))[0]
                out[y0 // p:y1 // p, x0 // p:x1 // p] = feats.permute(1, 2, 0).numpy()
    out[~block_all(valid, p)[:h, :w]] = np.nan
    return out


# ----------------------------------------------------------------------------- the run

def run(image, labels, class_field, encoders, out_dir, shots=(1, 5, 10, 20), seeds=20, window=32,
        log=print, pixel_shots=(10, 30), pixel_seeds=10, finetune_steps=0, spatial_block: int = 128) -> Path:
    t0 = time.time()
    x, valid, prep = load_image(image)
    lab, names = load_labels(labels, prep, class_field)
    if not encoders:
        raise EvaluationError("no encoder to evaluate: give --encoder NAME=CHECKPOINT or --random SIZE")
    patch = encoders[0][1].patch_size
    if window % patch:
        raise EvaluationError(f"--window ({window}) must be a multiple of the encoders' patch size ({patch})")
    if any(e.patch_size != patch for _, e in encoders):
        raise EvaluationError("all encoders must have the same patch size (their cells must line up)")
    K = len(names)
    log(f"[evaluate] image {Path(image).name}: {prep.width} x {prep.height} px; labels {Path(labels).name}: "
        f"{K} classes ({', '.join(names)}), {(lab > 0).mean():.1%} of pixels labelled")

    # classification samples: windows mostly one class, without nodata
    wl = window_labels(lab, window)
    take = (wl > 0) & block_all(valid, window)
    y = wl[take] - 1
    log(f"[evaluate] {take.sum()} windows of {window} px mostly one class: " +
        ", ".join(f"{n} {int((y == i).sum())}" for i, n in enumerate(names)))
    cls_features = {SPECTRA: block_mean(x, window)[:, :wl.shape[0], :wl.shape[1]].transpose(1, 2, 0)[take]}
    seg_features = {}
    for name, enc in encoders:
        t = time.time()
        cells = cell_features(enc, x, valid)
        f = block_mean(cells.transpose(2, 0, 1), window // patch).transpose(1, 2, 0)[:wl.shape[0], :wl.shape[1]]
        cls_features[name] = f[take]
        seg_features[name] = cells
        log(f"[evaluate] features of '{name}' ({enc.embed_dim}-dim) in {time.time() - t:.1f} s")
    wr, wc = np.nonzero(take)  # each window's place: the spatial blocks of the split by place
    per = max(1, spatial_block // window)
    blocks = (wr // per) * 1_000_003 + (wc // per)
    log(f"[evaluate] split by place: blocks of {per * window} px ({per * window * 10} m), {len(np.unique(blocks))} "
        "holding windows")
    results = classify(cls_features, y, names, shots, seeds, log=log, blocks=blocks)
    # segmentation: cells mostly (80 %) one class are the labelled "points"
    cl = window_labels(lab, patch, min_share=0.8)
    cl[~block_all(valid, patch)] = 0
    seg_features = {n: np.nan_to_num(f[:cl.shape[0], :cl.shape[1]]) for n, f in seg_features.items()}
    pix = np.where(valid, lab, 0) - 1  # -1: unlabelled; classes 0..K-1
    results += segment_cells(seg_features, cl - 1, pix, patch, x, names, shots, seeds, nodata=-1)
    picks = {}
    if pixel_shots:
        t = time.time()
        pixel_results, picks = run_pixel(image, lab, valid, names, encoders, pixel_shots, pixel_seeds, log,
                                         finetune_steps=finetune_steps)
        results += pixel_results
        log(f"[evaluate] per-pixel mapping in {time.time() - t:.0f} s")
    summary = aggregate(results)
    reps = [SPECTRA] + [n for n, _ in encoders]
    reps += list(dict.fromkeys(r.representation for r in results if r.representation not in reps))
    comparisons = pixel_comparisons(results, summary, [n for n, _ in encoders], picks)
    for task, metric in (("classification", "accuracy"), ("classification_spatial", "accuracy"),
                         ("segmentation", "miou")):
        if "5" not in summary.get(task, {}):
            continue
        pairs = [(name, SPECTRA) for name, _ in encoders]
        names_ = [n for n, _ in encoders]
        if "multi-pretext" in names_ and "S2-only" in names_:
            pairs.append(("multi-pretext", "S2-only"))
        for a, b in pairs:
            d, s, wins = paired_difference(results, task, "5", a, b, metric)
            n = summary[task]["5"][a]["seeds"]
            se = s / np.sqrt(max(n - 1, 1))  # standard error of the mean paired difference
            verdict = ("better" if d > 2 * se else "worse" if d < -2 * se
                       else "no clear difference (within 2 standard errors)")
            comparisons.append(f"{task}, 5-shot {metric}: '{a}' minus '{b}' = {100 * d:+.1f} ± {100 * s:.1f} points "
                               f"(paired over {n} seeds; '{a}' ahead in {wins} of {n}): {verdict}")
    notes = [f"windows of {window} px ({window * 10} m) for classification; cells of {patch} px for segmentation",
             f"classification split by place: blocks of {per * window} px ({per * window * 10} m); each seed holds out "
             "a random half of the blocks and trains on windows of the other half, so no window is tested next to "
             "one trained on. Random splits put neighbouring windows on both sides: the gap between the two shows "
             "how much of a figure is spatial dependence",
             f"seeds: {seeds}; classes with no more than k samples are left out of k-shot runs",
             f"evaluated in {time.time() - t0:.0f} s"]
    if pixel_shots:
        notes.insert(0, PIXEL_PROTOCOL.format(seeds=pixel_seeds))
    report = Report("Linear probing and few-shot evaluation", f"{Path(image).name} with labels {Path(labels).name}",
                    reps, list(shots), seeds, summary, comparisons, notes)
    path = write_report(report, Path(out_dir), results)
    for c in comparisons:
        log(f"[evaluate] {c}")
    return path


PIXEL_PROTOCOL = (
    "per-pixel mapping ('pixel' task): k labelled points per class are drawn from the class's interior pixels "
    "(5 x 5 px all one class), as an analyst clicks them; every labelled pixel farther than 5 px from the "
    "seed's points is in a fixed stratified test sample (up to 3000 per class); {seeds} seeds. 'spectra LR' "
    "and 'spectra RF' are the per-pixel spectral classifiers analysts use today (logistic regression, L2 0.01, "
    "and a 100-tree random forest on the normalised bands); 'ENCODER: chosen head' is what train_head does: it "
    "scores every candidate (spectra / encoder / both x logistic regression at 3 strengths / random forest, and "
    "the ensemble of the best head of the three best families) by cross-validation on the k points only and "
    "fits the chosen one; the fixed 'encoder' and 'both' rows show "
    "where the encoder's features help")


def run_pixel(image, lab, valid, names, encoders, shots, seeds, log=print, finetune_steps: int = 0,
              finetune_seeds: int = 3) -> tuple[list, dict]:
    """The per-pixel protocol for torch encoders: each is exported to ONNX (the sparse border
    convention, as the runtime runs encoders) and its features sampled by the runtime. With
    ``finetune_steps``, each encoder is also fine-tuned on the same points (first
    ``finetune_seeds`` seeds) and scored on the same test pixels ('ENCODER: fine-tuned')."""
    import tempfile

    from mpmae_core.export import export_encoder, sparse_convention
    from mpmae_core.runtime.models.metadata import default_normalisation

    bands = list(registry.S2_MMEARTH_BANDS)
    pool, test = pixel_sample(lab, valid)
    idx = np.concatenate([pool, test])
    rows, cols = np.divmod(idx, lab.shape[1])
    feats = {}
    with tempfile.TemporaryDirectory(prefix="mmearth-eval-") as work:
        for i, (name, enc) in enumerate(encoders):
            path, _ = export_encoder(sparse_convention(enc), Path(work) / f"encoder{i}.onnx", bands,
                                     default_normalisation(bands))
            feats[name] = pixel_features(image, path, rows, cols)
            log(f"[evaluate] per-pixel features of '{name}': {feats[name][0].shape[1]} per pixel")
    results, picks = pixel_mapping(lab, valid, names, feats, shots, seeds, rows_cols=(pool, test), log=log)
    if finetune_steps:
        results += finetuned_runs(image, lab, names, encoders, shots, min(seeds, finetune_seeds), finetune_steps,
                                  (pool, test), log)
    return results, picks


def finetuned_runs(image, lab, names, encoders, shots, seeds, steps, rows_cols, log=print) -> list:
    """Fine-tune each encoder (copy) on the protocol's k points per class and score its
    segmenter on the same test pixels as the frozen heads."""
    import copy

    from mpmae_core.export import sparse_convention
    from mpmae_core.finetune import FinetuneConfig, finetune, predict_pixels
    from mpmae_core.runtime.models.metadata import ModelMetadata, default_normalisation
    from mpmae_core.runtime.inference.raster import prepare_input

    pool_idx, test_idx = rows_cols
    w = lab.shape[1]
    pool_rc = np.stack(np.divmod(pool_idx, w), 1)
    test_rc = np.stack(np.divmod(test_idx, w), 1)
    y_pool, y_test = lab.ravel()[pool_idx] - 1, lab.ravel()[test_idx] - 1
    bands = list(registry.S2_MMEARTH_BANDS)
    prep = prepare_input(str(image), ModelMetadata(kind="encoder", input_bands=bands,
                                                   normalisation=default_normalisation(bands)))
    out = []
    for k in shots:
        for seed in range(seeds):
            train = points_split(y_pool, k, seed)
            used = sorted(set(y_pool[train].tolist()))
            test = far_from(pool_rc[train], test_rc, 5) & np.isin(y_test, used)
            for name, enc in encoders:
                t = time.time()
                seg = finetune(sparse_convention(copy.deepcopy(enc)), prep, pool_rc[train, 0], pool_rc[train, 1],
                               y_pool[train], list(names), FinetuneConfig(steps=steps, seed=seed), None,
                               log=lambda m: None)
                pred = predict_pixels(seg, prep, test_rc[test, 0], test_rc[test, 1])
                out.append(RunResult(f"{name}: fine-tuned", str(k), seed, "pixel",
                                     metrics.confusion_matrix(y_test[test], pred, len(names)), list(names)))
                log(f"[evaluate] fine-tuned '{name}' on {k} points per class, seed {seed + 1}/{seeds}: "
                    f"{(pred == y_test[test]).mean():.1%} in {time.time() - t:.0f} s")
    return out


def pixel_comparisons(results, summary, encoder_names, picks) -> list[str]:
    """Findings of the per-pixel task: each encoder's chosen head against the better spectral
    baseline (paired by seed), where the encoder's features help, and what the head chose."""
    from collections import Counter

    out = []
    for k, by_rep in sorted(summary.get("pixel", {}).items(), key=lambda kv: int(kv[0])):
        base = max(PIXEL_BASELINES, key=lambda b: by_rep[b]["accuracy"][0] if b in by_rep else -1)
        for enc in encoder_names:
            for rep in (f"{enc}: {CHOSEN}", f"{enc}: both RF", f"{enc}: both LR", f"{enc}: fine-tuned"):
                if rep not in by_rep:
                    continue
                d, s, wins = paired_difference(results, "pixel", k, rep, base, "accuracy")
                n = by_rep[rep]["seeds"]
                se = s / np.sqrt(max(n - 1, 1))
                verdict = ("better" if d > 2 * se else "worse" if d < -2 * se
                           else "no clear difference (within 2 standard errors)")
                out.append(f"pixel, {k} points per class, accuracy: '{rep}' minus '{base}' (the better spectral "
                           f"baseline) = {100 * d:+.1f} ± {100 * s:.1f} points (paired over {n} seeds; ahead in "
                           f"{wins} of {n}): {verdict}")
            if enc in picks and k in picks[enc]:
                chosen = ", ".join(f"{name} {c}x" for name, c in Counter(picks[enc][k]).most_common())
                out.append(f"pixel, {k} points per class: the chosen head of '{enc}' was {chosen}")
    return out


def default_encoders() -> list:
    found = sorted((_ROOT / "runs" / "demo" / "pretrain").glob("checkpoint-*.pt"))
    specs = [f"demo-pretrained={found[-1]}"] if found else []
    return specs


def run_command(image, labels, class_field, encoder_specs, random_sizes, shots, seeds, window, out_dir,
                pixel_shots=(10, 30), pixel_seeds=10, finetune_steps=0, spatial_block: int = 128) -> Path:
    """What ``python -m training.evaluate`` does: defaults, encoders, checks, then :func:`run`."""
    from mpmae_core.runtime.io.files import check_output

    check_output(Path(out_dir) / "report.md", [p for p in (image, labels) if p], "report")
    if image is None or labels is None:
        from mpmae_core.data import sample

        paths = sample.build(verbose=False)
        image = image or str(paths["stack"])
        labels = labels or str(paths["labels"])
    specs = encoder_specs or ([] if random_sizes else default_encoders())
    randoms = random_sizes or ([] if encoder_specs else ["atto"])
    encoders = [load_encoder(s) for s in specs] + [random_encoder(s) for s in randoms]
    return run(image, labels, class_field, encoders, out_dir, list(shots), seeds, window, pixel_shots=list(pixel_shots),
               pixel_seeds=pixel_seeds, finetune_steps=finetune_steps, spatial_block=spatial_block)


# ----------------------------------------------------------------------------- per-pixel mapping

#: The per-pixel spectral baselines an analyst runs today (SCP, dzetsaka): the same classifiers on
#: the pixel's normalised bands only, at fixed default settings.
PIXEL_BASELINES = {"spectra LR": ("spectra", "logistic", 1e-2), "spectra RF": ("spectra", "forest", 0.0)}
#: Fixed candidates reported beside the chosen head, to show where the encoder helps.
PIXEL_FIXED = {"encoder LR": ("encoder", "logistic", 1e-2), "encoder RF": ("encoder", "forest", 0.0),
               "both LR": ("both", "logistic", 1e-2), "both RF": ("both", "forest", 0.0)}
CHOSEN = "chosen head"


def interior_pixels(lab: np.ndarray, valid: np.ndarray, radius: int = 2) -> np.ndarray:
    """(H, W) bool: labelled, valid pixels whose (2r+1)^2 neighbourhood is all the same class and
    valid, where an analyst would click a point for that class."""
    h, w = lab.shape
    ok = (lab > 0) & valid
    pad_lab = np.pad(lab, radius, constant_values=-1)
    pad_ok = np.pad(ok, radius, constant_values=False)
    out = ok.copy()
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            sl = (slice(radius + dy, radius + dy + h), slice(radius + dx, radius + dx + w))
            out &= (pad_lab[sl] == lab) & pad_ok[sl]
    return out


def sample_per_class(mask: np.ndarray, lab: np.ndarray, cap: int, seed: int) -> np.ndarray:
    """Flat indices of at most ``cap`` random pixels of each class under ``mask`` (seeded, sorted)."""
    rng = np.random.default_rng(seed)
    out = []
    for c in np.unique(lab[mask]):
        idx = np.flatnonzero(mask.ravel() & (lab.ravel() == c))
        out.append(idx if len(idx) <= cap else rng.choice(idx, cap, replace=False))
    return np.sort(np.concatenate(out)) if out else np.empty(0, np.int64)


def points_split(pool_y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k random pool entries per class (the classes with at least k + 1 entries), sorted."""
    rng = np.random.default_rng(seed)
    picks = [rng.choice(np.flatnonzero(pool_y == c), k, replace=False) for c in np.unique(pool_y)
             if (pool_y == c).sum() > k]
    return np.sort(np.concatenate(picks)) if picks else np.empty(0, np.int64)


def far_from(points_rc: np.ndarray, rc: np.ndarray, radius: int) -> np.ndarray:
    """Bool per row of ``rc``: farther than ``radius`` px (Chebyshev) from every point (no test pixel
    shares a training point's neighbourhood)."""
    keep = np.ones(len(rc), bool)
    for r, c in points_rc:
        keep &= (np.abs(rc[:, 0] - r) > radius) | (np.abs(rc[:, 1] - c) > radius)
    return keep


def pixel_fit_predict(x_train, y_train, x_test, blocks, spec, class_names, seed):
    """Fit a fixed candidate (feature set, classifier, l2) and predict the test pixels."""
    from mpmae_core.runtime.inference.pixel_features import feature_set_columns
    from mpmae_core.runtime.heads.pixelhead import Candidate, PixelHead

    cand = Candidate(*spec)
    sub, cols = feature_set_columns(blocks, cand.feature_set)
    head = PixelHead.fit(x_train[:, cols], y_train, sub, cand, class_names, seed=seed)
    return head.predict(x_test[:, cols])


def pixel_chosen_predict(x_train, y_train, x_test, blocks, class_names, seed):
    """What train_head does: score every candidate on the training points (each point its own
    group), fit the chosen one, predict the test pixels. Returns (predictions, chosen name)."""
    from mpmae_core.runtime.inference.pixel_features import feature_set_columns
    from mpmae_core.runtime.heads.pixelhead import PixelHead, candidates, choose, score_candidates

    groups = np.arange(len(y_train))
    scores = score_candidates(x_train, y_train, groups, blocks, class_names, candidates(), seed=seed)
    pick, _ = choose(scores, blocks)
    cand = scores[pick]["candidate"]
    sub, cols = feature_set_columns(blocks, cand.feature_set)
    head = PixelHead.fit(x_train[:, cols], y_train, sub, cand, class_names, seed=seed)
    return head.predict(x_test[:, cols]), cand.name


def pixel_features(image, model_path, rows, cols, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP):
    """(n, F) per-pixel features of every block of an ONNX encoder at the pixels, and the blocks."""
    from mpmae_core.runtime.models.model import OnnxModel
    from mpmae_core.runtime.inference.pixel_features import encoder_blocks, sample_features
    from mpmae_core.runtime.inference.raster import prepare_input

    model = OnnxModel(model_path, device="cpu")
    prep = prepare_input(str(image), model.metadata)
    blocks = encoder_blocks(model.metadata)
    return sample_features(prep, model, blocks, rows, cols, tile, overlap), blocks


def pixel_mapping(lab: np.ndarray, valid: np.ndarray, names: Sequence[str], encoder_features: dict,
                  shots: Sequence[int] = (10, 30), seeds: int = 10, test_per_class: int = 3000,
                  pool_per_class: int = 2000, exclusion_px: int = 5, log=lambda m: None,
                  rows_cols: Optional[tuple] = None) -> tuple[list, dict]:
    """The per-pixel few-shot protocol: k labelled points per class (interior pixels of the class,
    as an analyst clicks them) train; a fixed stratified sample of every labelled pixel farther
    than ``exclusion_px`` from the seed's points is scored.

    ``encoder_features``: encoder name -> (features (n, F) at ``rows_cols`` pixels, blocks), where
    ``rows_cols`` = :func:`pixel_sample` (pool then test). Spectra baselines use the first
    encoder's spectra block (the same normalised bands for every encoder). Returns the runs and
    which candidate the chosen head picked, per encoder, k and seed."""
    pool_idx, test_idx = rows_cols
    w = lab.shape[1]
    n_pool = len(pool_idx)
    pool_rc = np.stack(np.divmod(pool_idx, w), 1)
    test_rc = np.stack(np.divmod(test_idx, w), 1)
    y_pool = lab.ravel()[pool_idx] - 1
    y_test = lab.ravel()[test_idx] - 1
    K = len(names)
    results, picks = [], {}
    first = next(iter(encoder_features))
    for k in shots:
        for seed in range(seeds):
            train = points_split(y_pool, k, seed)
            used = sorted(set(y_pool[train].tolist()))
            if len(used) < 2:
                break
            test = far_from(pool_rc[train], test_rc, exclusion_px) & np.isin(y_test, used)
            truth = y_test[test]
            for enc, (feats, blocks) in encoder_features.items():
                xtr, xte = feats[:n_pool][train], feats[n_pool:][test]
                reps = dict(PIXEL_FIXED)
                if enc == first:
                    reps = {**PIXEL_BASELINES, **reps}
                for rep, spec in reps.items():
                    label = rep if rep in PIXEL_BASELINES else f"{enc}: {rep}"
                    pred = pixel_fit_predict(xtr, y_pool[train], xte, blocks, spec, list(names), seed)
                    results.append(RunResult(label, str(k), seed, "pixel", metrics.confusion_matrix(truth, pred, K),
                                             list(names)))
                pred, picked = pixel_chosen_predict(xtr, y_pool[train], xte, blocks, list(names), seed)
                results.append(RunResult(f"{enc}: {CHOSEN}", str(k), seed, "pixel",
                                         metrics.confusion_matrix(truth, pred, K), list(names)))
                picks.setdefault(enc, {}).setdefault(str(k), []).append(picked)
            log(f"[evaluate] per-pixel {k} points per class, seed {seed + 1}/{seeds} done")
    return results, picks


def pixel_sample(lab: np.ndarray, valid: np.ndarray, test_per_class: int = 3000, pool_per_class: int = 2000,
                 seed: int = 12345) -> tuple[np.ndarray, np.ndarray]:
    """Flat pixel indices: the pool points are drawn from (interior pixels) and the test sample
    (every labelled valid pixel), both stratified by class and fixed for the whole run."""
    pool = sample_per_class(interior_pixels(lab, valid), lab, pool_per_class, seed)
    test = sample_per_class((lab > 0) & valid, lab, test_per_class, seed + 1)
    return pool, test
