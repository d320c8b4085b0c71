"""Config JSON and weights folders: round trips and clear errors for bad files."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from flipnet.config import load_config, save_config
from flipnet.errors import ConfigError, WeightsError
from flipnet.weights import load_into, load_state_dict, save_state_dict


@dataclass(frozen=True)
class Inner:
    sigma: tuple[float, float] = (0.1, 10.0)
    kind: str = "iso"


@dataclass(frozen=True)
class Outer:
    size: int = 128
    stages: tuple[Inner, ...] = (Inner(), Inner((1.0, 2.0), "aniso"))
    extra: dict = field(default_factory=dict)
    maybe: Inner | None = None


def test_config_round_trip(tmp_path):
    cfg = Outer(size=64, extra={"a": 1}, maybe=Inner((3.0, 4.0)))
    save_config(cfg, tmp_path / "c.json")
    back = load_config(Outer, tmp_path / "c.json")
    assert back == cfg


def test_config_errors_name_the_problem(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"size": 1, "sizee": 2}))
    with pytest.raises(ConfigError, match="unknown keys.*sizee"):
        load_config(Outer, p)
    p.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(Outer, p)
    save_config(Inner(), p)
    with pytest.raises(ConfigError, match="holds a Inner config"):
        load_config(Outer, p)


def test_weights_sharded_fp16_round_trip(tmp_path):
    net = torch.nn.Sequential(torch.nn.Linear(300, 300), torch.nn.Linear(300, 300))
    files = save_state_dict(tmp_path, net.state_dict(), shard_bytes=200_000)
    assert len(files) >= 2 and all(f.stat().st_size < 16 * 2**20 for f in files)
    state = load_state_dict(tmp_path)
    assert all(v.dtype == torch.float32 for v in state.values())
    fresh = torch.nn.Sequential(torch.nn.Linear(300, 300), torch.nn.Linear(300, 300))
    load_into(fresh, state, str(tmp_path))
    for a, b in zip(net.parameters(), fresh.parameters()):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)  # fp16 storage


def test_weights_errors(tmp_path):
    import stat

    from flipnet.io import new_file_mode

    net = torch.nn.Linear(4, 4)
    save_state_dict(tmp_path, net.state_dict())
    for f in tmp_path.iterdir():  # readable as any new file (safetensors itself writes 0600)
        assert stat.S_IMODE(f.stat().st_mode) == new_file_mode(), f.name
    with pytest.raises(WeightsError, match="do not match"):
        load_into(torch.nn.Linear(4, 5), load_state_dict(tmp_path), "w")
    f = next(tmp_path.glob("*.safetensors"))
    f.write_bytes(f.read_bytes()[:40])  # truncated: the index's SHA-256 no longer matches
    with pytest.raises(WeightsError, match=f"{f.name}: contents do not match the SHA-256"):
        load_state_dict(tmp_path)
    (tmp_path / "model.index.json").unlink()  # no index (older folders): the reader notices
    with pytest.raises(WeightsError, match="unreadable"):
        load_state_dict(tmp_path)
    with pytest.raises(WeightsError, match="not found"):
        load_state_dict(tmp_path / "nope")


def test_weights_lookup_order(tmp_path, monkeypatch):
    """An existing path, then $FLIPNET_WEIGHTS (in order), the checkout, the installed package."""
    import flipnet.weights as w

    roots = {k: tmp_path / k for k in ("env1", "env2", "checkout", "package")}
    for root in roots.values():
        (root / "m").mkdir(parents=True)
    monkeypatch.setattr(w, "CHECKOUT_WEIGHTS_DIR", roots["checkout"])
    monkeypatch.setattr(w, "PACKAGE_WEIGHTS_DIR", roots["package"])
    monkeypatch.setenv("FLIPNET_WEIGHTS", os.pathsep.join([str(roots["env1"]), str(roots["env2"])]))
    (tmp_path / "cwd" / "m").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "cwd")
    assert w.resolve_weights("m") == Path("m")  # an existing path wins over a shipped name
    assert w.resolve_weights(tmp_path / "package" / "m") == tmp_path / "package" / "m"
    monkeypatch.chdir(tmp_path)
    for expected in ("env1", "env2", "checkout", "package"):
        assert w.resolve_weights("m") == roots[expected] / "m"
        shutil.rmtree(roots[expected] / "m")
    with pytest.raises(WeightsError, match="no such weights folder") as err:
        w.resolve_weights("m")
    for place in (tmp_path / "m", *(root / "m" for root in roots.values())):
        assert str(place) in str(err.value)
    monkeypatch.delenv("FLIPNET_WEIGHTS")
    monkeypatch.setattr(w, "CHECKOUT_WEIGHTS_DIR", None)  # an installed package: no checkout
    assert [label for label, _ in w.weights_search_path()] == ["installed package"]
    with pytest.raises(WeightsError, match=r"\$FLIPNET_WEIGHTS \(not set\)"):
        w.resolve_weights("m")


def test_checkout_weights_and_available_methods(tmp_path, monkeypatch):
    """From source the checkout's weights/ is searched; methods whose weights are nowhere are
    not listed (the baselines always are)."""
    import flipnet.weights as w
    from flipnet.pipelines.methods import available_methods

    assert w.CHECKOUT_WEIGHTS_DIR == Path(__file__).resolve().parents[1] / "weights"
    monkeypatch.delenv("FLIPNET_WEIGHTS", raising=False)
    monkeypatch.setattr(w, "CHECKOUT_WEIGHTS_DIR", tmp_path / "checkout")
    monkeypatch.setattr(w, "PACKAGE_WEIGHTS_DIR", tmp_path / "package")
    have = available_methods()
    assert "restorer" not in have and {"bicubic", "classical", "input"} <= set(have)
    (tmp_path / "package" / w.DEFAULT_WEIGHTS["restorer"]).mkdir(parents=True)
    assert "restorer" in available_methods()
