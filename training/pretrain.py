"""Pretrain an MP-MAE.

    python -m training.pretrain                      # the embedded real sample, about 3 min on 2 CPU cores
    python -m training.pretrain --preset paper --data /data/mmearth/data_1M_v001_npy
    python -m training.pretrain --config my_run.toml --epochs 50
    torchrun --nproc_per_node 8 -m training.pretrain --preset paper --data ...   # DDP

Settings come from, in increasing priority: the preset, the config file (TOML or JSON with the
option names below, underscores), the command line. Effective batch = batch x accumulation x
processes; with --blr, lr = blr x effective batch / 256. Re-running the same command resumes from
the last checkpoint in the output folder; a new run needs a new --output-dir (--no-resume refuses a
folder that already holds a run rather than overwrite it).
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path
from mpmae_core.runtime.cli import program as program_name

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
    from mpmae_core.runtime import cli

    p = argparse.ArgumentParser(prog=program_name("python -m training.pretrain"), description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", type=cli.choice_of(sorted(PRESETS), "preset"), default="demo")
    p.add_argument("--config", help="TOML or JSON file of settings")
    for group, options in _options().items():
        g = p.add_argument_group(group)
        for flag, kind, help_text in options:
            g.add_argument(flag, type=kind, help=help_text)
    p.add_argument("--share-decoder", action="store_true", default=None, help="one decoder for all tasks (reference)")
    p.add_argument("--no-norm-pix-loss", dest="norm_pix_loss", action="store_false", default=None)
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile (CUDA)")
    p.add_argument("--no-amp", dest="amp", action="store_false", default=None, help="fp32 on CUDA too")
    p.add_argument("--no-resume", dest="resume", action="store_false", default=None)
    return p


def _options():
    from mpmae_core import registry
    from mpmae_core.runtime import cli

    return {
        "data": [("--data", str, "MMEarth data_<name>.h5 or converted folder (demo: the embedded sample)"),
                 ("--img-size", cli.positive_int, "crop side in pixels"),
                 ("--workers", cli.non_negative_int, "data loading processes")],
        "model": [("--size", cli.choice_of(tuple(registry.ENCODER_SIZES), "encoder size"),
                   "encoder size: " + ", ".join(registry.ENCODER_SIZES)),
                  ("--patch-size", _patch_size, "patch size: " + ", ".join(map(str, registry.PATCH_SIZES))),
                  ("--tasks", str, "target set (S2, all_mod, pix_mod, img_mod, rgb) or comma-separated tasks"),
                  ("--loss-weighting", cli.choice_of(("equal", "uncertainty"), "loss weighting"), "equal or uncertainty"),
                  ("--mask-ratio", cli.fraction, "share of patches hidden, in [0, 1)")],
        "optimisation": [("--epochs", cli.positive_int, None), ("--warmup-epochs", cli.non_negative_float, None),
                         ("--batch-size", cli.positive_int, "per process and accumulation step"),
                         ("--accum-steps", cli.positive_int, None),
                         ("--blr", cli.positive_float, "base lr: lr = blr x effective batch / 256"),
                         ("--lr", cli.positive_float, "absolute lr (overrides --blr)"),
                         ("--weight-decay", cli.non_negative_float, None), ("--seed", cli.non_negative_int, None),
                         ("--max-steps", cli.positive_int, "stop after this many optimizer steps (smoke runs)"),
                         ("--device", cli.choice_of(("auto", "cpu", "cuda"), "device"), "auto, cpu, cuda")],
        "output": [("--output-dir", str, None), ("--log-every", cli.positive_int, None),
                   ("--checkpoint-every", cli.non_negative_int, "optimizer steps (0: each epoch)"),
                   ("--keep-last", cli.positive_int, None), ("--preview-every", cli.non_negative_int, "epochs (0: never)")],
    }


def _patch_size(text: str) -> int:
    from mpmae_core import registry

    try:
        value = int(text)
    except ValueError:
        value = None
    if value not in registry.PATCH_SIZES:
        raise argparse.ArgumentTypeError(f"patch size must be one of {', '.join(map(str, registry.PATCH_SIZES))}, "
                                         f"got {text!r}")
    return value


def check_values(values: dict) -> None:
    """Settings from a config file pass the same checks as the command line's."""
    kinds = {flag[2:].replace("-", "_"): kind for opts in _options().values() for flag, kind, _ in opts}
    for key, value in values.items():
        kind = kinds.get(key)
        if kind is None or kind is str or value is None:
            continue
        try:
            kind(str(value))
        except argparse.ArgumentTypeError as exc:
            raise ValueError(f"setting '{key}' = {value!r}: {exc}") from None


def resolve_config(args: argparse.Namespace):
    from mpmae_core.engine import TrainConfig

    values = dict(PRESETS[args.preset])
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise ValueError(f"config file '{path}' does not exist")
        text = path.read_text()
        loaded = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        if not isinstance(loaded, dict):
            raise ValueError(f"config file '{path}' must hold a table of settings (option = value)")
        values.update(loaded)
    cli_values = {k: v for k, v in vars(args).items() if k not in ("preset", "config") and v is not None}
    values.update(cli_values)
    check_values(values)
    if not values.get("data"):
        if args.preset != "demo":
            raise ValueError("--data is required outside the demo preset (an MMEarth .h5 or converted folder)")
        from mpmae_core.data import sample

        values["data"] = str(sample.build(verbose=True)["mmearth_fast"])
    return TrainConfig.from_dict(values)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from mpmae_core.runtime.cli import run_main

    state: dict = {}

    def body() -> int:
        from mpmae_core.data.mmearth import DataError
        from mpmae_core.engine import NonFiniteLossError
        from mpmae_core.pretraining import pretrain

        try:
            cfg = resolve_config(args)
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"the config file cannot be read: {exc}") from None
        state["out"] = cfg.output_dir
        try:
            pretrain(cfg)
        except (DataError, NonFiniteLossError) as exc:
            raise ValueError(str(exc)) from None
        return 0

    def interrupted() -> str:
        from mpmae_core.engine import resume_note

        return resume_note(state.get("out")) if state.get("out") else "nothing was started"

    return run_main(body, (ValueError,), interrupted=interrupted, prog="training.pretrain")


if __name__ == "__main__":
    sys.exit(main())
