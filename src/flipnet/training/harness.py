"""Everything the training loops share, in one place: ``TrainingRun`` and its helpers (EMA,
``every``, exact-resume checkpoints, NaN/Inf stops, export cards, resume checks).

A loop (``training.prior``, ``restorer``, ``face_embedding``, ``flipnet``) keeps only what is its
own: config, data, model, the loss of one step, sample grids, model card and export contents.
``TrainingRun`` does the rest, in this order (which fixes the RNG consumption every loop relies
on for exact resume):

1. ``TrainingRun(cfg, ...)``: CPU threads, the resume point (a rerun with the same settings
   continues), the ``Accelerator``, cleaning what a kill -9 left, ``train_config.json``, a
   barrier, ``set_seed(cfg.seed)``.
2. The loop builds data, model, optimizer, EMA and its sample model (all before step 3: building
   a model draws from the global RNG, which the checkpoint then restores).
3. ``resume_or_start(ema)``: EMA and ``TrainProgress`` saved with every checkpoint; when
   continuing, the checkpoint is loaded and the log trimmed to its step.
4. ``for step in run.steps(total, desc=...)``: the body computes the loss, calls
   ``optimizer_step`` (NaN/Inf stops naming the step, gradient clipping) and ends with
   ``end_step`` (progress, bar, log line every ``log_every``, samples every ``sample_every``,
   checkpoint every ``save_every`` / at the end / when out of ``max_minutes``).
5. ``export(write)``: the atomic export folder with model card and config.

Checkpoints are Accelerate ``save_state`` folders (model, optimizer, RNG states, and every object
given to ``accelerator.register_for_checkpointing``: the EMA and the ``TrainProgress``), written to
``<root>/step-0000123.tmp`` and renamed when complete, so a crash mid-save never leaves a
half-written "latest" checkpoint. Data order is a function of (seed, epoch) and the position is
the number of batches consumed, so resuming replays the same batches (see ``training.data``).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from flipnet.config import config_to_dict, load_config, save_config
from flipnet.errors import ConfigError, FlipnetError, OutputPathError
from flipnet.io import remove_partial_files, write_bytes_atomic
from flipnet.weights import replace_folder_atomically

_STEP_DIR = re.compile(r"^step-(\d{7})$")


class TrainingDiverged(FlipnetError):
    """The loss became NaN or Inf; the last good checkpoint is left intact."""


def every(n: int, step: int) -> bool:
    """True every ``n`` steps (never when ``n`` <= 0)."""
    return n > 0 and step % n == 0


def warmup_lr(lr: float, step: int, warmup_steps: int) -> float:
    """Learning rate at ``step`` (1-based) of a linear warmup to ``lr`` over ``warmup_steps``."""
    return lr * min(1.0, step / max(1, warmup_steps))


def cosine_decay_lr(lr: float, step: int, start: int, end: int, min_ratio: float = 0.0) -> float:
    """``lr`` until ``start``, then a half cosine down to ``lr * min_ratio`` at ``end``."""
    if step <= start:
        return lr
    frac = min(1.0, (step - start) / max(1, end - start))
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> float:
    """Set every parameter group's learning rate to ``lr``; returns ``lr``."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


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


