"""Load published pixel-space priors: guided-diffusion / improved-DDPM state dicts and diffusers folders.

guided-diffusion checkpoints carry no architecture, so their flags are given as a dict / JSON (in
either guided-diffusion's ``script_util`` names or its ``UNetModel`` argument names, as DifFace's
yaml uses) or by a preset name. Attention resolutions in flags are feature-map sizes in pixels
(as both codebases' flags are). ``qkv`` is split into ``to_q``/``to_k``/``to_v`` for both head
orders (``QKVAttentionLegacy``: heads first; ``QKVAttention``: q/k/v first); with
``learn_sigma`` the network has 6 output channels and only the first 3 (eps) are kept. The loaded
prior carries a full ``PriorConfig`` (architecture and schedule from the flags) and the flags
themselves, so FLIPNET can be built on it and reopen it later. Files are
read with ``torch.load(weights_only=True)`` or safetensors: pickled objects are refused.
diffusers ``UNet2DModel`` folders are opened by diffusers itself (local files only) and wrapped.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from flipnet.errors import ConfigError, WeightsError
from flipnet.models.attention import AttentionBlock
from flipnet.models.prior_types import Prior, PriorConfig, ScheduleConfig
from flipnet.models.unet import UNet, UNetConfig
from flipnet.weights import load_into, read_checkpoint_file

# DifFace (Yue & Loy, TPAMI 2024) FFHQ-512 prior "iddpm_ffhq512_ema500000.pth", flags from its
# configs/sample/iddpm_ffhq512_swinir.yaml (model + diffusion sections).
PRESETS: dict[str, dict] = {
    "difface-ffhq512": {
        "image_size": 512, "in_channels": 3, "model_channels": 32, "out_channels": 6,
        "attention_resolutions": [32, 16, 8], "dropout": 0, "channel_mult": [1, 2, 4, 8, 8, 16, 16],
        "num_res_blocks": [1, 2, 2, 2, 2, 3, 4], "conv_resample": True, "num_head_channels": 64,
        "use_scale_shift_norm": True, "resblock_updown": False, "use_new_attention_order": False,
        "steps": 1000, "learn_sigma": True, "noise_schedule": "linear", "predict_xstart": False,
        "rescale_timesteps": False,
    },
}

# guided-diffusion script_util: channel_mult chosen by image size when the flag is empty
_DEFAULT_MULT = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4),
                 64: (1, 2, 3, 4)}


def _ints(v) -> tuple:
    if isinstance(v, str):
        return tuple(float(x) if "." in x else int(x) for x in v.split(",") if x.strip())
    if isinstance(v, (int, float)):
        return (v,)
    return tuple(v)


def resolve_flags(flags: dict | str | os.PathLike) -> dict:
    """A flags dict from a dict, a preset name or a JSON file."""
    if isinstance(flags, dict):
        return dict(flags)
    if isinstance(flags, str) and flags in PRESETS:
        return dict(PRESETS[flags])
    p = Path(flags)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{p}: neither a preset ({', '.join(PRESETS)}) nor a flags JSON file"
                          ) from None
    except ValueError as e:
        raise ConfigError(f"{p}: not valid JSON ({e})") from None
    return data


def configs_from_flags(flags: dict) -> tuple[UNetConfig, ScheduleConfig, dict]:
    """guided-diffusion flags -> (UNetConfig, ScheduleConfig, extras: learn_sigma, new order, ...)."""
    f = dict(flags)
    if f.get("class_cond") or f.get("num_classes"):
        raise ConfigError("class-conditional guided-diffusion models are not supported")
    if f.get("predict_xstart"):
        raise ConfigError("x0-predicting guided-diffusion models are not supported (eps only)")
    size = int(f.get("image_size", 64))
    learn_sigma = bool(f.get("learn_sigma", False))
    in_ch = int(f.get("in_channels", 3))
    mult = _ints(f.get("channel_mult", "")) or _DEFAULT_MULT.get(size)
    if not mult:
        raise ConfigError(f"no default channel_mult for image_size {size}; give channel_mult")
    res_blocks = _ints(f.get("num_res_blocks", 2))
    # ``model_channels`` marks UNetModel's own argument names (DifFace's yaml), whose defaults
    # differ from script_util's flags: num_heads 1 (not 4), use_scale_shift_norm False (not True)
    unet_args = "model_channels" in f
    unet = UNetConfig(
        image_size=size, in_channels=in_ch, out_channels=in_ch,
        model_channels=int(f.get("model_channels", f.get("num_channels", 128))),
        channel_mult=mult, num_res_blocks=res_blocks[0] if len(res_blocks) == 1 else res_blocks,
        attention_resolutions=_ints(f.get("attention_resolutions", "16,8")),
        num_heads=int(f.get("num_heads", 1 if unet_args else 4)),
        num_head_channels=int(f.get("num_head_channels", -1)),
        num_heads_upsample=int(f.get("num_heads_upsample", -1)),
        dropout=float(f.get("dropout", 0.0)),
        use_scale_shift_norm=bool(f.get("use_scale_shift_norm", not unet_args)),
        resblock_updown=bool(f.get("resblock_updown", False)),
        conv_resample=bool(f.get("conv_resample", True)), norm_groups=32)
    schedule = ScheduleConfig(
        num_timesteps=int(f.get("diffusion_steps", f.get("steps", 1000))),
        beta_schedule=f.get("noise_schedule", "linear"), prediction="eps")
    extras = {"learn_sigma": learn_sigma,
              "new_attention_order": bool(f.get("use_new_attention_order", False)),
              "rescale_timesteps": bool(f.get("rescale_timesteps", False))}
    return unet, schedule, extras


def split_qkv(qkv: torch.Tensor, heads: int, *, new_order: bool) -> tuple[torch.Tensor, ...]:
    """Split a (3C, ...) qkv weight/bias into q, k, v (C, ...) with heads contiguous in C."""
    three_c = qkv.shape[0]
    c = three_c // 3
    rest = qkv.shape[1:]
    if new_order:  # QKVAttention: [q (H*ch), k, v]
        q, k, v = qkv.view(3, c, *rest).unbind(0)
    else:  # QKVAttentionLegacy: per head [q ch, k ch, v ch]
        per_head = qkv.view(heads, 3, c // heads, *rest)
        q, k, v = (per_head[:, i].reshape(c, *rest) for i in range(3))
    return q, k, v


def convert_guided_state(state: dict[str, torch.Tensor], model: UNet, *,
                         new_attention_order: bool = False) -> dict[str, torch.Tensor]:
    """Rename a guided-diffusion UNetModel state dict to ``model``'s keys (qkv split, eps kept)."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    out = dict(state)
    for name, block in model.named_modules():
        if not isinstance(block, AttentionBlock):
            continue
        for kind in ("weight", "bias"):
            qkv = out.pop(f"{name}.qkv.{kind}", None)
            proj = out.pop(f"{name}.proj_out.{kind}", None)
            if qkv is None or proj is None:
                raise WeightsError(f"checkpoint has no {name}.qkv/proj_out {kind} "
                                   "(flags do not match the file?)")
            if kind == "weight":  # conv1d (out, in, 1) -> linear (out, in)
                qkv, proj = qkv.flatten(1), proj.flatten(1)
            q, k, v = split_qkv(qkv, block.attn1.heads, new_order=new_attention_order)
            out[f"{name}.attn1.to_q.{kind}"] = q
            out[f"{name}.attn1.to_k.{kind}"] = k
            out[f"{name}.attn1.to_v.{kind}"] = v
            out[f"{name}.attn1.to_out.{kind}"] = proj
    n_out = model.config.out_channels
    for kind in ("weight", "bias"):  # learn_sigma: [eps, variance] -> eps
        key = f"out.2.{kind}"
        if key in out and out[key].shape[0] == 2 * n_out:
            out[key] = out[key][:n_out]
    return out


