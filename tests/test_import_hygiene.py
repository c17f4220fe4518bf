"""The walls of the house: the plugin never imports torch; mpmae_core never imports QGIS."""

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin", "QT_QPA_PLATFORM": "offscreen", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_plugin_import_path_never_imports_torch_or_onnxruntime():
    loaded = _run(
        "import sys, json\n"
        "import mmearth_qgis, mmearth_qgis.plugin, mmearth_qgis.provider\n"
        "from mmearth_qgis.algorithms import all_algorithms\n"
        "for alg in all_algorithms():\n"
        "    alg.initAlgorithm()\n"
        "plugin = mmearth_qgis.classFactory(None)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnxruntime', 'rasterio', 'timm', 'mmearth_qgis'))))\n"
    )
    assert "mmearth_qgis.plugin" in loaded  # the import really happened
    assert not [m for m in loaded if m.split(".")[0] in ("torch", "onnxruntime", "rasterio", "timm")]


def _core_modules():
    for path in sorted((ROOT / "mpmae_core").rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def test_mpmae_core_never_imports_qgis_at_runtime():
    names = [name for name, _ in _core_modules() if not name.endswith("__main__")]
    loaded = _run(
        "import sys, json, importlib\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('qgis', 'processing', 'mpmae_core'))))\n"
    )
    assert set(names) <= set(loaded)
    assert not [m for m in loaded if m.split(".")[0] in ("qgis", "processing")]


def test_mpmae_core_has_no_qgis_import_anywhere():
    """Also inside functions, which the runtime check above cannot see."""
    for name, path in _core_modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mods = [node.module or ""]
            else:
                continue
            assert not [m for m in mods if m.split(".")[0] in ("qgis", "processing")], f"{name} imports QGIS"


def test_registry_and_runtime_stay_torch_free():
    """Every runtime module (found on disk, so a new one is covered without editing this test)."""
    runtime = [name for name, _ in _core_modules() if name.startswith("mpmae_core.runtime")]
    assert len(runtime) >= 15
    loaded = _run(
        "import sys, json, importlib\n"
        "import mpmae_core, mpmae_core.registry, mpmae_core.runtime.releases.reference_layout\n"
        "import mpmae_core.data.sample, mpmae_core.data.layout, mpmae_core.data.convert\n"
        f"for name in {runtime!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'mpmae_core'))))\n"
    )
    assert set(runtime) <= set(loaded)
    assert [m for m in loaded if m.split(".")[0] == "torch"] == []


# ------------------------------------------------------------------------------ the import graph

PACKAGES = ("mpmae_core", "mmearth_qgis", "training", "mmearth")
#: The runtime's rooms from the ground up: each may import only rooms before it ("" = the top files).
ROOMS = ("io", "models", "releases", "inference", "heads", "")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports() -> dict:
    """module -> the project modules it imports (anywhere in it, functions included)."""
    files = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if "vendor" not in p.parts}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from .x import y
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            found.update(t for t in targets if t in files and t != name)
        graph[name] = found
    return graph


def test_the_graph_covers_every_module_and_has_no_circles():
    graph = _imports()
    assert len([m for m in graph if m.startswith("mpmae_core.runtime")]) >= 30
    # a package's __init__ importing its own modules is no circle of code; leave those edges out
    edges = {m: {t for t in ts if not (m.count(".") < t.count(".") and t.startswith(m + "."))} for m, ts in graph.items()}
    state, stack = {}, []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(t):] + [t]))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[2] if len(parts) >= 3 and parts[2] in ROOMS else ""


def test_runtime_rooms_import_only_the_rooms_below():
    for module, targets in _imports().items():
        if not module.startswith("mpmae_core.runtime."):
            continue
        here = ROOMS.index(_room(module))
        for t in targets:
            if t.startswith("mpmae_core.runtime."):
                there = ROOMS.index(_room(t))
                assert there <= here, f"{module} (room {ROOMS[here] or 'top'}) imports {t} (room {ROOMS[there] or 'top'})"
            elif t.startswith("mpmae_core.") and t != "mpmae_core.runtime":
                assert t == "mpmae_core.registry", f"{module} imports {t}: the runtime reads only the registry"


def test_the_plugin_imports_only_the_runtime_and_the_registry():
    for module, targets in _imports().items():
        if module.startswith("mmearth_qgis"):
            outside = [t for t in targets if t.startswith("mpmae_core") and not (
                t in ("mpmae_core", "mpmae_core.registry", "mpmae_core.runtime") or t.startswith("mpmae_core.runtime."))]
            assert not outside, f"{module} imports {outside}"
