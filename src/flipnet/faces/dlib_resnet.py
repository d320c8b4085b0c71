"""PyTorch port of dlib's 128-D face recognition ResNet and a differentiable identity loss.

dlib's python API runs the network (``flipnet.faces.identity``) but neither exposes its weights
nor gradients, so this module reads ``dlib_face_recognition_resnet_model_v1.dat`` itself (pure
Python + numpy, following dlib/serialize.h, dlib/dnn/core.h, dlib/dnn/layers.h, dlib/dnn/input.h
and dlib/cuda/tensor.h) and rebuilds ``anet_type`` of dlib/examples/dnn_face_recognition_ex.cpp:

    loss_metric<fc_no_bias<128, avg_pool_everything<alevel0<...<alevel4<
        max_pool<3,3,2,2, relu<affine<con<32,7,7,2,2, input_rgb_image_sized<150>>>>>>>>>>>>

Serialization facts used (all checked against the file by parsing it to its last byte):
  * integers: one byte ``(0x80 if negative) | n`` then ``n`` little-endian magnitude bytes;
  * doubles / floats (``float_details``): an integer mantissa then an integer exponent,
    value = mantissa * 2**exponent; bools: the characters '1' / '0'; strings: length + bytes;
  * tensors (version 2): num_samples, k, nr, nc, then raw little-endian float32 values;
  * ``add_layer`` writes its version, then its sub-network, then its own layer: so the file holds
    every wrapper's version top-down, then the input layer, then the layers bottom-up. Tag and skip
    layers write only a version (their tag ids are compile-time), so the topology comes from
    ``anet_type``; the file's layer sequence is checked against it.

Face chips: the network wants dlib's 150x150 ``get_face_chip`` (padding 0.25), fixed by dlib's
5-point landmarks (eye corners + nose base, not flipnet's FFHQ points). ``flipnet_to_dlib_chip``
uses one similarity per crop size: dlib's own chip rule applied to where dlib's predictor puts
those landmarks, on average, in flipnet-template crops (``DLIB5_IN_FLIPNET_CROP``, measured). On
UTKFace crops dlib's descriptor of that chip lies a median ~0.13 (euclidean) from dlib's descriptor
via per-face landmarks (same-person threshold 0.6): per-face landmark scatter, not a bias.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from flipnet.errors import WeightsError
from flipnet.faces.align import similarity_transform
from flipnet.faces.dlib_models import model_path

CHIP_SIZE = 150  # input_rgb_image_sized<150>
CHIP_PADDING = 0.25  # dlib's get_face_chip / compute_face_descriptor default
EMBEDDING_DIM = 128
MAX_SAMPLED_SIZE = 2 * CHIP_SIZE  # larger crops are shrunk first (dlib: pyramid_down<2> levels)
# (channels, downsampling) of every residual block, bottom-up: alevel4 .. alevel0
BLOCKS = ([(32, False)] * 3 + [(64, True)] + [(64, False)] * 3 + [(128, True)]
          + [(128, False)] * 2 + [(256, True)] + [(256, False)] * 2 + [(256, True)])
# dlib 5-point landmarks (shape_predictor_5_face_landmarks order: image-right eye outer and inner
# corner, image-left eye outer and inner corner, nose base) in [0, 1] coordinates of a flipnet-
# template crop, where dlib's predictor puts them when seeded with the whole crop (as
# IdentityEmbedder(aligned=True) does): trimmed mean over 2,000 UTKFace crops aligned to the
# flipnet template (out/prepared/utkface-128), symmetrised; scripts/derive_dlib_chip_points.py.
DLIB5_IN_FLIPNET_CROP = np.array([[0.761226, 0.306465], [0.612302, 0.314011],
                                  [0.238774, 0.306465], [0.387698, 0.314011], [0.5, 0.586069]])
# get_face_chip_details' mean face for the 5-point model (dlib/image_transforms/interpolation.h)
DLIB5_MEAN_FACE = np.array([[0.8595674595992, 0.2134981538014], [0.6460604764104, 0.2289674387677],
                            [0.1205750620789, 0.2137274526848], [0.3340850613712, 0.2290642403242],
                            [0.4901123135679, 0.6277975316475]])


# ---------------------------------------------------------------------------------------------
# reader

class _Reader:
    """Sequential reader of dlib's serialization format over an in-memory byte string."""

    def __init__(self, data: bytes, name: str):
        self.data, self.pos, self.name = data, 0, name

    def fail(self, what: str) -> WeightsError:
        """A WeightsError naming the file and the byte offset."""
        return WeightsError(f"{self.name}: {what} at byte {self.pos}")

    def integer(self) -> int:
        """One packed integer (sign/length byte + little-endian magnitude)."""
        if self.pos >= len(self.data):
            raise self.fail("unexpected end of file")
        head = self.data[self.pos]
        n = head & 0x0F
        if n > 8 or head & 0x70:
            raise self.fail(f"bad integer header 0x{head:02x}")
        value = int.from_bytes(self.data[self.pos + 1:self.pos + 1 + n], "little")
        self.pos += 1 + n
        return -value if head & 0x80 else value

    def real(self) -> float:
        """One float / double stored as dlib float_details (mantissa, exponent)."""
        mantissa, exponent = self.integer(), self.integer()
        special = {32000: math.inf, 32001: -math.inf, 32002: math.nan}
        return special[exponent] if exponent in special else math.ldexp(mantissa, exponent)

    def reals(self, n: int) -> list[float]:
        """``n`` floats in a row."""
        return [self.real() for _ in range(n)]

    def flag(self) -> bool:
        """One bool, written by dlib as the character '1' or '0'."""
        c = self.data[self.pos:self.pos + 1]
        if c not in (b"0", b"1"):
            raise self.fail(f"bad bool {c!r}")
        self.pos += 1
        return c == b"1"

    def string(self) -> str:
        """A length-prefixed string."""
        n = self.integer()
        s = self.data[self.pos:self.pos + n]
        self.pos += n
        return s.decode("latin-1")

    def expect(self, version: str) -> None:
        """Read a string and fail unless it equals ``version``."""
        got = self.string()
        if got != version:
            raise self.fail(f"expected {version!r}, found {got!r}")

    def tensor(self) -> np.ndarray:
        """A dlib resizable_tensor (version 2) as a float32 (n, k, nr, nc) array."""
        if (version := self.integer()) != 2:
            raise self.fail(f"unsupported tensor version {version}")
        shape = tuple(self.integer() for _ in range(4))
        count = int(np.prod(shape))
        if self.pos + 4 * count > len(self.data):
            raise self.fail(f"tensor {shape} runs past the end of the file")
        arr = np.frombuffer(self.data, "<f4", count, self.pos).reshape(shape)
        self.pos += 4 * count
        return arr.astype(np.float32)  # a copy, native byte order

    def alias(self) -> tuple[int, int, int, int]:
        """A dlib alias_tensor (version 1): its (n, k, nr, nc) shape."""
        if (version := self.integer()) != 1:
            raise self.fail(f"unsupported alias_tensor version {version}")
        return tuple(self.integer() for _ in range(4))


