"""``mmearth stack`` / ``mmearth:stack``: a product written as what the model sees (io.products
for the bands, io.masks for what is no data, io.aoi for the area), styled in natural colour."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mpmae_core.runtime.io import products


def _dn_offset(ds, product: products.Product) -> float:
    return float(product.spec.detect_offset(ds.GetMetadata() or {}) or 0.0)


def write_stack(source, output, cog: bool = False, aoi=None, masks=None, log=lambda m: None) -> dict:
    """``mmearth stack``: what the model sees, as a file to look at. A VRT (``.vrt``: the product's
    bands by name, a few kilobytes pointing at the product) or, with ``cog``, a Cloud-Optimised
    GeoTIFF of the bands plus a last band ``MASK`` (1 where the masks make the pixel no data: the
    product's quality layer and the ``masks`` options, as the model's input reads them; 0
    elsewhere). ``aoi`` cuts both to the area's window (and, in the COG, masks outside the area).
    Both carry the level and offsets, and a natural-colour style (.qml) beside them; both appear
    whole or not at all."""
    from mpmae_core.runtime.io.files import atomic_output, check_output
    from mpmae_core.runtime.io.gdal_io import gdal, gdal_errors, open_raster
    from mpmae_core.runtime.io.styles import write_natural_colour_style

    product = products.open_product(source)
    ext = (".tif", ".tiff") if cog else (".vrt",)
    check_output(output, [str(source)], "stack", ext, "a GeoTIFF" if cog else "a VRT")
    g = gdal()
    vrt = products.build_vrt(product, Path(str(output) + ".bands.tmp.vrt"))
    work_files = [Path(vrt)]
    try:
        src = open_raster(vrt)
        W, H, n = src.RasterXSize, src.RasterYSize, src.RasterCount
        gt = src.GetGeoTransform()
        x0, y0, w, h, inside = 0, 0, W, H, None
        if aoi:
            from mpmae_core.runtime.io.aoi import aoi_window, polygon_mask, read_aoi

            geom = read_aoi(aoi, src.GetProjection())
            x0, y0, w, h = aoi_window(geom, gt, W, H)
            log(f"area of interest: a window of {w} x {h} px of {W} x {H}")
        wgt = (gt[0] + x0 * gt[1], gt[1], 0.0, gt[3] + y0 * gt[5], 0.0, gt[5])
        if not cog:
            if masks is not None:  # a VRT holds the bands only: say so rather than drop the options in silence
                log("warning: a VRT stack holds the product's bands only, so the mask options are not in it (the "
                    "model applies them when it reads the product); write a COG (--cog) to get them as a MASK band")
            bounds = (wgt[0], wgt[3] + h * gt[5], wgt[0] + w * gt[1], wgt[3]) if aoi else None
            products.build_vrt(product, output, bounds=bounds)
            write_natural_colour_style(output, product.order(), product.spec, _dn_offset(src, product))
            return {"output": str(output), "bands": product.order(), "level": product.level or ""}
        from mpmae_core.runtime.io.masks import build_masks

        mask, notes = build_masks(src, masks)
        if aoi:
            inside = polygon_mask(geom, wgt, w, h).inside
        with atomic_output(output) as tmp:
            mem_path = str(tmp) + ".work.tif"
            work_files.append(Path(mem_path))
            ds = g.GetDriverByName("GTiff").Create(mem_path, w, h, n + 1, g.GDT_UInt16,
                                                   options=["TILED=YES", "COMPRESS=DEFLATE", "BIGTIFF=IF_SAFER"])
            ds.SetGeoTransform(wgt)
            ds.SetProjection(src.GetProjection())
            meta = {k: v for k, v in (src.GetMetadata() or {}).items() if not k.startswith(products.MASK_FILE_KEY)}
            ds.SetMetadata(meta)
            for y in range(0, h, 512):
                rows = min(512, h - y)
                for b in range(1, n + 1):
                    with gdal_errors() as errors:
                        arr = src.GetRasterBand(b).ReadAsArray(x0, y0 + y, w, rows)
                    if arr is None:
                        raise products.ProductError(f"could not read {product.name}, band {b} ({errors.text()}): the "
                                           "product is damaged; download it again")
                    ds.GetRasterBand(b).WriteArray(arr, 0, y)
                masked = mask.masked(x0, y0 + y, w, rows) if mask is not None else np.zeros((rows, w), bool)
                if inside is not None:
                    masked = masked | ~inside[y:y + rows]
                ds.GetRasterBand(n + 1).WriteArray(masked.astype(np.uint16), 0, y)
            for b in range(1, n + 1):
                ds.GetRasterBand(b).SetDescription(src.GetRasterBand(b).GetDescription())
                ds.GetRasterBand(b).SetNoDataValue(product.spec.nodata)
            ds.GetRasterBand(n + 1).SetDescription("MASK")
            ds = None
            with gdal_errors() as errors:
                out = g.Translate(str(tmp), mem_path, format="COG", creationOptions=["COMPRESS=DEFLATE"])
            if out is None:
                raise products.ProductError(f"could not write the COG '{output}': {errors.text()}")
            out = None
        write_natural_colour_style(output, product.order() + ["MASK"], product.spec, _dn_offset(src, product))
    finally:
        for f in work_files:
            f.unlink(missing_ok=True)
    log(f"wrote {output}: {n} bands and MASK ({'; '.join(notes) or 'no quality layer in the product'})")
    return {"output": str(output), "bands": product.order() + ["MASK"], "level": product.level or ""}
