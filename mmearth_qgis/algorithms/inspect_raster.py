"""mmearth:inspect - can this raster be fed to an MMEarth Sentinel-2 model, and how do its bands map?"""

import json

from qgis.core import (
    QgsFeature,
    QgsFeatureSink,
    QgsField,
    QgsFields,
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputBoolean,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterRasterLayer,
    QgsWkbTypes,
    QgsCoordinateReferenceSystem,
)
from qgis.PyQt.QtCore import QVariant

from .base import MMEarthAlgorithm

_FIELD_TYPES = {
    "band": QVariant.Int, "description": QVariant.String, "s2_band": QVariant.String,
    "data_type": QVariant.String, "nodata": QVariant.Double, "min": QVariant.Double,
    "max": QVariant.Double, "mean": QVariant.Double, "valid": QVariant.Double,
}


class InspectRasterAlgorithm(MMEarthAlgorithm):
    INPUT = "INPUT"
    OUTPUT = "OUTPUT"
    REPORT = "REPORT"
    SOURCE = "SOURCE"

    def name(self):
        return "inspect"

    def displayName(self):  # noqa: N802
        return "Inspect raster for MMEarth"

    def group(self):
        return "Data preparation"

    def groupId(self):  # noqa: N802
        return "data"

    def shortHelpString(self):  # noqa: N802
        return (
            "Reads a raster and reports its bands (description, data type, nodata, sampled value range), "
            "CRS and pixel size, then tells whether it can be fed to an MMEarth model of the chosen input "
            "source (Sentinel-2 unless set otherwise) and "
            "which raster band feeds each model input. Bands are matched by name (B8A, B08, 'red', "
            "'nir08', ...), never by position: MMEarth orders B8A before B8.\n\n"
            "Outputs an optional band table and an optional HTML report; the verdict and the band "
            "mapping are also returned as values (S2_COMPATIBLE, BAND_MAPPING) for models and scripts."
        )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Raster layer"))
        self.addParameter(QgsProcessingParameterEnum(self.SOURCE, "Input source", self._sources(), defaultValue=0))
        self.addParameter(QgsProcessingParameterFeatureSink(
            self.OUTPUT, "Band table", QgsProcessing.TypeVector, optional=True, createByDefault=False))
        self.addParameter(QgsProcessingParameterFileDestination(
            self.REPORT, "HTML report", "HTML files (*.html)", optional=True, createByDefault=False))
        self.addOutput(QgsProcessingOutputBoolean("S2_COMPATIBLE", "Can feed a Sentinel-2 model"))
        self.addOutput(QgsProcessingOutputNumber("BAND_COUNT", "Number of bands"))
        self.addOutput(QgsProcessingOutputNumber("WIDTH", "Width (pixels)"))
        self.addOutput(QgsProcessingOutputNumber("HEIGHT", "Height (pixels)"))
        self.addOutput(QgsProcessingOutputString("CRS", "CRS"))
        self.addOutput(QgsProcessingOutputNumber("PIXEL_SIZE_X", "Pixel width (CRS units)"))
        self.addOutput(QgsProcessingOutputNumber("PIXEL_SIZE_Y", "Pixel height (CRS units)"))
        self.addOutput(QgsProcessingOutputString("BAND_MAPPING", "Model band <- raster band (JSON)"))
        self.addOutput(QgsProcessingOutputString("FINDINGS", "Findings (JSON)"))
        self.addOutput(QgsProcessingOutputString("EMBEDDING", "Another model's embedding it is (AlphaEarth, TESSERA; "
                                                              "empty: none)"))

    def process(self, parameters, context, feedback):
        from mpmae_core.runtime.io import inspect as rinspect
        from mpmae_core.runtime.io.files import atomic_write_text
        from mpmae_core.runtime.io.gdal_io import RasterError

        from mpmae_core.runtime.io.files import check_output
        from mpmae_core.runtime.inference.predict import input_files

        source = self.raster_source(parameters, self.INPUT, context)
        report = self.parameterAsFileOutput(parameters, self.REPORT, context)
        if report:
            check_output(report, input_files(source), "report", (".html", ".htm"), "an HTML page")
        feedback.setProgressText("Reading raster metadata and a sample of its pixels")
        from mpmae_core.runtime.io.embeddings import inspect_embedding

        embedding = inspect_embedding(source) or []
        for line in embedding:  # what the file is, before the table a model's input gets
            feedback.pushInfo(line)
        try:
            assessment = rinspect.inspect_raster(
                source, source=list(self._source_names())[self.parameterAsEnum(parameters, self.SOURCE, context)])
        except RasterError as exc:
            raise QgsProcessingException(str(exc)) from None
        for line in rinspect.summary_lines(assessment):
            feedback.pushInfo(line)
        feedback.setProgress(60)

        results = self._values(assessment)
        results["EMBEDDING"] = embedding[0].split(": ", 1)[-1] if embedding else ""
        if parameters.get(self.OUTPUT) is not None:
            results[self.OUTPUT] = self._write_table(parameters, context, assessment)
        if report:
            atomic_write_text(report, rinspect.html_report(assessment))
            results[self.REPORT] = report
        feedback.setProgress(100)
        return results

    @staticmethod
    def _source_names():
        from mpmae_core import registry

        return list(registry.SOURCES)

    @staticmethod
    def _sources():
        from mpmae_core import registry

        return [f"{s.name}: {s.summary or s.title}" for s in registry.SOURCES.values()]

    @staticmethod
    def _values(a):
        f = a.facts
        mapping = {w: (None if s is None else s + 1) for w, s in zip(a.match.wanted, a.match.source_index)}
        return {
            "S2_COMPATIBLE": a.compatible,
            "BAND_COUNT": len(f.bands),
            "WIDTH": f.width,
            "HEIGHT": f.height,
            "CRS": f.crs_authid or f.crs_name,
            "PIXEL_SIZE_X": f.pixel_size[0],
            "PIXEL_SIZE_Y": f.pixel_size[1],
            "BAND_MAPPING": json.dumps(mapping),
            "FINDINGS": json.dumps([{"severity": x.severity, "message": x.message} for x in a.findings]),
        }

    def _write_table(self, parameters, context, a):
        from mpmae_core.runtime.io.inspect import BAND_TABLE_COLUMNS, band_table_rows

        fields = QgsFields()
        for col in BAND_TABLE_COLUMNS:
            fields.append(QgsField(col, _FIELD_TYPES[col]))
        sink, dest = self.parameterAsSink(
            parameters, self.OUTPUT, context, fields, QgsWkbTypes.NoGeometry, QgsCoordinateReferenceSystem())
        if sink is None:
            raise QgsProcessingException(self.invalidSinkError(parameters, self.OUTPUT))
        for row in band_table_rows(a):
            feat = QgsFeature(fields)
            feat.setAttributes(list(row))
            sink.addFeature(feat, QgsFeatureSink.FastInsert)
        return dest
