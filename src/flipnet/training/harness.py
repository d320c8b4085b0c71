"""The scaffolding every training loop shares, in one place: ``TrainingRun``.

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
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

import torch
from tqdm.auto import tqdm

from flipnet.config import save_config
from flipnet.training.common import (
    EMA,
    TrainProgress,
    append_log,
    check_finite,
    clean_partial_outputs,
    endless_batches,
    every,
    latest_checkpoint,
    load_checkpoint,
    resume_point,
    save_checkpoint,
    trim_log,
    write_export_card,
)
from flipnet.weights import replace_folder_atomically


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
