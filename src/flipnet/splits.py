"""Fixed train / test splits of the shared data, decided by file name alone.

Every command that trains takes ``split="train"``; every benchmark set is built from
``split="test"``, so evaluation faces never reach training, whatever folder they sit in.

* UTKFace: a face is in the test split when the SHA-1 of its file name (without folders and
  with the ``.png``/``.jpg`` extensions stripped) falls in the lowest ``TEST_PERCENT`` percent.
* LFW: by person, as issue 5 asks: people whose name starts with A-H train, I-L test.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

TEST_PERCENT = 5


def _stem(path: str | Path) -> str:
    name = Path(path).name
    for ext in (".png", ".jpg", ".jpeg", ".chip"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
    for ext in (".chip", ".jpg"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
    return name


def utkface_split(path: str | Path) -> str:
    """'test' or 'train' for a UTKFace file (raw or prepared), from its name's hash."""
    h = int(hashlib.sha1(_stem(path).encode()).hexdigest()[:8], 16) % 100
    return "test" if h < TEST_PERCENT else "train"


def lfw_split(path: str | Path) -> str:
    """'train' for LFW people A-H, 'test' for I-L (the person is the parent folder)."""
    person = Path(path).parent.name or Path(path).name
    return "train" if person[:1].upper() <= "H" else "test"


def split_of(path: str | Path) -> str:
    """The split of a shared-data file: LFW if it sits in a person folder, else UTKFace rule."""
    p = Path(path)
    if "lfw" in {part.lower().split("-")[0] for part in p.parts}:
        return lfw_split(p)
    return utkface_split(p)


def in_split(paths, split: str | None) -> list[Path]:
    """Keep the paths in ``split`` ('train', 'test'); ``None`` or 'all' keeps everything."""
    if split in (None, "all"):
        return [Path(p) for p in paths]
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}: use train, test or all")
    return [Path(p) for p in paths if split_of(p) == split]


def utkface_labels(path: str | Path) -> dict | None:
    """Age, gender and race from a UTKFace name ``AGE_GENDER_RACE_DATE...``; None if absent."""
    parts = _stem(path).split("_")
    try:
        age, gender, race = int(parts[0]), int(parts[1]), int(parts[2])
    except (IndexError, ValueError):
        return None
    return {"age": age, "gender": ["male", "female"][gender] if gender in (0, 1) else "unknown",
            "race": ["white", "black", "asian", "indian", "others"][race] if 0 <= race < 5
            else "unknown"}


def age_band(age: int) -> str:
    """The age band the benchmarks report identity by: 0-14, 15-39, 40-64 or 65+."""
    return "0-14" if age < 15 else "15-39" if age < 40 else "40-64" if age < 65 else "65+"


def group_balance_weights(paths) -> list[float]:
    """Sampling weights that give each UTKFace (age band, race) group the same total weight:
    1 / the group's size. Files without UTKFace labels form one group of their own."""
    groups = []
    for path in paths:
        lab = utkface_labels(path)
        groups.append(None if lab is None else (age_band(lab["age"]), lab["race"]))
    counts: dict = {}
    for g in groups:
        counts[g] = counts.get(g, 0) + 1
    return [1.0 / counts[g] for g in groups]
