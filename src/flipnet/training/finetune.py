"""Unsupervised fine-tuning with a diffusion prior (Kuai et al., WACV 2025): fine-tune the
restorer on (LQ, pseudo target) pairs with L1 + perceptual + GAN at a small learning rate.
Inference cost is unchanged: the output is an ordinary restorer weights folder. A FLIPNET folder
can be the restorer too: its adapters are fine-tuned with its own diffusion loss on the same
pairs (restore: LQ -> target; degrade: target -> real LQ).

The pairs are made first by ``pipelines.pseudo_targets`` (restore, diffuse, guided sampling
back); ``flipnet finetune`` (``flipnet.api.finetune``) runs both steps. Training sits beside the
pipelines and imports none of them, so this module only trains on the pairs it is given.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from flipnet.config import folder_config_class
from flipnet.errors import FlipnetError
from flipnet.weights import DEFAULT_WEIGHTS, resolve_weights


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of ``flipnet finetune``."""

    restorer: str = field(default="restorer-128", metadata={
        "help": "Restorer to fine-tune: a fast-restorer or a FLIPNET weights folder."})
    unlabeled: str = field(default="out/prepared/lfw-128", metadata={
        "help": "Aligned unlabeled real LQ faces."})
    split: str = field(default="train", metadata={"help": "Split of --unlabeled to use."})
    out: str = field(default="out/finetune", metadata={"help": "Pseudo targets, checkpoints, export."})
    prior: str = field(default=DEFAULT_WEIGHTS["prior"],
                       metadata={"help": "Prior for the pseudo targets."})
    limit: int = field(default=0, metadata={"help": "Use at most this many faces (0 = all)."})
    respaced_steps: int = field(default=250, metadata={"help": "Respaced reverse steps."})
    t0: int = field(default=150, metadata={"help": "Respaced step (of --respaced-steps) to "
                                                   "diffuse to."})
    tau: int = field(default=90, metadata={"help": "Guidance stops when this many steps remain."})
    steps: int = field(default=2000, metadata={"help": "Fine-tuning optimizer steps."})
    lr: float = field(default=1e-4, metadata={"help": "Learning rate (small: fine-tuning)."})
    batch_size: int = field(default=16, metadata={"help": "Pairs per step."})
    factor: int = field(default=0, metadata={
        "help": "Low-pass factor N; 0 = the paper's 16 at 512 px scaled to the prior's size."})
    perceptual: str = field(default="auto", metadata={
        "help": "Perceptual term: auto (prior features when the prior exists) | prior | none."})
    gan_weight: float = field(default=0.01, metadata={"help": "Adversarial weight."})
    gan_real: str | None = field(default=None, metadata={
        "help": "Aligned real HQ faces the discriminator sees as real (train split) instead of "
                "the pseudo targets."})
    max_minutes: float = field(default=0.0, metadata={"help": "Stop after this wall time (0 = off)."})
    seed: int = field(default=0, metadata={"help": "Seed of pseudo targets and training."})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | mps."})
    resume: bool = field(default=False, metadata={
        "help": "Continue even if settings differ (a same-settings rerun continues anyway)."})


def finetune_on_pairs(cfg: FinetuneConfig, pairs: str | Path) -> Path:
    """Fine-tune ``cfg.restorer`` on the (``lq/``, ``target/``) pseudo-target pairs in ``pairs``
    into ``cfg.out/train``; returns the exported weights folder."""
    from flipnet.training.restorer import RestorerTrainConfig, train_restorer

    out, pseudo = Path(cfg.out), Path(pairs)
    if not (pseudo / "target").is_dir():
        raise FlipnetError(f"{pseudo}: no target/ folder of pseudo targets; make them first "
                           "(flipnet pseudo-targets, or flipnet finetune which does both)")
    init = _portable(resolve_weights(cfg.restorer))
    if folder_config_class(init) == "FlipNetConfig":
        if cfg.gan_real:
            raise FlipnetError(f"{init}: a FLIPNET folder fine-tunes with its diffusion loss, "
                               "which has no discriminator; --gan-real is for fast restorers")
        return _finetune_flipnet(cfg, init, pseudo)
    from flipnet.models.restorer import load_restorer

    _, rcfg = load_restorer(init, device="cpu")
    base = RestorerTrainConfig()
    train_cfg = dataclasses.replace(
        base, pairs_dir=str(pseudo), out_dir=str(out / "train"), restorer=rcfg,
        init_from=str(init), lr=cfg.lr, warmup_steps=0, steps=cfg.steps,
        batch_size=cfg.batch_size, gan_weight=cfg.gan_weight, gan_start=0,
        gan_real_dir=cfg.gan_real,
        perceptual=cfg.perceptual, prior_path=str(_portable(resolve_weights(cfg.prior))),
        max_minutes=cfg.max_minutes, seed=cfg.seed, resume=cfg.resume)
    return train_restorer(train_cfg, command=finetune_command(cfg))


def _finetune_flipnet(cfg: FinetuneConfig, folder: Path, pseudo: Path) -> Path:
    """FLIPNET as the restorer: its own diffusion loss on the pseudo pairs in both modes
    (restore: LQ -> pseudo target; degrade: pseudo target -> real LQ), from its adapters."""
    from flipnet.models.flipnet import load_flipnet_config, resolve_prior
    from flipnet.training.flipnet import FlipNetTrainConfig, train_flipnet

    fcfg = load_flipnet_config(folder)  # an old folder: no mode embedding, as it was trained
    fcfg = dataclasses.replace(fcfg, prior=str(_portable(resolve_prior(folder, fcfg.prior))))
    return train_flipnet(FlipNetTrainConfig(
        split="all", real_lq_dir=str(pseudo / "lq"), pairs_dir=str(pseudo),
        restore_pairs_dir=str(pseudo), pseudo_restorer=str(folder), out_dir=str(Path(cfg.out) /
        "train"), flipnet=fcfg, embedder=None, init_from=str(folder), lr=cfg.lr, warmup_steps=0,
        steps=cfg.steps, batch_size=cfg.batch_size, max_minutes=cfg.max_minutes, seed=cfg.seed,
        resume=cfg.resume))


def _portable(path: Path) -> Path:
    """``path`` relative to the working directory when inside it (model cards name no home)."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path


def finetune_command(cfg: FinetuneConfig) -> str:
    """The ``flipnet finetune`` command line that reproduces ``cfg`` (non-default options only)."""
    base, opts = FinetuneConfig(), []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if value == getattr(base, f.name) and f.name not in ("restorer", "unlabeled"):
            continue
        flag = "--" + f.name.replace("_", "-")
        opts.append((flag if value else "--no-" + flag[2:]) if isinstance(value, bool)
                    else f"{flag} {value}")
    return "flipnet finetune " + " ".join(opts)
