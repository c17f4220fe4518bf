"""The one command: ``mmearth`` lists and runs every front end."""

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from mmearth import cli

ROOT = Path(__file__).resolve().parents[1]


def _runtime_subcommands() -> set:
    from mpmae_core.runtime.__main__ import build_parser

    actions = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return set(actions[0].choices)


def test_every_front_end_is_a_subcommand():
    """A new runtime subcommand or training front end that is not wired into mmearth fails here."""
    assert _runtime_subcommands() <= set(cli.COMMANDS)
    training = {p.stem.replace("_", "-") for p in (ROOT / "training").glob("*.py") if p.stem != "__init__"}
    assert training <= set(cli.COMMANDS)
    text = cli.usage()
    assert all(f"  {name} " in text for name in cli.COMMANDS)


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_each_subcommand_help_runs_under_its_mmearth_name(name, capsys, monkeypatch):
    from mpmae_core.runtime import cli as rcli

    monkeypatch.setattr(rcli, "PROGRAM", None)  # main sets it; restored after the test
    with pytest.raises(SystemExit) as stop:
        cli.main([name, "--help"])
    assert stop.value.code == 0
    usage = capsys.readouterr().out
    assert usage.startswith(f"usage: mmearth {name}"), usage[:80]


def test_unknown_subcommand_suggests_the_nearest(capsys):
    assert cli.main(["segmnet"]) == 2
    err = capsys.readouterr().err
    assert "unknown subcommand 'segmnet'" in err and "mmearth segment" in err
    assert cli.main([]) == 2 and "usage: mmearth" in capsys.readouterr().out


def test_the_installed_console_script_and_its_completion():
    script = Path(sys.prefix) / "bin" / "mmearth"
    assert script.is_file(), "pip install -e . (scripts/setup) installs the mmearth console script"
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "fetch-model" in out.stdout and "pretrain" in out.stdout
    comp = subprocess.run([str(script), "completion"], capture_output=True, text=True, timeout=120).stdout
    assert "complete -o filenames -F _mmearth mmearth" in comp
    assert subprocess.run(["bash", "-n"], input=comp, text=True).returncode == 0  # valid bash


def test_a_runtime_subcommand_runs_without_torch(tmp_path):
    """mmearth inspect on the embedded scene, in a process where importing torch fails."""
    from mpmae_core.data import sample

    stack = sample.build(verbose=False)["stack"]
    code = ("import sys; sys.modules['torch'] = None\n"
            "from mmearth.cli import main\n"
            f"sys.exit(main(['inspect', {str(stack)!r}]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "Can feed a 12-band MMEarth Sentinel-2 model: YES" in out.stdout


def test_a_training_subcommand_without_torch_says_what_to_install():
    code = ("import sys; sys.modules['torch'] = None\n"
            "from mmearth.cli import main\n"
            "sys.exit(main(['export', 'run.pt', '--out', 'never-written.onnx']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 2, out.stderr
    assert "needs torch" in out.stderr and "mmearth-toolkit[train]" in out.stderr and "Traceback" not in out.stderr