@dataclass
class DlibLayer:
    """One parsed dlib layer: its kind and (for con / affine / fc / pools) its settings."""

    kind: str  # input, con, affine, relu, max_pool, avg_pool, add_prev, fc, wrapper (tag/skip)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    settings: dict[str, tuple[int, int]] = field(default_factory=dict)


def _read_details(r: _Reader) -> DlibLayer:
    """The layer object of one add_layer (the LAYER_DETAILS part)."""
    name = r.string()
    if name == "con_4":
        params = r.tensor().reshape(-1)
        nf, nr, nc, sy, sx, py, px = (r.integer() for _ in range(7))
        fshape, bshape = r.alias(), r.alias()
        r.reals(4)  # learning-rate / weight-decay multipliers
        w_size = int(np.prod(fshape))
        if fshape[0] != nf or fshape[2:] != (nr, nc) or params.size != w_size + nf:
            raise r.fail(f"inconsistent con_ shapes {fshape} {bshape} {params.size}")
        arrays = {"weight": params[:w_size].reshape(fshape), "bias": params[w_size:]}
        return DlibLayer("con", arrays, {"stride": (sy, sx), "padding": (py, px)})
    if name == "affine_":
        params = r.tensor().reshape(-1)
        gshape, bshape = r.alias(), r.alias()
        mode = r.integer()
        g = int(np.prod(gshape))
        if mode != 0 or gshape != bshape or gshape[2:] != (1, 1) or params.size != 2 * g:
            raise r.fail(f"unsupported affine_ (mode {mode}, gamma {gshape})")
        return DlibLayer("affine", {"gamma": params[:g], "beta": params[g:]})
    if name in ("max_pool_2", "avg_pool_2"):
        nr, nc, sy, sx, py, px = (r.integer() for _ in range(6))
        return DlibLayer(name[:-2], settings={"size": (nr, nc), "stride": (sy, sx),
                                              "padding": (py, px)})
    if name in ("relu_", "add_prev_"):
        return DlibLayer(name[:-1])
    if name == "fc_2":
        n_out, n_in = r.integer(), r.integer()
        params = r.tensor().reshape(-1)
        wshape, _ = r.alias(), r.alias()
        bias_mode = r.integer()
        r.reals(4)
        if bias_mode != 1 or wshape[:2] != (n_in, n_out) or params.size != n_in * n_out:
            raise r.fail(f"unsupported fc_ (bias mode {bias_mode}, weights {wshape})")
        return DlibLayer("fc", {"weight": params.reshape(n_in, n_out)})  # y = x @ weight
    raise r.fail(f"unsupported dlib layer {name!r}")


