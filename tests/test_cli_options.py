"""``flipnet restore`` speaks GFPGAN's and CodeFormer's option names, passes a method only the
options the user typed, refuses what it cannot do in one line, and its help imports no torch."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from flipnet.io import load_image, save_image

LIGHT_HELP = """
import sys
from click.testing import CliRunner
import flipnet.cli
for args in (["--help"], ["restore", "--help"]):
    r = CliRunner().invoke(flipnet.cli.cli, args)
    assert r.exit_code == 0, r.output
heavy = sorted(m for m in ("torch", "cv2", "flipnet.io", "flipnet.pipelines") if m in sys.modules)
assert not heavy, heavy
print(r.output)
"""


def run(*args):
    return subprocess.run([sys.executable, "-m", "flipnet.cli", *args], check=False,
                          capture_output=True, text=True, timeout=300)


def test_help_imports_no_torch():
    r = subprocess.run([sys.executable, "-c", LIGHT_HELP], check=False, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for words in ("-i, --input", "-o, --output", "-s, --upscale", "-w, --fidelity",
                  "--only_center_face", "--has_aligned", "--bg_upsampler", "--suffix", "--ext",
                  "--backend"):
        assert words in r.stdout, words


def test_config_commands_still_build_their_options():
    from flipnet.cli import cli

    r = CliRunner().invoke(cli, ["degrade", "--help"])
    assert r.exit_code == 0 and "--preset" in r.output and "--dry-run" in r.output
    r = CliRunner().invoke(cli, ["train", "restorer", "--help"])
    assert r.exit_code == 0 and "--config" in r.output


@pytest.fixture
def made(monkeypatch):
    """Replace ``make_method`` by one that records its keyword arguments and returns ``input``."""
    from flipnet.pipelines import methods

    calls = []

    def fake(name, weights=None, **kwargs):
        calls.append({"name": name, **kwargs})
        return methods.InputMethod()

    monkeypatch.setattr(methods, "make_method", fake)
    return calls


def two_faces(astronaut) -> np.ndarray:
    """A 256 x 512 photo with the astronaut's face twice (both found by the detector)."""
    half = np.ascontiguousarray(astronaut[::2, ::2])  # (256, 256, 3), face near the top middle
    return np.concatenate([half, half], axis=1)


def test_gfpgan_and_codeformer_names_mean_ours(tmp_path, astronaut, made):
    from flipnet.cli import cli

    save_image(tmp_path / "a.jpg", two_faces(astronaut))
    theirs = ["-i", str(tmp_path / "a.jpg"), "-o", str(tmp_path / "theirs"), "-s", "2",
              "-w", "0.7", "--only_center_face", "--suffix", "restored", "--ext", "png",
              "--bg_upsampler", "none"]
    ours = [str(tmp_path / "a.jpg"), "--out", str(tmp_path / "ours"), "--upscale", "2",
            "--fidelity", "0.7", "--only-center-face", "--suffix", "restored", "--ext", "png"]
    for args in (theirs, ours):
        r = CliRunner().invoke(cli, ["restore", *args], catch_exceptions=False)
        assert r.exit_code == 0, r.output
    # only the option the user typed reaches the method, with their value
    assert made[0] == made[1] == {"name": "restorer", "device": "auto", "batch_size": 16,
                                  "fidelity": 0.7}
    for out in ("theirs", "ours"):
        folder = tmp_path / out
        img = load_image(folder / "restored_imgs" / "a_restored.png").rgb
        assert img.shape == (512, 1024, 3)  # -s 2
        faces = sorted(p.name for p in (folder / "restored_faces").iterdir())
        assert faces == ["a_00_restored.png"]  # --only_center_face; GFPGAN's face names
        assert sorted(p.name for p in (folder / "cropped_faces").iterdir()) == ["a_00.png"]
    same = [load_image(tmp_path / o / "restored_imgs" / "a_restored.png").rgb
            for o in ("theirs", "ours")]
    np.testing.assert_array_equal(*same)
    r = CliRunner().invoke(cli, ["restore", str(tmp_path / "a.jpg"), "-o", str(tmp_path / "all")])
    assert r.exit_code == 0 and len(list((tmp_path / "all" / "restored_faces").iterdir())) == 2


