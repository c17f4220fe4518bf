"""Running a model over a raster: input preparation and output writing (``raster``), tiles
(``tiling``), per-pixel features (``pixel_features``), embed / segment / features
(``predict``) and similarity search (``similarity``)."""
