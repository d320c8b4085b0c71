"""Weights folders: ``config.json`` + fp16 safetensors shards (each under 16 MiB) + model card.

Layout of a folder::

    config.json              the component's dataclass config (rebuilds the architecture)
    model-00001.safetensors  tensors, fp16 for floating point, split so each file < 16 MiB
    model.index.json         which tensor lives in which shard (only when sharded)
    MODEL_CARD.md            data, command, steps, wall time, figures

A shipped name (``restorer-128``) resolves through ``weights_search_path()``; an existing path
always wins. See docs/INSTALL.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from flipnet.errors import OutputPathError, WeightsError
from flipnet.io import new_file_mode, write_bytes_atomic

SHARD_BYTES = 15 * 1024 * 1024

# The weights each method loads when none are named (flipnet restore --method NAME).
DEFAULT_WEIGHTS = {"restorer": "restorer-128", "finetuned": "restorer-128-finetuned",
                   "prior": "prior-latent-128", "flipnet": "flipnet-latent-128"}
# The wheel's copy of the checkout's weights/ (setup.py copies it in at build time).
PACKAGE_WEIGHTS_DIR = Path(__file__).resolve().parent / "data" / "weights"


def _checkout_weights_dir() -> Path | None:
    """``ROOT/weights`` when this module runs from a source checkout (``ROOT/src/flipnet``)."""
    here = Path(__file__).resolve().parent
    root = here.parents[1]
    if here.parent.name == "src" and (root / "pyproject.toml").is_file():
        return root / "weights"
    return None


CHECKOUT_WEIGHTS_DIR = _checkout_weights_dir()


def weights_search_path() -> list[tuple[str, Path]]:
    """Where a shipped name is looked for, in order, as (label, folder) pairs:
    each folder of $FLIPNET_WEIGHTS (``os.pathsep``-separated), the checkout's ``weights/``
    (only when running from source), then the installed package's own copy."""
    places = [("$FLIPNET_WEIGHTS", Path(p))
              for p in os.environ.get("FLIPNET_WEIGHTS", "").split(os.pathsep) if p]
    if CHECKOUT_WEIGHTS_DIR is not None:
        places.append(("checkout", CHECKOUT_WEIGHTS_DIR))
    places.append(("installed package", PACKAGE_WEIGHTS_DIR))
    return places


def find_weights(name: str) -> Path | None:
    """The first ``folder / name`` along ``weights_search_path()`` that exists, else None."""
    for _, root in weights_search_path():
        if (root / name).is_dir():
            return root / name
    return None


def resolve_weights(name_or_path: str | os.PathLike) -> Path:
    """A weights folder: an existing path as given, else a shipped name found along
    ``weights_search_path()``; ``WeightsError`` listing every place looked otherwise."""
    p = Path(name_or_path)
    if p.exists():
        return p
    found = find_weights(str(name_or_path))
    if found is not None:
        return found
    places = [f"{p.absolute()} (as a path)"]
    if not os.environ.get("FLIPNET_WEIGHTS"):
        places.append("$FLIPNET_WEIGHTS (not set)")
    places += [f"{root / str(name_or_path)} ({label})" for label, root in weights_search_path()]
    raise WeightsError(f"{name_or_path}: no such weights folder; looked at " + ", ".join(places))


