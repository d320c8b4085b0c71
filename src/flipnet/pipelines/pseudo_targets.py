"""``flipnet pseudo-targets``: pseudo targets for unlabeled real LQ faces (Kuai et al., WACV 2025).

For each LQ face: restore it with the restorer, diffuse the output to t0 and sample back with
low-pass guidance toward it (``flipnet.diffusion.guided_resample``; a latent prior guides the
latents of the encoded restorer output, ``pipelines.prior_restore.prior_resample``). The pair
(LQ, target) is what ``flipnet finetune`` trains on (``flipnet.api.finetune`` runs this, then
``training.finetune.finetune_on_pairs``). Output layout: ``DST/lq/NAME.png`` (the input,
aligned crop), ``DST/target/NAME.png``, and ``DST/pseudo_targets.json`` (settings). Resumable:
faces whose target exists are skipped; each face's noise depends only on (seed, its sorted
index), so a rerun after a kill -9 writes the same files (each written atomically, the target
last).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from flipnet.config import folder_config_class
from flipnet.device import resolve_device
from flipnet.diffusion.guided_resample import GuidedResampleConfig
from flipnet.errors import ConfigError, FlipnetError
from flipnet.io import (
    BatchLog,
    list_images,
    load_image,
    remove_partial_files,
    save_image,
    to_tensor,
    to_uint8,
    write_bytes_atomic,
)
from flipnet.models.prior import load_prior
from flipnet.pipelines.methods import make_method
from flipnet.pipelines.prior_restore import prior_resample
from flipnet.splits import in_split
from flipnet.weights import DEFAULT_WEIGHTS, resolve_weights


@dataclass(frozen=True)
class PseudoTargetConfig:
    """Settings of ``flipnet pseudo-targets`` (paper defaults, scaled to the prior's size)."""

    restorer: str = field(default="restorer-128", metadata={"help": "Restorer weights."})
    prior: str = field(default=DEFAULT_WEIGHTS["prior"], metadata={"help": "Prior weights."})
    respaced_steps: int = field(default=250, metadata={"help": "Respaced reverse steps."})
    t0: int = field(default=150, metadata={"help": "Respaced step the output is diffused to."})
    tau: int = field(default=90, metadata={"help": "Guidance stops when this many steps remain."})
    factor: int = field(default=0, metadata={
        "help": "Low-pass factor N in image pixels; 0 = the paper's 16 at 512 px scaled to the "
                "prior's size (latent priors: latent factor round(N / f), at least 1)."})
    seed: int = field(default=0, metadata={"help": "Seed; face i uses seed + i."})
    split: str = field(default="train", metadata={"help": "Split of SRC to use: train|test|all."})
    limit: int = field(default=0, metadata={
        "help": "Use at most this many faces, evenly spaced over the sorted list (0 = all)."})
    batch_size: int = field(default=16, metadata={"help": "Faces per batch."})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | mps."})
    keep_restorer_detail: bool = field(default=True, metadata={
        "help": "The prior replaces only what it can represent: the band below a smaller "
                "prior's size (64 vs 128 px), or on a latent prior its autoencoder's "
                "reconstruction; the restorer's finer detail stays (ours: otherwise targets "
                "are blurred and fine-tuning blurs)."})


def is_flipnet_folder(folder: str | Path) -> bool:
    """Whether a weights folder holds FLIPNET adapters (else a feed-forward restorer)."""
    return folder_config_class(folder) == "FlipNetConfig"


def open_restorer(folder: Path, *, device: str):
    """The restorer behind the pseudo targets: a feed-forward restorer, or FLIPNET's
    restoration mode (the paper's method works for any restorer)."""
    return make_method("flipnet" if is_flipnet_folder(folder) else "restorer", str(folder),
                       device=device)


def make_pseudo_targets(src: str | Path, dst: str | Path, cfg: PseudoTargetConfig, *,
                        progress: bool = True) -> dict:
    """Write (lq, target) pairs for every aligned LQ face under ``src``; returns a report."""
    from rich.progress import Progress

    src, dst = Path(src), Path(dst)
    if dst.resolve() == src.resolve() or src.resolve() in dst.resolve().parents:
        raise FlipnetError(f"{dst}: output folder must not be the input folder or inside it")
    files = in_split(list_images(src), cfg.split)
    if cfg.limit and cfg.limit < len(files):  # spread over people, not the first names A..Ab
        files = [files[i] for i in np.linspace(0, len(files) - 1, cfg.limit).round().astype(int)]
    if not files:
        raise FlipnetError(f"{src}: no images in split {cfg.split!r}")
    device = resolve_device(cfg.device)
    restorer = open_restorer(resolve_weights(cfg.restorer), device=str(device))
    prior = load_prior(resolve_weights(cfg.prior), device)
    trained_steps = prior.schedule.num_timesteps
    if cfg.respaced_steps > trained_steps:
        raise ConfigError(f"{cfg.prior}: respaced_steps {cfg.respaced_steps} is more than the "
                          f"prior's {trained_steps} trained timesteps")
    guide = GuidedResampleConfig(respaced_steps=cfg.respaced_steps, t0=cfg.t0, tau=cfg.tau,
                                 factor=cfg.factor, seed=cfg.seed,
                                 keep_reference_detail=cfg.keep_restorer_detail)
    for folder in (dst, dst / "lq", dst / "target"):  # what a kill -9 mid-write leaves
        remove_partial_files(folder)
    names = [p.relative_to(src).with_suffix("").as_posix().replace("/", "__") for p in files]
    todo = [i for i, n in enumerate(names) if not (dst / "target" / f"{n}.png").exists()]
    log = BatchLog()
    log.done = len(files) - len(todo)
    t_start = time.perf_counter()
    with Progress(disable=not progress) as bar:
        task = bar.add_task("pseudo targets", total=len(todo))
        for k in range(0, len(todo), cfg.batch_size):
            idx, lq = [], []
            for i in todo[k:k + cfg.batch_size]:
                try:
                    img = load_image(files[i]).rgb
                except FlipnetError as e:
                    log.skip(files[i], str(e))
                    continue
                if img.shape[:2] != (restorer.size, restorer.size):
                    import cv2

                    img = cv2.resize(img, (restorer.size, restorer.size),
                                     interpolation=cv2.INTER_AREA)
                idx.append(i)
                lq.append(img)
            bar.advance(task, len(todo[k:k + cfg.batch_size]))
            if not idx:
                continue
            restored = restorer.restore(np.stack(lq))
            with torch.no_grad():
                y = to_tensor(restored).to(device)
                targets = to_uint8(prior_resample(prior, y, guide, indices=idx))
            for i, a, t in zip(idx, lq, targets):
                save_image(dst / "lq" / f"{names[i]}.png", a)
                save_image(dst / "target" / f"{names[i]}.png", t)  # last: marks the face done
                log.done += 1
    seconds = time.perf_counter() - t_start
    report = {"src": str(src), "settings": asdict(cfg), "count": log.done,
              "new": len(todo) - len(log.skipped), "skipped": log.skipped,
              "seconds": round(seconds, 2),
              "seconds_per_target": round(seconds / max(1, len(todo)), 3)}
    write_bytes_atomic(dst / "pseudo_targets.json", json.dumps(report, indent=1).encode())
    return report
