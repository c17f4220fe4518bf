"""Headless inference, no torch needed: numpy, GDAL and onnxruntime only.

    python -m mpmae_core.runtime embed   INPUT.tif MODEL.onnx OUTPUT.tif [--upsample] [--dtype float16]
    python -m mpmae_core.runtime segment INPUT.tif MODEL.onnx OUTPUT.tif [--head HEAD.onnx] [--probabilities P.tif]
    python -m mpmae_core.runtime features INPUT.tif MODEL.onnx FEATURES.tif   (per-pixel spectra + hypercolumns)
    python -m mpmae_core.runtime train-head INPUT.tif MODEL.onnx LABELS.gpkg HEAD.onnx --class-field landuse
    python -m mpmae_core.runtime fetch-model mmearth-atto-1M-p8 [--out MODELS]   (or a URL, or a .pth file; --list)
    python -m mpmae_core.runtime change BEFORE.tif AFTER.tif MODEL.onnx CHANGE.tif [--labels L --class-field F --map M.tif]
    python -m mpmae_core.runtime batch embed|segment 'scenes/*.tif' MODEL.onnx OUT_DIR [--head H] [--workers N]
    python -m mpmae_core.runtime inspect INPUT.tif
    python -m mpmae_core.runtime preview SCENE.tif CLASSES.tif OUT.png   (needs matplotlib)

Bands are matched by name to the model's metadata (or --band-map 1,2,...). Tiles of --tile px
overlap by --overlap px and are blended without seams; memory stays bounded whatever the raster
size. Outputs are tiled, compressed GeoTIFFs (--cog for Cloud Optimized) written under a temporary
name and renamed when complete; Ctrl-C leaves no half file.
"""

from __future__ import annotations

import argparse
import sys
import time
from mpmae_core.runtime.cli import program as program_name


class Bar:
    def __init__(self, label: str):
        self.label, self.t0, self.last = label, time.time(), -1.0

    def __call__(self, fraction: float) -> None:
        now = time.time()
        if fraction < 1 and now - self.last < 0.2:
            return
        self.last = now
        elapsed = now - self.t0
        eta = elapsed / fraction - elapsed if fraction > 0 else 0
        filled = int(30 * fraction)
        sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] {fraction:5.1%} "
                         f"elapsed {elapsed:5.1f} s, ETA {eta:5.1f} s")
        if fraction >= 1:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _band_map(text):
    if not text:
        return None
    try:
        values = [int(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"band map must be comma-separated band numbers such as 1,2,3, got {text!r}") \
            from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"band numbers start at 1, got {text!r}")
    return values


