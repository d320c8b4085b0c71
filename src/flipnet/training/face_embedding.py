"""Train FLIPNET's face embedder: stage I (reconstruction), then stage II (LQ -> HQ token alignment).

Data: HQ faces of the UTKFace train split (``flipnet.splits``) at the crop size, each degraded on
the fly with a preset chosen by its seed and shrunk to the model size (``ModelLQPairs``, the LQ
of ``degradations.model_lq``: the LQ FLIPNET sees at inference; FLIPNET's restoration mode trains
on the same pairs), so every step sees (lq, hq) pairs of the same faces. Steps 1..``stage1_steps`` minimise ``reconstruction_loss`` (both pairs); the
next ``stage2_steps`` minimise ``alignment_loss`` (InfoNCE between LQ-encoder tokens and frozen
HQ-encoder tokens; only the LQ encoder receives gradients). Accelerate (forward passes through
the DDP-wrapped ``EmbedderObjective``), EMA, sample grids and the fault tolerance follow
``training.harness``: a rerun with the same settings continues from the newest checkpoint; a kill -9
never leaves half a checkpoint or export. The EMA embedder is exported to ``<out_dir>/embedder``
(config.json + fp16 safetensors + MODEL_CARD.md).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from flipnet.degradations.color import to_gray
from flipnet.degradations.model_lq import CROP_SIZE, model_lq, to_model_size
from flipnet.degradations.presets import get_preset
from flipnet.errors import FlipnetError
from flipnet.io import to_tensor
from flipnet.models.face_embedding import (
    FaceEmbedder,
    FaceEmbeddingConfig,
    alignment_loss,
    reconstruction_loss,
    save_face_embedder,
)
from flipnet.training.harness import (
    EMA,
    TrainingRun,
    TrainProgress,
    hardware_name,
    make_loader,
    run_from_argv,
)
from flipnet.training.pairs import PairSampler, fixed_pairs, load_faces
from flipnet.viz import save_grid

# settings that may change between a run and its continuation without changing the result
# (stage2_steps only says where to stop: stage II starts after stage1_steps either way)
RESUME_HARMLESS = ("resume", "max_minutes", "stage2_steps", "threads", "log_every",
                   "sample_every", "sample_count", "save_every", "keep_checkpoints")


def _h(text: str) -> dict:
    return {"help": text}


@dataclass(frozen=True)
class EmbedderTrainConfig:
    """A face-embedder run (stages I and II); saved as ``<out_dir>/train_config.json``."""

    data_dir: str = field(default="out/prepared/utkface-128", metadata=_h("HQ aligned faces"))
    split: str = field(default="train", metadata=_h("split of data_dir: train | all"))
    out_dir: str = field(default="out/embedder-64", metadata=_h("checkpoints, samples, export"))
    embedding: FaceEmbeddingConfig = field(default_factory=FaceEmbeddingConfig)
    presets: tuple[str, ...] = field(default=("gfpgan", "codeformer", "difface"),
                                     metadata=_h("degradation presets mixed per sample"))
    crop_size: int = field(default=CROP_SIZE, metadata=_h(
        "LQ is made at this crop size, then shrunk to image_size (as at inference)"))
    max_images: int = field(default=0, metadata=_h("use at most N HQ faces; 0 = all"))
    batch_size: int = field(default=32, metadata=_h("pairs per step (stage II negatives)"))
    lr: float = field(default=3e-4, metadata=_h("AdamW learning rate"))
    stage1_steps: int = field(default=5000, metadata=_h("reconstruction steps (stage I)"))
    stage2_steps: int = field(default=5000, metadata=_h("token-alignment steps (stage II)"))
    max_minutes: float = field(default=0.0, metadata=_h("stop (save + export) after this wall "
                                                          "time; 0 = no limit"))
    ema_decay: float = field(default=0.999, metadata=_h("EMA decay (with warmup)"))
    grad_clip: float = field(default=1.0, metadata=_h("gradient-norm clip; 0 = off"))
    mixed_precision: Literal["no", "bf16"] = field(default="no", metadata=_h("no | bf16"))
    sample_every: int = field(default=500, metadata=_h("reconstruction grid every N steps; 0 = off"))
    sample_count: int = field(default=8, metadata=_h("faces in each grid"))
    save_every: int = field(default=500, metadata=_h("checkpoint every N steps"))
    keep_checkpoints: int = field(default=2, metadata=_h("checkpoints kept on disk"))
    log_every: int = field(default=50, metadata=_h("log line every N steps"))
    seed: int = field(default=0, metadata=_h("seed for init, data order, degradations"))
    threads: int = field(default=0, metadata=_h("torch CPU threads; 0 = torch default"))
    resume: bool = field(default=False, metadata=_h(
        "continue even if settings differ from the saved run (a rerun with the same settings "
        "continues from the newest checkpoint without it)"))


class ModelLQPairs(Dataset):
    """HQ crops in memory -> (lq, hq) at the model size for FLIPNET and its embedder: the LQ by
    ``degradations.model_lq`` with preset ``seed % len(presets)``, the HQ shrunk the same way
    (and grayed when the LQ is gray, as ``training.pairs.SyntheticPairs``)."""

    def __init__(self, pixels: np.ndarray, presets: Sequence[str], *, model_size: int):
        self.pixels, self.model_size = pixels, model_size  # (N, S, S, 3) uint8 crops
        self.presets = list(presets)
        for name in self.presets:
            get_preset(name)  # ConfigError naming the presets for a wrong name
        if not self.presets:
            raise FlipnetError("at least one degradation preset is needed")

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, key) -> tuple[torch.Tensor, torch.Tensor]:
        """``(index, flip, seed)`` -> (lq, hq), each (3, model_size, model_size) in [-1, 1]."""
        index, flip, seed = key
        rgb = self.pixels[index]
        hq = to_tensor(np.ascontiguousarray(rgb[:, ::-1] if flip else rgb))  # (1, 3, S, S)
        lq, params = model_lq(hq, self.presets[seed % len(self.presets)],
                              model_size=self.model_size, seed=[seed])
        if params[0]["color"] is not None and params[0]["color"]["gray"]:
            hq = to_gray((hq + 1) / 2) * 2 - 1
        return lq[0], to_model_size(hq, self.model_size)[0]


def model_lq_pairs(data_dir: str | os.PathLike, presets: Sequence[str], *, model_size: int,
                   crop_size: int = CROP_SIZE, split: str | None = "train",
                   limit: int | None = None, progress: bool = True) -> ModelLQPairs:
    """The synthetic (lq, hq) pairs FLIPNET's restoration mode and its embedder train on: the
    faces of ``data_dir`` read at ``crop_size``, LQ made there and shrunk to ``model_size``."""
    _, pixels = load_faces(data_dir, crop_size, split=split, limit=limit, progress=progress)
    return ModelLQPairs(pixels, presets, model_size=model_size)


def embedder_step_loss(embedder: FaceEmbedder, hq: torch.Tensor, lq: torch.Tensor,
                       stage: int) -> torch.Tensor:
    """The loss of one step: stage 1 = reconstruction, stage 2 = token alignment."""
    return reconstruction_loss(embedder, hq, lq) if stage == 1 else alignment_loss(embedder, hq, lq)


class EmbedderObjective(nn.Module):
    """``embedder_step_loss`` as a module's forward, so Accelerate's DDP wrapper sees (and syncs)
    the embedder's gradients; ``FaceEmbedder`` itself has no forward."""

    def __init__(self, embedder: FaceEmbedder):
        super().__init__()
        self.embedder = embedder

    def forward(self, hq: torch.Tensor, lq: torch.Tensor, stage: int) -> torch.Tensor:
        """(B, 3, H, W) x2 -> scalar loss of ``stage``."""
        return embedder_step_loss(self.embedder, hq, lq, stage)


