"""The real QGIS desktop under Xvfb, driven by startup.py: the few-shot panel as a person uses it.

    .venv/bin/python scripts/desktop/run.py OUT_DIR [--model NAME] [--models FOLDER] [--scene TIF]

A throw-away QGIS profile with this working tree's plugin enabled, a virtual display, ``qgis --code
startup.py``; the scene defaults to a 768 x 512 px part of the embedded sample with 2 labels per class
from its OpenStreetMap landuse (interior pixels, as a person clicks), the model to the demo's
``atto_demo`` when it exists. Writes OUT_DIR/log.json (timings and checks) and the screenshots, and
exits non-zero when the run failed or QGIS did not finish in time. Needs xvfb (apt-get install xvfb).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
CLASSES = ["water", "forest", "farm", "meadow", "residential"]


def scene_and_labels(work: Path, per_class: int = 2, seed: int = 0):
    from osgeo import gdal

    from mpmae_core.data import sample
    from mpmae_core.evaluation import interior_pixels

    path = work / "scene.tif"
    gdal.Translate(str(path), str(sample.build(verbose=False)["stack"]), srcWin=[384, 128, 768, 512])
    gdal.Translate(str(work / "landuse.tif"), str(sample.labels_path()), srcWin=[384, 128, 768, 512])
    lab = gdal.Open(str(sample.labels_path())).ReadAsArray()[128:640, 384:1152]
    gt = gdal.Open(str(path)).GetGeoTransform()
    inner = interior_pixels(lab, np.ones(lab.shape, bool))
    rng = np.random.default_rng(seed)
    labels = []
    for name in CLASSES:
        r, c = np.nonzero(inner & (lab == sample.OSM_CLASSES.index(name) + 1))
        for i in rng.choice(len(r), per_class, replace=False):
            labels.append((name, gt[0] + (c[i] + 0.5) * gt[1], gt[3] + (r[i] + 0.5) * gt[5]))
    toy_embedding(work / "alphaearth_toy.tif", lab, gdal.Open(str(path)))
    return path, labels


def toy_embedding(path: Path, census, ref, seed: int = 5):
    """An AlphaEarth-format file (64 int8 bands A00..A63, the documented quantisation) whose vectors
    follow the scene's landuse census: one direction per class plus noise. A stand-in for a
    downloaded AlphaEarth tile (no network here), right by construction."""
    from osgeo import gdal

    rng = np.random.default_rng(seed)
    v = rng.normal(size=(int(census.max()) + 1, 64))[census] + 0.4 * rng.normal(size=census.shape + (64,))
    v /= np.linalg.norm(v, axis=-1, keepdims=True)
    stored = np.clip(np.round(np.sign(v) * np.sqrt(np.abs(v)) * 127.5), -127, 127).astype(np.int8)
    ds = gdal.GetDriverByName("GTiff").Create(str(path), census.shape[1], census.shape[0], 64, gdal.GDT_Byte,
                                              ["PIXELTYPE=SIGNEDBYTE"])
    ds.SetGeoTransform(ref.GetGeoTransform())
    ds.SetProjection(ref.GetProjection())
    for i in range(64):
        ds.GetRasterBand(i + 1).SetDescription(f"A{i:02d}")
        ds.GetRasterBand(i + 1).WriteArray(stored[:, :, i].view(np.uint8))
    ds = None


def free_display() -> int:
    for n in range(99, 160):
        if not Path(f"/tmp/.X{n}-lock").exists() and not Path(f"/tmp/.X11-unix/X{n}").exists():
            return n
    raise RuntimeError("no free X display number")


def run(out: Path, model: str, models: Path, scene: str | None = None, timeout_s: int = 900) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    for old in list(out.glob("*.png")) + [out / "log.json"]:
        old.unlink(missing_ok=True)
    if shutil.which("Xvfb") is None:
        raise SystemExit("Xvfb is missing: apt-get install xvfb")
    work = Path(tempfile.mkdtemp(prefix="mmearth-desktop-"))
    profile, plugins = work / "profile", work / "plugins"
    plugins.mkdir(parents=True)
    (plugins / "mmearth_qgis").symlink_to(ROOT / "mmearth_qgis")
    path, labels = scene_and_labels(work)
    config = work / "config.json"
    from mpmae_core.data import sample

    config.write_text(json.dumps({"out": str(out), "scene": scene or str(path), "model": model, "classes": CLASSES,
                                  "labels": labels, "landuse": str(work / "landuse.tif"),
                                  "embedding": str(work / "alphaearth_toy.tif"),
                                  "osm_classes": list(sample.OSM_CLASSES)}))
    site = [p for p in sys.path if p.endswith("site-packages") and sys.prefix in p]
    (work / "tmp").mkdir()
    # TMPDIR: this run's scene and outputs lie under /tmp, where a person's files do not; QGIS counts any
    # layer under its temporary folder as 'temporary' and asks about it at exit
    env = dict(os.environ, TMPDIR=str(work / "tmp"), QGIS_CUSTOM_CONFIG_PATH=str(profile), QGIS_PLUGINPATH=str(plugins),
               PYTHONPATH=os.pathsep.join([str(ROOT)] + site), MMEARTH_MODELS=str(models),
               MMEARTH_CACHE=str(work / "cache"), MMEARTH_DESKTOP_CONFIG=str(config))
    enable = subprocess.run(["/usr/bin/qgis_process.bin", "plugins", "enable", "mmearth_qgis"], capture_output=True,
                            text=True, env=dict(env, QT_QPA_PLATFORM="offscreen"))
    if enable.returncode != 0:
        raise SystemExit(f"could not enable the plugin: {enable.stdout}{enable.stderr}")
    display = free_display()
    xvfb = subprocess.Popen(["Xvfb", f":{display}", "-screen", "0", "1600x1000x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    t0 = time.time()
    try:
        time.sleep(1.0)
        env.pop("QT_QPA_PLATFORM", None)
        qgis = subprocess.Popen(["qgis", "--noversioncheck", "--nologo", "--code",
                                 str(ROOT / "scripts" / "desktop" / "startup.py")],
                                env=dict(env, DISPLAY=f":{display}"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)  # QGIS's exit signals its process group: not ours
        try:
            text, _ = qgis.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            if shutil.which("import"):  # what the screen showed: a dialog that waits for an answer?
                subprocess.run(["import", "-display", f":{display}", "-window", "root", str(out / "timeout.png")],
                               capture_output=True, timeout=30)
            os.killpg(qgis.pid, 9)
            text, _ = qgis.communicate()
            (out / "qgis.log").write_text(text or "")
            raise SystemExit(f"QGIS did not finish within {timeout_s} s; see {out / 'qgis.log'} and "
                             f"{out / 'timeout.png'}") from None
        (out / "qgis.log").write_text(text or "")
    finally:
        xvfb.terminate()
        xvfb.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    log = json.loads((out / "log.json").read_text()) if (out / "log.json").is_file() else {"errors": ["no log"]}
    log["wall_s"] = round(time.time() - t0, 1)
    (out / "log.json").write_text(json.dumps(log, indent=1))
    return log


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    demo = ROOT / "runs" / "demo" / "models"
    p.add_argument("--models", default=str(demo if (demo / "atto_demo.onnx").is_file() else ""))
    p.add_argument("--model", default="atto_demo")
    p.add_argument("--scene")
    p.add_argument("--timeout", type=int, default=900)
    args = p.parse_args(argv)
    if not args.models:
        raise SystemExit("no models folder: run scripts/demo first, or give --models and --model")
    log = run(Path(args.out), args.model, Path(args.models), args.scene, args.timeout)
    print(json.dumps({k: log.get(k) for k in ("timings", "checks", "errors", "wall_s")}, indent=1))
    return 0 if not log.get("errors") and log.get("checks", {}).get("map_ok") else 1


if __name__ == "__main__":
    sys.exit(main())
