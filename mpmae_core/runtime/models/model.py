"""An exported model: its ONNX Runtime session and its metadata.

onnxruntime is imported here, lazily, so that importing the runtime package never needs it; a
missing onnxruntime is reported with the command that installs it for the running Python.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from mpmae_core.runtime.models.metadata import MetadataError, ModelMetadata

PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


class ModelError(ValueError):
    """A model file cannot be used; the message says why and what to do."""


def python_executable() -> str:
    """The interpreter of this process's Python installation, also inside QGIS, where
    ``sys.executable`` is often the QGIS program or whatever ``python3`` comes first on PATH."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    prefix = Path(sys.prefix)
    for candidate in (prefix / "bin" / f"python{version}", prefix / "bin" / "python3", prefix / "python.exe",
                      prefix / "bin" / "python"):
        if candidate.is_file():
            return str(candidate)
    exe = Path(sys.executable) if sys.executable else None
    if exe is not None and exe.name.lower().startswith("python"):
        return str(exe)
    return f"python{version}"


def install_command(package: str = "onnxruntime-gpu") -> str:
    """The exact command that installs ``package`` for this Python (Debian's system Python needs
    --user and --break-system-packages for pip to agree)."""
    exe = python_executable()
    extra = ""
    if sys.prefix == sys.base_prefix and (Path(sys.prefix) / "lib" / f"python{sys.version_info.major}."
                                           f"{sys.version_info.minor}" / "EXTERNALLY-MANAGED").exists():
        extra = " --user --break-system-packages"
    command = f"{exe} -m pip install{extra} {package}"
    if extra:
        command += "   (if pip itself is missing: sudo apt install python3-pip)"
    return command


def onnxruntime():
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ModelError(
            "onnxruntime is not installed for this Python. Install it with:\n"
            f"  {install_command()}\n"
            "(the -gpu package also runs on computers without a GPU)"
        ) from exc
    return ort


def read_metadata(path) -> ModelMetadata:
    """A model file's metadata (opens a CPU session, which also proves the file is a valid model)."""
    return OnnxModel(path, device="cpu").metadata


def cuda_driver_present() -> bool:
    """Whether an NVIDIA driver can be loaded: onnxruntime-gpu lists CUDA even where there is none."""
    import ctypes

    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


def choose_providers(device: str) -> list[str]:
    """Execution providers for 'auto', 'cpu' or 'cuda' (in preference order)."""
    device = device.lower()
    if device == "auto":
        available = onnxruntime().get_available_providers()
        use_cuda = "CUDAExecutionProvider" in available and cuda_driver_present()
        return PROVIDERS["cuda"] if use_cuda else PROVIDERS["cpu"]
    if device not in PROVIDERS:
        raise ModelError(f"unknown device {device!r}: choose auto, cpu or cuda")
    return PROVIDERS[device]


def describe_load_error(path, exc: BaseException) -> str:
    """ONNX Runtime's load error as a sentence: the reason kept (its C++ location dropped), with the fix."""
    import re

    text = " ".join(str(exc).split())
    text = re.sub(r"\S+\.(cc|h|cpp):\d+ \S+::\S+\(.*?\) ", "", text)  # onnxruntime's source location
    text = text.replace("[ONNXRuntimeError] : ", "")
    ir = re.search(r"Unsupported model IR version: (\d+), max supported IR version: (\d+)", text)
    if ir:
        return (f"'{path}' was written for ONNX IR version {ir.group(1)}, newer than this ONNX Runtime reads (at most "
                f"{ir.group(2)}): update onnxruntime (pip install -U onnxruntime; in QGIS the plugin's settings page "
                "shows how), or export the model again with this toolkit")
    opset = re.search(r"(Opset \d+ is under development|opset \d+.*not supported[^.]*)", text, re.I)
    if opset:
        return (f"'{path}' uses an operator set this ONNX Runtime does not have ({opset.group(1)}): update onnxruntime "
                "(pip install -U onnxruntime), or export the model again with this toolkit")
    return (f"'{path}' is not a valid ONNX model (corrupt, truncated or another file type): {text[:600]}. Export or "
            "download it again")


