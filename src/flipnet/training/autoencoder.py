"""Train the face autoencoder of the 128 px latent prior (issue 18) with Accelerate.

Loss = l1 * pixel L1 + fft * Fourier-amplitude L1 + kl * KL(posterior || N(0, I)) + gan *
adversarial (PatchGAN, switched on after ``gan_start`` steps), as in LDM's KL autoencoder (Rombach
et al. CVPR 2022, sec. 3.1 and app. G) with its perceptual term replaced by the frequency term.
The KL is summed over latent dimensions and divided by the number of image values, so with L1 as
a per-value mean, ``kl_weight`` = 1e-6 is LDM's ratio of the two. The decoder sees the
reparameterised posterior sample (noise seeded per step, so a resumed run is exact).

The loop runs on ``training.harness``: clip, EMA, NaN stop, a sample grid (input | reconstruction
rows) every ``sample_every`` steps, exact-resume checkpoints, the reconstruction PSNR of
``val_count`` held-in train-split faces in ``log.jsonl`` at every checkpoint. At the end the EMA
weights are exported to ``<out_dir>/autoencoder`` with the per-channel mean / std of the latents
of up to ``stats_count`` training faces in its config (so ``encode`` gives unit-variance latents)
and a model card with the reconstruction PSNR / SSIM on ``eval_count`` test-split faces.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from flipnet.errors import ConfigError, FlipnetError
from flipnet.io import to_tensor, to_uint8, write_bytes_atomic
from flipnet.models.autoencoder import (
    AutoencoderConfig,
    FaceAutoencoder,
    count_parameters,
    kl_divergence,
    load_autoencoder,
    save_autoencoder,
)
from flipnet.models.discriminator import DiscriminatorConfig, PatchDiscriminator
from flipnet.training.data import FaceFolder, ShuffleFlipSampler
from flipnet.training.harness import (
    EMA,
    TrainingRun,
    TrainProgress,
    append_log,
    cosine_decay_lr,
    cpu_hours,
    every,
    hardware_name,
    make_loader,
    run_from_argv,
    set_lr,
    warmup_lr,
)
from flipnet.training.losses import (
    fft_amplitude_loss,
    gan_discriminator_loss,
    gan_generator_loss,
    l1_loss,
    pyramid_l1_loss,
)
from flipnet.training.pairs import load_faces
from flipnet.viz import save_curve, save_grid

PYRAMID_LEVELS = 4  # pooled by 2, 4, 8 and 16: a 128 px face's colour and tone at 8-64 px

# settings that may change between a run and its continuation without changing the result
# ("steps" too when the learning rate does not depend on it)
RESUME_HARMLESS = ("resume", "max_minutes", "threads", "num_workers", "log_every",
                   "sample_every", "sample_count", "save_every", "keep_checkpoints", "eval_count",
                   "stats_count")


def _h(text: str) -> dict:
    return {"help": text}


@dataclass(frozen=True)
class AutoencoderTrainConfig:
    """Everything an autoencoder training run needs; saved as ``<out_dir>/train_config.json``."""

    data_dir: str = field(default="out/prepared/utkface-128", metadata=_h("aligned faces"))
    split: str = field(default="train", metadata=_h("split of data_dir to train on: train | all"))
    extra_data_dir: str | None = field(default=None, metadata=_h(
        "a second face folder mixed into training (e.g. real LQ faces, so that the decoder "
        "learns to render degraded latents too); None = none"))
    extra_split: str = field(default="train", metadata=_h("split of extra_data_dir"))
    extra_repeat: int = field(default=1, metadata=_h(
        "times each extra face appears per epoch (weights a small folder up)"))
    out_dir: str = field(default="out/autoencoder-128", metadata=_h("checkpoints, samples, "
                                                                     "export"))
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig, metadata=_h(
        "architecture; image_size = training size; latent stats are filled at export"))
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig,
                                               metadata=_h("PatchGAN architecture"))
    val_count: int = field(default=0, metadata=_h("train-split faces held out of training for "
                                                  "the reconstruction-PSNR curve; 0 = none"))
    batch_size: int = field(default=16, metadata=_h("images per step per process"))
    lr: float = field(default=1e-3, metadata=_h("AdamW learning rate after warmup"))
    lr_schedule: Literal["constant", "cosine"] = field(default="cosine",
                                                       metadata=_h("constant | cosine decay"))
    min_lr_ratio: float = field(default=0.1, metadata=_h("cosine ends at lr * this"))
    warmup_steps: int = field(default=100, metadata=_h("linear learning-rate warmup steps"))
    disc_lr: float = field(default=2e-4, metadata=_h("discriminator AdamW learning rate"))
    steps: int = field(default=20_000, metadata=_h("optimizer steps in total"))
    max_minutes: float = field(default=0.0, metadata=_h("stop (save + export) after this wall "
                                                          "time; 0 = no limit"))
    ema_decay: float = field(default=0.999, metadata=_h("EMA decay (with warmup)"))
    grad_clip: float = field(default=1.0, metadata=_h("gradient-norm clip; 0 = off"))
    mixed_precision: Literal["no", "bf16"] = field(default="no", metadata=_h("no | bf16"))
    hflip: bool = field(default=True, metadata=_h("random horizontal flips"))
    l1_weight: float = field(default=1.0, metadata=_h("pixel L1 weight"))
    fft_weight: float = field(default=0.1, metadata=_h("Fourier-amplitude L1 weight"))
    pyramid_weight: float = field(default=0.0, metadata=_h(
        "L1 on 2x .. 16x average-pooled copies: holds each face's colour and tone, which pixel "
        "L1 with the GAN and FFT terms let drift (a pink cast)"))
    kl_weight: float = field(default=1e-6, metadata=_h(
        "KL weight (KL summed over latent dims / number of image values; 1e-6 as in LDM)"))
    sample_posterior: bool = field(default=True, metadata=_h(
        "decode a posterior sample (LDM) rather than the mean while training"))
    gan_loss: Literal["nonsat", "hinge"] = field(default="hinge", metadata=_h("nonsat | hinge"))
    gan_weight: float = field(default=0.05, metadata=_h("adversarial weight; 0 = no GAN"))
    gan_start: int = field(default=2000, metadata=_h("steps before the GAN term starts"))
    sample_every: int = field(default=500, metadata=_h("EMA sample grid every N steps; 0 = off"))
    sample_count: int = field(default=8, metadata=_h("faces in each sample grid"))
    save_every: int = field(default=500, metadata=_h("checkpoint (+ validation) every N steps"))
    keep_checkpoints: int = field(default=2, metadata=_h("checkpoints kept on disk"))
    log_every: int = field(default=50, metadata=_h("log line every N steps"))
    seed: int = field(default=0, metadata=_h("seed for init, data order, posterior noise"))
    num_workers: int = field(default=0, metadata=_h("DataLoader workers (data is in memory)"))
    threads: int = field(default=0, metadata=_h("torch CPU threads; 0 = torch default"))
    resume: bool = field(default=False, metadata=_h(
        "continue even if settings differ from the saved run (a rerun with the same settings "
        "continues from the newest checkpoint without it)"))
    stats_count: int = field(default=2000, metadata=_h("training faces whose latents give the "
                                                       "per-channel shift / scale at export"))
    eval_count: int = field(default=100, metadata=_h("test-split faces for the final check"))
    init_from: str | None = field(default=None, metadata=_h(
        "start from this exported autoencoder folder (same architecture; with train_encoder "
        "false the decoder may differ, and then starts fresh)"))
    train_encoder: bool = field(default=True, metadata=_h(
        "False: freeze the encoder and train the decoder only, so the latents (and a latent "
        "prior trained on them) stay valid; the export keeps init_from's latent statistics"))


def _lr_at(cfg: AutoencoderTrainConfig, step: int) -> float:
    """Linear warmup, then constant or cosine decay to ``lr * min_lr_ratio`` at ``steps``."""
    lr = warmup_lr(cfg.lr, step, cfg.warmup_steps)
    if cfg.lr_schedule == "cosine":
        lr = cosine_decay_lr(lr, step, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)
    return lr


def _batches(pixels: np.ndarray, batch_size: int, *, desc: str | None = None):
    """(start, (B, 3, S, S) in [-1, 1]) over uint8 (N, S, S, 3) faces, with a bar when ``desc``."""
    starts = range(0, len(pixels), batch_size)
    for start in tqdm(starts, desc=desc, disable=desc is None, leave=False):
        yield start, to_tensor(pixels[start:start + batch_size])


@torch.no_grad()
def reconstruct(model: FaceAutoencoder, pixels: np.ndarray, *, batch_size: int = 32
                ) -> np.ndarray:
    """``decode(encode(x))`` of uint8 (N, S, S, 3) faces as uint8 (N, S, S, 3)."""
    device = next(model.parameters()).device
    return np.concatenate([to_uint8(model.decode(model.encode(x.to(device))))
                           for _, x in _batches(pixels, batch_size)])


@torch.no_grad()
def latent_stats(model: FaceAutoencoder, pixels: np.ndarray, *, batch_size: int = 32,
                 progress: bool = True) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) of the raw posterior means of uint8 (N, S, S, 3) faces, over
    faces and latent pixels (float64 sums)."""
    device = next(model.parameters()).device
    total = total_sq = None
    count = 0
    for _, x in _batches(pixels, batch_size, desc="latent stats" if progress else None):
        mean, _ = model.encode_posterior(x.to(device))  # (B, C, h, w)
        m = mean.double().transpose(0, 1).flatten(1)  # (C, B * h * w)
        total = m.sum(1) if total is None else total + m.sum(1)
        total_sq = m.pow(2).sum(1) if total_sq is None else total_sq + m.pow(2).sum(1)
        count += m.shape[1]
    mu = total / count
    std = (total_sq / count - mu.pow(2)).clamp_min(1e-12).sqrt()
    return (tuple(round(float(v), 6) for v in mu.cpu()),
            tuple(round(float(v), 6) for v in std.cpu()))


