"""Bad input, as a new user gives it, to every tool: one row per input.

Each row runs a real command (the runtime CLI, the training CLIs, or the real qgis_process through
the project's wrapper) in a subprocess and checks:
- the exit code;
- a fragment of the message (case-insensitive), which names the problem and the fix;
- no Python traceback anywhere in the output;
- every input file byte-identical afterwards (nothing overwritten);
- no temporary or half-written file left in the work folders, and no output where it must not be.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, ogr, osr

from helpers import write_geotiff

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
NAMES = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]


def _scene(rng, rows=128, cols=128, bands=13, lo=500, hi=4000):
    return rng.integers(lo, hi, size=(bands, rows, cols)).astype("uint16")


def _model_bytes(meta_text: str, dim_in: int = 320, classes: int = 3) -> bytes:
    from mpmae_core.runtime.models import onnx_writer

    return onnx_writer.linear_head(np.zeros((classes, dim_in), np.float32), np.zeros(classes, np.float32),
                                   metadata={"mmearth": meta_text})


def _points(path: Path, classes, epsg=32633, undefined_crs=False):
    drv = ogr.GetDriverByName("GPKG")
    ds = drv.CreateDataSource(str(path))
    srs = None
    if not undefined_crs:
        srs = osr.SpatialReference()
        srs.ImportFromEPSG(epsg)
    layer = ds.CreateLayer("labels", srs=srs, geom_type=ogr.wkbPoint)
    layer.CreateField(ogr.FieldDefn("landuse", ogr.OFTString))
    for i, cls in enumerate(classes):
        f = ogr.Feature(layer.GetLayerDefn())
        f.SetField("landuse", cls)
        x = 330000.0 + 80 + (i % 8) * 150
        y = 5822040.0 - 80 - (i // 8) * 150
        f.SetGeometry(ogr.CreateGeometryFromWkt(f"POINT ({x} {y})"))
        layer.CreateFeature(f)
    ds = None
    return path


def _corrupt(path: Path, rng):
    """A tiled, compressed GeoTIFF with one damaged block (as a broken download has)."""
    arr = _scene(rng, 512, 512)
    ds = gdal.GetDriverByName("GTiff").Create(str(path), 512, 512, 13, gdal.GDT_UInt16,
                                              options=["TILED=YES", "COMPRESS=DEFLATE"])
    ds.SetGeoTransform([330000.0, 10.0, 0, 5822040.0, 0, -10.0])
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    ds.SetProjection(srs.ExportToWkt())
    for i in range(13):
        ds.GetRasterBand(i + 1).WriteArray(arr[i])
        ds.GetRasterBand(i + 1).SetDescription(NAMES[i])
        ds.GetRasterBand(i + 1).SetNoDataValue(0)
    ds = None
    ds = gdal.Open(str(path))
    offset = int(ds.GetRasterBand(2).GetMetadataItem("BLOCK_OFFSET_1_1", "TIFF"))
    size = int(ds.GetRasterBand(2).GetMetadataItem("BLOCK_SIZE_1_1", "TIFF"))
    ds = None
    with open(path, "r+b") as f:
        f.seek(offset + 2)
        f.write(bytes(rng.integers(0, 256, size - 4, dtype=np.uint8)))
    return path


@pytest.fixture(scope="module")
def w(tmp_path_factory, models_dir):
    """The work folder with every bad input, and the good ones to pair them with."""
    import torch

    from mpmae_core.checkpoints import save_checkpoint
    from mpmae_core.models import build_mpmae

    d = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    f = {}
    f["scene"] = write_geotiff(d / "scene.tif", _scene(rng), NAMES, nodata=0)
    f["text_tif"] = d / "notes.tif"
    f["text_tif"].write_text("not a raster")
    f["nocrs"] = write_geotiff(d / "nocrs.tif", _scene(rng), NAMES, epsg=None, geotransform=None)
    f["geographic"] = write_geotiff(d / "geo.tif", _scene(rng), NAMES, epsg=4326,
                                    geotransform=(13.0, 0.0001, 0, 52.5, 0, -0.0001))
    f["no_b12"] = write_geotiff(d / "no_b12.tif", _scene(rng, bands=12), NAMES[:-1], nodata=0)
    f["no_b1"] = write_geotiff(d / "no_b1.tif", _scene(rng, bands=12), NAMES[1:], nodata=0)
    f["unnamed"] = write_geotiff(d / "unnamed.tif", _scene(rng), None, nodata=0)
    f["refl"] = write_geotiff(d / "refl.tif", (_scene(rng) / 10000.0).astype("float32"), NAMES)
    f["u8"] = write_geotiff(d / "u8.tif", rng.integers(1, 255, (13, 128, 128)).astype("uint8"), NAMES, nodata=0)
    f["dn10"] = write_geotiff(d / "dn10.tif", (_scene(rng) // 10).astype("uint16"), NAMES, nodata=0)
    l2a_names = [n for n in NAMES if n != "B10"]
    f["nolevel"] = write_geotiff(d / "nolevel.tif", _scene(rng, bands=12), l2a_names, nodata=0)
    f["s2msi1c"] = write_geotiff(d / "s2msi1c.tif", _scene(rng, bands=12), l2a_names, nodata=0)
    ds = gdal.Open(str(f["s2msi1c"]), gdal.GA_Update)
    ds.SetMetadataItem("PRODUCT_TYPE", "S2MSI1C")
    ds = None
    f["corrupt"] = _corrupt(d / "corrupt.tif", rng)
    f["enc"] = models_dir / "atto_test.onnx"
    f["head3"] = models_dir / "head3.onnx"
    f["text_model"] = d / "model.onnx"
    f["text_model"].write_text("this is not a model")
    enc_meta = json.loads(_read_meta(f["enc"]))
    for name, text, dim in (
            ("meta_list", json.dumps([1, 2, 3]), 320),
            ("patch0", json.dumps(dict(enc_meta, patch_size=0)), 320),
            ("patch_str", json.dumps(dict(enc_meta, patch_size="16")), 320),
            ("copied_meta", json.dumps(enc_meta), 320),  # a head graph carrying an encoder's metadata
            ("head_dim", json.dumps({"kind": "head", "embedding_dim": 64, "class_names": ["a", "b", "c"],
                                     "patch_size": 16, "output_stride": 16}), 320),
            ("head64", json.dumps({"kind": "head", "embedding_dim": 64, "class_names": ["a", "b", "c"],
                                   "patch_size": 16, "output_stride": 16}), 64)):
        (d / f"{name}.onnx").write_bytes(_model_bytes(text, dim))
        f[name] = d / f"{name}.onnx"
    from mpmae_core.runtime.models import onnx_writer

    (d / "nometa.onnx").write_bytes(onnx_writer.linear_head(np.zeros((2, 4), np.float32), np.zeros(2, np.float32)))
    f["nometa"] = d / "nometa.onnx"
    f["labels"] = _points(d / "labels.gpkg", ["water", "forest"] * 6)
    f["one_class"] = _points(d / "one.gpkg", ["water"] * 6)
    f["undefined_crs"] = _points(d / "undef.gpkg", ["water", "forest"] * 6, undefined_crs=True)
    f["a_file"] = d / "a_file"
    f["a_file"].write_text("a file where a folder should be")
    (d / "outdir.tif").mkdir()
    f["outdir"] = d / "outdir.tif"
    # checkpoints: a pickle that runs a command when loaded freely, a random file, our own atto run
    f["evil"] = d / "evil.pth"
    torch.save({"model": {}, "args": _Evil()}, f["evil"])
    f["junk_ckpt"] = d / "junk.pth"
    f["junk_ckpt"].write_bytes(bytes(rng.integers(0, 256, 4096, dtype=np.uint8)))
    run_dir = d / "atto_run"
    torch.manual_seed(0)
    save_checkpoint(run_dir / "checkpoint-00000001.pt", build_mpmae("atto", "sentinel2,lat,lon,month"),
                    {"step": 1, "epoch": 0, "batch_in_epoch": 1})
    f["atto_run"] = run_dir
    f["ckpt"] = run_dir / "checkpoint-00000001.pt"
    f["bad_config"] = d / "bad.json"
    f["bad_config"].write_text(json.dumps({"batch_size": 0}))
    _issue20_inputs(d, f, rng)
    f["dir"] = d
    return f


def _issue20_inputs(d: Path, f: dict, rng) -> None:
    """The inputs of the hostile-input sweep (issue 20): crafted checkpoints, heads on another encoder or
    with too many classes, labels without geometry or of one class, a scene as a label raster, a STAC
    JSON that is a list, a model for a newer ONNX, metadata that is not JSON."""
    import zipfile

    import onnx

    import pth_craft
    from mpmae_core import registry
    from mpmae_core.export import export_encoder
    from mpmae_core.models import build_encoder
    from mpmae_core.runtime.models import fingerprint, onnx_writer
    from mpmae_core.runtime.models.metadata import default_normalisation, head_metadata
    from mpmae_core.runtime.models.model import OnnxModel

    storage = np.arange(64, dtype=np.float32)
    for name, raw in (("stride_neg1", pth_craft.Raw(storage, 8, (8,), (-1,))),
                      ("stride_neg_huge", pth_craft.Raw(storage, 0, (8,), (-10 ** 12,))),
                      ("stride0_huge", pth_craft.Raw(storage, 0, (300_000_000,), (0,)))):
        f[name] = pth_craft.write(d / f"{name}.pth", {"norm.weight": np.ones(4, np.float32), "norm.bias": raw})
    bomb = d / "bomb.pth"
    data, _ = pth_craft.pickle_bytes({"w": pth_craft.Raw(np.zeros(1, np.float32), 0, (1,), (1,))})
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", data)
        with zf.open("archive/data/0", "w") as fh:
            for _ in range(8):
                fh.write(bytes(32 << 20))
    f["bomb"] = bomb
    torch_like = {k: v.numpy() for k, v in build_encoder("atto", patch_size=16).state_dict().items()}
    torch_like["stages.0.0.pwconv1.weight"] = np.zeros((160, 41), np.float32)
    f["wrong_shape"] = pth_craft.write(d / "wrong_shape.pth", torch_like, wrap=None)
    # a head trained on another encoder (its recorded fingerprint), and one with 300 classes
    import torch

    torch.manual_seed(7)
    other = d / "other_encoder.onnx"
    export_encoder(build_encoder("atto", patch_size=16).eval(), other, registry.S2_MMEARTH_BANDS,
                   default_normalisation(registry.S2_MMEARTH_BANDS))
    meta = head_metadata(["water", "forest", "field"], None, 320,
                         encoder=fingerprint.encoder_fingerprint(OnnxModel(other, device="cpu")))
    (d / "head_other.onnx").write_bytes(onnx_writer.linear_head(rng.normal(size=(3, 320)).astype(np.float32),
                                                                np.zeros(3, np.float32),
                                                                metadata={"mmearth": meta.to_json()}))
    f["head_other"] = d / "head_other.onnx"
    many = [f"c{i}" for i in range(300)]
    (d / "head300.onnx").write_bytes(onnx_writer.linear_head(np.zeros((300, 320), np.float32),
                                                             np.zeros(300, np.float32), metadata={"mmearth": json.dumps(
                                                                 {"kind": "head", "embedding_dim": 320,
                                                                  "class_names": many})}))
    f["head300"] = d / "head300.onnx"
    (d / "labels.csv").write_text("x,y,landuse\n330100,5821900,water\n330300,5821700,forest\n")
    f["csv_labels"] = d / "labels.csv"
    f["scene_as_labels"] = f["scene"]
    (d / "stac_list.json").write_text("[1, 2, 3]")
    f["stac_list"] = d / "stac_list.json"
    m = onnx.load(str(f["head3"]))
    m.ir_version = 99
    (d / "ir99.onnx").write_bytes(m.SerializeToString())
    f["ir99"] = d / "ir99.onnx"
    m = onnx.load(str(f["head3"]))
    for prop in m.metadata_props:
        if prop.key == "mmearth":
            prop.value = "{not json"
    (d / "badjson.onnx").write_bytes(m.SerializeToString())
    f["badjson"] = d / "badjson.onnx"


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/mmearth-pwned",))


def _read_meta(path) -> str:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta() \
        .custom_metadata_map["mmearth"]


@dataclass
class Row:
    id: str
    tool: str  # rt, qp, export, import, pretrain, evaluate
    args: list
    rc: int
    fragment: str
    outputs: list = field(default_factory=list)  # paths that must not be created (or changed)


def _rows(f):
    d = f["dir"]
    s, enc, head = str(f["scene"]), str(f["enc"]), str(f["head3"])
    out = str(d / "out" / "o.tif")
    E = lambda *a: ["embed", *map(str, a)]  # noqa: E731
    rows = [
        # --- the runtime command line -------------------------------------------------------
        Row("rt-missing-input", "rt", E(d / "nope.tif", enc, out), 2, "does not exist", [out]),
        Row("rt-not-a-raster", "rt", E(f["text_tif"], enc, out), 2, "not a raster GDAL can read", [out]),
        Row("rt-no-crs-no-geotransform", "rt", E(f["nocrs"], enc, out), 2, "Assign Projection", [out]),
        Row("rt-no-crs-names-both-fixes", "rt", E(f["nocrs"], enc, out), 2, "-a_ullr", [out]),
        Row("rt-geographic", "rt", E(f["geographic"], enc, out), 2, "geographic CRS", [out]),
        Row("rt-missing-band", "rt", E(f["no_b12"], enc, out), 2, "missing band(s) B12", [out]),
        Row("rt-unnamed-bands", "rt", E(f["unnamed"], enc, out), 2, "--band-map", [out]),
        Row("rt-band-map-not-numbers", "rt", E(s, enc, out) + ["--band-map", "1,2,x"], 2, "band map must be", [out]),
        Row("rt-band-map-count", "rt", E(s, enc, out) + ["--band-map", "1,2,3"], 2, "the band map gives 3 bands", [out]),
        Row("rt-band-map-range", "rt", E(s, enc, out) + ["--band-map", ",".join(["1"] * 11 + ["99"])], 2,
            "the raster has bands 1..13", [out]),
        Row("rt-band-map-zero", "rt", E(s, enc, out) + ["--band-map", ",".join(["0"] * 12)], 2, "start at 1", [out]),
        Row("rt-model-missing", "rt", E(s, d / "nope.onnx", out), 2, "does not exist", [out]),
        Row("rt-model-not-onnx", "rt", E(s, f["text_model"], out), 2, "not a valid ONNX model", [out]),
        Row("rt-model-no-metadata", "rt", E(s, f["nometa"], out), 2, "no MMEarth metadata", [out]),
        Row("rt-metadata-json-list", "rt", E(s, f["meta_list"], out), 2, "JSON list", [out]),
        Row("rt-patch-size-zero", "rt", E(s, f["patch0"], out), 2, "'patch_size' is 0", [out]),
        Row("rt-patch-size-string", "rt", E(s, f["patch_str"], out), 2, "'patch_size' is '16'", [out]),
        Row("rt-graph-vs-metadata", "rt", E(s, f["copied_meta"], out), 2, "does not match its MMEarth metadata", [out]),
        Row("rt-head-dim-vs-metadata", "rt", ["segment", s, enc, out, "--head", str(f["head_dim"])], 2,
            "does not match its MMEarth metadata", [out]),
        Row("rt-head-other-encoder", "rt", ["segment", s, enc, out, "--head", str(f["head64"])], 2,
            "takes 64-dim embeddings", [out]),
        Row("rt-head-as-model", "rt", ["segment", s, head, out, "--head", head], 2, "must be an encoder", [out]),
        Row("rt-encoder-without-head", "rt", ["segment", s, enc, out], 2, "encoder without a class head", [out]),
        Row("rt-output-is-input", "rt", E(s, enc, s), 2, "same file as the input", []),
        Row("rt-output-is-model", "rt", E(s, enc, enc), 2, "ends in '.onnx'", []),
        Row("rt-probabilities-is-output", "rt", ["segment", s, enc, out, "--head", head, "--probabilities", out], 2,
            "same file", [out]),
        Row("rt-probabilities-is-input", "rt", ["segment", s, enc, out, "--head", head, "--probabilities", s], 2,
            "same file as the input", [out]),
        Row("rt-output-is-folder", "rt", E(s, enc, f["outdir"]), 2, "is a folder", []),
        Row("rt-parent-is-file", "rt", E(s, enc, f["a_file"] / "o.tif"), 2, "is a file, not a folder", []),
        Row("rt-output-under-proc", "rt", E(s, enc, "/proc/mmearth/o.tif"), 2, "could not write", []),
        Row("rt-output-png", "rt", E(s, enc, d / "out" / "o.png"), 2, "ends in '.png'", [d / "out" / "o.png"]),
        Row("rt-output-xyz", "rt", E(s, enc, d / "out" / "o.xyz"), 2, "ends in '.xyz'", [d / "out" / "o.xyz"]),
        Row("rt-batch-negative", "rt", E(s, enc, out) + ["--batch", "-1"], 2, "must be 0 or more", [out]),
        Row("rt-tile-zero", "rt", E(s, enc, out) + ["--tile", "0"], 2, "must be at least 1", [out]),
        Row("rt-tile-text", "rt", E(s, enc, out) + ["--tile", "abc"], 2, "not a whole number", [out]),
        Row("rt-overlap-too-big", "rt", E(s, enc, out) + ["--tile", "128", "--overlap", "128"], 2,
            "must be smaller than the tile", [out]),
        Row("rt-tile-not-patch-multiple", "rt", E(s, enc, out) + ["--tile", "100", "--overlap", "0"], 2,
            "multiple of the model's patch size", [out]),
        Row("rt-device", "rt", E(s, enc, out) + ["--device", "gpu"], 2, "unknown device", [out]),
        Row("rt-level", "rt", E(s, enc, out) + ["--level", "l3"], 2, "unknown processing level", [out]),
        Row("rt-dn-offset", "rt", E(s, enc, out) + ["--dn-offset", "abc"], 2, "'auto' or a number", [out]),
        Row("rt-scale-zero", "rt", E(s, enc, out) + ["--scale", "0"], 2, "greater than 0", [out]),
        Row("rt-dtype", "rt", E(s, enc, out) + ["--dtype", "float64"], 2, "unknown dtype", [out]),
        Row("rt-corrupt-tiles", "rt", E(f["corrupt"], enc, out), 2, "window x", [out]),
        Row("rt-preview-extension", "rt", ["preview", s, s, str(d / "out" / "p.tif")], 2, "ends in '.tif'", []),
        # --- per-pixel heads, feature rasters, released models, many scenes --------------------
        Row("rt-train-head-no-field", "rt", ["train-head", s, enc, str(f["labels"]), str(d / "out" / "h.onnx"),
                                              "--class-field", "nope"], 2, "no field 'nope'", [d / "out" / "h.onnx"]),
        Row("rt-train-head-over-model", "rt", ["train-head", s, enc, str(f["labels"]), enc, "--class-field",
                                                "landuse"], 2, "same file", []),
        Row("rt-train-head-txt", "rt", ["train-head", s, enc, str(f["labels"]), str(d / "out" / "h.txt"),
                                         "--class-field", "landuse"], 2, "ends in '.txt'", [d / "out" / "h.txt"]),
        Row("rt-train-head-one-class", "rt", ["train-head", s, enc, str(f["one_class"]), str(d / "out" / "h.onnx"),
                                               "--class-field", "landuse"], 2, "at least two classes",
            [d / "out" / "h.onnx"]),
        Row("rt-train-head-undefined-crs", "rt", ["train-head", s, enc, str(f["undefined_crs"]),
                                                   str(d / "out" / "h.onnx"), "--class-field", "landuse"], 2,
            "no defined CRS", [d / "out" / "h.onnx"]),
        Row("rt-train-head-buffer", "rt", ["train-head", s, enc, str(f["labels"]), str(d / "out" / "h.onnx"),
                                            "--class-field", "landuse", "--buffer", "-5"], 2, "0 or more", []),
        Row("rt-features-unknown-block", "rt", ["features", s, enc, out, "--blocks", "spectra,stage9"], 2,
            "stage9", [out]),
        Row("rt-fetch-missing-file", "rt", ["fetch-model", str(d / "nope.pth"), "--out", str(d / "models")], 2,
            "does not exist", [d / "models" / "nope.onnx"]),
        Row("rt-fetch-junk", "rt", ["fetch-model", str(f["junk_ckpt"]), "--out", str(d / "models")], 2,
            "not a PyTorch checkpoint", [d / "models" / "junk.onnx"]),
        Row("rt-fetch-evil-pickle", "rt", ["fetch-model", str(f["evil"]), "--out", str(d / "models")], 2,
            "not on the allowlist", [d / "models" / "evil.onnx"]),
        Row("rt-fetch-unknown-name", "rt", ["fetch-model", "mmearth-huge", "--out", str(d / "models")], 2,
            "neither a model of the catalogue", [d / "models" / "mmearth-huge.onnx"]),
        Row("rt-fetch-bad-name", "rt", ["fetch-model", str(f["ckpt"]), "--name", "../x", "--out", str(d / "models")],
            2, "not usable as a file name", [d / "x.onnx"]),
        Row("rt-batch-no-match", "rt", ["batch", "embed", str(d / "none*.tif"), enc, str(d / "bout")], 2,
            "matches no file", []),
        Row("rt-batch-out-is-file", "rt", ["batch", "embed", s, enc, str(f["a_file"])], 2, "is a file", []),
        Row("rt-batch-encoder-without-head", "rt", ["batch", "segment", s, enc, str(d / "bout2")], 2,
            "give --head", []),
        Row("rt-unknown-command", "rt", ["frobnicate"], 2, "invalid choice", []),
        # --- the hostile-input sweep of issue 20 --------------------------------------------
        *[Row(f"rt-fetch-{k}", "rt", ["fetch-model", str(f[k]), "--out", str(d / "models")], 2, frag,
              [d / "models" / f"{k}.onnx"])
          for k, frag in (("stride_neg1", "tensor 'model.norm.bias' was refused: its stride -1 is negative"),
                          ("stride_neg_huge", "stride -1000000000000 is negative"),
                          ("stride0_huge", "has stride 0"),
                          ("bomb", "zip bomb"),
                          ("wrong_shape", "stages.0.0.pwconv1.weight has shape (160, 41) where (160, 40) is needed"))],
        Row("rt-head-on-another-encoder", "rt", ["segment", s, enc, out, "--head", str(f["head_other"])], 2,
            "was trained on the encoder 'other_encoder'", [out]),
        Row("rt-head-300-classes", "rt", ["segment", s, enc, out, "--head", str(f["head300"])], 2,
            "300 classes; class maps hold at most 254", [out]),
        Row("rt-train-head-csv-labels", "rt", ["train-head", s, enc, str(f["csv_labels"]), str(d / "h.onnx"),
                                               "--class-field", "landuse"], 2, "table without geometry",
            [d / "h.onnx"]),
        Row("rt-batch-stac-list", "rt", ["batch", "embed", str(f["stac_list"]), enc, str(d / "bout3")], 2,
            "holds a JSON list, not a STAC", []),
        Row("rt-model-newer-ir", "rt", ["segment", s, enc, out, "--head", str(f["ir99"])], 2,
            "newer than this ONNX Runtime reads", [out]),
        Row("rt-metadata-not-json-names-file", "rt", ["segment", s, enc, out, "--head", str(f["badjson"])], 2,
            "metadata of 'badjson.onnx' is not valid JSON", [out]),
        Row("finetune-one-class", "finetune", ["--image", s, "--labels", str(f["one_class"]), "--class-field",
                                              "landuse", "--encoder", str(f["ckpt"]), "--out", str(d / "ft1"),
                                              "--steps", "1"], 2, "needs at least two classes",
            [d / "ft1" / "segmenter.onnx"]),
        Row("finetune-scene-as-labels", "finetune", ["--image", s, "--labels", str(f["scene_as_labels"]),
                                                    "--encoder", str(f["ckpt"]), "--out", str(d / "ft2"),
                                                    "--steps", "1"], 2, "looks like an image",
            [d / "ft2" / "segmenter.onnx"]),
        # accepted with a warning that names the scale and the option
        Row("rt-reflectance-0-1", "rt", E(f["refl"], enc, d / "ok" / "refl.tif"), 0, "--scale"),
        Row("rt-uint8", "rt", E(f["u8"], enc, d / "ok" / "u8.tif"), 0, "8-bit"),
        Row("rt-dn-over-10", "rt", E(f["dn10"], enc, d / "ok" / "dn10.tif"), 0, "reflectance x 1000"),
        Row("rt-level-not-stated", "rt", E(f["nolevel"], enc, d / "ok" / "nolevel.tif"), 0, "assuming L2A"),
        Row("rt-offset-on-data-without", "rt", E(s, enc, d / "ok" / "off.tif") + ["--dn-offset", "5000"], 0,
            "--dn-offset"),
        # inspect
        Row("inspect-corrupt", "rt", ["inspect", str(f["corrupt"])], 0, "cannot be read"),
        Row("inspect-reflectance", "rt", ["inspect", str(f["refl"])], 0, "reflectance scaled to 0-1"),
        Row("inspect-dn-over-10", "rt", ["inspect", str(f["dn10"])], 0, "reflectance x 1000"),
        Row("inspect-no-level", "rt", ["inspect", str(f["nolevel"])], 0, "does not say its processing level"),
        Row("inspect-s2msi1c", "rt", ["inspect", str(f["s2msi1c"])], 0, "Level-1C product"),
        Row("inspect-missing-b1", "rt", ["inspect", str(f["no_b1"])], 0, "stood in for"),
        Row("inspect-bands-found", "rt", ["inspect", str(f["no_b1"])], 0, "11 of the 12 bands"),
        Row("inspect-unnamed", "rt", ["inspect", str(f["unnamed"])], 0, "SetDescription"),
        Row("inspect-no-crs", "rt", ["inspect", str(f["nocrs"])], 2, "-a_ullr"),
        # --- qgis_process -----------------------------------------------------------------
        Row("qp-fetch-stride-neg-huge", "qp", ["mmearth:fetch_model", "NAME=(the URL or FILE below)",
                                               f"FILE={f['stride_neg_huge']}"], 1, "stride -1000000000000 is negative"),
        Row("qp-fetch-stride-neg1", "qp", ["mmearth:fetch_model", "NAME=(the URL or FILE below)",
                                           f"FILE={f['stride_neg1']}"], 1, "its stride -1 is negative"),
        Row("qp-head-on-another-encoder", "qp", ["mmearth:segment", f"INPUT={s}", f"MODEL={enc}",
                                                 f"HEAD={f['head_other']}", f"OUTPUT={out}"], 1,
            "was trained on the encoder 'other_encoder'", [out]),
        Row("qp-output-is-input", "qp", ["mmearth:embed", f"INPUT={s}", f"MODEL={enc}", f"OUTPUT={s}"], 1,
            "same file as the input"),
        Row("qp-missing-input", "qp", ["mmearth:embed", f"INPUT={d / 'nope.tif'}", f"MODEL={enc}", f"OUTPUT={out}"], 1,
            "does not exist", [out]),
        Row("qp-unknown-model", "qp", ["mmearth:embed", f"INPUT={s}", "MODEL=no_such_model", f"OUTPUT={out}"], 1,
            "was not found", [out]),
        Row("qp-corrupt-tiles", "qp", ["mmearth:embed", f"INPUT={f['corrupt']}", f"MODEL={enc}", f"OUTPUT={out}"], 1,
            "could not read", [out]),
        Row("qp-output-folder", "qp", ["mmearth:embed", f"INPUT={s}", f"MODEL={enc}", f"OUTPUT={f['outdir']}"], 1,
            "is a folder"),
        Row("qp-output-under-proc", "qp", ["mmearth:embed", f"INPUT={s}", f"MODEL={enc}",
                                           "OUTPUT=/proc/mmearth/o.tif"], 1, "could not write"),
        Row("qp-graph-vs-metadata", "qp", ["mmearth:embed", f"INPUT={s}", f"MODEL={f['copied_meta']}",
                                           f"OUTPUT={out}"], 1, "does not match", [out]),
        Row("qp-band-map", "qp", ["mmearth:embed", f"INPUT={s}", f"MODEL={enc}", f"OUTPUT={out}", "BAND_MAP=1,x"],
            1, "not a list of band numbers", [out]),
        Row("qp-dn-offset", "qp", ["mmearth:embed", f"INPUT={s}", f"MODEL={enc}", f"OUTPUT={out}", "DN_OFFSET=abc"],
            1, "'auto' or a number", [out]),
        Row("qp-segment-no-head", "qp", ["mmearth:segment", f"INPUT={s}", f"MODEL={enc}", f"OUTPUT={out}"], 1,
            "encoder without a class head", [out]),
        Row("qp-head-output-is-model", "qp", ["mmearth:train_head", f"INPUT={s}", f"MODEL={enc}",
                                              f"LABELS={f['labels']}", "CLASS_FIELD=landuse", f"OUTPUT={enc}"], 1,
            "same file"),
        Row("qp-report-extension", "qp", ["mmearth:train_head", f"INPUT={s}", f"MODEL={enc}", f"LABELS={f['labels']}",
                                          "CLASS_FIELD=landuse", f"OUTPUT={d / 'out' / 'h.onnx'}",
                                          f"REPORT={d / 'out' / 'r.txt'}"], 1, "ends in '.txt'",
            [d / "out" / "h.onnx", d / "out" / "r.txt"]),
        Row("qp-one-class", "qp", ["mmearth:train_head", f"INPUT={s}", f"MODEL={enc}", f"LABELS={f['one_class']}",
                                   "CLASS_FIELD=landuse", f"OUTPUT={d / 'out' / 'h.onnx'}"], 1, "two classes",
            [d / "out" / "h.onnx"]),
        Row("qp-undefined-crs", "qp", ["mmearth:train_head", f"INPUT={s}", f"MODEL={enc}",
                                       f"LABELS={f['undefined_crs']}", "CLASS_FIELD=landuse",
                                       f"OUTPUT={d / 'out' / 'h.onnx'}"], 1, "CRS", [d / "out" / "h.onnx"]),
        Row("qp-similarity-output-is-input", "qp", ["mmearth:similarity", f"INPUT={s}", f"MODEL={enc}",
                                                    f"QUERY={f['labels']}", f"OUTPUT={s}"], 1, "same file"),
        Row("qp-inspect-no-crs", "qp", ["mmearth:inspect", f"INPUT={f['nocrs']}"], 1, "no coordinate reference"),
        # --- training command lines ----------------------------------------------------------
        Row("export-missing", "export", [str(d / "nope.pt"), "--out", str(d / "out" / "m.onnx")], 2, "does not exist",
            [d / "out" / "m.onnx"]),
        Row("export-pickle-payload", "export", [str(f["evil"]), "--out", str(d / "out" / "m.onnx")], 2,
            "not allowed", [d / "out" / "m.onnx"]),
        Row("export-junk", "export", [str(f["junk_ckpt"]), "--out", str(d / "out" / "m.onnx")], 2,
            "not a readable PyTorch checkpoint", [d / "out" / "m.onnx"]),
        Row("export-out-is-checkpoint", "export", [str(f["ckpt"]), "--out", str(f["ckpt"])], 2, "ends in '.pt'"),
        Row("export-out-extension", "export", [str(f["ckpt"]), "--out", str(d / "out" / "m.txt")], 2,
            "ends in '.txt'", [d / "out" / "m.txt"]),
        Row("export-unknown-head", "export", [str(f["ckpt"]), "--head", "corine", "--out", str(d / "out" / "m.onnx")],
            2, "unknown pretext head", [d / "out" / "m.onnx"]),
        Row("export-head-not-trained", "export", [str(f["ckpt"]), "--head", "esa_worldcover", "--out",
                                                  str(d / "out" / "m.onnx")], 2, "has no 'esa_worldcover' head",
            [d / "out" / "m.onnx"]),
        Row("import-junk", "import", [str(f["junk_ckpt"]), "--out", str(d / "out" / "c.pt")], 2,
            "not a readable PyTorch checkpoint", [d / "out" / "c.pt"]),
        Row("import-out-is-input", "import", [str(f["evil"]), "--out", str(f["evil"])], 2, "same file"),
        Row("pretrain-batch-zero", "pretrain", ["--batch-size", "0"], 2, "must be at least 1"),
        Row("pretrain-size", "pretrain", ["--size", "huge"], 2, "unknown encoder size"),
        Row("pretrain-mask-ratio", "pretrain", ["--mask-ratio", "1.5"], 2, "below 1"),
        Row("pretrain-patch", "pretrain", ["--patch-size", "12"], 2, "patch size must be one of 8, 16"),
        Row("pretrain-config-value", "pretrain", ["--config", str(f["bad_config"]), "--output-dir",
                                                   str(d / "run_cfg")], 2, "setting 'batch_size'"),
        Row("pretrain-output-under-proc", "pretrain", ["--output-dir", "/proc/mmearth-run", "--max-steps", "1"], 2,
            "could not write"),
        Row("pretrain-resume-other-size", "pretrain", ["--size", "femto", "--output-dir", str(f["atto_run"]),
                                                       "--max-steps", "1"], 2, "holds a run of another model (atto"),
        Row("pretrain-no-resume-existing", "pretrain", ["--no-resume", "--output-dir", str(f["atto_run"]),
                                                        "--max-steps", "1"], 2, "already holds a run"),
        Row("evaluate-shots", "evaluate", ["--shots", "abc"], 2, "not a list of whole numbers"),
        Row("evaluate-random-size", "evaluate", ["--random", "huge"], 2, "unknown encoder size"),
        Row("evaluate-seeds", "evaluate", ["--seeds", "0"], 2, "must be at least 1"),
        Row("evaluate-labels-missing", "evaluate", ["--image", s, "--labels", str(d / "nope.gpkg"), "--random",
                                                    "atto", "--out", str(d / "eval")], 2, "does not exist"),
    ]
    return rows


COMMANDS = {
    "rt": [PY, "-m", "mpmae_core.runtime"],
    "export": [PY, "-m", "training.export"],
    "import": [PY, "-m", "training.import_reference"],
    "pretrain": [PY, "-m", "training.pretrain"],
    "evaluate": [PY, "-m", "training.evaluate"],
    "finetune": [PY, "-m", "training.finetune"],
    "qp": [str(ROOT / "scripts" / "qgis_process"), "run"],
}


def _digest(path: Path) -> str:
    if path.is_dir():
        return "dir"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "absent"


def _snapshot(folder: Path) -> dict:
    return {p: _digest(p) for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_bad_input_table(w, tmp_path_factory):
    rows = _rows(w)
    assert len({r.id for r in rows}) == len(rows)
    assert len(rows) >= 60, len(rows)
    profile = tmp_path_factory.mktemp("qgis-profile")
    env = dict(os.environ, QGIS_CUSTOM_CONFIG_PATH=str(profile),
               MMEARTH_VENV=sys.prefix if sys.prefix != sys.base_prefix else str(ROOT / ".venv"),
               PYTHONPATH=str(ROOT))
    failures = []
    for row in rows:
        before = _snapshot(w["dir"])
        cmd = COMMANDS[row.tool] + row.args
        if row.tool == "qp":
            cmd = COMMANDS["qp"] + [row.args[0], "--"] + row.args[1:]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
        text = proc.stdout + proc.stderr
        problems = []
        if proc.returncode != row.rc:
            problems.append(f"exit {proc.returncode}, expected {row.rc}")
        if row.fragment.lower() not in text.lower():
            problems.append(f"no {row.fragment!r} in the output")
        if "Traceback (most recent call last)" in text:
            problems.append("a traceback")
        after = _snapshot(w["dir"])
        changed = [p for p, h in before.items() if after.get(p) != h]
        if changed:
            problems.append(f"inputs changed or removed: {changed}")
        partial = [p for p in after if ".partial" in p.name or "mmearth-write-test" in p.name]
        if partial:
            problems.append(f"temporary files left: {partial}")
        created = [str(o) for o in row.outputs if Path(o).exists() and Path(o) not in before]
        if created:
            problems.append(f"outputs written: {created}")
        if problems:
            failures.append(f"{row.id}: {'; '.join(problems)}\n    {text.strip()[-600:]}")
    assert not Path("/tmp/mmearth-pwned").exists()
    assert not failures, "\n".join(failures)
