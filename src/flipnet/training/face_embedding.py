"""Train FLIPNET's face embedder: stage I (reconstruction), then stage II (LQ -> HQ token alignment).

Data: HQ faces of the UTKFace train split (``flipnet.splits``), each degraded on the fly with a
preset chosen by its seed (``training.pairs.SyntheticPairs``), so every step sees (lq, hq) pairs
of the same faces. Steps 1..``stage1_steps`` minimise ``reconstruction_loss`` (both pairs); the
next ``stage2_steps`` minimise ``alignment_loss`` (InfoNCE between LQ-encoder tokens and frozen
HQ-encoder tokens; only the LQ encoder receives gradients). Accelerate, EMA, exact-resume
checkpoints and sample grids follow ``training.prior``; the EMA embedder is exported to
``<out_dir>/embedder`` (config.json + fp16 safetensors + MODEL_CARD.md).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from flipnet.config import save_config
from flipnet.errors import FlipnetError
from flipnet.io import write_bytes_atomic
from flipnet.models.face_embedding import (
    FaceEmbedder,
    FaceEmbeddingConfig,
    alignment_loss,
    reconstruction_loss,
    save_face_embedder,
)
from flipnet.training.common import (
    EMA,
    TrainProgress,
    check_finite,
    endless_batches,
    every,
    hardware_name,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from flipnet.training.pairs import (
    PairSampler,
    SyntheticPairs,
    face_presets,
    fixed_pairs,
    load_faces,
)
from flipnet.viz import save_grid


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
    max_images: int = field(default=0, metadata=_h("use at most N HQ faces; 0 = all"))
    batch_size: int = field(default=32, metadata=_h("pairs per step (stage II negatives)"))
    lr: float = field(default=3e-4, metadata=_h("AdamW learning rate"))
    stage1_steps: int = field(default=5000, metadata=_h("reconstruction steps (stage I)"))
    stage2_steps: int = field(default=5000, metadata=_h("token-alignment steps (stage II)"))
    max_minutes: float = field(default=0.0, metadata=_h("stop (save + export) after this wall "
                                                          "time; 0 = no limit"))
    ema_decay: float = field(default=0.999, metadata=_h("EMA decay (with warmup)"))
    grad_clip: float = field(default=1.0, metadata=_h("gradient-norm clip; 0 = off"))
    sample_every: int = field(default=500, metadata=_h("reconstruction grid every N steps; 0 = off"))
    sample_count: int = field(default=8, metadata=_h("faces in each grid"))
    save_every: int = field(default=500, metadata=_h("checkpoint every N steps"))
    keep_checkpoints: int = field(default=2, metadata=_h("checkpoints kept on disk"))
    log_every: int = field(default=50, metadata=_h("log line every N steps"))
    seed: int = field(default=0, metadata=_h("seed for init, data order, degradations"))
    threads: int = field(default=0, metadata=_h("torch CPU threads; 0 = torch default"))
    resume: bool = field(default=False, metadata=_h("continue from the latest checkpoint"))


def embedder_step_loss(embedder: FaceEmbedder, hq: torch.Tensor, lq: torch.Tensor,
                       stage: int) -> torch.Tensor:
    """The loss of one step: stage 1 = reconstruction, stage 2 = token alignment."""
    return reconstruction_loss(embedder, hq, lq) if stage == 1 else alignment_loss(embedder, hq, lq)


def train_face_embedding(cfg: EmbedderTrainConfig) -> Path:
    """Train (or resume) the embedder; returns the exported EMA folder ``<out_dir>/embedder``."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader

    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    out, ckpt_root = Path(cfg.out_dir), Path(cfg.out_dir) / "checkpoints"
    last = latest_checkpoint(ckpt_root)
    if last is not None and not cfg.resume:
        raise FlipnetError(f"{out}: holds checkpoints (latest {last.name}); pass --resume to "
                           "continue, or choose another out_dir")
    accelerator = Accelerator()
    main, device = accelerator.is_main_process, accelerator.device
    if main:
        save_config(cfg, out / "train_config.json")
    # data, model, EMA, optimizer
    set_seed(cfg.seed)
    size = cfg.embedding.image_size
    _, pixels = load_faces(cfg.data_dir, size, split=cfg.split, limit=cfg.max_images or None,
                           progress=main)
    dataset = SyntheticPairs(pixels, face_presets(cfg.presets, size))
    if len(dataset) < max(2, cfg.batch_size):
        raise FlipnetError(f"{cfg.data_dir}: {len(dataset)} faces, fewer than one batch")
    sampler = PairSampler(len(dataset), seed=cfg.seed)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, drop_last=True)
    embedder = FaceEmbedder(cfg.embedding)
    opt = torch.optim.AdamW(embedder.parameters(), lr=cfg.lr)
    embedder, opt, loader = accelerator.prepare(embedder, opt, loader)
    ema, progress = EMA(accelerator.unwrap_model(embedder), decay=cfg.ema_decay), TrainProgress()
    accelerator.register_for_checkpointing(ema, progress)
    if last is not None:
        load_checkpoint(accelerator, last)
    fixed_lq, fixed_hq = fixed_pairs(dataset, cfg.sample_count, seed=cfg.seed + 1)
    sample_model = FaceEmbedder(cfg.embedding).to(device).eval()
    total = cfg.stage1_steps + cfg.stage2_steps
    batches = endless_batches(accelerator, loader, sampler, progress.step)
    t_start, wall0 = time.time(), progress.wall_seconds
    bar = tqdm(total=total, initial=progress.step, disable=not main, desc="embedder")
    while progress.step < total:
        step = progress.step + 1
        stage = 1 if step <= cfg.stage1_steps else 2
        lq, hq = next(batches)
        loss = embedder_step_loss(accelerator.unwrap_model(embedder), hq, lq, stage)
        check_finite(loss.detach(), step, latest_checkpoint(ckpt_root))
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(embedder.parameters(), cfg.grad_clip or float("inf"))
        opt.step()
        opt.zero_grad(set_to_none=True)  # stage II: params without gradients are left alone
        ema.update(accelerator.unwrap_model(embedder))
        progress.step, progress.last_loss = step, float(loss.detach())
        progress.wall_seconds = wall0 + time.time() - t_start
        bar.update(1)
        bar.set_postfix(stage=stage, loss=f"{progress.last_loss:.4f}")
        out_of_time = cfg.max_minutes > 0 and time.time() - t_start > cfg.max_minutes * 60
        if main and every(cfg.log_every, step):
            with open(out / "log.jsonl", "a") as f:
                f.write(json.dumps({"step": step, "stage": stage, "loss": progress.last_loss,
                                    "wall_s": round(progress.wall_seconds, 1)}) + "\n")
        if main and every(cfg.sample_every, step):
            ema.copy_to(sample_model)
            with torch.no_grad():
                hq_s, lq_s = fixed_hq.to(device), fixed_lq.to(device)
                rows = [hq_s, sample_model.reconstruct(hq_s, "hq"), lq_s,
                        sample_model.reconstruct(lq_s, "lq")]
            save_grid(out / "samples" / f"step-{step:07d}.png", torch.cat(rows).clamp(-1, 1),
                      ncol=len(hq_s))
        if every(cfg.save_every, step) or step == total or out_of_time:
            save_checkpoint(accelerator, ckpt_root, step, keep=cfg.keep_checkpoints)
        if out_of_time:
            break
    bar.close()
    # export the EMA embedder with a model card
    folder = out / "embedder"
    if main:
        ema.copy_to(sample_model)
        save_face_embedder(folder, sample_model)
        card = (f"# FLIPNET face embedder ({size} px, {cfg.embedding.tokens} tokens x "
                f"{cfg.embedding.dim})\n\n- data: `{cfg.data_dir}` split {cfg.split} "
                f"({len(dataset)} faces), LQ from presets {', '.join(cfg.presets)}\n"
                f"- stage I {cfg.stage1_steps} steps (L1 reconstruction), stage II "
                f"{cfg.stage2_steps} steps (InfoNCE, temperature {cfg.embedding.temperature}); "
                f"done {progress.step}\n- wall time: {progress.wall_seconds / 60:.1f} min on "
                f"{hardware_name(accelerator)}\n- final loss: {progress.last_loss:.4f}\n"
                "- terms: trained on UTKFace-derived crops: non-commercial research use only.\n")
        write_bytes_atomic(folder / "MODEL_CARD.md", card.encode())
    accelerator.wait_for_everyone()
    return folder


if __name__ == "__main__":  # python -m flipnet.training.face_embedding CONFIG.json [--resume]
    import sys

    from flipnet.config import load_config

    if len(sys.argv) < 2:
        sys.exit("usage: python -m flipnet.training.face_embedding CONFIG.json [--resume]")
    run_cfg = load_config(EmbedderTrainConfig, sys.argv[1])
    if "--resume" in sys.argv[2:]:
        run_cfg = EmbedderTrainConfig(**{**run_cfg.__dict__, "resume": True})
    try:
        print(train_face_embedding(run_cfg))
    except FlipnetError as e:
        sys.exit(f"error: {e}")
