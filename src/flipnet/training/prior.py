"""Train the unconditional face prior (DDPM objective, v or eps target) with Accelerate.

Pixel space by default; with ``autoencoder`` set, a latent prior: the faces are encoded once by
the frozen autoencoder (``training.data.LatentFaces``), the UNet learns the latents, and the
export carries the autoencoder in ``autoencoder/`` so that sampling decodes to pixels.
Optional Min-SNR-gamma loss weighting (Hang et al. 2023) speeds convergence.
The same function runs on CPU, one GPU, or ``accelerate launch`` on several. Every
``save_every`` steps a checkpoint is written that resumes exactly (``resume=True`` picks the
latest); every ``sample_every`` steps an EMA sample grid from fixed noise is saved; at the end the
EMA weights are exported as a prior folder (``<out_dir>/prior``) with a model card.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from flipnet.diffusion.respace import sampling_timesteps
from flipnet.diffusion.samplers import sample_ddim
from flipnet.diffusion.schedules import make_schedule
from flipnet.errors import ConfigError, FlipnetError
from flipnet.models.autoencoder import FaceAutoencoder, load_autoencoder, same_encoder_weights
from flipnet.models.prior import load_prior, save_prior
from flipnet.models.prior_types import PriorConfig
from flipnet.models.unet import UNet, count_parameters
from flipnet.training.data import DeviceFaces, FaceFolder, LatentFaces, ShuffleFlipSampler
from flipnet.training.harness import (
    EMA,
    TrainingRun,
    TrainProgress,
    cosine_decay_lr,
    cpu_hours,
    hardware_name,
    make_loader,
    run_from_argv,
    set_lr,
    warmup_lr,
)
from flipnet.viz import save_curve, save_grid

# settings that may change between a run and its continuation without changing the result
RESUME_HARMLESS = ("resume", "max_minutes", "steps", "threads", "num_workers", "log_every",
                   "sample_every", "sample_count", "sample_steps", "save_every",
                   "keep_checkpoints", "channels_last", "compile", "data_on_device")


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
    lr_decay_from: int = field(default=0, metadata=_h(
        "cosine decay of the learning rate from this step to 0 at `steps` (the last leg's "
        "anneal); 0 = constant after warmup"))
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
    autoencoder: str | None = field(default=None, metadata=_h(
        "autoencoder folder: train a latent prior on its latents (encoded once, cached in "
        "out_dir); the UNet's image_size is then the latent size"))
    loss_weighting: Literal["none", "min_snr"] = field(default="none", metadata=_h(
        "none | min_snr (Min-SNR-gamma weighting, Hang et al. 2023)"))
    min_snr_gamma: float = field(default=5.0, metadata=_h("gamma of min_snr"))
    channels_last: bool = field(default=False, metadata=_h(
        "channels-last memory format for the UNet and its inputs (faster convolutions)"))
    compile: bool = field(default=False, metadata=_h(
        "torch.compile the UNet in place (nn.Module.compile: weight names unchanged)"))
    data_on_device: bool = field(default=False, metadata=_h(
        "hold the whole training set (pixels or latents) on the device: no copy per step"))
    resume: bool = field(default=False, metadata=_h(
        "continue even if settings differ from the saved run (a rerun with the same settings "
        "continues from the newest checkpoint without it)"))
    init_from: str | None = field(default=None, metadata=_h(
        "start from this exported prior folder (its EMA weights; same UNet, schedule and "
        "encoder): the warm start on a machine without the run's checkpoints"))


def _model_card(cfg: PriorTrainConfig, progress: TrainProgress, n_images: int, n_params: int,
                hardware: str, pixel_size: int) -> str:
    s, size = cfg.prior.schedule, cfg.prior.unet.image_size
    space = (f"latent UNet on {size}x{size}x{cfg.prior.unet.in_channels} latents of "
             f"`{cfg.autoencoder}` (autoencoder stored in `autoencoder/`)" if cfg.autoencoder
             else "pixel-space UNet")
    weighting = (f"min-SNR-{cfg.min_snr_gamma:g}" if cfg.loss_weighting == "min_snr"
                 else "uniform")
    return (f"# flipnet face prior ({pixel_size} px)\n\n"
            f"- data: `{cfg.data_dir}` ({n_images} aligned faces, horizontal flips: {cfg.hflip})\n"
            f"- model: {space}, {n_params / 1e6:.2f} M parameters; schedule: "
            f"{s.beta_schedule}, {s.num_timesteps} steps, {s.prediction}-prediction, "
            f"{weighting} loss weighting\n"
            f"- training: {progress.step} steps, batch {cfg.batch_size} x {cfg.grad_accum}, "
            f"lr {cfg.lr}, EMA {cfg.ema_decay}, mixed precision {cfg.mixed_precision}\n"
            f"- wall time: {progress.wall_seconds / 60:.1f} min on {hardware}: "
            f"{cpu_hours(progress.wall_seconds):.2f} CPU-hours (wall x threads; "
            "the autoencoder's are in its own card)\n"
            + (f"- started from `{cfg.init_from}` (its CPU-hours are in its own card)\n"
               if cfg.init_from else "")
            + f"- final loss: {progress.last_loss:.4f}\n- weights: EMA, fp16 safetensors\n"
            "- terms: trained on UTKFace-derived crops: non-commercial research use only.\n")


def _frozen_autoencoder(cfg: PriorTrainConfig, device) -> FaceAutoencoder:
    """The autoencoder of a latent prior run, checked against the UNet's shape."""
    autoencoder, ae_cfg = load_autoencoder(cfg.autoencoder, device=device)
    unet = cfg.prior.unet
    if unet.in_channels != ae_cfg.latent_channels or unet.out_channels != ae_cfg.latent_channels:
        raise FlipnetError(f"{cfg.autoencoder}: {ae_cfg.latent_channels} latent channels, but the "
                           f"prior's UNet has in/out channels {unet.in_channels}/"
                           f"{unet.out_channels}")
    if unet.image_size * ae_cfg.factor != ae_cfg.image_size:
        raise FlipnetError(f"{cfg.autoencoder}: makes {ae_cfg.image_size} px faces from "
                           f"{ae_cfg.image_size // ae_cfg.factor} px latents, but the prior's UNet "
                           f"image_size is {unet.image_size}")
    return autoencoder.eval().requires_grad_(False)


