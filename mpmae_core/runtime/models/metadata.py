"""The metadata inside every ONNX model we export: one schema, written by export, read by the runtime.

Stored as one JSON string under the ONNX metadata key ``mmearth`` (read back with onnxruntime's
``custom_metadata_map``, so the runtime needs no ``onnx`` package). Pure Python.

Radiometry: inputs are the raw values of the model's input source (``input_source``, a
``registry.SourceSpec``): for Sentinel-2, digital numbers (reflectance x 10000). Products from
processing baseline 04.00 on (25 January 2022) add +1000 to every DN; the models expect DNs
without that offset, so the runtime subtracts ``dn_offset`` (from the raster's metadata, or the
user) before normalising with the statistics of the raster's processing level.

Format versions: 1 had no ``input_source`` (every model was Sentinel-2: a version-1 file is read
as ``sentinel2``, or ``sentinel2_rgb`` when it takes B2, B3, B4); 2 names the source.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Optional

from mpmae_core import registry

METADATA_KEY = "mmearth"
FORMAT_VERSION = 2
KINDS = ("encoder", "segmenter", "head")
MAX_CLASSES = 254  # class maps are one byte with 255 as no data


class MetadataError(ValueError):
    """A model file lacks our metadata or carries metadata we cannot use."""


@dataclass
class ModelMetadata:
    kind: str  # encoder: image -> embedding; segmenter: image -> class logits; head: embedding -> logits
    input_bands: list = field(default_factory=list)  # band names in input order (encoder, segmenter)
    normalisation: dict = field(default_factory=dict)  # level ("l1c"/"l2a") -> {"mean": [...], "std": [...]}
    patch_size: int = 16
    gsd_m: float = 10.0
    embedding_dim: int = 0
    convention: str = "sparse"
    task: str = "embedding"  # "embedding", or the name of what the classes are (e.g. "esa_worldcover")
    class_names: list = field(default_factory=list)
    class_colours: list = field(default_factory=list)  # [r, g, b] per class
    output_stride: int = 16  # pixels per output cell (1 = per pixel)
    nodata: float = registry.S2_NODATA
    dn_scale: float = registry.S2_QUANTIFICATION
    dn_offset_baseline_04: float = registry.S2_BASELINE_04_OFFSET
    model_size: str = ""
    source: str = ""
    #: encoder: [output name, channels, stride] of each graph output, the final map first (empty in
    #: files exported before multi-scale outputs: then only the final map, at the patch stride)
    stages: list = field(default_factory=list)
    #: per-pixel head: the feature blocks it takes, in order ("spectra" and encoder output names),
    #: and their channels; empty for a head on patch-stride embeddings
    features: list = field(default_factory=list)
    feature_channels: list = field(default_factory=list)
    #: per-pixel head: the columns of its blocks' joined features that its graph takes, increasing
    #: (a forest reads only the features its trees split on); empty: every column
    input_columns: list = field(default_factory=list)
    classifier: str = ""  # what the head is, in words (e.g. "logistic regression, L2 0.01")
    precision: str = "float32"  # of the graph's arithmetic ("float16": a GPU variant; float32 in and out)
    #: head: the encoder it was trained on (``fingerprint.encoder_fingerprint``); empty in older files
    encoder: dict = field(default_factory=dict)
    #: encoder, segmenter: the input source (registry.SOURCES) whose bands, levels and radiometry
    #: it takes; empty in version-1 files (then found from the input bands)
    input_source: str = ""
    #: the licence of the weights, where known (released models: the catalogue's words); empty for a
    #: user's own models, whose licence is theirs to state
    licence: str = ""
    format_version: int = FORMAT_VERSION

    @property
    def source_spec(self) -> registry.SourceSpec:
        """The registry's spec of the model's input source."""
        return registry.source(self.input_source or registry.source_for_bands(self.input_bands).name)

    def validate(self) -> "ModelMetadata":
        def number(name, low, integer=False, inclusive=True):
            value = getattr(self, name)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
            if ok and integer:
                ok = float(value).is_integer()
            if ok:
                ok = value >= low if inclusive else value > low
            if not ok:
                kind = "a whole number" if integer else "a number"
                raise MetadataError(f"'{name}' is {value!r}; it must be {kind} {'>=' if inclusive else '>'} {low}")
            if integer:
                setattr(self, name, int(value))

        def strings(name):
            value = getattr(self, name)
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise MetadataError(f"'{name}' must be a list of names, got {value!r}")

        if self.kind not in KINDS:
            raise MetadataError(f"unknown model kind {self.kind!r}; expected one of {KINDS}")
        number("format_version", 1, integer=True)
        if self.format_version > FORMAT_VERSION:
            raise MetadataError(f"metadata format {self.format_version} is newer than this runtime reads "
                                f"({FORMAT_VERSION}): update mpmae_core")
        number("patch_size", 1, integer=True)
        number("output_stride", 1, integer=True)
        number("embedding_dim", 0, integer=True)
        number("gsd_m", 0, inclusive=False)
        number("dn_scale", 0, inclusive=False)
        number("dn_offset_baseline_04", 0)
        number("nodata", float("-inf"))
        strings("input_bands")
        strings("class_names")
        if not isinstance(self.task, str) or not isinstance(self.convention, str):
            raise MetadataError("'task' and 'convention' must be text")
        if not isinstance(self.class_colours, list) or not all(
                isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
                for c in self.class_colours):
            raise MetadataError(f"'class_colours' must be a list of [r, g, b] values 0-255, got {self.class_colours!r}")
        if not isinstance(self.licence, str):
            raise MetadataError(f"'licence' must be text, got {self.licence!r:.60}")
        if not isinstance(self.input_source, str):
            raise MetadataError(f"'input_source' must be the name of an input source, got {self.input_source!r:.60}")
        if self.kind != "head":
            if not self.input_bands:
                raise MetadataError("the model names no input bands")
            if not self.input_source:  # version 1: every model was Sentinel-2
                try:
                    self.input_source = registry.source_for_bands(self.input_bands).name
                except ValueError:
                    raise MetadataError(f"input bands {self.input_bands} are not Sentinel-2 band names") from None
            try:
                spec = registry.source(self.input_source)
            except ValueError as exc:
                raise MetadataError(str(exc)) from None
            unknown = [b for b in self.input_bands if b not in spec.band_by_name]
            if unknown:
                raise MetadataError(f"input bands {self.input_bands} are not {spec.title} band names "
                                    f"({', '.join(spec.band_names)})")
            if not isinstance(self.normalisation, dict) or not self.normalisation:
                raise MetadataError("the model has no normalisation statistics")
            for level, stats in self.normalisation.items():
                if level not in spec.level_names:
                    raise MetadataError(f"normalisation for unknown level {level!r} (the {spec.title} levels are "
                                        f"{', '.join(spec.level_names)})")
                if not isinstance(stats, dict):
                    raise MetadataError(f"{level} statistics must be an object with 'mean' and 'std'")
                mean, std = stats.get("mean", []), stats.get("std", [])
                if not isinstance(mean, list) or not isinstance(std, list) or \
                        len(mean) != len(self.input_bands) or len(std) != len(self.input_bands):
                    raise MetadataError(f"{level} statistics do not have one mean and std per input band")
                if not all(isinstance(v, (int, float)) for v in mean + std) or any(v <= 0 for v in std):
                    raise MetadataError(f"{level} statistics must be numbers, with positive standard deviations")
        if not isinstance(self.stages, list) or not all(
                isinstance(st, list) and len(st) == 3 and isinstance(st[0], str) and all(
                    isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in st[1:]) for st in self.stages):
            raise MetadataError(f"'stages' must list [output name, channels, stride] entries, got {self.stages!r}")
        strings("features")
        if not isinstance(self.feature_channels, list) or len(self.feature_channels) != len(self.features) or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in self.feature_channels):
            raise MetadataError("'feature_channels' must give a positive channel count for each of 'features'")
        cols = self.input_columns
        if not isinstance(cols, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in cols) or \
                any(b <= a for a, b in zip(cols, cols[1:])) or (cols and (cols[0] < 0 or not self.features or
                                                                          cols[-1] >= sum(self.feature_channels))):
            raise MetadataError("'input_columns' must be increasing column numbers of the head's features")
        if self.features and sum(self.feature_channels) != self.embedding_dim:
            raise MetadataError(f"the head's feature blocks have {sum(self.feature_channels)} channels in all but it "
                                f"takes {self.embedding_dim}")
        if not isinstance(self.classifier, str):
            raise MetadataError("'classifier' must be text")
        if self.precision not in ("float32", "float16"):
            raise MetadataError(f"'precision' must be float32 or float16, got {self.precision!r}")
        if not isinstance(self.encoder, dict):
            raise MetadataError(f"'encoder' must be an object describing the encoder, got {self.encoder!r:.60}")
        if len(self.class_names) > MAX_CLASSES:
            raise MetadataError(f"the model names {len(self.class_names)} classes; class maps hold at most "
                                f"{MAX_CLASSES} (one byte, 255 = no data)")
        if self.kind == "segmenter" and not self.class_names:
            raise MetadataError("a segmenter model must name its classes")
        if self.class_names and self.class_colours and len(self.class_names) != len(self.class_colours):
            raise MetadataError("class names and colours differ in number")
        return self

    def to_json(self) -> str:
        return json.dumps(asdict(self.validate()))

    @classmethod
    def from_json(cls, text: str, source: str = "the model") -> "ModelMetadata":
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, TypeError) as exc:
            raise MetadataError(f"the '{METADATA_KEY}' metadata of {source} is not valid JSON ({exc}): the file was damaged "
                                "or edited by hand; export or download it again") from None
        if not isinstance(data, dict):
            raise MetadataError(f"the '{METADATA_KEY}' metadata of {source} is a JSON {type(data).__name__}, not an object "
                                "of named fields: the file was not written by `python -m training.export`")
        known = set(cls.__dataclass_fields__)
        if "kind" not in data:
            raise MetadataError(f"the '{METADATA_KEY}' metadata of {source} has no 'kind' (encoder, segmenter or head)")
        try:
            return cls(**{k: v for k, v in data.items() if k in known}).validate()
        except MetadataError as exc:
            raise MetadataError(f"{source}: {exc}") from None

    @classmethod
    def from_custom_map(cls, custom: dict, source: str = "the model") -> "ModelMetadata":
        if METADATA_KEY not in custom:
            raise MetadataError(
                f"{source} has no MMEarth metadata (ONNX metadata key '{METADATA_KEY}'): it was not exported by "
                "`python -m training.export`, so its bands, normalisation and patch size are unknown. Export it "
                "with that command."
            )
        return cls.from_json(custom[METADATA_KEY], source)

    def encoder_outputs(self) -> list:
        """[output name, channels, stride] of an encoder's outputs: ``stages``, or for older files
        the final map alone."""
        return [list(s) for s in self.stages] or [["embedding", self.embedding_dim, self.patch_size]]

    @property
    def per_pixel(self) -> bool:
        """A head on per-pixel features (spectra and/or hypercolumns), not on patch-stride embeddings."""
        return bool(self.features)

    def statistics(self, level: str) -> tuple[list, list]:
        level = level.lower()
        if level not in self.normalisation:
            raise MetadataError(f"the model has no {level.upper()} statistics; it has "
                                f"{', '.join(k.upper() for k in self.normalisation)}")
        s = self.normalisation[level]
        return s["mean"], s["std"]


def head_metadata(class_names, class_colours, embedding_dim: int, task: str = "few-shot", patch_size: int = 16,
                  source: str = "", encoder: Optional[dict] = None) -> ModelMetadata:
    """Metadata of a head on ``embedding_dim``-dim embeddings at patch stride; ``encoder``: the
    fingerprint of the encoder it was trained on."""
    return ModelMetadata(kind="head", task=task, class_names=list(class_names),
                         class_colours=[[int(v) for v in c] for c in class_colours or []],
                         embedding_dim=int(embedding_dim), patch_size=patch_size, output_stride=patch_size,
                         source=source, encoder=dict(encoder or {}))


#: ONNX output names of an encoder graph, in order: the final map first (what ``embed`` reads),
#: then the earlier stages for per-pixel (hypercolumn) features.
ENCODER_OUTPUTS = ("embedding", "stage1", "stage2", "stage3")


def encoder_stages(dims, patch_size: int) -> list:
    """[output name, channels, stride] of each encoder graph output (``ENCODER_OUTPUTS`` order)."""
    strides = [patch_size // 8, patch_size // 4, patch_size // 2, patch_size]
    order = [3, 0, 1, 2]
    return [[name, int(dims[i]), int(strides[i])] for name, i in zip(ENCODER_OUTPUTS, order)]


def encoder_metadata(depths, dims, patch_size: int, convention: str, input_bands, normalisation: dict,
                     source: str = "", input_source: str = "") -> ModelMetadata:
    """The metadata of an encoder graph: what ``training.export`` and the torch-free converter write.
    ``input_source``: the registry's source (by default the one of ``input_bands``)."""
    size = next((n for n, (dp, dm) in registry.ENCODER_SIZES.items()
                 if tuple(dm) == tuple(dims) and tuple(dp) == tuple(depths)), "")
    spec = registry.source(input_source) if input_source else registry.source_for_bands(input_bands)
    return ModelMetadata(kind="encoder", input_bands=list(input_bands), normalisation=normalisation,
                         patch_size=int(patch_size), embedding_dim=int(dims[-1]), convention=convention,
                         output_stride=int(patch_size), stages=encoder_stages(dims, patch_size), model_size=size,
                         source=source, input_source=spec.name, gsd_m=float(spec.gsd_m), nodata=float(spec.nodata),
                         dn_scale=float(spec.dn_scale))


def segmenter_metadata(depths, dims, patch_size: int, input_bands, normalisation: dict, task: str, class_names,
                       class_colours, source: str = "") -> ModelMetadata:
    """The metadata of an image -> per-pixel logits graph (a pretext head, or a fine-tuned model)."""
    meta = encoder_metadata(depths, dims, patch_size, "sparse", input_bands, normalisation, source)
    meta.kind, meta.task, meta.output_stride, meta.embedding_dim, meta.stages = "segmenter", task, 1, 0, []
    meta.class_names = list(class_names)
    meta.class_colours = [[int(v) for v in c] for c in class_colours]
    return meta


def default_normalisation(bands, input_source: str = "") -> dict:
    """The source's default statistics for ``bands`` at each of its levels (those a level lacks are
    left out): for Sentinel-2, MMEarth's published L1C and L2A statistics."""
    spec = registry.source(input_source) if input_source else registry.source_for_bands(bands)
    out = {}
    for level in spec.level_names:
        try:
            mean, std = spec.default_statistics(level, bands)
        except ValueError:
            continue
        out[level] = {"mean": mean, "std": std}
    return out

