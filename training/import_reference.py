"""Import a published MMEarth-train checkpoint into our format.

    python -m training.import_reference checkpoint-199.pth --out runs/imported/atto_all_mod.pt

Loads safely (weights_only, only argparse.Namespace and pathlib paths allowlisted), maps the sparse
or dense reference layout onto our encoder (and decoders and heads when present), prints exactly
which keys were mapped, missing or unexpected, and writes our checkpoint atomically.
"""

import argparse
import sys

from mpmae_core import registry
from mpmae_core.runtime.cli import choice_of, run_main
from mpmae_core.runtime.cli import program as program_name


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=program_name("python -m training.import_reference"), description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="reference checkpoint-*.pth (or a bare state dict)")
    p.add_argument("--out", required=True, help="our checkpoint to write (.pt)")
    p.add_argument("--convention", type=choice_of(registry.CONVENTIONS, "convention"), default="reference_dense",
                   help="encoder border convention: reference_dense reproduces the reference's inference "
                        "outputs (default); sparse matches its pretraining, to continue pretraining")
    p.add_argument("--encoder-only", action="store_true", help="write only the encoder, even if heads are present")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from mpmae_core.checkpoints import CheckpointError, import_to_file

    def body() -> int:
        summary, model = import_to_file(args.checkpoint, args.out, args.convention, args.encoder_only)
        print(summary)
        print(f"wrote {args.out} ({type(model).__name__}, convention {args.convention})")
        return 0

    return run_main(body, (CheckpointError, ValueError), prog="training.import_reference")


if __name__ == "__main__":
    sys.exit(main())