def plot_loss(log_path: Path, png: Path, *, threads: int) -> Path | None:
    """The smoothed training loss of every leg in ``log.jsonl`` (this run's: a warm start's
    earlier legs are in its own card) against CPU-hours (wall time x ``threads``, the current
    leg's setting) as a PNG; None when the log has no loss lines."""
    if not log_path.is_file():
        return None
    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    # a resumed leg repeats the steps after its checkpoint: the last line of each step counts
    by_step = {r["step"]: r for r in rows if "loss_smooth" in r and "wall_s" in r}
    rows = [by_step[k] for k in sorted(by_step)]
    if not rows:
        return None
    hours = [r["wall_s"] / 3600 * max(1, threads) for r in rows]
    return save_curve(png, hours, {"training loss (smoothed)": [r["loss_smooth"] for r in rows]},
                      xlabel="CPU-hours" if threads else "hours", ylabel="loss",
                      title="prior: training loss over all legs")


def _start_weights(cfg: PriorTrainConfig, autoencoder: FaceAutoencoder | None) -> dict:
    """The UNet weights of ``init_from``, checked to be the same UNet, schedule and latents."""
    start = load_prior(cfg.init_from)
    if start.config != cfg.prior:
        raise ConfigError(f"{cfg.init_from}: its UNet or schedule differs from this run's prior "
                          "config")
    if (start.autoencoder is None) != (autoencoder is None):
        raise ConfigError(f"{cfg.init_from}: a {'pixel' if start.autoencoder is None else 'latent'}"
                          " prior, but this run trains a "
                          f"{'pixel' if autoencoder is None else 'latent'} prior")
    if autoencoder is not None:
        same = same_encoder_weights(autoencoder, start.autoencoder, atol=1e-3)
        if not same or start.autoencoder.config != autoencoder.config:
            raise ConfigError(f"{cfg.init_from}: its autoencoder makes other latents than "
                              f"`{cfg.autoencoder}`")
    return start.model.state_dict()


