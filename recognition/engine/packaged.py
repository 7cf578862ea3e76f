"""Where the model files shipped by PyPI's face-recognition-models package are."""

import importlib.util
from pathlib import Path


def packaged_model_path(file_name: str) -> Path:
    """A file of the installed face-recognition-models package's models/ folder (dlib's ResNet
    and its 5-point shape predictor).

    Found via the import system without importing the package: its __init__ needs
    pkg_resources, which current setuptools no longer provides.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the face-recognition-models package is not installed (requirements/engine.txt)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / file_name
    if not path.is_file():
        raise FileNotFoundError(f"{file_name} is missing from {path.parent}")
    return path
