"""LPIPS v0.1 (Zhang et al., CVPR 2018, "The Unreasonable Effectiveness of Deep Features"), eq. 1.

d(x, y) = sum_l mean_hw || w_l * (f_l(x)/|f_l(x)| - f_l(y)/|f_l(y)|) ||^2 over five ReLU stages of
VGG16 or AlexNet. The calibrated heads w_l ship with flipnet (BSD-2, from the `lpips` package, see
``flipnet/data/lpips_heads``); the ImageNet backbone weights (torchvision layout, keys
``features.N.weight``, e.g. ``vgg16-397923af.pth`` or ``alexnet-owt-7be5be79.pth``) come only from a
path the user gives (argument or ``FLIPNET_LPIPS_VGG`` / ``FLIPNET_LPIPS_ALEX``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from flipnet.errors import WeightsError
from flipnet.io import to_tensor
from flipnet.weights import read_checkpoint_file

HEADS_DIR = Path(__file__).resolve().parents[1] / "data" / "lpips_heads"
ENV_VARS = {"vgg": "FLIPNET_LPIPS_VGG", "alex": "FLIPNET_LPIPS_ALEX"}
BACKBONE_FILES = {"vgg": "vgg16-397923af.pth", "alex": "alexnet-owt-7be5be79.pth"}

# torchvision ``features`` layouts: ("C", c_in, c_out, kernel, stride, padding) | ("R",) | ("M",)
_VGG16 = [("C", 3, 64, 3, 1, 1), ("R",), ("C", 64, 64, 3, 1, 1), ("R",), ("M",),
          ("C", 64, 128, 3, 1, 1), ("R",), ("C", 128, 128, 3, 1, 1), ("R",), ("M",),
          ("C", 128, 256, 3, 1, 1), ("R",), ("C", 256, 256, 3, 1, 1), ("R",),
          ("C", 256, 256, 3, 1, 1), ("R",), ("M",),
          ("C", 256, 512, 3, 1, 1), ("R",), ("C", 512, 512, 3, 1, 1), ("R",),
          ("C", 512, 512, 3, 1, 1), ("R",), ("M",),
          ("C", 512, 512, 3, 1, 1), ("R",), ("C", 512, 512, 3, 1, 1), ("R",),
          ("C", 512, 512, 3, 1, 1), ("R",)]
_ALEX = [("C", 3, 64, 11, 4, 2), ("R",), ("M",), ("C", 64, 192, 5, 1, 2), ("R",), ("M",),
         ("C", 192, 384, 3, 1, 1), ("R",), ("C", 384, 256, 3, 1, 1), ("R",),
         ("C", 256, 256, 3, 1, 1), ("R",)]
# layer indices after which LPIPS taps a feature map (relu1_2 ... relu5_3 / relu1 ... relu5)
_TAPS = {"vgg": (3, 8, 15, 22, 29), "alex": (1, 4, 7, 9, 11)}
_CHANNELS = {"vgg": (64, 128, 256, 512, 512), "alex": (64, 192, 384, 256, 256)}
_SPECS = {"vgg": _VGG16, "alex": _ALEX}


class LPIPSUnavailable(WeightsError):
    """LPIPS cannot be computed: the backbone weights were not given (or are unusable)."""


def _features(net: str) -> nn.Sequential:
    """torchvision-compatible ``features`` of VGG16 or AlexNet (up to the last tapped ReLU)."""
    layers: list[nn.Module] = []
    for spec in _SPECS[net]:
        if spec[0] == "C":
            _, c_in, c_out, k, s, p = spec
            layers.append(nn.Conv2d(c_in, c_out, k, stride=s, padding=p))
        elif spec[0] == "R":
            layers.append(nn.ReLU())
        else:
            layers.append(nn.MaxPool2d(kernel_size=3 if net == "alex" else 2, stride=2))
    return nn.Sequential(*layers)


class LPIPS(nn.Module):
    """LPIPS distance; ``forward(x, y)`` with x, y float (N, 3, H, W) in [-1, 1] -> (N,)."""

    def __init__(self, net: str = "alex"):
        super().__init__()
        if net not in _SPECS:
            raise ValueError(f"LPIPS backbone must be one of {sorted(_SPECS)}, got {net!r}")
        self.net = net
        self.features = _features(net)
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in _CHANNELS[net])
        # the "ScalingLayer" of lpips v0.1: [-1, 1] input -> ImageNet-normalised input
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five unit-normalised feature maps of an input in [-1, 1]."""
        h = (x - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in _TAPS[self.net]:
                out.append(h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))  # (N, C_l, H_l, W_l)
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        for lin, fx, fy in zip(self.lins, self.taps(x), self.taps(y), strict=True):
            total = total + lin((fx - fy) ** 2).mean(dim=(1, 2, 3))  # (N,)
        return total


