"""Image input/output and flipnet's single value-range contract.

The contract, stated once:
  * on disk and in numpy: ``uint8`` arrays, ``(H, W, 3)`` RGB (alpha kept separately, ``(H, W)``);
  * in torch: ``float32`` tensors, ``(N, 3, H, W)``, values in ``[-1, 1]``.
``to_tensor`` and ``to_uint8`` are the only crossings between the two.

Reading accepts PNG, JPEG, WebP, BMP and TIFF; 8- and 16-bit; grayscale, RGB, RGBA, palette and
CMYK; EXIF orientation is applied. Every failure raises ``ImageReadError`` naming the file.
Writing is atomic (temporary file + rename) and refuses to overwrite an input.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from flipnet.errors import ImageReadError, OutputPathError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
MAX_PIXELS = 200_000_000  # about 14k x 14k; larger headers are treated as decompression bombs
_ALPHA_FORMATS = {".png", ".webp", ".tif", ".tiff"}


@dataclass
class LoadedImage:
    """A decoded image: ``rgb`` uint8 (H, W, 3), optional ``alpha`` uint8 (H, W)."""

    rgb: np.ndarray
    alpha: np.ndarray | None = None
    is_gray: bool = False
    bit_depth: int = 8
    path: str = ""
    info: dict = field(default_factory=dict)


def _to_8bit(arr: np.ndarray) -> np.ndarray:
    """Scale a 16-bit or 32-bit integer/float single-channel array to uint8."""
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        hi = 1.0 if float(np.nanmax(arr, initial=0.0)) <= 1.0 else 255.0
        return np.clip(np.nan_to_num(arr) / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
    # integer modes I;16 and I hold 16-bit samples in practice
    return np.clip(arr.astype(np.float64) / 257.0 + 0.5, 0, 255).astype(np.uint8)


_PIL_LIMIT_LOCK = threading.Lock()  # guards the brief change of PIL's global pixel limit
_EXIF_ORIENTATION = 0x0112


@contextlib.contextmanager
def _pil_pixel_limit(max_pixels: int):
    """Let PIL open up to ``max_pixels`` (its own bomb check fires at 89.5 MP); restored on exit."""
    with _PIL_LIMIT_LOCK:
        previous = Image.MAX_IMAGE_PIXELS
        if previous is not None and max_pixels > previous:
            Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = previous


def _check_path_text(path: str | os.PathLike, error) -> None:
    """Raise ``error(...)`` for a path the OS cannot take (a NUL byte makes os calls ValueError)."""
    if "\x00" in os.fsdecode(path):
        shown = repr(os.fsdecode(path))
        raise error(shown, "path contains a NUL byte") if error is ImageReadError else \
            error(f"{shown}: path contains a NUL byte")


def load_image(path: str | os.PathLike, *, max_pixels: int = MAX_PIXELS) -> LoadedImage:
    """Read an image file into the uint8 RGB (+ alpha) contract, or raise ``ImageReadError``.

    Images up to ``max_pixels`` load (PIL's smaller default limit is lifted for this call only);
    larger headers are refused before any pixel is decoded."""
    _check_path_text(path, ImageReadError)
    path = Path(path)
    if not path.exists():
        raise ImageReadError(path, "file does not exist")
    if path.is_dir():
        raise ImageReadError(path, "is a folder, not an image file")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with _pil_pixel_limit(max_pixels), warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked below
                im = Image.open(path)
            with im:
                w, h = im.size
                if w <= 0 or h <= 0:
                    raise ImageReadError(path, f"invalid image size {w}x{h}")
                if w * h > max_pixels:
                    raise ImageReadError(
                        path, f"image is {w}x{h} = {w * h:,} pixels, over the limit of "
                        f"{max_pixels:,} (possible decompression bomb)")
                im.load()
                fmt = im.format
                # exif_transpose copies the whole image even when there is nothing to turn
                if im.getexif().get(_EXIF_ORIENTATION, 1) in range(2, 9):
                    ImageOps.exif_transpose(im, in_place=True)
                return _decode(im, path, fmt)
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageReadError(path, f"over the limit of {max_pixels:,} pixels, decompression "
                             f"bomb refused ({e})") from None
    except UnidentifiedImageError:
        raise ImageReadError(path, "not a recognised image format") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        msg = str(e) or type(e).__name__
        if "truncated" in msg.lower():
            msg = f"file is truncated ({msg})"
        else:
            msg = f"corrupt or unreadable image data ({msg})"
        raise ImageReadError(path, msg) from None
    except MemoryError:
        raise ImageReadError(path, "not enough memory to decode this image") from None


def _rgb_array(im: Image.Image) -> np.ndarray:
    """An RGB PIL image as uint8 (H, W, 3), filled in row strips: ``np.asarray(im)`` would hold
    two extra full-size byte copies (tobytes' chunks and their join) at its peak."""
    w, h = im.size
    out = np.empty((h, w, 3), np.uint8)
    rows = max(1, 2**24 // max(1, 3 * w))  # about 16 MB per strip
    for top in range(0, h, rows):
        out[top:top + rows] = np.asarray(im.crop((0, top, w, min(h, top + rows))))
    return out


def _decode(im: Image.Image, path: Path, fmt: str | None) -> LoadedImage:
    """Turn an opened PIL image of any mode into a LoadedImage."""
    mode = im.mode
    alpha = None
    is_gray = False
    bit_depth = 8
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im)
        bit_depth = 16 if mode.startswith("I") else 32
        g = _to_8bit(arr)
        rgb = np.repeat(g[:, :, None], 3, axis=2)
        is_gray = True
    elif mode in ("L", "1"):
        g = np.asarray(im.convert("L"))
        rgb = np.repeat(g[:, :, None], 3, axis=2)
        is_gray = True
    elif mode == "LA":
        a = np.asarray(im)
        rgb = np.repeat(a[:, :, :1], 3, axis=2)
        alpha = a[:, :, 1].copy()
        is_gray = True
    elif mode in ("RGBA", "RGBa", "PA"):
        a = np.asarray(im.convert("RGBA"))
        rgb, alpha = a[:, :, :3].copy(), a[:, :, 3].copy()
    elif mode == "RGB":  # no convert("RGB"): that would be a full copy
        rgb = _rgb_array(im)
    else:  # CMYK, YCbCr, LAB, HSV, RGBX...
        rgb = _rgb_array(im.convert("RGB"))
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageReadError(path, f"unexpected decoded shape {rgb.shape}")
    if alpha is not None and bool((alpha == 255).all()):
        alpha = None
    return LoadedImage(rgb=rgb, alpha=alpha, is_gray=is_gray, bit_depth=bit_depth,
                       path=str(path), info={"format": fmt, "mode": mode})


def check_distinct(output: str | os.PathLike, *inputs: str | os.PathLike) -> None:
    """Raise ``OutputPathError`` if ``output`` is the same file as any of ``inputs``."""
    _check_path_text(output, OutputPathError)
    out = Path(output).resolve()
    for src in inputs:
        if src is not None and Path(src).resolve() == out:
            raise OutputPathError(f"{output}: output path equals the input; refusing to overwrite")


def save_image(path: str | os.PathLike, rgb: np.ndarray, alpha: np.ndarray | None = None, *,
               source: str | os.PathLike | None = None, quality: int = 95) -> Path:
    """Write uint8 RGB (and alpha where the format holds one) atomically; never over ``source``."""
    _check_path_text(path, OutputPathError)
    path = Path(path)
    if source is not None:
        check_distinct(path, source)
    ext = path.suffix.lower()
    if ext not in IMAGE_EXTENSIONS:
        raise OutputPathError(f"{path}: unsupported output extension {ext!r}")
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"save_image expects uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}")
    if alpha is not None and ext in _ALPHA_FORMATS:
        im = Image.fromarray(np.dstack([rgb, np.asarray(alpha, np.uint8)]), "RGBA")
    else:
        im = Image.fromarray(rgb, "RGB")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=ext + ".tmp", dir=path.parent)
    except OSError as e:
        raise OutputPathError(f"{path}: cannot write to this folder ({e.strerror or e})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            kwargs = {"quality": quality} if ext in (".jpg", ".jpeg", ".webp") else {}
            fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}.get(
                ext, ext[1:].upper())
            im.save(f, format=fmt, **kwargs)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, new_file_mode())  # mkstemp makes 0600 files
        os.replace(tmp, path)
    except OSError as e:
        _silent_unlink(tmp)
        raise OutputPathError(f"{path}: could not be written ({e.strerror or e})") from None
    except BaseException:
        _silent_unlink(tmp)
        raise
    return path


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write bytes (JSON, reports) atomically: readers see the old file or the new, never half."""
    _check_path_text(path, OutputPathError)
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise OutputPathError(f"{path}: cannot write to this folder ({e.strerror or e})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    except OSError as e:
        _silent_unlink(tmp)
        raise OutputPathError(f"{path}: could not be written ({e.strerror or e})") from None
    return path


def remove_partial_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the ``.NAME.XXXX.tmp`` files an atomic write leaves when its process is killed
    (call before a run restarts in ``folder``; not while another process writes there)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_file() and p.name.startswith(".")
             and p.name.endswith(".tmp")]
    for p in found:
        _silent_unlink(str(p))
    return found


def new_file_mode() -> int:
    """0o666 minus the process umask: what a plain open() would give a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _silent_unlink(p: str) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


