"""Pretrain an MP-MAE.

    python -m training.pretrain                      # the embedded real sample, about 3 min on 2 CPU cores
    python -m training.pretrain --preset paper --data /data/mmearth/data_1M_v001_npy
    python -m training.pretrain --config my_run.toml --epochs 50
    torchrun --nproc_per_node 8 -m training.pretrain --preset paper --data ...   # DDP

Settings come from, in increasing priority: the preset, the config file (TOML or JSON with the
option names below, underscores), the command line. Effective batch = batch x accumulation x
processes; with --blr, lr = blr x effective batch / 256. Re-running the same command resumes from
the last checkpoint in the output folder (--no-resume starts over in a new folder).
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path

PRESETS = {
    # A real but small run: the embedded Sentinel-2 scene, its real modalities only.
    "demo": dict(tasks="sentinel2,lat,lon,month", size="atto", patch_size=16, img_size=112, epochs=30,
                 warmup_epochs=2, batch_size=8, accum_steps=1, lr=1e-3, workers=0, log_every=5,
                 preview_every=10, output_dir="runs/pretrain"),
    # The paper's recipe (reference notes section 6): effective batch 4096, 200 epochs, 40 warmup.
    "paper": dict(tasks="all_mod", size="atto", patch_size=16, img_size=112, epochs=200, warmup_epochs=40,
                  batch_size=256, accum_steps=16, blr=1.5e-4, lr=None, weight_decay=0.05, mask_ratio=0.6,
                  norm_pix_loss=True, loss_weighting="uncertainty", workers=12, log_every=50,
                  preview_every=10, output_dir="runs/pretrain_paper"),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.pretrain", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="demo")
    p.add_argument("--config", help="TOML or JSON file of settings")
    g = p.add_argument_group("data")
    g.add_argument("--data", help="MMEarth data_<name>.h5 or converted folder (demo: the embedded sample)")
    g.add_argument("--img-size", type=int, help="crop side in pixels")
    g.add_argument("--workers", type=int)
    g = p.add_argument_group("model")
    g.add_argument("--size", choices=["atto", "femto", "pico", "nano", "tiny", "base"])
    g.add_argument("--patch-size", type=int, choices=[8, 16])
    g.add_argument("--tasks", help="target set (S2, all_mod, pix_mod, img_mod, rgb) or comma-separated tasks")
    g.add_argument("--share-decoder", action="store_true", default=None, help="one decoder for all tasks (reference)")
    g.add_argument("--loss-weighting", choices=["equal", "uncertainty"])
    g.add_argument("--mask-ratio", type=float)
    g.add_argument("--no-norm-pix-loss", dest="norm_pix_loss", action="store_false", default=None)
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int)
    g.add_argument("--warmup-epochs", type=float)
    g.add_argument("--batch-size", type=int, help="per process and accumulation step")
    g.add_argument("--accum-steps", type=int)
    g.add_argument("--blr", type=float, help="base lr: lr = blr x effective batch / 256")
    g.add_argument("--lr", type=float, help="absolute lr (overrides --blr)")
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--seed", type=int)
    g.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (smoke runs)")
    g.add_argument("--compile", action="store_true", default=None, help="torch.compile (CUDA)")
    g.add_argument("--no-amp", dest="amp", action="store_false", default=None, help="fp32 on CUDA too")
    g.add_argument("--device", help="auto, cpu, cuda")
    g = p.add_argument_group("output")
    g.add_argument("--output-dir")
    g.add_argument("--log-every", type=int)
    g.add_argument("--checkpoint-every", type=int, help="optimizer steps (0: each epoch)")
    g.add_argument("--keep-last", type=int)
    g.add_argument("--preview-every", type=int, help="epochs (0: never)")
    g.add_argument("--no-resume", dest="resume", action="store_false", default=None)
    return p


def resolve_config(args: argparse.Namespace):
    from mpmae_core.engine import TrainConfig

    values = dict(PRESETS[args.preset])
    if args.config:
        path = Path(args.config)
        text = path.read_text()
        values.update(tomllib.loads(text) if path.suffix == ".toml" else json.loads(text))
    cli = {k: v for k, v in vars(args).items() if k not in ("preset", "config") and v is not None}
    values.update(cli)
    if not values.get("data"):
        if args.preset != "demo":
            raise ValueError("--data is required outside the demo preset (an MMEarth .h5 or converted folder)")
        from mpmae_core.data import sample

        values["data"] = str(sample.build(verbose=True)["mmearth_fast"])
    return TrainConfig.from_dict(values)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = resolve_config(args)
    except (ValueError, OSError, tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from mpmae_core.data.mmearth import DataError
    from mpmae_core.engine import NonFiniteLossError
    from mpmae_core.pretrain import pretrain

    try:
        pretrain(cfg)
        return 0
    except (DataError, NonFiniteLossError, ValueError) as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
