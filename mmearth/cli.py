"""The ``mmearth`` command: every front end of the toolkit as one subcommand.

    mmearth --help                     # every subcommand, grouped
    mmearth embed scene.tif model.onnx emb.tif
    mmearth pretrain --steps 210
    mmearth completion >> ~/.bashrc    # tab completion of the subcommands (bash)

Each subcommand hands its arguments to the front end it names, so ``mmearth embed ...`` and
``python -m mpmae_core.runtime embed ...`` (or ``mmearth pretrain ...`` and ``python -m
training.pretrain ...``) are the same run. The runtime's subcommands need no torch; the training
ones say how to get it when it is missing.
"""

from __future__ import annotations

import difflib
import sys
from typing import Callable, NamedTuple, Sequence


class Command(NamedTuple):
    group: str
    help: str
    run: Callable[[list], int]
    nested: bool = False  # the front end parses the subcommand's name itself (its usage says "mmearth NAME")


def _runtime(name: str) -> Callable[[list], int]:
    def run(argv: list) -> int:
        from mpmae_core.runtime.__main__ import main

        return main([name] + argv)
    return run


def _data(argv: list) -> int:
    from mpmae_core.data.__main__ import main

    return main(argv)


def _pretrain(argv: list) -> int:
    from training.pretrain import main

    return main(argv)


def _export(argv: list) -> int:
    from training.export import main

    return main(argv)


def _evaluate(argv: list) -> int:
    from training.evaluate import main

    return main(argv)


def _finetune(argv: list) -> int:
    from training.finetune import main

    return main(argv)


def _import_reference(argv: list) -> int:
    from training.import_reference import main

    return main(argv)


RUNTIME = "maps and models (numpy, GDAL, ONNX Runtime; no torch)"
TRAINING = "training and evaluation (torch)"
DATA = "MMEarth data files"

COMMANDS: dict[str, Command] = {
    "inspect": Command(RUNTIME, "can this raster feed a model, and how do its bands map?", _runtime("inspect"), True),
    "stack": Command(RUNTIME, "a Sentinel-2 product, STAC item or band folder as one 10 m stack (VRT or COG)",
                     _runtime("stack"), True),
    "embed": Command(RUNTIME, "embedding raster of a scene", _runtime("embed"), True),
    "features": Command(RUNTIME, "per-pixel feature raster (spectra and every encoder stage)", _runtime("features"),
                        True),
    "train-head": Command(RUNTIME, "few-shot per-pixel head from labelled points or polygons", _runtime("train-head"),
                          True),
    "segment": Command(RUNTIME, "class map of a scene (a head, or a segmenter model)", _runtime("segment"), True),
    "compare-features": Command(RUNTIME, "which features map this place best? every source (spectra, MMEarth, "
                                "AlphaEarth, TESSERA...) on your labels", _runtime("compare-features"), True),
    "similarity": Command(RUNTIME, "similarity map: how much each place resembles a few query points",
                          _runtime("similarity"), True),
    "preview": Command(RUNTIME, "PNG of a class map next to its scene in natural colour", _runtime("preview"), True),
    "series-features": Command(RUNTIME, "temporal spectral features (median, percentiles, spread, count) of several "
                               "dates", _runtime("series-features"), True),
    "change": Command(RUNTIME, "change between two dates or periods: distances, thresholds, and a few-shot map of "
                               "change types", _runtime("change"), True),
    "sample-design": Command(RUNTIME, "a stratified random validation sample of a class map, to label",
                             _runtime("sample-design"), True),
    "assess": Command(RUNTIME, "accuracy and area with confidence intervals, from labelled validation points",
                      _runtime("assess"), True),
    "batch": Command(RUNTIME, "embed or map many scenes on a Dask cluster", _runtime("batch"), True),
    "fetch-model": Command(RUNTIME, "download a released MMEarth model and convert it, without torch",
                           _runtime("fetch-model"), True),
    "pretrain": Command(TRAINING, "pretrain an MP-MAE encoder", _pretrain),
    "export": Command(TRAINING, "export a checkpoint to ONNX with its metadata", _export),
    "finetune": Command(TRAINING, "fine-tune an encoder with a per-pixel head into an ONNX segmenter", _finetune),
    "evaluate": Command(TRAINING, "evaluate frozen encoders against per-pixel spectral classifiers", _evaluate),
    "import-reference": Command(TRAINING, "import a published MMEarth checkpoint (safe loading)", _import_reference),
    "data": Command(DATA, "describe, convert or synthesise MMEarth HDF5 data (mmearth data --help)", _data),
}


def usage() -> str:
    lines = ["usage: mmearth SUBCOMMAND [ARGS ...]   (mmearth SUBCOMMAND --help for its options)", ""]
    width = max(len(n) for n in COMMANDS)
    for group in dict.fromkeys(c.group for c in COMMANDS.values()):
        lines.append(f"{group}:")
        lines.extend(f"  {name:<{width}}  {c.help}" for name, c in COMMANDS.items() if c.group == group)
        lines.append("")
    lines += ["other:", f"  {'completion':<{width}}  print a bash completion script (mmearth completion >> ~/.bashrc)", ""]
    return "\n".join(lines)


def completion_script() -> str:
    """Bash completion: subcommands first, then the chosen subcommand's options, then files."""
    names = " ".join(list(COMMANDS) + ["completion"])
    return (
        "_mmearth() {\n"
        "  local cur=${COMP_WORDS[COMP_CWORD]}\n"
        "  if [ \"$COMP_CWORD\" -eq 1 ]; then\n"
        f"    COMPREPLY=($(compgen -W \"{names} --help\" -- \"$cur\"))\n"
        "  elif [[ $cur == -* ]]; then\n"
        "    COMPREPLY=($(compgen -W \"$(mmearth \"${COMP_WORDS[1]}\" --help 2>/dev/null | "
        "grep -oE '(^|[ ,[])--?[a-z][a-z0-9-]*' | tr -d ' ,[' | sort -u)\" -- \"$cur\"))\n"
        "  else\n"
        "    COMPREPLY=($(compgen -f -- \"$cur\"))\n"
        "  fi\n"
        "}\n"
        "complete -o filenames -F _mmearth mmearth\n"
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name == "completion":
        print(completion_script(), end="")
        return 0
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, list(COMMANDS), n=1)
        hint = f" Did you mean 'mmearth {close[0]}'?" if close else ""
        print(f"mmearth: unknown subcommand '{name}'.{hint} 'mmearth --help' lists them all.", file=sys.stderr)
        return 2
    command = COMMANDS[name]
    from mpmae_core.runtime import cli

    cli.PROGRAM = "mmearth" if command.nested else f"mmearth {name}"  # what the usage lines say
    try:
        return int(command.run(rest) or 0)
    except ModuleNotFoundError as exc:  # only before the front end starts: it reports its own errors
        if exc.name and exc.name.split(".")[0] in ("torch", "h5py", "tensorboard", "onnx", "onnxscript"):
            print(f"mmearth {name}: needs {exc.name}, which is not installed. The training commands need the "
                  "training extras: pip install 'mmearth-toolkit[train]' (or run scripts/setup).", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