def list_images(folder: str | os.PathLike, *, recursive: bool = True) -> list[Path]:
    """Image files under ``folder`` by extension, sorted (so runs and shards are reproducible)."""
    _check_path_text(folder, ImageReadError)
    folder = Path(folder)
    if folder.is_file():
        return [folder]
    if not folder.is_dir():
        raise ImageReadError(folder, "no such file or folder")
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in it if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                  and not p.name.startswith("."))


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) or (N, H, W, 3) -> float32 (N, 3, H, W) in [-1, 1]."""
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8:
        raise ValueError(f"to_tensor expects uint8, got {arr.dtype}")
    if arr.ndim == 3:
        arr = arr[None]
    arr = np.ascontiguousarray(arr) if arr.flags.writeable else np.array(arr)
    t = torch.from_numpy(arr).permute(0, 3, 1, 2).float()
    return t / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (N, 3, H, W) in [-1, 1] -> uint8 (N, H, W, 3), rounded and clipped."""
    if x.ndim == 3:
        x = x[None]
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5).round()
    return x.to(torch.uint8).permute(0, 2, 3, 1).numpy()


@dataclass
class BatchLog:
    """Counts of a folder run: finished, skipped (with the reason for each), for the summary."""

    done: int = 0
    skipped: dict[str, str] = field(default_factory=dict)

    def skip(self, path, reason: str) -> None:
        """Record a skipped file and warn on stderr (the run continues)."""
        self.skipped[str(path)] = reason
        warnings.warn(f"skipped {path}: {reason}", stacklevel=2)

    def summary(self) -> str:
        """One line for the end of a run."""
        return f"{self.done} done, {len(self.skipped)} skipped"
