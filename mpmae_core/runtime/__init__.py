"""Inference runtime: numpy, GDAL and (lazily) onnxruntime only. Never torch.

Modules here import GDAL lazily through :func:`mpmae_core.runtime.gdal_compat.gdal` so that the
package imports on machines where GDAL's Python bindings are missing and says how to get them.
"""