def train_face_embedding(cfg: EmbedderTrainConfig) -> Path:
    """Train (or resume) the embedder; returns the exported EMA folder ``<out_dir>/embedder``."""
    from accelerate import DistributedDataParallelKwargs

    # stage II trains only the LQ encoder: the HQ encoder (the frozen teacher) and both decoders
    # get no gradient there, which DDP only allows with find_unused_parameters; parameters unused
    # on every process keep grad None, so AdamW leaves them alone as in a single process
    ddp = DistributedDataParallelKwargs(find_unused_parameters=cfg.stage2_steps > 0)
    run = TrainingRun(cfg, export="embedder", harmless=RESUME_HARMLESS, kwargs_handlers=[ddp])
    accelerator, device = run.accelerator, run.device
    # data, model, EMA, optimizer
    size = cfg.embedding.image_size
    dataset = model_lq_pairs(cfg.data_dir, cfg.presets, model_size=size, crop_size=cfg.crop_size,
                             split=cfg.split, limit=cfg.max_images or None, progress=run.main)
    if len(dataset) < max(2, cfg.batch_size):
        raise FlipnetError(f"{cfg.data_dir}: {len(dataset)} faces, fewer than one batch "
                           f"({max(2, cfg.batch_size)})")
    sampler = PairSampler(len(dataset), seed=cfg.seed)
    loader = make_loader(dataset, sampler, cfg.batch_size)
    objective = EmbedderObjective(FaceEmbedder(cfg.embedding))
    opt = torch.optim.AdamW(objective.parameters(), lr=cfg.lr)
    # forward passes go through the prepared (DDP-wrapped) objective; the unwrapped embedder is
    # only read for the EMA, sample grids and the export
    objective, opt, loader = accelerator.prepare(objective, opt, loader)
    ema = EMA(accelerator.unwrap_model(objective).embedder, decay=cfg.ema_decay)
    sample_model = FaceEmbedder(cfg.embedding).to(device).eval()  # before RNG states are restored
    run.resume_or_start(ema)
    fixed_lq, fixed_hq = fixed_pairs(dataset, cfg.sample_count, seed=cfg.seed + 1)
    total = cfg.stage1_steps + cfg.stage2_steps
    batches = run.batches(loader, sampler)
    for step in run.steps(total, desc="embedder", save_samples=lambda path: _save_samples(
            path, ema, sample_model, fixed_hq.to(device), fixed_lq.to(device))):
        stage = 1 if step <= cfg.stage1_steps else 2
        lq, hq = next(batches)
        loss = objective(hq, lq, stage)
        # stage II: parameters without gradients are left alone by the optimizer
        run.optimizer_step(loss, opt, objective.parameters(), step, grad_clip=cfg.grad_clip)
        ema.update(accelerator.unwrap_model(objective).embedder)
        loss_value = float(loss.detach())
        run.end_step(step, loss_value, log={"stage": stage, "loss": loss_value},
                     postfix={"stage": stage, "loss": f"{loss_value:.4f}"})

    # export the EMA embedder with a model card
    def write_embedder(tmp: Path) -> bytes:
        ema.copy_to(sample_model)
        save_face_embedder(tmp, sample_model)
        return _model_card(cfg, run.progress, len(dataset), accelerator)

    return run.export(write_embedder)


