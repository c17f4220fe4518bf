"""Write small ONNX models (linear heads) in pure Python: numpy and the protobuf wire format.

The QGIS plugin trains few-shot heads where neither torch nor the ``onnx`` package exists, so the
head's ONNX file is encoded here directly. Only what a head needs is covered: float tensors as
raw little-endian data, nodes with int/float/ints attributes, typed graph inputs and outputs with
symbolic dimensions, opset imports and string metadata. Field numbers follow onnx.proto (IR 8,
the proto2 encoding: repeated scalars written unpacked, which every protobuf parser accepts).

A head maps embeddings (N, D, h, w) to logits (N, K, h, w)::

    Transpose -> [LayerNormalization over D, whose scale/bias standardise each channel] -> MatMul W -> Add b
    -> Transpose
"""

from __future__ import annotations

import struct
from typing import Iterable, Optional, Sequence

import numpy as np

IR_VERSION = 8
OPSET = 17  # LayerNormalization entered the default domain at opset 17
ML_DOMAIN, ML_OPSET = "ai.onnx.ml", 3  # TreeEnsembleClassifier (random-forest heads)
FLOAT = 1  # TensorProto.DataType.FLOAT
INT64 = 7  # TensorProto.DataType.INT64


# ----------------------------------------------------------------------------- wire format

def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # int64 two's complement, as protobuf encodes negative int64
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint((field << 3) | wire)


def _int(field: int, value: int) -> bytes:
    return _key(field, 0) + _varint(int(value))


def _bytes(field: int, value: bytes) -> bytes:
    return _key(field, 2) + _varint(len(value)) + value


def _str(field: int, value: str) -> bytes:
    return _bytes(field, value.encode("utf-8"))


def _float(field: int, value: float) -> bytes:
    return _key(field, 5) + struct.pack("<f", float(value))


# ----------------------------------------------------------------------------- messages

def tensor(name: str, array: np.ndarray) -> bytes:
    """TensorProto: dims=1, data_type=2, name=8, raw_data=9 (float32, or int64 for integer
    arrays; little-endian)."""
    array = np.asarray(array)
    if np.issubdtype(array.dtype, np.integer):
        array, dtype = np.ascontiguousarray(array, dtype="<i8"), INT64
    else:
        array, dtype = np.ascontiguousarray(array, dtype="<f4"), FLOAT
    return (b"".join(_int(1, d) for d in array.shape) + _int(2, dtype) + _str(8, name)
            + _bytes(9, array.tobytes()))


def attribute(name: str, value) -> bytes:
    """AttributeProto: name=1, f=2, i=3, s=4, floats=7, ints=8, strings=9, type=20 (FLOAT=1, INT=2,
    STRING=3, FLOATS=6, INTS=7, STRINGS=8). Lists are packed by numpy where they are long (trees)."""
    if isinstance(value, bool) or isinstance(value, (int, np.integer)):
        return _str(1, name) + _int(3, int(value)) + _int(20, 2)
    if isinstance(value, (float, np.floating)):
        return _str(1, name) + _float(2, value) + _int(20, 1)
    if isinstance(value, str):
        return _str(1, name) + _str(4, value) + _int(20, 3)
    if isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.floating):
        return _str(1, name) + _packed_floats(7, value) + _int(20, 6)
    if isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.integer):
        return _str(1, name) + _packed_varints(8, value) + _int(20, 7)
    values = list(value)
    if values and all(isinstance(v, str) for v in values):
        return _str(1, name) + b"".join(_str(9, v) for v in values) + _int(20, 8)
    if values and all(isinstance(v, (int, np.integer)) for v in values):
        return _str(1, name) + b"".join(_int(8, v) for v in values) + _int(20, 7)
    return _str(1, name) + b"".join(_float(7, v) for v in values) + _int(20, 6)


def _packed_floats(field: int, values: np.ndarray) -> bytes:
    """Repeated float, packed (one length-delimited run of fixed32; proto2 parsers accept it)."""
    return _bytes(field, np.ascontiguousarray(values, dtype="<f4").ravel().tobytes())


