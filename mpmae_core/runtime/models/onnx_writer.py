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
FLOAT16 = 10  # TensorProto.DataType.FLOAT16


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
    elif array.dtype == np.float16:
        array, dtype = np.ascontiguousarray(array, dtype="<f2"), FLOAT16
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


def _trees(inp: str, label: str, scores: str, n_classes: int, trees: dict) -> bytes:
    """The TreeEnsembleClassifier node of a forest's flat arrays: (n, F) -> labels, mean class probabilities."""
    return node("TreeEnsembleClassifier", [inp], [label, scores], domain=ML_DOMAIN,
                classlabels_int64s=np.arange(n_classes, dtype=np.int64),
                nodes_treeids=trees["tree"], nodes_nodeids=trees["node"], nodes_featureids=trees["feature"],
                nodes_values=trees["threshold"], nodes_modes=trees["mode"], nodes_truenodeids=trees["true"],
                nodes_falsenodeids=trees["false"], class_treeids=trees["leaf_tree"], class_nodeids=trees["leaf_node"],
                class_ids=trees["leaf_class"], class_weights=trees["leaf_weight"], post_transform="NONE")


def _probabilities_to_logits(probs: str) -> list:
    """Nodes from flat class probabilities (n, K) to logits (N, K, h, w) = log(p + eps), shaped like
    the ``cells`` (N, h, w, F) they came from (initializers ``eps`` and ``k`` are the caller's)."""
    return [node("Add", [probs, "eps"], ["p_eps"]), node("Log", ["p_eps"], ["flat_logits"]),
            node("Shape", ["cells"], ["nhw"], start=0, end=3),
            node("Concat", ["nhw", "k"], ["cells_shape"], axis=0),
            node("Reshape", ["flat_logits", "cells_shape"], ["logits_cells"]),
            node("Transpose", ["logits_cells"], ["logits"], perm=[0, 3, 1, 2])]


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
        _trees("flat", "label", "scores", n_classes, trees),
    ] + _probabilities_to_logits("scores")
    inits = [tensor("flat_shape", np.array([-1, n_features], np.int64)), tensor("k", np.array([n_classes], np.int64)),
             tensor("eps", np.array([eps], np.float32))]
    return model(nodes, inits, [value_info("features", ["batch", n_features, "height", "width"])],
                 [value_info("logits", ["batch", n_classes, "height", "width"])], metadata=metadata,
                 graph_name="forest_head", extra_opsets={ML_DOMAIN: ML_OPSET})


def ensemble_head(n_features: int, n_classes: int, members: Sequence[dict], *, metadata: Optional[dict] = None,
                  eps: float = 1e-6) -> bytes:
    """ONNX bytes of the mean class probability of several per-pixel heads, each on its own
    columns of the feature map (N, F, h, w) -> logits (N, K, h, w) = log(mean probability + eps).

    A member is ``{"columns": int array, "kind": "linear", "weight": (K, Fm), "bias": (K,)}``
    (softmax of W x + b) or ``{"columns": ..., "kind": "forest", "trees": forest arrays}`` (as in
    :func:`forest_head`)."""
    if not members:
        raise ValueError("an ensemble needs at least one member")
    nodes = [node("Transpose", ["features"], ["cells"], perm=[0, 2, 3, 1]),
             node("Reshape", ["cells", "flat_shape"], ["flat"])]
    inits = [tensor("flat_shape", np.array([-1, n_features], np.int64)), tensor("k", np.array([n_classes], np.int64)),
             tensor("eps", np.array([eps], np.float32)), tensor("inv_m", np.array([1.0 / len(members)], np.float32))]
    probs = []
    for i, m in enumerate(members):
        cols = np.asarray(m["columns"], np.int64)
        if cols.ndim != 1 or cols.size == 0 or cols.min() < 0 or cols.max() >= n_features:
            raise ValueError(f"member {i}: its columns must index the {n_features} features")
        if np.array_equal(cols, np.arange(n_features)):  # every column, in order: no copy
            nodes.append(node("Identity", ["flat"], [f"x{i}"]))
        else:
            inits.append(tensor(f"cols{i}", cols))
            nodes.append(node("Gather", ["flat", f"cols{i}"], [f"x{i}"], axis=1))
        if m["kind"] == "linear":
            w = np.asarray(m["weight"], np.float32)
            b = np.asarray(m["bias"], np.float32)
            if w.shape != (n_classes, cols.size) or b.shape != (n_classes,):
                raise ValueError(f"member {i}: weight {w.shape} and bias {b.shape} do not fit {cols.size} features "
                                 f"and {n_classes} classes")
            inits += [tensor(f"wt{i}", w.T), tensor(f"b{i}", b)]
            nodes += [node("MatMul", [f"x{i}", f"wt{i}"], [f"s{i}"]), node("Add", [f"s{i}", f"b{i}"], [f"z{i}"]),
                      node("Softmax", [f"z{i}"], [f"p{i}"], axis=1)]
        elif m["kind"] == "forest":
            nodes.append(_trees(f"x{i}", f"label{i}", f"p{i}", n_classes, m["trees"]))
        else:
            raise ValueError(f"member {i}: unknown kind {m['kind']!r} (linear or forest)")
        probs.append(f"p{i}")
    nodes += [node("Sum", probs, ["p_sum"]), node("Mul", ["p_sum", "inv_m"], ["p_mean"])]
    nodes += _probabilities_to_logits("p_mean")
    return model(nodes, inits, [value_info("features", ["batch", n_features, "height", "width"])],
                 [value_info("logits", ["batch", n_classes, "height", "width"])], metadata=metadata,
                 graph_name="ensemble_head", extra_opsets={ML_DOMAIN: ML_OPSET})


