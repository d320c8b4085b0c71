"""Locate dlib's model files shipped by the ``face-recognition-models`` package.

That package's ``__init__`` imports ``pkg_resources`` (gone from recent setuptools), so we find
its folder with ``importlib.util.find_spec`` and never import it.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

from flipnet.errors import FlipnetError

FILES = {
    "landmarks68": "shape_predictor_68_face_landmarks.dat",
    "landmarks5": "shape_predictor_5_face_landmarks.dat",
    "cnn_detector": "mmod_human_face_detector.dat",
    "identity": "dlib_face_recognition_resnet_model_v1.dat",
}


@functools.cache
def models_dir() -> Path:
    """The ``models/`` folder of the installed face-recognition-models package."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FlipnetError("package face-recognition-models is not installed "
                           "(pip install face-recognition-models)")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def model_path(name: str) -> str:
    """Path of one dlib model file by short name (see ``FILES``)."""
    p = models_dir() / FILES[name]
    if not p.exists():
        raise FlipnetError(f"{p}: dlib model file missing from face-recognition-models")
    return str(p)