def _packed_varints(field: int, values: np.ndarray) -> bytes:
    """Repeated int64, packed, with the varints encoded in one numpy pass (long tree attributes)."""
    v = np.ascontiguousarray(values, dtype=np.int64).ravel().view(np.uint64)
    if v.size == 0:
        return b""
    shifts = np.arange(10, dtype=np.uint64) * np.uint64(7)
    groups = ((v[:, None] >> shifts[None, :]) & np.uint64(0x7F)).astype(np.uint8)
    nbytes = 1 + (v[:, None] >= (np.uint64(1) << shifts[None, 1:])).sum(1)
    keep = np.arange(10)[None, :] < nbytes[:, None]
    more = np.arange(10)[None, :] < (nbytes - 1)[:, None]
    groups[more] |= 0x80
    return _bytes(field, groups[keep].tobytes())


def node(op_type: str, inputs: Sequence[str], outputs: Sequence[str], name: str = "", domain: str = "",
         **attrs) -> bytes:
    """NodeProto: input=1, output=2, name=3, op_type=4, attribute=5, domain=7."""
    body = b"".join(_str(1, i) for i in inputs) + b"".join(_str(2, o) for o in outputs)
    body += _str(3, name or f"{op_type}_{outputs[0]}") + _str(4, op_type)
    body += b"".join(_bytes(5, attribute(k, v)) for k, v in attrs.items())
    if domain:
        body += _str(7, domain)
    return body


def value_info(name: str, dims: Sequence) -> bytes:
    """ValueInfoProto name=1, type=2 -> TypeProto.tensor_type=1 -> elem_type=1, shape=2 -> dim=1
    (dim_value=1 for a number, dim_param=2 for a symbolic name)."""
    dim_msgs = b"".join(_bytes(1, _int(1, d) if isinstance(d, (int, np.integer)) else _str(2, str(d))) for d in dims)
    tensor_type = _int(1, FLOAT) + _bytes(2, dim_msgs)
    return _str(1, name) + _bytes(2, _bytes(1, tensor_type))


def model(nodes: Iterable[bytes], initializers: Iterable[bytes], inputs: Iterable[bytes], outputs: Iterable[bytes],
          metadata: Optional[dict] = None, graph_name: str = "mmearth", producer: str = "mpmae_core",
          extra_opsets: Optional[dict] = None) -> bytes:
    """ModelProto: ir_version=1, producer_name=2, graph=7, opset_import=8, metadata_props=14.
    GraphProto: node=1, name=2, initializer=5, input=11, output=12. ``extra_opsets``: domain ->
    version, beside the default domain's."""
    graph = (b"".join(_bytes(1, n) for n in nodes) + _str(2, graph_name)
             + b"".join(_bytes(5, t) for t in initializers)
             + b"".join(_bytes(11, i) for i in inputs) + b"".join(_bytes(12, o) for o in outputs))
    opsets = _bytes(8, _str(1, "") + _int(2, OPSET))
    for domain, version in (extra_opsets or {}).items():
        opsets += _bytes(8, _str(1, domain) + _int(2, version))
    props = b"".join(_bytes(14, _str(1, k) + _str(2, v)) for k, v in (metadata or {}).items())
    return _int(1, IR_VERSION) + _str(2, producer) + _bytes(7, graph) + opsets + props


# ----------------------------------------------------------------------------- heads

