"""Folder dataset of aligned face crops and a seeded shuffle-and-flip sampler.

``FaceFolder`` reads every image once when it is built (unreadable files are skipped with a
warning then, never mid-training), resizes to the model size (area interpolation when shrinking,
cubic when enlarging, centre square crop first) and keeps uint8 pixels in memory.
``ShuffleFlipSampler`` yields ``(index, flip)`` pairs whose order and flips are a pure function of
(seed, epoch), so a resumed run sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler
from tqdm.auto import tqdm

from flipnet.errors import FlipnetError, ImageReadError
from flipnet.io import list_images, load_image, to_tensor
from flipnet.splits import in_split


def resize_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop uint8 (H, W, 3) to a square and resize to (size, size, 3), area/cubic."""
    h, w = rgb.shape[:2]
    s = min(h, w)
    y, x = (h - s) // 2, (w - s) // 2
    rgb = rgb[y:y + s, x:x + s]
    if s == size:
        return np.ascontiguousarray(rgb)
    interp = cv2.INTER_AREA if s > size else cv2.INTER_CUBIC
    return cv2.resize(rgb, (size, size), interpolation=interp)


class FaceFolder(Dataset):
    """Aligned face crops under ``root`` as float (3, size, size) tensors in [-1, 1]."""

    def __init__(self, root: str | os.PathLike, size: int, *, split: str | None = "train",
                 progress: bool = True):
        self.root, self.size = Path(root), size
        paths = in_split(list_images(self.root), split)  # held-out test faces never train
        pixels, kept, self.skipped = [], [], {}
        for p in tqdm(paths, desc=f"reading {self.root.name}", disable=not progress):
            try:
                pixels.append(resize_square(load_image(p).rgb, size))
                kept.append(p)
            except ImageReadError as e:
                self.skipped[str(p)] = e.problem
                warnings.warn(f"skipped {p}: {e.problem}", stacklevel=2)
        if not kept:
            raise FlipnetError(f"{self.root}: no readable images found "
                               f"({len(paths)} files tried)")
        self.paths = kept
        self.pixels = np.stack(pixels)  # (N, size, size, 3) uint8

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key) -> torch.Tensor:
        """``key`` = index or (index, flip) -> (3, size, size) float in [-1, 1]."""
        index, flip = key if isinstance(key, tuple) else (key, False)
        rgb = self.pixels[index]
        if flip:
            rgb = rgb[:, ::-1]
        return to_tensor(np.ascontiguousarray(rgb))[0]


class ShuffleFlipSampler(Sampler):
    """Yields (index, flip): a permutation and coin flips drawn from Generator(seed + epoch).

    With ``weights`` (one per item, e.g. ``splits.group_balance_weights``) an epoch is instead
    ``n`` draws with replacement in proportion to them: rare groups are seen as often as
    common ones, still a pure function of (seed, epoch)."""

    def __init__(self, n: int, *, seed: int, hflip: bool = True,
                 weights: list[float] | None = None):
        if weights is not None and len(weights) != n:
            raise ValueError(f"{len(weights)} sampling weights for {n} items")
        self.n, self.seed, self.hflip, self.epoch = n, seed, hflip, 0
        self.weights = None if weights is None else torch.tensor(weights, dtype=torch.float64)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order is yielded next (called by Accelerate's loaders)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = (torch.randperm(self.n, generator=g) if self.weights is None else
                 torch.multinomial(self.weights, self.n, replacement=True, generator=g)).tolist()
        flips = (torch.randint(0, 2, (self.n,), generator=g).tolist() if self.hflip
                 else [0] * self.n)
        return iter([(i, bool(f)) for i, f in zip(order, flips)])


