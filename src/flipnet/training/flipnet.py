"""Train FLIPNET's adapters on a frozen prior, both modes every step (arXiv 2508.08556, Sec. 3.4;
our reading, see docs/FLIPNET.md).

* Restoration mode: HQ faces of the UTKFace train split, LQ made on the fly by the naive pipeline
  (a mix of presets) at the crop size and shrunk to the prior's size, exactly as the sampler
  shrinks an LQ crop at inference (``training.face_embedding.ModelLQPairs``, the embedder's
  pairs too; ``degradations.model_lq``). Target = HQ stream.
* Degradation mode must learn *real* degradations, but real LQ faces (LFW people A-H, aligned)
  have no HQ partner. We pair each real LQ face with a pseudo HQ made by a restorer (default the
  fast ``weights/restorer-128``; a FLIPNET folder's restoration mode works too, just slower):
  ``training.pairs.restored_pairs`` writes ``<pairs_dir>/lq`` (real) and ``<pairs_dir>/target``
  (pseudo HQ) once, resumably; training reads them with ``PairFolder``. Target = LQ stream, so
  the mode learns to map a clean-looking face back to the real LQ it came from.

Each step: one batch per mode; the condition stream is diffused to the target's t per sample
(the paper) or to the fixed ``flipnet.condition_t``, each stream with its own noise; loss =
MSE(target stream) [+ MSE(condition stream), ``condition_loss``: on by default for an adapted
condition stream, off for a frozen one, which has nothing to train] per mode (the schedule's eps
or v targets), summed over the two modes. Only adapters train: the prior is frozen, checked at
start and at export. Accelerate (CPU, one GPU or ``accelerate launch``: forward passes go
through the DDP-wrapped net), EMA of the trainable tensors, sample grids and the fault
tolerance follow ``training.harness``: a rerun with the same settings continues from the newest
checkpoint and ends bit-identical to an unbroken run; a kill -9 never leaves half a checkpoint
or export. The EMA adapters are exported to ``<out_dir>/flipnet``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from flipnet.degradations.model_lq import CROP_SIZE
from flipnet.diffusion.flipnet_sampling import flipnet_degrade, flipnet_restore
from flipnet.diffusion.schedules import NoiseSchedule, make_schedule
from flipnet.errors import ConfigError, FlipnetError
from flipnet.io import remove_partial_files
from flipnet.models.flipnet import (
    FlipNet,
    FlipNetConfig,
    build_flipnet,
    condition_timesteps,
    load_flipnet,
    save_flipnet,
)
from flipnet.training.face_embedding import model_lq_pairs
from flipnet.training.harness import (
    EMA,
    TrainingRun,
    TrainProgress,
    hardware_name,
    make_loader,
    run_from_argv,
    save_checkpoint,
    set_lr,
    warmup_lr,
)
from flipnet.training.pairs import PairFolder, PairSampler, fixed_pairs, restored_pairs
from flipnet.viz import save_grid

# settings that may change between a run and its continuation without changing the result
# (the learning rate is warmup-then-constant, so ``steps`` only says where to stop)
# (``flipnet.start`` is only the exported folder's sampling default)
RESUME_HARMLESS = ("resume", "max_minutes", "steps", "threads", "log_every", "sample_every",
                   "sample_count", "sample_steps", "save_every", "keep_checkpoints",
                   "flipnet.start")


def _h(text: str) -> dict:
    return {"help": text}


@dataclass(frozen=True)
class FlipNetTrainConfig:
    """A FLIPNET run; saved as ``<out_dir>/train_config.json``."""

    data_dir: str = field(default="out/prepared/utkface-128", metadata=_h("HQ faces (restore mode)"))
    split: str = field(default="train", metadata=_h("split of data_dir and real_lq_dir"))
    real_lq_dir: str = field(default="out/prepared/lfw-128", metadata=_h("real LQ aligned faces"))
    pairs_dir: str = field(default="out/flipnet-pairs", metadata=_h("real LQ + pseudo HQ pairs "
                                                                    "(made once if missing)"))
    pseudo_restorer: str = field(default="weights/restorer-128", metadata=_h(
        "restorer or FLIPNET folder making the pseudo HQ"))
    out_dir: str = field(default="out/flipnet-64", metadata=_h("checkpoints, samples, export"))
    flipnet: FlipNetConfig = field(default_factory=FlipNetConfig)
    embedder: str | None = field(default="out/embedder-64/embedder",
                                 metadata=_h("trained face-embedder folder (stages I/II)"))
    init_from: str | None = field(default=None, metadata=_h(
        "FLIPNET folder whose adapters and embedder start the run (fine-tuning)"))
    restore_pairs_dir: str | None = field(default=None, metadata=_h(
        "lq/ + target/ pairs for restore mode instead of synthetic pairs from data_dir "
        "(fine-tuning on pseudo targets)"))
    presets: tuple[str, ...] = field(default=("gfpgan", "codeformer", "difface"),
                                     metadata=_h("naive presets mixed in restore mode"))
    crop_size: int = field(default=CROP_SIZE, metadata=_h(
        "restore-mode LQ is made at this crop size, then shrunk to the prior's (as at inference)"))
    max_images: int = field(default=0, metadata=_h("use at most N faces per mode; 0 = all"))
    batch_size: int = field(default=16, metadata=_h("pairs per mode per step"))
    lr: float = field(default=1e-4, metadata=_h("AdamW learning rate after warmup"))
    warmup_steps: int = field(default=100, metadata=_h("linear learning-rate warmup steps"))
    steps: int = field(default=20_000, metadata=_h("optimizer steps in total"))
    max_minutes: float = field(default=0.0, metadata=_h("stop (save + export) after this wall "
                                                          "time; 0 = no limit"))
    degrade_weight: float = field(default=1.0, metadata=_h("weight of the degradation-mode loss"))
    identity_weight: float = field(default=0.0, metadata=_h(
        "restore mode: weight of 1 - cosine of dlib's ResNet (torch port) between the face "
        "decoded from the target stream's x0 prediction and the HQ face; 0 = off"))
    identity_batch: int = field(default=4, metadata=_h(
        "identity term on at most N samples of each batch (those with t below identity_max_t)"))
    identity_max_t: int = field(default=500, metadata=_h(
        "identity term only where t < this: at larger t the x0 prediction is a guess"))
    condition_loss: bool | None = field(default=None, metadata=_h(
        "also train the condition stream to denoise itself; null = on for an adapted condition "
        "stream, off for a frozen one"))
    ema_decay: float = field(default=0.999, metadata=_h("EMA decay (with warmup)"))
    grad_clip: float = field(default=1.0, metadata=_h("gradient-norm clip; 0 = off"))
    mixed_precision: Literal["no", "bf16"] = field(default="no", metadata=_h("no | bf16"))
    sample_every: int = field(default=1000, metadata=_h("sample grid every N steps; 0 = off"))
    sample_count: int = field(default=8, metadata=_h("faces in each grid"))
    sample_steps: int = field(default=25, metadata=_h("DDIM steps for sample grids"))
    save_every: int = field(default=1000, metadata=_h("checkpoint every N steps"))
    keep_checkpoints: int = field(default=2, metadata=_h("checkpoints kept on disk"))
    log_every: int = field(default=50, metadata=_h("log line every N steps"))
    seed: int = field(default=0, metadata=_h("seed for init, data order, noise"))
    threads: int = field(default=0, metadata=_h("torch CPU threads; 0 = torch default"))
    resume: bool = field(default=False, metadata=_h(
        "continue even if settings differ from the saved run (a rerun with the same settings "
        "continues from the newest checkpoint without it)"))


class DecodedIdentityLoss(nn.Module):
    """Restore mode's identity term: ``weight * (1 - cos)`` of dlib's ResNet between the face
    decoded from the target stream's x0 prediction and the HQ face, on the first ``count``
    samples with ``t < max_t`` (zero when there are none). Gradients reach the prediction
    through ``decode`` (the frozen decoder), not the HQ side."""

    def __init__(self, schedule: NoiseSchedule, decode: Callable[[torch.Tensor], torch.Tensor],
                 identity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *, weight: float,
                 count: int, max_t: int):
        super().__init__()
        self.schedule, self.decode, self.identity = schedule, decode, identity
        self.weight, self.count, self.max_t = weight, count, max_t

    def forward(self, xt: torch.Tensor, t: torch.Tensor, pred: torch.Tensor,
                hq_image: torch.Tensor) -> torch.Tensor:
        """Scalar term for target-stream inputs ``xt`` at ``t``, the net's ``pred`` and the HQ
        faces ``hq_image`` (B, 3, S, S) in [-1, 1]."""
        keep = torch.nonzero(t < self.max_t).flatten()[:self.count]
        if keep.numel() == 0:
            return pred.new_zeros((), dtype=torch.float32)
        x0 = self.schedule.predict_x0(xt[keep], t[keep], pred[keep].float())
        return self.weight * self.identity(self.decode(x0), hq_image[keep])


def mode_loss(net, schedule: NoiseSchedule, hq: torch.Tensor, lq: torch.Tensor, mode: str,
              generator: torch.Generator, *, condition_t: int | None = None,
              condition_loss: bool = True,
              encode: Callable[[torch.Tensor], torch.Tensor] | None = None,
              identity: DecodedIdentityLoss | None = None) -> torch.Tensor:
    """One mode's loss: MSE(target) [+ MSE(condition)], two noises; the condition stream at the
    target's t, or at ``condition_t`` for every sample (``FlipNetConfig.condition_t``).
    In restore mode ``identity`` (if given) adds its term on the target's x0 prediction.

    Draws t, then the HQ noise, then the LQ noise from ``generator``. ``net`` is called
    (``net(x_target_t, x_cond_t, t, t_cond=, mode=, context_image=)``), never a method of it, so
    a DDP-wrapped FLIPNET syncs its gradients across processes. ``encode`` (a latent prior:
    ``FlipNet.encode``) turns the faces into the streams' latents; the face tokens still read
    the faces."""
    hq_image, lq_image = hq, lq
    if encode is not None:
        hq, lq = encode(hq), encode(lq)
    t = torch.randint(0, schedule.num_timesteps, (hq.shape[0],), generator=generator,
                      device=generator.device).to(hq.device)
    noise_hq = torch.randn(hq.shape, generator=generator, device=generator.device).to(hq.device)
    noise_lq = torch.randn(lq.shape, generator=generator, device=generator.device).to(hq.device)
    t_cond = condition_timesteps(t, condition_t)
    # restore: HQ stream is the target, LQ the condition (and its image gives the tokens);
    # degrade: the other way round
    t_hq, t_lq = (t, t_cond) if mode == "restore" else (t_cond, t)
    xt_hq, xt_lq = schedule.q_sample(hq, t_hq, noise_hq), schedule.q_sample(lq, t_lq, noise_lq)
    if mode == "restore":
        pred_hq, pred_lq = net(xt_hq, xt_lq, t, t_cond=t_cond, mode=mode,
                               context_image=lq_image)
    else:
        pred_lq, pred_hq = net(xt_lq, xt_hq, t, t_cond=t_cond, mode=mode,
                               context_image=hq_image)
    loss_hq = F.mse_loss(pred_hq.float(), schedule.training_target(hq, t_hq, noise_hq))
    loss_lq = F.mse_loss(pred_lq.float(), schedule.training_target(lq, t_lq, noise_lq))
    if identity is not None and mode == "restore":
        loss_hq = loss_hq + identity(xt_hq, t_hq, pred_hq, hq_image)
    if not condition_loss:
        return loss_hq if mode == "restore" else loss_lq
    return loss_hq + loss_lq


def frozen_checksum(net: FlipNet) -> str:
    """SHA-1 of the frozen prior tensors; raises when any of them requires grad."""
    state = net.unet.state_dict()
    params = dict(net.unet.named_parameters())
    h = hashlib.sha1()
    for k in sorted(net.frozen_keys):
        if k in params and params[k].requires_grad:
            raise FlipnetError(f"FLIPNET: prior tensor {k} is trainable; the prior must stay frozen")
        h.update(state[k].detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def _ema_of_trainable(net: FlipNet, decay: float) -> EMA:
    ema = EMA(net, decay=decay)
    trainable = {k for k, p in net.named_parameters() if p.requires_grad}
    ema.shadow = {k: v for k, v in ema.shadow.items() if k in trainable}
    return ema


def condition_loss_on(cfg: FlipNetTrainConfig) -> bool:
    """Whether the condition stream's loss counts (``condition_loss``, null = only when the
    condition stream is adapted); ConfigError for a frozen one, which has nothing to learn."""
    adapted = cfg.flipnet.condition_stream == "adapted"
    if cfg.condition_loss and not adapted:
        raise ConfigError("FLIPNET: condition_loss = true needs condition_stream = adapted (a "
                          "frozen condition stream is the plain prior: its loss is a constant)")
    return adapted if cfg.condition_loss is None else cfg.condition_loss


def _check_trainable(cfg: FlipNetTrainConfig, net: FlipNet) -> None:
    """Refuse configs that leave adapters without gradients (DDP would fail on them)."""
    if not net.trainable_parameters():
        raise ConfigError("FLIPNET: use_boosthub, use_lora, use_embedding and mode_embedding "
                          "are all off and there are no injections; there is nothing to train")
    f = cfg.flipnet
    if (f.use_boosthub or f.injection_resolutions) and f.phi == 0:
        raise ConfigError("FLIPNET: phi = 0 switches BoostHub and the injections off, so their "
                          "weights get no gradient; train with phi > 0 or switch them off")
    condition_loss_on(cfg)


def _init_adapters(net: FlipNet, cfg: FlipNetTrainConfig) -> None:
    """Start from a trained FLIPNET folder (same FlipNetConfig but for where the prior is and
    the sampling default ``start``). An own ``decoder`` (``FlipNetConfig.decoder``) comes over
    too when the run names it: the identity term decodes with it and the export carries it."""
    start = load_flipnet(cfg.init_from, prior=cfg.flipnet.prior)
    if dataclasses.replace(start.config, prior=net.config.prior, start=net.config.start,
                           decoder=net.config.decoder) != net.config:
        raise ConfigError(f"{cfg.init_from}: its FlipNetConfig differs from this run's flipnet "
                          "settings")
    if net.config.decoder:
        if start.config.decoder != net.config.decoder:
            raise ConfigError(f"{cfg.init_from}: carries no own decoder "
                              f"{net.config.decoder!r}, which this run's flipnet settings name")
        net.autoencoder = start.autoencoder
    net.load_state_dict(start.adapter_state_dict(), strict=False)


def _prepare_pairs(cfg: FlipNetTrainConfig) -> None:
    """The degradation mode's (real LQ, pseudo HQ) pairs, made once (a pair killed mid-write is
    simply made again)."""
    for sub in ("lq", "target"):
        remove_partial_files(Path(cfg.pairs_dir) / sub)
    restored_pairs(cfg.real_lq_dir, cfg.pairs_dir, cfg.pseudo_restorer, split=cfg.split,
                   limit=cfg.max_images, seed=cfg.seed)


def train_flipnet(cfg: FlipNetTrainConfig) -> Path:
    """Train (or resume) FLIPNET; returns the exported EMA folder ``<out_dir>/flipnet``."""
    # checkpoint_writer: this module's name, so a test can spy on every process's checkpoints
    run = TrainingRun(cfg, export="flipnet", harmless=RESUME_HARMLESS,
                      prepare_outputs=lambda: _prepare_pairs(cfg),
                      checkpoint_writer=save_checkpoint)
    accelerator, device = run.accelerator, run.device
    # data of both modes, model, EMA, optimizer
    embedder = cfg.embedder if cfg.flipnet.use_embedding and not cfg.init_from else None
    net = build_flipnet(cfg.flipnet, embedder=embedder)
    if cfg.init_from:  # its embedder encoders are part of the adapter state
        _init_adapters(net, cfg)
    _check_trainable(cfg, net)
    size = net.image_size  # of the faces (a latent prior's streams are smaller)
    schedule = make_schedule(net.prior_config.schedule)
    if cfg.restore_pairs_dir:
        restore_data, restore_where = (PairFolder(cfg.restore_pairs_dir, size, progress=run.main),
                                       cfg.restore_pairs_dir)
    else:
        restore_data = model_lq_pairs(cfg.data_dir, cfg.presets, model_size=size,
                                      crop_size=cfg.crop_size, split=cfg.split,
                                      limit=cfg.max_images or None, progress=run.main)
        restore_where = cfg.data_dir
    degrade_data = PairFolder(cfg.pairs_dir, size, progress=run.main)
    loaders = []
    for data, where in ((restore_data, restore_where), (degrade_data, cfg.pairs_dir)):
        if len(data) < cfg.batch_size:
            raise FlipnetError(f"{where}: {len(data)} pairs, fewer than one batch "
                               f"({cfg.batch_size})")
        sampler = PairSampler(len(data), seed=cfg.seed)
        loaders.append((make_loader(data, sampler, cfg.batch_size), sampler))
    checksum = frozen_checksum(net)
    opt = torch.optim.AdamW(net.trainable_parameters(), lr=cfg.lr)
    # forward passes go through the prepared (DDP-wrapped) net; the unwrapped one is only read
    # for the EMA, sampling and the export
    net, opt, loader_r, loader_d = accelerator.prepare(net, opt, loaders[0][0], loaders[1][0])
    trainable = [p for p in net.parameters() if p.requires_grad]
    ema = _ema_of_trainable(accelerator.unwrap_model(net), cfg.ema_decay)
    # before the RNG states are restored: building a net draws from the global RNG. Then every
    # tensor is copied from the training net (prior, embedder encoders: exactly those of
    # init_from when fine-tuning), so the EMA (trainable tensors only) completes it
    sample_net = build_flipnet(cfg.flipnet, embedder=embedder, device=device).eval()
    sample_net.autoencoder = accelerator.unwrap_model(net).autoencoder  # frozen: one copy
    sample_net.load_state_dict(accelerator.unwrap_model(net).state_dict())
    run.resume_or_start(ema)
    batches_r = run.batches(loader_r, loaders[0][1])
    batches_d = run.batches(loader_d, loaders[1][1])
    fixed_lq, _ = fixed_pairs(restore_data, cfg.sample_count, seed=cfg.seed + 1)
    _, fixed_hq = fixed_pairs(degrade_data, cfg.sample_count, seed=cfg.seed + 1)

    def save_samples(path: Path) -> None:
        ema.copy_to(sample_net)
        restored = flipnet_restore(sample_net, fixed_lq.to(device), steps=cfg.sample_steps)
        degraded = flipnet_degrade(sample_net, fixed_hq.to(device), steps=cfg.sample_steps)
        save_grid(path, torch.cat([fixed_lq.to(device), restored, fixed_hq.to(device), degraded]),
                  ncol=len(fixed_lq))

    gen = torch.Generator(device=device)
    loss_kw = {"condition_t": cfg.flipnet.condition_t, "condition_loss": condition_loss_on(cfg),
               "encode": None if sample_net.factor == 1 else sample_net.encode,
               "identity": _identity_term(cfg, schedule, sample_net, device)}
    for step in run.steps(cfg.steps, desc="flipnet", save_samples=save_samples,
                          sample_at_end=True):
        lr = set_lr(opt, warmup_lr(cfg.lr, step, cfg.warmup_steps))
        # both modes every step; noise is a function of (seed, step, rank)
        gen.manual_seed((cfg.seed * 1_000_003 + step) * 4096 + accelerator.process_index)
        lq, hq = next(batches_r)
        loss_r = mode_loss(net, schedule, hq, lq, "restore", gen, **loss_kw)
        lq_real, hq_pseudo = next(batches_d)
        loss_d = mode_loss(net, schedule, hq_pseudo, lq_real, "degrade", gen, **loss_kw)
        loss = loss_r + cfg.degrade_weight * loss_d
        run.optimizer_step(loss, opt, trainable, step, grad_clip=cfg.grad_clip)
        ema.update(accelerator.unwrap_model(net))
        loss_value, r_value, d_value = (float(x.detach()) for x in (loss, loss_r, loss_d))
        run.end_step(step, loss_value,
                     log={"loss": loss_value, "restore": r_value, "degrade": d_value, "lr": lr},
                     postfix={"restore": f"{r_value:.4f}", "degrade": f"{d_value:.4f}"})

    # export the EMA adapters with a model card; the prior must be untouched
    if run.main and frozen_checksum(accelerator.unwrap_model(net)) != checksum:
        raise FlipnetError("FLIPNET training changed the frozen prior (bug); nothing exported")

    def write_flipnet(tmp: Path) -> bytes:
        ema.copy_to(sample_net)
        save_flipnet(tmp, sample_net)
        return _model_card(cfg, run.progress, len(restore_data), len(degrade_data), accelerator)

    return run.export(write_flipnet)


def _identity_term(cfg: FlipNetTrainConfig, schedule: NoiseSchedule, net: FlipNet,
                   device) -> DecodedIdentityLoss | None:
    """The restore-mode identity term of ``cfg`` (decoding with ``net``'s frozen decoder, with
    gradients), or None when its weight is 0."""
    if not cfg.identity_weight:
        return None
    from flipnet.faces.dlib_resnet import IdentityLoss

    decode = (net.autoencoder.decode if net.autoencoder is not None
              else lambda z: z.clamp(-1.0, 1.0))
    return DecodedIdentityLoss(schedule, decode, IdentityLoss().to(device),
                               weight=cfg.identity_weight, count=cfg.identity_batch,
                               max_t=cfg.identity_max_t)


def _model_card(cfg: FlipNetTrainConfig, progress: TrainProgress, n_restore: int, n_degrade: int,
                accelerator) -> bytes:
    f = cfg.flipnet
    restore = (f"`{cfg.restore_pairs_dir}` ({n_restore} (LQ, target) pairs)"
               if cfg.restore_pairs_dir else f"`{cfg.data_dir}` ({n_restore} HQ faces, split "
               f"{cfg.split}), LQ by presets {', '.join(cfg.presets)} made at "
               f"{cfg.crop_size} px, shrunk")
    start = f"\n- started from `{cfg.init_from}`" if cfg.init_from else ""
    cond_t = "the target's t" if f.condition_t is None else f"step {f.condition_t}"
    return (f"# FLIPNET adapters on `{f.prior}`\n\n"
            f"- restore mode: {restore}{start}\n- degrade mode: {n_degrade} real LQ faces of "
            f"`{cfg.real_lq_dir}` with pseudo HQ by `{cfg.pseudo_restorer}`\n"
            f"- adapters: BoostHub {f.use_boosthub} (phi {f.phi}), LoRA {f.use_lora} (rank "
            f"{f.lora_rank}, alpha {f.lora_alpha}, on attn2 {f.lora_cross_attention}), face "
            f"embedding {f.use_embedding} (`{cfg.embedder}`), mode embedding {f.mode_embedding}, "
            f"injections at {list(f.injection_resolutions) or 'none'} px\n- condition stream: "
            f"{f.condition_stream}, at {cond_t}, its loss {condition_loss_on(cfg)}; sampling "
            f"start {f.start}\n- training: {progress.step} steps, batch {cfg.batch_size} per "
            f"mode, lr {cfg.lr}, EMA {cfg.ema_decay}, identity term x{cfg.identity_weight} "
            f"(t < {cfg.identity_max_t}, {cfg.identity_batch} per batch)\n- wall time: "
            f"{progress.wall_seconds / 60:.1f} min on {hardware_name(accelerator)}\n"
            f"- final loss: {progress.last_loss:.4f}\n- terms: UTKFace/LFW-derived: "
            "non-commercial research use only.\n").encode()


if __name__ == "__main__":  # python -m flipnet.training.flipnet CONFIG.json [--resume]
    run_from_argv(FlipNetTrainConfig, train_flipnet, "flipnet")