class OnnxModel:
    """Load an exported model; ``run(x)`` returns its single output as float32."""

    def __init__(self, path: str | os.PathLike, device: str = "auto", log: Callable[[str], None] = lambda m: None,
                 threads: Optional[int] = None):
        ort = onnxruntime()
        ort.set_default_logger_severity(3)  # our own message says what happened with the providers
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(f"model file '{self.path}' does not exist")
        wanted = choose_providers(device)
        options = ort.SessionOptions()
        threads = threads or int(os.environ.get("MMEARTH_ORT_THREADS", "0") or 0)  # batch workers share the CPUs
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3  # our own message says what happened with the providers
        if wanted[0] == "CPUExecutionProvider":
            # ORT's memory pattern plans one buffer for all of a shape's intermediates; without it the
            # arena reuses freed ones: the atto encoder on 736 px tiles peaks at 690 MiB instead of
            # 1,006 MiB, at the same speed (bench/RESULTS.md, issue 26)
            options.enable_mem_pattern = False
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=wanted)
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable files
            raise ModelError(describe_load_error(self.path, exc)) from None
        self.providers = self.session.get_providers()
        if wanted[0] != self.providers[0]:
            log(f"{wanted[0]} is not available here; running on {self.providers[0]} instead")
        try:
            self.metadata = ModelMetadata.from_custom_map(self.session.get_modelmeta().custom_metadata_map,
                                                          f"'{self.path.name}'")
        except MetadataError as exc:
            raise ModelError(str(exc)) from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        self.input_name = inputs[0].name if inputs else ""
        self.input_shape = inputs[0].shape if inputs else []
        self.output_names = [o.name for o in outputs]
        self.input_dtype = np.float16 if inputs and "float16" in inputs[0].type else np.float32
        #: bind inputs and outputs on CUDA (settable, e.g. to check the binding path on CPU)
        self.io_binding = self.providers[0] == "CUDAExecutionProvider"
        problem = graph_problem(self.metadata, [i.shape for i in inputs], [o.shape for o in outputs])
        if problem:
            raise ModelError(f"'{self.path}' cannot be used: its graph does not match its MMEarth metadata ({problem}). "
                             "The file was altered or its metadata copied from another model: export it again with "
                             "`python -m training.export` (heads: mmearth:train_head)")

    @property
    def device(self) -> str:
        return "cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu"

    def run(self, x: np.ndarray) -> np.ndarray:
        """The first output (an encoder's final map, a head's or segmenter's logits)."""
        return self.run_outputs(x, self.output_names[:1])[0]

    def run_outputs(self, x: np.ndarray, names) -> list:
        """The named outputs, in the order asked (ONNX Runtime computes only what they need). On
        CUDA the input and outputs go through an I/O binding (no extra host copies)."""
        x = np.ascontiguousarray(x, dtype=self.input_dtype)
        try:
            if self.io_binding:
                binding = self.session.io_binding()
                binding.bind_cpu_input(self.input_name, x)
                for name in names:
                    binding.bind_output(name, "cpu")
                self.session.run_with_iobinding(binding)
                return [np.asarray(o, np.float32) for o in binding.copy_outputs_to_cpu()]
            return [np.asarray(o, np.float32) for o in self.session.run(list(names), {self.input_name: x})]
        except Exception as exc:  # onnxruntime's own exception types
            raise ModelError(f"'{self.path}' failed on an input of shape {tuple(x.shape)}: "
                             f"{str(exc).splitlines()[0][:300]}. The graph does not fit its metadata or the input; "
                             "export the model again") from None


def graph_problem(meta: ModelMetadata, input_shapes: list, output_shapes: list) -> str:
    """Why a graph's inputs and outputs contradict its metadata ('' when they agree). Symbolic
    (dynamic) dimensions are not judged."""
    if len(input_shapes) != 1 or len(output_shapes) < 1:
        return f"it has {len(input_shapes)} inputs and {len(output_shapes)} outputs; ours have one of each"
    shape_in, shape_out = list(input_shapes[0]), list(output_shapes[0])
    if len(shape_in) != 4 or len(shape_out) != 4:
        return f"input rank {len(shape_in)} and output rank {len(shape_out)}; ours are (batch, channels, height, width)"
    if meta.kind == "head":
        want_in = len(meta.input_columns) or meta.embedding_dim or None  # a forest: the columns it reads
        want_out = len(meta.class_names) or None
        what_in, what_out = "input columns" if meta.input_columns else "embedding channels", "classes"
    else:
        want_in = len(meta.input_bands)
        want_out = (meta.embedding_dim or None) if meta.kind == "encoder" else len(meta.class_names) or None
        what_in, what_out = "input bands", "embedding channels" if meta.kind == "encoder" else "classes"
    have_in, have_out = shape_in[1], shape_out[1]
    if isinstance(have_in, int) and want_in and have_in != want_in:
        return f"the graph takes {have_in} channels but the metadata says {want_in} {what_in}"
    if isinstance(have_out, int) and want_out and have_out != want_out:
        return f"the graph gives {have_out} channels but the metadata says {want_out} {what_out}"
    return ""
