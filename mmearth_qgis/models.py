"""Where models live: a models folder (setting), and a model chosen by name from it or by file."""

import os
from pathlib import Path

from qgis.core import QgsApplication, QgsProcessingException, QgsSettings

SETTINGS_KEY = "mmearth/models_folder"


def models_folder() -> Path:
    """$MMEARTH_MODELS, else the plugin setting, else 'mmearth_models' in the QGIS profile."""
    env = os.environ.get("MMEARTH_MODELS")
    if env:
        return Path(env)
    value = QgsSettings().value(SETTINGS_KEY, "", type=str)
    if value:
        return Path(value)
    return Path(QgsApplication.qgisSettingsDirPath()) / "mmearth_models"


def set_models_folder(path) -> None:
    QgsSettings().setValue(SETTINGS_KEY, str(path))


def available_models(folder=None) -> list:
    folder = Path(folder) if folder else models_folder()
    return sorted(p.stem for p in folder.glob("*.onnx")) if folder.is_dir() else []


def resolve_model(value: str, what: str = "model") -> str:
    """A model file path from a path or from a name in the models folder; a clear error otherwise."""
    if not value:
        raise QgsProcessingException(f"No {what} given: choose an .onnx file or the name of a model in "
                                     f"{models_folder()}")
    path = Path(value)
    if path.is_file():
        return str(path)
    if path.parent == Path(".") and path.suffix in ("", ".onnx"):
        candidate = models_folder() / (path.stem + ".onnx")
        if candidate.is_file():
            return str(candidate)
    names = available_models()
    listing = f"available models: {', '.join(names)}" if names else "that folder holds no .onnx models"
    raise QgsProcessingException(f"The {what} '{value}' was not found, neither as a file nor by name in the models "
                                 f"folder {models_folder()} ({listing}). Export one with `python -m training.export`.")
