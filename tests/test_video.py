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
from flipnet.pipelines.video import (
    TrackedFrames,
    exact_fps,
    is_video,
    iter_frames,
    restore_video,
)

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
    import flipnet.pipelines.video as video_mod

    calls = []
    real = video_mod.restore_crops

    def counting(per_frame, method, timings):
        calls.append(len(per_frame))
        if sum(calls) > 6:  # dies on frames 6-7: inside the second 4-frame segment
            raise KeyboardInterrupt
        return real(per_frame, method, timings)

    src = make_clip(tmp_path / "c.mp4", frames=10, audio=False)
    monkeypatch.setattr(video_mod, "restore_crops", counting)
    with pytest.raises(KeyboardInterrupt):
        restore_video(src, tmp_path / "o", InputMethod(), progress=False, segment_frames=4,
                      batch_frames=2)
    work = tmp_path / "o" / "restored_videos" / ".c.parts"
    assert not (tmp_path / "o" / "restored_videos" / "c.mp4").exists()  # no half output
    assert sorted(p.name for p in work.glob("part*.ts")) == ["part00000.ts"]
    calls.clear()
    monkeypatch.setattr(video_mod, "restore_crops",
                        lambda per_frame, method, timings: calls.append(len(per_frame))
                        or real(per_frame, method, timings))
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


def jittered_face_clip(astronaut, frames: int, *, noise: float, seed: int = 0):
    """A 160 px clip of the astronaut's face moved by a known random similarity per frame
    (up to 1.5 px, 0.5 deg, 0.5 %) with fresh noise: the frames and their (2, 3) jitters."""
    import cv2

    rng = np.random.default_rng(seed)
    still = cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA)[:160, 30:190]
    still = cv2.GaussianBlur(still, (0, 0), 1.0)
    clip, maps = [], []
    for _ in range(frames):
        m = cv2.getRotationMatrix2D((80, 80), rng.uniform(-0.5, 0.5),
                                    1 + rng.uniform(-0.005, 0.005))
        m[:, 2] += rng.uniform(-1.5, 1.5, 2)
        moved = cv2.warpAffine(still, m, (160, 160), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT_101).astype(np.float32)
        clip.append(np.clip(np.rint(moved + rng.normal(0, noise, moved.shape)), 0, 255)
                    .astype(np.uint8))
        maps.append(m)
    return clip, maps


def face_flicker(frames, maps, box=(58, 41, 103, 85)) -> float:
    """Mean |frame t - frame t-1| inside the face box, each frame warped back by the inverse
    of its known jitter (0-255 levels)."""
    import cv2

    x0, y0, x1, y1 = box
    back = [cv2.warpAffine(f, cv2.invertAffineTransform(m), (160, 160),
                           flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
            [y0:y1, x0:x1].astype(np.float32) for f, m in zip(frames, maps)]
    return float(np.mean([np.abs(a - b).mean() for a, b in zip(back[1:], back[:-1])]))


def test_restored_faces_flicker_less_than_the_input(astronaut):
    """Issue 19: the restored face's frame-to-frame change must not exceed the input's. Per
    frame detection and alignment (before) gave 0.77 x the input's on this clip, landmark
    smoothing alone 0.75 x; with the temporal blend the default gives about 0.5 x."""
    from flipnet.pipelines.methods import make_method

    clip, maps = jittered_face_clip(astronaut, 12, noise=6.0)
    restore = TrackedFrames(make_method("restorer", device="cpu"))
    out = [r.image for i in range(0, len(clip), 4) for r in restore(clip[i:i + 4])]
    assert all(len(r.faces) == 1 for r in restore(clip[:1]))
    assert face_flicker(out, maps) < 0.65 * face_flicker(clip, maps)


def test_resumed_video_with_faces_matches_an_uninterrupted_run(astronaut, tmp_path,
                                                               monkeypatch):
    """The tracker's state is saved with each finished segment, so a resumed run restores
    the frames after it exactly as an uninterrupted run does."""
    import flipnet.pipelines.video as video_mod

    clip, _ = jittered_face_clip(astronaut, 10, noise=3.0)
    src = tmp_path / "face.mp4"
    writer = imageio_ffmpeg.write_frames(str(src), (160, 160), fps=25, macro_block_size=1,
                                         ffmpeg_log_level="error")
    writer.send(None)
    for f in clip:
        writer.send(np.ascontiguousarray(f))
    writer.close()
    kw = {"progress": False, "segment_frames": 4, "batch_frames": 2, "detect_every": 3}
    straight = restore_video(src, tmp_path / "a", BicubicMethod(), **kw)
    real, calls = video_mod.restore_crops, []

    def dying(per_frame, method, timings):
        calls.append(len(per_frame))
        if sum(calls) > 6:
            raise KeyboardInterrupt
        return real(per_frame, method, timings)

    monkeypatch.setattr(video_mod, "restore_crops", dying)
    with pytest.raises(KeyboardInterrupt):
        restore_video(src, tmp_path / "b", BicubicMethod(), **kw)
    monkeypatch.setattr(video_mod, "restore_crops", real)
    resumed = restore_video(src, tmp_path / "b", BicubicMethod(), **kw)
    assert straight["faces"] == resumed["faces"] == 10
    pairs = list(zip(iter_frames(straight["output"])[1], iter_frames(resumed["output"])[1],
                     strict=True))
    assert len(pairs) == 10 and all(np.array_equal(a, b) for a, b in pairs)


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
