"""FLIPNET sampling: restoration mode (LQ -> HQ) and degradation mode (HQ -> realistic LQ).

In either mode the known image (LQ when restoring, HQ when degrading) is the condition stream:
at every sampler step it is diffused to the current t (or, with ``config.condition_t``, to that
fixed step, which the network is told) with one fixed noise draw per image
(``q_sample(known, t_cond, noise)``), so the condition stream is what it was in training. The target
stream is sampled with any of ``flipnet.diffusion.samplers`` (ddim, dpmpp_2m, ddpm); the model
closure returns the target stream's prediction. Work happens at the prior's face size
(``net.image_size``: the UNet's size times the autoencoder factor); inputs are shrunk to it by
``degradations.model_lq.to_model_size`` (as the training LQ was made, so a synthetic LQ crop
reaches the network exactly as in training) and results resized back. Image k of a run draws all
its noise from
``Generator(seed + index_k)``, so a batch gives each image what a single run gives.

Fidelity (restoration): ``phi = trained phi x 2 x fidelity`` (0.5 = the trained weight,
0 = BoostHub and injections off), optionally with a start step below pure noise (``start`` < 1
starts from the known image diffused to that fraction of the schedule, DifFace-style; default
the folder's ``config.start``). Optional low-pass (ILVR) guidance toward the known image
(``guidance`` = image-space factor N, ``diffusion.guidance``; on a latent prior the latent factor
is N / f) keeps the known image's colours and layout, which the adapters alone do not always
do; the last ``guidance_free`` of the steps run free. ``color_fix`` (restoration) swaps the
decoded result's low band (pixel factor N) for the LQ's, as the colour fixes of StableSR and
DiffBIR do after decoding: a latent prior's decoder can shift colour that no latent guidance
reaches. ``phi`` is passed with every network call, never
set on the shared modules, so threads sampling one network with different fidelities do not
disturb each other. The known image's face tokens are computed once per run, not per step.
On a latent prior both streams are the autoencoder's latents (``net.encode``; the face tokens
still read the pixels) and the result is ``net.decode``d.
``net`` is a ``flipnet.models.flipnet.FlipNet`` (duck-typed: ``prior_config``, ``image_size``,
``factor``, ``encode``/``decode``, ``config.phi``,
``config.condition_t``, ``config.start``, ``context`` and the two-stream call with ``t_cond``,
``context_tokens`` and ``phi``). Used by
``pipelines.flipnet_method`` (the FaceMethod) and ``training.flipnet`` (sample grids).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from flipnet.degradations.model_lq import to_model_size
from flipnet.diffusion.guidance import latent_factor, lowpass, make_lowpass_edit
from flipnet.diffusion.respace import sampling_timesteps
from flipnet.diffusion.samplers import SAMPLERS, randn_like
from flipnet.diffusion.schedules import make_schedule
from flipnet.errors import ConfigError
from flipnet.models.flipnet import condition_timesteps

# the low-pass reference's noise: a stream apart from the sampler's (seed + index + offset)
GUIDANCE_SEED_OFFSET = 1_000_003


def _resize(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Back from the model size to the input's (H, W)."""
    if tuple(x.shape[-2:]) == tuple(hw):
        return x
    return F.interpolate(x, size=tuple(hw), mode="bicubic", antialias=True,
                         align_corners=False).clamp(-1, 1)


