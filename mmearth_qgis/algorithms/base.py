"""Shared pieces of the mmearth algorithms: raster inputs with clear errors."""

from qgis.core import (
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingParameterRasterLayer,
    QgsRasterLayer,
)


def raster_problem(raw) -> str:
    """Why a raster parameter value cannot be used, in an analyst's words; '' if GDAL can open it."""
    from mpmae_core.runtime.gdal_io import RasterError, open_raster

    if isinstance(raw, QgsRasterLayer):
        raw = raw.source()
    if not isinstance(raw, str) or not raw:
        return ""
    try:
        open_raster(raw)
    except RasterError as exc:
        return str(exc)
    return ""


class MMEarthAlgorithm(QgsProcessingAlgorithm):
    """Base class: every mmearth algorithm is re-creatable and reports errors an analyst understands."""

    def createInstance(self):  # noqa: N802
        return type(self)()

    def helpUrl(self):  # noqa: N802
        return ""

    def checkParameterValues(self, parameters, context):  # noqa: N802
        """QGIS's own check says 'not found' for any raster it cannot load; say precisely why."""
        ok, message = super().checkParameterValues(parameters, context)
        if not ok:
            for definition in self.parameterDefinitions():
                if isinstance(definition, QgsProcessingParameterRasterLayer):
                    problem = raster_problem(parameters.get(definition.name()))
                    if problem:
                        return False, problem
        return ok, message

    def raster_source(self, parameters, name, context) -> str:
        """The GDAL source of a raster parameter, or a QgsProcessingException naming what is wrong."""
        layer = self.parameterAsRasterLayer(parameters, name, context)
        if layer is None or not layer.isValid():
            raw = parameters.get(name)
            problem = raster_problem(raw)
            if problem:
                raise QgsProcessingException(problem)
            raise QgsProcessingException(
                f"Could not load the raster given for {name} ({raw!r}). Give a raster file path or the "
                "name or id of a raster layer in the current project."
            )
        if layer.providerType() != "gdal":
            raise QgsProcessingException(
                f"The layer '{layer.name()}' comes from the '{layer.providerType()}' provider; mmearth reads "
                "rasters through GDAL. Save it as a GeoTIFF (Export > Save As...) and use that file."
            )
        return layer.source()
