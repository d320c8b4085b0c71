"""Image I/O: every format and mode the issue lists, EXIF orientation, bad files, atomic writes."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flipnet.errors import ImageReadError, OutputPathError
from flipnet.io import (
    BatchLog,
    check_distinct,
    list_images,
    load_image,
    save_image,
    to_tensor,
    to_uint8,
)


@pytest.fixture
def rgb() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)


@pytest.mark.parametrize("ext", [".png", ".bmp", ".tif", ".webp"])
def test_lossless_round_trip(tmp_path, rgb, ext):
    kwargs = {"lossless": True} if ext == ".webp" else {}
    p = tmp_path / f"a{ext}"
    Image.fromarray(rgb).save(p, **kwargs)
    out = load_image(p)
    assert out.rgb.shape == (24, 32, 3) and out.rgb.dtype == np.uint8
    np.testing.assert_array_equal(out.rgb, rgb)
    assert out.alpha is None and not out.is_gray


def test_jpeg_reads_close(tmp_path, astronaut):
    p = tmp_path / "a.jpg"
    Image.fromarray(astronaut).save(p, quality=95)
    out = load_image(p)
    assert out.rgb.shape == astronaut.shape
    assert np.abs(out.rgb.astype(int) - astronaut).mean() < 4


def test_grayscale_8_and_16_bit(tmp_path):
    g8 = np.arange(256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(g8, "L").save(tmp_path / "g8.png")
    out = load_image(tmp_path / "g8.png")
    assert out.is_gray and out.rgb.shape == (16, 16, 3)
    np.testing.assert_array_equal(out.rgb[:, :, 0], g8)
    np.testing.assert_array_equal(out.rgb[:, :, 1], g8)
    g16 = (g8.astype(np.uint16) * 257)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    out16 = load_image(tmp_path / "g16.png")
    assert out16.bit_depth == 16 and out16.is_gray
    np.testing.assert_array_equal(out16.rgb[:, :, 0], g8)


def test_16bit_rgb_tiff(tmp_path):
    import cv2

    rgb16 = (np.random.default_rng(1).integers(0, 65536, (8, 8, 3))).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "c16.tif"), rgb16[:, :, ::-1])
    out = load_image(tmp_path / "c16.tif")
    expected = np.clip(rgb16 / 257.0 + 0.5, 0, 255).astype(np.uint8)
    assert out.rgb.shape == (8, 8, 3)
    assert np.abs(out.rgb.astype(int) - expected).max() <= 1


def test_rgba_alpha_carried_through(tmp_path, rgb):
    alpha = np.tile(np.linspace(0, 255, 32, dtype=np.uint8), (24, 1))
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    np.testing.assert_array_equal(out.alpha, alpha)
    np.testing.assert_array_equal(out.rgb, rgb)
    save_image(tmp_path / "b.png", out.rgb, out.alpha)
    back = load_image(tmp_path / "b.png")
    np.testing.assert_array_equal(back.alpha, alpha)


def test_palette_and_cmyk(tmp_path, rgb):
    Image.fromarray(rgb).quantize(16).save(tmp_path / "p.png")
    out = load_image(tmp_path / "p.png")
    assert out.rgb.shape == (24, 32, 3)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg", quality=100)
    out = load_image(tmp_path / "c.jpg")
    assert out.rgb.shape == (24, 32, 3)
    assert np.abs(out.rgb.astype(int) - rgb).mean() < 20


def test_exif_orientation_applied(tmp_path):
    im = np.zeros((10, 20, 3), np.uint8)
    im[:, :5] = 255  # white band on the left
    pil = Image.fromarray(im)
    exif = pil.getexif()
    exif[0x0112] = 6  # rotate 90 CW on display
    pil.save(tmp_path / "o.jpg", exif=exif, quality=100)
    out = load_image(tmp_path / "o.jpg")
    assert out.rgb.shape == (20, 10, 3)
    assert out.rgb[:5].mean() > 200 and out.rgb[-5:].mean() < 50  # band is now on top


def test_bad_inputs_raise_one_error_naming_the_file(tmp_path, astronaut):
    Image.fromarray(astronaut).save(tmp_path / "good.jpg")
    data = (tmp_path / "good.jpg").read_bytes()
    cases = {
        "empty.png": b"",
        "text.png": b"hello, I am not an image\n" * 10,
        "truncated.jpg": data[: len(data) // 3],
        "corrupt.png": b"\x89PNG\r\n\x1a\n" + os.urandom(200),
    }
    for name, payload in cases.items():
        (tmp_path / name).write_bytes(payload)
    for name in [*cases, "missing.png"]:
        with pytest.raises(ImageReadError) as e:
            load_image(tmp_path / name)
        assert name in str(e.value)
        assert e.value.problem


def _png_header_only(w: int, h: int) -> bytes:
    def chunk(kind, body):
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def test_decompression_bomb_refused_before_decoding(tmp_path):
    p = tmp_path / "bomb.png"
    p.write_bytes(_png_header_only(60000, 60000))
    with pytest.raises(ImageReadError, match="decompression bomb"):
        load_image(p)
    with pytest.raises(ImageReadError, match="limit"):
        load_image(_small(tmp_path), max_pixels=10)


def _small(tmp_path: Path) -> Path:
    p = tmp_path / "small.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(p)
    return p


def test_save_refuses_input_path_and_is_atomic(tmp_path, rgb, monkeypatch):
    src = tmp_path / "in.png"
    save_image(src, rgb)
    with pytest.raises(OutputPathError, match="equals the input"):
        save_image(src, rgb, source=src)
    with pytest.raises(OutputPathError):
        check_distinct(tmp_path / "." / "in.png", src)
    # a failure mid-write leaves the old file intact and no temp file behind
    before = src.read_bytes()

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", boom)
    with pytest.raises(OutputPathError, match="No space left"):
        save_image(src, np.zeros_like(rgb))
    assert src.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["in.png"]


def test_read_only_folder_gives_clear_error(tmp_path, rgb):
    if os.geteuid() == 0:
        pytest.skip("root ignores folder permissions")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    with pytest.raises(OutputPathError, match="cannot write"):
        save_image(ro / "x.png", rgb)


def test_list_images_sorted_and_filtered(tmp_path, rgb):
    for name in ["b.png", "a.JPG", "sub/c.webp", "notes.txt", ".hidden.png"]:
        p = tmp_path / name
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"x")
    names = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert names == ["a.JPG", "b.png", "sub/c.webp"]
    with pytest.raises(ImageReadError, match="no such file"):
        list_images(tmp_path / "nope")


def test_tensor_contract_round_trip(rgb):
    t = to_tensor(rgb)
    assert t.shape == (1, 3, 24, 32) and t.dtype == torch.float32
    assert t.min() >= -1 and t.max() <= 1
    np.testing.assert_array_equal(to_uint8(t)[0], rgb)
    assert to_uint8(torch.full((1, 3, 2, 2), 5.0)).max() == 255
    with pytest.raises(ValueError):
        to_tensor(rgb.astype(np.float32))


def test_batch_log_counts():
    log = BatchLog()
    log.done += 2
    with pytest.warns(UserWarning, match="skipped x.png: corrupt"):
        log.skip("x.png", "corrupt")
    assert log.summary() == "2 done, 1 skipped"


def test_outputs_get_normal_permissions(tmp_path, rgb):
    import stat

    old = os.umask(0o022)
    try:
        p = save_image(tmp_path / "x.png", rgb)
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == 0o644


def _solid_png(path: Path, w: int, h: int, rgb: tuple[int, int, int]) -> Path:
    """A w x h solid-colour PNG written without holding the pixels (row filter 'Up' = zeros)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    z = zlib.compressobj(1)
    idat = [z.compress(b"\0" + bytes(rgb) * w)]
    up_row = b"\2" + b"\0" * (3 * w)  # each row equals the one above
    idat += [z.compress(up_row) for _ in range(h - 1)]
    idat.append(z.flush())
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(idat))
                     + chunk(b"IEND", b""))
    return path


