"""Bounded load test of ``flipnet serve`` on loopback (issue #8, "the web page under load").

Starts the real server in a subprocess (shipped restorer, CPU), then fires ``--requests`` uploads at
once (alternating an aligned 128 px face crop and the whole 512 px astronaut photo) in two phases:

``burst``  every request once: each gets 200 or an immediate 503 "busy" (never a time-out);
``retry``  the same burst, but a client answered 503 waits ``Retry-After`` and tries again, so
           every upload is eventually restored (throughput at saturation).

Records status codes, latencies and the server's RSS (sampled every 50 ms); prints requests/s,
p50/p90/p99 latency, counts of 200 / 503 / other and lost (must be 0 and 0), peak RSS; writes JSON.

    python benchmarks/serve_load.py --out out/load_serve.json
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_payloads() -> list[tuple[str, bytes, bool]]:
    """(file name, PNG bytes, aligned) for the astronaut photo and its aligned 128 px face crop."""
    from PIL import Image
    from skimage import data

    from flipnet.faces.align import align_face
    from flipnet.faces.detect import detect_faces

    photo = np.ascontiguousarray(data.astronaut())
    face = detect_faces(photo)[0]
    crop = align_face(photo, face.landmarks5, size=128).crop

    def png(rgb: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="PNG")
        return buf.getvalue()

    return [("crop128.png", png(crop), True), ("astronaut.png", png(photo), False)]


def start_server(port: int, args) -> subprocess.Popen:
    """The server in its own process (so its RSS is measured alone)."""
    settings = (f"port={port}, device={args.device!r}, workers={args.workers}, "
                f"queue={args.queue}, method={args.method!r}")
    code = (f"import torch; torch.set_num_threads({args.threads}); from flipnet.serve import "
            f"ServeConfig, run_server; run_server(ServeConfig({settings}))")
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL)


class RssSampler(threading.Thread):
    """Samples a process's resident memory every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.05):
        import psutil

        super().__init__(daemon=True)
        self.proc, self.interval = psutil.Process(pid), interval
        self.samples: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        import psutil

        while not self.stop.is_set():
            try:
                self.samples.append(self.proc.memory_info().rss)
            except psutil.Error:  # the process ended
                return
            time.sleep(self.interval)

    def peak_mb(self, since: int = 0) -> float:
        """Highest RSS since sample index ``since``, in MiB."""
        return max(self.samples[since:], default=0) / 2**20


async def one_upload(client, url: str, payload, *, method: str, retry: bool, deadline: float):
    """POST one upload; with ``retry``, wait Retry-After and resend on 503 until ``deadline``."""
    import httpx

    name, data, aligned = payload
    t0 = time.perf_counter()
    attempts = 0
    while True:
        attempts += 1
        try:
            r = await client.post(url, files={"file": (name, data, "image/png")},
                                  data={"method": method, "aligned": "1" if aligned else "0"})
            status, body = r.status_code, r.content
        except httpx.HTTPError as e:  # connection reset, time-out...: counted as lost
            return {"status": "lost", "error": f"{type(e).__name__}: {e}",
                    "seconds": time.perf_counter() - t0, "attempts": attempts, "kind": name}
        if status == 503 and retry and time.perf_counter() < deadline:
            await asyncio.sleep(float(r.headers.get("retry-after", "1")))
            continue
        ok = status == 200 and body[:8] == b"\x89PNG\r\n\x1a\n"
        busy_ok = status == 503 and json.loads(body).get("error") == "busy, try again"
        return {"status": status if (ok or busy_ok) else f"other:{status}",
                "seconds": time.perf_counter() - t0, "attempts": attempts, "kind": name}


async def run_phase(base: str, payloads, args, *, retry: bool) -> dict:
    """Fire ``args.requests`` uploads at once and summarise them."""
    import httpx

    limits = httpx.Limits(max_connections=args.requests, max_keepalive_connections=args.requests)
    deadline = time.perf_counter() + args.retry_for
    async with httpx.AsyncClient(limits=limits, timeout=args.timeout) as client:
        t0 = time.perf_counter()
        results = await asyncio.gather(*[
            one_upload(client, f"{base}/api/restore", payloads[i % len(payloads)],
                       method=args.method, retry=retry, deadline=deadline)
            for i in range(args.requests)])
        wall = time.perf_counter() - t0
    return summarise(results, wall)


