"""Train the face locator (``models.face_locator``) on synthetic degraded photos (issue 16).

Data, made once and cached under ``out_dir`` (``data-train.safetensors``, ``data-val.safetensors``):
  * positives: aligned train-split faces (``flipnet prepare`` chips; their 5 landmarks are the
    chip template's) rendered into a ``canvas`` px photo by a random similarity transform (eye
    distance log-uniform in ``eye_distance``, rotation up to ``max_rotation`` degrees, the face
    inside the frame); with probability ``reflect_prob`` the chip is first reflected outwards by
    15-30% of its side (the FFHQ-protocol sets of ``benchmarks/ffhq_protocol.py`` fill their
    border by reflection); the rest of the photo is an unrelated texture under a feathered edge;
  * negatives (presence 0): photos made only of textures: random crops of scikit-image's bundled
    non-face pictures (coffee, rocket, coins, retina, cat...) and procedural noise and shapes.
    These synthetic negatives are the limit of what this check can see: the false-positive rate
    on real photos without faces (objects, crowds seen from afar) is not measured here;
  * every photo degraded at ``canvas`` px with one of ``presets`` at their published 512 px
    ranges (the same sampled parameters and ``degradations.pipeline.apply_params`` stages as the
    benchmark; only the 41 px blur runs through OpenCV's DFT filter, about 10x faster than the
    grouped conv on CPU), or left clean with ``clean_prob``; then letterboxed to the net's size.
Validation uses other train-split faces (never the test split): the presence threshold is the
lowest value that at most ``max_fp_rate`` of the validation negatives exceed, saved in the
exported ``config.json``. Loss (``locator_loss``): CenterNet's focal loss on the face-centre grid +
smooth-L1 of the point offsets near the centre, in true eye distances.

    python -m flipnet.training.face_locator configs/face-locator-cpu.json
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from flipnet.degradations.kernels import kernel_from_params
from flipnet.degradations.pipeline import DegradationConfig, apply_params, sample_params
from flipnet.degradations.presets import get_preset
from flipnet.errors import FlipnetError
from flipnet.faces.template import get_template
from flipnet.io import (
    list_images,
    load_image,
    new_file_mode,
    to_tensor,
    to_uint8,
    write_bytes_atomic,
)
from flipnet.models.face_locator import (
    FLIP_ORDER,
    PAD_VALUE,
    FaceLocator,
    FaceLocatorConfig,
    count_parameters,
    from_unit,
    letterbox,
    save_face_locator,
    to_unit,
)
from flipnet.splits import in_split
from flipnet.training.data import resize_square
from flipnet.training.harness import (
    EMA,
    TrainingRun,
    append_log,
    hardware_name,
    make_loader,
    run_from_argv,
    set_lr,
    warmup_lr,
)
from flipnet.training.pairs import PairSampler

RESUME_HARMLESS = ("resume", "max_minutes", "threads", "log_every", "sample_every", "save_every",
                   "keep_checkpoints", "num_workers", "render_workers")
# scikit-image's bundled pictures without a human face (astronaut and camera have one)
TEXTURE_IMAGES = ("brick", "cell", "chelsea", "coffee", "coins", "grass", "gravel",
                  "hubble_deep_field", "immunohistochemistry", "microaneurysms", "moon", "page",
                  "retina", "rocket", "text", "clock", "colorwheel")


@dataclass(frozen=True)
class FaceLocatorTrainConfig:
    """Everything a locator training run needs; saved as ``<out_dir>/train_config.json``."""

    data_dir: str = "out/prepared/utkface-128"  # `flipnet prepare` chips (train split used)
    chip_template: str = "flipnet"  # the template the chips are aligned to
    chip_size: int = 128
    out_dir: str = "out/face-locator"
    locator: FaceLocatorConfig = field(default_factory=FaceLocatorConfig)
    canvas: int = 512  # photo side the faces are rendered into and degraded at
    aspect_prob: float = 0.25  # share of photos with one side shortened (to 0.6-1 x canvas)
    eye_distance: tuple[float, float] = (30.0, 250.0)  # px at canvas size, log-uniform
    max_rotation: float = 20.0  # degrees
    reflect_prob: float = 0.5  # chip reflected outwards first (FFHQ-protocol sets' border)
    presets: tuple[str, ...] = ("gfpgan", "codeformer", "difface")  # published 512 px ranges
    clean_prob: float = 0.15  # share of photos left undegraded
    train_faces: int = 4000  # positives (one per chip)
    train_negatives: int = 1000
    val_faces: int = 300  # other train-split chips
    val_negatives: int = 300
    max_fp_rate: float = 0.01  # threshold: at most this share of val negatives accepted
    batch_size: int = 32
    lr: float = 2e-3
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05  # cosine decay ends at lr * this
    weight_decay: float = 1e-4
    steps: int = 4000
    max_minutes: float = 0.0
    presence_weight: float = 1.0
    smooth_l1_beta: float = 0.05  # in eye distances
    ema_decay: float = 0.998
    grad_clip: float = 1.0
    hflip: bool = True
    augment: bool = True  # move and recolour each cached photo at every draw (``augment``)
    augment_shift: float = 0.1
    augment_scale: tuple[float, float] = (0.8, 1.25)
    augment_rotation: float = 10.0
    mixed_precision: Literal["no", "bf16"] = "no"
    log_every: int = 25
    sample_every: int = 1000  # validation (val.jsonl) + a grid of points every N steps
    save_every: int = 1000
    keep_checkpoints: int = 2
    seed: int = 0
    threads: int = 2
    num_workers: int = 0
    render_workers: int = 2  # processes rendering the data set once (same result for any)
    resume: bool = False


# ------------------------------------------------------------------------- rendering


@functools.cache
def _texture_pool() -> tuple[np.ndarray, ...]:
    """scikit-image's bundled face-free pictures as uint8 RGB."""
    from skimage import data

    pool = []
    for name in TEXTURE_IMAGES:
        im = np.asarray(getattr(data, name)())
        im = np.repeat(im[..., None], 3, 2) if im.ndim == 2 else im[..., :3]
        pool.append(np.ascontiguousarray(im.astype(np.uint8)))
    return tuple(pool)


def texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A face-free uint8 (h, w, 3) picture: a rescaled crop of a bundled picture, or fractal
    noise with random shapes; colour-jittered and blurred."""
    if rng.random() < 0.5:
        src = _texture_pool()[rng.integers(len(TEXTURE_IMAGES))]
        src = np.rot90(src, rng.integers(4))
        sh, sw = src.shape[:2]
        f = rng.uniform(0.2, 1.0)
        ch, cw = max(8, int(sh * f)), max(8, int(sw * f))
        y, x = rng.integers(sh - ch + 1), rng.integers(sw - cw + 1)
        out = cv2.resize(np.ascontiguousarray(src[y:y + ch, x:x + cw]), (w, h),
                         interpolation=cv2.INTER_LINEAR).astype(np.float32)
    else:
        out = np.zeros((h, w, 3), np.float32) + rng.uniform(0, 255, 3)
        for octave in range(int(rng.integers(1, 5))):
            side = 2 ** (octave + 1 + int(rng.integers(3)))
            grid = rng.normal(0, 60 / (octave + 1), (side, side, 3)).astype(np.float32)
            out += cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
        for _ in range(int(rng.integers(0, 12))):
            color = tuple(float(c) for c in rng.uniform(0, 255, 3))
            cx, cy = int(rng.integers(w)), int(rng.integers(h))
            a, b = (int(v) for v in rng.integers(4, max(5, min(h, w) // 3), 2))
            kind = rng.integers(3)
            if kind == 0:
                cv2.ellipse(out, (cx, cy), (a, b), float(rng.uniform(0, 180)), 0, 360, color, -1)
            elif kind == 1:
                cv2.rectangle(out, (cx - a, cy - b), (cx + a, cy + b), color, -1)
            else:
                cv2.line(out, (cx, cy), (cx + a, cy - b), color, int(rng.integers(1, 8)))
    gain, bias = rng.uniform(0.5, 1.3, 3), rng.uniform(-40, 40, 3)
    out = out * gain + bias
    sigma = rng.uniform(0, 3)
    if sigma > 0.3:
        out = cv2.GaussianBlur(out, (0, 0), sigma)
    return np.clip(out, 0, 255).astype(np.uint8)


def placement(rng: np.random.Generator, points: np.ndarray, h: int, w: int,
              cfg: FaceLocatorTrainConfig) -> np.ndarray:
    """A random similarity (2, 3) taking a face with these 5 points into an (h, w) photo: eye
    distance log-uniform in ``cfg.eye_distance``, rotation within ``cfg.max_rotation``, every
    point inside the frame."""
    eye = float(np.linalg.norm(points[1] - points[0]))
    d = math.exp(rng.uniform(*np.log(cfg.eye_distance)))
    theta = math.radians(rng.uniform(-cfg.max_rotation, cfg.max_rotation))
    s = d / eye
    rot = s * np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    margin = 0.75 * d  # the centroid is at most ~0.7 eye distances from any point
    centre = [rng.uniform(margin, n - margin) if n > 2 * margin else n / 2 for n in (w, h)]
    mu = points.mean(0)
    return np.hstack([rot, (np.asarray(centre) - rot @ mu)[:, None]])


def render_face(rng: np.random.Generator, chip: np.ndarray, points: np.ndarray, h: int, w: int,
                cfg: FaceLocatorTrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """A uint8 (h, w, 3) photo showing ``chip`` (its 5 ``points``) at a random place, and the
    (5, 2) points in the photo. With ``cfg.reflect_prob`` the chip is first reflected outwards
    by 15-30% of its side (as an FFHQ-protocol image shows: the face, then partial mirrored
    copies; a reflection to infinity would tile whole faces and make "the" face ambiguous);
    the rest of the photo is a texture, under a feathered edge."""
    if rng.random() < cfg.reflect_prob:
        pad = round(rng.uniform(0.15, 0.3) * chip.shape[0])
        chip = cv2.copyMakeBorder(chip, pad, pad, pad, pad, cv2.BORDER_REFLECT_101)
        points = points + pad
    affine = placement(rng, points, h, w, cfg)
    moved = points @ affine[:, :2].T + affine[:, 2]  # (5, 2)
    face = cv2.warpAffine(chip, affine, (w, h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT).astype(np.float32)
    mask = cv2.warpAffine(np.ones(chip.shape[:2], np.float32), affine, (w, h),
                          flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    if mask.min() > 0.999:  # the face covers the photo
        return np.clip(face + 0.5, 0, 255).astype(np.uint8), moved
    eye = float(np.linalg.norm(moved[1] - moved[0]))
    mask = cv2.GaussianBlur(mask, (0, 0), max(0.5, 0.1 * eye))[..., None]  # feathered edge
    photo = face * mask + texture(rng, h, w).astype(np.float32) * (1 - mask)
    return np.clip(photo + 0.5, 0, 255).astype(np.uint8), moved


def degrade_photo(rgb: np.ndarray, cfg: DegradationConfig, seed: int) -> np.ndarray:
    """``degradations.pipeline.degrade_images`` of one uint8 photo with this seed, the blur
    (reflect padding, the same kernel) done by ``cv2.filter2D`` instead of the grouped conv."""
    params = sample_params(cfg, seed)
    x = rgb.astype(np.float32) / 127.5 - 1.0
    if params["blur"] is not None:
        kernel = kernel_from_params(params["blur"]).numpy()
        x = cv2.filter2D(x, -1, kernel, borderType=cv2.BORDER_REFLECT_101)
    x = torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)[None]
    return to_uint8(apply_params(x, [{**params, "blur": None}]))[0]


def make_sample(rng: np.random.Generator, chip: np.ndarray | None, points: np.ndarray,
                cfg: FaceLocatorTrainConfig) -> tuple[np.ndarray, np.ndarray, int]:
    """One letterboxed uint8 (S, S, 3) training photo, its points in [0, 1] units ((5, 2);
    zeros without a face) and the degradation used (0 = none, i = ``cfg.presets[i - 1]``).
    ``chip`` None makes a negative (textures only)."""
    h = w = cfg.canvas
    if rng.random() < cfg.aspect_prob:
        short = round(cfg.canvas * rng.uniform(0.6, 1.0))
        h, w = (short, w) if rng.random() < 0.5 else (h, short)
    if chip is None:
        photo, moved = texture(rng, h, w), None
    else:
        photo, moved = render_face(rng, chip, points, h, w, cfg)
    kind = 0 if rng.random() < cfg.clean_prob else int(rng.integers(len(cfg.presets))) + 1
    if kind:
        photo = degrade_photo(photo, get_preset(cfg.presets[kind - 1]),
                              int(rng.integers(2**62)))
    size = cfg.locator.image_size
    boxed, affine = letterbox(photo, size)
    units = (np.zeros((5, 2)) if moved is None
             else to_unit(moved @ affine[:, :2].T + affine[:, 2], size))
    return boxed, units.astype(np.float32), kind


# ------------------------------------------------------------------------- data sets


def pick_chips(cfg: FaceLocatorTrainConfig) -> tuple[list[Path], list[Path]]:
    """(training chips, validation chips): disjoint random train-split files of ``data_dir``."""
    paths = in_split(list_images(cfg.data_dir), "train")
    need = cfg.train_faces + cfg.val_faces
    if len(paths) < need:
        raise FlipnetError(f"{cfg.data_dir}: {len(paths)} train-split faces, fewer than "
                           f"train_faces + val_faces = {need}")
    order = np.random.default_rng(cfg.seed).permutation(len(paths))
    chosen = [paths[i] for i in order[:need]]
    return chosen[cfg.val_faces:], chosen[:cfg.val_faces]


def _render_one(job: tuple) -> tuple[np.ndarray, np.ndarray, int]:
    """Sample ``i`` of set ``which``: a function of (cfg.seed, which, i) alone."""
    cfg, path, which, i = job
    rng = np.random.default_rng([cfg.seed, which, i])
    points = get_template(cfg.chip_template, cfg.chip_size).astype(np.float64)
    chip = None if path is None else resize_square(load_image(path).rgb, cfg.chip_size)
    return make_sample(rng, chip, points, cfg)


def _single_thread() -> None:
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def build_set(cfg: FaceLocatorTrainConfig, chips: list[Path], negatives: int, which: int, *,
              progress: bool = True) -> dict[str, np.ndarray]:
    """{"images" (N, S, S, 3) uint8, "points" (N, 5, 2), "presence" (N,), "kind" (N,)}: one
    positive per chip, then ``negatives``; rendered by ``cfg.render_workers`` processes."""
    import multiprocessing

    jobs = [(cfg, path, which, i) for i, path in enumerate([*chips, *[None] * negatives])]
    bar = dict(total=len(jobs), desc=f"rendering {len(jobs)} photos", disable=not progress)
    if cfg.render_workers > 1:
        with multiprocessing.get_context("spawn").Pool(cfg.render_workers,
                                                       initializer=_single_thread) as pool:
            samples = list(tqdm(pool.imap(_render_one, jobs, chunksize=16), **bar))
    else:
        samples = [_render_one(job) for job in tqdm(jobs, **bar)]
    return {"images": np.stack([s[0] for s in samples]),
            "points": np.stack([s[1] for s in samples]),
            "presence": np.array([float(path is not None) for _, path, _, _ in jobs], np.float32),
            "kind": np.array([s[2] for s in samples], np.int64)}


DATA_VERSION = 1  # bump when the renderer changes: cached sets of older code are rebuilt
DATA_FIELDS = ("data_dir", "chip_template", "chip_size", "canvas", "aspect_prob", "eye_distance",
               "max_rotation", "reflect_prob", "presets", "clean_prob", "train_faces",
               "train_negatives", "val_faces", "val_negatives", "seed")


def cached_sets(cfg: FaceLocatorTrainConfig, *, progress: bool = True) -> dict[str, dict]:
    """{"train": set, "val": set} from ``out_dir/data-*.safetensors``, built first when absent
    or made with other data settings (the key: those settings, the net size and the chips)."""
    from safetensors.numpy import load_file, save_file

    train_chips, val_chips = pick_chips(cfg)
    settings = {k: getattr(cfg, k) for k in DATA_FIELDS} | {"size": cfg.locator.image_size}
    names = hashlib.sha1("\n".join(p.name for p in train_chips + val_chips).encode()).hexdigest()
    key = json.dumps({**settings, "chips": names, "version": DATA_VERSION}, sort_keys=True)
    out = {}
    for which, (name, chips, negatives) in enumerate(
            [("train", train_chips, cfg.train_negatives), ("val", val_chips, cfg.val_negatives)]):
        path = Path(cfg.out_dir) / f"data-{name}.safetensors"
        if path.is_file():
            from safetensors import safe_open

            with safe_open(str(path), "np") as f:
                if (f.metadata() or {}).get("key") == key:
                    out[name] = load_file(str(path))
                    continue
        out[name] = build_set(cfg, chips, negatives, which, progress=progress)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_file(out[name], str(tmp), metadata={"key": key})
        os.chmod(tmp, new_file_mode())  # safetensors creates 0600 files
        tmp.replace(path)
    return out


def augment(rng: np.random.Generator, img: np.ndarray, units: np.ndarray, present: float, *,
            shift: float, scale: tuple[float, float], rotation: float
            ) -> tuple[np.ndarray, np.ndarray, float]:
    """A cached letterbox moved (a random similarity about its centre: shift up to ``shift`` of
    the side, log-uniform ``scale``, rotation up to ``rotation`` degrees; uncovered parts are
    letterbox gray) and recoloured (contrast, per-channel gain, brightness, 10% gray); a face
    whose centre leaves the frame is no longer a face."""
    size = img.shape[0]
    s, th = math.exp(rng.uniform(*np.log(scale))), math.radians(rng.uniform(-rotation, rotation))
    rot = s * np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    c = np.full(2, (size - 1) / 2)
    affine = np.hstack([rot, (c + rng.uniform(-shift, shift, 2) * size - rot @ c)[:, None]])
    out = cv2.warpAffine(img, affine, (size, size), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=(PAD_VALUE,) * 3)
    out = out.astype(np.float32)
    if rng.random() < 0.1:
        out = np.repeat(out.mean(2, keepdims=True), 3, 2)
    gain = rng.uniform(0.7, 1.3) * rng.uniform(0.9, 1.1, 3)
    out = (out - 128) * gain + 128 + rng.uniform(-20, 20)
    moved = to_unit(from_unit(units, size) @ rot.T + affine[:, 2], size)
    centre = moved.mean(0)
    if present and not ((0 <= centre) & (centre <= 1)).all():
        present = 0.0
    return np.clip(out + 0.5, 0, 255).astype(np.uint8), moved.astype(np.float32), present


class LocatorSet(Dataset):
    """A cached set by ``(index, flip, seed)`` keys (``training.pairs.PairSampler``) -> (x (3, S,
    S) in [-1, 1], points (5, 2) in [0, 1] units, presence ()); a flip mirrors the points and
    swaps left and right; with ``cfg.augment`` the seed draws an ``augment``."""

    def __init__(self, data: dict[str, np.ndarray], cfg: FaceLocatorTrainConfig | None = None):
        self.data, self.cfg = data, cfg

    def __len__(self) -> int:
        return len(self.data["images"])

    def __getitem__(self, key):
        i, flip, seed = key if isinstance(key, tuple) else (key, False, 0)
        img, pts = self.data["images"][i], self.data["points"][i].copy()
        present = float(self.data["presence"][i])
        if flip:
            img = img[:, ::-1]
            if present:
                pts = pts[list(FLIP_ORDER)]
                pts[:, 0] = 1.0 - pts[:, 0]
        cfg = self.cfg
        if cfg is not None and cfg.augment:
            img, pts, present = augment(np.random.default_rng(seed), np.ascontiguousarray(img),
                                        pts, present, shift=cfg.augment_shift,
                                        scale=cfg.augment_scale, rotation=cfg.augment_rotation)
        return (to_tensor(np.ascontiguousarray(img))[0], torch.from_numpy(pts),
                torch.tensor(present, dtype=torch.float32))


# ------------------------------------------------------------------------- loss and checks


def eye_errors(points: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,) the larger of the two eye-centre errors, in true eye distances."""
    eye = (target[:, 1] - target[:, 0]).norm(dim=-1).clamp_min(1e-4)
    return (points[:, :2] - target[:, :2]).norm(dim=-1).amax(dim=1) / eye