def reconstruction_scores(model: FaceAutoencoder, pixels: np.ndarray, *,
                          batch_size: int = 32) -> dict:
    """Mean PSNR (dB, 8-bit) and SSIM of ``decode(encode(x))`` against uint8 faces."""
    from flipnet.metrics.psnr_ssim import psnr, ssim

    out = reconstruct(model, pixels, batch_size=batch_size)
    return {"faces": len(pixels),
            "psnr": round(float(np.mean(np.atleast_1d(psnr(out, pixels)))), 4),
            "ssim": round(float(np.mean(np.atleast_1d(ssim(out, pixels)))), 4)}


def plot_validation(log_path: Path, png: Path) -> Path | None:
    """The ``val_psnr`` lines of ``log.jsonl`` as a PNG curve, or None when there are none."""
    if not log_path.is_file():
        return None
    rows = {}
    for line in log_path.read_text().splitlines():
        row = json.loads(line) if line.strip() else {}
        if "val_psnr" in row:
            rows[row["step"]] = row["val_psnr"]
    if not rows:
        return None
    steps = sorted(rows)
    return save_curve(png, steps, {"reconstruction (held-in val)": [rows[s] for s in steps]},
                      ylabel="PSNR (dB)", title="autoencoder: held-in validation (train split)")


def _final_losses(log_path: Path, last: int = 20) -> dict:
    """Mean of each logged loss over the last ``last`` loss lines (validation lines skipped)."""
    if not log_path.is_file():
        return {}
    lines = [json.loads(s) for s in log_path.read_text().splitlines() if s.strip()]
    lines = [x for x in lines if "loss" in x][-last:]
    keys = [k for k in lines[-1] if k not in ("step", "lr", "wall_s")] if lines else []
    return {k: round(float(np.mean([x[k] for x in lines if k in x])), 5) for k in keys}


