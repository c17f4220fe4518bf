"""Small builders for real GeoTIFFs written through GDAL."""

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from osgeo import gdal, osr

_GDAL_TYPES = {
    np.dtype("uint8"): gdal.GDT_Byte, np.dtype("uint16"): gdal.GDT_UInt16, np.dtype("int16"): gdal.GDT_Int16,
    np.dtype("float32"): gdal.GDT_Float32, np.dtype("float64"): gdal.GDT_Float64,
}


def write_geotiff(
    path: Path,
    array: np.ndarray,
    descriptions: Optional[Sequence[str]] = None,
    epsg: Optional[int] = 32633,
    geotransform: Optional[Sequence[float]] = (330000.0, 10.0, 0.0, 5822040.0, 0.0, -10.0),
    nodata: Optional[float] = None,
) -> Path:
    """Write a (bands, rows, cols) array as a GeoTIFF; epsg=None writes no CRS."""
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[None]
    bands, rows, cols = array.shape
    ds = gdal.GetDriverByName("GTiff").Create(str(path), cols, rows, bands, _GDAL_TYPES[array.dtype])
    if geotransform is not None:
        ds.SetGeoTransform(list(geotransform))
    if epsg is not None:
        srs = osr.SpatialReference()
        srs.ImportFromEPSG(epsg)
        ds.SetProjection(srs.ExportToWkt())
    for i in range(bands):
        band = ds.GetRasterBand(i + 1)
        band.WriteArray(array[i])
        if descriptions is not None:
            band.SetDescription(descriptions[i])
        if nodata is not None:
            band.SetNoDataValue(nodata)
    ds.FlushCache()
    ds = None
    return Path(path)