class LatentFaces(Dataset):
    """The faces of a ``FaceFolder`` as latents of a frozen autoencoder, encoded once (both
    flips when ``flips``: the latent of a mirrored face is not the mirrored latent).

    A latent prior trains on these instead of pixels (issue 18, candidate b): encoding 20k faces
    costs minutes once, while encoding every batch would cost the autoencoder's forward pass at
    every step. ``cache`` (a .safetensors file) keeps them between runs; it is reused only when
    its key (autoencoder config + face list + size) matches.
    """

    def __init__(self, faces: FaceFolder, autoencoder: torch.nn.Module, *,
                 cache: str | os.PathLike | None = None, flips: bool = True,
                 batch_size: int = 32, progress: bool = True):
        self.faces = faces
        key = _latent_cache_key(faces, autoencoder) + ("-flips" if flips else "")
        cached = _read_latent_cache(cache, key) if cache else None
        self.latents = cached if cached is not None else self._encode(
            faces, autoencoder, batch_size, progress, flips)  # (N, 1 or 2, C, h, w) float16
        if cache and cached is None:
            from safetensors.torch import save_file
            Path(cache).parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(f"{cache}.tmp")
            save_file({"latents": self.latents}, str(tmp), metadata={"key": key})
            os.replace(tmp, cache)

    @staticmethod
    @torch.no_grad()
    def _encode(faces: FaceFolder, autoencoder, batch_size: int, progress: bool,
                flips: bool) -> torch.Tensor:
        out = []
        for start in tqdm(range(0, len(faces), batch_size), desc="encoding latents",
                          disable=not progress):
            x = to_tensor(faces.pixels[start:start + batch_size])  # (B, 3, S, S)
            views = [x, x.flip(-1)] if flips else [x]  # a latent's mirror is not its mirror's latent
            out.append(torch.stack([autoencoder.encode(v) for v in views], 1).half())
        return torch.cat(out)  # (N, views, C, h, w)

    def __len__(self) -> int:
        return len(self.faces)

    def __getitem__(self, key) -> torch.Tensor:
        """``key`` = index or (index, flip) -> (C, h, w) float latent."""
        index, flip = key if isinstance(key, tuple) else (key, False)
        if flip and self.latents.shape[1] == 1:
            raise IndexError("LatentFaces built with flips=False has no flipped latents")
        return self.latents[index, int(bool(flip))].float()


def _latent_cache_key(faces: FaceFolder, autoencoder: torch.nn.Module) -> str:
    import hashlib
    import json
    from dataclasses import asdict, replace

    # the decoder's settings do not change the latents (a grown decoder keeps the cache)
    encoding = replace(autoencoder.config, decoder_channels=None, decoder_layers_per_block=None)
    h = hashlib.sha1(json.dumps(asdict(encoding), sort_keys=True).encode())
    for p in faces.paths:
        h.update(str(p).encode())
    h.update(str(faces.size).encode())
    # the encoder's weights, not only the config: a decoder fine-tuned later keeps the cache
    for tensor in autoencoder.encoder.state_dict().values():
        h.update(tensor.detach().float().sum().numpy().tobytes())
    return h.hexdigest()


def _read_latent_cache(path: str | os.PathLike, key: str) -> torch.Tensor | None:
    from safetensors import safe_open
    if not Path(path).is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("key") != key:
                return None
            return f.get_tensor("latents")
    except Exception:  # a torn or foreign file is simply re-made
        return None


class DeviceFaces(Dataset):
    """A ``FaceFolder`` or ``LatentFaces`` held whole on ``device`` (a GPU), so a batch is an
    index into device memory instead of a host-to-device copy per step. Items equal the wrapped
    dataset's (same (index, flip) keys), so samplers and exact resume are unchanged."""

    def __init__(self, dataset: FaceFolder | LatentFaces, device: torch.device | str):
        self.latent = isinstance(dataset, LatentFaces)
        self.size = len(dataset)
        if self.latent:
            self.data = dataset.latents.to(device)  # (N, views, C, h, w) float16
        else:
            self.data = torch.from_numpy(dataset.pixels).to(device)  # (N, S, S, 3) uint8

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key) -> torch.Tensor:
        """``key`` = index or (index, flip) -> (C, h, w) float latent or (3, S, S) in [-1, 1]."""
        index, flip = key if isinstance(key, tuple) else (key, False)
        if self.latent:
            if flip and self.data.shape[1] == 1:
                raise IndexError("LatentFaces built with flips=False has no flipped latents")
            return self.data[index, int(bool(flip))].float()
        x = self.data[index].permute(2, 0, 1).float() / 127.5 - 1.0  # as io.to_tensor
        return x.flip(-1) if flip else x
