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

The ranges are those of 512 px faces. ``preset_for_size`` scales blur sigma and the
down-sampling factor r by size / 512 (r floored at 1) for smaller faces, so a 128 px pair
carries the information of the papers' 512 px pair; ``NAME-unscaled`` keeps the published
numbers at any size.
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


def scale_to_face(cfg: DegradationConfig, size: int, *, reference: int = 512) -> DegradationConfig:
    """The same degradation relative to the face for ``size`` px faces instead of ``reference``.

    The published ranges are for 512 px faces. Blur sigma (and the kernel size) are in pixels,
    and so is the down-sampling factor r: a 512 px face shrunk by r keeps 512 / r pixels of
    detail, so a ``size`` px face keeps the same information when shrunk by r * size / 512.
    Both scale by size / reference; each drawn r is floored at 1 (a face is never enlarged
    before the noise), noise and JPEG stay as published. Faces of ``reference`` px or more
    get the published ranges unchanged.
    """
    if size >= reference:
        return cfg
    f = size / reference
    blur, resize = cfg.blur, cfg.resize
    if blur is not None:
        k = max(3, round(blur.kernel_size * f) | 1)  # nearest odd size, at least 3
        blur = dataclasses.replace(blur, kernel_size=k,
                                   sigma=(max(blur.sigma[0] * f, 1e-3), blur.sigma[1] * f))
    if resize is not None and cfg.raw is None:  # the raw preset's r is not a face-size range
        resize = dataclasses.replace(resize, scale=(resize.scale[0] * f, resize.scale[1] * f),
                                     min_scale=1.0)
    return dataclasses.replace(cfg, blur=blur, resize=resize, name=f"{cfg.name}@{size}")


PRESETS = {"gfpgan": gfpgan_preset, "codeformer": codeformer_preset,
           "difface": difface_preset, "raw": raw_preset}
UNSCALED = "-unscaled"  # suffix: the published 512 px ranges applied at any face size


def get_preset(name: str) -> DegradationConfig:
    """The preset called ``name`` (one of ``PRESETS``, optionally with ``-unscaled``), or
    ``ConfigError`` listing them. The config holds the published (512 px) ranges."""
    base = name[: -len(UNSCALED)] if name.endswith(UNSCALED) else name
    if base not in PRESETS:
        raise ConfigError(f"unknown degradation preset {name!r}; choose one of: "
                          f"{', '.join(PRESETS)} (or NAME{UNSCALED} for the 512 px ranges at "
                          "any size)")
    return PRESETS[base]()


def preset_for_size(name: str, size: int) -> DegradationConfig:
    """Preset ``name`` for ``size`` px faces: scaled by ``scale_to_face`` unless it ends in
    ``-unscaled`` (then the published ranges are used as they are)."""
    cfg = get_preset(name)
    if name.endswith(UNSCALED):
        return dataclasses.replace(cfg, name=name)
    return scale_to_face(cfg, size)