def _model_card(cfg: AutoencoderTrainConfig, progress: TrainProgress, *, n_images: int,
                n_extra: int,
                n_params: int, hardware: str, exported: AutoencoderConfig, n_stats: int,
                losses: dict, evaluation: dict | None, command: str | None) -> str:
    a = exported
    lines = [
        f"# flipnet face autoencoder ({a.image_size} px, f = {a.factor})\n",
        (f"- model: conv-only KL autoencoder (LDM layout without attention), channels "
         f"{list(a.block_out_channels)}, {a.layers_per_block} ResNet block(s) per level, "
         + (f"decoder channels {list(a.decoder_levels)} with {a.decoder_depth + 1} block(s) per "
            f"level, " if a.decoder_levels != tuple(a.block_out_channels)
            or a.decoder_depth != a.layers_per_block else "")
         + f"{a.mid_blocks} mid block(s), GroupNorm {a.norm_num_groups}; {n_params / 1e6:.3f} M "
         f"parameters; a {a.image_size} px face -> a ({a.latent_channels}, {a.latent_size}, "
         f"{a.latent_size}) latent"),
        (f"- data: `{cfg.data_dir}`, split `{cfg.split}` ({n_images} faces; flipnet.splits: "
         f"SHA-1 of the file name, lowest 5% held out as test; {cfg.val_count} more held out of "
         f"training for the validation curve), horizontal flips: {cfg.hflip}"
         + (f"; mixed with `{cfg.extra_data_dir}`, split `{cfg.extra_split}` "
            f"({n_extra // cfg.extra_repeat} faces x {cfg.extra_repeat})" if n_extra else "")),
        (f"- losses: L1 x{cfg.l1_weight}, FFT amplitude L1 x{cfg.fft_weight}, "
         + (f"multi-scale L1 (2x-{2 ** PYRAMID_LEVELS}x pooled) x{cfg.pyramid_weight}, "
            if cfg.pyramid_weight else "") + "KL x"
         f"{cfg.kl_weight} (summed over latent dims / image values), GAN ({cfg.gan_loss}, "
         f"PatchGAN width {cfg.discriminator.width}, {cfg.discriminator.layers} layers) x"
         f"{cfg.gan_weight} from step {cfg.gan_start}; decoder sees "
         + ("a posterior sample" if cfg.sample_posterior else "the posterior mean")),
        (f"- training: {progress.step} steps, batch {cfg.batch_size}, lr {cfg.lr} "
         f"({cfg.lr_schedule}, warmup {cfg.warmup_steps}), EMA {cfg.ema_decay}, grad clip "
         f"{cfg.grad_clip}, mixed precision {cfg.mixed_precision}, seed {cfg.seed}"),
        (f"- wall time: {progress.wall_seconds / 60:.1f} min on {hardware}: "
         f"{cpu_hours(progress.wall_seconds):.2f} CPU-hours (wall x threads)"),
        f"- command: `{command or 'train_autoencoder(cfg), see train_config.json'}`",
        *([f"- started from `{cfg.init_from}` (its CPU-hours are in its own card)"
           + ("; encoder frozen, decoder trained (the latents are unchanged; the KL term is "
              "then a constant)" if not cfg.train_encoder else "")] if cfg.init_from else []),
        "- final losses (mean of the last 20 log lines): "
        + (", ".join(f"{k} {v}" for k, v in losses.items()) or "n/a"),
        ("- latent normalisation (config.json, "
         + (f"kept from `{cfg.init_from}`" if not cfg.train_encoder else
            f"from {n_stats} training faces")
         + "): shift "
         f"{list(a.latent_shift or ())}, scale {list(a.latent_scale or ())}; `encode` returns "
         "(posterior mean - shift) / scale"),
        "- weights: EMA, fp16 safetensors",
        "- terms: trained on UTKFace-derived crops: non-commercial research use only.",
    ]
    if evaluation:
        lines.append(f"\n## Quick check: {evaluation['faces']} test-split faces at "
                     f"{a.image_size} px\n\nreconstruction `decode(encode(x))`: PSNR "
                     f"{evaluation['psnr']:.2f} dB, SSIM {evaluation['ssim']:.4f}")
    return "\n".join(lines) + "\n"


