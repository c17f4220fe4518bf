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
        "import mpmae_core, mpmae_core.registry, mpmae_core.reference_layout\n"
        "import mpmae_core.data.sample, mpmae_core.data.layout, mpmae_core.data.convert\n"
        f"for name in {runtime!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'mpmae_core'))))\n"
    )
    assert set(runtime) <= set(loaded)
    assert [m for m in loaded if m.split(".")[0] == "torch"] == []
