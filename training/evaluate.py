"""Evaluate frozen encoders: k-shot and linear-probe classification, few-shot segmentation and
per-pixel few-shot mapping (the heads train_head makes, against per-pixel spectral classifiers),
over many seeds; writes a Markdown report with PNG plots.

    python -m training.evaluate                                    # the embedded sample, OSM labels
    python -m training.evaluate --encoder multi=runs/pretrain/checkpoint-00000210.pt --random atto
    python -m training.evaluate --image scene.tif --labels landcover.tif
    python -m training.evaluate --image scene.tif --labels polygons.gpkg --class-field landuse

Encoders: ``--encoder NAME=CHECKPOINT`` (ours, or a reference MMEarth checkpoint, imported on the
fly), repeatable; ``--random SIZE`` adds a randomly initialised encoder. The raw-spectra baseline
is always in the run. Without --encoder, the latest checkpoint of runs/demo/pretrain (if any) and
a random atto encoder are used. Labels: a raster on the image's grid (0 or its nodata value =
unlabelled; class names from its category names), or a vector file rasterised onto the image
with --class-field. Output: DIR/report.md, DIR/*.png, DIR/results.json (default runs/evaluate).
The logic lives in mpmae_core.evaluation; this is argument parsing plus one call.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mpmae_core import registry
from mpmae_core.evaluation import (EvaluationError, cell_features, default_encoders, load_encoder,  # noqa: F401
                                   load_image, load_labels, random_encoder, run, run_command)
from mpmae_core.runtime import cli
from mpmae_core.runtime.cli import program as program_name

ROOT = Path(__file__).resolve().parents[1]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=program_name("python -m training.evaluate"), description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", help="Sentinel-2 GeoTIFF (default: the embedded sample scene)")
    p.add_argument("--labels", help="label raster on the image's grid, or a vector file with --class-field "
                                    "(default: the sample's OpenStreetMap landuse raster)")
    p.add_argument("--class-field", default="")
    p.add_argument("--encoder", action="append", default=[], help="NAME=CHECKPOINT (repeatable)")
    p.add_argument("--random", action="append", default=[],
                   type=cli.choice_of(tuple(registry.ENCODER_SIZES), "encoder size"),
                   help="add a randomly initialised encoder of this size (" + ", ".join(registry.ENCODER_SIZES) + ")")
    p.add_argument("--shots", default=[1, 5, 10, 20], type=cli.int_list, help="comma-separated shots, e.g. 1,5,10,20")
    p.add_argument("--seeds", type=cli.positive_int, default=20)
    p.add_argument("--pixel-shots", default=[10, 30], type=cli.int_list,
                   help="labelled points per class of the per-pixel mapping task, e.g. 10,30")
    p.add_argument("--pixel-seeds", type=cli.non_negative_int, default=10,
                   help="seeds of the per-pixel mapping task (0 leaves the task out)")
    p.add_argument("--finetune-steps", type=cli.non_negative_int, default=0,
                   help="also fine-tune each encoder on the per-pixel task's points for this many steps (3 seeds)")
    p.add_argument("--window", type=cli.positive_int, default=32,
                   help="classification window in pixels (multiple of the patch)")
    p.add_argument("--spatial-block", type=cli.positive_int, default=128,
                   help="side of the spatial blocks of the classification split by place, in pixels (default 128)")
    p.add_argument("--out", default=str(ROOT / "runs" / "evaluate"))
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        path = run_command(args.image, args.labels, args.class_field, args.encoder, args.random, args.shots,
                           args.seeds, args.window, args.out,
                           pixel_shots=args.pixel_shots if args.pixel_seeds else [], pixel_seeds=args.pixel_seeds,
                           finetune_steps=args.finetune_steps, spatial_block=args.spatial_block)
        print(f"[evaluate] report {path}")
        return 0

    from mpmae_core.checkpoints import CheckpointError
    from mpmae_core.runtime.io.gdal_io import RasterError

    return cli.run_main(body, (EvaluationError, CheckpointError, RasterError, ValueError), prog="training.evaluate")


if __name__ == "__main__":
    sys.exit(main())
