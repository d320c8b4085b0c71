"""Bad input, tried systematically (issue 8): hypothesis over image bytes, weights folders and CLI
options. Every case must end in a decoded image / loaded weights / exit 0, or in flipnet's own
error naming the file; never another exception, a traceback or a hang. Bounded for CI; the long
run is ``scripts/fuzz.py``.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from flipnet.errors import FlipnetError, ImageReadError, WeightsError
from flipnet.io import load_image
from flipnet.weights import load_state_dict, read_checkpoint_file, save_state_dict

FAST = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _encoded(fmt: str) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


VALID = {fmt: _encoded(fmt) for fmt in ("PNG", "JPEG", "WEBP", "BMP", "TIFF")}


@st.composite
def mutated(draw) -> bytes:
    """A valid small image with flipped bytes, a truncation and/or inserted junk."""
    data = bytearray(VALID[draw(st.sampled_from(sorted(VALID)))])
    for _ in range(draw(st.integers(0, 6))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[:draw(st.integers(0, len(data)))]
    if draw(st.booleans()):
        i = draw(st.integers(0, len(data)))
        data[i:i] = draw(st.binary(max_size=32))
    return bytes(data)


class _Timeout(Exception):
    pass


def _alarm(seconds: int):
    def raise_timeout(*_):
        raise _Timeout(f"no answer within {seconds} s")

    signal.signal(signal.SIGALRM, raise_timeout)
    signal.alarm(seconds)


def _check_image_bytes(data: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"fuzz{suffix}"
        path.write_bytes(data)
        _alarm(10)
        try:
            img = load_image(path)
        except ImageReadError as e:
            assert str(path) in str(e) and e.problem
            return
        finally:
            signal.alarm(0)
        assert img.rgb.dtype == np.uint8 and img.rgb.ndim == 3 and img.rgb.shape[2] == 3


@FAST
@given(mutated(), st.sampled_from([".png", ".jpg", ".webp", ".tif"]))
def test_mutated_images_decode_or_raise_image_read_error(data, suffix):
    _check_image_bytes(data, suffix)


@FAST
@given(st.binary(max_size=256))
def test_arbitrary_bytes_decode_or_raise_image_read_error(data):
    _check_image_bytes(data, ".png")


# --- the weights loader --------------------------------------------------------------------------

def _weights_folder(root: Path) -> Path:
    torch.manual_seed(0)
    state = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2)).state_dict()
    save_state_dict(root / "w", state)
    return root / "w"


@FAST
@given(cut=st.integers(0, 1000), flips=st.lists(st.tuples(st.integers(0, 400),
                                                          st.integers(0, 255)), max_size=4),
       keep_index=st.booleans())
def test_truncated_or_tampered_safetensors_raise_weights_error(cut, flips, keep_index):
    with tempfile.TemporaryDirectory() as d:
        folder = _weights_folder(Path(d))
        shard = folder / "model-00001.safetensors"
        original = shard.read_bytes()
        data = bytearray(original)
        for i, v in flips:
            data[i % len(data)] = v
        shard.write_bytes(bytes(data[:cut]))
        if not keep_index:  # without the SHA-256, the header is all there is to check
            (folder / "model.index.json").unlink()
        try:
            state = load_state_dict(folder)
        except WeightsError as e:
            assert str(folder) in str(e)
            return
        # loaded: the bytes are unchanged, or the data changed where only the hash could tell
        assert shard.read_bytes() == original or not keep_index
        assert all(isinstance(v, torch.Tensor) for v in state.values())


def test_tampered_data_bytes_are_caught_by_the_index_hash(tmp_path):
    folder = _weights_folder(tmp_path)
    shard = folder / "model-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # a tensor value, not the header: only the checksum can see it
    shard.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="SHA-256"):
        load_state_dict(folder)


@FAST
@given(st.dictionaries(st.sampled_from(["image_size", "width", "enc_blocks", "middle_blocks",
                                        "dec_blocks", "unshuffle", "bogus"]),
                       st.one_of(st.integers(-3, 70), st.text(max_size=3), st.none(),
                                 st.lists(st.integers(-1, 3), max_size=3)), max_size=3))
def test_restorer_config_not_matching_its_tensors(tmp_path_factory, changes):
    from flipnet.models.restorer import Restorer, RestorerConfig, load_restorer, save_restorer

    root = tmp_path_factory.mktemp("w")
    cfg = RestorerConfig(image_size=16, width=8, enc_blocks=(1,), middle_blocks=1, dec_blocks=(1,))
    save_restorer(root, Restorer(cfg), cfg)
    meta = json.loads((root / "config.json").read_text())
    meta.update(changes)
    (root / "config.json").write_text(json.dumps(meta))
    _alarm(20)
    try:
        load_restorer(root)
    except FlipnetError as e:
        assert str(root) in str(e) or "config" in str(e)
    finally:
        signal.alarm(0)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/flipnet-fuzz-pwned",))


@pytest.mark.parametrize("suffix", [".pt", ".bin", ".ckpt", ".pth"])
def test_pickles_are_refused_unless_allowed(tmp_path, suffix):
    evil = tmp_path / f"evil{suffix}"
    torch.save({"state_dict": {"w": torch.ones(2)}, "hook": _Evil()}, evil)
    with pytest.raises(WeightsError, match="pickled objects are refused"):
        read_checkpoint_file(evil)
    assert not Path("/tmp/flipnet-fuzz-pwned").exists()
    plain = tmp_path / f"plain{suffix}"
    torch.save({"model": {"w": torch.ones(2)}}, plain)
    assert torch.equal(read_checkpoint_file(plain)["w"], torch.ones(2))
    ok = tmp_path / f"trusted{suffix}"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "note": {1, 2}}, ok)  # a set: not weights-only
    assert torch.equal(read_checkpoint_file(ok, allow_pickle=True)["w"], torch.zeros(1))


# --- CLI options ---------------------------------------------------------------------------------

ODD = st.one_of(st.sampled_from(["", "-1", "0", "1", "3", "nan", "inf", "-inf", "1e400", "abc",
                                 "../x", "\x00", "99999999999999999999", "0.5", "png", "jpg"]),
                st.text(max_size=6), st.integers(-5, 5).map(str))


def _cli(args: list[str], capsys, monkeypatch) -> tuple[int, str]:
    from flipnet.cli import main

    monkeypatch.setattr(sys, "argv", ["flipnet", *args])
    _alarm(60)
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        signal.alarm(0)
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def small_inputs(tmp_path_factory, astronaut) -> Path:
    import cv2

    root = tmp_path_factory.mktemp("cli")
    from flipnet.io import save_image

    save_image(root / "in" / "face.png", cv2.resize(astronaut[30:230, 140:340], (32, 32)))
    return root


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(cmd=st.sampled_from(["restore", "degrade", "sample"]),
       options=st.lists(st.tuples(st.sampled_from(
           ["--upscale", "--batch-size", "--steps", "--fidelity", "--ext", "--method", "--size",
            "--seed", "--preset", "--n", "--eta", "--sampler", "--weights", "--device",
            "--config", "--bogus"]), ODD), max_size=3))
def test_cli_options_end_in_exit_0_or_one_error_line(cmd, options, small_inputs, capsys,
                                                     monkeypatch):
    root = small_inputs
    out = root / "out"
    base = {"restore": ["restore", str(root / "in"), "-o", str(out), "--aligned", "--device",
                        "cpu"],
            "degrade": ["degrade", str(root / "in"), str(out / "deg")],
            "sample": ["sample", "-o", str(out / "s.png"), "--device", "cpu"]}[cmd]
    safe = {"--n": 2, "--steps": 3, "--batch-size": 8, "--size": 64, "--upscale": 4}
    args = list(base)
    for name, value in options:
        if name in safe:  # keep the work bounded: a huge valid value is not bad input
            try:
                if abs(float(value)) > safe[name]:
                    continue
            except ValueError:
                pass
        args += [name, value]
    if cmd == "sample" and "--n" not in args:
        args += ["--n", "1", "--steps", "2"]
    code, err = _cli(args, capsys, monkeypatch)
    assert "Traceback" not in err, err
    # 0 = done, 2 = refused; restore exits 1 when some files were skipped (each named)
    assert code in ((0, 1, 2) if cmd == "restore" else (0, 2)), (args, code, err)
    if code:
        lines = [s for s in err.splitlines() if s.strip() and not s.startswith("warning:")]
        assert lines and ("error:" in lines[-1].lower()), err


# --- config values of the wrong type, devices, NUL bytes (fixed after the long fuzz run) ----------

@dataclass(frozen=True)
class _Inner:
    sigma: tuple[float, float] = (0.1, 10.0)


@dataclass(frozen=True)
class _Typed:
    size: int = 8
    scale: float = 1.0
    name: str = "x"
    flag: bool = False
    levels: tuple[int, ...] = (1, 2)
    blocks: int | tuple[int, ...] = 2
    mode: Literal["a", "b"] = "a"
    inner: _Inner = _Inner()
    maybe: _Inner | None = None


@pytest.mark.parametrize("key, value, expected", [
    ("size", True, "must be int, got true"),  # bool is not an int
    ("size", 1.5, "must be int, got 1.5"),
    ("size", "8", 'must be int, got "8"'),
    ("size", None, "must be int, got null"),
    ("scale", "1", "must be float"),
    ("scale", False, "must be float"),
    ("name", 3, "must be str"),
    ("flag", 1, "must be bool, got 1"),
    ("levels", 0, "must be a list of int, got 0"),
    ("levels", [1, "x"], "must be a list of int"),
    ("blocks", [1.5], "must be int or a list of int"),
    ("mode", "c", 'must be one of "a", "b"'),
    ("inner", [1, 2], "must be a _Inner object"),
    ("inner", {"sigma": [1.0]}, r"_Inner.sigma must be a list of 2 \(float, float\)"),
    ("maybe", 3, "must be a _Inner object or null"),
])
def test_config_values_are_checked_against_their_type_hints(key, value, expected):
    from flipnet.config import config_from_dict
    from flipnet.errors import ConfigError

    with pytest.raises(ConfigError, match=expected) as e:
        config_from_dict(_Typed, {key: value}, "where.json")
    assert str(e.value).startswith("where.json: ")  # names the file ...
    assert f".{key} must be" in str(e.value) or key == "inner"  # ... and the key (inner: sigma)


def test_config_values_of_the_right_type_are_accepted():
    from flipnet.config import config_from_dict

    cfg = config_from_dict(_Typed, {"scale": 2, "levels": [3], "blocks": [1, 2], "mode": "b",
                                    "inner": {"sigma": [1, 2.5]}, "maybe": None, "flag": True})
    assert cfg.scale == 2 and isinstance(cfg.scale, int)  # an int is fine for a float, kept
    assert cfg.levels == (3,) and cfg.blocks == (1, 2) and cfg.mode == "b" and cfg.flag is True
    assert cfg.inner == _Inner((1.0, 2.5)) and cfg.maybe is None


def test_load_config_refuses_unusable_paths(tmp_path):
    from flipnet.config import load_config
    from flipnet.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(_Typed, str(tmp_path / "a\x00.json"))
    with pytest.raises(ConfigError, match=f"{tmp_path}: is a folder"):
        load_config(_Typed, tmp_path)


def test_resolve_device_refuses_devices_this_machine_lacks(monkeypatch):
    from flipnet.device import resolve_device
    from flipnet.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ConfigError, match="cuda requested but no CUDA device is available; use "
                       "--device cpu or auto"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="mps requested but no MPS device"):
        resolve_device("mps")
    for bad in ("-1", "0", "cuda:x", "gpu", ""):
        with pytest.raises(ConfigError, match="is not a device"):
            resolve_device(bad)
    with pytest.raises(ConfigError, match="not meta"):
        resolve_device("meta")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda")
    with pytest.raises(ConfigError, match="only 1 CUDA device"):
        resolve_device("cuda:3")


@pytest.mark.parametrize("args, option", [
    (["sample", "-o", "s\x00.png", "--n", "1"], "-o"),
    (["degrade", "in", "out", "--config=\x00"], "--config"),
    (["restore", "in\x00", "-o", "o"], "argument 2"),
    (["sample", "--device", "-1", "--n", "1"], "--device"),
    (["restore", "in", "-o", "o", "--device", "cuda" if not torch.cuda.is_available() else "mps",
      "--method", "bicubic"], "requested but no"),
])
def test_cli_bad_paths_and_devices_end_in_one_error_line(args, option, tmp_path, capsys,
                                                         monkeypatch):
    from flipnet.io import save_image

    monkeypatch.chdir(tmp_path)
    save_image(tmp_path / "in" / "face.png", np.zeros((16, 16, 3), np.uint8))
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    code, err = _cli(args, capsys, monkeypatch)
    lines = [s for s in err.splitlines() if s.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("error:") and option in lines[0], err
