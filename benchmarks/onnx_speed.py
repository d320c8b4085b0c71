"""Faces/s of the restorer with torch vs onnxruntime on the CPU, and % of the FLOP limit (issue 19).

Each variant restores uint8 128 px crops (``restore(crops)``, as ``flipnet restore --aligned``
runs it) at batch 1 and 16:

  torch             ``RestorerMethod`` as shipped (no_grad, NCHW)
  torch-cl          the same model under ``torch.inference_mode`` in channels_last
  onnx              ``OnnxRestorerMethod`` as shipped: ORT_ENABLE_ALL, sequential, no spinning
  onnx-spin         the same with spinning worker threads (onnxruntime's default)
  onnx-basic        only the basic graph optimisations (what ORT_ENABLE_ALL's fusions add)

The limit: FLOPs per face from ``torch.utils.flop_counter`` (convs and matmuls; one multiply-add =
2 FLOPs) and the machine's peak = the best fp32 GFLOP/s of a 2048 x 2048 matmul with the same
threads, in torch and in onnxruntime (the better BLAS of the two counts). % of limit =
faces/s x FLOPs per face / peak. Timings interleave the variants over a few rounds and keep the
best, so a load that comes and goes hurts them all alike. Runs in well under 2 minutes.

    python benchmarks/onnx_speed.py --threads 2 --out out/onnx-speed-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from restore_throughput import flops_per_face, peak_matmul_flops  # noqa: E402

from flipnet.io import to_tensor, to_uint8, write_bytes_atomic  # noqa: E402


class ChannelsLastTorch:
    """The torch restorer in channels_last under ``inference_mode`` (the cheap torch wins)."""

    def __init__(self, method):
        self.model = method.model.to(memory_format=torch.channels_last)
        self.size, self.batch_size = method.size, method.batch_size

    @torch.inference_mode()
    def restore(self, crops: np.ndarray) -> np.ndarray:
        """uint8 (N, S, S, 3) -> restored uint8, in batches."""
        out = []
        for i in range(0, len(crops), self.batch_size):
            x = to_tensor(crops[i:i + self.batch_size]).contiguous(
                memory_format=torch.channels_last)
            out.append(to_uint8(self.model(x)))
        return np.concatenate(out)


def ort_matmul_peak(threads: int, *, n: int = 2048, seconds: float = 2.0) -> float:
    """Best fp32 FLOP/s of an n x n MatMul in onnxruntime with ``threads`` intra-op threads."""
    import onnx
    from onnx import TensorProto, helper

    from flipnet.pipelines.onnx_method import make_session

    a, b, c = (helper.make_tensor_value_info(k, TensorProto.FLOAT, [n, n]) for k in "abc")
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "mm", [a, b], [c])
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"flipnet-matmul-{os.getpid()}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    try:
        session = make_session(path, threads=threads, spinning=True)
    finally:
        path.unlink()
    rng = np.random.default_rng(0)
    feed = {k: rng.standard_normal((n, n), dtype=np.float32) for k in "ab"}
    session.run(None, feed)
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        session.run(None, feed)
        best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best


def make_variants(folder: Path, threads: int) -> tuple[dict, int, int]:
    """(variants by name, FLOPs per face, face size); each variant has ``restore(crops)``."""
    from flipnet.pipelines.methods import RestorerMethod
    from flipnet.pipelines.onnx_method import OnnxRestorerMethod, make_session

    torch_method = RestorerMethod(folder, device="cpu")
    flops = flops_per_face(torch_method.model, torch_method.size, torch.device("cpu"))
    variants = {"torch": torch_method,
                "torch-cl": ChannelsLastTorch(RestorerMethod(folder, device="cpu"))}
    for name, kw in {"onnx": None, "onnx-spin": {"spinning": True},
                     "onnx-basic": {"level": "basic"}}.items():
        m = OnnxRestorerMethod(folder, threads=threads)
        if kw is not None:
            m.session = make_session(m.onnx_path, threads=threads, **kw)
        variants[name] = m
    return variants, flops, torch_method.size


def time_variants(variants: dict, batch_sizes: list[int], size: int, *, seconds: float,
                  rounds: int, deadline: float) -> list[dict]:
    """Faces/s of every (variant, batch size): rounds of ``seconds / rounds`` each, interleaved;
    the best call counts. Rounds after ``deadline`` (a perf_counter time) are skipped."""
    rng = np.random.default_rng(0)
    crops = {bs: rng.integers(0, 256, (bs, size, size, 3), dtype=np.uint8) for bs in batch_sizes}
    best: dict[tuple[str, int], list[float]] = {}
    for r in range(rounds):
        for bs in batch_sizes:
            for name, method in variants.items():
                if r and time.perf_counter() > deadline:  # every cell keeps its first round
                    continue
                method.batch_size = bs
                if r == 0:
                    method.restore(crops[bs])  # warm-up
                times, t_end = [], time.perf_counter() + seconds / rounds
                while not times or time.perf_counter() < t_end:
                    t0 = time.perf_counter()
                    method.restore(crops[bs])
                    times.append(time.perf_counter() - t0)
                best.setdefault((name, bs), []).append(min(times))
    return [{"variant": name, "batch_size": bs, "faces_per_s": bs / min(ts),
             "ms_per_batch": 1000 * min(ts), "rounds": len(ts)}
            for (name, bs), ts in best.items()]


def main() -> None:
    """Run the comparison, print a markdown table and write the JSON report."""
    from flipnet.pipelines.methods import resolve_weights

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default="restorer-128", help="restorer folder or shipped name")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for torch and onnxruntime")
    ap.add_argument("--batch-sizes", default="1,16", help="comma-separated batch sizes")
    ap.add_argument("--seconds", type=float, default=2.0, help="timing per variant and batch")
    ap.add_argument("--rounds", type=int, default=4, help="interleaved rounds")
    ap.add_argument("--budget", type=float, default=75.0,
                    help="seconds after which no further rounds start (each cell keeps one)")
    ap.add_argument("--out", default="out/onnx-speed-cpu.json", help="JSON report")
    args = ap.parse_args()

    start = time.perf_counter()
    load_before = os.getloadavg()
    torch.set_num_threads(args.threads)
    import onnxruntime

    variants, flops, size = make_variants(resolve_weights(args.weights), args.threads)
    peaks = {"torch": peak_matmul_flops(torch.device("cpu"), seconds=2.0),
             "onnxruntime": ort_matmul_peak(args.threads)}
    peak = max(peaks.values())
    cpu = f"{platform.processor() or platform.machine()}, {args.threads} of {os.cpu_count()} cores"
    print(f"{args.weights} on {cpu}: {flops / 1e9:.3f} GFLOP/face; peak fp32 matmul "
          f"torch {peaks['torch'] / 1e9:.1f}, onnxruntime {peaks['onnxruntime'] / 1e9:.1f} "
          f"GFLOP/s -> limit {peak / flops:.0f} faces/s; load average {load_before[0]:.1f}",
          flush=True)
    rows = time_variants(variants, [int(b) for b in args.batch_sizes.split(",")], size,
                         seconds=args.seconds, rounds=args.rounds,
                         deadline=start + args.budget)
    base = {r["batch_size"]: r["faces_per_s"] for r in rows if r["variant"] == "torch"}
    for r in rows:
        r["percent_of_limit"] = 100 * r["faces_per_s"] * flops / peak
        r["speedup_vs_torch"] = r["faces_per_s"] / base[r["batch_size"]]
    load_after = os.getloadavg()
    print("\n| variant | batch | faces/s | ms/batch | x torch | % of limit |\n"
          "|---|---:|---:|---:|---:|---:|")
    for r in sorted(rows, key=lambda r: (r["batch_size"], r["variant"])):
        print(f"| {r['variant']} | {r['batch_size']} | {r['faces_per_s']:.1f} | "
              f"{r['ms_per_batch']:.1f} | {r['speedup_vs_torch']:.2f} | "
              f"{r['percent_of_limit']:.1f} |")
    print(f"\nload average {load_before[0]:.1f} before, {load_after[0]:.1f} after "
          f"({os.cpu_count()} cores); {time.perf_counter() - start:.0f} s")
    report = {"weights": args.weights, "face_size": size, "cpu": cpu, "threads": args.threads,
              "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
              "flops_per_face": flops, "peak_flops": peaks, "limit_faces_per_s": peak / flops,
              "load_average": {"before": load_before, "after": load_after}, "rows": rows}
    write_bytes_atomic(args.out, json.dumps(report, indent=1).encode())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