def test_photo_over_pils_limit_but_under_max_pixels_loads(tmp_path):
    w = h = 9500  # 90.25 MP: over PIL's own 89.5 MP bomb limit, under flipnet's 200 MP
    assert w * h > Image.MAX_IMAGE_PIXELS
    limit_before = Image.MAX_IMAGE_PIXELS
    p = _solid_png(tmp_path / "huge.png", w, h, (200, 30, 90))
    assert p.stat().st_size < 2_000_000
    img = load_image(p)
    assert img.rgb.shape == (h, w, 3) and img.rgb.dtype == np.uint8
    assert tuple(img.rgb[0, 0]) == (200, 30, 90) and tuple(img.rgb[-1, -1]) == (200, 30, 90)
    assert tuple(img.rgb[h // 2, w // 3]) == (200, 30, 90)
    assert Image.MAX_IMAGE_PIXELS == limit_before  # PIL's global limit is not left changed
    del img
    with pytest.raises(ImageReadError, match=f"{p.name}.*over the limit of 90,000,000"):
        load_image(p, max_pixels=90_000_000)  # a smaller max_pixels still applies


def test_header_over_max_pixels_refused_naming_the_file(tmp_path):
    limit_before = Image.MAX_IMAGE_PIXELS
    p = tmp_path / "too-big.png"
    p.write_bytes(_png_header_only(14200, 14200))  # 201.6 MP > MAX_PIXELS, not decoded
    with pytest.raises(ImageReadError, match="201,640,000 pixels, over the limit of 200,000,000"
                       ) as info:
        load_image(p)
    assert info.value.path == str(p)
    assert Image.MAX_IMAGE_PIXELS == limit_before


def test_strip_wise_rgb_matches_whole_array(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (2000, 3000, 3), dtype=np.uint8)  # read in two 16 MB row strips
    p = tmp_path / "wide.png"
    Image.fromarray(rgb).save(p, compress_level=0)
    np.testing.assert_array_equal(load_image(p).rgb, rgb)


def test_nul_byte_paths_give_flipnet_errors(tmp_path, rgb):
    with pytest.raises(ImageReadError, match="NUL byte"):
        load_image(str(tmp_path / "a\x00.png"))
    with pytest.raises(ImageReadError, match="NUL byte"):
        list_images(str(tmp_path) + "\x00")
    with pytest.raises(OutputPathError, match="NUL byte"):
        save_image(str(tmp_path / "b\x00.png"), rgb)
    with pytest.raises(OutputPathError, match="NUL byte"):
        check_distinct(str(tmp_path / "c\x00.png"), tmp_path / "c.png")
