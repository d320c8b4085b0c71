"""Train the unconditional pixel-space face prior (DDPM objective, v or eps target) with Accelerate.

The same function runs on CPU, one GPU, or ``accelerate launch`` on several. Every
``save_every`` steps a checkpoint is written that resumes exactly (``resume=True`` picks the
latest); every ``sample_every`` steps an EMA sample grid from fixed noise is saved; at the end the
EMA weights are exported as a prior folder (``<out_dir>/prior``) with a model card.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from flipnet.diffusion.respace import sampling_timesteps
from flipnet.diffusion.samplers import sample_ddim
from flipnet.diffusion.schedules import make_schedule
from flipnet.errors import FlipnetError
from flipnet.models.prior import save_prior
from flipnet.models.prior_types import PriorConfig
from flipnet.models.unet import UNet, count_parameters
from flipnet.training.data import FaceFolder, ShuffleFlipSampler
from flipnet.training.harness import (
    EMA,
    TrainingRun,
    TrainProgress,
    hardware_name,
    make_loader,
    run_from_argv,
    set_lr,
    warmup_lr,
)
from flipnet.viz import save_grid

# settings that may change between a run and its continuation without changing the result
RESUME_HARMLESS = ("resume", "max_minutes", "steps", "threads", "num_workers", "log_every",
                   "sample_every", "sample_count", "sample_steps", "save_every",
                   "keep_checkpoints")


def _h(text: str) -> dict:
    return {"help": text}


@dataclass(frozen=True)
class PriorTrainConfig:
    """Everything a prior training run needs; saved as ``<out_dir>/train_config.json``."""

    data_dir: str = field(default="out/prepared/utkface-128", metadata=_h("folder of aligned faces"))
    split: str = field(default="train", metadata=_h("split of data_dir: train | test | all"))
    out_dir: str = field(default="out/prior-64", metadata=_h("checkpoints, samples, exported prior"))
    prior: PriorConfig = field(default_factory=PriorConfig, metadata=_h("UNet + schedule"))
    batch_size: int = field(default=32, metadata=_h("images per step per process"))
    grad_accum: int = field(default=1, metadata=_h("micro-batches per optimizer step"))
    lr: float = field(default=2e-4, metadata=_h("AdamW learning rate after warmup"))
    warmup_steps: int = field(default=200, metadata=_h("linear learning-rate warmup steps"))
    weight_decay: float = field(default=0.0, metadata=_h("AdamW weight decay"))
    steps: int = field(default=100_000, metadata=_h("optimizer steps in total"))
    max_minutes: float = field(default=0.0, metadata=_h("stop (save + export) after this wall "
                                                          "time; 0 = no limit"))
    ema_decay: float = field(default=0.999, metadata=_h("EMA decay (with warmup)"))
    grad_clip: float = field(default=1.0, metadata=_h("gradient-norm clip; 0 = off"))
    mixed_precision: Literal["no", "bf16"] = field(default="no", metadata=_h("no | bf16"))
    hflip: bool = field(default=True, metadata=_h("random horizontal flips"))
    sample_every: int = field(default=1000, metadata=_h("EMA sample grid every N steps; 0 = off"))
    sample_count: int = field(default=16, metadata=_h("images in each sample grid"))
    sample_steps: int = field(default=50, metadata=_h("DDIM steps for sample grids"))
    save_every: int = field(default=1000, metadata=_h("checkpoint every N steps"))
    keep_checkpoints: int = field(default=2, metadata=_h("checkpoints kept on disk"))
    log_every: int = field(default=50, metadata=_h("log line every N steps"))
    seed: int = field(default=0, metadata=_h("seed for init, data order, noise"))
    num_workers: int = field(default=0, metadata=_h("DataLoader workers (data is in memory)"))
    threads: int = field(default=0, metadata=_h("torch CPU threads; 0 = torch default"))
    resume: bool = field(default=False, metadata=_h(
        "continue even if settings differ from the saved run (a rerun with the same settings "
        "continues from the newest checkpoint without it)"))


def _model_card(cfg: PriorTrainConfig, progress: TrainProgress, n_images: int, n_params: int,
                hardware: str) -> str:
    s = cfg.prior.schedule
    return (f"# flipnet face prior ({cfg.prior.unet.image_size} px)\n\n"
            f"- data: `{cfg.data_dir}` ({n_images} aligned faces, horizontal flips: {cfg.hflip})\n"
            f"- model: pixel-space UNet, {n_params / 1e6:.2f} M parameters; schedule: "
            f"{s.beta_schedule}, {s.num_timesteps} steps, {s.prediction}-prediction\n"
            f"- training: {progress.step} steps, batch {cfg.batch_size} x {cfg.grad_accum}, "
            f"lr {cfg.lr}, EMA {cfg.ema_decay}, mixed precision {cfg.mixed_precision}\n"
            f"- wall time: {progress.wall_seconds / 60:.1f} min on {hardware}\n"
            f"- final loss: {progress.last_loss:.4f}\n- weights: EMA, fp16 safetensors\n"
            "- terms: trained on UTKFace-derived crops: non-commercial research use only.\n")


def train_prior(cfg: PriorTrainConfig) -> Path:
    """Train (or resume) a prior; returns the exported EMA prior folder ``<out_dir>/prior``."""
    run = TrainingRun(cfg, export="prior", harmless=RESUME_HARMLESS, grad_accum=cfg.grad_accum)
    accelerator, device = run.accelerator, run.device
    # data, model, EMA, optimizer
    schedule = make_schedule(cfg.prior.schedule)
    dataset = FaceFolder(cfg.data_dir, cfg.prior.unet.image_size, split=cfg.split,
                         progress=run.main)
    if len(dataset) < cfg.batch_size:
        raise FlipnetError(f"{cfg.data_dir}: {len(dataset)} images, fewer than one batch "
                           f"({cfg.batch_size})")
    sampler = ShuffleFlipSampler(len(dataset), seed=cfg.seed, hflip=cfg.hflip)
    loader = make_loader(dataset, sampler, cfg.batch_size, num_workers=cfg.num_workers)
    model = UNet(cfg.prior.unet)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model, opt, loader = accelerator.prepare(model, opt, loader)
    ema = EMA(accelerator.unwrap_model(model), decay=cfg.ema_decay)
    sample_model = UNet(cfg.prior.unet).to(device).eval()  # before the RNG states are restored
    run.resume_or_start(ema)
    fixed_noise = torch.randn((cfg.sample_count, 3, cfg.prior.unet.image_size,
                               cfg.prior.unet.image_size),
                              generator=torch.Generator().manual_seed(cfg.seed + 1)).to(device)

    def save_samples(path: Path) -> None:
        ema.copy_to(sample_model)
        ts = sampling_timesteps(schedule.num_timesteps, str(cfg.sample_steps))
        save_grid(path, sample_ddim(lambda xt, t: sample_model(xt, t), fixed_noise, schedule, ts))

    noise_gen = torch.Generator(device=device)
    batches = run.batches(loader, sampler, per_step=cfg.grad_accum)
    for step in run.steps(cfg.steps, desc="prior", save_samples=save_samples):
        lr = set_lr(opt, warmup_lr(cfg.lr, step, cfg.warmup_steps))
        # one optimizer step = grad_accum micro-batches; noise = f(seed, step, rank)
        for micro in range(cfg.grad_accum):
            x0 = next(batches)
            with accelerator.accumulate(model):
                noise_gen.manual_seed(((cfg.seed * 1_000_003 + step) * 64 + micro) * 4096
                                      + accelerator.process_index)
                t = torch.randint(0, schedule.num_timesteps, (x0.shape[0],), device=device,
                                  generator=noise_gen)
                noise = torch.randn(x0.shape, device=device, generator=noise_gen)
                xt = schedule.q_sample(x0, t, noise)
                loss = F.mse_loss(model(xt, t).float(), schedule.training_target(x0, t, noise))
                run.optimizer_step(loss, opt, model.parameters(), step, grad_clip=cfg.grad_clip)
        ema.update(accelerator.unwrap_model(model))
        loss_value = float(loss.detach())
        smooth = run.smoothed_loss(loss_value)
        run.end_step(step, smooth, log={"loss": loss_value, "loss_smooth": smooth, "lr": lr},
                     postfix={"loss": f"{smooth:.4f}", "lr": f"{lr:.1e}"})

    # export the EMA weights as a prior folder with a model card
    def write_prior(tmp: Path) -> str:
        ema.copy_to(sample_model)
        save_prior(tmp, sample_model, cfg.prior)
        return _model_card(cfg, run.progress, len(dataset), count_parameters(sample_model),
                           hardware_name(accelerator))

    return run.export(write_prior)


if __name__ == "__main__":  # python -m flipnet.training.prior CONFIG.json [--resume]
    run_from_argv(PriorTrainConfig, train_prior, "prior")