def train_autoencoder(cfg: AutoencoderTrainConfig, *, command: str | None = None) -> Path:
    """Train (or resume) an autoencoder; returns the exported EMA folder
    ``<out_dir>/autoencoder``."""
    harmless = RESUME_HARMLESS + (("steps",) if cfg.lr_schedule == "constant" else ())
    run = TrainingRun(cfg, export="autoencoder", harmless=harmless)
    accelerator, device = run.accelerator, run.device
    # data: the first val_count faces are held out of training for the validation curve
    size = cfg.autoencoder.image_size
    dataset = FaceFolder(cfg.data_dir, size, split=cfg.split, progress=run.main)
    val_pixels = dataset.pixels[:cfg.val_count]
    dataset.pixels, dataset.paths = dataset.pixels[cfg.val_count:], dataset.paths[cfg.val_count:]
    n_main = len(dataset)
    if cfg.extra_data_dir:
        extra = FaceFolder(cfg.extra_data_dir, size, split=cfg.extra_split, progress=run.main)
        dataset.pixels = np.concatenate([dataset.pixels] + [extra.pixels] * cfg.extra_repeat)
        dataset.paths = list(dataset.paths) + list(extra.paths) * cfg.extra_repeat
    if len(dataset) < cfg.batch_size:
        raise FlipnetError(f"{cfg.data_dir}: {len(dataset)} training images (after val_count "
                           f"{cfg.val_count}), fewer than one batch ({cfg.batch_size})")
    sampler = ShuffleFlipSampler(len(dataset), seed=cfg.seed, hflip=cfg.hflip)
    loader = make_loader(dataset, sampler, cfg.batch_size, num_workers=cfg.num_workers)
    # models, optimizers, EMA
    model, start_cfg = _initial_autoencoder(cfg)
    trained = model.parameters() if cfg.train_encoder else model.decoder.parameters()
    opt = torch.optim.AdamW(trained, lr=cfg.lr, betas=(0.9, 0.9))
    use_gan = cfg.gan_weight > 0
    if use_gan:
        disc = PatchDiscriminator(cfg.discriminator)
        disc_opt = torch.optim.AdamW(disc.parameters(), lr=cfg.disc_lr, betas=(0.5, 0.999))
        model, disc, opt, disc_opt, loader = accelerator.prepare(model, disc, opt, disc_opt,
                                                                 loader)
    else:
        model, opt, loader = accelerator.prepare(model, opt, loader)
    ema = EMA(accelerator.unwrap_model(model), decay=cfg.ema_decay)
    sample_model = FaceAutoencoder(cfg.autoencoder).to(device).eval()  # before RNG restore
    run.resume_or_start(ema)
    fixed = to_tensor(dataset.pixels[:cfg.sample_count])  # (k, 3, S, S)

    def save_samples(path: Path) -> Path:
        ema.copy_to(sample_model)
        with torch.no_grad():
            recon = sample_model.decode(sample_model.encode(fixed.to(device))).cpu()
        return save_grid(path, torch.cat([fixed, recon]), ncol=len(fixed))

    weights = {"l1": cfg.l1_weight, "fft": cfg.fft_weight, "kl": cfg.kl_weight,
               "pyramid": cfg.pyramid_weight, "gan_g": cfg.gan_weight}
    values_per_image = cfg.autoencoder.in_channels * size * size
    noise_gen = torch.Generator(device=device)
    batches = run.batches(loader, sampler)
    for step in run.steps(cfg.steps, desc="autoencoder", save_samples=save_samples):
        lr = set_lr(opt, _lr_at(cfg, step))
        gan_on = use_gan and step > cfg.gan_start
        x = next(batches)  # (B, 3, S, S)
        # autoencoder step: reconstruction terms (+ adversarial term once warmed up)
        noise = None
        if cfg.sample_posterior:  # posterior noise = f(seed, step, rank): exact resume
            noise_gen.manual_seed((cfg.seed * 1_000_003 + step) * 4096 + accelerator.process_index)
            c, h = cfg.autoencoder.latent_channels, size // cfg.autoencoder.factor
            noise = torch.randn((x.shape[0], c, h, h), device=device, generator=noise_gen)
        recon, mean, logvar = model(x, noise)
        parts = {"l1": l1_loss(recon, x)}
        if cfg.fft_weight:
            parts["fft"] = fft_amplitude_loss(recon, x)
        if cfg.pyramid_weight:
            parts["pyramid"] = pyramid_l1_loss(recon, x, levels=PYRAMID_LEVELS)
        parts["kl"] = kl_divergence(mean.float(), logvar.float()).mean() / values_per_image
        if gan_on:
            disc.requires_grad_(False)
            parts["gan_g"] = gan_generator_loss(disc(recon), cfg.gan_loss)
        loss = sum(weights[k] * v for k, v in parts.items())
        run.optimizer_step(loss, opt, model.parameters(), step, grad_clip=cfg.grad_clip)
        # discriminator step: real faces vs reconstructions
        if gan_on:
            disc.requires_grad_(True)
            d_loss = gan_discriminator_loss(disc(x), disc(recon.detach()), cfg.gan_loss)
            run.check_finite(d_loss.detach(), step, what="discriminator loss")
            accelerator.backward(d_loss)
            if cfg.grad_clip:
                accelerator.clip_grad_norm_(disc.parameters(), cfg.grad_clip)
            disc_opt.step()
            disc_opt.zero_grad(set_to_none=True)
            parts["gan_d"] = d_loss
        ema.update(accelerator.unwrap_model(model))
        loss_value = float(loss.detach())
        smooth = run.smoothed_loss(loss_value)
        run.end_step(step, smooth, log={"loss": loss_value, **{k: float(v.detach())
                                                               for k, v in parts.items()},
                                        "lr": lr},
                     postfix={"loss": f"{smooth:.4f}", "lr": f"{lr:.1e}"})
        # the held-in reconstruction PSNR, at the steps a checkpoint is written
        saved = every(cfg.save_every, step) or step == cfg.steps or run.out_of_time
        if run.main and len(val_pixels) and saved:
            ema.copy_to(sample_model)
            scores = reconstruction_scores(sample_model, val_pixels)
            append_log(run.log_path, {"step": step, "val_psnr": scores["psnr"],
                                      "val_ssim": scores["ssim"],
                                      "wall_s": round(run.progress.wall_seconds, 1)})

    # export: EMA weights, latent stats in the config, quick check and model card
    def write_autoencoder(tmp: Path) -> str:
        ema.copy_to(sample_model)
        stats_pixels = dataset.pixels[:cfg.stats_count]
        if cfg.train_encoder or start_cfg is None or start_cfg.latent_shift is None:
            shift, scale = latent_stats(sample_model, stats_pixels, progress=run.main)
        else:  # the frozen encoder makes the same latents: keep the normalisation exactly
            shift, scale = start_cfg.latent_shift, start_cfg.latent_scale
        exported = dataclasses.replace(cfg.autoencoder, latent_shift=shift, latent_scale=scale)
        final = FaceAutoencoder(exported).to(device).eval()  # the same weights, with the stats
        final.load_state_dict(sample_model.state_dict())
        save_autoencoder(tmp, final, exported)
        plot_validation(run.log_path, tmp / "val_curve.png")
        evaluation = _export_check(tmp, final, cfg)
        return _model_card(cfg, run.progress, n_images=n_main, n_extra=len(dataset) - n_main,
                           n_params=count_parameters(sample_model),
                           hardware=hardware_name(accelerator), exported=exported,
                           n_stats=len(stats_pixels), losses=_final_losses(run.log_path),
                           evaluation=evaluation, command=command)

    return run.export(write_autoencoder)


