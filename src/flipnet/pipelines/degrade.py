"""Degrade every image of a folder into a reproducible synthetic LQ test set.

Image i of the sorted file list (``flipnet.io.list_images``) gets the seed ``seed + i``, so its
LQ does not depend on the batch size, on other images or on earlier interrupted runs: a run can
be resumed (existing outputs are kept, and their params are recomputed identically), and
``params.json`` (preset, seed, config and every file's drawn values) re-makes the set exactly
with ``flipnet.degradations.pipeline.apply_params``. ``flipnet_degrade_folder`` does the same with
FLIPNET's learned degradation mode instead of the naive pipeline (seed + i per image too, so a
batch or a resumed run gives the same image). Unreadable files are skipped with a warning
(they keep their index, so the other files' seeds do not move).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from flipnet.config import config_to_dict
from flipnet.degradations.pipeline import DegradationConfig, apply_params, sample_params
from flipnet.degradations.presets import PRESETS, get_preset
from flipnet.errors import ConfigError, ImageReadError, OutputPathError
from flipnet.io import (
    BatchLog,
    list_images,
    load_image,
    save_image,
    to_tensor,
    to_uint8,
    write_bytes_atomic,
)
from flipnet.weights import DEFAULT_WEIGHTS

PARAMS_FILE = "params.json"


@dataclass(frozen=True)
class DegradeConfig:
    """Options of ``flipnet degrade`` (source and destination folders are arguments)."""

    preset: str = field(default="gfpgan", metadata={
        "help": f"degradation preset: {', '.join(PRESETS)}"})
    seed: int = field(default=0, metadata={
        "help": "base seed; the i-th image (sorted by path) uses seed + i"})
    size: int | None = field(default=None, metadata={
        "help": "centre-crop to a square and resize to SIZE x SIZE before degrading"})
    batch_size: int = field(default=32, metadata={"help": "images degraded together"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    weights: str = field(default=DEFAULT_WEIGHTS["flipnet"], metadata={
        "help": "--method flipnet: FLIPNET weights folder (path or name under weights/)"})
    steps: int = field(default=50, metadata={"help": "--method flipnet: sampling steps"})
    sampler: str = field(default="ddim", metadata={
        "help": "--method flipnet: ddim | dpmpp_2m | ddpm"})
    device: str = field(default="auto", metadata={"help": "--method flipnet: auto | cpu | cuda"})
    color_fix: int = field(default=0, metadata={
        "help": "--method flipnet: put the HQ image's pixel low band (down/up factor N) back "
                "after decoding (removes colour blotches; 0 = off)"})


@dataclass
class DegradeReport:
    """What a folder run did: images written, kept from an earlier run, skipped (with reasons)."""

    src: str
    dst: str
    preset: str
    seed: int
    written: int = 0
    existing: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    params_path: str = ""

    def summary(self) -> str:
        """One line for the end of a run."""
        return (f"{self.written} written, {self.existing} already there, "
                f"{len(self.skipped)} skipped -> {self.dst}")


def _output_names(files: list[Path], src: Path) -> list[Path]:
    """Relative PNG output paths; inputs that would collide (a.jpg, a.png) keep their suffix."""
    rel = [f.relative_to(src) if f != src else Path(f.name) for f in files]
    plain = [r.with_suffix(".png") for r in rel]
    counts = defaultdict(int)
    for p in plain:
        counts[p] += 1
    return [p if counts[p] == 1 else r.with_name(r.name + ".png") for r, p in zip(rel, plain)]


def _square_resize(rgb: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop uint8 (H,W,3) to a square and resize it to (size,size,3) (PIL bicubic)."""
    h, w = rgb.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    crop = Image.fromarray(rgb[top:top + s, left:left + s])
    return np.asarray(crop.resize((size, size), Image.BICUBIC))


def _check_previous(path: Path, header: dict, expected_seeds: dict[str, int]) -> None:
    """Refuse to resume into a folder made with other settings or another file list."""
    if not path.exists():
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the params of the earlier run ({e})") from None
    for key, value in header.items():
        if old.get(key) != value:
            raise ConfigError(f"{path}: the earlier run used {key}={old.get(key)!r}, this one "
                              f"{value!r}; use another output folder or the same settings")
    for name, entry in old.get("files", {}).items():
        if name in expected_seeds and entry.get("params", {}).get("seed") != expected_seeds[name]:
            raise ConfigError(f"{path}: the source folder changed since the earlier run ({name} "
                              f"moved in the sorted list); use a new output folder")


