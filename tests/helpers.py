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


class RangeServer:
    """An HTTP server on 127.0.0.1 serving a folder with HEAD and byte ranges (``bytes=a-b``), as
    object stores serve COGs; ``requests`` records (method, path, Range) and ``sent`` the body bytes."""

    def __init__(self, root):
        import http.server
        import threading
        from pathlib import Path

        self.root, self.requests, self.sent = Path(root), [], 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _serve(self, body: bool):
                path = outer.root / self.path.split("?")[0].lstrip("/")
                rng = self.headers.get("Range")
                outer.requests.append((self.command, self.path, rng))
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                start, end = 0, len(data) - 1
                if rng and rng.startswith("bytes="):
                    a, _, b = rng[6:].partition("-")
                    start, end = int(a or 0), min(int(b) if b else len(data) - 1, len(data) - 1)
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(end - start + 1))
                self.end_headers()
                if body:
                    self.wfile.write(data[start:end + 1])
                    outer.sent += end - start + 1

            def do_GET(self):  # noqa: N802
                self._serve(True)

            def do_HEAD(self):  # noqa: N802
                self._serve(False)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def write_polygons(path, geometries, srs, layer: str = "polygons"):
    """A GeoPackage layer of the given OGR polygons in ``srs``."""
    from osgeo import ogr

    vds = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    lyr = vds.CreateLayer(layer, srs=srs, geom_type=ogr.wkbPolygon)
    for geom in geometries:
        feat = ogr.Feature(lyr.GetLayerDefn())
        feat.SetGeometry(geom)
        lyr.CreateFeature(feat)
    vds = None
    return path


def field_gpkg(path, c0=300, r0=200, w=600, h=400, epsg=None):
    """A rectangle over pixels c0..c0+w, r0..r0+h of the embedded scene, in the scene's CRS or in
    EPSG:epsg."""
    from osgeo import ogr

    from mpmae_core.data import sample

    stack = gdal.Open(str(sample.build(verbose=False)["stack"]))
    gt = stack.GetGeoTransform()
    srs = osr.SpatialReference(wkt=stack.GetProjection())
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    x0, y0 = gt[0] + c0 * gt[1], gt[3] + r0 * gt[5]
    poly = ogr.CreateGeometryFromWkt(f"POLYGON(({x0} {y0},{x0 + w * gt[1]} {y0},{x0 + w * gt[1]} {y0 + h * gt[5]},"
                                     f"{x0} {y0 + h * gt[5]},{x0} {y0}))")
    if epsg:
        other = osr.SpatialReference()
        other.ImportFromEPSG(epsg)
        other.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        poly.Transform(osr.CoordinateTransformation(srs, other))
        srs = other
    return write_polygons(path, [poly], srs, "field")


def series_dates(folder, days=("20170216", "20170318", "20170427"), shifts=(0, 60, 120), window=(600, 200, 256, 192)):
    """Dates of one place from the embedded real scene, named and dated as products are: the
    scene's bright clouds (blue in its top 4 %) shifted right by ``shifts`` px on each date, as no
    data. Returns (paths, clouds (T, h, w) bool, the clear crop (C, h, w))."""
    from mpmae_core.data import sample

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    src = gdal.Translate("", str(sample.build(verbose=False)["stack"]), format="MEM", srcWin=list(window))
    arr = src.ReadAsArray()
    blue = arr[1].astype(float)
    cloud = blue > np.percentile(blue, 96)
    paths, clouds = [], []
    for shift, day in zip(shifts, days):
        c = np.roll(cloud, shift, axis=1)
        data = arr.copy()
        data[:, c] = 0  # no data
        path = folder / f"S2A_MSIL1C_{day}T102101_T33UUU.tif"
        ds = gdal.GetDriverByName("GTiff").CreateCopy(str(path), src)
        ds.SetMetadataItem("ACQUISITION_DATE", f"{day[:4]}-{day[4:6]}-{day[6:]}")  # each date's own
        for b in range(data.shape[0]):
            ds.GetRasterBand(b + 1).WriteArray(data[b])
        ds = None
        paths.append(path)
        clouds.append(c)
    return paths, np.array(clouds), arr


def point_labels(path, points, srs_wkt, geotransform, field="landuse"):
    """A GeoPackage of labelled points: ``points`` [(row, col, class name)] on the grid of
    ``geotransform``, at pixel centres."""
    from osgeo import ogr

    srs = osr.SpatialReference(wkt=srs_wkt)
    Path(path).unlink(missing_ok=True)
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    layer = ds.CreateLayer("labels", srs, ogr.wkbPoint)
    layer.CreateField(ogr.FieldDefn(field, ogr.OFTString))
    gt = geotransform
    for r, c, name in points:
        f = ogr.Feature(layer.GetLayerDefn())
        f.SetField(field, name)
        g = ogr.Geometry(ogr.wkbPoint)
        g.AddPoint(gt[0] + (c + 0.5) * gt[1], gt[3] + (r + 0.5) * gt[5])
        f.SetGeometry(g)
        layer.CreateFeature(f)
    ds = None
    return path


def quantise_alphaearth(v):
    """Unit vectors (..., 64) stored as AlphaEarth stores them: int8 of sign(v) sqrt(|v|) 127.5."""
    return np.clip(np.round(np.sign(v) * np.sqrt(np.abs(v)) * 127.5), -127, 127).astype(np.int8)


def write_alphaearth(path, stored, geotransform, wkt):
    """An AlphaEarth-format GeoTIFF: ``stored`` int8 (h, w, 64) in signed-byte bands A00..A63."""
    h, w, n = stored.shape
    ds = gdal.GetDriverByName("GTiff").Create(str(path), w, h, n, gdal.GDT_Byte, ["PIXELTYPE=SIGNEDBYTE"])
    ds.SetGeoTransform(geotransform)
    ds.SetProjection(wkt)
    for i in range(n):
        ds.GetRasterBand(i + 1).SetDescription(f"A{i:02d}")
        ds.GetRasterBand(i + 1).WriteArray(stored[:, :, i].view(np.uint8))
    ds = None
    return path


def reopened_panel(panel, canvas, qtbot, project_file):
    """Save the project to ``project_file``, close ``panel``, clear and read the project again, and
    return a new few-shot panel that restored its state from it: what a person does who reopens
    their work."""
    from qgis.core import QgsProject

    from mmearth_qgis.panel import FewShotPanel

    assert QgsProject.instance().write(str(project_file))
    panel.shutdown()
    QgsProject.instance().clear()
    assert QgsProject.instance().read(str(project_file))
    again = FewShotPanel(canvas)
    qtbot.addWidget(again)
    again.restore_state()
    return again
