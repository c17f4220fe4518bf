"""mmearth:fetch_model - a released MMEarth model, by name, URL or file, into the models folder."""

from qgis.core import (
    QgsProcessingException,
    QgsProcessingOutputString,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterString,
)

from .base import MMEarthAlgorithm

BY_URL_OR_FILE = "(the URL or FILE below)"


def catalogue_names() -> list:
    from mpmae_core import registry

    return list(registry.released_models())


class FetchModelAlgorithm(MMEarthAlgorithm):
    NAME = "NAME"
    URL = "URL"
    FILE = "FILE"
    OUTPUT_FOLDER = "OUTPUT_FOLDER"
    MODEL_NAME = "MODEL_NAME"
    SHA256 = "SHA256"
    HEADS = "HEADS"
    MODEL = "MODEL"
    SEGMENTERS = "SEGMENTERS"

    def name(self):
        return "fetch_model"

    def displayName(self):  # noqa: N802
        return "Fetch a released MMEarth model"

    def group(self):
        return "Models"

    def groupId(self):  # noqa: N802
        return "models"

    def shortHelpString(self):  # noqa: N802
        return (
            "Downloads a pretrained MMEarth model released by its authors (or takes a checkpoint you downloaded, "
            "FILE, or one at another address, URL), converts it without PyTorch, and installs it in the models "
            "folder, where every algorithm finds it by name. All-modality models come with two landcover maps that "
            "need no labels: NAME-dynamic_world and NAME-esa_worldcover, for 'Landcover map' without a head. "
            "Downloads go through QGIS's network settings (proxy, authentication), resume after an interruption and "
            "are checked (SHA-256); nothing appears in the models folder until the models are complete and verified. "
            "The checkpoint is read without unpickling it: anything but weights and training arguments is refused."
        )

    def initAlgorithm(self, config=None):  # noqa: N802
        names = catalogue_names() + [BY_URL_OR_FILE]
        name = QgsProcessingParameterEnum(self.NAME, "Released model", names, defaultValue=0)
        name.setUsesStaticStrings(True)
        self.addParameter(name)
        self.addParameter(QgsProcessingParameterString(self.URL, "URL of a checkpoint (instead of a released "
                                                       "model)", optional=True))
        self.addParameter(QgsProcessingParameterFile(self.FILE, "Checkpoint file (.pth or .pt; instead of a "
                                                     "download)", optional=True))
        self.addParameter(QgsProcessingParameterFolderDestination(
            self.OUTPUT_FOLDER, "Models folder (empty: the plugin's models folder)", optional=True,
            createByDefault=False))
        advanced = [
            QgsProcessingParameterString(self.MODEL_NAME, "Install under this name (empty: the model's own)",
                                         optional=True),
            QgsProcessingParameterString(self.SHA256, "Expected SHA-256 of the download", optional=True),
            QgsProcessingParameterBoolean(self.HEADS, "Also install the landcover heads (Dynamic World, ESA "
                                          "WorldCover)", True),
        ]
        for p in advanced:
            p.setFlags(p.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
            self.addParameter(p)
        self.addOutput(QgsProcessingOutputString(self.MODEL, "Installed encoder"))
        self.addOutput(QgsProcessingOutputString(self.SEGMENTERS, "Installed landcover heads"))

    def process(self, parameters, context, feedback):
        from mpmae_core.runtime.releases.fetch import fetch_model
        from mpmae_core.runtime.io.files import Cancelled

        from ..models import models_folder
        from ..network import base_url_setting, qgis_download

        file = self.parameterAsFile(parameters, self.FILE, context)
        url = (self.parameterAsString(parameters, self.URL, context) or "").strip()
        name = self.parameterAsEnumString(parameters, self.NAME, context)
        spec = file or url or (name if name != BY_URL_OR_FILE else "")
        if not spec:
            raise QgsProcessingException(f"Choose a released model, or give a URL or a checkpoint FILE "
                                         f"(released models: {', '.join(catalogue_names())}).")
        folder = self.parameterAsString(parameters, self.OUTPUT_FOLDER, context) if parameters.get(
            self.OUTPUT_FOLDER) else ""
        folder = folder or str(models_folder())

        def log(message):
            feedback.pushInfo(message)

        try:
            res = fetch_model(spec, folder, name=(self.parameterAsString(parameters, self.MODEL_NAME, context) or None),
                              base_url=base_url_setting() or None,
                              sha256=(self.parameterAsString(parameters, self.SHA256, context) or None),
                              heads=self.parameterAsBool(parameters, self.HEADS, context), downloader=qgis_download,
                              progress=lambda f: feedback.setProgress(100 * f), cancelled=feedback.isCanceled, log=log)
        except Cancelled as exc:
            raise QgsProcessingException(f"Cancelled: nothing was installed ({exc}).") from None
        feedback.pushInfo(f"installed {res['name']}: {res['description']}")
        for task, path in res["segmenters"].items():
            feedback.pushInfo(f"landcover with no labels ({task}): {path}")
        feedback.pushInfo(f"use it by name: MODEL={res['name']}")
        return {self.MODEL: res["encoder"], self.SEGMENTERS: ";".join(res["segmenters"].values()),
                self.OUTPUT_FOLDER: folder}