def _read_input(r: _Reader) -> DlibLayer:
    """input_rgb_image_sized: per-channel means (x - mean) / 256 and the fixed chip size."""
    r.expect("input_rgb_image_sized")
    mean = np.array(r.reals(3), np.float32)
    nr, nc = r.integer(), r.integer()
    return DlibLayer("input", {"mean": mean}, {"size": (nr, nc)})


def read_dlib_net(path: str | None = None) -> list[DlibLayer]:
    """Parse a dlib ``anet_type`` model file into its layers, bottom-up (input first)."""
    path = path or model_path("identity")
    with open(path, "rb") as f:
        r = _Reader(f.read(), path)
    # add_loss_layer: version 1, the loss, then the network
    if r.integer() != 1:
        raise r.fail("not a dlib add_loss_layer")
    r.expect("loss_metric_2")
    r.reals(2)  # margin, distance threshold
    versions = []  # one per wrapper, top-down: 2 = add_layer, 1 = tag / skip, 3 = bottom add_layer
    while not versions or versions[-1] != 3:
        versions.append(r.integer())
        if versions[-1] not in (1, 2, 3):
            raise r.fail(f"unexpected layer version {versions[-1]}")
    layers = [_read_input(r)]
    for version in reversed(versions):
        if version == 1:
            layers.append(DlibLayer("wrapper"))
            continue
        layers.append(_read_details(r))
        for _ in range(3):  # setup called, gradient stale, output disabled
            r.flag()
        for _ in range(3):  # x_grad, cached_output, then params_grad (v2) or grad_final (v3)
            r.tensor()
        if version == 3:
            r.integer()  # sample expansion factor
    if r.pos != len(r.data):
        raise r.fail(f"{len(r.data) - r.pos} trailing bytes")
    return layers


def expected_kinds() -> list[str]:
    """The layer kinds of dlib's ``anet_type`` bottom-up, tag / skip layers as 'wrapper'."""
    kinds = ["input", "con", "affine", "relu", "max_pool"]
    body = ["wrapper", "con", "affine", "relu", "con", "affine"]  # tag1<...>, then block<>
    for _, down in BLOCKS:
        kinds += body + (["wrapper", "wrapper", "avg_pool"] if down else [])  # tag2, skip1, pool
        kinds += ["add_prev", "relu"]
    return kinds + ["avg_pool", "fc"]


# ---------------------------------------------------------------------------------------------
# network

def add_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev: sum of two (B, C, H, W) tensors zero-padded (end of C, H, W) to the max."""
    size = [max(x, y) for x, y in zip(a.shape[1:], b.shape[1:], strict=True)]

    def pad(t: torch.Tensor) -> torch.Tensor:
        c, h, w = t.shape[1:]
        if (c, h, w) == tuple(size):
            return t
        return F.pad(t, (0, size[2] - w, 0, size[1] - h, 0, size[0] - c))

    return pad(a) + pad(b)


class Affine(nn.Module):
    """dlib affine_ in conv mode: per-channel ``gamma * x + beta`` (a frozen batch norm)."""

    def __init__(self, channels: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        return torch.addcmul(self.beta[:, None, None], x, self.gamma[:, None, None])


class Residual(nn.Module):
    """dlib ares / ares_down: relu(shortcut(x) + affine(con(relu(affine(con(x)))))).

    ``down``: first con has stride 2 and no padding, the shortcut is a 2x2 / 2 average pool, and
    the sum zero-pads the smaller tensor (channels and bottom / right) as dlib's add_prev does.
    """

    def __init__(self, c_in: int, c_out: int, down: bool):
        super().__init__()
        self.down = down
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=2 if down else 1, padding=0 if down else 1)
        self.aff1 = Affine(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.aff2 = Affine(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, H', W')."""
        y = self.aff2(self.conv2(F.relu(self.aff1(self.conv1(x)))))
        if self.down:
            return F.relu(add_padded(F.avg_pool2d(x, 2, 2), y))
        return F.relu(x + y)


