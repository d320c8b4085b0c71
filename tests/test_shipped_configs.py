"""Every training config in configs/ loads into its dataclass, and the shipped weights it names exist.

README and docs/TRAINING.md tell users to run these files as they are, so a field renamed in code
or a weights folder that was never shipped must fail here, not in a user's first command.
"""

import json
from pathlib import Path

import pytest

from flipnet.config import load_config
from flipnet.training.autoencoder import AutoencoderTrainConfig
from flipnet.training.face_embedding import EmbedderTrainConfig
from flipnet.training.face_locator import FaceLocatorTrainConfig
from flipnet.training.flipnet import FlipNetTrainConfig
from flipnet.training.prior import PriorTrainConfig
from flipnet.training.restorer import RestorerTrainConfig

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.json"))
CLASSES = {cls.__name__: cls for cls in (
    AutoencoderTrainConfig, EmbedderTrainConfig, FaceLocatorTrainConfig, FlipNetTrainConfig,
    PriorTrainConfig, RestorerTrainConfig)}


def _strings(value):
    """Every string inside a JSON value (nested dicts and lists included)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def test_the_configs_folder_is_not_empty():
    assert len(CONFIGS) >= 10


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_into_its_training_dataclass(path):
    name = json.loads(path.read_text()).get("_class")
    assert name in CLASSES, f"{path.name}: _class {name!r} is not a training config"
    cfg = load_config(CLASSES[name], path)
    assert type(cfg) is CLASSES[name]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_weights_named_by_a_config_exist(path):
    named = [s for s in _strings(json.loads(path.read_text())) if s.startswith("weights/")]
    missing = [s for s in named if not (REPO / s / "config.json").is_file()]
    assert not missing, f"{path.name} names weights that are not shipped: {missing}"
