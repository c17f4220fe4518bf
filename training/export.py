"""Export a checkpoint to ONNX with its metadata (bands, normalisation, patch size, classes...).

    python -m training.export runs/pretrain/checkpoint-00000210.pt --out models/atto_encoder.onnx
    python -m training.export CKPT --head esa_worldcover --out models/worldcover.onnx   # pretext landcover head
    python -m training.export reference/checkpoint-199.pth --out models/ref_atto.onnx  # a reference checkpoint

Our checkpoints and imported reference checkpoints both export. The exported graph is compared
with torch on a fresh input before the file is written.
"""

import argparse
import sys

from mpmae_core.checkpoints import CheckpointError, import_reference_checkpoint, load_checkpoint, mpmae_from_config, encoder_from_config
from mpmae_core.runtime.metadata import default_normalisation


def load_any(path: str):
    """(model, normalisation, description) from our checkpoint or a reference one."""
    try:
        obj = load_checkpoint(path)
    except CheckpointError as ours:
        if "not an mpmae-checkpoint file" not in str(ours):
            raise
        imported = import_reference_checkpoint(path)
        model = imported.build_mpmae() if imported.report.tasks else imported.build_encoder()
        return model, default_normalisation(_input_bands(model)), f"reference checkpoint {path}"
    model = mpmae_from_config(obj["config"]) if obj["kind"] == "mpmae" else encoder_from_config(obj["config"])
    model.load_state_dict(obj["model"])
    norm = obj.get("normalisation") or default_normalisation(_input_bands(model))
    return model, norm, f"checkpoint {path} (step {obj.get('step', '?')})"


def _input_bands(model):
    """An MP-MAE knows its bands; a bare encoder only its band count."""
    from mpmae_core import registry

    return getattr(model, "input_bands", None) or registry.default_input_bands(model.in_chans) or ()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.export", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--head", help="export this pretext landcover head (esa_worldcover, dynamic_world) "
                                  "as an image -> class logits model instead of the encoder")
    args = p.parse_args(argv)
    from mpmae_core.export import export_encoder, export_pretext_segmenter
    from mpmae_core.models.mpmae import MPMAE

    try:
        model, norm, source = load_any(args.checkpoint)
        if args.head:
            if not isinstance(model, MPMAE):
                raise CheckpointError(f"{args.checkpoint} holds an encoder only: it has no '{args.head}' head")
            path, diff = export_pretext_segmenter(model, args.head, args.out, norm, source=source)
        else:
            encoder = model.encoder if isinstance(model, MPMAE) else model
            path, diff = export_encoder(encoder, args.out, _input_bands(model), norm, source=source)
    except (CheckpointError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path} (max |onnx - torch| = {diff:.2e} on a fresh input)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