@torch.no_grad()
def _save_samples(path: Path, ema: EMA, sample_model: FaceEmbedder, hq: torch.Tensor,
                  lq: torch.Tensor) -> None:
    """Rows: HQ | HQ pair's reconstruction | LQ | LQ pair's reconstruction (EMA weights)."""
    ema.copy_to(sample_model)
    rows = [hq, sample_model.reconstruct(hq, "hq"), lq, sample_model.reconstruct(lq, "lq")]
    save_grid(path, torch.cat(rows).clamp(-1, 1), ncol=len(hq))


def _model_card(cfg: EmbedderTrainConfig, progress: TrainProgress, n_faces: int,
                accelerator) -> bytes:
    e = cfg.embedding
    return (f"# FLIPNET face embedder ({e.image_size} px, {e.tokens} tokens x {e.dim})\n\n"
            f"- data: `{cfg.data_dir}` split {cfg.split} ({n_faces} faces), LQ from presets "
            f"{', '.join(cfg.presets)} (made at {cfg.crop_size} px, shrunk)\n"
            f"- stage I {cfg.stage1_steps} steps (L1 reconstruction), "
            f"stage II {cfg.stage2_steps} steps (InfoNCE, temperature {e.temperature}); done "
            f"{progress.step}\n- wall time: {progress.wall_seconds / 60:.1f} min on "
            f"{hardware_name(accelerator)}\n- final loss: {progress.last_loss:.4f}\n"
            "- terms: trained on UTKFace-derived crops: non-commercial research use only.\n"
            ).encode()


if __name__ == "__main__":  # python -m flipnet.training.face_embedding CONFIG.json [--resume]
    run_from_argv(EmbedderTrainConfig, train_face_embedding, "face_embedding")
