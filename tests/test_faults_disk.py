"""Full disk, read-only output and NaN (issue 8): one ``error:`` line naming the path or the step,
exit status 2, and everything finished before the failure kept intact.

We run as root, so ``chmod`` cannot make a folder read-only: writes are made to fail with
ENOSPC / EROFS by monkeypatching, and one test fills a real tiny tmpfs (skipped where mounting
is not permitted). Commands run in-process through ``flipnet.cli.main``.
"""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from flipnet.config import save_config
from flipnet.io import load_image, save_image
from flipnet.models.prior import save_prior
from flipnet.models.prior_types import PriorConfig, ScheduleConfig
from flipnet.models.restorer import Restorer, RestorerConfig, save_restorer
from flipnet.models.unet import UNet, UNetConfig
from flipnet.training.harness import checkpoints
from flipnet.training.prior import PriorTrainConfig

TINY_PRIOR = PriorConfig(
    unet=UNetConfig(image_size=8, model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                    attention_resolutions=(), num_heads=1, norm_groups=4),
    schedule=ScheduleConfig(num_timesteps=50, beta_schedule="cosine", prediction="v"))
pytestmark = pytest.mark.filterwarnings("ignore:skipped")


def _run_cli(args: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """``flipnet ARGS`` in-process: (exit status, stderr)."""
    from flipnet.cli import main

    monkeypatch.setattr(sys, "argv", ["flipnet", *args])
    with pytest.raises(SystemExit) as e:
        main()
        raise SystemExit(0)
    return e.value.code, capsys.readouterr().err


def _one_error_line(err: str) -> str:
    lines = [s for s in err.splitlines() if s.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def prior_config(tmp_path, monkeypatch) -> Path:
    """A tiny prior training config (8 px disks) at ``tmp_path/tiny.json``; cwd = tmp_path."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:8, :8]
    for i in range(8):
        disk = ((yy - rng.uniform(3, 5)) ** 2 + (xx - rng.uniform(3, 5)) ** 2 < 6)[..., None]
        save_image(tmp_path / "data" / f"f{i}.png",
                   np.where(disk, rng.integers(120, 255, 3), 20).astype(np.uint8))
    monkeypatch.chdir(tmp_path)
    cfg = PriorTrainConfig(data_dir="data", split="all", out_dir="run", prior=TINY_PRIOR,
                           batch_size=4, lr=2e-3, warmup_steps=1, steps=4, save_every=2,
                           sample_every=0, log_every=1, seed=1, threads=1)
    save_config(cfg, tmp_path / "tiny.json")
    return tmp_path / "tiny.json"


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(prior_config, monkeypatch, capsys):
    from accelerate import Accelerator

    real, calls = Accelerator.save_state, []

    def save_state(self, output_dir=None, **kw):
        calls.append(output_dir)
        if len(calls) == 2:  # the second checkpoint (step 4) hits a full disk halfway
            Path(output_dir, "model.safetensors").write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, output_dir, **kw)

    monkeypatch.setattr(Accelerator, "save_state", save_state)
    code, err = _run_cli(["train", "prior", "--config", str(prior_config)], monkeypatch, capsys)
    line = _one_error_line(err)
    assert code == 2 and "step-0000004.tmp" in line and "No space left on device" in line
    run = prior_config.parent / "run"
    assert [p.name for p in checkpoints(run / "checkpoints")] == ["step-0000002"]
    assert not (run / "checkpoints" / "step-0000004.tmp").exists()
    state = load_file(str(run / "checkpoints" / "step-0000002" / "model.safetensors"))
    assert state and all(torch.isfinite(v).all() for v in state.values())
    # the disk has room again: the same command continues from step 2 and finishes
    monkeypatch.setattr(Accelerator, "save_state", real)
    code, err = _run_cli(["train", "prior", "--config", str(prior_config)], monkeypatch, capsys)
    assert code == 0 and (run / "prior" / "model-00001.safetensors").is_file()


def test_read_only_export_keeps_the_previous_export(prior_config, monkeypatch, capsys):
    import flipnet.weights

    assert _run_cli(["train", "prior", "--config", str(prior_config)], monkeypatch, capsys)[0] == 0
    run = prior_config.parent / "run"
    before = (run / "prior" / "model-00001.safetensors").read_bytes()

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(flipnet.weights, "save_file", read_only)
    code, err = _run_cli(["train", "prior", "--config", str(prior_config), "--steps", "6"],
                         monkeypatch, capsys)
    line = _one_error_line(err)
    assert code == 2 and "model-00001.safetensors" in line and "Read-only file system" in line
    assert (run / "prior" / "model-00001.safetensors").read_bytes() == before
    assert not (run / "prior.tmp").exists() and not (run / "prior.old").exists()
    assert [p.name for p in checkpoints(run / "checkpoints")][-1] == "step-0000006"


def test_full_disk_mid_folder_keeps_finished_pseudo_targets(tmp_path, monkeypatch, capsys):
    from PIL import Image

    torch.manual_seed(0)
    prior = PriorConfig(unet=TINY_PRIOR.unet, schedule=ScheduleConfig(num_timesteps=100))
    small = RestorerConfig(image_size=16, width=8, enc_blocks=(1,), middle_blocks=1,
                           dec_blocks=(1,))
    save_prior(tmp_path / "prior", UNet(prior.unet), prior)
    save_restorer(tmp_path / "restorer", Restorer(small), small)
    for i in range(5):
        save_image(tmp_path / "lq" / f"p{i}.png", np.full((16, 16, 3), 40 * i, np.uint8))
    real, saved = Image.Image.save, []

    def save(self, fp, *args, **kwargs):
        if len(saved) == 6:  # three (lq, target) pairs fit, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        saved.append(fp)
        return real(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    args = ["pseudo-targets", str(tmp_path / "lq"), str(tmp_path / "out"), "--restorer",
            str(tmp_path / "restorer"), "--prior", str(tmp_path / "prior"), "--respaced-steps",
            "10", "--t0", "4", "--tau", "1", "--split", "all", "--batch-size", "1",
            "--device", "cpu"]
    code, err = _run_cli(args, monkeypatch, capsys)
    line = _one_error_line(err)
    assert code == 2 and str(tmp_path / "out" / "lq" / "p3.png") in line and "No space" in line
    done = sorted(p.name for p in (tmp_path / "out" / "target").iterdir())
    assert done == ["p0.png", "p1.png", "p2.png"]
    assert all(load_image(tmp_path / "out" / "target" / n).rgb.shape == (16, 16, 3) for n in done)
    assert not list((tmp_path / "out").rglob("*.tmp"))


def test_nan_loss_through_the_cli_names_the_step(prior_config, monkeypatch, capsys):
    code, err = _run_cli(["train", "prior", "--config", str(prior_config), "--lr", "1e30",
                          "--grad-clip", "0", "--steps", "8", "--save-every", "1"],
                         monkeypatch, capsys)
    line = _one_error_line(err)
    assert code == 2 and "at step" in line and ("nan" in line or "inf" in line)
    last = checkpoints(prior_config.parent / "run" / "checkpoints")
    assert last and f"run/checkpoints/{last[-1].name} is intact" in line
    state = load_file(str(last[-1] / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in state.values())


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A real 2 MiB tmpfs (a tiny checkpoint is about 0.7 MiB), or skip where mounting is not permitted."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip() or r.returncode}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_really_full_filesystem(prior_config, tiny_tmpfs, monkeypatch, capsys):
    out = tiny_tmpfs / "run"
    code, err = _run_cli(["train", "prior", "--config", str(prior_config), "--out-dir", str(out),
                          "--steps", "40", "--save-every", "1", "--keep-checkpoints", "3"],
                         monkeypatch, capsys)
    line = _one_error_line(err)
    assert code == 2 and str(tiny_tmpfs) in line and "bytes free there" in line
    found = checkpoints(out / "checkpoints")
    assert found, "at least one checkpoint fitted before the disk filled"
    state = load_file(str(found[-1] / "model.safetensors"))  # the newest complete one loads
    assert all(torch.isfinite(v).all() for v in state.values())
    assert not list((out / "checkpoints").glob("*.tmp"))