def load_lpips(net: str = "alex", backbone_path: str | os.PathLike | None = None, *,
               device: str | torch.device = "cpu") -> LPIPS:
    """LPIPS with shipped heads and the user's torchvision backbone weights, in eval mode."""
    if net not in _SPECS:
        raise ValueError(f"LPIPS backbone must be one of {sorted(_SPECS)}, got {net!r}")
    backbone_path = backbone_path or os.environ.get(ENV_VARS[net])
    if not backbone_path:
        raise LPIPSUnavailable(
            f"LPIPS ({net}) is unavailable: flipnet downloads nothing, so give torchvision's "
            f"ImageNet {net} weights ({BACKBONE_FILES[net]}) with --lpips-backbone PATH or the "
            f"environment variable {ENV_VARS[net]}=PATH")
    backbone_path = Path(backbone_path)
    if not backbone_path.is_file():
        raise LPIPSUnavailable(f"{backbone_path}: LPIPS {net} backbone weights file not found")
    model = LPIPS(net)
    state = read_checkpoint_file(backbone_path)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    wanted = model.features.state_dict()
    backbone = {}
    for k, ref in wanted.items():
        v = state.get(f"features.{k}")
        if v is None:
            raise WeightsError(f"{backbone_path}: key features.{k} missing; expected torchvision "
                               f"{net} weights ({BACKBONE_FILES[net]})")
        if tuple(v.shape) != tuple(ref.shape):
            raise WeightsError(f"{backbone_path}: features.{k} has shape {tuple(v.shape)}, "
                               f"expected {tuple(ref.shape)}")
        backbone[k] = v.float()
    model.features.load_state_dict(backbone)
    heads_path = HEADS_DIR / f"{net}.safetensors"
    if not heads_path.is_file():
        raise LPIPSUnavailable(f"{heads_path}: shipped LPIPS heads missing "
                               "(run scripts/extract_lpips_heads.py)")
    heads = read_checkpoint_file(heads_path)
    model.lins.load_state_dict({k.removeprefix("lin"): v for k, v in heads.items()})
    return model.to(device).eval().requires_grad_(False)


@torch.no_grad()
def lpips_distances(model: LPIPS, pred_imgs: Sequence[np.ndarray], ref_imgs: Sequence[np.ndarray],
                    *, batch_size: int = 16, progress: bool = False) -> np.ndarray:
    """LPIPS of each uint8 (H, W, 3) pair (equal sizes within a pair) -> float64 (N,)."""
    if len(pred_imgs) != len(ref_imgs):
        raise ValueError(f"{len(pred_imgs)} restored images but {len(ref_imgs)} references")
    device = next(model.parameters()).device
    for i, (x, y) in enumerate(zip(pred_imgs, ref_imgs, strict=True)):
        if np.shape(x) != np.shape(y):
            raise ValueError(f"pair {i}: restored {np.shape(x)} and reference {np.shape(y)} differ")
    out = []
    for s in tqdm(range(0, len(pred_imgs), batch_size), desc="lpips", disable=not progress):
        xs = [to_tensor(x) for x in pred_imgs[s:s + batch_size]]  # (1, 3, H, W) each
        ys = [to_tensor(y) for y in ref_imgs[s:s + batch_size]]
        groups = [(xs, ys)] if len({t.shape for t in xs}) == 1 else [([a], [b]) for a, b in
                                                                   zip(xs, ys, strict=True)]
        for gx, gy in groups:  # one forward per same-size group
            out.append(model(torch.cat(gx).to(device), torch.cat(gy).to(device)).double().cpu())
    return torch.cat(out).numpy() if out else np.zeros(0)
