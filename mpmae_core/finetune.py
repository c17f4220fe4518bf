"""Fine-tune an encoder with a per-pixel head on a few labels, as in the paper's segmentation
fine-tuning, and export an ONNX segmenter that ``mmearth:segment`` runs without torch.

The head sees the same thing as the frozen per-pixel heads (``runtime.pixel``): the pixel's
normalised bands and every encoder stage upsampled to it. It is a small MLP on that
hypercolumn, computed without ever building it: each block goes through its own 1x1 projection
(stages after a LayerNorm over their channels; the bands without one, so brightness stays in) at
its native resolution and the projections are upsampled and summed, which equals one 1x1 layer on
the joined, upsampled features because both steps are linear. Then GELU and a 1x1 layer to the
classes.

Training: random crops around labelled pixels (a class drawn uniformly, then one of its pixels, so
rare classes are seen), random flips and right-angle rotations, cross-entropy on labelled pixels
only with class-balanced weights and label smoothing, AdamW (a 10x lower learning rate for the
pretrained encoder than for the new head), linear warmup and cosine decay, drop path 0.1 in the
encoder, bf16 autocast on CUDA. The run folder holds one checkpoint, written atomically every
``save_every`` steps and at the end; running the same command again resumes from it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mpmae_core import registry
from mpmae_core.models.convnextv2 import ConvNeXtV2Encoder, LayerNorm2d

STATE_NAME = "finetune-state.pt"
FORMAT = "mpmae-finetune"


class PixelSegmenter(nn.Module):
    """Image (N, C, H, W) normalised -> per-pixel class logits (N, K, H, W)."""

    def __init__(self, encoder: ConvNeXtV2Encoder, n_classes: int, hidden: int = 64):
        super().__init__()
        self.encoder, self.n_classes, self.hidden = encoder, n_classes, hidden
        self.spectra = nn.Conv2d(encoder.in_chans, hidden, 1)
        self.norms = nn.ModuleList(LayerNorm2d(d, eps=1e-6) for d in encoder.dims)
        self.lateral = nn.ModuleList(nn.Conv2d(d, hidden, 1, bias=False) for d in encoder.dims)
        self.classifier = nn.Conv2d(hidden, n_classes, 1)

    def forward(self, image: Tensor) -> Tensor:
        size = image.shape[-2:]
        z = self.spectra(image)
        for m, norm, lat in zip(self.encoder.forward_stages(image), self.norms, self.lateral):
            z = z + F.interpolate(lat(norm(m)), size=size, mode="bilinear", align_corners=False)
        return self.classifier(F.gelu(z))

    def config(self) -> dict:
        return {"encoder": self.encoder.config(), "n_classes": self.n_classes, "hidden": self.hidden}


@dataclass
class FinetuneConfig:
    steps: int = 300
    batch_size: int = 8
    crop: int = 128  # pixels, a multiple of the patch size
    lr: float = 1e-3  # the head's; the encoder gets lr * encoder_lr_factor
    encoder_lr_factor: float = 0.1
    weight_decay: float = 0.05
    warmup_fraction: float = 0.1
    label_smoothing: float = 0.1
    drop_path: float = 0.1
    hidden: int = 64
    amp: bool = True  # bf16 autocast on CUDA
    device: str = "auto"
    seed: int = 0
    save_every: int = 100
    freeze_encoder: bool = False  # train the head only (the frozen-feature control)

    def to_dict(self) -> dict:
        return asdict(self)


def class_weights(counts: np.ndarray) -> np.ndarray:
    """Weights making every present class weigh the same in the loss (mean 1 over samples)."""
    counts = np.asarray(counts, np.float64)
    present = counts > 0
    w = np.zeros_like(counts)
    w[present] = counts[present].sum() / (present.sum() * counts[present])
    return w


def draw_crops(rng: np.random.Generator, rows: np.ndarray, cols: np.ndarray, y: np.ndarray, n: int, crop: int,
               height: int, width: int) -> list[tuple[int, int]]:
    """Top-left corners of ``n`` crops, each holding a labelled pixel of a uniformly drawn class at
    a random place inside it (crops may reach beyond the raster: the reader mirrors)."""
    classes = np.unique(y)
    out = []
    for _ in range(n):
        c = rng.choice(classes)
        i = rng.choice(np.flatnonzero(y == c))
        oy, ox = rng.integers(0, crop), rng.integers(0, crop)
        out.append((int(rows[i]) - int(oy), int(cols[i]) - int(ox)))
    return out


def augment(x: np.ndarray, lab: np.ndarray, k: int, flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """A right-angle rotation (k quarter turns) and an optional left-right flip, of image and labels alike."""
    x, lab = np.rot90(x, k, axes=(1, 2)), np.rot90(lab, k)
    if flip:
        x, lab = x[:, :, ::-1], lab[:, ::-1]
    return np.ascontiguousarray(x), np.ascontiguousarray(lab)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def finetune(encoder: ConvNeXtV2Encoder, prep, rows: np.ndarray, cols: np.ndarray, y: np.ndarray, class_names,
             cfg: FinetuneConfig, out_dir: Optional[Path] = None, log: Callable[[str], None] = print,
             progress: Callable[[float], None] = lambda f: None) -> PixelSegmenter:
    """Train a PixelSegmenter on labelled pixels (rows, cols, class) of a prepared raster; resumes
    from ``out_dir``'s checkpoint when it holds one for the same model and labels."""
    from mpmae_core.checkpoints import safe_load
    from mpmae_core.engine import lr_at, param_groups
    from mpmae_core.runtime.io.files import atomic_output
    from mpmae_core.runtime.inference.raster import read_block

    p = encoder.patch_size
    if cfg.crop % p:
        raise ValueError(f"the crop ({cfg.crop} px) must be a multiple of the encoder's patch size {p}")
    device = _device(cfg.device)
    torch.manual_seed(cfg.seed)
    # drop path for fine-tuning (the paper's 0.1), rising linearly over depth
    rates = np.linspace(0, cfg.drop_path, sum(encoder.depths)).tolist()
    for block, rate in zip((b for stage in encoder.stages for b in stage), rates):
        block.drop_path.p = rate
    model = PixelSegmenter(encoder, len(class_names), cfg.hidden).to(device)
    if cfg.freeze_encoder:
        for prm in model.encoder.parameters():
            prm.requires_grad_(False)
    head_params = [prm for n, prm in model.named_parameters() if not n.startswith("encoder.")]
    groups = []
    for g in param_groups(model.encoder, cfg.weight_decay):
        g["lr_scale"] = cfg.encoder_lr_factor
        groups.append(g)
    groups.append({"params": head_params, "weight_decay": cfg.weight_decay, "lr_scale": 1.0})
    groups = [g for g in groups if g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999))
    counts = np.bincount(y, minlength=len(class_names))
    loss_w = torch.tensor(class_weights(counts), dtype=torch.float32, device=device)
    # the labels as a sparse raster over their bounding box (-1 = unlabelled): crops slice it
    r0, c0 = int(rows.min()), int(cols.min())
    sparse = np.full((int(rows.max()) - r0 + 1, int(cols.max()) - c0 + 1), -1, np.int64)
    sparse[rows - r0, cols - c0] = y
    rng = np.random.default_rng(cfg.seed)
    step = 0
    labels_id = _labels_fingerprint(rows, cols, y, class_names)
    state_path = Path(out_dir) / STATE_NAME if out_dir else None
    if state_path is not None and state_path.is_file():
        obj = safe_load(state_path, [])
        if obj.get("format") != FORMAT or obj.get("model_config") != model.config() or obj.get("labels") != labels_id:
            raise ValueError(f"'{out_dir}' holds a fine-tuning run of another model or other labels; give another "
                             "--out to start a new run, or repeat that run's command to continue it")
        model.load_state_dict(obj["model"])
        optimizer.load_state_dict(obj["optimizer"])
        step = int(obj["step"])
        rng.bit_generator.state = obj["numpy_rng"]
        torch.set_rng_state(obj["torch_rng"])
        log(f"[finetune] resuming {state_path} at step {step} of {cfg.steps}")

    def save():
        if state_path is None:
            return
        state_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(state_path) as tmp:
            torch.save({"format": FORMAT, "model_config": model.config(), "labels": labels_id,
                        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                        "numpy_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                        "config": cfg.to_dict(), "class_names": list(class_names)}, tmp)

    use_amp = cfg.amp and device.type == "cuda"
    warmup = int(cfg.warmup_fraction * cfg.steps)
    t0, seen = time.time(), 0
    model.train()
    while step < cfg.steps:
        lr = lr_at(step, cfg.steps, warmup, cfg.lr)
        for g in optimizer.param_groups:
            g["lr"] = lr * g["lr_scale"]
        xs, ls = [], []
        for y0, x0 in draw_crops(rng, rows, cols, y, cfg.batch_size, cfg.crop, prep.height, prep.width):
            x, valid = read_block(prep, y0, x0, cfg.crop, cfg.crop)
            lab = np.full((cfg.crop, cfg.crop), -1, np.int64)
            ya, yb = max(y0, r0), min(y0 + cfg.crop, r0 + sparse.shape[0])
            xa, xb = max(x0, c0), min(x0 + cfg.crop, c0 + sparse.shape[1])
            if yb > ya and xb > xa:
                lab[ya - y0:yb - y0, xa - x0:xb - x0] = sparse[ya - r0:yb - r0, xa - c0:xb - c0]
            lab[~valid] = -1
            x, lab = augment(x, lab, int(rng.integers(0, 4)), bool(rng.integers(0, 2)))
            xs.append(x)
            ls.append(lab)
        xb = torch.from_numpy(np.stack(xs)).to(device)
        lb = torch.from_numpy(np.stack(ls)).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            logits = model(xb)
        loss = F.cross_entropy(logits.float(), lb, weight=loss_w, ignore_index=-1,
                               label_smoothing=cfg.label_smoothing)
        if not torch.isfinite(loss):
            raise RuntimeError(f"the fine-tuning loss became {loss.item()} at step {step}; lower --lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        seen += cfg.batch_size
        progress(step / cfg.steps)
        if step % max(1, cfg.steps // 10) == 0 or step == cfg.steps:
            log(f"[finetune] step {step}/{cfg.steps} loss {loss.item():.4f} lr {lr:.2e} "
                f"({seen / (time.time() - t0):.1f} crops/s on {device.type})")
        if step % cfg.save_every == 0 or step == cfg.steps:
            save()
    model.eval()
    return model


def _labels_fingerprint(rows, cols, y, names) -> str:
    import hashlib

    h = hashlib.sha256()
    for a in (rows, cols, y):
        h.update(np.ascontiguousarray(a, np.int64).tobytes())
    h.update(json.dumps(list(names)).encode())
    return h.hexdigest()


def predict_pixels(model: PixelSegmenter, prep, rows: np.ndarray, cols: np.ndarray, tile: int = 512,
                   overlap: int = 128) -> np.ndarray:
    """Class index at pixels (rows, cols), each from its owner tile (as the frozen heads sample)."""
    from mpmae_core.runtime.inference.raster import read_block
    from mpmae_core.runtime.inference.tiling import axis_owner, raster_windows

    device = next(model.parameters()).device
    windows = raster_windows(prep.height, prep.width, tile, overlap, model.encoder.patch_size)
    th, tw = windows[0][0].h, windows[0][0].w
    ty = axis_owner(rows, [r[0].y for r in windows], th)
    tx = axis_owner(cols, [w.x for w in windows[0]], tw)
    out = np.zeros(len(rows), np.int64)
    with torch.no_grad():
        for a, b in sorted(set(zip(ty.tolist(), tx.tolist()))):
            win = windows[a][b]
            sel = np.flatnonzero((ty == a) & (tx == b))
            x, _ = read_block(prep, win.y, win.x, th, tw)
            logits = model(torch.from_numpy(x[None]).to(device))[0].float().cpu().numpy()
            out[sel] = logits[:, rows[sel] - win.y, cols[sel] - win.x].argmax(0)
    return out


def export_segmenter(model: PixelSegmenter, path, class_names, class_colours, input_bands: Sequence[str],
                     normalisation: dict, source: str = "") -> tuple[Path, float]:
    """ONNX segmenter (image -> per-pixel logits) with its metadata; checked against torch."""
    import copy

    from mpmae_core.export import _export
    from mpmae_core.runtime.models.metadata import segmenter_metadata

    model = copy.deepcopy(model).cpu().float().eval()
    enc = model.encoder
    colours = class_colours or registry.suggest_class_colours(class_names)
    meta = segmenter_metadata(enc.depths, enc.dims, enc.patch_size, input_bands, normalisation, "fine-tuned",
                              class_names, colours, source=source)
    p = enc.patch_size
    example = torch.randn(2, enc.in_chans, 2 * p, 3 * p)
    diff = _export(model, example, Path(path), "image", "logits", meta, multiple=p)
    return Path(path), diff


# ----------------------------------------------------------------------------- the command

@dataclass
class FinetuneResult:
    onnx: str
    steps: int
    seconds: float
    classes: list
    train_pixels: dict
    validation: dict = field(default_factory=dict)


def run_command(image, labels, class_field, checkpoint, out_dir, cfg: FinetuneConfig, buffer_m: float = 0.0,
                max_pixels_per_class: int = 2000, val_fraction: float = 0.0, log=print) -> FinetuneResult:
    """What ``python -m training.finetune`` does: labels -> pixels, fine-tune (or resume), export."""
    from mpmae_core.checkpoints import load_any
    from mpmae_core.runtime.heads import metrics
    from mpmae_core.runtime.heads.linear import check_labels, grouped_folds
    from mpmae_core.runtime.io.files import atomic_write_text, check_output
    from mpmae_core.runtime.io.labels import cap_per_class_grouped
    from mpmae_core.runtime.models.metadata import default_normalisation
    from mpmae_core.runtime.inference.raster import prepare_input

    out_dir = Path(out_dir)
    onnx_path = out_dir / "segmenter.onnx"
    check_output(onnx_path, [p for p in (image, labels, checkpoint) if p], "segmenter", (".onnx",), "an ONNX model")
    loaded = load_any(checkpoint, convention="sparse")
    model = loaded.model
    encoder = getattr(model, "encoder", model)
    bands = list(getattr(model, "input_bands", None) or registry.default_input_bands(encoder.in_chans) or ())
    norm = loaded.normalisation or default_normalisation(bands)
    from mpmae_core.runtime.models.metadata import ModelMetadata

    meta = ModelMetadata(kind="encoder", input_bands=bands, normalisation=norm, patch_size=encoder.patch_size)
    prep = prepare_input(str(image), meta, log=lambda m: log(f"[finetune] {m}"))
    rows, cols, y, groups, names = pixel_labels(labels, class_field, prep, buffer_m,
                                                log=lambda m: log(f"[finetune] {m}"))
    check_labels(y, groups, names, min_groups=1, what="a fine-tuned segmenter")
    keep = cap_per_class_grouped(y, groups, max_pixels_per_class, cfg.seed)
    rows, cols, y, groups = rows[keep], cols[keep], y[keep], groups[keep]
    validation = {}
    train = np.arange(len(y))
    if val_fraction > 0:
        k = max(2, int(round(1 / val_fraction)))
        test = grouped_folds(y, groups, k, cfg.seed)[0]
        train = np.setdiff1d(train, test)
    samples = {n: int((y[train] == i).sum()) for i, n in enumerate(names)}
    log(f"[finetune] {len(train)} labelled pixels in {len(names)} classes ({', '.join(f'{n} {c}' for n, c in samples.items())}); "
        f"{encoder.dims[-1]}-dim {type(encoder).__name__} patch {encoder.patch_size}; {cfg.steps} steps")
    t0 = time.time()
    seg = finetune(encoder, prep, rows[train], cols[train], y[train], names, cfg, out_dir, log=log)
    if val_fraction > 0:
        pred = predict_pixels(seg, prep, rows[test], cols[test])
        s = metrics.summary(metrics.confusion_matrix(y[test], pred, len(names)), names)
        validation = {"accuracy": s["accuracy"], "balanced_accuracy": s["balanced_accuracy"], "miou": s["miou"],
                      "pixels": int(len(test))}
        log(f"[finetune] held-out labelled features: accuracy {s['accuracy']:.1%}, balanced {s['balanced_accuracy']:.1%}, "
            f"mIoU {s['miou']:.2f}")
    _, diff = export_segmenter(seg, onnx_path, names, None, bands, norm, source=f"fine-tuned from {loaded.description}")
    log(f"[finetune] wrote {onnx_path} (max |onnx - torch| = {diff:.2e})")
    result = FinetuneResult(str(onnx_path), cfg.steps, time.time() - t0, list(names), samples, validation)
    atomic_write_text(out_dir / "finetune.json", json.dumps({**asdict(result), "config": cfg.to_dict()}, indent=1))
    return result


def pixel_labels(labels, class_field: str, prep, buffer_m: float = 0.0, log=lambda m: None):
    """(rows, cols, class, group, class names) of labelled pixels from a vector file (points or
    polygons, with ``class_field``) or a label raster on the image's grid (0 = unlabelled)."""
    from osgeo import gdal

    from mpmae_core.runtime.io.labels import label_cells, read_label_file

    ds = gdal.OpenEx(str(labels))
    if ds is None:
        raise ValueError(f"'{labels}' is neither a raster nor a vector file GDAL can read")
    if ds.RasterCount:
        from mpmae_core.runtime.io.labels import labels_on_grid

        lab, names = labels_on_grid(labels, prep, class_field)
        r, c = np.nonzero(lab > 0)
        groups = (r // 32) * (prep.width // 32 + 1) + c // 32  # 320 m blocks stand in for labelled features
        return r, c, lab[r, c] - 1, groups, names
    if not class_field:
        raise ValueError(f"'{labels}' is a vector file: give --class-field, the field holding the classes")
    feats, names, _, _ = read_label_file(labels, class_field, prep.projection)
    cells = label_cells(feats, prep.geotransform, prep.width, prep.height, point_buffer=buffer_m)
    if cells.conflicts:
        log(cells.conflict_warning(names))
    if cells.rows.size == 0:
        raise ValueError("none of the labelled features lies inside the image")
    return cells.rows, cells.cols, cells.classes, cells.groups, names


def default_inputs(image, labels, encoder) -> tuple:
    """The sample scene, its OSM label raster and the demo's latest checkpoint where not given."""
    from mpmae_core.engine import latest_checkpoint

    if image is None or labels is None:
        from mpmae_core.data import sample

        paths = sample.build(verbose=False)
        image = image or str(paths["stack"])
        labels = labels or str(paths["labels"])
    if encoder is None:
        found = latest_checkpoint(Path(__file__).resolve().parents[1] / "runs" / "demo" / "pretrain")
        if found is None:
            raise ValueError("no encoder given and no demo checkpoint in runs/demo/pretrain: give --encoder CKPT "
                             "(ours, or a reference MMEarth .pth), or run `bash scripts/demo` first")
        encoder = str(found)
    return image, labels, encoder