@torch.no_grad()
def sample_flipnet(net, known: torch.Tensor, *, mode: str, steps: int = 50,
                   sampler: str = "ddim", seed: int = 0, start: float | None = None,
                   indices: list[int] | None = None, phi: float | None = None,
                   guidance: int | None = None, guidance_free: float | None = None,
                   color_fix: int | None = None, progress: bool = False) -> torch.Tensor:
    """Sample the target stream given the known condition image (N, 3, H, W) in [-1, 1];
    ``phi``: BoostHub weight for this run (default: the trained one); ``start``, ``guidance``
    (image-space low-pass factor, 0 = off; the folder's default applies to restoration only) and
    ``guidance_free``: defaults from ``net.config``; ``color_fix``: pixel low-band factor taken
    from the known image after decoding (restoration's default ``net.config.color_fix``)."""
    start = net.config.start if start is None else start
    if guidance is None:  # the folder's default is chosen for restoration; degrading asks
        guidance = net.config.guidance_factor if mode == "restore" else 0
    guidance = int(guidance)
    if color_fix is None:
        color_fix = net.config.color_fix if mode == "restore" else 0
    free = net.config.guidance_free if guidance_free is None else guidance_free
    if sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler {sampler!r}; choose from {', '.join(SAMPLERS)}")
    if not 0.0 < start <= 1.0:
        raise ConfigError(f"start must be in (0, 1], got {start}")
    if color_fix < 0:
        raise ConfigError(f"color_fix must be >= 0, got {color_fix}")
    if guidance < 0 or not 0.0 <= free <= 1.0:
        raise ConfigError(f"guidance must be >= 0 and guidance_free in [0, 1], got {guidance} "
                          f"and {free}")
    schedule = make_schedule(net.prior_config.schedule)
    size, (h, w) = net.image_size, known.shape[-2:]
    device = next(net.parameters()).device
    # the model-size input, shrunk as training's LQ was (``degradations.model_lq``)
    image = to_model_size(known.float(), size).to(device)  # (N, 3, S, S)
    cond = net.encode(image)  # the condition stream's content: (N, C, h, w)
    indices = list(range(len(cond))) if indices is None else indices
    gens = [torch.Generator().manual_seed(seed + i) for i in indices]
    cond_noise = randn_like(cond, gens)  # fixed for the whole run
    steps = max(2, int(steps))
    first = max(1, round(steps * start)) - 1
    ts = sampling_timesteps(schedule.num_timesteps, str(steps), start_index=first)
    x = randn_like(cond, gens)
    if first < steps - 1:  # start from the known image diffused to ts[0]
        x = schedule.q_sample(cond, ts[0], x)

    tokens = net.context(image, mode)  # (N, S, D) or None: once per image, not per step

    def model_fn(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t_cond = condition_timesteps(t, net.config.condition_t)  # same t, or the fixed one
        xc = schedule.q_sample(cond, t_cond, cond_noise)  # the condition stream
        return net(xt, xc, t, t_cond=t_cond, mode=mode, context_tokens=tokens, phi=phi)[0]

    # latents are not bounded to [-1, 1]: only a pixel prior's x0 is clipped
    kwargs = {"progress": progress, "clip_x0": net.factor == 1}
    if guidance > 0:  # ILVR toward the known image; its noise from a second per-image stream
        ref_gens = [torch.Generator().manual_seed(seed + i + GUIDANCE_SEED_OFFSET)
                    for i in indices]
        kwargs["edit"] = make_lowpass_edit(cond, schedule, ts, generator=ref_gens,
                                           factor=latent_factor(guidance, net.factor),
                                           tau=round(len(ts) * free))
    if sampler == "ddpm":
        kwargs["generator"] = gens
    x0 = net.decode(SAMPLERS[sampler](model_fn, x, schedule, ts, **kwargs))
    if color_fix > 0:  # the known image's colour and tone, the sample's detail
        x0 = x0 - lowpass(x0, color_fix) + lowpass(image, color_fix)
    return _resize(x0, (h, w)).clamp(-1, 1)


def flipnet_restore(net, lq: torch.Tensor, *, fidelity: float = 0.5, **kwargs) -> torch.Tensor:
    """Restoration mode: LQ (N, 3, H, W) -> restored, phi = trained phi x 2 x fidelity."""
    if not 0.0 <= fidelity <= 1.0:
        raise ConfigError(f"fidelity must be in [0, 1], got {fidelity}")
    return sample_flipnet(net, lq, mode="restore", phi=net.config.phi * 2.0 * fidelity, **kwargs)


def flipnet_degrade(net, hq: torch.Tensor, **kwargs) -> torch.Tensor:
    """Degradation mode: HQ (N, 3, H, W) -> synthetic real-world-like LQ of the same size."""
    return sample_flipnet(net, hq, mode="degrade", **kwargs)
