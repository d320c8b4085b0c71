"""(LQ, HQ) training pairs for the restorer: synthetic on the fly, or read from a pairs folder.

* ``SyntheticPairs``: HQ aligned faces kept in memory (only the requested split, see
  ``flipnet.splits``), each degraded when it is drawn with one of several presets (blur rescaled
  to the face size, ``degradations.presets.preset_for_size``). The preset and every degradation
  value are a function of the sample's integer seed alone, so a run is reproducible and resumes
  exactly. When the preset turns the LQ gray, the HQ target is grayed too (GFPGAN ``gt_gray``,
  DifFace), so the net is never asked to invent colours.
* ``PairFolder``: ``<pairs_dir>/lq/*`` and ``<pairs_dir>/target/*`` matched by file name (without
  extension), e.g. real LQ faces and their pseudo targets for fine-tuning.
* ``restored_pairs`` writes such a folder from real LQ faces and a restorer's output (a fast
  restorer folder or a FLIPNET folder in restoration mode), for FLIPNET training and fine-tuning.

Both are indexed by the ``(index, flip, seed)`` keys of ``PairSampler`` and return
``(lq, hq)``, two float (3, size, size) tensors in [-1, 1].
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from flipnet.degradations.color import to_gray
from flipnet.degradations.face_size import (
    FaceSizeConfig,
    degrade_at_face_size,
    sample_face_size,
)
from flipnet.degradations.noise import draw_bernoulli, make_generator
from flipnet.degradations.pipeline import DegradationConfig, apply_params, sample_params
from flipnet.degradations.presets import get_preset, preset_for_size
from flipnet.errors import FlipnetError, ImageReadError
from flipnet.io import list_images, load_image, save_image, to_tensor, to_uint8
from flipnet.splits import in_split
from flipnet.training.data import ShuffleFlipSampler, resize_square


def load_faces(folder: str | os.PathLike, size: int, *, split: str | None = "train",
               limit: int | None = None, progress: bool = True) -> tuple[list[Path], np.ndarray]:
    """Read the ``split`` faces of a folder, resized: (paths, uint8 (N, size, size, 3))."""
    paths = in_split(list_images(folder), split)[:limit]
    kept, pixels = [], []
    for p in tqdm(paths, desc=f"reading {Path(folder).name} ({split or 'all'})",
                  disable=not progress):
        try:
            pixels.append(resize_square(load_image(p).rgb, size))
            kept.append(p)
        except ImageReadError as e:
            warnings.warn(f"skipped {p}: {e.problem}", stacklevel=2)
    if not kept:
        raise FlipnetError(f"{folder}: no readable images in split {split!r} "
                           f"({len(paths)} files tried)")
    return kept, np.stack(pixels)


def face_presets(names: Sequence[str], size: int) -> list[DegradationConfig]:
    """Presets by name, scaled from 512 px to ``size`` px faces (``preset_for_size``)."""
    if not names:
        raise FlipnetError("at least one degradation preset is needed")
    return [preset_for_size(n, size) for n in names]


class PairSampler(ShuffleFlipSampler):
    """Yields (index, flip, seed): order, flips and per-sample seeds from (seed, epoch) only."""

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch + 7_777_777)
        seeds = torch.randint(0, 2**62, (self.n,), generator=g).tolist()
        return iter([(i, f, s) for (i, f), s in zip(super().__iter__(), seeds)])


def _flip(rgb: np.ndarray, flip: bool) -> np.ndarray:
    return np.ascontiguousarray(rgb[:, ::-1] if flip else rgb)


_CLEAN_SALT = 0xC1EA4  # the clean draw has its own generator: the degradations are unchanged


class SyntheticPairs(Dataset):
    """HQ faces in memory, degraded on the fly with a preset chosen by the sample's seed; with
    ``small_faces``, a share of them rendered as faces of 16-128 px in the photo
    (``degradations.face_size``); with ``clean_prob``, a share left as they are (LQ = HQ), so
    the restorer learns to leave a sharp face alone. ``paths`` (optional) name the faces, for
    sampling weights by group."""

    def __init__(self, pixels: np.ndarray, presets: Sequence[DegradationConfig], *,
                 small_faces: FaceSizeConfig | None = None, clean_prob: float = 0.0,
                 paths: Sequence[Path] | None = None):
        if paths is not None and len(paths) != len(pixels):
            raise ValueError(f"{len(paths)} paths for {len(pixels)} faces")
        self.pixels, self.presets = pixels, list(presets)  # (N, S, S, 3) uint8
        self.paths = None if paths is None else list(paths)
        self.small_faces, self.clean_prob = small_faces, clean_prob
        if small_faces is not None and small_faces.prob > 0:
            # a small face re-scales the named preset to its own size
            self.base_names = [cfg.name.split("@")[0] for cfg in self.presets]
            for name in self.base_names:
                get_preset(name)  # ConfigError for a custom config

    def __len__(self) -> int:
        return len(self.pixels)

    def degrade(self, hq: torch.Tensor, seed: int) -> tuple[torch.Tensor, dict]:
        """(1, 3, S, S) HQ -> (LQ, params) with preset ``seed % len(presets)``."""
        which = seed % len(self.presets)
        if self.clean_prob and draw_bernoulli(make_generator(seed ^ _CLEAN_SALT),
                                              self.clean_prob):
            return hq.clone(), {"seed": seed, "clean": True, "color": None}  # do no harm
        face_px = sample_face_size(self.small_faces, seed, hq.shape[-1])
        if face_px is not None:
            return degrade_at_face_size(hq, self.base_names[which], face_px, seed)
        params = sample_params(self.presets[which], seed)
        return apply_params(hq, [params]), params

    def __getitem__(self, key) -> tuple[torch.Tensor, torch.Tensor]:
        """``(index, flip, seed)`` -> (lq, hq), each (3, S, S) float in [-1, 1]."""
        index, flip, seed = key
        hq = to_tensor(_flip(self.pixels[index], flip))  # (1, 3, S, S)
        lq, params = self.degrade(hq, seed)
        if params["color"] is not None and params["color"]["gray"]:
            hq = to_gray((hq + 1) / 2) * 2 - 1
        return lq[0], hq[0]


class PairFolder(Dataset):
    """``lq/`` and ``target/`` images matched by name, resized to ``size`` and kept in memory."""

    def __init__(self, root: str | os.PathLike, size: int, *, progress: bool = True):
        root = Path(root)
        lq_dir, target_dir = root / "lq", root / "target"
        for d in (lq_dir, target_dir):
            if not d.is_dir():
                raise FlipnetError(f"{root}: a pairs folder needs lq/ and target/ subfolders "
                                   f"({d.name}/ is missing)")
        lq_files = {p.stem: p for p in list_images(lq_dir)}
        target_files = {p.stem: p for p in list_images(target_dir)}
        names = sorted(set(lq_files) & set(target_files))
        unmatched = sorted(set(lq_files) ^ set(target_files))
        if unmatched:
            warnings.warn(f"{root}: {len(unmatched)} files without a partner are ignored "
                          f"(e.g. {unmatched[0]})", stacklevel=2)
        lq, target, self.names = [], [], []
        for name in tqdm(names, desc=f"reading {root.name}", disable=not progress):
            try:
                a = resize_square(load_image(lq_files[name]).rgb, size)
                b = resize_square(load_image(target_files[name]).rgb, size)
            except ImageReadError as e:
                warnings.warn(f"skipped pair {name}: {e}", stacklevel=2)
                continue
            lq.append(a)
            target.append(b)
            self.names.append(name)
        if not self.names:
            raise FlipnetError(f"{root}: no readable (lq, target) pairs with matching names")
        self.lq, self.target = np.stack(lq), np.stack(target)  # (N, S, S, 3) uint8 each

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, key) -> tuple[torch.Tensor, torch.Tensor]:
        """``(index, flip, seed)`` (seed unused) -> (lq, target), each (3, S, S) in [-1, 1]."""
        index, flip = key[0], key[1]
        return (to_tensor(_flip(self.lq[index], flip))[0],
                to_tensor(_flip(self.target[index], flip))[0])


def fixed_pairs(dataset: Dataset, count: int, *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``count`` pairs, unflipped, seeds ``seed + i``: (lq, hq), each (count, 3, S, S)."""
    items = [dataset[(i, False, seed + i)] for i in range(min(count, len(dataset)))]
    return torch.stack([a for a, _ in items]), torch.stack([b for _, b in items])


