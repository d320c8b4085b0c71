"""Named degradation presets with the published training ranges.

All three face presets use BasicSR's blur (kernel size 41, 'iso'/'aniso' with probability
0.5/0.5, rotation in [-pi, pi]), bilinear down- and up-sampling, Gaussian colour noise on the
0-255 scale and integer JPEG quality, as in their training option files:
  * gfpgan      TencentARC/GFPGAN options/train_gfpgan_v1.yml: sigma [0.1, 10], r [0.8, 8],
                noise [0, 20], JPEG [60, 100]; colour shift 20/255 with p 0.3, torch colour
                jitter with p 0.3, gray with p 0.01.
  * codeformer  sczhou/CodeFormer options/CodeFormer_stage2.yml: sigma [1, 15], r [4, 30],
                noise [0, 20], JPEG [30, 80]; no colour jitter, no gray.
  * difface     zsyOAOA/DifFace configs/training/swinir_ffhq512.yaml: sigma [0.1, 15],
                r [0.8, 32], noise [0, 20], JPEG [30, 100]; gray with p 0.01 (DifFace also grays
                the HQ then: ``params[i]['color']['gray']`` tells a trainer when).
  * raw         camera RAW pipeline (``raw.py``) at a fixed ISO (default 3200), no read-noise
                jitter (the ISO alone sets the noise level), then down-sampling by r in [1, 4]
                (bilinear, bicubic or area) and bilinear up-sampling.
"""

from __future__ import annotations

import dataclasses

from flipnet.degradations.color import ColorConfig
from flipnet.degradations.jpeg import JpegConfig
from flipnet.degradations.kernels import BlurConfig
from flipnet.degradations.noise import NoiseConfig
from flipnet.degradations.pipeline import DegradationConfig
from flipnet.degradations.raw import RawConfig
from flipnet.degradations.resize import ResizeConfig
from flipnet.errors import ConfigError

DEFAULT_RAW_ISO = 3200.0


def _face_preset(name: str, *, sigma, scale, quality, color: ColorConfig | None):
    """A BasicSR-style face degradation with the given ranges."""
    return DegradationConfig(
        name=name,
        blur=BlurConfig(kernel_size=41, kernel_types=("iso", "aniso"), kernel_probs=(0.5, 0.5),
                        sigma=sigma),
        resize=ResizeConfig(scale=scale, down_modes=("bilinear",), down_probs=(1.0,),
                            up_mode="bilinear"),
        noise=NoiseConfig(kinds=("gaussian",), kind_probs=(1.0,), sigma=(0.0, 20.0)),
        jpeg=JpegConfig(quality=quality),
        color=color)


def gfpgan_preset() -> DegradationConfig:
    """GFPGAN's training degradation (Wang et al. CVPR 2021, eq. 8; train_gfpgan_v1.yml)."""
    return _face_preset("gfpgan", sigma=(0.1, 10.0), scale=(0.8, 8.0), quality=(60, 100),
                        color=ColorConfig(shift_prob=0.3, shift=20.0, jitter_prob=0.3,
                                          gray_prob=0.01))


def codeformer_preset() -> DegradationConfig:
    """CodeFormer's stage-II degradation (Zhou et al. NeurIPS 2022; CodeFormer_stage2.yml)."""
    return _face_preset("codeformer", sigma=(1.0, 15.0), scale=(4.0, 30.0), quality=(30, 80),
                        color=None)


def difface_preset() -> DegradationConfig:
    """DifFace's training degradation (Yue & Loy, TPAMI 2024; swinir_ffhq512.yaml)."""
    return _face_preset("difface", sigma=(0.1, 15.0), scale=(0.8, 32.0), quality=(30, 100),
                        color=ColorConfig(gray_prob=0.01))


def raw_preset(*, iso: float = DEFAULT_RAW_ISO) -> DegradationConfig:
    """Camera RAW noise at ``iso`` (Brooks et al. CVPR 2019), then down- and up-sampling."""
    if iso < 0:
        raise ConfigError(f"raw preset: iso must be >= 0, got {iso}")
    return DegradationConfig(
        name="raw" if iso == DEFAULT_RAW_ISO else f"raw-iso{iso:g}",
        raw=RawConfig(iso=(float(iso), float(iso)), read_jitter=0.0),
        resize=ResizeConfig(scale=(1.0, 4.0), down_modes=("bilinear", "bicubic", "area"),
                            down_probs=(1.0, 1.0, 1.0), up_mode="bilinear"))


def rescale_blur(cfg: DegradationConfig, size: int, *, reference: int = 512) -> DegradationConfig:
    """The same degradation relative to the face for ``size`` px images instead of ``reference``.

    The published ranges are for 512 px faces. Blur sigma (and the kernel size) are in pixels,
    so they scale by size / reference; the down-sampling factor, noise and JPEG act on the
    already shrunk image and are resolution-free, so they stay.
    """
    if cfg.blur is None:
        return cfg
    f = size / reference
    k = max(3, round(cfg.blur.kernel_size * f) | 1)  # nearest odd size, at least 3
    blur = dataclasses.replace(cfg.blur, kernel_size=k,
                               sigma=(max(cfg.blur.sigma[0] * f, 1e-3), cfg.blur.sigma[1] * f))
    return dataclasses.replace(cfg, blur=blur, name=f"{cfg.name}@{size}")


PRESETS = {"gfpgan": gfpgan_preset, "codeformer": codeformer_preset,
           "difface": difface_preset, "raw": raw_preset}


def get_preset(name: str) -> DegradationConfig:
    """The preset called ``name`` (one of ``PRESETS``), or ``ConfigError`` listing them."""
    if name not in PRESETS:
        raise ConfigError(f"unknown degradation preset {name!r}; "
                          f"choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]()