def linear_head(weight: np.ndarray, bias: np.ndarray, *, mean: Optional[np.ndarray] = None,
                std: Optional[np.ndarray] = None, layer_norm: bool = False, eps: float = 1e-6,
                metadata: Optional[dict] = None, input_name: str = "embedding") -> bytes:
    """ONNX bytes of ``logits = W @ f(e) + b`` applied at every cell of an embedding map.

    f is the identity, or with ``layer_norm`` the LayerNorm over the D channels of each cell
    (no affine) followed by per-channel standardisation ``(x - mean) / std`` (defaults 0 and 1),
    which is exactly LayerNormalization's scale ``1/std`` and bias ``-mean/std``.
    """
    weight = np.asarray(weight, np.float32)
    bias = np.asarray(bias, np.float32)
    k, d = weight.shape
    if bias.shape != (k,):
        raise ValueError(f"bias has shape {bias.shape}; expected ({k},)")
    nodes = [node("Transpose", [input_name], ["cells"], perm=[0, 2, 3, 1])]
    inits = [tensor("weight_t", weight.T), tensor("bias", bias)]
    features = "cells"
    if layer_norm:
        mean = np.zeros(d, np.float32) if mean is None else np.asarray(mean, np.float32)
        std = np.ones(d, np.float32) if std is None else np.asarray(std, np.float32)
        if mean.shape != (d,) or std.shape != (d,) or not (std > 0).all():
            raise ValueError(f"standardisation needs {d} means and {d} positive standard deviations")
        inits += [tensor("ln_scale", 1.0 / std), tensor("ln_bias", -mean / std)]
        nodes.append(node("LayerNormalization", ["cells", "ln_scale", "ln_bias"], ["normed"], axis=-1,
                          epsilon=float(eps)))
        features = "normed"
    elif mean is not None or std is not None:
        raise ValueError("mean/std standardise the LayerNorm output: pass layer_norm=True")
    nodes += [node("MatMul", [features, "weight_t"], ["scores"]),
              node("Add", ["scores", "bias"], ["logits_cells"]),
              node("Transpose", ["logits_cells"], ["logits"], perm=[0, 3, 1, 2])]
    return model(nodes, inits, [value_info(input_name, ["batch", d, "height", "width"])],
                 [value_info("logits", ["batch", k, "height", "width"])], metadata=metadata, graph_name="linear_head")


def head_reference(embedding: np.ndarray, weight, bias, mean=None, std=None, layer_norm=False, eps=1e-6) -> np.ndarray:
    """What ``linear_head`` computes, in numpy: (N, D, h, w) -> (N, K, h, w)."""
    x = np.moveaxis(np.asarray(embedding, np.float64), 1, -1)
    if layer_norm:
        x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)
        d = x.shape[-1]
        x = (x - (np.zeros(d) if mean is None else mean)) / (np.ones(d) if std is None else std)
    out = x @ np.asarray(weight, np.float64).T + np.asarray(bias, np.float64)
    return np.moveaxis(out, -1, 1).astype(np.float32)


def forest_head(n_features: int, n_classes: int, trees: dict, *, metadata: Optional[dict] = None,
                eps: float = 1e-6) -> bytes:
    """ONNX bytes of a random forest applied at every pixel of a feature map (N, F, h, w) ->
    logits (N, K, h, w), the logits being log(mean class probability + eps) (softmax gives the
    probabilities back). ``trees`` holds the flat node arrays of ``TreeEnsembleClassifier``
    (ai.onnx.ml): tree ids, node ids, features, thresholds (x <= t goes to the true child),
    modes, true and false children, and the leaves' (tree, node, class, weight) entries."""
    nodes = [
        node("Transpose", ["features"], ["cells"], perm=[0, 2, 3, 1]),
        node("Reshape", ["cells", "flat_shape"], ["flat"]),
        node("TreeEnsembleClassifier", ["flat"], ["label", "scores"], domain=ML_DOMAIN,
             classlabels_int64s=np.arange(n_classes, dtype=np.int64),
             nodes_treeids=trees["tree"], nodes_nodeids=trees["node"], nodes_featureids=trees["feature"],
             nodes_values=trees["threshold"], nodes_modes=trees["mode"], nodes_truenodeids=trees["true"],
             nodes_falsenodeids=trees["false"], class_treeids=trees["leaf_tree"], class_nodeids=trees["leaf_node"],
             class_ids=trees["leaf_class"], class_weights=trees["leaf_weight"], post_transform="NONE"),
        node("Add", ["scores", "eps"], ["scores_eps"]),
        node("Log", ["scores_eps"], ["flat_logits"]),
        node("Shape", ["cells"], ["nhw"], start=0, end=3),
        node("Concat", ["nhw", "k"], ["cells_shape"], axis=0),
        node("Reshape", ["flat_logits", "cells_shape"], ["logits_cells"]),
        node("Transpose", ["logits_cells"], ["logits"], perm=[0, 3, 1, 2]),
    ]
    inits = [tensor("flat_shape", np.array([-1, n_features], np.int64)), tensor("k", np.array([n_classes], np.int64)),
             tensor("eps", np.array([eps], np.float32))]
    return model(nodes, inits, [value_info("features", ["batch", n_features, "height", "width"])],
                 [value_info("logits", ["batch", n_classes, "height", "width"])], metadata=metadata,
                 graph_name="forest_head", extra_opsets={ML_DOMAIN: ML_OPSET})