class TimestepScaled(nn.Module):
    """Calls the wrapped model with t * scale (guided-diffusion ``rescale_timesteps``)."""

    def __init__(self, model: nn.Module, scale: float):
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, x, t, *args, **kwargs):
        """Rescale t and delegate."""
        return self.model(x, t.float() * self.scale, *args, **kwargs)


def load_guided_diffusion(path: str | os.PathLike, *, flags: dict | str | None = None,
                          device: str | torch.device = "cpu") -> Prior:
    """Load a guided-diffusion / improved-DDPM UNet checkpoint as an eps-prediction ``Prior``."""
    path = Path(path)
    state = read_checkpoint_file(path)
    if flags is None and path.with_suffix(".json").is_file():
        flags = str(path.with_suffix(".json"))
    candidates = [flags] if flags is not None else list(PRESETS)
    errors = []
    for cand in candidates:
        unet_cfg, sched, extras = configs_from_flags(resolve_flags(cand))
        model = UNet(unet_cfg)
        try:
            converted = convert_guided_state(state, model,
                                             new_attention_order=extras["new_attention_order"])
            load_into(model, converted, str(path))
        except WeightsError as e:
            errors.append(f"{cand if isinstance(cand, str) else 'flags'}: {e}")
            continue
        net: nn.Module = model
        config = PriorConfig(unet=unet_cfg, schedule=sched)  # what rebuilds it as our UNet
        if extras["rescale_timesteps"] and sched.num_timesteps != 1000:  # x 1.0 is a no-op
            net = TimestepScaled(model, 1000.0 / sched.num_timesteps)
            config = None  # a UNet that needs rescaled t is not a plain PriorConfig UNet
        return Prior(net.to(device).eval(), sched, config, "guided-diffusion",
                     unet_cfg.image_size, str(path), flags=resolve_flags(cand))
    hint = "" if flags is not None else (f" (no flags given, no {path.with_suffix('.json').name} "
                                         "beside it; pass flags=dict|JSON|preset)")
    raise WeightsError(f"{path}: does not match the guided-diffusion flags{hint}: "
                       + " | ".join(errors))