class DlibFaceResNet(nn.Module):
    """dlib_face_recognition_resnet_model_v1: (B, 3, 150, 150) RGB in 0..255 -> (B, 128)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.zeros(3))  # input_rgb_image_sized's avg_red/green/blue
        self.conv = nn.Conv2d(3, 32, 7, stride=2)
        self.aff = Affine(32)
        blocks, c_in = [], 32
        for c_out, down in BLOCKS:
            blocks.append(Residual(c_in, c_out, down))
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c_in, EMBEDDING_DIM, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 150, 150) RGB 0..255 -> (B, 128) descriptors (dlib's, not normalised)."""
        x = (x - self.mean[:, None, None]) / 256.0
        x = F.max_pool2d(F.relu(self.aff(self.conv(x))), 3, 2)  # (B, 32, 35, 35)
        x = self.blocks(x)  # (B, 256, 2, 2)
        return self.fc(x.mean(dim=(2, 3)))

    def dlib_layers(self) -> list[nn.Module]:
        """The modules matching dlib's con / affine / fc layers, bottom-up."""
        out: list[nn.Module] = [self.conv, self.aff]
        for b in self.blocks:
            out += [b.conv1, b.aff1, b.conv2, b.aff2]
        return out + [self.fc]


def _check_pool(layer: DlibLayer, size: tuple, stride: tuple) -> None:
    """Fail unless a parsed pooling layer has the size / stride / zero padding assumed here."""
    s = layer.settings
    if (s["size"], s["stride"], s["padding"]) != (size, stride, (0, 0)):
        raise WeightsError(f"unexpected dlib {layer.kind} settings {s}")


def build_dlib_resnet(layers: list[DlibLayer]) -> DlibFaceResNet:
    """A DlibFaceResNet holding the weights of parsed dlib layers (checked against anet_type)."""
    kinds = [layer.kind for layer in layers]
    if kinds != expected_kinds():
        first = next((i for i, (a, b) in enumerate(zip(kinds, expected_kinds())) if a != b),
                     min(len(kinds), len(expected_kinds())))
        raise WeightsError(f"dlib network is not anet_type: layer {first} differs "
                           f"({len(kinds)} layers parsed)")
    if layers[0].settings["size"] != (CHIP_SIZE, CHIP_SIZE):
        raise WeightsError(f"dlib input size {layers[0].settings['size']} is not 150x150")
    _check_pool(layers[4], (3, 3), (2, 2))
    for layer in layers[5:-2]:
        if layer.kind == "avg_pool":
            _check_pool(layer, (2, 2), (2, 2))
    _check_pool(layers[-2], (0, 0), (1, 1))  # avg_pool_everything
    net = DlibFaceResNet()
    net.mean.copy_(torch.from_numpy(layers[0].arrays["mean"]))
    params = [layer for layer in layers if layer.kind in ("con", "affine", "fc")]
    for module, layer in zip(net.dlib_layers(), params, strict=True):
        a = {k: torch.from_numpy(v) for k, v in layer.arrays.items()}
        if layer.kind == "con":
            conv_ok = (module.stride == layer.settings["stride"]
                       and module.padding == layer.settings["padding"])
            if module.weight.shape != a["weight"].shape or not conv_ok:
                raise WeightsError(f"dlib con {tuple(a['weight'].shape)} {layer.settings} does "
                                   f"not fit {module}")
            module.weight.data.copy_(a["weight"])
            module.bias.data.copy_(a["bias"])
        elif layer.kind == "affine":
            module.gamma.data.copy_(a["gamma"])
            module.beta.data.copy_(a["beta"])
        else:
            module.weight.data.copy_(a["weight"].T)  # dlib: (in, out), y = x @ w
    return net.eval().requires_grad_(False)


@functools.lru_cache(maxsize=2)
def _parsed(path: str) -> list[DlibLayer]:
    """read_dlib_net, once per process and path."""
    return read_dlib_net(path)


def load_dlib_resnet(path: str | None = None) -> DlibFaceResNet:
    """A new frozen (eval, requires_grad False) DlibFaceResNet from dlib's model file."""
    return build_dlib_resnet(_parsed(path or model_path("identity")))