def fault_point(name: str) -> None:
    """Test hook: SIGKILL this process when env ``FLIPNET_KILL_AT`` equals ``name`` (a kill -9 at an
    exact moment, e.g. ``checkpoint:4`` between writing and renaming step 4's checkpoint)."""
    if os.environ.get("FLIPNET_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def write_export_card(tmp: Path, card: str | bytes, cfg) -> None:
    """Finish an export folder being filled: its model card and the run's config, then the
    ``export`` fault point (where the tests kill)."""
    write_bytes_atomic(tmp / "MODEL_CARD.md", card if isinstance(card, bytes) else card.encode())
    write_bytes_atomic(tmp / "train_config.json",
                       json.dumps(config_to_dict(cfg), indent=2).encode())
    fault_point("export")


def run_from_argv(config_cls, train, module: str) -> None:
    """``python -m flipnet.training.<module> CONFIG.json [--resume]``: load, train, print the
    export folder; a flipnet error exits with one ``error:`` line."""
    import sys

    if len(sys.argv) < 2:
        sys.exit(f"usage: python -m flipnet.training.{module} CONFIG.json [--resume]")
    try:
        cfg = load_config(config_cls, sys.argv[1])
        if "--resume" in sys.argv[2:]:
            cfg = config_cls(**{**cfg.__dict__, "resume": True})
        print(train(cfg))
    except FlipnetError as e:
        sys.exit(f"error: {e}")


def save_checkpoint(accelerator, root: str | Path, step: int, *, keep: int = 2) -> Path:
    """``accelerator.save_state`` into ``root/step-NNNNNNN`` (atomic rename); keep ``keep``.

    A failed write (disk full, read-only folder) removes the partial ``.tmp`` folder, keeps the
    older checkpoints and raises ``OutputPathError`` naming the folder."""
    root = Path(root)
    final = root / f"step-{step:07d}"
    tmp = root / f"step-{step:07d}.tmp"
    try:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        fault_point(f"checkpoint:{step}")
        if accelerator.is_main_process:
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            for old in checkpoints(root)[:-keep] if keep > 0 else []:
                shutil.rmtree(old, ignore_errors=True)
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
        free = shutil.disk_usage(root).free if root.is_dir() else 0
        shutil.rmtree(tmp, ignore_errors=True)
        reason = (e.strerror if isinstance(e, OSError) and e.strerror
                  else str(e).strip().splitlines()[-1][:200])
        raise OutputPathError(f"{tmp}: checkpoint could not be written ({reason}; {free:,} bytes "
                              "free there); older checkpoints are kept") from None
    accelerator.wait_for_everyone()
    return final


def config_differences(old, new, *, ignore: tuple[str, ...] = ()) -> list[str]:
    """Dotted keys whose values differ between two configs, as ``key: old -> new`` lines."""
    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    a, b = flat(config_to_dict(old)), flat(config_to_dict(new))
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if k not in ignore and a.get(k) != b.get(k)]


def resume_point(out_dir: str | Path, cfg, *, harmless: tuple[str, ...]) -> Path | None:
    """The checkpoint a run in ``out_dir`` continues from (rerun = continue), or None (fresh run).

    Resuming is automatic when ``out_dir/train_config.json`` holds the same config apart from
    ``harmless`` fields (resume, max_minutes, steps...). A different config is a ``ConfigError``
    listing the differences, unless ``cfg.resume`` forces continuing (with a warning)."""
    out = Path(out_dir)
    last = latest_checkpoint(out / "checkpoints")
    if last is None:
        return None
    saved = out / "train_config.json"
    if not saved.is_file():
        if cfg.resume:
            return last
        raise ConfigError(f"{out}: holds checkpoints (latest {last.name}) but no "
                          "train_config.json; pass --resume to continue from them anyway, or "
                          "choose another out_dir")
    diff = config_differences(load_config(type(cfg), saved), cfg, ignore=harmless)
    if diff and not cfg.resume:
        raise ConfigError(f"{out}: holds checkpoints (latest {last.name}) of a different config "
                          f"({'; '.join(diff[:4])}{'; ...' if len(diff) > 4 else ''}); rerun with "
                          "the same settings to continue, pass --resume to continue anyway, or "
                          "choose another out_dir")
    if diff:
        warnings.warn(f"{out}: resuming {last.name} with changed settings: {'; '.join(diff)}",
                      stacklevel=2)
    return last


def clean_partial_outputs(out_dir: str | Path, *, exports: tuple[str, ...] = ()) -> None:
    """Remove what a kill -9 can leave in a run folder: ``checkpoints/*.tmp`` folders, temporary
    files of atomic writes, half-swapped export folders (``NAME.tmp``; ``NAME.old`` put back)."""
    out = Path(out_dir)
    for tmp in (out / "checkpoints").glob("step-*.tmp") if (out / "checkpoints").is_dir() else []:
        shutil.rmtree(tmp, ignore_errors=True)
    for name in exports:
        final, tmp, old = out / name, out / f"{name}.tmp", out / f"{name}.old"
        shutil.rmtree(tmp, ignore_errors=True)
        if old.is_dir() and not final.exists():
            old.rename(final)  # killed between the two renames of an export swap
        shutil.rmtree(old, ignore_errors=True)
    for folder in (out, out / "samples", *(out / n for n in exports)):
        remove_partial_files(folder)


def trim_log(path: str | Path, step: int) -> None:
    """Drop log lines after ``step`` (and a half-written last line) so a resumed run does not
    log the replayed steps twice."""
    path = Path(path)
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    write_bytes_atomic(path, "".join(f"{x}\n" for x in kept).encode())


def append_log(path: str | Path, line: dict) -> None:
    """Append one JSON line to the loss log; a failed write is an ``OutputPathError``."""
    try:
        with open(path, "a") as f:
            f.write(json.dumps(line) + "\n")
    except OSError as e:
        raise OutputPathError(f"{path}: could not be written ({e.strerror or e})") from None