def save_state_dict(folder: str | os.PathLike, state: dict[str, torch.Tensor], *,
                    prefix: str = "model", half: bool = True,
                    shard_bytes: int = SHARD_BYTES) -> list[Path]:
    """Save tensors as fp16 safetensors shards under ``shard_bytes`` each; returns the files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key in sorted(state):
        t = state[key].detach().cpu()
        if half and t.is_floating_point():
            t = t.half()
        t = t.contiguous().clone()
        nbytes = t.numel() * t.element_size()
        if nbytes > shard_bytes:
            raise WeightsError(f"tensor {key} is {nbytes} bytes, larger than one shard")
        if size + nbytes > shard_bytes and shards[-1]:
            shards.append({})
            size = 0
        shards[-1][key] = t
        size += nbytes
    files = []
    for old in folder.glob(f"{prefix}-*.safetensors"):
        old.unlink()
    index, digests = {}, {}
    for i, shard in enumerate(shards, 1):
        name = f"{prefix}-{i:05d}.safetensors"
        tmp = folder / f".{name}.tmp"
        try:
            save_file(shard, str(tmp), metadata={"format": "pt"})
            os.chmod(tmp, new_file_mode())  # safetensors creates 0600 files
            digests[name] = hashlib.sha256(tmp.read_bytes()).hexdigest()
            os.replace(tmp, folder / name)
        except (OSError, SafetensorError) as e:  # disk full, read-only folder
            tmp.unlink(missing_ok=True)
            raise OutputPathError(f"{folder / name}: could not be written "
                                  f"({getattr(e, 'strerror', None) or e})") from None
        files.append(folder / name)
        index.update({k: name for k in shard})
    write_bytes_atomic(folder / f"{prefix}.index.json",
                       json.dumps({"weight_map": index, "sha256": digests}, indent=1).encode())
    return files


@contextmanager
def replace_folder_atomically(folder: str | os.PathLike) -> Iterator[Path]:
    """Yield ``FOLDER.tmp`` to fill; on success swap it in for ``folder`` (rename), so readers
    and a kill -9 see the old complete folder or the new one, never a half-written mix."""
    folder = Path(folder)
    tmp, old = folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    except OSError as e:
        raise OutputPathError(f"{tmp}: cannot create this folder ({e.strerror or e})") from None
    try:
        yield tmp
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            folder.rename(old)
        tmp.rename(folder)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not folder.exists():
            old.rename(folder)  # keep what was there before
        if isinstance(e, OSError):
            raise OutputPathError(f"{folder}: could not be written ({e.strerror or e}); the "
                                  "previous contents are kept") from None
        raise
    shutil.rmtree(old, ignore_errors=True)


def load_state_dict(folder: str | os.PathLike, *, prefix: str = "model",
                    dtype: torch.dtype | None = torch.float32) -> dict[str, torch.Tensor]:
    """Load every shard of a weights folder; floating tensors cast to ``dtype``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise WeightsError(f"{folder}: weights folder not found")
    files = sorted(folder.glob(f"{prefix}-*.safetensors"))
    single = folder / f"{prefix}.safetensors"
    if single.exists():
        files.append(single)
    if not files:
        raise WeightsError(f"{folder}: no {prefix}*.safetensors files")
    index = folder / f"{prefix}.index.json"
    expected, digests = None, {}
    if index.exists():
        try:
            meta = json.loads(index.read_text())
            expected, digests = set(meta["weight_map"]), dict(meta.get("sha256") or {})
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise WeightsError(f"{index}: invalid index ({type(e).__name__}: {e})") from None
    state: dict[str, torch.Tensor] = {}
    for f in files:
        if f.name in digests and hashlib.sha256(f.read_bytes()).hexdigest() != digests[f.name]:
            raise WeightsError(f"{f}: contents do not match the SHA-256 in {index.name} "
                               "(tampered with or corrupt)")
        try:
            part = load_file(str(f))
        except (SafetensorError, OSError, ValueError, RuntimeError, OverflowError) as e:
            raise WeightsError(f"{f}: unreadable safetensors file ({e})") from None
        state.update(part)
    if expected is not None:
        missing = expected - set(state)
        if missing:
            raise WeightsError(f"{folder}: shards are missing tensors, e.g. {min(missing)}")
    if dtype is not None:
        state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}
    return state


def load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """``load_state_dict(strict=True)`` that reports mismatches as a ``WeightsError``."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad_shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or bad_shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if bad_shape:
            k = bad_shape[0]
            parts.append(f"{len(bad_shape)} of wrong shape (e.g. {k}: file "
                         f"{tuple(state[k].shape)} vs config {tuple(own[k].shape)})")
        raise WeightsError(f"{where}: weights do not match the config: " + "; ".join(parts))
    module.load_state_dict(state, strict=True)


def read_checkpoint_file(path: str | os.PathLike, *,
                         allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Tensors of a foreign .pt/.pth/.bin/.ckpt or .safetensors file, unwrapping
    ``{'state_dict' | 'model' | 'ema' | 'params': ...}``; WeightsError naming it.

    Pickled objects (code that runs on load) are refused: only torch's ``weights_only``
    unpickler is used unless ``allow_pickle=True`` is passed for a file you trust."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".safetensors":
            return load_file(str(path))
        obj = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except FileNotFoundError:
        raise WeightsError(f"{path}: checkpoint not found") from None
    except Exception as e:  # noqa: BLE001 - torch raises many types for refused/corrupt pickles
        raise WeightsError(f"{path}: not a plain tensor checkpoint; pickled objects are refused "
                           f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    for key in ("state_dict", "model", "ema", "params"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: expected a dict of tensors")
    return obj