# ---------------------------------------------------------------------------------------------
# face chips and the identity loss

def dlib_chip_affine(points: np.ndarray, *, size: int = CHIP_SIZE,
                     padding: float = CHIP_PADDING) -> np.ndarray:
    """(2, 3) map chip pixel -> image pixel of dlib's ``get_face_chip`` for 5 dlib landmarks.

    As dlib computes it: a least-squares similarity (Umeyama) from the padded mean face to the
    points gives the angle, scale and centre (the image of chip point (size/2, size/2)) of
    ``chip_details``, whose rect spans ``size * scale - 1`` pixels (``centered_drect``);
    ``extract_image_chip`` maps the chip's corner pixels 0 and size-1 onto that rect's rotated
    corners. (dlib's image pyramid for chips shrunk more than 2x is not modelled: flipnet crops
    are upsampled into the chip.)
    """
    mean_face = (padding + DLIB5_MEAN_FACE) / (2 * padding + 1) * size
    tform = similarity_transform(mean_face, np.asarray(points, np.float64))  # chip -> image
    lin = tform[:, :2]
    scale = float(np.hypot(*lin[:, 0]))
    centre = lin @ np.array([size / 2, size / 2]) + tform[:, 2]
    half = (size * scale - 1) / 2  # half the side of chip_details.rect (centered_drect)
    rot = lin / scale  # rotation by chip_details.angle
    step = rot * (2 * half / (size - 1))  # chip pixel -> image offset
    return np.hstack([step, (centre - rot @ np.array([half, half]))[:, None]])


@functools.cache
def _chip_theta(crop_size: int) -> np.ndarray:
    """affine_grid theta (align_corners=False) from the dlib chip to a flipnet crop of this size."""
    chip_to_crop = np.vstack([dlib_chip_affine(DLIB5_IN_FLIPNET_CROP * crop_size), [0, 0, 1]])

    def to_norm(n: int) -> np.ndarray:  # pixel -> [-1, 1] coordinates
        return np.array([[2 / n, 0, 1 / n - 1], [0, 2 / n, 1 / n - 1], [0, 0, 1]])

    return (to_norm(crop_size) @ chip_to_crop @ np.linalg.inv(to_norm(CHIP_SIZE)))[:2]


def flipnet_to_dlib_chip(crops: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) flipnet-aligned crops in [-1, 1] -> (B, 3, 150, 150) dlib chips, RGB 0..255.

    One fixed similarity per S (``DLIB5_IN_FLIPNET_CROP`` through ``dlib_chip_affine``),
    bilinear ``grid_sample``, border padding; differentiable w.r.t. ``crops``. Crops larger than
    ``MAX_SAMPLED_SIZE`` are first shrunk (antialiased) to it, as dlib's image pyramid would, so
    bilinear sampling never shrinks more than about 2x.
    """
    if crops.ndim != 4 or crops.shape[1] != 3 or crops.shape[2] != crops.shape[3]:
        raise ValueError(f"expected (B, 3, S, S) crops, got {tuple(crops.shape)}")
    if crops.shape[2] > MAX_SAMPLED_SIZE:
        crops = F.interpolate(crops, size=(MAX_SAMPLED_SIZE, MAX_SAMPLED_SIZE), mode="bilinear",
                              antialias=True, align_corners=False)
    b, s = crops.shape[0], crops.shape[2]
    theta = torch.as_tensor(_chip_theta(s), dtype=crops.dtype, device=crops.device)
    grid = F.affine_grid(theta.expand(b, 2, 3), [b, 3, CHIP_SIZE, CHIP_SIZE], align_corners=False)
    chips = F.grid_sample(crops, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return (chips + 1.0) * 127.5


class IdentityLoss(nn.Module):
    """Mean (1 - cosine similarity) of dlib ResNet descriptors of aligned crops in [-1, 1]."""

    def __init__(self, net: DlibFaceResNet | None = None):
        super().__init__()
        self.net = net if net is not None else load_dlib_resnet()

    def embed(self, crops: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) flipnet crops in [-1, 1] -> (B, 128) dlib descriptors."""
        return self.net(flipnet_to_dlib_chip(crops))

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar loss; gradients flow into ``pred`` only (``target`` is embedded without grad)."""
        with torch.no_grad():
            target_emb = self.embed(target)
        return (1.0 - F.cosine_similarity(self.embed(pred), target_emb, dim=1)).mean()