def load_checkpoint(accelerator, path: str | Path) -> None:
    """``accelerator.load_state`` (model, optimizer, RNG and registered objects).

    A checkpoint written by another version of the model (keys or shapes differ) is a
    ``ConfigError`` naming it, not a raw state-dict traceback."""
    try:
        accelerator.load_state(str(path))
    except (RuntimeError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{path}: cannot resume from this checkpoint ({first[:200]}); it was "
                          "written by a different model or version: use a new out_dir") from e


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


def cpu_hours(wall_seconds: float) -> float:
    """Wall time x the torch threads this process computes with (its CPU-hours on a CPU run;
    ``threads: 0`` in a config means torch's default, which this counts, not 1)."""
    return wall_seconds / 3600 * torch.get_num_threads()


def hardware_name(accelerator) -> str:
    """What trained it, for model cards: GPUs by name, else the CPU and its thread count."""
    import platform

    if torch.cuda.is_available():
        return f"{accelerator.num_processes} x {torch.cuda.get_device_name()}"
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s)"


# ------------------------------------------------------------------------- the run


class RunSettings(Protocol):
    """The config fields ``TrainingRun`` reads (every ``*TrainConfig`` has them)."""

    out_dir: str
    resume: bool
    threads: int
    seed: int
    mixed_precision: str
    max_minutes: float
    log_every: int
    sample_every: int
    save_every: int
    keep_checkpoints: int


def make_loader(dataset, sampler, batch_size: int, *, num_workers: int = 0):
    """A ``DataLoader`` over ``sampler``'s order, full batches only; its own generator keeps
    starting an epoch (or a resumed one) from drawing on the global RNG."""
    from torch.utils.data import DataLoader

    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True,
                      num_workers=num_workers, generator=torch.Generator())


