"""Fine-tune an encoder with a per-pixel head on labelled points, polygons or a label raster, and
export an ONNX segmenter that mmearth:segment (and the torch-free runtime) runs.

    python -m training.finetune --labels points.gpkg --class-field landuse --out runs/finetune
    python -m training.finetune --image scene.tif --labels landcover.tif --encoder ckpt.pt --steps 1000
    python -m training.finetune ... --val-fraction 0.2      # hold out a fifth of the labelled features

Defaults: the embedded sample scene, the latest demo pretraining checkpoint (runs/demo/pretrain),
300 steps of batch 8 on 128 px crops. The GPU is used when present, with bf16 autocast. Re-running
the same command resumes from OUT/finetune-state.pt. Output: OUT/segmenter.onnx, OUT/finetune.json.
The logic lives in mpmae_core.finetune; this is argument parsing plus one call.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mpmae_core.runtime import cli
from mpmae_core.runtime.cli import program as program_name

ROOT = Path(__file__).resolve().parents[1]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=program_name("python -m training.finetune"), description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", help="Sentinel-2 GeoTIFF (default: the embedded sample scene)")
    p.add_argument("--labels", help="points or polygons (with --class-field) or a label raster on the image's grid "
                                    "(default: the sample's OpenStreetMap landuse raster)")
    p.add_argument("--class-field", default="")
    p.add_argument("--encoder", help="our checkpoint or a reference MMEarth .pth (default: the demo's latest)")
    p.add_argument("--out", default=str(ROOT / "runs" / "finetune"))
    p.add_argument("--steps", type=cli.positive_int, default=300)
    p.add_argument("--batch-size", type=cli.positive_int, default=8)
    p.add_argument("--crop", type=cli.positive_int, default=128, help="crop side in pixels (multiple of the patch)")
    p.add_argument("--lr", type=cli.positive_float, default=1e-3, help="the head's learning rate (encoder: 0.1x)")
    p.add_argument("--buffer", type=cli.non_negative_float, default=0.0, help="point buffer in metres")
    p.add_argument("--max-pixels", type=cli.positive_int, default=2000, help="most labelled pixels per class")
    p.add_argument("--val-fraction", type=cli.fraction, default=0.0, help="labelled features held out to score")
    p.add_argument("--freeze-encoder", action="store_true", help="train the head only (frozen features)")
    p.add_argument("--device", default="auto", type=cli.choice_of(["auto", "cpu", "cuda"], "device"))
    p.add_argument("--no-amp", dest="amp", action="store_false", help="fp32 on CUDA too")
    p.add_argument("--seed", type=cli.non_negative_int, default=0)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        from mpmae_core.finetune import FinetuneConfig, default_inputs, run_command

        image, labels, encoder = default_inputs(args.image, args.labels, args.encoder)
        cfg = FinetuneConfig(steps=args.steps, batch_size=args.batch_size, crop=args.crop, lr=args.lr,
                             device=args.device, amp=args.amp, seed=args.seed, freeze_encoder=args.freeze_encoder)
        run_command(image, labels, args.class_field, encoder, args.out, cfg, buffer_m=args.buffer,
                    max_pixels_per_class=args.max_pixels, val_fraction=args.val_fraction)
        return 0

    from mpmae_core.checkpoints import CheckpointError
    from mpmae_core.runtime.io.gdal_io import RasterError

    return cli.run_main(body, (CheckpointError, RasterError, ValueError), prog="training.finetune",
                        interrupted=lambda: f"the same command resumes from {Path(args.out) / 'finetune-state.pt'}")


if __name__ == "__main__":
    sys.exit(main())
