"""The Python API: ``Restorer`` for photos and faces, ``Degrader`` for synthetic LQ faces.

    from flipnet import Restorer, Degrader
    r = Restorer.load("restorer")          # a method name, or a weights folder path
    result = r.restore(photo)              # numpy uint8 RGB or PIL image in, same type out
    result.image, result.faces[0].box
    r.restore_batch([photo1, photo2])      # one forward pass over all their faces
    r.restore_video("clip.mp4", "out")     # -> out/restored_videos/clip.mp4, audio kept
    lq, params = Degrader("codeformer", seed=0).degrade(face)
    finetune(FinetuneConfig(restorer="restorer-128", unlabeled="real_lq_faces/"))

The API sits on top of the layers: it may compose pipelines and training (``finetune`` makes
pseudo targets with ``pipelines.pseudo_targets`` and then trains with ``training.finetune``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from flipnet.io import to_tensor, to_uint8

if TYPE_CHECKING:
    from flipnet.training.finetune import FinetuneConfig


def _to_array(image) -> tuple[np.ndarray, bool, np.ndarray | None]:
    """numpy uint8 RGB or PIL image -> (rgb, was_pil, alpha)."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        Image = None
    if Image is not None and isinstance(image, Image.Image):
        alpha = np.asarray(image.getchannel("A")) if image.mode in ("RGBA", "LA") else None
        return np.asarray(image.convert("RGB")), True, alpha
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"expected uint8 (H, W, 3|4) RGB(A), got {arr.dtype} {arr.shape}")
    if arr.shape[2] == 4:
        return np.ascontiguousarray(arr[:, :, :3]), False, arr[:, :, 3]
    return arr, False, None


def _from_array(rgb: np.ndarray, as_pil: bool, alpha: np.ndarray | None):
    if not as_pil:
        return rgb if alpha is None else np.dstack([rgb, alpha])
    from PIL import Image

    return Image.fromarray(rgb if alpha is None else np.dstack([rgb, alpha]))


@dataclass
class Result:
    """A restored image (same type as the input) and its faces (boxes, landmarks, crops)."""

    image: object
    faces: list


class Restorer:
    """Restore every face of a photo (or an aligned crop) with one restoration method."""

    def __init__(self, method, *, upscale: float = 1.0, aligned: bool = False,
                 only_center_face: bool = False):
        self.method = method
        self.upscale, self.aligned, self.only_center_face = upscale, aligned, only_center_face

    @classmethod
    def load(cls, name_or_path: str = "restorer", *, method: str | None = None,
             device: str = "auto", batch_size: int = 16, steps: int | None = None,
             seed: int | None = None, fidelity: float | None = None, backend: str = "torch",
             upscale: float = 1.0, aligned: bool = False,
             only_center_face: bool = False) -> Restorer:
        """A method by name (restorer, finetuned, prior, flipnet, bicubic, classical, input) or a
        restorer weights folder; ``steps``/``seed``/``fidelity`` only for prior and flipnet (see
        ``flipnet.pipelines.methods.make_method``)."""
        from flipnet.pipelines.methods import METHODS, make_method

        if method is None:
            method, weights = (name_or_path, None) if name_or_path in METHODS else \
                ("restorer", name_or_path)
        else:
            weights = name_or_path
        made = make_method(method, weights, device=device, batch_size=batch_size, steps=steps,
                           seed=seed, fidelity=fidelity, backend=backend)
        return cls(made, upscale=upscale, aligned=aligned, only_center_face=only_center_face)

    def restore(self, image) -> Result:
        """Restore one photo: numpy uint8 RGB(A) or PIL in, the same type out."""
        from flipnet.pipelines.restore import restore_photo

        rgb, as_pil, alpha = _to_array(image)
        res = restore_photo(rgb, self.method, aligned=self.aligned, upscale=self.upscale,
                            only_center_face=self.only_center_face, alpha=alpha)
        return Result(image=_from_array(res.image, as_pil, res.alpha), faces=res.faces)

    def restore_batch(self, images) -> list[Result]:
        """Restore several photos, with one forward pass over the faces of all of them."""
        from flipnet.pipelines.restore import restore_frames, scale_alpha

        if self.aligned:
            return [self.restore(im) for im in images]
        arrays = [_to_array(im) for im in images]  # (rgb, was_pil, alpha) each
        done = restore_frames([a[0] for a in arrays], self.method, upscale=self.upscale,
                              only_center_face=self.only_center_face)
        return [Result(image=_from_array(r.image, as_pil, scale_alpha(alpha, r.image)),
                       faces=r.faces) for r, (_, as_pil, alpha) in zip(done, arrays)]

    def restore_video(self, path, out_dir, **options) -> dict:
        """Restore a video file into ``out_dir/restored_videos/<name>.mp4`` (audio kept)."""
        from flipnet.pipelines.video import restore_video

        return restore_video(path, out_dir, self.method, upscale=self.upscale,
                             only_center_face=self.only_center_face, aligned=self.aligned,
                             **options)