class TrainingRun:
    """One training run in ``cfg.out_dir``: Accelerator, seeding, resume, step bookkeeping,
    checkpoints and export (see the module docstring for the order of things)."""

    def __init__(self, cfg: RunSettings, *, export: str, harmless: tuple[str, ...],
                 grad_accum: int = 1, kwargs_handlers: Sequence = (),
                 prepare_outputs: Callable[[], object] | None = None,
                 checkpoint_writer: Callable[..., Path] = save_checkpoint):
        """Set up the run up to ``set_seed(cfg.seed)``.

        ``export``: the export folder's name under ``out_dir``; ``harmless``: settings that may
        change between a run and its continuation; ``prepare_outputs``: more work for the main
        process after the config is saved, before all processes meet and seed (FLIPNET makes
        its pseudo pairs there); ``checkpoint_writer``: ``save_checkpoint`` or a wrapper of it.
        """
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        self.cfg, self.export_name, self.checkpoint_writer = cfg, export, checkpoint_writer
        self.out = Path(cfg.out_dir)
        self.ckpt_root, self.log_path = self.out / "checkpoints", self.out / "log.jsonl"
        # a rerun with the same settings continues from the newest complete checkpoint
        self.last = resume_point(self.out, cfg, harmless=harmless)
        self.accelerator = Accelerator(mixed_precision=cfg.mixed_precision,
                                       gradient_accumulation_steps=grad_accum,
                                       kwargs_handlers=list(kwargs_handlers))
        self.main, self.device = self.accelerator.is_main_process, self.accelerator.device
        if self.main:
            clean_partial_outputs(self.out, exports=(export,))
            save_config(cfg, self.out / "train_config.json")
            if prepare_outputs is not None:
                prepare_outputs()
        self.accelerator.wait_for_everyone()
        set_seed(cfg.seed)
        self.progress = TrainProgress()
        self.out_of_time = False
        self._bar = None

    def resume_or_start(self, ema: EMA) -> None:
        """Save ``ema`` and the progress with every checkpoint; when continuing, load model,
        optimizer, RNG states, EMA and progress from the resume point, and drop log lines after
        its step. Call it after every model is built (it restores the RNG states)."""
        self.accelerator.register_for_checkpointing(ema, self.progress)
        if self.last is not None:
            load_checkpoint(self.accelerator, self.last)
            if self.main:
                trim_log(self.log_path, self.progress.step)

    def batches(self, loader, sampler, *, per_step: int = 1) -> Iterator:
        """Endless batches of a prepared ``loader``, after the ``per_step`` batches of each step
        already done, so a resumed run sees the batches an unbroken run would."""
        return endless_batches(self.accelerator, loader, sampler, self.progress.step * per_step)

    def check_finite(self, value: torch.Tensor | float, step: int, *, what: str = "loss") -> None:
        """``TrainingDiverged`` naming the step and the last good checkpoint when ``value`` is
        NaN/Inf."""
        check_finite(value, step, latest_checkpoint(self.ckpt_root), what=what)

    def optimizer_step(self, loss: torch.Tensor, optimizer, parameters: Iterable, step: int, *,
                       grad_clip: float) -> None:
        """Stop on a NaN/Inf loss (mean over processes), backward, and on a synchronising step
        clip the gradient norm (0 = off; NaN/Inf stops too); then step and zero the optimizer."""
        accelerator = self.accelerator
        self.check_finite(accelerator.gather(loss.detach().reshape(1)).mean(), step)
        accelerator.backward(loss)
        # also catches Inf/NaN gradients of a finite loss
        if accelerator.sync_gradients:
            norm = accelerator.clip_grad_norm_(parameters, grad_clip or float("inf"))
            self.check_finite(norm, step, what="gradient norm")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def smoothed_loss(self, value: float) -> float:
        """Running mean 0.98 * previous + 0.02 * ``value`` (continued across a resume from the
        checkpoint's ``last_loss``); call it once a step, inside ``steps``."""
        self._smooth = value if self._smooth is None else 0.98 * self._smooth + 0.02 * value
        return self._smooth

    def steps(self, total: int, *, desc: str, save_samples: Callable[[Path], object] | None = None,
              sample_at_end: bool = False) -> Iterator[int]:
        """Yield the steps still to run (``progress.step + 1`` .. ``total``) under a progress
        bar; each body ends with ``end_step``. Stops after the step that ran out of time.

        ``save_samples(path)`` writes a sample grid (main process, every ``sample_every`` steps,
        and also at step ``total`` when ``sample_at_end``)."""
        self._total, self._save_samples, self._sample_at_end = total, save_samples, sample_at_end
        self._t_start, self._wall0 = time.time(), self.progress.wall_seconds
        self._smooth = self.progress.last_loss if self.progress.step else None
        self._bar = tqdm(total=total, initial=self.progress.step, disable=not self.main,
                         desc=desc, dynamic_ncols=True)
        try:  # the bar ends its line even when a step fails, so an error prints on its own
            while self.progress.step < total and not self.out_of_time:
                step = self.progress.step + 1
                yield step
                if self.progress.step != step:
                    raise RuntimeError(f"training step {step} did not end with end_step()")
        finally:
            self._bar.close()
            self._bar = None

    def end_step(self, step: int, loss: float, *, log: dict, postfix: dict) -> None:
        """Bookkeeping after the optimizer step: progress (``loss`` becomes ``last_loss``), wall
        time, bar, log line ``{"step", **log, "wall_s"}``, samples, checkpoint."""
        if self._bar is None:
            raise RuntimeError("end_step() is called inside a `for step in run.steps(...)` loop")
        cfg, progress = self.cfg, self.progress
        progress.step, progress.last_loss = step, loss
        progress.wall_seconds = self._wall0 + time.time() - self._t_start
        self._bar.update(1)
        self._bar.set_postfix(**postfix)
        self.out_of_time = (cfg.max_minutes > 0
                            and time.time() - self._t_start > cfg.max_minutes * 60)
        if self.main and every(cfg.log_every, step):
            append_log(self.log_path, {"step": step, **log,
                                       "wall_s": round(progress.wall_seconds, 1)})
        at_end = self._sample_at_end and step == self._total and cfg.sample_every
        if (self.main and self._save_samples is not None
                and (every(cfg.sample_every, step) or at_end)):
            self._save_samples(self.out / "samples" / f"step-{step:07d}.png")
        if every(cfg.save_every, step) or step == self._total or self.out_of_time:
            self.checkpoint_writer(self.accelerator, self.ckpt_root, step,
                                   keep=cfg.keep_checkpoints)

    def export(self, write: Callable[[Path], str | bytes]) -> Path:
        """Fill ``<out_dir>/<export>`` atomically on the main process (``write(tmp)`` saves the
        weights and returns the model card; then card, config and the ``export`` fault point),
        end the run on every process; returns the folder."""
        folder = self.out / self.export_name
        if self.main:
            with replace_folder_atomically(folder) as tmp:  # a kill never leaves half an export
                write_export_card(tmp, write(tmp), self.cfg)
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()
        return folder