def _pseudo_hq_fn(restorer: str | os.PathLike, *, steps: int, seed: int, device: str):
    """``(lq (N, 3, S, S), indices) -> pseudo HQ (N, 3, S, S)`` for a restorer folder or a
    FLIPNET folder (restoration mode, image k seeded ``seed + index_k``)."""
    import torch.nn.functional as F

    from flipnet.config import folder_config_class

    if folder_config_class(restorer) == "FlipNetConfig":
        from flipnet.diffusion.flipnet_sampling import flipnet_restore
        from flipnet.models.flipnet import load_flipnet

        net = load_flipnet(restorer, device=device)
        return lambda lq, indices: flipnet_restore(net, lq.to(device), steps=steps, seed=seed,
                                                   indices=indices).cpu()
    from flipnet.models.restorer import load_restorer

    model, rcfg = load_restorer(restorer, device=device)

    def run(lq: torch.Tensor, indices: list[int]) -> torch.Tensor:
        x = F.interpolate(lq, size=rcfg.image_size, mode="bicubic", align_corners=False)
        return model(x.clamp(-1, 1).to(device)).cpu()

    return run


@torch.no_grad()
def restored_pairs(real_lq_dir: str | os.PathLike, pairs_dir: str | os.PathLike,
                   restorer: str | os.PathLike, *, split: str = "train", size: int = 128,
                   limit: int = 0, batch_size: int = 32, steps: int = 25, seed: int = 0,
                   device: str = "cpu", progress: bool = True) -> int:
    """Write ``lq/`` (the real faces) and ``target/`` (a restorer's pseudo HQ) pairs; resumable
    (done pairs are skipped). ``restorer``: a restorer folder or a FLIPNET folder (sampled with
    ``steps`` DDIM steps, face k of the split seeded ``seed + k``). Returns the number of pairs
    in the folder; unreadable files are skipped with a warning."""
    pairs_dir = Path(pairs_dir)
    files = in_split(list_images(real_lq_dir), split)[: limit or None]
    if not files:
        raise FlipnetError(f"{real_lq_dir}: no images in split {split!r}")
    todo = [(k, f) for k, f in enumerate(files)
            if not (pairs_dir / "target" / f"{f.stem}.png").is_file()]
    restore = _pseudo_hq_fn(restorer, steps=steps, seed=seed, device=device) if todo else None
    for i in tqdm(range(0, len(todo), batch_size), desc="pseudo HQ pairs", disable=not progress):
        batch, names, indices = [], [], []
        for k, f in todo[i:i + batch_size]:
            try:
                batch.append(resize_square(load_image(f).rgb, size))
            except ImageReadError as e:
                warnings.warn(f"skipped {f}: {e.problem}", stacklevel=2)
                continue
            names.append(f.stem)
            indices.append(k)
        if not batch:
            continue
        target = to_uint8(restore(to_tensor(np.stack(batch)), indices))  # (N, size, size, 3)
        for name, a, b in zip(names, batch, target):
            save_image(pairs_dir / "lq" / f"{name}.png", a)
            save_image(pairs_dir / "target" / f"{name}.png", b)  # last: marks the pair done
    return len(list((pairs_dir / "target").glob("*.png")))
