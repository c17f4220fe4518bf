"""The docs: the README stays short, the site builds (mkdocs --strict), every link resolves, and
every command they show exists (its --help runs)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))

FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)
INLINE = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _code(text: str) -> list:
    """The code a page shows: fenced blocks (joined across backslash line ends) and inline spans."""
    blocks = [b.replace("\\\n", " ") for b in FENCE.findall(text)]
    blocks = [re.sub(r"(^|\s)#.*$", "", b, flags=re.M) for b in blocks]  # shell comments are prose
    prose = FENCE.sub("", text)
    return blocks + INLINE.findall(prose)


def _github_slug(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _mkdocs_slug(heading: str) -> str:
    from markdown.extensions.toc import slugify

    return slugify(heading, "-")


def _anchors(page: Path) -> set:
    text = FENCE.sub("", page.read_text())
    heads = [re.sub(r"`", "", h) for h in re.findall(r"^#{1,6}\s+(.+?)\s*$", text, re.M)]
    slug = _github_slug if page.name == "README.md" else _mkdocs_slug
    return {slug(h) for h in heads}


def test_the_readme_is_short_and_links_every_docs_page():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 250
    for page in (ROOT / "docs").glob("*.md"):
        if page.name != "index.md":
            assert f"(docs/{page.name})" in text, f"the README does not link docs/{page.name}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_resolves(page):
    text = FENCE.sub("", page.read_text())
    for target in LINK.findall(text):
        if re.match(r"[a-z]+://|mailto:", target):
            continue  # no network here: external addresses are not fetched
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.name}: the link {target!r} points at nothing"
        if anchor:
            assert dest.suffix == ".md", f"{page.name}: an anchor into a non-page {target!r}"
            assert anchor in _anchors(dest), f"{page.name}: no heading '#{anchor}' in {dest.name}"


def test_the_site_builds_strictly(tmp_path):
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert (tmp_path / "site" / "design" / "index.html").is_file()


def _shown():
    """(kind, what) of every command the docs show."""
    found = set()
    for page in PAGES:
        for code in _code(page.read_text()):
            for sub in re.findall(r"(?:^|[\s(/])mmearth\s+([a-z][a-z-]*)", code, re.M):
                found.add(("mmearth", sub))
            for mod, sub in re.findall(r"python3? -m ([A-Za-z_][\w.]*)(?:[ \t]+([a-z][a-z-]+))?", code):
                found.add(("module", f"{mod} {sub}".strip()))
            for path in re.findall(r"(?<![\w/.])((?:scripts|bench|tests|requirements|docs|\.ci)/[\w./-]*\w)", code):
                found.add(("path", path.split("::")[0]))
        for alg in re.findall(r"mmearth:([a-z_]+)", page.read_text()):
            found.add(("algorithm", alg))
    return sorted(found)


SHOWN = _shown()


def test_the_docs_show_commands():
    kinds = {k for k, _ in SHOWN}
    assert kinds == {"mmearth", "module", "path", "algorithm"}, kinds


@pytest.mark.parametrize("what", [w for k, w in SHOWN if k == "mmearth"])
def test_every_mmearth_subcommand_shown_exists(what, capsys, monkeypatch):
    from mmearth import cli
    from mpmae_core.runtime import cli as rcli

    monkeypatch.setattr(rcli, "PROGRAM", None)
    if what == "completion":
        assert cli.main(["completion"]) == 0
        return
    assert what in cli.COMMANDS, f"the docs show 'mmearth {what}', which does not exist"
    with pytest.raises(SystemExit) as stop:
        cli.main([what, "--help"])
    assert stop.value.code == 0


@pytest.mark.parametrize("what", [w for k, w in SHOWN if k == "module"])
def test_every_python_module_shown_runs_its_help(what):
    module, _, sub = what.partition(" ")
    if module.split(".")[0] not in ("mpmae_core", "training", "mmearth"):
        assert module in ("http.server", "pip", "venv", "pytest", "mkdocs"), f"unexpected module {module}"
        return
    args = [sys.executable, "-m", module] + ([sub] if sub and not sub.startswith("-") else []) + ["--help"]
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    if out.returncode != 0 and sub:  # the word after the module was an argument, not a subcommand
        out = subprocess.run(args[:3] + ["--help"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "usage:" in out.stdout, f"python -m {what} --help: {out.stderr[-500:]}"


@pytest.mark.parametrize("what", [w for k, w in SHOWN if k == "path"])
def test_every_file_shown_exists(what):
    assert (ROOT / what).exists(), f"the docs name {what}, which does not exist"


def test_every_algorithm_shown_exists(mmearth_plugin):
    from mmearth_qgis.algorithms import all_algorithms

    names = {a.name() for a in all_algorithms()}
    shown = {w for k, w in SHOWN if k == "algorithm"}
    assert shown and shown <= names, f"the docs show algorithms that do not exist: {sorted(shown - names)}"
