"""The feed-forward restorer run by onnxruntime on the CPU (``flipnet restore --backend onnx``).

Same interface and value range as ``RestorerMethod``: uint8 ``(N, S, S, 3)`` crops in, uint8
out, through ``flipnet.io.to_tensor`` / ``to_uint8``. The ONNX file is ``<folder>/model.onnx``
when its sidecar says it matches the weights now in the folder; otherwise the folder is exported
once into ``$FLIPNET_CACHE/onnx/`` (default ``~/.cache/flipnet/onnx/``), named by the weights
fingerprint, because the weights folder of an installed package may be read-only.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from flipnet.errors import ConfigError, WeightsError
from flipnet.io import to_tensor, to_uint8
from flipnet.models.onnx_export import (
    INPUT_NAME,
    OUTPUT_NAME,
    export_onnx,
    is_fresh,
    weights_fingerprint,
)

MISSING_ORT = "--backend onnx needs onnxruntime: pip install onnxruntime"


def onnx_cache_dir() -> Path:
    """Folder of cached exports: ``$FLIPNET_CACHE/onnx``, else ``~/.cache/flipnet/onnx``."""
    root = os.environ.get("FLIPNET_CACHE") or Path.home() / ".cache" / "flipnet"
    return Path(root) / "onnx"


def find_or_export(folder: str | os.PathLike) -> Path:
    """A fresh ONNX export of a restorer folder: its own ``model.onnx``, a cached one, or a new
    export into ``onnx_cache_dir()``."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise WeightsError(f"{folder}: no config.json (not a flipnet restorer folder)")
    fingerprint = weights_fingerprint(folder)
    for candidate in (folder / "model.onnx", onnx_cache_dir() / f"{fingerprint[:32]}.onnx"):
        if is_fresh(candidate, folder, fingerprint=fingerprint):
            return candidate
    return export_onnx(folder, candidate)


def _import_onnxruntime():
    """onnxruntime, or a ``ConfigError`` saying how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError(MISSING_ORT) from None
    return onnxruntime


def make_session(path: str | os.PathLike, *, threads: int, level: str = "all",
                 spinning: bool = False):
    """An onnxruntime CPU session: ``threads`` intra-op threads, sequential execution, graph
    optimisation ``level`` (disable | basic | extended | all).

    Idle worker threads sleep instead of spinning by default: on a busy machine spinning threads
    fight the other processes for the cores (measured 2-9x slower under load, see
    ``benchmarks/onnx_speed.py``, which also times ``spinning=True``)."""
    ort = _import_onnxruntime()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    opts.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


class OnnxRestorerMethod:
    """The feed-forward restorer through onnxruntime (CPUExecutionProvider), in batches.

    Args:
        folder: a restorer weights folder (see ``find_or_export`` for where the .onnx comes from).
        name: the method name shown in reports.
        batch_size: faces per ``session.run``.
        threads: intra-op threads; None = ``torch.get_num_threads()``.
        device: only ``cpu`` (or ``auto``) is accepted; other devices are a ``ConfigError``.
    """

    template = "flipnet"

    def __init__(self, folder: str | os.PathLike, *, name: str = "restorer",
                 batch_size: int = 16, threads: int | None = None, device: str = "cpu"):
        from flipnet.config import load_config
        from flipnet.models.restorer import RestorerConfig

        _import_onnxruntime()  # fail before any export work
        if str(device) not in ("auto", "cpu"):
            raise ConfigError(f"--backend onnx runs on the CPU only (got --device {device}); "
                              "use --backend torch for other devices")
        self.name = name
        self.device = torch.device("cpu")
        self.batch_size = batch_size
        self.onnx_path = find_or_export(folder)
        self.cfg = load_config(RestorerConfig, Path(folder) / "config.json")
        self.size = int(self.cfg.image_size)
        self.threads = int(threads or torch.get_num_threads())
        self.session = make_session(self.onnx_path, threads=self.threads)

    def restore(self, crops: np.ndarray) -> np.ndarray:
        """uint8 (N, S, S, 3) -> restored uint8, in batches."""
        crops = np.asarray(crops)
        if crops.ndim != 4 or crops.shape[1:] != (self.size, self.size, 3):
            raise ValueError(f"OnnxRestorerMethod expects uint8 (N, {self.size}, {self.size}, 3) "
                             f"crops, got {crops.dtype} {crops.shape}")
        if len(crops) == 0:
            return np.array(crops, dtype=np.uint8, copy=True)
        out = []
        for i in range(0, len(crops), self.batch_size):
            x = to_tensor(crops[i:i + self.batch_size]).numpy()  # (B, 3, S, S) in [-1, 1]
            (y,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: x})
            out.append(to_uint8(torch.from_numpy(y)))
        return np.concatenate(out)