def degrade_folder(src: str | os.PathLike, dst: str | os.PathLike, *,
                   preset: str | DegradationConfig = "gfpgan", seed: int = 0,
                   size: int | None = None, batch_size: int = 32,
                   progress: bool = True) -> DegradeReport:
    """Write a degraded PNG for every image under ``src`` to ``dst`` (same relative names)."""
    src, dst = Path(src), Path(dst)
    if dst.resolve() == src.resolve() or dst.resolve().is_relative_to(src.resolve()):
        raise OutputPathError(f"{dst}: the output folder is (inside) the input folder {src}; "
                              f"refusing to write there")
    if batch_size < 1 or (size is not None and size < 2):
        raise ConfigError(f"degrade: need batch_size >= 1 and size >= 2, got {batch_size}, {size}")
    cfg = get_preset(preset) if isinstance(preset, str) else preset
    files = list_images(src)
    if not files:
        raise ImageReadError(src, "no image files found")
    outputs = _output_names(files, src)
    names = [(f.relative_to(src) if f != src else Path(f.name)).as_posix() for f in files]
    header = {"preset": cfg.name, "seed": seed, "size": size, "config": config_to_dict(cfg)}
    params_path = dst / PARAMS_FILE
    _check_previous(params_path, header, {n: seed + i for i, n in enumerate(names)})

    report = DegradeReport(src=str(src), dst=str(dst), preset=cfg.name, seed=seed,
                           params_path=str(params_path))
    log = BatchLog()
    entries: dict[str, dict] = {}
    pending: list[tuple[Path, Path, np.ndarray, dict]] = []

    def flush() -> None:
        groups = defaultdict(list)  # same-size images are degraded together
        for item in pending:
            groups[item[2].shape].append(item)
        for items in groups.values():
            lq = apply_params(to_tensor(np.stack([it[2] for it in items])),
                              [it[3] for it in items])
            for (path, out, _, _), rgb in zip(items, to_uint8(lq)):
                save_image(dst / out, rgb, source=path)
                log.done += 1
        pending.clear()

    bar = tqdm(total=len(files), disable=not progress, desc=f"degrade ({cfg.name})", unit="img")
    for i, (path, out, name) in enumerate(zip(files, outputs, names)):
        params = sample_params(cfg, seed + i)
        bar.update(1)
        if (dst / out).is_file():
            report.existing += 1
            entries[name] = {"output": out.as_posix(), "params": params}
            continue
        try:
            rgb = load_image(path).rgb
        except ImageReadError as e:
            log.skip(path, e.problem)
            continue
        if size is not None:
            rgb = _square_resize(rgb, size)
        elif min(rgb.shape[:2]) < 2:
            log.skip(path, f"image is {rgb.shape[1]}x{rgb.shape[0]}, too small to degrade")
            continue
        entries[name] = {"output": out.as_posix(), "params": params}
        pending.append((path, out, rgb, params))
        if len(pending) >= batch_size:
            flush()
    flush()
    bar.close()

    payload = {**header, "files": entries, "skipped": log.skipped}
    write_bytes_atomic(params_path, (json.dumps(payload, indent=1) + "\n").encode())
    report.written, report.skipped = log.done, dict(log.skipped)
    return report


def flipnet_degrade_folder(src: str | os.PathLike, dst: str | os.PathLike,
                           cfg: DegradeConfig = DegradeConfig()) -> DegradeReport:
    """``flipnet degrade --method flipnet``: FLIPNET degradation mode on every image of ``src``."""
    import torch

    from flipnet.device import resolve_device
    from flipnet.diffusion.flipnet_sampling import flipnet_degrade
    from flipnet.models.flipnet import load_flipnet
    from flipnet.weights import resolve_weights

    src, dst = Path(src), Path(dst)
    if dst.resolve() == src.resolve() or dst.resolve().is_relative_to(src.resolve()):
        raise OutputPathError(f"{dst}: the output folder is (inside) the input folder {src}; "
                              f"refusing to write there")
    files = list_images(src)
    if not files:
        raise ImageReadError(src, "no image files found")
    weights = resolve_weights(cfg.weights)
    outputs = _output_names(files, src)
    header = {"method": "flipnet", "weights": str(weights), "seed": cfg.seed, "size": cfg.size,
              "steps": cfg.steps, "sampler": cfg.sampler}
    if cfg.color_fix:  # only when set, so that folders made before the option resume
        header["color_fix"] = cfg.color_fix
    params_path = dst / PARAMS_FILE
    _check_previous(params_path, header, {})
    net = load_flipnet(weights, device=resolve_device(cfg.device))
    report = DegradeReport(src=str(src), dst=str(dst), preset="flipnet", seed=cfg.seed,
                           params_path=str(params_path))
    log = BatchLog()
    entries: dict[str, dict] = {}
    pending: list[tuple[int, Path, Path, np.ndarray]] = []

    def flush() -> None:
        groups = defaultdict(list)  # same-size images are degraded together
        for item in pending:
            groups[item[3].shape].append(item)
        for items in groups.values():
            hq = to_tensor(np.stack([it[3] for it in items]))
            with torch.no_grad():
                lq = flipnet_degrade(net, hq.to(next(net.parameters()).device), steps=cfg.steps,
                                     sampler=cfg.sampler, seed=cfg.seed,
                                     indices=[it[0] for it in items],
                                     color_fix=cfg.color_fix)
            for (_, path, out, _), rgb in zip(items, to_uint8(lq)):
                save_image(dst / out, rgb, source=path)
                log.done += 1
        pending.clear()

    bar = tqdm(total=len(files), disable=not cfg.progress, desc="degrade (flipnet)", unit="img")
    for i, (path, out) in enumerate(zip(files, outputs)):
        bar.update(1)
        name = (path.relative_to(src) if path != src else Path(path.name)).as_posix()
        entries[name] = {"output": out.as_posix(), "seed": cfg.seed + i}
        if (dst / out).is_file():
            report.existing += 1
            continue
        try:
            rgb = load_image(path).rgb
        except ImageReadError as e:
            entries.pop(name)
            log.skip(path, e.problem)
            continue
        rgb = _square_resize(rgb, cfg.size) if cfg.size else rgb
        pending.append((i, path, out, rgb))
        if len(pending) >= cfg.batch_size:
            flush()
    flush()
    bar.close()
    payload = {**header, "files": entries, "skipped": log.skipped}
    write_bytes_atomic(params_path, (json.dumps(payload, indent=1) + "\n").encode())
    report.written, report.skipped = log.done, dict(log.skipped)
    return report