class Degrader:
    """HQ face -> LQ face: a naive-pipeline preset (gfpgan, codeformer, difface, raw) or
    ``"flipnet"``, FLIPNET's learned degradation mode (``weights=`` its folder or shipped name)."""

    def __init__(self, preset: str = "gfpgan", *, seed: int = 0, face_size: int | None = None,
                 weights: str | None = None, steps: int = 50, device: str = "auto"):
        self.seed, self.steps, self._count = seed, steps, 0
        self.net = self.cfg = None
        if preset == "flipnet":
            from flipnet.device import resolve_device
            from flipnet.models.flipnet import load_flipnet
            from flipnet.weights import DEFAULT_WEIGHTS, resolve_weights

            folder = resolve_weights(weights or DEFAULT_WEIGHTS["flipnet"])
            self.net = load_flipnet(folder, prior=None, device=resolve_device(device))
            return
        from flipnet.degradations.presets import get_preset, preset_for_size

        self.cfg = preset_for_size(preset, face_size) if face_size else get_preset(preset)

    def degrade(self, image):
        """Degrade one image; returns (LQ of the same type, the sampled parameters / settings)."""
        import torch

        rgb, as_pil, alpha = _to_array(image)
        seed = self.seed + self._count
        self._count += 1
        with torch.no_grad():
            if self.net is not None:
                from flipnet.diffusion.flipnet_sampling import flipnet_degrade

                lq = flipnet_degrade(self.net, to_tensor(rgb), steps=self.steps, seed=seed)
                params = {"method": "flipnet", "steps": self.steps, "seed": seed}
            else:
                from flipnet.degradations.pipeline import degrade_images

                lq, batch_params = degrade_images(to_tensor(rgb), self.cfg, seed=seed)
                params = batch_params[0]
        return _from_array(to_uint8(lq)[0], as_pil, alpha), params


def finetune(cfg: FinetuneConfig) -> Path:
    """``flipnet finetune``: pseudo targets for ``cfg.unlabeled`` under ``cfg.out/pseudo``
    (resumable), then fine-tuning ``cfg.restorer`` on them; returns the exported weights folder."""
    from flipnet.pipelines.pseudo_targets import PseudoTargetConfig, make_pseudo_targets
    from flipnet.training.finetune import finetune_on_pairs

    pseudo = Path(cfg.out) / "pseudo"
    make_pseudo_targets(cfg.unlabeled, pseudo, PseudoTargetConfig(
        restorer=cfg.restorer, prior=cfg.prior, respaced_steps=cfg.respaced_steps, t0=cfg.t0,
        tau=cfg.tau, factor=cfg.factor, seed=cfg.seed, split=cfg.split, limit=cfg.limit,
        device=cfg.device))
    return finetune_on_pairs(cfg, pseudo)