def _initial_autoencoder(cfg: AutoencoderTrainConfig
                         ) -> tuple[FaceAutoencoder, AutoencoderConfig | None]:
    """The model a run starts from (fresh, or ``init_from``'s weights) and the starting
    folder's config (None when fresh); the encoder is frozen when ``train_encoder`` is False."""
    model = FaceAutoencoder(cfg.autoencoder)
    start_cfg = None
    if cfg.init_from:
        start, start_cfg = load_autoencoder(cfg.init_from)
        unnormalised = dataclasses.replace(start_cfg, latent_shift=None, latent_scale=None)
        same = unnormalised == dataclasses.replace(cfg.autoencoder, latent_shift=None,
                                                   latent_scale=None)
        # a decoder-only leg may grow the decoder: the encoder comes over, the new decoder
        # starts fresh
        new_decoder = (not same and not cfg.train_encoder
                       and start_cfg.encoder_part() == cfg.autoencoder.encoder_part())
        if not (same or new_decoder):
            raise ConfigError(f"{cfg.init_from}: its architecture differs from this run's "
                              "autoencoder config" + ("" if cfg.train_encoder else
                                                      " (beyond the decoder)"))
        if new_decoder:
            model.encoder.load_state_dict(start.encoder.state_dict())
        else:
            model.load_state_dict(start.state_dict())
    elif not cfg.train_encoder:
        raise ConfigError("train_encoder = false needs init_from (a trained encoder to keep)")
    if not cfg.train_encoder:
        model.encoder.requires_grad_(False)
    return model, start_cfg


def _export_check(tmp: Path, model: FaceAutoencoder, cfg: AutoencoderTrainConfig) -> dict | None:
    """Reconstruction PSNR / SSIM of the exported model on ``eval_count`` test-split faces,
    written to ``tmp/eval.json``; None when there are none."""
    if cfg.eval_count <= 0:
        return None
    try:
        _, pixels = load_faces(cfg.data_dir, cfg.autoencoder.image_size, split="test",
                               limit=cfg.eval_count, progress=False)
    except FlipnetError as e:  # e.g. no test-split faces in a small folder
        tqdm.write(f"quick check skipped: {e}")
        return None
    evaluation = reconstruction_scores(model, pixels)
    write_bytes_atomic(tmp / "eval.json", json.dumps(evaluation, indent=1).encode())
    return evaluation


if __name__ == "__main__":  # python -m flipnet.training.autoencoder CONFIG.json [--resume]
    import sys

    run_from_argv(AutoencoderTrainConfig, lambda cfg: train_autoencoder(
        cfg, command="python -m flipnet.training.autoencoder " + " ".join(sys.argv[1:])),
        "autoencoder")