def centre_targets(target: torch.Tensor, presence: torch.Tensor, g: int, *,
                   sigma: float = 0.25) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Targets on a g x g grid from points (B, 5, 2) in units: the centre heatmap (B, G, G), a
    Gaussian of ``sigma`` eye distances (at least 0.6 cells) around the mean of the 5 points with
    1 at its nearest cell (zeros without a face); the offsets (B, 5, 2, G, G) in cells; the eye
    distance in cells (B,)."""
    q = target * g - 0.5  # (B, 5, 2) cell coordinates: cell centres at integers
    centre, eye = q.mean(1), (q[:, 1] - q[:, 0]).norm(dim=-1).clamp_min(1e-3)  # (B, 2), (B,)
    cells = torch.arange(g, dtype=q.dtype, device=q.device)
    dx = cells[None, None, :] - centre[:, 0, None, None]  # (B, 1, G)
    dy = cells[None, :, None] - centre[:, 1, None, None]  # (B, G, 1)
    s = (sigma * eye).clamp_min(0.6)[:, None, None]
    heat = torch.exp(-(dx**2 + dy**2) / (2 * s**2)) * presence[:, None, None]  # (B, G, G)
    peak = centre.round().clamp(0, g - 1).long()
    b = torch.arange(len(q), device=q.device)
    heat[b, peak[:, 1], peak[:, 0]] = presence
    grid = torch.stack(torch.meshgrid(cells, cells, indexing="xy"))  # (2, G, G): x, y
    offsets = q[..., None, None] - grid  # (B, 5, 2, G, G)
    return heat, offsets, eye


def locator_loss(heat: torch.Tensor, offsets: torch.Tensor, target: torch.Tensor,
                 presence: torch.Tensor, *, beta: float = 0.05,
                 presence_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """{"presence": CenterNet's focal loss on the centre heatmap (Zhou et al. 2019, eq. 1; a
    photo without a face has every cell negative), "points": smooth-L1 of the offsets in eye
    distances on the cells near the centre (target heat > 0.3, weighted by it), "loss": their sum
    with ``presence_weight``}."""
    t_heat, t_off, eye = centre_targets(target, presence, heat.shape[-1])
    p = torch.sigmoid(heat).clamp(1e-4, 1 - 1e-4)
    pos = t_heat >= 1.0
    focal = torch.where(pos, (1 - p) ** 2 * torch.log(p),
                        (1 - t_heat) ** 4 * p**2 * torch.log(1 - p))
    focal = -focal.sum() / pos.sum().clamp_min(1)
    scale = eye[:, None, None, None, None]
    per = F.smooth_l1_loss(offsets / scale, t_off / scale, beta=beta, reduction="none")
    w = t_heat * (t_heat > 0.3)  # (B, G, G)
    pts = (per.mean(dim=(1, 2)) * w).sum() / w.sum().clamp_min(1e-6)
    return {"loss": pts + presence_weight * focal, "points": pts, "presence": focal}


@torch.no_grad()
def predict(model: FaceLocator, images: np.ndarray, *, batch_size: int = 64
            ) -> tuple[np.ndarray, np.ndarray]:
    """(points (N, 5, 2) in [0, 1] units, presence probabilities (N,)) of letterboxed images."""
    device = next(model.parameters()).device
    pts, probs = [], []
    for i in range(0, len(images), batch_size):
        p, logit = model.locate(to_tensor(images[i:i + batch_size]).to(device))
        pts.append(p.float().cpu())
        probs.append(torch.sigmoid(logit).float().cpu())
    return torch.cat(pts).numpy(), torch.cat(probs).numpy()


def evaluate(model: FaceLocator, data: dict[str, np.ndarray], presets: tuple[str, ...], *,
             max_fp_rate: float) -> dict:
    """Validation scores: the threshold that accepts at most ``max_fp_rate`` of the negatives,
    then per degradation the share of faces found (probability > threshold) and found at the
    right place (both eye centres within 0.25 true eye distances), and the median eye error."""
    pts, probs = predict(model, data["images"])
    pos = data["presence"] > 0.5
    neg_probs = probs[~pos]
    # the lowest threshold that at most max_fp_rate of the negatives exceed
    allowed = int(np.floor(max_fp_rate * len(neg_probs)))
    threshold = float(np.sort(neg_probs)[::-1][allowed]) if len(neg_probs) > allowed else 0.5
    err = eye_errors(torch.from_numpy(pts), torch.from_numpy(data["points"])).numpy()
    res = {"threshold": round(threshold, 4),
           "false_positive_rate": round(float(np.mean(neg_probs > threshold)), 4)
           if len(neg_probs) else None}
    for k, name in enumerate(("none", *presets)):
        sel = pos & (data["kind"] == k)
        if sel.any():
            found = probs[sel] > threshold
            res[name] = {"faces": int(sel.sum()), "found": round(float(found.mean()), 4),
                         "found_right_place": round(float((found & (err[sel] < 0.25)).mean()), 4),
                         "median_eye_error": round(float(np.median(err[sel])), 4)}
    found = probs[pos] > threshold
    res["all"] = {"faces": int(pos.sum()), "found": round(float(found.mean()), 4),
                  "found_right_place": round(float((found & (err[pos] < 0.25)).mean()), 4),
                  "median_eye_error": round(float(np.median(err[pos])), 4)}
    return res


def save_points_grid(path: Path, model: FaceLocator, data: dict[str, np.ndarray], *,
                     count: int = 16) -> Path:
    """Validation photos with the true (green) and predicted (red) points and the probability."""
    from flipnet.viz import save_grid

    pick = np.linspace(0, len(data["images"]) - 1, count).round().astype(int)  # faces + negatives
    pts, probs = predict(model, data["images"][pick])
    size = data["images"].shape[1]
    tiles = []
    for i, pred, p in zip(pick, pts, probs):
        tile = cv2.resize(data["images"][i], (2 * size, 2 * size), interpolation=cv2.INTER_NEAREST)
        marks = ([(data["points"][i], (0, 255, 0))] if data["presence"][i] else []) + [
            (pred, (255, 0, 0))]
        for units, color in marks:
            for x, y in from_unit(units, size) * 2 + 0.5:
                cv2.circle(tile, (int(x), int(y)), 3, color, -1)
        cv2.putText(tile, f"{p:.2f}", (4, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 0), 2)
        tiles.append(tile)
    return save_grid(path, np.stack(tiles), ncol=8)


# ------------------------------------------------------------------------- training


def _lr_at(cfg: FaceLocatorTrainConfig, step: int) -> float:
    """Linear warmup, then cosine decay to ``lr * min_lr_ratio`` at ``steps``."""
    if step <= cfg.warmup_steps:
        return warmup_lr(cfg.lr, step, cfg.warmup_steps)
    frac = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi
                                                                                    * frac)))


def _model_card(cfg: FaceLocatorTrainConfig, run: TrainingRun, evaluation: dict, n_params: int,
                command: str | None) -> str:
    rows = [f"| {k} | {v['faces']} | {v['found']:.3f} | {v['found_right_place']:.3f} | "
            f"{v['median_eye_error']:.3f} |" for k, v in evaluation.items()
            if isinstance(v, dict)]
    return "\n".join([
        f"# flipnet face locator ({cfg.locator.image_size} px letterbox)\n",
        f"- model: CNN, stride-2 stages {list(cfg.locator.widths)}, last three merged (FPN, "
        f"{cfg.locator.neck} channels) -> {cfg.locator.grid()}^2 grid of face-centre logits + "
        f"5-point offsets (CenterNet); {n_params / 1e3:.0f} k parameters",
        f"- data: train-split chips of `{cfg.data_dir}` ({cfg.train_faces} faces + "
        f"{cfg.train_negatives} face-free photos; validation: {cfg.val_faces} other train-split "
        f"faces + {cfg.val_negatives} face-free photos) rendered into {cfg.canvas} px photos "
        f"(eye distance {cfg.eye_distance[0]:g}-{cfg.eye_distance[1]:g} px, rotation "
        f"+-{cfg.max_rotation:g} deg; {cfg.reflect_prob:.0%} reflected outwards by 15-30% "
        f"first), degraded with {', '.join(cfg.presets)} at their published 512 px ranges "
        f"({cfg.clean_prob:.0%} clean)",
        "- negatives are synthetic (textures, scikit-image's face-free pictures): the false-"
        "positive rate on real photos without faces is not measured",
        f"- training: {run.progress.step} steps, batch {cfg.batch_size}, lr {cfg.lr} (cosine), "
        f"EMA {cfg.ema_decay}, seed {cfg.seed}; {run.progress.wall_seconds / 60:.1f} min on "
        f"{hardware_name(run.accelerator)} (after rendering the data)",
        f"- command: `{command or 'train_face_locator(cfg), see train_config.json'}`",
        f"- presence threshold {evaluation['threshold']:.4f}: the lowest that at most "
        f"{cfg.max_fp_rate:.0%} of the validation negatives exceed (false-positive rate "
        f"{evaluation['false_positive_rate']})",
        "- terms: trained on UTKFace-derived crops: non-commercial research use only.",
        "\n## Validation (train split, held in)\n",
        "| degradation | faces | found | found at the right place (eyes < 0.25 eye distance) | "
        "median eye error |", "|---|---|---|---|---|", *rows, ""])


def train_face_locator(cfg: FaceLocatorTrainConfig, *, command: str | None = None) -> Path:
    """Render (or reuse) the data, train (or resume), export ``<out_dir>/face-locator``."""
    cv2.setNumThreads(max(1, cfg.threads))
    run = TrainingRun(cfg, export="face-locator", harmless=RESUME_HARMLESS,
                      prepare_outputs=lambda: cached_sets(cfg))
    sets = cached_sets(cfg, progress=False)
    dataset, val = LocatorSet(sets["train"], cfg), sets["val"]
    if len(dataset) < cfg.batch_size:
        raise FlipnetError(f"{len(dataset)} training photos, fewer than one batch")
    sampler = PairSampler(len(dataset), seed=cfg.seed, hflip=cfg.hflip)
    loader = make_loader(dataset, sampler, cfg.batch_size, num_workers=cfg.num_workers)
    model = FaceLocator(cfg.locator)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model, opt, loader = run.accelerator.prepare(model, opt, loader)
    ema = EMA(run.accelerator.unwrap_model(model), decay=cfg.ema_decay)
    sample_model = FaceLocator(cfg.locator).to(run.device).eval()
    run.resume_or_start(ema)

    def validate(path: Path) -> Path:
        ema.copy_to(sample_model)
        append_log(run.out / "val.jsonl", {"step": run.progress.step,
                                           **evaluate(sample_model, val, cfg.presets,
                                                      max_fp_rate=cfg.max_fp_rate)})
        return save_points_grid(path, sample_model, val)

    batches = run.batches(loader, sampler)
    for step in run.steps(cfg.steps, desc="face locator", save_samples=validate):
        lr = set_lr(opt, _lr_at(cfg, step))
        x, target, presence = next(batches)
        heat, offsets = model(x)
        parts = locator_loss(heat, offsets, target, presence, beta=cfg.smooth_l1_beta,
                             presence_weight=cfg.presence_weight)
        run.optimizer_step(parts["loss"], opt, model.parameters(), step, grad_clip=cfg.grad_clip)
        ema.update(run.accelerator.unwrap_model(model))
        value = float(parts["loss"].detach())
        smooth = run.smoothed_loss(value)
        log = {k: float(v.detach()) for k, v in parts.items()}
        run.end_step(step, smooth, log={**log, "lr": lr}, postfix={"loss": f"{smooth:.4f}"})

    # export the EMA weights with the threshold chosen on the validation set
    def write(tmp: Path) -> str:
        ema.copy_to(sample_model)
        evaluation = evaluate(sample_model, val, cfg.presets, max_fp_rate=cfg.max_fp_rate)
        locator_cfg = dataclasses.replace(cfg.locator, presence_threshold=evaluation["threshold"])
        save_face_locator(tmp, sample_model, locator_cfg)
        write_bytes_atomic(tmp / "eval.json", json.dumps(evaluation, indent=1).encode())
        save_points_grid(run.out / "val_points.png", sample_model, val, count=32)
        return _model_card(cfg, run, evaluation, count_parameters(sample_model), command)

    return run.export(write)


if __name__ == "__main__":  # python -m flipnet.training.face_locator CONFIG.json [--resume]
    import sys

    run_from_argv(FaceLocatorTrainConfig, lambda cfg: train_face_locator(
        cfg, command="python -m flipnet.training.face_locator " + " ".join(sys.argv[1:])),
        "face_locator")
