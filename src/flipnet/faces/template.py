"""Canonical 5-point face templates: flipnet's own (derived from UTKFace) and FFHQ's (facexlib).

Points are in the FFHQ / facexlib order (see ``flipnet.faces.detect``): left eye, right eye,
nose tip, left mouth corner, right mouth corner, in pixel coordinates of a ``size`` x ``size``
crop. How the flipnet template was derived: docs/TEMPLATE.md (scripts/derive_template.py).
"""

from __future__ import annotations

import functools
import json
from importlib import resources

import numpy as np

from flipnet.errors import ConfigError

MIN_SIZE, MAX_SIZE = 64, 1024
TEMPLATE_NAMES = ("flipnet", "ffhq")
TEMPLATE_FILE = "template_utkface.json"

# facexlib FaceRestoreHelper, 512 x 512 FFHQ crops (used by GFPGAN / CodeFormer checkpoints)
FFHQ_512 = np.array([[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935],
                     [201.26117, 371.41043], [313.08905, 371.15118]], np.float32)


@functools.cache
def load_template_record() -> dict:
    """The shipped JSON record of the flipnet (UTKFace) template, with its provenance."""
    try:
        text = resources.files("flipnet").joinpath("data", TEMPLATE_FILE).read_text("utf-8")
        record = json.loads(text)
    except (OSError, ValueError) as e:
        raise ConfigError(f"flipnet/data/{TEMPLATE_FILE}: cannot read the face template ({e}); "
                          "regenerate it with scripts/derive_template.py") from None
    points = np.asarray(record.get("landmarks5", []), np.float32)
    if points.shape != (5, 2) or not np.isfinite(points).all():
        raise ConfigError(f"flipnet/data/{TEMPLATE_FILE}: 'landmarks5' must be 5 (x, y) pairs, "
                          f"got shape {points.shape}")
    return record


def normalized_template(name: str = "flipnet") -> np.ndarray:
    """(5, 2) float32 template in [0, 1] crop coordinates."""
    if name == "flipnet":
        return np.asarray(load_template_record()["landmarks5"], np.float32)
    if name == "ffhq":
        return FFHQ_512 / 512.0
    raise ConfigError(f"unknown face template {name!r}; choose one of {TEMPLATE_NAMES}")


def check_size(size: int) -> int:
    """Return ``size`` if it is an integer crop size in [64, 1024], else raise ConfigError."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise ConfigError(f"face crop size must be an integer, got {size!r}")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ConfigError(f"face crop size {size} is outside {MIN_SIZE}..{MAX_SIZE}")
    return int(size)


def get_template(name: str = "flipnet", size: int = 128) -> np.ndarray:
    """(5, 2) float32 landmark positions in pixels of a ``size`` x ``size`` aligned crop."""
    size = check_size(size)
    return (normalized_template(name) * size).astype(np.float32)
