"""Few-shot heads: linear (``linear``), the numpy random forest (``forest``), scores
(``metrics``), the self-choosing per-pixel head (``pixelhead``) and the live mapping session
the QGIS panel drives (``session``)."""
