"""FLIPNET: one frozen diffusion prior, two streams, two modes (Miao et al., ICCV 2025,
arXiv 2508.08556, Fig. 2 and Sec. 3; our reading, see docs/FLIPNET.md).

The frozen prior UNet is rebuilt with cross-attention to the face-embedding tokens
(``cross_attention_dim = D``; the new ``attn2`` layers start at zero and are trainable) and loaded
strict on every key of the prior. Around it sit the trainable adapters:

* BoostHub on every self-attention (``flipnet.models.boosthub``), scaled by ``phi``;
* optional zero-initialised injections of the condition stream's encoder features into the
  target's at chosen resolutions (``injection_resolutions``, e.g. 64 and 32 px where the prior
  has no attention), scaled by the same ``phi``;
* LoRA on every ``attn1`` projection, and on ``attn2`` with ``lora_cross_attention``
  (``flipnet.models.lora``);
* the mode embedding (``FlipNetConfig.mode_embedding``): one vector per mode, zero at first;
* the face embedder's HQ and LQ encoders (``flipnet.models.face_embedding``, trained in stages
  I/II beforehand and frozen here).

Both noisy images go through the UNet stacked on the batch axis ``[target; condition]``; each
stream predicts its own schedule target (eps or v). ``mode`` only decides which stream is the
target: restoration mode = HQ stream is the target, LQ stream and LQ tokens the condition;
degradation mode = the order flipped (LQ target; HQ stream and HQ tokens the condition). A learned
mode embedding (``mode_embedding``, one zero-initialised vector per mode) is added to the target
stream's time embedding, so the mode is known even without the face embedding (the two modes
then get identical inputs and opposite targets). With a fresh FLIPNET (or ``phi = 0``, no face
embedding and a zero mode embedding) each stream gets exactly the prior's prediction.

The condition stream (issue 17, defect 3; our reading, to be settled by the ablation):
``condition_stream = "frozen"`` runs the condition half as the plain prior (no LoRA delta, no
cross-attention, no injection into it), so only the target stream learns and the condition's
features are those the prior was trained to make; ``"adapted"`` (the first FLIPNET folders) lets
LoRA and ``attn2`` act on both halves. ``condition_t`` fixes the condition's timestep (noise
augmentation as in cascaded diffusion) instead of the target's t (the paper's figure).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from flipnet.config import load_config, save_config
from flipnet.errors import ConfigError, WeightsError
from flipnet.models.boosthub import install_boosthubs, install_injections, set_phi
from flipnet.models.face_embedding import FaceEmbedder, FaceEmbeddingConfig
from flipnet.models.lora import add_lora, prior_key
from flipnet.models.prior_types import Prior, PriorConfig
from flipnet.models.unet import UNet
from flipnet.weights import load_state_dict, save_state_dict

MODES = ("restore", "degrade")


@dataclass(frozen=True)
class FlipNetConfig:
    """Adapters around a prior; saved as a FLIPNET folder's config.json (with the prior's name)."""

    prior: str = field(default="prior-64", metadata={
        "help": "prior folder or guided-diffusion checkpoint file: a path, or a name looked up "
                "beside the FLIPNET folder"})
    prior_flags: dict | None = field(default=None, metadata={
        "help": "guided-diffusion flags of a checkpoint prior (recorded by build_flipnet)"})
    embedding: FaceEmbeddingConfig = field(default_factory=FaceEmbeddingConfig)
    lora_rank: int = field(default=8, metadata={"help": "LoRA rank r"})
    lora_alpha: float = field(default=8.0, metadata={"help": "LoRA alpha (scale alpha / r)"})
    phi: float = field(default=1.0, metadata={"help": "BoostHub weight used in training"})
    use_boosthub: bool = field(default=True, metadata={"help": "ablation: BoostHub on"})
    use_embedding: bool = field(default=True, metadata={"help": "ablation: face embedding on"})
    use_lora: bool = field(default=True, metadata={"help": "ablation: LoRA on"})
    lora_cross_attention: bool = field(default=False, metadata={
        "help": "LoRA on the new cross-attention too (redundant: it trains in full; folders "
                "saved before it existed load with true)"})
    mode_embedding: bool = field(default=True, metadata={
        "help": "learned per-mode vector added to the target stream's time embedding (folders "
                "saved before it existed load with false)"})
    condition_stream: Literal["adapted", "frozen"] = field(default="frozen", metadata={
        "help": "frozen: the condition half runs the plain prior (no LoRA, no cross-attention); "
                "adapted: LoRA and cross-attention on both halves (folders saved before it "
                "existed load with adapted)"})
    condition_t: int | None = field(default=None, metadata={
        "help": "the condition stream's timestep: null = the target's t (the paper); a step = "
                "always diffused to it (0 = the first, nearly clean step)"})
    injection_resolutions: tuple[int, ...] = field(default=(), metadata={
        "help": "encoder resolutions (px) where zero-initialised convs add the condition "
                "stream's features to the target's, scaled by phi; empty = none"})
    start: float = field(default=1.0, metadata={
        "help": "sampling default: 1 = from pure noise; < 1 = from the known image diffused to "
                "that fraction of the schedule (DifFace-style)"})
    guidance_factor: int = field(default=0, metadata={
        "help": "restoration's sampling default: image-space down/up factor N of low-pass "
                "(ILVR) replacement toward the LQ at every step; 0 = off (degradation mode "
                "uses guidance only when a call asks for it)"})
    color_fix: int = field(default=0, metadata={
        "help": "restoration's default: after decoding, the result's pixel low band (down/up "
                "factor N) is replaced by the LQ's, a colour fix as in StableSR/DiffBIR; 0 = off"})
    guidance_free: float = field(default=0.3, metadata={
        "help": "sampling default: fraction of the sampled steps, at the end, run without the "
                "low-pass replacement"})
    decoder: str | None = field(default=None, metadata={
        "help": "a latent prior only: sub-folder of this FLIPNET folder holding an autoencoder "
                "that replaces the prior's when the folder is loaded. Its encoder and latent "
                "statistics must be the prior's (a decoder-only leg), so the adapters see the "
                "same latents; only the rendering changes. None = the prior's own"})


# what a folder saved before a key existed meant (``load_flipnet_config``)
OLD_DEFAULTS = {"mode_embedding": False, "condition_stream": "adapted",
                "lora_cross_attention": True}


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ConfigError(f"FLIPNET mode must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


def _check_config(cfg: FlipNetConfig, prior_cfg: PriorConfig) -> None:
    """ConfigError naming the first FlipNetConfig setting this prior cannot take."""
    if cfg.condition_stream not in ("adapted", "frozen"):
        raise ConfigError("FlipNetConfig.condition_stream must be adapted or frozen, got "
                          f"{cfg.condition_stream!r}")
    steps = prior_cfg.schedule.num_timesteps
    if cfg.condition_t is not None and not 0 <= cfg.condition_t < steps:
        raise ConfigError(f"FlipNetConfig.condition_t = {cfg.condition_t} is not a step of the "
                          f"prior's schedule (0 to {steps - 1})")
    if not 0.0 < cfg.start <= 1.0:
        raise ConfigError(f"FlipNetConfig.start must be in (0, 1], got {cfg.start}")
    if cfg.color_fix < 0:
        raise ConfigError(f"FlipNetConfig.color_fix must be >= 0, got {cfg.color_fix}")
    if cfg.guidance_factor < 0 or not 0.0 <= cfg.guidance_free <= 1.0:
        raise ConfigError("FlipNetConfig.guidance_factor must be >= 0 and guidance_free in "
                          f"[0, 1], got {cfg.guidance_factor} and {cfg.guidance_free}")


def condition_timesteps(t: torch.Tensor, condition_t: int | None) -> torch.Tensor:
    """The condition stream's timesteps (B,): the target's ``t``, or ``condition_t`` for all."""
    return t if condition_t is None else torch.full_like(t, condition_t)


class FlipNet(nn.Module):
    """Dual-stream FLIPNET: ``forward(x_target_t, x_cond_t, t, mode=, context_image=)``."""

    def __init__(self, cfg: FlipNetConfig, prior_cfg: PriorConfig, *,
                 prior_state: dict[str, torch.Tensor] | None = None,
                 embedder_state: dict[str, torch.Tensor] | None = None, where: str = "prior",
                 autoencoder: nn.Module | None = None):
        super().__init__()
        _check_config(cfg, prior_cfg)
        self.config, self.prior_config = cfg, prior_cfg
        # a latent prior's autoencoder (frozen, loaded with the prior, never saved): both
        # streams are its latents, the face embedding still reads pixels
        self.autoencoder = (None if autoencoder is None
                            else autoencoder.eval().requires_grad_(False))
        dim = cfg.embedding.dim if cfg.use_embedding else None
        self.unet = UNet(dataclasses.replace(prior_cfg.unet, cross_attention_dim=dim))
        prior_keys = set(UNet(prior_cfg.unet).state_dict())
        if prior_state is not None:
            self._load_prior(prior_state, prior_keys, where)
        self.unet.requires_grad_(False)
        if cfg.use_boosthub:
            install_boosthubs(self.unet, phi=cfg.phi)
        if cfg.use_lora:
            add_lora(self.unet, rank=cfg.lora_rank, alpha=cfg.lora_alpha,
                     cross_attention=cfg.lora_cross_attention)
        # forward hooks on encoder blocks; the convs live here, outside the UNet's keys
        self.injection = (install_injections(self.unet, cfg.injection_resolutions, phi=cfg.phi)
                          if cfg.injection_resolutions else None)
        # what was copied from the prior (frozen, never saved) versus what FLIPNET adds
        self.frozen_keys = {k for k in self.unet.state_dict() if prior_key(k) in prior_keys}
        for name, p in self.unet.named_parameters():
            p.requires_grad_(name not in self.frozen_keys)
        self.embedder = None
        if cfg.use_embedding:
            self.embedder = FaceEmbedder(cfg.embedding, decoders=False)
            if embedder_state is not None:
                enc = {k: v for k, v in embedder_state.items() if "_encoder." in k}
                self.embedder.load_state_dict(enc, strict=True)
            self.embedder.requires_grad_(False)
        self.mode_embedding = None
        if cfg.mode_embedding:  # zero: a fresh FLIPNET is still the prior; row i = MODES[i]
            emb_dim = 4 * prior_cfg.unet.model_channels  # the UNet's time-embedding width
            self.mode_embedding = nn.Embedding(len(MODES), emb_dim)
            nn.init.zeros_(self.mode_embedding.weight)

    @property
    def factor(self) -> int:
        """Image pixels per stream pixel: the autoencoder's factor, 1 on a pixel prior."""
        return 1 if self.autoencoder is None else int(self.autoencoder.config.factor)

    @property
    def image_size(self) -> int:
        """The face size (pixels) FLIPNET works at: the prior UNet's size x ``factor``."""
        return self.prior_config.unet.image_size * self.factor

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Faces (B, 3, S, S) in [-1, 1] -> what the streams carry (latents on a latent prior)."""
        return x if self.autoencoder is None else self.autoencoder.encode(x)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """A stream's content -> faces (B, 3, S, S) in [-1, 1] (the inverse of ``encode``)."""
        return z if self.autoencoder is None else self.autoencoder.decode(z)

    def _load_prior(self, state: dict, prior_keys: set[str], where: str) -> None:
        """Strict on the prior's keys; only the new cross-attention layers may be missing."""
        missing = sorted(prior_keys - set(state))
        unexpected = sorted(set(state) - set(self.unet.state_dict()))
        if missing or unexpected:
            bad = (missing or unexpected)[0]
            raise WeightsError(f"{where}: prior weights do not match its config "
                               f"({len(missing)} missing, {len(unexpected)} unexpected, e.g. {bad})")
        result = self.unet.load_state_dict(state, strict=False)
        new = [k for k in result.missing_keys if ".attn2." not in k and ".norm_cross." not in k]
        if new:
            raise WeightsError(f"{where}: FLIPNET UNet has unexpected new tensors, e.g. {new[0]}")

    def set_phi(self, phi: float) -> None:
        """Set the default BoostHub and injection weight phi on the shared modules (not
        thread-safe; sampling passes ``phi`` per call instead)."""
        set_phi(self.unet, phi, extra=self.injection)

    def context(self, image: torch.Tensor | None, mode: str) -> torch.Tensor | None:
        """Face-embedding tokens (B, S, D) of the condition image: LQ encoder in restore mode, HQ in degrade."""
        if self.embedder is None:
            return None
        if image is None:
            raise ConfigError("FLIPNET with the face embedding needs context_image")
        return self.embedder.encode(image, "lq" if _check_mode(mode) == "restore" else "hq")

    def forward(self, x_target_t: torch.Tensor, x_cond_t: torch.Tensor, t: torch.Tensor, *,
                mode: str, t_cond: torch.Tensor | None = None,
                context_image: torch.Tensor | None = None,
                context_tokens: torch.Tensor | None = None, phi: float | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, h, w) x2, t (B,) -> (pred_target, pred_condition), each (B, C, h, w): images
        on a pixel prior, latents (``encode``) on a latent prior.

        ``t_cond`` (B,): the condition stream's timesteps (default
        ``condition_timesteps(t, config.condition_t)``: the caller diffuses the condition image
        to them); ``context_tokens`` (B, S, D): ``context(context_image, mode)`` computed
        beforehand (a sampler encodes the image once, not at every step); ``phi``: the BoostHub
        and injection weight for this call only (default: the trained one), no module state is
        changed."""
        b = x_target_t.shape[0]
        t = torch.as_tensor(t, device=x_target_t.device)
        t = t.expand(b) if t.ndim == 0 else t
        if t_cond is None:
            t_cond = condition_timesteps(t, self.config.condition_t)
        t_cond = torch.as_tensor(t_cond, device=x_target_t.device)
        t_cond = t_cond.expand(b) if t_cond.ndim == 0 else t_cond
        _check_mode(mode)
        tokens = (context_tokens if context_tokens is not None
                  else self.context(context_image, mode))  # (B, S, D) or None
        ctx = None if tokens is None else torch.cat([tokens, tokens])  # (2B, S, D)
        kwargs = {} if phi is None else {"phi": float(phi)}
        if self.config.condition_stream == "frozen":  # the condition half: the plain prior
            kwargs["frozen_condition"] = True
        offset = None
        if self.mode_embedding is not None:  # the mode, for the target stream only
            vec = self.mode_embedding.weight[MODES.index(mode)]  # (E,)
            offset = torch.cat([vec.expand(b, -1), torch.zeros_like(vec).expand(b, -1)])  # (2B, E)
        out = self.unet(torch.cat([x_target_t, x_cond_t]), torch.cat([t, t_cond]), ctx,
                        cross_attention_kwargs=kwargs or None, emb_offset=offset)  # (2B, C, h, w)
        return out[:b], out[b:]

    def forward_streams(self, xt_hq: torch.Tensor, xt_lq: torch.Tensor, t: torch.Tensor, *,
                        mode: str, hq: torch.Tensor | None = None, lq: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """(pred_hq, pred_lq) whatever the mode: restore = HQ target, degrade = LQ target."""
        if _check_mode(mode) == "restore":
            pred_hq, pred_lq = self(xt_hq, xt_lq, t, mode=mode, context_image=lq)
        else:
            pred_lq, pred_hq = self(xt_lq, xt_hq, t, mode=mode, context_image=hq)
        return pred_hq, pred_lq

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything FLIPNET adds to the prior (adapters, BoostHubs, injections, attn2, mode
        embedding, embedder encoders)."""
        return {k: v for k, v in self.state_dict().items()
                if not (k.startswith("unet.") and k[len("unet."):] in self.frozen_keys)
                and not k.startswith("autoencoder.")}

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimizer updates (the prior and the embedder stay frozen)."""
        return [p for p in self.parameters() if p.requires_grad]


def resolve_prior(folder: Path, name: str) -> Path:
    """The prior a FLIPNET folder names (a folder or a checkpoint file): a path as given, else
    a sibling of ``folder``."""
    for candidate in (Path(name), folder.parent / name, folder.parent / Path(name).name):
        if candidate.exists():
            return candidate
    raise WeightsError(f"{folder}: its prior {name!r} was not found (looked for {name} and "
                       f"{folder.parent / name}; moved?); pass prior=PATH")


def _hostable(p: Prior) -> Prior:
    if p.config is None:
        raise WeightsError(f"{p.source}: FLIPNET needs a prior whose architecture is known: a "
                           "flipnet prior folder or a guided-diffusion checkpoint (not a "
                           f"{p.kind} prior)")
    return p


def build_flipnet(cfg: FlipNetConfig, *, prior: str | os.PathLike | Prior | None = None,
                  embedder: str | os.PathLike | None = None,
                  device: str | torch.device = "cpu") -> FlipNet:
    """A fresh FLIPNET on a prior (a path, default ``cfg.prior``, or a loaded ``Prior``: a
    flipnet folder or a guided-diffusion checkpoint) and a trained embedder folder, if given.

    On a checkpoint (or a ``Prior`` object) the net's config records where the prior came from
    (``prior`` = its path; ``prior_flags`` = a checkpoint's flags), so ``load_flipnet`` reopens
    it."""
    from flipnet.models.prior import load_prior

    p = _hostable(prior if isinstance(prior, Prior) else load_prior(prior or cfg.prior))
    if isinstance(prior, Prior) or p.kind != "flipnet":
        cfg = dataclasses.replace(cfg, prior=p.source, prior_flags=p.flags)
    emb_state = None
    if embedder:
        from flipnet.models.face_embedding import load_face_embedder

        emb = load_face_embedder(embedder)
        if emb.config != cfg.embedding:
            raise ConfigError(f"{embedder}: embedder config differs from FlipNetConfig.embedding")
        emb_state = emb.state_dict()
    net = FlipNet(cfg, p.config, prior_state=p.model.state_dict(), embedder_state=emb_state,
                  where=str(p.source), autoencoder=p.autoencoder)
    return net.to(device)


def save_flipnet(folder: str | os.PathLike, net: FlipNet) -> Path:
    """Write config.json + fp16 safetensors of the adapters (not the prior, only its name;
    the autoencoder too when ``config.decoder`` names the FLIPNET's own)."""
    from flipnet.models.autoencoder import save_autoencoder

    folder = Path(folder)
    save_state_dict(folder, net.adapter_state_dict())
    if net.config.decoder:
        save_autoencoder(folder / net.config.decoder, net.autoencoder, net.autoencoder.config)
    save_config(net.config, folder / "config.json")
    return folder


def _own_decoder(folder: Path, cfg: FlipNetConfig, prior_autoencoder) -> nn.Module:
    """The autoencoder in ``folder / cfg.decoder``, checked to encode exactly as the prior's:
    same encoder weights and latent statistics (WeightsError naming the folder otherwise)."""
    from flipnet.models.autoencoder import load_autoencoder, same_encoder_weights

    where = folder / cfg.decoder
    if prior_autoencoder is None:
        raise WeightsError(f"{folder}: config.json names a decoder ({cfg.decoder}) but its "
                           "prior is a pixel prior (no autoencoder)")
    model, ae_cfg = load_autoencoder(where)
    prior_cfg = prior_autoencoder.config
    same = (ae_cfg.encoder_part() == prior_cfg.encoder_part()
            and (ae_cfg.latent_shift, ae_cfg.latent_scale)
            == (prior_cfg.latent_shift, prior_cfg.latent_scale)
            and same_encoder_weights(model, prior_autoencoder))
    if not same:
        raise WeightsError(f"{where}: its encoder or latent statistics differ from the prior's; "
                           "a FLIPNET's own decoder must come from a decoder-only leg of the "
                           "prior's autoencoder")
    return model


def load_flipnet_config(folder: str | os.PathLike) -> FlipNetConfig:
    """A FLIPNET folder's config.json; a key the folder was saved without takes the value it
    meant then (``OLD_DEFAULTS``: no mode embedding, an adapted condition stream, LoRA on the
    cross-attention), so an old folder loads as it was."""
    path = Path(folder) / "config.json"
    cfg = load_config(FlipNetConfig, path)
    saved = json.loads(path.read_text())
    return dataclasses.replace(cfg, **{k: v for k, v in OLD_DEFAULTS.items() if k not in saved})


def load_flipnet(folder: str | os.PathLike, *, prior: str | os.PathLike | None = None,
                 device: str | torch.device = "cpu") -> FlipNet:
    """Open a FLIPNET folder on its prior; WeightsError naming the folder on any mismatch."""
    from flipnet.models.prior import load_prior

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise WeightsError(f"{folder}: not a FLIPNET weights folder (no config.json)")
    cfg = load_flipnet_config(folder)
    p = _hostable(load_prior(prior or resolve_prior(folder, cfg.prior), flags=cfg.prior_flags))
    autoencoder = _own_decoder(folder, cfg, p.autoencoder) if cfg.decoder else p.autoencoder
    net = FlipNet(cfg, p.config, prior_state=p.model.state_dict(), where=str(p.source),
                  autoencoder=autoencoder)
    state, own = load_state_dict(folder), net.adapter_state_dict()
    diff = sorted(set(state) ^ set(own))
    bad = [k for k in set(state) & set(own) if state[k].shape != own[k].shape]
    if diff or bad:
        raise WeightsError(f"{folder}: adapter weights do not match config.json "
                           f"(e.g. {(diff or bad)[0]})")
    net.load_state_dict(state, strict=False)
    return net.to(device).eval()