def _window(text):
    try:
        values = [int(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"window must be x,y,width,height in pixels, got {text!r}") from None
    if len(values) != 4 or min(values) < 0 or min(values[2:]) < 1:
        raise argparse.ArgumentTypeError(f"window must be four numbers x,y >= 0 and width,height >= 1, got {text!r}")
    return values


AOI_HELP = ("an area of interest: a polygon layer (file, or file|layer), or an extent xmin,ymin,xmax,ymax in the "
            "raster's CRS (add ,EPSG:NNNN for another); reading, compute and outputs are cut to it")


def add_mask_arguments(parser) -> None:
    """--aoi and the mask options, for every command that reads a raster."""
    from mpmae_core.runtime import cli

    parser.add_argument("--aoi", help=AOI_HELP)
    parser.add_argument("--mask", help="also no data: a mask raster on the input's grid (non-zero masks) or a polygon "
                                       "layer (inside masks)")
    parser.add_argument("--mask-dilate", type=cli.non_negative_int, default=0, metavar="N",
                        help="grow every mask by N pixels (cloud edges leak; default 0)")
    parser.add_argument("--mask-snow", action="store_true", help="mask snow and ice too (the product's SCL or "
                                                                 "classification mask)")
    parser.add_argument("--cloud-probability", type=cli.positive_float, metavar="PERCENT",
                        help="also mask pixels whose cloud probability (L2A MSK_CLDPRB) is at least PERCENT")
    parser.add_argument("--no-product-mask", action="store_true",
                        help="do not apply the product's own quality layer (clouds are then read as land)")


SERIES_HELP = ("the input is a series of dates of one place (needed for a folder of them; a quoted glob, paths "
               "separated by commas or a .txt list of paths are series anyway)")


def add_series_arguments(parser) -> None:
    """--series, --dates, --reference, --min-valid: a series of dates as the input."""
    from mpmae_core.runtime import cli

    parser.add_argument("--series", action="store_true", default=None, help=SERIES_HELP)
    parser.add_argument("--dates", type=lambda t: [d.strip() for d in t.split(",") if d.strip()],
                        help="a series' dates, YYYY-MM-DD,... in the members' order, when their metadata and names "
                             "do not say")
    parser.add_argument("--reference", type=cli.non_negative_int, default=0,
                        help="a series' reference member (in date order, from 0): its grid, and its own single-date "
                             "features (default 0, the first date)")
    parser.add_argument("--min-valid", type=cli.positive_int, default=1,
                        help="a series' pixels with fewer valid (unmasked) dates are no data (default 1)")
    parser.add_argument("--seasons", type=_seasons, default=(),
                        help="windows of the year, MM-DD:MM-DD,... (e.g. 03-01:05-31,06-01:08-31): a series' median "
                             "spectra within each join the temporal features (a head trained with them maps with "
                             "them by itself)")


def _seasons(text: str) -> list:
    from mpmae_core.runtime.inference.temporal import parse_season

    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        for item in items:
            parse_season(item)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return items


def add_embedding_arguments(parser) -> None:
    """--embedding, --embedding-kind: another model's embedding beside the raster."""
    from mpmae_core import registry
    from mpmae_core.runtime import cli

    parser.add_argument("--embedding", help="another model's embedding of the place (an AlphaEarth or TESSERA file, "
                                            "or any float raster with --embedding-kind embedding): its own feature "
                                            "sets join the head's candidates")
    parser.add_argument("--embedding-kind", type=cli.choice_of(list(registry.EMBEDDING_SOURCES), "embedding kind"),
                        help="what the embedding file is, when it does not say: " +
                             ", ".join(registry.EMBEDDING_SOURCES))


def series_options(args) -> dict:
    return dict(series=args.series, dates=args.dates, reference=args.reference, min_valid=args.min_valid,
                seasons=args.seasons)


def add_run_arguments(parser) -> None:
    """How a command without the common positional arguments reads and runs: tiles, device, level,
    offset, scale, band map."""
    from mpmae_core import registry
    from mpmae_core.runtime import cli
    from mpmae_core.runtime.inference.tiling import DEFAULT_OVERLAP, DEFAULT_TILE

    parser.add_argument("--tile", type=cli.positive_int, default=DEFAULT_TILE)
    parser.add_argument("--overlap", type=cli.non_negative_int, default=DEFAULT_OVERLAP)
    parser.add_argument("--device", default="auto", type=cli.choice_of(["auto", "cpu", "cuda"], "device"))
    parser.add_argument("--level", default="auto", type=cli.choice_of(registry.level_choices(), "processing level"))
    parser.add_argument("--dn-offset", default="auto", type=cli.dn_offset)
    parser.add_argument("--scale", type=cli.positive_float, default=1.0)
    parser.add_argument("--band-map", type=_band_map)


def mask_options(args):
    """The MaskOptions the arguments ask for, or None for the defaults."""
    from mpmae_core.runtime.io.masks import MaskOptions

    opts = MaskOptions(product=not args.no_product_mask, snow=args.mask_snow, cloud_probability=args.cloud_probability,
                       user=args.mask, dilate=args.mask_dilate)
    return None if opts == MaskOptions() else opts


def _users_accuracy(text: str):
    text = text.strip()
    try:
        if "=" not in text:
            return float(text)
        out = {}
        for part in text.split(","):
            name, _, value = part.partition("=")
            out[name.strip()] = float(value)
        return out
    except ValueError:
        raise argparse.ArgumentTypeError(f"the user's accuracy must be a number such as 0.8, or class=value,... "
                                         f"(got {text!r})") from None


def build_parser() -> argparse.ArgumentParser:
    from mpmae_core import registry
    from mpmae_core.runtime import cli
    from mpmae_core.runtime.inference.tiling import DEFAULT_OVERLAP, DEFAULT_TILE
    from mpmae_core.runtime.inference.pixel_features import ALL_FEATURE_SETS

    p = argparse.ArgumentParser(prog=program_name("python -m mpmae_core.runtime"), description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("input")
    common.add_argument("model")
    common.add_argument("output")
    common.add_argument("--tile", type=cli.positive_int, default=DEFAULT_TILE,
                        help="largest tile side in pixels (multiple of the patch size)")
    common.add_argument("--overlap", type=cli.non_negative_int, default=DEFAULT_OVERLAP,
                        help="least overlap between tiles in pixels")
    common.add_argument("--batch", type=cli.non_negative_int, default=0,
                        help="tiles per model call (default 0: 1 on CPU, 8 on CUDA)")
    common.add_argument("--device", default="auto", type=cli.choice_of(["auto", "cpu", "cuda"], "device"))
    common.add_argument("--level", default="auto", type=cli.choice_of(registry.level_choices(), "processing level"),
                        help="Sentinel-2 processing level: " + ", ".join(registry.level_choices()))
    common.add_argument("--dn-offset", default="auto", type=cli.dn_offset,
                        help="DN offset to subtract: auto, 0, or 1000 (baseline >= 04.00)")
    common.add_argument("--scale", type=cli.positive_float, default=1.0,
                        help="multiply raw values by this first: 10000 for reflectance 0-1, 10 for reflectance x 1000")
    common.add_argument("--band-map", type=_band_map,
                        help="raster band numbers feeding the model's bands, in order (a number may repeat)")
    common.add_argument("--cog", action="store_true", help="write a Cloud Optimized GeoTIFF")
    add_mask_arguments(common)
    e = sub.add_parser("embed", parents=[common], help="embedding raster")
    e.add_argument("--upsample", action="store_true", help="embeddings per pixel instead of per patch")
    e.add_argument("--dtype", default="float32", type=cli.choice_of(["float32", "float16"], "dtype"))
    s = sub.add_parser("segment", parents=[common], help="class map",
                       description="The model may be 'none' when the input is another model's embedding read alone "
                                   "and the head (--head) was trained on it.")
    s.add_argument("--head", help="a head model on the encoder's embeddings (e.g. a few-shot head)")
    s.add_argument("--probabilities", help="also write class probabilities to this file")
    add_series_arguments(s)
    add_embedding_arguments(s)
    f = sub.add_parser("features", parents=[common], help="per-pixel feature raster (spectra and every encoder stage)")
    add_series_arguments(f)
    f.add_argument("--blocks", type=lambda t: [b for b in t.replace(" ", "").split(",") if b],
                   help="comma-separated blocks to keep: spectra, stage1, stage2, stage3, embedding (default all)")
    f.add_argument("--dtype", default="float32", type=cli.choice_of(["float32", "float16"], "dtype"))
    h = sub.add_parser("train-head", help="per-pixel few-shot head from labelled points or polygons")
    h.add_argument("input", help="a Sentinel-2 raster or product (or a series of them), or another model's "
                                 "embedding read alone (with the model 'none')")
    h.add_argument("model", help="the encoder (.onnx), or 'none' when the input is another model's embedding "
                                 "(AlphaEarth, a TESSERA tile, or a float raster with --embedding-kind embedding)")
    h.add_argument("labels", help="a vector file of labelled points or polygons (any CRS)")
    h.add_argument("output", help="the head (.onnx)")
    h.add_argument("--class-field", required=True, help="the field holding each feature's class")
    h.add_argument("--report", help="also write an HTML report")
    h.add_argument("--buffer", type=cli.non_negative_float, default=0.0,
                   help="a point labels the pixels within this many metres (default 0: its own pixel)")
    h.add_argument("--feature-sets", type=cli.list_of(list(ALL_FEATURE_SETS), "feature set"),
                   help="feature sets to try (default spectra,encoder,both; on a series also the temporal "
                        "t-spectra,t-encoder,t-both)")
    h.add_argument("--classifiers", type=cli.list_of(["logistic", "forest"], "classifier"),
                   default=["logistic", "forest"], help="classifiers to try (default logistic,forest)")
    h.add_argument("--max-pixels", type=cli.positive_int, default=1000, help="most labelled pixels per class")
    h.add_argument("--features", help="a precomputed per-pixel feature raster (the features command) to reuse")
    h.add_argument("--block-size", type=cli.positive_float, metavar="METRES",
                   help="the side of the spatial blocks the candidates are cross-validated in (default: from the "
                        "labels' spread; the report says which)")
    h.add_argument("--choose-on", default="grouped", type=cli.choice_of(["grouped", "spatial"], "folds"),
                   help="the folds the candidates are chosen on: grouped (by labelled feature; default, it made the "
                        "better maps on the embedded scene) or spatial (blocks of the map); the report shows both "
                        "figures either way")
    add_run_arguments(h)
    add_mask_arguments(h)
    add_series_arguments(h)
    add_embedding_arguments(h)
    cf = sub.add_parser("compare-features", help="which features map this place best? every source on your labels "
                                                 "(and a validation sample)")
    cf.add_argument("input", help="a Sentinel-2 raster or product (or a series), or another model's embedding read "
                                  "alone (with the model 'none')")
    cf.add_argument("model", help="the encoder (.onnx), or 'none' when the input is another model's embedding")
    cf.add_argument("labels", help="a vector file of labelled points or polygons (any CRS)")
    cf.add_argument("--class-field", required=True, help="the field holding each feature's class")
    cf.add_argument("--validation", help="a validation sample (sample-design's points, each given its reference "
                                         "class): every source's head is also assessed at its points")
    cf.add_argument("--reference-field", default="reference", help="the validation points' field of reference "
                                                                   "classes (default reference)")
    cf.add_argument("--report", help="also write the table as an HTML page")
    cf.add_argument("--table", help="also write the table as CSV")
    cf.add_argument("--feature-sets", type=cli.list_of(list(ALL_FEATURE_SETS), "feature set"),
                    help="the feature sets to compare (default: every set the input offers)")
    cf.add_argument("--classifiers", type=cli.list_of(["logistic", "forest"], "classifier"),
                    default=["logistic", "forest"], help="classifiers each set may choose (default logistic,forest)")
    cf.add_argument("--buffer", type=cli.non_negative_float, default=0.0,
                    help="a point labels the pixels within this many metres (default 0: its own pixel)")
    cf.add_argument("--block-size", type=cli.positive_float, metavar="METRES",
                    help="the side of the spatial cross-validation blocks (default: from the labels' spread)")
    add_run_arguments(cf)
    add_mask_arguments(cf)
    add_series_arguments(cf)
    add_embedding_arguments(cf)
    sm = sub.add_parser("similarity", help="similarity map: how much each place resembles a few query points")
    sm.add_argument("input", help="a Sentinel-2 raster or product, or another model's embedding (AlphaEarth, a "
                                  "TESSERA tile) with the model 'none'")
    sm.add_argument("model", help="the encoder (.onnx), or 'none' when the input is another model's embedding")
    sm.add_argument("queries", help="a vector file of query points or polygons (any CRS)")
    sm.add_argument("output", help="the similarity map (.tif): centred cosine similarity, 1 = the same")
    sm.add_argument("--embeddings", help="an embedding raster of the input computed before (embed), to reuse")
    sm.add_argument("--aggregate", default="max", type=cli.choice_of(["max", "mean"], "aggregate"),
                    help="several queries: max (the best match, default) or mean (their average)")
    add_run_arguments(sm)
    add_mask_arguments(sm)
    fm = sub.add_parser("fetch-model", help="download a released MMEarth model and convert it, without torch")
    fm.add_argument("model", nargs="?", help="a catalogue name (see --list), an http(s) URL or a checkpoint file")
    fm.add_argument("--out", default=None, help="the models folder (default $MMEARTH_MODELS, else ./models)")
    fm.add_argument("--list", action="store_true", help="show the catalogue and what is installed")
    fm.add_argument("--name", help="install under this name (default: the catalogue's, or the file's)")
    fm.add_argument("--sha256", help="the expected SHA-256 of the download")
    fm.add_argument("--base-url", help="download from this mirror instead of the catalogue's address")
    fm.add_argument("--no-heads", action="store_true", help="the encoder only, no landcover heads")
    fm.add_argument("--keep-download", action="store_true", help="keep the downloaded checkpoint in the cache")
    bt = sub.add_parser("batch", help="embed or map many scenes on a Dask cluster")
    bt.add_argument("mode", type=cli.choice_of(["embed", "segment"], "batch mode"))
    bt.add_argument("inputs", help="a glob (quoted), a text file of paths, a STAC ItemCollection/catalogue JSON, "
                                   "or a raster/VRT")
    bt.add_argument("model")
    bt.add_argument("out_dir")
    bt.add_argument("--head", help="a head model (segment with an encoder)")
    bt.add_argument("--workers", type=cli.positive_int, default=2, help="processes of the local cluster")
    bt.add_argument("--scheduler", help="a running Dask scheduler, e.g. tcp://HOST:8786 (instead of a local cluster)")
    bt.add_argument("--rows-per-task", type=cli.positive_int, default=8,
                    help="tile rows per task: a scene taller than this is split across tasks")
    for name, kw in (("--tile", dict(type=cli.positive_int, default=DEFAULT_TILE)),
                     ("--overlap", dict(type=cli.non_negative_int, default=DEFAULT_OVERLAP)),
                     ("--batch", dict(type=cli.non_negative_int, default=0)),
                     ("--device", dict(default="auto", type=cli.choice_of(["auto", "cpu", "cuda"], "device"))),
                     ("--level", dict(default="auto", type=cli.choice_of(registry.level_choices(), "processing level"))),
                     ("--dn-offset", dict(default="auto", type=cli.dn_offset)),
                     ("--scale", dict(type=cli.positive_float, default=1.0)),
                     ("--band-map", dict(type=_band_map)),
                     ("--dtype", dict(default="float32", type=cli.choice_of(["float32", "float16"], "dtype")))):
        bt.add_argument(name, **kw)
    add_mask_arguments(bt)
    add_series_arguments(bt)
    i = sub.add_parser("inspect", help="can this raster feed a model, and how do its bands map?")
    i.add_argument("input")
    i.add_argument("--source", default=registry.DEFAULT_SOURCE, type=cli.choice_of(list(registry.SOURCES), "input source"),
                   help="the input source to assess against: " + "; ".join(
                       f"{s.name} ({s.summary or s.title})" for s in registry.SOURCES.values()))
    st = sub.add_parser("stack", help="a Sentinel-2 product, STAC item or band folder as one 10 m stack to look at")
    st.add_argument("input", help="a SAFE .zip, .SAFE folder or MTD_*.xml, a STAC item JSON, or a folder of band files")
    st.add_argument("output", help="a .vrt (a few kilobytes, pointing at the product), or a .tif with --cog")
    st.add_argument("--cog", action="store_true", help="write a Cloud-Optimised GeoTIFF, with the masks as a "
                                                      "last band MASK")
    add_mask_arguments(st)
    sf = sub.add_parser("series-features", help="temporal spectral features of several dates of one place")
    sf.add_argument("series", help="the dates: a glob (quoted), a folder, a text file of paths, or paths separated "
                                   "by commas (products or rasters)")
    sf.add_argument("model", help="the model whose bands and normalisation the spectra follow")
    sf.add_argument("output", help="the feature raster (.tif): median, 10th and 90th percentile, standard deviation "
                                   "of every band over the valid dates, and their count")
    sf.add_argument("--dates", type=lambda t: [d.strip() for d in t.split(",") if d.strip()],
                    help="YYYY-MM-DD,... in the members' order, when their metadata and names do not say")
    sf.add_argument("--min-valid", type=cli.positive_int, default=1,
                    help="pixels with fewer valid (unmasked) dates are no data (default 1)")
    sf.add_argument("--grid", type=cli.non_negative_int, default=0,
                    help="the member (in date order, from 0) whose grid the others are brought onto")
    sf.add_argument("--seasons", type=_seasons, default=(),
                    help="windows of the year, MM-DD:MM-DD,...: also the median of every band within each")
    add_mask_arguments(sf)
    ch = sub.add_parser("change", help="change between two dates or two periods: distances, and with labelled change "
                                       "types a change map")
    ch.add_argument("before", help="the earlier date (a raster or product) or period (a series: a quoted glob, paths "
                                   "separated by commas, a text file of paths)")
    ch.add_argument("after", help="the later date or period; brought onto the grid of the earlier")
    ch.add_argument("model", help="the encoder, or 'none' when both sides are another model's embedding (two years of "
                                   "AlphaEarth, say): the cosine distance of their vectors")
    ch.add_argument("output", help="the change raster (.tif): cosine distance of the encoder's features, and the "
                                   "spectral change, with a suggested threshold (Otsu) on each")
    ch.add_argument("--labels", help="labelled examples of change types (e.g. 'no change', 'forest to field'): also "
                                     "train a change head and map the change types (--map)")
    ch.add_argument("--class-field", help="with --labels: the field holding each example's change type")
    ch.add_argument("--head", help="a change head trained before (instead of --labels): map the change types (--map)")
    ch.add_argument("--map", help="the change-type map (.tif), with --labels or --head")
    ch.add_argument("--head-out", help="with --labels: where to save the change head (default beside the map)")
    ch.add_argument("--report", help="with --labels: the head's HTML report")
    ch.add_argument("--before-dates", type=lambda t: [d.strip() for d in t.split(",") if d.strip()],
                    help="the earlier period's dates, YYYY-MM-DD,..., when its members' names and metadata do not say")
    ch.add_argument("--after-dates", type=lambda t: [d.strip() for d in t.split(",") if d.strip()],
                    help="the later period's dates")
    ch.add_argument("--min-valid", type=cli.positive_int, default=1,
                    help="a period's pixels with fewer valid dates are no data (default 1)")
    add_run_arguments(ch)
    add_mask_arguments(ch)
    sd = sub.add_parser("sample-design", help="a stratified random validation sample of a class map")
    sd.add_argument("map", help="a class map (from segment, or any one-band class raster)")
    sd.add_argument("output", help="the validation points (.gpkg), with an empty 'reference' field to fill in")
    sd.add_argument("--target-se", type=cli.positive_float, default=0.01,
                    help="the standard error of overall accuracy to aim for (default 0.01; Olofsson et al. 2014, "
                         "eq. 13)")
    sd.add_argument("--users-accuracy", default="0.8", type=_users_accuracy,
                    help="the anticipated user's accuracy: one number for every class (default 0.8), or "
                         "class=value,... per class")
    sd.add_argument("--min-per-class", type=cli.non_negative_int, default=50, help="points per class at least "
                                                                                   "(default 50)")
    sd.add_argument("--size", type=cli.positive_int, help="the total number of points, instead of eq. 13's")
    sd.add_argument("--exclude", help="the training labels (a vector file): no validation point near them")
    sd.add_argument("--buffer", type=cli.non_negative_float, default=0.0,
                    help="with --exclude: no point within this many metres of a label (default 0: off the labels' "
                         "pixels)")
    sd.add_argument("--seed", type=int, default=0)
    asr = sub.add_parser("assess", help="accuracy and area with confidence intervals, from labelled validation points")
    asr.add_argument("map", help="the class map the points were drawn on")
    asr.add_argument("points", help="the validation points, each with its reference class")
    asr.add_argument("report", help="the HTML report; a .csv and a .json of every figure are written beside it")
    asr.add_argument("--reference-field", default="reference", help="the field of the reference classes "
                                                                    "(default reference)")
    asr.add_argument("--strata", help="the strata raster the sample was drawn in (default: the map's classes)")
    asr.add_argument("--design", default="stratified", type=cli.choice_of(["stratified", "simple"], "sample design"),
                     help="stratified (default) or simple (a simple random sample)")
    v = sub.add_parser("preview", help="PNG of a class map next to its scene in natural colour")
    v.add_argument("scene")
    v.add_argument("classes")
    v.add_argument("output")
    v.add_argument("--title", default="")
    v.add_argument("--compare", action="append", default=[], help="another class map to show beside (repeatable)")
    v.add_argument("--panel-titles", type=lambda t: [p.strip() for p in t.split("|")],
                   help="titles of the class-map panels, separated by |")
    v.add_argument("--window", type=_window, help="x,y,width,height in pixels: zoom in")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from mpmae_core.runtime.cli import run_main
    from mpmae_core.runtime.io.gdal_io import RasterError
    from mpmae_core.runtime.models.metadata import MetadataError
    from mpmae_core.runtime.models.model import ModelError
    from mpmae_core.runtime.inference.predict import Cancelled

    log = lambda m: print(f"[mmearth] {m}", file=sys.stderr)  # noqa: E731

    def body() -> int:
        import os

        from mpmae_core.runtime.inference.predict import embed, segment

        if "GDAL_CACHEMAX" not in os.environ:
            # GDAL's block cache defaults to 5 % of RAM and would dominate peak memory on large rasters;
            # output rows are written once, so a small cache costs nothing.
            from mpmae_core.runtime.io.gdal_io import gdal

            gdal().SetCacheMax(256 * 1024 * 1024)
        if args.cmd == "inspect":
            from mpmae_core.runtime.io.embeddings import inspect_embedding
            from mpmae_core.runtime.io.inspect import inspect_raster, summary_lines

            lines = inspect_embedding(args.input)  # AlphaEarth, TESSERA: what they are, not as a model's input
            print("\n".join(lines if lines is not None else summary_lines(inspect_raster(args.input,
                                                                                         source=args.source))))
            return 0
        if args.cmd == "stack":
            from mpmae_core.runtime.io.stack import write_stack

            res = write_stack(args.input, args.output, cog=args.cog, aoi=args.aoi, masks=mask_options(args), log=log)
            log(f"wrote {res['output']}: bands {', '.join(res['bands'])}; level {res['level'].upper() or 'unknown'}")
            return 0
        if args.cmd == "series-features":
            from mpmae_core.runtime.inference.series import series_features

            res = series_features(args.series, args.model, args.output, dates=args.dates, min_valid=args.min_valid,
                                  grid=args.grid, masks=mask_options(args), aoi=args.aoi, seasons=args.seasons,
                                  progress=Bar("series"), log=log)
            log(f"wrote {res['output']}: {len(res['bands'])} bands from {len(res['dates'])} dates")
            return 0
        if args.cmd == "change":
            return change_command(args, log)
        if args.cmd == "sample-design":
            from mpmae_core.runtime.heads.validation import sample_design

            sample_design(args.map, args.output, target_se=args.target_se, users_accuracy=args.users_accuracy,
                          min_per_class=args.min_per_class, size=args.size, exclude_labels=args.exclude,
                          buffer_m=args.buffer, seed=args.seed, log=log)
            return 0
        if args.cmd == "assess":
            from pathlib import Path

            from mpmae_core.runtime.heads.validation import assess_map

            report = Path(args.report)
            if report.suffix.lower() not in (".html", ".htm"):
                raise ValueError(f"the report '{report}' must be an .html file (a .csv and a .json are written "
                                 "beside it)")
            assess_map(args.map, args.points, args.reference_field, strata=args.strata, design=args.design,
                       report=report, table=report.with_suffix(".csv"), figures=report.with_suffix(".json"), log=log)
            log(f"wrote {report}, {report.with_suffix('.csv')}, {report.with_suffix('.json')}")
            return 0
        if args.cmd == "preview":
            from mpmae_core.runtime.io.files import check_output
            from mpmae_core.runtime.io.preview import side_by_side

            check_output(args.output, [args.scene, args.classes] + args.compare, "preview", (".png",), "a PNG image")
            out = side_by_side(args.scene, [args.classes] + args.compare, args.output, args.title, args.panel_titles,
                               args.window)
            log(f"wrote {out}")
            return 0
        if args.cmd == "train-head":
            return train_head_command(args, log)
        if args.cmd == "similarity":
            return similarity_command(args, log)
        if args.cmd == "compare-features":
            return compare_features_command(args, log)
        if args.cmd == "fetch-model":
            return fetch_model_command(args, log)
        if args.cmd == "batch":
            return batch_command(args, log)
        common_kw = dict(tile=args.tile, overlap=args.overlap, batch=args.batch, device=args.device, level=args.level,
                         dn_offset=args.dn_offset, band_map=args.band_map, scale=args.scale, cog=args.cog,
                         progress=Bar(args.cmd), log=log, aoi=args.aoi, masks=mask_options(args))
        try:
            if args.cmd == "embed":
                res = embed(args.input, args.model, args.output, dtype=args.dtype, upsample=args.upsample, **common_kw)
            elif args.cmd == "features":
                from mpmae_core.runtime.inference.predict import features

                res = features(args.input, args.model, args.output, blocks=args.blocks, dtype=args.dtype, **common_kw,
                               **series_options(args))
            else:
                res = segment(args.input, args.model, args.output, head_path=args.head,
                              probabilities_path=args.probabilities, embedding=args.embedding,
                              embedding_kind=args.embedding_kind, **common_kw, **series_options(args))
        except Cancelled:
            raise KeyboardInterrupt from None
        level = "" if res["level"] == "embedding" else f"; input level {res['level'].upper()}"
        log(f"wrote {res['output']} on {res['provider']}: {res['run']} tiles run, {res['skipped']} empty tiles "
            f"skipped{level}")
        return 0

    return run_main(body, (RasterError, ModelError, MetadataError, ValueError),
                    interrupted=lambda: "no output written", prog="python -m mpmae_core.runtime")


def batch_command(args, log) -> int:
    from mpmae_core.runtime.batch import run_batch

    options = dict(tile=args.tile, overlap=args.overlap, batch=args.batch, level=args.level, dn_offset=args.dn_offset,
                   scale=args.scale, band_map=args.band_map, aoi=args.aoi, masks=mask_options(args))
    if args.mode == "embed":
        options["dtype"] = args.dtype
    if args.series:  # INPUTS are the dates of one series, mapped in blocks of tile rows across the workers
        options.update(series_options(args))
    report = run_batch(args.mode, args.inputs, args.model, args.out_dir, head=args.head, workers=args.workers,
                       scheduler=args.scheduler, rows_per_block=args.rows_per_task, options=options,
                       device=args.device, progress=Bar("batch"), log=log)
    print(report.text())
    log(f"report: {args.out_dir}/batch_report.json")
    return 3 if report.failed else 0  # 3: some scenes failed (the report names them and why)


def fetch_model_command(args, log) -> int:
    import os

    from mpmae_core.runtime.releases.fetch import fetch_model, list_models
    from mpmae_core.runtime.inference.predict import Cancelled

    out = args.out or os.environ.get("MMEARTH_MODELS") or "models"
    if args.list:
        print("\n".join(list_models(out)))
        return 0
    if not args.model:
        raise ValueError("give a model: a catalogue name (see --list), an http(s) URL or a checkpoint file")
    bar = Bar("fetch-model")
    try:
        res = fetch_model(args.model, out, name=args.name, base_url=args.base_url, sha256=args.sha256,
                          heads=not args.no_heads, keep_download=args.keep_download, progress=bar, log=log)
    except Cancelled as exc:
        log(str(exc))
        raise KeyboardInterrupt from None
    log(f"wrote {res['encoder']} ({res['description']})")
    for task, path in res["segmenters"].items():
        log(f"wrote {path} (landcover with no labels: {task})")
    log(f"use it by name: MODEL={res['name']} in QGIS, or {res['encoder']} on the command line")
    return 0


def change_command(args, log) -> int:
    from mpmae_core.runtime.heads.change import change_map
    from mpmae_core.runtime.inference.change import change_magnitude
    from mpmae_core.runtime.inference.predict import Cancelled

    if args.labels and not args.class_field:
        raise ValueError("--labels needs --class-field: the field holding each example's change type")
    if args.labels and args.head:
        raise ValueError("give --labels (to train a change head) or --head (one trained before), not both")
    if (args.labels or args.head) and not args.map:
        raise ValueError("--labels and --head map the change types: give the map's file with --map")
    if args.map and not (args.labels or args.head):
        raise ValueError("--map needs labelled change types (--labels, --class-field) or a change head (--head)")
    kw = dict(tile=args.tile, overlap=args.overlap, device=args.device, level=args.level, dn_offset=args.dn_offset,
              scale=args.scale, band_map=args.band_map, aoi=args.aoi, masks=mask_options(args),
              before_dates=args.before_dates, after_dates=args.after_dates, min_valid=args.min_valid, log=log)
    try:
        res = change_magnitude(args.before, args.after, args.model, args.output, progress=Bar("change"), **kw)
        log(f"wrote {res['output']}")
        if args.map:
            features = names = ids = None
            if args.labels:
                from mpmae_core.runtime.inference.series import reference_source
                from mpmae_core.runtime.io.gdal_io import open_raster
                from mpmae_core.runtime.io.labels import read_label_file
                from mpmae_core.runtime.io.products import stack_path

                from mpmae_core.runtime.inference.embedding_sources import EmbeddingRaster, without_model

                wkt = EmbeddingRaster(args.before).projection if without_model(args.model) else \
                    open_raster(stack_path(reference_source(args.before, dates=args.before_dates))).GetProjection()
                features, names, ids, _ = read_label_file(args.labels, args.class_field, wkt)
                log(f"{len(features)} labelled examples of {len(names)} change types: {', '.join(names)}")
            out = change_map(args.before, args.after, args.model, args.map, head_path=args.head, features=features,
                             class_names=names, feature_ids=ids, head_output=args.head_out, report_path=args.report,
                             progress=Bar("change map"), **kw)
            if "training" in out:
                print(out["training"]["text"])
            log(f"wrote {out['output']} with the head {out['head']}")
    except Cancelled:
        raise KeyboardInterrupt from None
    return 0


def similarity_command(args, log) -> int:
    from mpmae_core.runtime.inference.embedding_sources import EmbeddingRaster, without_model
    from mpmae_core.runtime.inference.predict import Cancelled
    from mpmae_core.runtime.inference.similarity import similarity
    from mpmae_core.runtime.io.embeddings import is_tessera_tile
    from mpmae_core.runtime.io.gdal_io import open_raster
    from mpmae_core.runtime.io.labels import read_label_file
    from mpmae_core.runtime.io.products import stack_path

    alone = without_model(args.model)
    if alone and args.embeddings:
        raise ValueError("without an encoder model the input itself is the embedding: leave --embeddings out")
    emb = args.input if alone else args.embeddings
    if emb and is_tessera_tile(emb):
        wkt = EmbeddingRaster(emb).projection
    else:
        wkt = open_raster(emb or stack_path(args.input)).GetProjection()
    queries, _, _, _ = read_label_file(args.queries, None, wkt)
    try:
        res = similarity(None if alone else args.input, None if alone else args.model, [wkb for wkb, _ in queries],
                         args.output, embeddings=args.input if alone else args.embeddings, aggregate=args.aggregate,
                         tile=args.tile, overlap=args.overlap, device=args.device, level=args.level,
                         dn_offset=args.dn_offset, scale=args.scale, band_map=args.band_map, aoi=args.aoi,
                         masks=mask_options(args), progress=Bar("similarity"), log=log)
    except Cancelled:
        raise KeyboardInterrupt from None
    log(f"wrote {res['output']}: {res['queries']} query cell(s), similarity from {res['min']:.2f} to "
        f"{res['max']:.2f}")
    return 0


def label_projection(args) -> str:
    """The CRS the labels go onto: the embedding's read alone, else the (reference) raster's."""
    from mpmae_core import registry
    from mpmae_core.runtime.inference.embedding_sources import EmbeddingRaster, without_model
    from mpmae_core.runtime.inference.series import reference_source
    from mpmae_core.runtime.io.gdal_io import open_raster
    from mpmae_core.runtime.io.products import stack_path

    if without_model(args.model):
        kind = args.embedding_kind
        return EmbeddingRaster(args.input, registry.EMBEDDING_SOURCES[kind] if kind else None).projection
    return open_raster(stack_path(reference_source(args.input, **series_options(args)))).GetProjection()


def read_labels(args, log) -> tuple:
    from mpmae_core.runtime.io.labels import read_label_file

    features, names, ids, notes = read_label_file(args.labels, args.class_field, label_projection(args))
    for what, n in (("without a geometry", notes["no_geometry"]), ("without a class value", notes["no_class"])):
        if n:
            log(f"warning: skipped {n} feature(s) {what}")
    log(f"{len(features)} labelled features in {len(names)} classes: {', '.join(names)}")
    return features, names, ids


def compare_features_command(args, log) -> int:
    from mpmae_core.runtime.heads.compare import compare_features
    from mpmae_core.runtime.inference.predict import Cancelled

    features, names, ids = read_labels(args, log)
    try:
        res = compare_features(args.input, args.model, features, names, validation=args.validation,
                               reference_field=args.reference_field, report=args.report, table=args.table,
                               feature_ids=ids, feature_sets=args.feature_sets, classifiers=args.classifiers,
                               buffer_m=args.buffer, block_m=args.block_size, tile=args.tile, overlap=args.overlap,
                               device=args.device, level=args.level, dn_offset=args.dn_offset, scale=args.scale,
                               band_map=args.band_map, aoi=args.aoi, masks=mask_options(args),
                               embedding=args.embedding, embedding_kind=args.embedding_kind,
                               progress=Bar("compare-features"), log=log, **series_options(args))
    except Cancelled:
        raise KeyboardInterrupt from None
    print(res["text"])
    for path in (args.report, args.table):
        if path:
            log(f"wrote {path}")
    return 0


def train_head_command(args, log) -> int:
    from mpmae_core.runtime.heads.pixelhead import train_pixel_head
    from mpmae_core.runtime.inference.predict import Cancelled

    features, names, ids = read_labels(args, log)
    try:
        res = train_pixel_head(args.input, args.model, features, names, args.output, report_path=args.report,
                               feature_ids=ids, buffer_m=args.buffer, feature_sets=args.feature_sets,
                               classifiers=args.classifiers, max_pixels_per_class=args.max_pixels,
                               feature_raster=args.features, tile=args.tile, overlap=args.overlap, device=args.device,
                               level=args.level, dn_offset=args.dn_offset, scale=args.scale, band_map=args.band_map,
                               aoi=args.aoi, masks=mask_options(args), block_m=args.block_size, choose_on=args.choose_on,
                               progress=Bar("train-head"), log=log, embedding=args.embedding,
                               embedding_kind=args.embedding_kind, **series_options(args))
    except Cancelled:
        raise KeyboardInterrupt from None
    print(res["text"])
    log(f"wrote {res['output']}" + (f" and {res['report']}" if res["report"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