def test_default_run_passes_no_method_options(tmp_path, astronaut, made):
    from flipnet.cli import cli

    save_image(tmp_path / "a.png", np.ascontiguousarray(astronaut[:128, 160:288]))
    r = CliRunner().invoke(cli, ["restore", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"),
                                 "--aligned", "--framing", "flipnet", "--steps", "7", "--seed",
                                 "3", "--backend", "torch"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["restore", "-i", str(tmp_path / "a.png"), "--output",
                                 str(tmp_path / "o2"), "--has_aligned", "--framing", "flipnet"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert made[0] == {"name": "restorer", "device": "auto", "batch_size": 16, "steps": 7,
                       "seed": 3, "backend": "torch"}
    assert made[1] == {"name": "restorer", "device": "auto", "batch_size": 16}
    assert (tmp_path / "o2" / "restored_imgs" / "a.png").exists()  # no suffix: GFPGAN's names


def one_error_line(r) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    return lines[0]


def test_refusals_are_one_line(tmp_path):
    save_image(tmp_path / "a.png", np.zeros((64, 64, 3), np.uint8))
    a, out = str(tmp_path / "a.png"), str(tmp_path / "o")
    line = one_error_line(run("restore", a, "-o", out, "--bg_upsampler", "realesrgan"))
    assert "--bg_upsampler" in line and "realesrgan" in line and "none or lanczos" in line
    line = one_error_line(run("restore", a, "-o", out, "--stepz", "3"))
    assert "--stepz" in line and "--steps" in line  # click's "Did you mean"
    line = one_error_line(run("restore", "-o", out))
    assert "-i/--input" in line
    line = one_error_line(run("restore", a, "-o", out, "--suffix", "x/y"))
    assert "--suffix" in line
    assert not (tmp_path / "o").exists()


def test_an_option_the_method_does_not_use_is_refused(tmp_path):
    save_image(tmp_path / "a.png", np.zeros((64, 64, 3), np.uint8))
    line = one_error_line(run("restore", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"),
                              "--method", "restorer", "--steps", "10"))
    assert "--steps" in line and "restorer" in line


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None
                    or importlib.util.find_spec("onnx") is None,
                    reason="onnx and onnxruntime not installed (pip install 'flipnet[onnx]')")
def test_export_then_restore_with_the_onnx_backend(tmp_path, astronaut, monkeypatch):
    from flipnet.cli import cli
    from flipnet.errors import ConfigError

    monkeypatch.setenv("FLIPNET_CACHE", str(tmp_path / "cache"))
    r = CliRunner().invoke(cli, ["export", "--format", "onnx", "--weights", "restorer-128", "-o",
                                 str(tmp_path / "r.onnx")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "r.onnx").stat().st_size > 0 and (tmp_path / "r.onnx.json").exists()
    save_image(tmp_path / "a.png", np.ascontiguousarray(astronaut[:128, 160:288]))
    args = ["restore", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--aligned",
            "--framing", "flipnet", "--backend", "onnx"]
    r = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "o" / "restored_imgs" / "a.png").exists()
    r = CliRunner().invoke(cli, [*args, "--method", "input"])
    assert isinstance(r.exception, ConfigError) and "--backend onnx" in str(r.exception)


def test_model_cards_record_the_command_as_typed_not_the_venv_path(monkeypatch):
    from flipnet.cli import invocation

    monkeypatch.setattr(sys, "argv", ["/some/venv/bin/flipnet", "train", "restorer", "--config",
                                      "configs/x.json"])
    assert invocation() == "flipnet train restorer --config configs/x.json"
