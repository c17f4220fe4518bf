"""The torch-free runtime: numpy, GDAL and (lazily) onnxruntime only. Never torch, never QGIS.

Its rooms, from the ground up (each imports only those before it):

- ``io/``: files in and out, knowing nothing of models;
- ``models/``: what a model file is: metadata, the ONNX Runtime session, the ONNX writer;
- ``releases/``: the released models: downloads, the safe ``.pth`` reader, conversion;
- ``inference/``: running a model over a raster (tiles, features, embed, segment, similarity);
- ``heads/``: few-shot heads (linear, forest, the self-choosing per-pixel head, the panel's session);
- here: ``batch`` (many scenes, Dask), ``cli`` and ``__main__`` (the command line).

GDAL is imported lazily through :func:`mpmae_core.runtime.io.gdal_io.gdal`, so the package
imports on machines without GDAL's Python bindings and says how to get them.
"""
