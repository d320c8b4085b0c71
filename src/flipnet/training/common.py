"""Training helpers shared by every loop: EMA, ``every``, exact-resume checkpoints, NaN/Inf stops.

Checkpoints are Accelerate ``save_state`` folders (model, optimizer, RNG states, and every object
given to ``accelerator.register_for_checkpointing``: the EMA and the ``TrainProgress``), written to
``<root>/step-0000123.tmp`` and renamed when complete, so a crash mid-save never leaves a
half-written "latest" checkpoint. Data order is a function of (seed, epoch) and the position is
the number of batches consumed, so resuming replays the same batches (see ``training.data``).
"""

from __future__ import annotations

import math
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from flipnet.errors import FlipnetError

_STEP_DIR = re.compile(r"^step-(\d{7})$")


class TrainingDiverged(FlipnetError):
    """The loss became NaN or Inf; the last good checkpoint is left intact."""


def every(n: int, step: int) -> bool:
    """True every ``n`` steps (never when ``n`` <= 0)."""
    return n > 0 and step % n == 0


class EMA:
    """Exponential moving average of a model's float tensors, with warmup.

    decay_k = min(decay, (1 + k) / (10 + k)) after k updates (the warmup used by many diffusion
    codebases), so early weights are not dominated by the random initialisation.
    """

    def __init__(self, model: nn.Module, *, decay: float = 0.9999, warmup: bool = True):
        self.decay, self.warmup, self.num_updates = decay, warmup, 0
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()
                       if v.is_floating_point()}

    def current_decay(self) -> float:
        """Decay used by the next update."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """shadow <- d * shadow + (1 - d) * weights."""
        d = self.current_decay()
        for k, v in model.state_dict().items():
            if k in self.shadow:
                self.shadow[k].lerp_(v.detach().float().to(self.shadow[k].device), 1 - d)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> nn.Module:
        """Load the averaged weights into ``model`` (same architecture) and return it."""
        state = model.state_dict()
        for k, v in self.shadow.items():
            state[k].copy_(v.to(state[k].dtype))
        return model

    def state_dict(self) -> dict:
        """Everything needed to resume the average exactly."""
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates,
                "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        """Restore from ``state_dict``."""
        self.decay, self.warmup = state["decay"], state["warmup"]
        self.num_updates = state["num_updates"]
        self.shadow = {k: v.clone().float() for k, v in state["shadow"].items()}


@dataclass
class TrainProgress:
    """Step counter and bookkeeping saved with each checkpoint."""

    step: int = 0
    wall_seconds: float = 0.0
    last_loss: float = float("nan")

    def state_dict(self) -> dict:
        """Plain numbers (Accelerate saves it beside the model)."""
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        """Restore from ``state_dict``."""
        self.step, self.wall_seconds = int(state["step"]), float(state["wall_seconds"])
        self.last_loss = float(state["last_loss"])


def checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoint folders under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint folder, or None."""
    found = checkpoints(root)
    return found[-1] if found else None


def save_checkpoint(accelerator, root: str | Path, step: int, *, keep: int = 2) -> Path:
    """``accelerator.save_state`` into ``root/step-NNNNNNN`` (atomic rename); keep the newest ``keep``."""
    root = Path(root)
    final = root / f"step-{step:07d}"
    tmp = root / f"step-{step:07d}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in checkpoints(root)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: str | Path) -> None:
    """``accelerator.load_state`` (model, optimizer, RNG and registered objects)."""
    accelerator.load_state(str(path))


def check_finite(loss: torch.Tensor | float, step: int, last_checkpoint: Path | None, *,
                 what: str = "loss") -> None:
    """Raise ``TrainingDiverged`` naming the step when ``what`` (loss, gradient norm) is NaN/Inf."""
    value = float(loss)
    if not math.isfinite(value):
        where = (f"the last good checkpoint {last_checkpoint} is intact" if last_checkpoint
                 else "no checkpoint was written yet")
        raise TrainingDiverged(f"{what} is {value} at step {step}; training stopped before the "
                               f"update, {where} (lower the learning rate or check the data)")


def endless_batches(accelerator, loader, sampler, consumed: int):
    """Endless batches starting after ``consumed`` ones: epoch order is fixed by (seed, epoch),
    so a resumed run sees exactly the batches an unbroken run would."""
    epoch, skip = divmod(consumed, len(loader))
    while True:
        dl = accelerator.skip_first_batches(loader, skip) if skip else loader
        sampler.set_epoch(epoch)
        if hasattr(dl, "set_epoch"):
            dl.set_epoch(epoch)
        yield from dl
        epoch, skip = epoch + 1, 0


def hardware_name(accelerator) -> str:
    """What trained it, for model cards: GPUs by name, else the CPU and its thread count."""
    import platform

    if torch.cuda.is_available():
        return f"{accelerator.num_processes} x {torch.cuda.get_device_name()}"
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s)"