def summarise(results: list[dict], wall: float) -> dict:
    """Counts, requests/s and latency percentiles of one phase."""
    status = [r["status"] for r in results]
    lat = np.array([r["seconds"] for r in results])
    ok_lat = np.array([r["seconds"] for r in results if r["status"] == 200])
    busy_lat = np.array([r["seconds"] for r in results if r["status"] == 503])

    def pct(a: np.ndarray) -> dict:
        if a.size == 0:
            return {}
        return {f"p{q}": round(float(np.percentile(a, q)), 3) for q in (50, 90, 99)} | {
            "max": round(float(a.max()), 3)}

    return {"requests": len(results), "wall_s": round(wall, 2),
            "ok": status.count(200), "busy_503": status.count(503),
            "other": sum(isinstance(s, str) and s.startswith("other") for s in status),
            "lost": status.count("lost"),
            "responses_per_s": round(len(results) / wall, 2),
            "restored_per_s": round(status.count(200) / wall, 2),
            "latency_all_s": pct(lat), "latency_200_s": pct(ok_lat),
            "latency_503_s": pct(busy_lat),
            "attempts": int(sum(r["attempts"] for r in results)),
            "errors": sorted({r["error"] for r in results if "error" in r})[:5]}


def wait_healthy(base: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Poll /healthz until the server answers."""
    import httpx

    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with code {proc.returncode}")
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit("server did not start")


def main() -> None:
    """Run both phases and write the JSON report."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=50, help="concurrent uploads per phase")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--queue", type=int, default=4)
    p.add_argument("--threads", type=int, default=1, help="torch threads in the server")
    p.add_argument("--method", default="restorer")
    p.add_argument("--device", default="cpu")
    p.add_argument("--timeout", type=float, default=300, help="client time-out per request (s)")
    p.add_argument("--retry-for", type=float, default=300, help="retry phase gives up after (s)")
    p.add_argument("--out", default="out/load_serve.json")
    args = p.parse_args()

    import torch

    torch.set_num_threads(1)
    payloads = make_payloads()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_server(port, args)
    try:
        wait_healthy(base, proc)
        sampler = RssSampler(proc.pid)
        sampler.start()
        asyncio.run(run_phase(base, payloads, argparse.Namespace(**{**vars(args), "requests": 2}),
                              retry=True))  # warm-up: loads the method, first detection
        rss_idle = sampler.samples[-1] / 2**20
        report = {"settings": vars(args), "python": platform.python_version(),
                  "cpu_count": os.cpu_count(), "rss_after_warmup_mb": round(rss_idle, 1)}
        for phase, retry in (("burst", False), ("retry", True)):
            mark = len(sampler.samples)
            report[phase] = run = asyncio.run(run_phase(base, payloads, args, retry=retry))
            run["peak_rss_mb"] = round(sampler.peak_mb(mark), 1)
            print(f"{phase:5s}: {run['requests']} uploads in {run['wall_s']} s: "
                  f"{run['ok']} x 200, {run['busy_503']} x 503, {run['other']} other, "
                  f"{run['lost']} lost; {run['restored_per_s']} restored/s, "
                  f"{run['responses_per_s']} responses/s; latency 200 {run['latency_200_s']}, "
                  f"503 {run['latency_503_s']}; peak RSS {run['peak_rss_mb']} MiB", flush=True)
        sampler.stop.set()
        report["alive_after"] = proc.poll() is None
        report["rss_end_mb"] = round(sampler.samples[-1] / 2**20, 1)
        report["peak_rss_mb"] = round(sampler.peak_mb(), 1)
    finally:
        proc.terminate()
        proc.wait(10)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"server alive after both phases: {report['alive_after']}; RSS after warm-up "
          f"{report['rss_after_warmup_mb']} MiB, peak {report['peak_rss_mb']} MiB, end "
          f"{report['rss_end_mb']} MiB -> {args.out}")
    if any(report[k]["other"] or report[k]["lost"] for k in ("burst", "retry")):
        sys.exit(1)


if __name__ == "__main__":
    main()
