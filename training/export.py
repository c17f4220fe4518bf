"""Export a checkpoint to ONNX with its metadata (bands, normalisation, patch size, classes...).

    python -m training.export runs/pretrain/checkpoint-00000210.pt --out models/atto_encoder.onnx
    python -m training.export CKPT --head esa_worldcover --out models/worldcover.onnx   # pretext landcover head
    python -m training.export reference/checkpoint-199.pth --out models/ref_atto.onnx  # a reference checkpoint
    python -m training.export CKPT --reference-layout --out release/checkpoint-199.pth  # the released .pth layout

Our checkpoints and imported reference checkpoints both export. The exported graph is compared
with torch on a fresh input before the file is written.
"""

import argparse
import sys

from mpmae_core import registry
from mpmae_core.runtime.cli import choice_of, run_main
from mpmae_core.runtime.cli import program as program_name


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=program_name("python -m training.export"), description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--head", type=choice_of(tuple(registry.PRETEXT_CLASSES), "pretext head"),
                   help="export this pretext landcover head (" + ", ".join(registry.PRETEXT_CLASSES) + ") as an "
                        "image -> class logits model instead of the encoder")
    p.add_argument("--fp16", action="store_true",
                   help="the encoder in half precision for GPUs (float32 in and out; checked against float32)")
    p.add_argument("--reference-layout", action="store_true",
                   help="write the MP-MAE as a released MMEarth-train checkpoint-*.pth instead of ONNX")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from mpmae_core.checkpoints import CheckpointError
    from mpmae_core.export import export_checkpoint

    def body() -> int:
        if args.reference_layout:
            from mpmae_core.checkpoints import save_reference_layout

            print(f"wrote {save_reference_layout(args.checkpoint, args.out)} (MMEarth-train's released layout)")
            return 0
        if args.fp16:
            from mpmae_core.export import export_fp16

            path, diff = export_fp16(args.checkpoint, args.out)
            print(f"wrote {path} (float16; max |fp16 - fp32| = {diff:.2%} of the largest value)")
            return 0
        path, diff = export_checkpoint(args.checkpoint, args.out, head=args.head)
        print(f"wrote {path} (max |onnx - torch| = {diff:.2e} on a fresh input)")
        return 0

    return run_main(body, (CheckpointError, ValueError), prog="training.export")


if __name__ == "__main__":
    sys.exit(main())