# --------------------------------------------------------------------------------- diffusers


def _diffusers_unet_dir(folder: Path) -> Path | None:
    for d in (folder, folder / "unet"):
        cfg = d / "config.json"
        if cfg.is_file():
            try:
                if json.loads(cfg.read_text()).get("_class_name") == "UNet2DModel":
                    return d
            except (ValueError, OSError, AttributeError):
                pass
    return None


def is_diffusers_folder(folder: str | os.PathLike) -> bool:
    """True for a diffusers ``UNet2DModel`` folder (or a pipeline folder with ``unet/``)."""
    return _diffusers_unet_dir(Path(folder)) is not None


class DiffusersUNet(nn.Module):
    """Wraps a diffusers ``UNet2DModel`` to flipnet's ``forward(x, t) -> output`` interface."""

    def __init__(self, unet: nn.Module, out_channels: int):
        super().__init__()
        self.unet, self.out_channels = unet, out_channels

    def forward(self, x, t, context=None, **kwargs):
        """diffusers ``.sample``, first ``out_channels`` channels (drops a learned variance)."""
        if context is not None:
            raise ValueError("a diffusers UNet2DModel prior takes no context")
        return self.unet(x, t).sample[:, :self.out_channels]


def _diffusers_schedule(folder: Path) -> ScheduleConfig:
    for p in (folder / "scheduler" / "scheduler_config.json", folder / "scheduler_config.json",
              folder.parent / "scheduler" / "scheduler_config.json"):
        if p.is_file():
            cfg = json.loads(p.read_text())
            break
    else:
        warnings.warn(f"{folder}: no scheduler_config.json; assuming DDPM linear eps, 1000 steps",
                      stacklevel=3)
        cfg = {}
    names = {"linear": "linear", "squaredcos_cap_v2": "cosine"}
    kind = cfg.get("beta_schedule", "linear")
    if kind not in names or cfg.get("trained_betas"):
        raise WeightsError(f"{folder}: scheduler beta_schedule {kind!r} is not supported")
    pred = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}.get(
        cfg.get("prediction_type", "epsilon"))
    if pred is None:
        raise WeightsError(f"{folder}: prediction_type {cfg.get('prediction_type')!r} unsupported")
    linear = names[kind] == "linear"
    return ScheduleConfig(num_timesteps=int(cfg.get("num_train_timesteps", 1000)),
                          beta_schedule=names[kind], prediction=pred,
                          beta_start=float(cfg.get("beta_start", 1e-4)) if linear else None,
                          beta_end=float(cfg.get("beta_end", 0.02)) if linear else None)


def load_diffusers_prior(folder: str | os.PathLike, *, device: str | torch.device = "cpu") -> Prior:
    """Open a local diffusers ``UNet2DModel`` folder with diffusers and wrap it as a ``Prior``."""
    folder = Path(folder)
    unet_dir = _diffusers_unet_dir(folder)
    if unet_dir is None:
        raise WeightsError(f"{folder}: no diffusers UNet2DModel config.json")
    try:
        from diffusers import UNet2DModel
    except ImportError:
        raise WeightsError(f"{folder}: loading diffusers folders needs `pip install diffusers`"
                           ) from None
    try:
        unet = UNet2DModel.from_pretrained(str(unet_dir), local_files_only=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise WeightsError(f"{unet_dir}: diffusers could not load it ({e})") from None
    in_ch = int(unet.config.in_channels)
    size = unet.config.sample_size
    size = int(size[0] if isinstance(size, (list, tuple)) else size)
    return Prior(DiffusersUNet(unet, in_ch).to(device).eval(), _diffusers_schedule(folder), None,
                 "diffusers", size, str(folder))
