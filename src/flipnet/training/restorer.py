"""Train the feed-forward restorer on (LQ, HQ) pairs with Accelerate (issue 5).

Loss = l1 * L1 + pyramid * multi-scale L1 + fft * Fourier-amplitude L1 + perceptual * (prior
features | LPIPS) + gan * adversarial (PatchGAN, switched on after ``gan_start`` steps); see
``training.losses``. Pairs are synthetic (HQ faces of the train split degraded on the fly with a
mix of presets) or read from a ``pairs_dir`` of ``lq/`` + ``target/`` files (fine-tuning). The loop
runs on ``training.harness``: accumulate, clip, EMA, NaN stop, a sample grid (LQ | restored | HQ
rows) every ``sample_every`` steps, exact-resume checkpoints, and at the end the EMA weights
exported as a restorer folder (fp16) with a model card, sample grid and a quick PSNR/SSIM check on
test faces.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from flipnet.degradations.face_size import FaceSizeConfig
from flipnet.errors import ConfigError, FlipnetError
from flipnet.io import to_uint8, write_bytes_atomic
from flipnet.models.discriminator import DiscriminatorConfig, PatchDiscriminator
from flipnet.models.restorer import (
    Restorer,
    RestorerConfig,
    count_parameters,
    deepen_restorer,
    load_restorer,
    save_restorer,
)
from flipnet.splits import group_balance_weights
from flipnet.training.data import FaceFolder, ShuffleFlipSampler
from flipnet.training.harness import (
    EMA,
    TrainingRun,
    TrainProgress,
    append_log,
    cosine_decay_lr,
    cpu_hours,
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
    make_perceptual_loss,
    pyramid_l1_loss,
    resolve_perceptual,
)
from flipnet.training.pairs import (
    PairFolder,
    PairSampler,
    SyntheticPairs,
    face_presets,
    fixed_pairs,
    load_faces,
)
from flipnet.viz import save_curve, save_grid

# settings that may change between a run and its continuation without changing the result
# ("steps" too when the learning rate does not depend on it)
RESUME_HARMLESS = ("resume", "max_minutes", "threads", "num_workers", "log_every",
                   "sample_every", "sample_count", "save_every", "keep_checkpoints", "eval_count",
                   "eval_presets")


def _h(text: str) -> dict:
    return {"help": text}


@dataclass(frozen=True)
class RestorerTrainConfig:
    """Everything a restorer training run needs; saved as ``<out_dir>/train_config.json``."""

    data_dir: str = field(default="out/prepared/utkface-128", metadata=_h("HQ aligned faces"))
    split: str = field(default="train", metadata=_h("split of data_dir to train on: train | all"))
    pairs_dir: str | None = field(default=None, metadata=_h("instead of synthetic pairs: a folder "
                                                              "with lq/ and target/ (same names)"))
    out_dir: str = field(default="out/restorer-128", metadata=_h("checkpoints, samples, export"))
    restorer: RestorerConfig = field(default_factory=RestorerConfig,
                                     metadata=_h("architecture; image_size = training size"))
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig,
                                               metadata=_h("PatchGAN architecture"))
    presets: tuple[str, ...] = field(default=("gfpgan", "codeformer", "difface"),
                                     metadata=_h("degradation presets mixed per sample (scaled "
                                                 "to the face size; NAME-unscaled: published)"))
    small_faces: FaceSizeConfig = field(default_factory=FaceSizeConfig, metadata=_h(
        "share of samples rendered as 16-128 px faces in the photo (prob 0 = none)"))
    clean_prob: float = field(default=0.0, metadata=_h("share of samples left undegraded "
                                                       "(LQ = HQ: leave sharp faces alone)"))
    val_count: int = field(default=0, metadata=_h("train-split faces held out for the "
                                                  "validation curve (val.jsonl); 0 = none"))
    max_images: int = field(default=0, metadata=_h("use at most N HQ faces; 0 = all"))
    balance_groups: bool = field(default=False, metadata=_h(
        "draw faces so that every UTKFace (age band, race) group is seen equally often "
        "(issue 16: identity is worst for the elderly and for black faces, the rarest groups)"))
    batch_size: int = field(default=16, metadata=_h("pairs per step per process"))
    grad_accum: int = field(default=1, metadata=_h("micro-batches per optimizer step"))
    lr: float = field(default=1e-3, metadata=_h("AdamW learning rate after warmup"))
    lr_schedule: Literal["constant", "cosine"] = field(default="cosine",
                                                       metadata=_h("constant | cosine decay"))
    min_lr_ratio: float = field(default=0.1, metadata=_h("cosine ends at lr * this"))
    warmup_steps: int = field(default=100, metadata=_h("linear learning-rate warmup steps"))
    disc_lr: float = field(default=2e-4, metadata=_h("discriminator AdamW learning rate"))
    weight_decay: float = field(default=0.0, metadata=_h("AdamW weight decay"))
    steps: int = field(default=20_000, metadata=_h("optimizer steps in total"))
    max_minutes: float = field(default=0.0, metadata=_h("stop (save + export) after this wall "
                                                          "time; 0 = no limit"))
    ema_decay: float = field(default=0.999, metadata=_h("EMA decay (with warmup)"))
    grad_clip: float = field(default=1.0, metadata=_h("gradient-norm clip; 0 = off"))
    mixed_precision: Literal["no", "bf16"] = field(default="no", metadata=_h("no | bf16"))
    hflip: bool = field(default=True, metadata=_h("random horizontal flips"))
    l1_weight: float = field(default=1.0, metadata=_h("pixel L1 weight"))
    pyramid_weight: float = field(default=0.5, metadata=_h("multi-scale L1 weight"))
    fft_weight: float = field(default=0.1, metadata=_h("Fourier-amplitude L1 weight"))
    perceptual: Literal["auto", "prior", "lpips", "none"] = field(
        default="auto", metadata=_h("auto (prior if prior_path exists) | prior | lpips | none"))
    perceptual_weight: float = field(default=0.1, metadata=_h("perceptual term weight"))
    identity_weight: float = field(default=0.0, metadata=_h(
        "identity term weight: 1 - cosine of dlib's 128-D ResNet (torch port) on pred vs HQ"))
    identity_batch: int = field(default=0, metadata=_h(
        "identity term on the first N pairs of each batch only (it costs more than the "
        "restorer); 0 = all"))
    prior_path: str | None = field(default="weights/prior-64", metadata=_h("prior folder for "
                                                                          "prior features"))
    prior_t: int = field(default=50, metadata=_h("noise step of the prior-feature loss"))
    lpips_net: str = field(default="alex", metadata=_h("LPIPS backbone: alex | vgg"))
    lpips_backbone: str | None = field(default=None, metadata=_h("torchvision backbone weights"))
    gan_loss: Literal["nonsat", "hinge"] = field(default="nonsat", metadata=_h("nonsat | hinge"))
    gan_weight: float = field(default=0.01, metadata=_h("adversarial weight; 0 = no GAN"))
    gan_start: int = field(default=2000, metadata=_h("steps of warm-up before the GAN term"))
    disc_start: int | None = field(default=None, metadata=_h(
        "step after which the discriminator trains; below gan_start it warms up before the "
        "restorer feels it (a leg starting from a restorer export starts a fresh "
        "discriminator); None = gan_start"))
    gan_real_dir: str | None = field(default=None, metadata=_h(
        "aligned faces the discriminator sees as real instead of the training targets (real "
        "HQ faces when the targets are pseudo targets: fine-tuning); None = the targets"))
    gan_real_split: str = field(default="train", metadata=_h("split of gan_real_dir"))
    sample_every: int = field(default=500, metadata=_h("EMA sample grid every N steps; 0 = off"))
    sample_count: int = field(default=8, metadata=_h("pairs in each sample grid"))
    save_every: int = field(default=500, metadata=_h("checkpoint every N steps"))
    keep_checkpoints: int = field(default=2, metadata=_h("checkpoints kept on disk"))
    log_every: int = field(default=50, metadata=_h("log line every N steps"))
    seed: int = field(default=0, metadata=_h("seed for init, data order, degradations"))
    num_workers: int = field(default=0, metadata=_h("DataLoader workers (degrade in parallel)"))
    threads: int = field(default=0, metadata=_h("torch CPU threads; 0 = torch default"))
    resume: bool = field(default=False, metadata=_h(
        "continue even if settings differ from the saved run (a rerun with the same settings "
        "continues from the newest checkpoint without it)"))
    init_from: str | None = field(default=None, metadata=_h("start from this restorer folder"))
    eval_count: int = field(default=100, metadata=_h("test-split faces for the final check"))
    eval_presets: tuple[str, ...] = field(default=("codeformer", "gfpgan"),
                                          metadata=_h("presets of the final check"))


def make_pairs(cfg: RestorerTrainConfig, *, progress: bool = True):
    """(training pairs, validation pairs or None): ``PairFolder(pairs_dir)`` or
    ``SyntheticPairs`` of ``data_dir``; the first ``val_count`` faces are held out."""
    if cfg.pairs_dir:
        return PairFolder(cfg.pairs_dir, cfg.restorer.image_size, progress=progress), None
    paths, pixels = load_faces(cfg.data_dir, cfg.restorer.image_size, split=cfg.split,
                               limit=(cfg.max_images + cfg.val_count) if cfg.max_images else None,
                               progress=progress)
    if cfg.val_count >= len(pixels):
        raise FlipnetError(f"{cfg.data_dir}: val_count {cfg.val_count} leaves no training faces "
                           f"of {len(pixels)}")
    presets = face_presets(cfg.presets, cfg.restorer.image_size)
    def pairs(faces: np.ndarray, names: list[Path]) -> SyntheticPairs:
        return SyntheticPairs(faces, presets, small_faces=cfg.small_faces,
                              clean_prob=cfg.clean_prob, paths=names)

    v = cfg.val_count
    return pairs(pixels[v:], paths[v:]), (pairs(pixels[:v], paths[:v]) if v else None)


def sampling_weights(cfg: RestorerTrainConfig, dataset) -> list[float] | None:
    """Per-face sampling weights: group-balanced with ``balance_groups``, else None (uniform)."""
    if not cfg.balance_groups:
        return None
    if getattr(dataset, "paths", None) is None:
        raise ConfigError("balance_groups needs UTKFace-named HQ faces (data_dir), not a "
                          f"pairs_dir ({cfg.pairs_dir})")
    return group_balance_weights(dataset.paths)


def _lr_at(cfg: RestorerTrainConfig, step: int) -> float:
    """Linear warmup, then constant or cosine decay to ``lr * min_lr_ratio`` at ``steps``."""
    lr = warmup_lr(cfg.lr, step, cfg.warmup_steps)
    if cfg.lr_schedule == "cosine":
        lr = cosine_decay_lr(lr, step, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)
    return lr


@torch.no_grad()
def validate(model: Restorer, lq: torch.Tensor, hq: torch.Tensor, *,
             batch_size: int = 32) -> dict:
    """Mean PSNR (dB, 8-bit) and L1 of ``model(lq)`` against ``hq`` on fixed pairs, the PSNR
    of the LQ itself, and on the undegraded pairs (LQ = HQ) the PSNR of the output alone
    (``psnr_clean``: how much the restorer harms a sharp face)."""
    from flipnet.metrics.psnr_ssim import psnr

    device = next(model.parameters()).device
    out = torch.cat([model(lq[i:i + batch_size].to(device)).cpu()
                     for i in range(0, len(lq), batch_size)])
    hq_u8, out_u8, lq_u8 = to_uint8(hq), to_uint8(out), to_uint8(lq)
    clean = np.array([np.array_equal(a, b) for a, b in zip(lq_u8, hq_u8)])
    scores = {"psnr": np.atleast_1d(psnr(out_u8, hq_u8)),
              "psnr_lq": np.atleast_1d(psnr(lq_u8, hq_u8))}
    res = {k: round(float(np.mean(v[~clean])), 4) for k, v in scores.items() if (~clean).any()}
    if clean.any():
        res["psnr_clean"] = round(float(np.mean(scores["psnr"][clean])), 4)
    return {**res, "l1": round(float((out - hq).abs().mean()), 5)}


def plot_validation(val_path: Path, png: Path) -> Path | None:
    """``val.jsonl`` as a PNG curve (PSNR of restored and LQ held-in pairs per step); the last
    row of a step wins (a resumed run may repeat one)."""
    if not val_path.is_file():
        return None
    rows = {}
    for line in val_path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[row["step"]] = row
    steps = sorted(s for s in rows if "psnr" in rows[s])
    if not steps:
        return None
    series = {"restored (held-in val)": [rows[s]["psnr"] for s in steps],
              "LQ input": [rows[s]["psnr_lq"] for s in steps]}
    if all("psnr_clean" in rows[s] for s in steps):
        series["undegraded input -> output"] = [rows[s]["psnr_clean"] for s in steps]
    return save_curve(png, steps, series, ylabel="PSNR (dB)",
                      title="restorer: held-in validation (train split, not the test split)")


def _gan_real_loader(cfg: RestorerTrainConfig, run: TrainingRun) -> tuple:
    """(prepared loader, sampler) of ``cfg.gan_real_dir``'s faces for the discriminator's real
    side, in an order of their own (seed + 1); ``run.batches`` of them after the resume."""
    reals = FaceFolder(cfg.gan_real_dir, cfg.restorer.image_size, split=cfg.gan_real_split,
                       progress=run.main)
    if len(reals) < cfg.batch_size:
        raise FlipnetError(f"{cfg.gan_real_dir}: {len(reals)} faces for the discriminator, "
                           f"fewer than one batch ({cfg.batch_size})")
    sampler = ShuffleFlipSampler(len(reals), seed=cfg.seed + 1, hflip=cfg.hflip)
    return run.accelerator.prepare(make_loader(reals, sampler, cfg.batch_size)), sampler


def _initial_model(cfg: RestorerTrainConfig) -> Restorer:
    """A fresh restorer, or the weights of ``init_from`` (same config, or deepened from it)."""
    if not cfg.init_from:
        return Restorer(cfg.restorer)
    model, init_cfg = load_restorer(cfg.init_from)
    if init_cfg != cfg.restorer:
        try:  # a deeper net of the same width grows from it, starting as the same function
            return deepen_restorer(model, cfg.restorer).train()
        except ConfigError as e:
            raise ConfigError(f"{cfg.init_from}: its restorer config {init_cfg} differs from the "
                              f"run's {cfg.restorer} in more than added blocks ({e})") from None
    return model.train()


@torch.no_grad()
def evaluate_synthetic(model: Restorer, data_dir: str, presets: tuple[str, ...], *, size: int,
                       count: int, seed: int = 0, batch_size: int = 16,
                       show: int = 4) -> tuple[dict, np.ndarray]:
    """Mean PSNR/SSIM of LQ and restored vs HQ on ``count`` test-split faces per preset.

    Returns (scores, figure): the figure's rows are LQ | restored | HQ (uint8 (3, k, S, S, 3))
    for the first ``show`` faces of each preset. Face i is degraded with seed ``seed + i``.
    """
    from flipnet.degradations.pipeline import degrade_images
    from flipnet.io import to_tensor
    from flipnet.metrics.psnr_ssim import psnr, ssim

    paths, pixels = load_faces(data_dir, size, split="test", limit=count, progress=False)
    device = next(model.parameters()).device
    results, figure = {"faces": len(paths), "seed": seed}, []
    for name, preset in zip(presets, face_presets(presets, size)):
        scores = {"psnr_lq": [], "psnr_restored": [], "ssim_lq": [], "ssim_restored": []}
        for start in range(0, len(pixels), batch_size):
            hq_u8 = pixels[start:start + batch_size]  # (B, S, S, 3)
            lq, _ = degrade_images(to_tensor(hq_u8), preset, seed=seed, start=start)
            lq_u8, out_u8 = to_uint8(lq), to_uint8(model(lq.to(device)))
            for key, img in (("lq", lq_u8), ("restored", out_u8)):
                scores[f"psnr_{key}"] += list(np.atleast_1d(psnr(img, hq_u8)))
                scores[f"ssim_{key}"] += list(np.atleast_1d(ssim(img, hq_u8)))
            if start == 0:
                figure.append(np.stack([lq_u8[:show], out_u8[:show], hq_u8[:show]]))
        results[name] = {k: round(float(np.mean(v)), 4) for k, v in scores.items()}
    return results, np.concatenate(figure, axis=1)


def _final_losses(log_path: Path, last: int = 20) -> dict:
    """Mean of each logged loss over the last ``last`` log lines."""
    if not log_path.is_file():
        return {}
    lines = [json.loads(s) for s in log_path.read_text().splitlines()[-last:] if s.strip()]
    keys = [k for k in lines[-1] if k not in ("step", "lr", "wall_s")] if lines else []
    return {k: round(float(np.mean([x[k] for x in lines if k in x])), 4) for k in keys}


def _model_card(cfg: RestorerTrainConfig, progress: TrainProgress, *, n_pairs: int, n_params: int,
                hardware: str, perceptual: str, losses: dict, evaluation: dict | None,
                command: str | None) -> str:
    r = cfg.restorer
    if cfg.pairs_dir:
        data = f"`{cfg.pairs_dir}`: {n_pairs} (lq, target) pairs matched by file name"
    else:
        data = (f"`{cfg.data_dir}`, split `{cfg.split}` ({n_pairs} faces; flipnet.splits: SHA-1 of "
                f"the file name, lowest {5}% held out as test; the first {cfg.val_count} of them "
                f"held in for the validation curve), degraded on the fly with presets "
                f"{', '.join(cfg.presets)} (scaled from 512 px to {r.image_size} px faces: blur "
                "sigma and down-sampling factor r by the size ratio, r floored at 1), one preset "
                f"per sample chosen by its seed; {cfg.small_faces.prob:.0%} rendered as faces of "
                f"{cfg.small_faces.size[0]}-{cfg.small_faces.size[1]} px in the photo, "
                f"{cfg.clean_prob:.0%} left undegraded")
        if cfg.balance_groups:
            data += "; faces drawn group-balanced (every UTKFace age band x race equally often)"
    perc = {"prior": f"diffusion-prior encoder features (`{cfg.prior_path}`, t={cfg.prior_t})",
            "lpips": f"LPIPS-{cfg.lpips_net}",
            "none": "off" if cfg.perceptual == "none" else
                    "none (no prior weights were available: multi-scale L1 + FFT amplitude L1 "
                    "are the offline stand-in)"}[perceptual]
    lines = [
        f"# flipnet fast restorer ({r.image_size} px)\n",
        (f"- model: residual NAFNet, width {r.width}, encoder {list(r.enc_blocks)}, middle "
        f"{r.middle_blocks}, decoder {list(r.dec_blocks)}, pixel-unshuffle {r.unshuffle}; "
        f"{n_params / 1e6:.3f} M parameters"),
        f"- data: {data}",
        (f"- losses: L1 x{cfg.l1_weight}, pyramid L1 x{cfg.pyramid_weight}, FFT amplitude "
        f"x{cfg.fft_weight}, perceptual x{cfg.perceptual_weight}: {perc}; identity (1 - cos, "
        f"torch port of dlib's ResNet) x{cfg.identity_weight}; GAN ({cfg.gan_loss}, "
        f"PatchGAN) x{cfg.gan_weight} from step {cfg.gan_start}"
        + (f", discriminator from step {cfg.disc_start}"
           if cfg.disc_start is not None and cfg.disc_start < cfg.gan_start else "")
        + (f", real side: `{cfg.gan_real_dir}` (split {cfg.gan_real_split})"
           if cfg.gan_real_dir else "")),
        f"- training: {progress.step} steps, batch {cfg.batch_size} x {cfg.grad_accum}, lr "
        f"{cfg.lr} ({cfg.lr_schedule}), EMA {cfg.ema_decay}, grad clip {cfg.grad_clip}, mixed "
        f"precision {cfg.mixed_precision}, seed {cfg.seed}"
        + (f", initialised from `{cfg.init_from}`" if cfg.init_from else ""),
        f"- wall time: {progress.wall_seconds / 60:.1f} min on {hardware}: "
        f"{cpu_hours(progress.wall_seconds):.2f} CPU-hours (wall x threads; "
        "runs that continue from an export add theirs, see below)",
        f"- command: `{command or 'train_restorer(cfg), see train_config.json'}`",
        "- final losses (mean of the last 20 log lines): "
        + (", ".join(f"{k} {v}" for k, v in losses.items()) or "n/a"),
        "- weights: EMA, fp16 safetensors; `samples.png`: rows LQ | restored, "
        + (f"test-split faces ({', '.join(cfg.eval_presets)})" if evaluation
           else "training pairs"),
        "- terms: trained on UTKFace-derived crops: non-commercial research use only.",
    ]
    if evaluation:
        lines.append(f"\n## Quick check: {evaluation['faces']} test-split faces, degradation seed "
                     f"{evaluation['seed']}\n\n| preset | PSNR LQ | PSNR restored | SSIM LQ | "
                     "SSIM restored |\n|---|---|---|---|---|")
        for name in cfg.eval_presets:
            e = evaluation[name]
            lines.append(f"| {name} | {e['psnr_lq']:.2f} | {e['psnr_restored']:.2f} | "
                         f"{e['ssim_lq']:.4f} | {e['ssim_restored']:.4f} |")
    return "\n".join(lines) + "\n"


def train_restorer(cfg: RestorerTrainConfig, *, command: str | None = None) -> Path:
    """Train (or resume) a restorer; returns the exported EMA folder ``<out_dir>/restorer``."""
    # "steps" is harmless too when the learning rate does not depend on it
    harmless = RESUME_HARMLESS + (("steps",) if cfg.lr_schedule == "constant" else ())
    run = TrainingRun(cfg, export="restorer", harmless=harmless, grad_accum=cfg.grad_accum)
    accelerator, device = run.accelerator, run.device
    # data, models, losses, EMA, optimizers
    dataset, val_pairs = make_pairs(cfg, progress=run.main)
    if len(dataset) < cfg.batch_size:
        raise FlipnetError(f"{cfg.pairs_dir or cfg.data_dir}: {len(dataset)} training pairs, "
                           f"fewer than one batch ({cfg.batch_size})")
    sampler = PairSampler(len(dataset), seed=cfg.seed, hflip=cfg.hflip,
                          weights=sampling_weights(cfg, dataset))
    loader = make_loader(dataset, sampler, cfg.batch_size, num_workers=cfg.num_workers)
    model = _initial_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.9),
                            weight_decay=cfg.weight_decay)
    use_gan = cfg.gan_weight > 0
    disc = PatchDiscriminator(cfg.discriminator) if use_gan else None
    if use_gan:
        disc_opt = torch.optim.AdamW(disc.parameters(), lr=cfg.disc_lr, betas=(0.5, 0.999))
        model, disc, opt, disc_opt, loader = accelerator.prepare(model, disc, opt, disc_opt,
                                                                 loader)
    else:
        model, opt, loader = accelerator.prepare(model, opt, loader)
    real_loader = _gan_real_loader(cfg, run) if use_gan and cfg.gan_real_dir else None
    perceptual_kind = resolve_perceptual(cfg.perceptual, prior_path=cfg.prior_path)
    perceptual = make_perceptual_loss(perceptual_kind, prior_path=cfg.prior_path,
                                      prior_t=cfg.prior_t, lpips_net=cfg.lpips_net,
                                      lpips_backbone=cfg.lpips_backbone, device=device)
    identity = None
    if cfg.identity_weight:
        from flipnet.faces.dlib_resnet import IdentityLoss

        identity = IdentityLoss().to(device)
    ema = EMA(accelerator.unwrap_model(model), decay=cfg.ema_decay)
    sample_model = Restorer(cfg.restorer).to(device).eval()  # before the RNG states are restored
    run.resume_or_start(ema)
    fixed_lq, fixed_hq = fixed_pairs(dataset, cfg.sample_count, seed=cfg.seed + 1)
    val_lq, val_hq = (fixed_pairs(val_pairs, len(val_pairs), seed=cfg.seed + 2)
                      if val_pairs is not None else (None, None))

    def save_samples(path: Path) -> Path:
        ema.copy_to(sample_model)
        with torch.no_grad():
            restored = sample_model(fixed_lq.to(device)).cpu()
        return save_grid(path, torch.cat([fixed_lq, restored, fixed_hq]), ncol=len(fixed_lq))

    def samples_and_validation(path: Path) -> Path:
        grid = save_samples(path)
        if val_lq is not None:  # the held-in validation curve, at the same steps as the grids
            append_log(run.out / "val.jsonl", {"step": run.progress.step,
                                               "wall_s": round(run.progress.wall_seconds, 1),
                                               **validate(sample_model, val_lq, val_hq)})
        return grid

    weights = {"l1": cfg.l1_weight, "pyramid": cfg.pyramid_weight, "fft": cfg.fft_weight,
               "perceptual": cfg.perceptual_weight, "identity": cfg.identity_weight,
               "gan_g": cfg.gan_weight}
    batches = run.batches(loader, sampler, per_step=cfg.grad_accum)
    real_batches = (None if real_loader is None
                    else run.batches(*real_loader, per_step=cfg.grad_accum))
    for step in run.steps(cfg.steps, desc="restorer", save_samples=samples_and_validation):
        lr = set_lr(opt, _lr_at(cfg, step))
        gan_on = use_gan and step > cfg.gan_start
        disc_on = use_gan and step > (cfg.gan_start if cfg.disc_start is None
                                      else min(cfg.disc_start, cfg.gan_start))
        for _ in range(cfg.grad_accum):
            lq, hq = next(batches)
            with accelerator.accumulate(*([model, disc] if use_gan else [model])):
                # restorer step: reconstruction terms (+ adversarial term once warmed up)
                pred = model(lq)
                parts = {"l1": l1_loss(pred, hq)}
                if cfg.pyramid_weight:
                    parts["pyramid"] = pyramid_l1_loss(pred, hq)
                if cfg.fft_weight:
                    parts["fft"] = fft_amplitude_loss(pred, hq)
                if perceptual is not None and cfg.perceptual_weight:
                    parts["perceptual"] = perceptual(pred, hq)
                if identity is not None:
                    n = cfg.identity_batch or len(pred)
                    parts["identity"] = identity(pred[:n], hq[:n])
                if gan_on:
                    disc.requires_grad_(False)
                    parts["gan_g"] = gan_generator_loss(disc(pred), cfg.gan_loss)
                loss = sum(weights[k] * v for k, v in parts.items())
                run.optimizer_step(loss, opt, model.parameters(), step, grad_clip=cfg.grad_clip)
                # discriminator step: real HQ vs restored (a gan_real_dir batch is drawn every
                # micro-step, so a resumed run skips exactly the batches an unbroken one drew)
                real = hq if real_batches is None else next(real_batches)
                if disc_on:
                    disc.requires_grad_(True)
                    d_loss = gan_discriminator_loss(disc(real), disc(pred.detach()),
                                                    cfg.gan_loss)
                    run.check_finite(d_loss.detach(), step, what="discriminator loss")
                    accelerator.backward(d_loss)
                    if accelerator.sync_gradients and cfg.grad_clip:
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

    # export the EMA weights as a restorer folder with samples, a quick check and a model card
    def write_restorer(tmp: Path) -> str:
        ema.copy_to(sample_model)
        save_restorer(tmp, sample_model, cfg.restorer)
        plot_validation(run.out / "val.jsonl", tmp / "val_curve.png")
        evaluation = _export_check(tmp, sample_model, cfg)
        if evaluation is None:
            save_samples(tmp / "samples.png")
        return _model_card(cfg, run.progress, n_pairs=len(dataset),
                           n_params=count_parameters(sample_model),
                           hardware=hardware_name(accelerator), perceptual=perceptual_kind,
                           losses=_final_losses(run.log_path), evaluation=evaluation,
                           command=command)

    return run.export(write_restorer)


def _export_check(tmp: Path, model: Restorer, cfg: RestorerTrainConfig) -> dict | None:
    """The quick PSNR/SSIM check of an export on test-split faces (``eval.json`` and an
    LQ | restored ``samples.png`` in ``tmp``), or None when there is none."""
    if cfg.eval_count <= 0 or cfg.pairs_dir:
        return None
    evaluation = None
    try:
        evaluation, figure = evaluate_synthetic(model, cfg.data_dir, cfg.eval_presets,
                                                size=cfg.restorer.image_size,
                                                count=cfg.eval_count)
        write_bytes_atomic(tmp / "eval.json", json.dumps(evaluation, indent=1).encode())
        shown = figure[:2]  # LQ | restored: data-set HQ images stay out of weights/
        save_grid(tmp / "samples.png", shown.reshape(-1, *shown.shape[2:]), ncol=shown.shape[1])
    except FlipnetError as e:  # e.g. no test-split faces in a small folder
        tqdm.write(f"quick check skipped: {e}")
    return evaluation


if __name__ == "__main__":  # python -m flipnet.training.restorer CONFIG.json [--resume]
    import sys

    run_from_argv(RestorerTrainConfig, lambda cfg: train_restorer(
        cfg, command="python -m flipnet.training.restorer " + " ".join(sys.argv[1:])), "restorer")
