"""Paste restored face crops back into the whole image with a feathered mask (no seam).

The crop is warped back with the inverse of the alignment affine; a mask of the crop square,
eroded by the feather width and Gaussian-blurred over that width in crop pixels (so its cost does
not grow with the photo), is warped the same way: 0 at the crop's edge and 1 well inside it. Pixels the mask does not reach are returned
unchanged, bit for bit.
"""

from __future__ import annotations

import numpy as np

from flipnet.errors import ConfigError
from flipnet.faces.align import compose_affine, invert_affine

DEFAULT_FEATHER = 0.06  # transition width as a fraction of the pasted crop's side (facexlib ~0.1)


def upscale_image(image: np.ndarray, upscale: float) -> np.ndarray:
    """Resize a uint8 (H, W, 3) image by ``upscale`` with Lanczos (the pasting background)."""
    import cv2

    if upscale == 1.0:
        return image.copy()
    h, w = image.shape[:2]
    size = (max(1, round(w * upscale)), max(1, round(h * upscale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_LANCZOS4)


def _upscaled_to_original(original_hw: tuple[int, int], upscaled_hw: tuple[int, int]) -> np.ndarray:
    """(2, 3) map from upscaled-image pixels to original-image pixels (cv2 pixel centres)."""
    fx = upscaled_hw[1] / original_hw[1]
    fy = upscaled_hw[0] / original_hw[0]
    return np.array([[1 / fx, 0, 0.5 / fx - 0.5], [0, 1 / fy, 0.5 / fy - 0.5]])


def _check(image: np.ndarray, crop: np.ndarray, affine: np.ndarray) -> None:
    for name, arr in (("image", image), ("restored_crop", crop)):
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"paste_face expects {name} uint8 (H, W, 3), got {arr.dtype} {arr.shape}")
    if np.asarray(affine).shape != (2, 3):
        raise ValueError(f"paste_face expects a (2, 3) affine, got {np.asarray(affine).shape}")


def feathered_mask(h: int, w: int, feather: float) -> np.ndarray:
    """float32 (h, w) paste mask: eroded by ``feather`` x width, then blurred over that width."""
    import cv2

    width = int(round(feather * w))
    if width <= 0:
        return np.ones((h, w), np.float32)
    mask = np.zeros((h, w), np.float32)
    mask[width:h - width, width:w - width] = 1.0
    return cv2.GaussianBlur(mask, (2 * width + 1, 2 * width + 1), width / 2.0,
                            borderType=cv2.BORDER_CONSTANT)


def _blend(background: np.ndarray, crop: np.ndarray, affine: np.ndarray, feather: float,
           weight: np.ndarray | None = None) -> None:
    """Blend ``crop`` (its ``affine`` maps background px -> crop px) into ``background`` in place;
    ``weight`` (crop-sized, in [0, 1]) scales the paste mask per crop pixel."""
    import cv2

    h, w = background.shape[:2]
    ch, cw = crop.shape[:2]
    mask = feathered_mask(ch, cw, feather)
    if weight is not None:
        if weight.shape != (ch, cw):
            raise ValueError(f"paste weight {weight.shape} does not match the crop {(ch, cw)}")
        mask = mask * np.clip(weight, 0.0, 1.0).astype(np.float32)
    inv = invert_affine(affine)  # crop px -> background px
    scale = float(np.sqrt(abs(np.linalg.det(inv[:, :2]))))  # background px per crop px
    if scale < 0.5:  # shrinking a lot: area-average the crop first to avoid aliasing
        nw, nh = max(2, round(cw * scale)), max(2, round(ch * scale))
        small_to_crop = np.array([[cw / nw, 0, 0.5 * cw / nw - 0.5], [0, ch / nh, 0.5 * ch / nh - 0.5]])
        crop = cv2.resize(crop, (nw, nh), interpolation=cv2.INTER_AREA)
        mask = cv2.resize(mask, (nw, nh), interpolation=cv2.INTER_AREA)
        inv = compose_affine(inv, small_to_crop)
        ch, cw = nh, nw

    # region of interest: bounding box of the warped crop square, clipped to the image
    corners = np.array([[-0.5, -0.5], [cw - 0.5, -0.5], [-0.5, ch - 0.5], [cw - 0.5, ch - 0.5]])
    pts = corners @ inv[:, :2].T + inv[:, 2]
    x0, y0 = (max(0, int(np.floor(v))) for v in pts.min(0))
    x1 = min(w, int(np.ceil(pts[:, 0].max())) + 1)
    y1 = min(h, int(np.ceil(pts[:, 1].max())) + 1)
    if x1 <= x0 or y1 <= y0:
        return  # the face lies entirely outside the image
    roi_inv = inv.copy()
    roi_inv[:, 2] -= (x0, y0)
    size = (x1 - x0, y1 - y0)
    face = cv2.warpAffine(crop, roi_inv, size, flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
    # feathered in crop pixels (cheap at any photo size), then warped: 0 at the edge, 1 inside
    mask = cv2.warpAffine(mask, roi_inv, size, flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    mask = mask[:, :, None]  # (h', w', 1)
    region = background[y0:y1, x0:x1].astype(np.float32)
    blended = region * (1.0 - mask) + face * mask
    background[y0:y1, x0:x1] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def to_gray_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) -> the same shape with R = G = B = luma (ITU-R BT.601)."""
    import cv2

    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return np.repeat(gray[:, :, None], 3, axis=2)


def _rescale_affine(affine: np.ndarray, crop: np.ndarray, affine_size: int | None) -> np.ndarray:
    """Adapt an image -> crop affine made for ``affine_size`` px crops to this crop's size."""
    affine = np.asarray(affine, np.float64)
    if affine_size is None or affine_size == crop.shape[1]:
        return affine
    return affine * (crop.shape[1] / affine_size)  # templates scale linearly with the crop size


def paste_faces(image: np.ndarray, restored_crops: list[np.ndarray], affines: list[np.ndarray], *,
                upscale: float = 1.0, feather: float = DEFAULT_FEATHER, is_gray: bool = False,
                base_is_upscaled: bool = False, affine_size: int | None = None,
                weights: list[np.ndarray | None] | None = None) -> np.ndarray:
    """Paste several restored crops (each with its image -> crop affine) one after another.

    ``weights``: per face, None or a crop-sized map in [0, 1] that scales the paste mask (0
    keeps the photo's own pixels there; see ``pipelines.keep_detail``).

    ``base_is_upscaled``: ``image`` is already the upscaled background (e.g. from
    ``upscale_image`` or an earlier paste), so only the faces are warped at ``upscale``.
    ``affine_size``: crop size the affines were made for, if the restored crops differ (e.g.
    aligned at 128, restored at 512).
    """
    if not upscale > 0:
        raise ConfigError(f"upscale must be > 0, got {upscale}")
    if not 0 <= feather < 0.5:
        raise ConfigError(f"feather must be in [0, 0.5), got {feather}")
    if len(restored_crops) != len(affines):
        raise ValueError(f"{len(restored_crops)} crops but {len(affines)} affines")
    image = np.asarray(image)
    if base_is_upscaled:
        out = image.copy()
        to_original = np.array([[1 / upscale, 0, 0.5 / upscale - 0.5],
                                [0, 1 / upscale, 0.5 / upscale - 0.5]])
    else:
        out = upscale_image(image, upscale)
        to_original = _upscaled_to_original(image.shape[:2], out.shape[:2])
    weights = [None] * len(affines) if weights is None else weights
    if len(weights) != len(affines):
        raise ValueError(f"{len(weights)} paste weights for {len(affines)} faces")
    for crop, affine, weight in zip(restored_crops, affines, weights):
        crop = np.asarray(crop)
        _check(image, crop, affine)
        affine = _rescale_affine(affine, crop, affine_size)
        _blend(out, crop, compose_affine(affine, to_original), feather, weight)
    return to_gray_rgb(out) if is_gray else out


def paste_face(image: np.ndarray, restored_crop: np.ndarray, affine: np.ndarray, *,
               upscale: float = 1.0, feather: float = DEFAULT_FEATHER, is_gray: bool = False,
               base_is_upscaled: bool = False, affine_size: int | None = None) -> np.ndarray:
    """Warp a restored crop back into ``image`` (optionally upscaled) and blend it seamlessly.

    ``affine`` is ``AlignedFace.affine`` (image px -> crop px). With ``upscale`` != 1 the
    background is Lanczos-resized and the face warped at that scale. ``feather``: transition
    width as a fraction of the pasted crop side. ``is_gray``: convert the result to gray (for
    grayscale inputs). uint8 in and out; see ``paste_faces`` for the other options.
    """
    return paste_faces(image, [restored_crop], [affine], upscale=upscale, feather=feather,
                       is_gray=is_gray, base_is_upscaled=base_is_upscaled,
                       affine_size=affine_size)
