"""Video restoration: frames, size, fps and audio kept; resumable segments; bad files named."""

from __future__ import annotations

import json
import subprocess
import sys

import imageio_ffmpeg
import numpy as np
import pytest

from flipnet.errors import ImageReadError
from flipnet.pipelines.methods import BicubicMethod, InputMethod
from flipnet.pipelines.video import exact_fps, is_video, iter_frames, restore_video

FRAMES = 12


def make_clip(path, *, size=96, frames=FRAMES, fps=12, audio=True):
    """A ``frames``-frame test-pattern H.264 clip with (optionally) a 440 Hz AAC track."""
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-hide_banner", "-loglevel", "error",
           "-f", "lavfi", "-i", f"testsrc=size={size}x{size}:rate={fps}"]
    if audio:
        cmd += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=22050", "-c:a", "aac"]
    cmd += ["-frames:v", str(frames), "-c:v", "libx264", "-pix_fmt", "yuv420p", "-shortest",
            str(path)]
    subprocess.run(cmd, check=True, capture_output=True)
    return path


def streams(path) -> str:
    """ffmpeg's stream description lines for ``path``."""
    r = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)],
                       check=False, capture_output=True, text=True)
    return "\n".join(ln for ln in r.stderr.splitlines() if "Stream #" in ln)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("clip") / "clip.mp4")


def test_round_trip_keeps_frames_size_fps_and_audio(clip, tmp_path):
    entry = restore_video(clip, tmp_path, BicubicMethod(), upscale=2, progress=False,
                          segment_frames=5)
    out = tmp_path / "restored_videos" / "clip.mp4"
    assert entry["frames"] == FRAMES and entry["output"] == str(out)
    assert imageio_ffmpeg.count_frames_and_secs(str(out))[0] == FRAMES
    info, frames = iter_frames(out)
    assert info.size == (192, 192) and info.fps == 12
    assert "Audio: aac" in streams(out)
    first = next(frames)
    assert first.shape == (192, 192, 3) and first.dtype == np.uint8
    # only the final file and no work folder or temp file is left
    assert [p.name for p in (tmp_path / "restored_videos").iterdir()] == ["clip.mp4"]


def test_identity_method_reproduces_the_frames(clip, tmp_path):
    restore_video(clip, tmp_path, InputMethod(), progress=False)
    _, src = iter_frames(clip)
    _, out = iter_frames(tmp_path / "restored_videos" / "clip.mp4")
    diffs = [np.abs(a.astype(int) - b).mean() for a, b in zip(src, out)]
    assert len(diffs) == FRAMES and max(diffs) < 3.0  # only H.264 re-encoding differs


def test_video_without_audio(tmp_path):
    src = make_clip(tmp_path / "mute.mp4", audio=False, frames=5)
    restore_video(src, tmp_path / "o", InputMethod(), progress=False)
    out = tmp_path / "o" / "restored_videos" / "mute.mp4"
    assert "Audio" not in streams(out) and "Video" in streams(out)


def test_interrupted_run_resumes_from_finished_segments(tmp_path, monkeypatch):
    import flipnet.pipelines.restore as restore_mod

    calls = []
    real = restore_mod.restore_frames

    def counting(frames, method, **kw):
        calls.append(len(frames))
        if sum(calls) > 6:  # dies on frames 6-7: inside the second 4-frame segment
            raise KeyboardInterrupt
        return real(frames, method, **kw)

    src = make_clip(tmp_path / "c.mp4", frames=10, audio=False)
    monkeypatch.setattr(restore_mod, "restore_frames", counting)
    with pytest.raises(KeyboardInterrupt):
        restore_video(src, tmp_path / "o", InputMethod(), progress=False, segment_frames=4,
                      batch_frames=2)
    work = tmp_path / "o" / "restored_videos" / ".c.parts"
    assert not (tmp_path / "o" / "restored_videos" / "c.mp4").exists()  # no half output
    assert sorted(p.name for p in work.glob("part*.ts")) == ["part00000.ts"]
    calls.clear()
    monkeypatch.setattr(restore_mod, "restore_frames",
                        lambda frames, method, **kw: calls.append(len(frames))
                        or real(frames, method, **kw))
    entry = restore_video(src, tmp_path / "o", InputMethod(), progress=False, segment_frames=4,
                          batch_frames=2)
    assert sum(calls) == 6  # segment 0 (4 frames) was not redone
    assert entry["frames"] == 10 and not work.exists()
    assert imageio_ffmpeg.count_frames_and_secs(entry["output"])[0] == 10


def test_corrupt_and_fake_videos_are_named(tmp_path, clip):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(clip.read_bytes()[:1500])
    fake = tmp_path / "fake.mov"
    fake.write_text("not a video")
    for bad in (broken, fake):
        with pytest.raises(ImageReadError, match=bad.name):
            restore_video(bad, tmp_path / "o", InputMethod(), progress=False)
    assert not list((tmp_path / "o" / "restored_videos").glob("*.mp4"))


def test_cli_restores_video_and_reports_bad_ones(tmp_path, clip):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "good.mp4").write_bytes(clip.read_bytes())
    (tmp_path / "in" / "bad.webm").write_bytes(b"\x1a\x45\xdf\xa3 junk")
    r = subprocess.run([sys.executable, "-m", "flipnet.cli", "restore", str(tmp_path / "in"),
                        "-o", str(tmp_path / "out"), "--method", "input"],
                       check=False, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr  # some inputs skipped
    assert "Traceback" not in r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "bad.webm" in errors[0]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["images"][str(tmp_path / "in" / "good.mp4")]["frames"] == FRAMES
    assert (tmp_path / "out" / "restored_videos" / "good.mp4").exists()


def test_helpers():
    assert is_video("a/B.MP4") and is_video("x.webm") and not is_video("x.png")
    assert exact_fps(29.97) == pytest.approx(30000 / 1001) and exact_fps(25.0) == 25
    assert exact_fps(23.98).denominator == 1001


@pytest.mark.slow
def test_cli_killed_with_sigkill_reruns_to_the_unbroken_frames(tmp_path):
    import os
    import signal
    import time

    src = make_clip(tmp_path / "long.mp4", size=48, frames=600, fps=25)
    cmd = [sys.executable, "-m", "flipnet.cli", "restore", str(src), "--method", "input",
           "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd + ["-o", str(tmp_path / "straight")], check=True, capture_output=True,
                   env=env, timeout=600)
    out = tmp_path / "killed"
    work = out / "restored_videos" / ".long.parts"
    proc = subprocess.Popen(cmd + ["-o", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 300
    while not list(work.glob("part*.ts")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before a segment was finished; use a longer clip"
    proc.send_signal(signal.SIGKILL)  # mid-run: one segment done, the next one half-encoded
    proc.wait()
    assert not (out / "restored_videos" / "long.mp4").exists()  # never a half-written output
    r = subprocess.run(cmd + ["-o", str(out)], capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    assert [p.name for p in (out / "restored_videos").iterdir()] == ["long.mp4"]
    _, a = iter_frames(tmp_path / "straight" / "restored_videos" / "long.mp4")
    _, b = iter_frames(out / "restored_videos" / "long.mp4")
    pairs = list(zip(a, b, strict=True))
    assert len(pairs) == 600 and all(np.array_equal(x, y) for x, y in pairs)