def train_prior(cfg: PriorTrainConfig) -> Path:
    """Train (or resume) a prior; returns the exported EMA prior folder ``<out_dir>/prior``."""
    run = TrainingRun(cfg, export="prior", harmless=RESUME_HARMLESS, grad_accum=cfg.grad_accum)
    accelerator, device = run.accelerator, run.device
    # data, model, EMA, optimizer
    schedule = make_schedule(cfg.prior.schedule)
    autoencoder = _frozen_autoencoder(cfg, device) if cfg.autoencoder else None
    size = cfg.prior.unet.image_size  # of what the UNet sees: pixels or latents
    pixel_size = size * autoencoder.config.factor if autoencoder else size
    dataset = FaceFolder(cfg.data_dir, pixel_size, split=cfg.split, progress=run.main)
    if autoencoder:
        dataset = LatentFaces(dataset, autoencoder, cache=Path(cfg.out_dir) / "latents.safetensors",
                              flips=cfg.hflip, progress=run.main)
    if cfg.data_on_device:
        dataset = DeviceFaces(dataset, device)
    if len(dataset) < cfg.batch_size:
        raise FlipnetError(f"{cfg.data_dir}: {len(dataset)} images, fewer than one batch "
                           f"({cfg.batch_size})")
    sampler = ShuffleFlipSampler(len(dataset), seed=cfg.seed, hflip=cfg.hflip)
    loader = make_loader(dataset, sampler, cfg.batch_size, num_workers=cfg.num_workers)
    model = UNet(cfg.prior.unet)
    if cfg.init_from:
        model.load_state_dict(_start_weights(cfg, autoencoder))
    memory = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(memory_format=memory)
    if cfg.compile:
        model.compile()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model, opt, loader = accelerator.prepare(model, opt, loader)
    ema = EMA(accelerator.unwrap_model(model), decay=cfg.ema_decay)
    sample_model = UNet(cfg.prior.unet).to(device).eval()  # before the RNG states are restored
    run.resume_or_start(ema)
    fixed_noise = torch.randn((cfg.sample_count, cfg.prior.unet.in_channels, size, size),
                              generator=torch.Generator().manual_seed(cfg.seed + 1)).to(device)

    def save_samples(path: Path) -> None:
        ema.copy_to(sample_model)
        ts = sampling_timesteps(schedule.num_timesteps, str(cfg.sample_steps))
        x0 = sample_ddim(lambda xt, t: sample_model(xt, t), fixed_noise, schedule, ts,
                         clip_x0=autoencoder is None)  # latents are not bounded to [-1, 1]
        with torch.no_grad():
            save_grid(path, autoencoder.decode(x0) if autoencoder else x0)

    noise_gen = torch.Generator(device=device)
    batches = run.batches(loader, sampler, per_step=cfg.grad_accum)
    for step in run.steps(cfg.steps, desc="prior", save_samples=save_samples):
        lr = warmup_lr(cfg.lr, step, cfg.warmup_steps)
        if cfg.lr_decay_from > 0:
            lr = cosine_decay_lr(lr, step, cfg.lr_decay_from, cfg.steps)
        lr = set_lr(opt, lr)
        # one optimizer step = grad_accum micro-batches; noise = f(seed, step, rank)
        for micro in range(cfg.grad_accum):
            x0 = next(batches)
            with accelerator.accumulate(model):
                noise_gen.manual_seed(((cfg.seed * 1_000_003 + step) * 64 + micro) * 4096
                                      + accelerator.process_index)
                t = torch.randint(0, schedule.num_timesteps, (x0.shape[0],), device=device,
                                  generator=noise_gen)
                noise = torch.randn(x0.shape, device=device, generator=noise_gen)
                xt = schedule.q_sample(x0, t, noise).contiguous(memory_format=memory)
                error = (model(xt, t).float() - schedule.training_target(x0, t, noise)) ** 2
                if cfg.loss_weighting == "min_snr":
                    error = error * schedule.min_snr_weight(t, error, gamma=cfg.min_snr_gamma)
                loss = error.mean()
                run.optimizer_step(loss, opt, model.parameters(), step, grad_clip=cfg.grad_clip)
        ema.update(accelerator.unwrap_model(model))
        loss_value = float(loss.detach())
        smooth = run.smoothed_loss(loss_value)
        run.end_step(step, smooth, log={"loss": loss_value, "loss_smooth": smooth, "lr": lr},
                     postfix={"loss": f"{smooth:.4f}", "lr": f"{lr:.1e}"})

    # export the EMA weights as a prior folder with a model card
    def write_prior(tmp: Path) -> str:
        ema.copy_to(sample_model)
        save_prior(tmp, sample_model, cfg.prior, autoencoder=autoencoder)
        plot_loss(run.log_path, tmp / "loss_curve.png", threads=cfg.threads)
        return _model_card(cfg, run.progress, len(dataset), count_parameters(sample_model),
                           hardware_name(accelerator), pixel_size)

    return run.export(write_prior)


if __name__ == "__main__":  # python -m flipnet.training.prior CONFIG.json [--resume]
    run_from_argv(PriorTrainConfig, train_prior, "prior")
