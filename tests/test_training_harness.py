"""The training harness with a trivial model: checkpoint / log / sample cadence, out of time,
exact resume with a trimmed log, NaN stops naming the step, the export folder."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import Dataset

from flipnet.training.data import ShuffleFlipSampler
from flipnet.training.harness import (
    EMA,
    TrainingDiverged,
    TrainingRun,
    checkpoints,
    make_loader,
    set_lr,
    warmup_lr,
)


@dataclass(frozen=True)
class TinyConfig:
    """The fields TrainingRun reads, plus a step count and a learning rate."""

    out_dir: str = "out"
    steps: int = 4
    lr: float = 0.1
    resume: bool = False
    threads: int = 0  # 0: the harness leaves torch's thread count alone
    seed: int = 0
    mixed_precision: str = "no"
    max_minutes: float = 0.0
    log_every: int = 1
    sample_every: int = 0
    save_every: int = 2
    keep_checkpoints: int = 10


class LineData(Dataset):
    """12 points of y = 0.5 x1 - 2 x2 + 0.25, indexed by a ``ShuffleFlipSampler``'s (i, flip)."""

    def __init__(self):
        self.x = torch.linspace(-1, 1, 24).reshape(12, 2)
        self.y = self.x @ torch.tensor([[0.5], [-2.0]]) + 0.25

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, item: tuple[int, bool]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[item[0]], self.y[item[0]]


def _train(cfg: TinyConfig, *, nan_at: int = 0, sample_at_end: bool = False):
    """A linear regression run through the harness; returns (run, export folder)."""
    run = TrainingRun(cfg, export="tiny", harmless=("steps", "resume", "max_minutes"))
    dataset = LineData()
    sampler = ShuffleFlipSampler(len(dataset), seed=cfg.seed, hflip=False)
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    model, opt, loader = run.accelerator.prepare(model, opt, make_loader(dataset, sampler, 4))
    ema = EMA(run.accelerator.unwrap_model(model), decay=0.9)
    run.resume_or_start(ema)
    batches = run.batches(loader, sampler)

    def save_samples(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(ema.shadow["weight"].tolist()))

    for step in run.steps(cfg.steps, desc="tiny", save_samples=save_samples,
                          sample_at_end=sample_at_end):
        lr = set_lr(opt, warmup_lr(cfg.lr, step, 2))
        xb, yb = next(batches)
        loss = nn.functional.mse_loss(model(xb), yb) * (float("nan") if step == nan_at else 1)
        run.optimizer_step(loss, opt, model.parameters(), step, grad_clip=1.0)
        ema.update(run.accelerator.unwrap_model(model))
        run.end_step(step, float(loss.detach()), log={"loss": float(loss.detach()), "lr": lr},
                     postfix={"lr": lr})

    def write(tmp: Path) -> str:
        ema.copy_to(model)
        save_file(dict(model.state_dict()), str(tmp / "model.safetensors"))
        return f"# tiny\n{run.progress.step} steps\n"

    return run, run.export(write)


def _log_steps(out: Path) -> list[int]:
    return [json.loads(s)["step"] for s in (out / "log.jsonl").read_text().splitlines()]


def test_warmup_and_set_lr():
    assert warmup_lr(1.0, 1, 4) == 0.25 and warmup_lr(1.0, 9, 4) == 1.0
    assert warmup_lr(0.5, 1, 0) == 0.5
    opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0)
    assert set_lr(opt, 0.3) == 0.3 and all(g["lr"] == 0.3 for g in opt.param_groups)


@pytest.mark.parametrize("sample_at_end", [False, True])
def test_checkpoint_log_and_sample_cadence(tmp_path, sample_at_end):
    out = tmp_path / "run"
    cfg = TinyConfig(out_dir=str(out), steps=7, save_every=3, log_every=2, sample_every=3)
    run, folder = _train(cfg, sample_at_end=sample_at_end)
    assert [p.name for p in checkpoints(out / "checkpoints")] == [
        "step-0000003", "step-0000006", "step-0000007"]  # every 3 and the last
    assert _log_steps(out) == [2, 4, 6]
    line = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    assert list(line) == ["step", "loss", "lr", "wall_s"]
    assert line["lr"] == pytest.approx(0.1)
    samples = sorted(p.name for p in (out / "samples").iterdir())
    assert samples == ["step-0000003.png", "step-0000006.png"] + (
        ["step-0000007.png"] if sample_at_end else [])
    assert run.progress.step == 7 and run.progress.wall_seconds > 0
    assert folder == out / "tiny"
    assert sorted(p.name for p in folder.iterdir()) == [
        "MODEL_CARD.md", "model.safetensors", "train_config.json"]
    assert "7 steps" in (folder / "MODEL_CARD.md").read_text()
    assert json.loads((folder / "train_config.json").read_text())["steps"] == 7


def test_out_of_time_saves_a_checkpoint_and_exports(tmp_path):
    out = tmp_path / "short"
    run, folder = _train(TinyConfig(out_dir=str(out), steps=50, save_every=10,
                                    max_minutes=1e-9))
    assert run.out_of_time and run.progress.step == 1
    assert [p.name for p in checkpoints(out / "checkpoints")] == ["step-0000001"]
    assert (folder / "model.safetensors").is_file()


def test_resume_continues_exactly_and_trims_the_log(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    _train(TinyConfig(out_dir=str(straight), steps=5))
    _train(TinyConfig(out_dir=str(split), steps=2))
    with open(split / "log.jsonl", "a") as f:  # a step logged after the last checkpoint
        f.write(json.dumps({"step": 3, "loss": 9.9}) + "\n")
    run, _ = _train(TinyConfig(out_dir=str(split), steps=5))  # more steps: a harmless change
    assert run.last == split / "checkpoints" / "step-0000002"
    assert _log_steps(split) == [1, 2, 3, 4, 5]
    a = load_file(str(straight / "checkpoints" / "step-0000005" / "model.safetensors"))
    b = load_file(str(split / "checkpoints" / "step-0000005" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    ema_a, ema_b = (load_file(str(p / "tiny" / "model.safetensors")) for p in (straight, split))
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    first = load_file(str(split / "checkpoints" / "step-0000002" / "model.safetensors"))
    assert any(not torch.equal(a[k], first[k]) for k in a)  # steps 3-5 did train


def test_nan_loss_names_the_step_and_the_last_checkpoint(tmp_path):
    out = tmp_path / "nan"
    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 3; .*step-0000002"):
        _train(TinyConfig(out_dir=str(out), steps=6), nan_at=3)
    assert [p.name for p in checkpoints(out / "checkpoints")] == ["step-0000002"]
    assert _log_steps(out) == [1, 2] and not (out / "tiny").exists()


def test_a_body_without_end_step_is_an_error(tmp_path):
    run = TrainingRun(TinyConfig(out_dir=str(tmp_path / "bad")), export="tiny", harmless=())
    with pytest.raises(RuntimeError, match="step 1 did not end with end_step"):
        for _ in run.steps(3, desc="bad"):
            pass
    with pytest.raises(RuntimeError, match="inside a `for step in run.steps"):
        run.end_step(1, 0.0, log={}, postfix={})