# ----------------------------------------------------------------------------- the encoder

class _Graph:
    """A tiny graph builder for ConvNeXt V2: unique names, initializers, nodes, and the layers of
    ``models.convnextv2`` as small functions over tensor names (weights from a numpy state dict)."""

    def __init__(self, state: dict, float16: bool = False):
        self.state, self.float16 = state, float16
        self.nodes, self.inits, self.n = [], [], 0
        self._consts: dict = {}

    def name(self, hint: str) -> str:
        self.n += 1
        return f"{hint}_{self.n}"

    def const(self, hint: str, array) -> str:
        name = self.name(hint)
        self.inits.append(tensor(name, np.asarray(array)))
        return name

    def scalar(self, value, dtype=None) -> str:
        dtype = dtype or (np.float16 if self.float16 else np.float32)
        key = (float(value), np.dtype(dtype).str)
        if key not in self._consts:
            self._consts[key] = self.const("c", np.array([value], dtype))
        return self._consts[key]

    def op(self, op_type: str, inputs, hint: str = "", **attrs) -> str:
        out = self.name(hint or op_type.lower())
        self.nodes.append(node(op_type, list(inputs), [out], name=f"n{self.n}_{op_type}", **attrs))
        return out

    def w(self, key: str) -> np.ndarray:
        return np.asarray(self.state[key], np.float16 if self.float16 else np.float32)

    # layers ------------------------------------------------------------------------------
    def conv(self, x, prefix, stride=1, pad=0, group=1):
        w = self.w(prefix + ".weight")
        kh, kw = w.shape[2:]
        return self.op("Conv", [x, self.const("w", w), self.const("b", self.w(prefix + ".bias"))], "conv",
                       kernel_shape=[kh, kw], strides=[stride, stride], pads=[pad, pad, pad, pad], group=group,
                       dilations=[1, 1])

    def nhwc(self, x):
        return self.op("Transpose", [x], "nhwc", perm=[0, 2, 3, 1])

    def nchw(self, x):
        return self.op("Transpose", [x], "nchw", perm=[0, 3, 1, 2])

    def layer_norm(self, x, prefix):  # over the last axis
        return self.op("LayerNormalization", [x, self.const("ln_w", self.w(prefix + ".weight")),
                                              self.const("ln_b", self.w(prefix + ".bias"))], "ln", axis=-1,
                       epsilon=1e-6)

    def gelu(self, x):  # exact: 0.5 x (1 + erf(x / sqrt 2))
        e = self.op("Erf", [self.op("Div", [x, self.scalar(np.sqrt(2.0))])])
        return self.op("Mul", [self.op("Mul", [x, self.op("Add", [e, self.scalar(1.0)])]), self.scalar(0.5)], "gelu")

    def linear(self, x, prefix):
        return self.op("Add", [self.op("MatMul", [x, self.const("wt", self.w(prefix + ".weight").T)]),
                               self.const("b", self.w(prefix + ".bias"))], "linear")

    def spatial_norm(self, x, channels: int):
        """(N, 1, 1, C): the L2 norm of (N, H, W, C) over H and W. In float32 as a matrix product,
        sqrt(ones(1, 1, H*W) @ (x*x as (N, H*W, C))), which ONNX Runtime's CPU kernels run 4-10x
        faster than a reduction over non-trailing axes (as ``export.faster_spatial_norms`` writes
        torch's exports); in float16 a reduction (a float16 product could overflow its sums)."""
        if self.float16:
            return self.op("Sqrt", [self.op("ReduceSumSquare", [x], axes=[1, 2], keepdims=1)])
        flat = self.op("Reshape", [self.op("Mul", [x, x]), self.const("shape", np.array([0, -1, channels], np.int64))])
        size = self.op("Concat", [self.const("ones", np.array([1, 1], np.int64)),
                                  self.op("Shape", [flat], start=1, end=2)], axis=0)
        ones = self.op("Expand", [self.scalar(1.0), size])
        return self.op("Unsqueeze", [self.op("Sqrt", [self.op("MatMul", [ones, flat])]),
                                     self.const("axis", np.array([1], np.int64))])

    def grn(self, x, prefix, eps, keep=None):
        """x (N, H, W, C): gamma * (x * N(x)) + beta + x, statistics per sample (over visible
        positions only when ``keep`` (H, W, 1) masks the hidden ones)."""
        if keep is not None:
            x = self.op("Mul", [x, keep])
        gx = self.spatial_norm(x, self.state[prefix + ".gamma"].size)
        nx = self.op("Div", [gx, self.op("Add", [self.op("ReduceMean", [gx], axes=[-1], keepdims=1),
                                                self.scalar(eps)])])
        gamma = self.const("gamma", self.w(prefix + ".gamma").reshape(-1))
        beta = self.const("beta", self.w(prefix + ".beta").reshape(-1))
        return self.op("Add", [self.op("Add", [self.op("Mul", [self.op("Mul", [x, nx]), gamma]), beta]), x], "grn")

    def block(self, x, prefix, dim, eps, keep=None):
        """ConvNeXt V2 block; with ``keep`` (H, W, 1) the masked (sparse-semantics) block."""
        y = self.nhwc(self.conv(x, f"{prefix}.dwconv", pad=3, group=dim))
        y = self.gelu(self.linear(self.layer_norm(y, f"{prefix}.norm"), f"{prefix}.pwconv1"))
        y = self.linear(self.grn(y, f"{prefix}.grn", eps, keep), f"{prefix}.pwconv2")
        if keep is not None:
            y = self.op("Mul", [y, keep])
        return self.op("Add", [x, self.nchw(y)], "block")

    def encoder(self, image, depths, dims, patch_size, convention="sparse", keep_of=None, prefix=""):
        """The four stage maps of the encoder; ``keep_of(tensor, cell)`` gives the keep mask of a
        map whose final cells span ``cell`` positions (masked encoding), or None."""
        ref = convention == "reference_dense"
        eps = 1e-4 if ref else 1e-6
        k = patch_size // 8
        x = image
        if keep_of is not None:
            x = self.op("Mul", [x, keep_of(x, patch_size)])
        x = self.conv(x, prefix + "initial_conv.0", pad=0 if ref else 1)
        x = self.nchw(self.gelu(self.layer_norm(self.nhwc(x), prefix + "initial_conv.1")))
        x = self.conv(x, prefix + "stem.0", stride=k, pad=k // 2 if ref else 0, group=dims[0])
        x = self.nchw(self.layer_norm(self.nhwc(x), prefix + "stem.1"))
        stages = []
        for i, depth in enumerate(depths):
            if i:
                pre = f"{prefix}downsample_layers.{i - 1}"
                x = self.conv(self.nchw(self.layer_norm(self.nhwc(x), f"{pre}.0")), f"{pre}.1", stride=2)
            keep = None
            if keep_of is not None:
                mask = keep_of(x, 8 >> i)
                x = self.op("Mul", [x, mask])
                keep = self.op("Unsqueeze", [mask, self.const("axis", np.array([-1], np.int64))])
            for j in range(depth):
                x = self.block(x, f"{prefix}stages.{i}.{j}", dims[i], eps, keep)
            stages.append(x)
        return stages

    def bytes(self, inputs, outputs, metadata, graph_name) -> bytes:
        return model(self.nodes, self.inits, inputs, outputs, metadata=metadata, graph_name=graph_name)


def convnext_encoder(state: dict, depths, dims, in_chans: int, patch_size: int, *, convention: str = "sparse",
                     metadata: Optional[dict] = None, float16: bool = False) -> bytes:
    """ONNX bytes of our ConvNeXt V2 encoder (``models.convnextv2``, unmasked) from its state dict
    as numpy arrays: ``image`` (N, C, H, W) -> ``embedding`` (the last stage) and ``stage1``..
    ``stage3``, the outputs and order of ``training.export``'s graph. ``convention``: "sparse"
    (padded initial conv, GRN eps 1e-6) or "reference_dense" (unpadded initial conv, stem padded
    by k // 2, GRN eps 1e-4), as in the torch model. ``float16``: weights and arithmetic in half
    precision (for GPUs), float32 in and out."""
    g = _Graph(state, float16)
    image = g.op("Cast", ["image"], "image16", to=FLOAT16) if float16 else "image"
    stages = g.encoder(image, depths, dims, patch_size, convention)
    names = ["embedding", "stage1", "stage2", "stage3"]
    for out_name, src in zip(names, [stages[3], stages[0], stages[1], stages[2]]):
        if float16:  # the interface stays float32: only the arithmetic is half precision
            g.nodes.append(node("Cast", [src], [out_name], name=f"out_{out_name}", to=FLOAT))
        else:
            g.nodes.append(node("Identity", [src], [out_name], name=f"out_{out_name}"))
    outs = [value_info(n, ["batch", int(d), "h", "w"]) for n, d in zip(names, [dims[3], dims[0], dims[1], dims[2]])]
    return g.bytes([value_info("image", ["batch", int(in_chans), "height", "width"])], outs, metadata,
                   "convnextv2_encoder")


def pretext_segmenter(state: dict, task: str, depths, dims, in_chans: int, patch_size: int, n_classes: int,
                      decoder_dim: int = 512, decoder_depth: int = 1, *, metadata: Optional[dict] = None) -> bytes:
    """ONNX bytes of an MP-MAE's pixel classification head as a segmenter (``export.PretextSegmenter``
    without torch): the masked encoder (sparse convention) runs twice with complementary
    checkerboard masks on the patch grid, each pass's hidden cells get the mask token before the
    task's decoder and head, and every cell takes its logits from the pass in which it was hidden.
    ``state`` holds the MP-MAE's arrays under our keys (``encoder.*``, ``proj.*``, ``mask_token``,
    ``decoders.<task>.*``, ``heads.<task>.pred.*``). ``image`` -> ``logits`` (N, K, H, W)."""
    g = _Graph(state)
    i64 = lambda v: g.const("i", np.array(v, np.int64))  # noqa: E731
    zero, one = i64(0), i64(1)

    def parity(t, cell):
        """(H, W) float: (row // cell + col // cell) % 2 of a map's positions (1 = odd cells)."""
        shape = g.op("Shape", [t])
        axes = []
        for axis in (2, 3):
            n = g.op("Gather", [shape, g.const("ax", np.array(axis, np.int64))], axis=0)
            r = g.op("Div", [g.op("Range", [zero, n, one]), g.const("cell", np.array(cell, np.int64))])
            axes.append(r)
        rows = g.op("Unsqueeze", [axes[0], i64([1])])
        cols = g.op("Unsqueeze", [axes[1], i64([0])])
        par = g.op("Mod", [g.op("Add", [rows, cols]), g.const("two", np.array(2, np.int64))])
        return g.op("Cast", [par], to=FLOAT)

    dec_eps = 1e-4
    passes = []
    for hidden_even in (True, False):
        # checkerboard(...) of export: True (hidden) on cells where row + col is even
        def keep_of(t, cell, hidden_even=hidden_even):
            par = parity(t, cell)
            return par if hidden_even else g.op("Sub", [g.scalar(1.0), par])

        latent = g.encoder("image", depths, dims, patch_size, "sparse", keep_of, prefix="encoder.")[-1]
        keep = keep_of(latent, 1)
        hidden = g.op("Sub", [g.scalar(1.0), keep])
        proj = g.conv(latent, "proj")
        token = g.const("mask_token", g.w("mask_token"))
        x = g.op("Add", [g.op("Mul", [proj, keep]), g.op("Mul", [token, hidden])], "tokens")
        for j in range(decoder_depth):
            x = g.block(x, f"decoders.{task}.{j}", decoder_dim, dec_eps)
        pred = g.conv(x, f"heads.{task}.pred")  # (N, p*p*K, h, w)
        passes.append(g.op("Mul", [pred, hidden]))
    merged = g.op("Add", passes, "merged")
    p, k = patch_size, n_classes
    shape = g.op("Shape", [merged])
    hw = g.op("Slice", [shape, i64([2]), i64([4])])
    six = g.op("Concat", [i64([0, p, p, k]), hw], axis=0)
    x = g.op("Reshape", [merged, six])  # (N, p, p, K, h, w): the head's channels are (row, col, class)
    x = g.op("Transpose", [x], perm=[0, 3, 4, 1, 5, 2])  # (N, K, h, p, w, p)
    hw_p = g.op("Mul", [hw, i64([p])])
    four = g.op("Concat", [i64([0, k]), hw_p], axis=0)
    g.nodes.append(node("Reshape", [x, four], ["logits"], name="out_logits"))
    return g.bytes([value_info("image", ["batch", int(in_chans), "height", "width"])],
                   [value_info("logits", ["batch", int(k), "height", "width"])], metadata, "pretext_segmenter")
