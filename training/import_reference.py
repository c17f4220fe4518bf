"""Import a published MMEarth-train checkpoint into our format.

    python -m training.import_reference checkpoint-199.pth --out runs/imported/atto_all_mod.pt

Loads safely (weights_only, only argparse.Namespace and pathlib paths allowlisted), maps the sparse
or dense reference layout onto our encoder (and decoders and heads when present), prints exactly
which keys were mapped, missing or unexpected, and writes our checkpoint atomically.
"""

import argparse
import sys

from mpmae_core.checkpoints import CheckpointError, import_reference_checkpoint, save_checkpoint
from mpmae_core.models.convnextv2 import CONVENTIONS


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.import_reference", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="reference checkpoint-*.pth (or a bare state dict)")
    p.add_argument("--out", required=True, help="our checkpoint to write (.pt)")
    p.add_argument("--convention", choices=CONVENTIONS, default="reference_dense",
                   help="encoder border convention: reference_dense reproduces the reference's inference "
                        "outputs (default); sparse matches its pretraining, to continue pretraining")
    p.add_argument("--encoder-only", action="store_true", help="write only the encoder, even if heads are present")
    args = p.parse_args(argv)
    try:
        imported = import_reference_checkpoint(args.checkpoint)
        print(imported.report.summary())
        if imported.report.tasks and not args.encoder_only:
            model = imported.build_mpmae(args.convention)
        else:
            model = imported.build_encoder(args.convention)
        save_checkpoint(args.out, model, {"imported_from": str(args.checkpoint),
                                          "import_report": imported.report.summary()})
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({type(model).__name__}, convention {args.convention})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
