"""The recorder next to each camera: lossless round trips, loud losses, full disks, kill -9."""

from __future__ import annotations

import csv
import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from livepose.acquisition import encoders, recorder
from livepose.acquisition.encoders import CodecUnavailable, check_codec, iter_frames
from livepose.acquisition.recorder import FrameRecorder, image_checksum
from livepose.core import protocol
from livepose.core.config import Config, parse_config
from livepose.core.control import decode_record_control, encode_record_control
from livepose.kit.session import (
    SessionError,
    create_session,
    read_events,
    read_status,
)
from livepose.recording.tools import repair

pytest.importorskip("av")


def cfg_for(tmp: Path, **rec: Any) -> Config:
    return parse_config({
        "fps": 100, "cameras": [{"name": "cam0", "backend": "sim"}, {"name": "cam1", "backend": "sim"}],
        "recording": {"dir": str(tmp / "sessions"), **rec},
    })


def frames(n: int, shape: tuple[int, ...] = (48, 64), dtype: Any = np.uint8) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    hi = 255 if dtype == np.uint8 else 65535
    return [rng.integers(0, hi, shape, dtype=dtype) for _ in range(n)]


def msg(i: int, img: np.ndarray) -> protocol.Frame:
    t = time.time_ns()
    return protocol.Frame(cam="cam0", frame_id=i, t_grab_ns=t, pixel_format="Mono8", image=img,
                          t_trigger_ns=t, t_pub_ns=t)


def record(cfg: Config, imgs: list[np.ndarray]) -> tuple[Path, Counter[str], list[str]]:
    s = create_session(cfg.recording.dir, "t", cfg, None)
    c: Counter[str] = Counter()
    errs: list[str] = []
    r = FrameRecorder(s.path, "cam0", cfg, c, errs.append)
    for i, img in enumerate(imgs):
        r.submit(msg(i, img))
    r.finish()
    assert r.join(30)
    return s.path, c, errs


def table(session: Path) -> list[dict[str, str]]:
    with (session / "video" / "cam0_frames.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize(("codec", "extra", "shape", "dtype"), [
    ("ffv1", {}, (48, 64), np.uint8),
    ("ffv1", {}, (48, 64), np.uint16),
    ("ffv1", {}, (48, 64, 3), np.uint8),
    ("h264", {"lossless": True}, (48, 64), np.uint8),
    ("raw", {}, (48, 64), np.uint8),
])
def test_lossless_codecs_decode_to_the_published_checksums(
    tmp_path: Path, codec: str, extra: dict[str, Any], shape: tuple[int, ...], dtype: Any
) -> None:
    imgs = frames(12, shape, dtype)
    session, c, errs = record(cfg_for(tmp_path, codec=codec, **extra), imgs)
    rows = table(session)
    assert [int(r["frame_id"]) for r in rows] == list(range(12)) and not errs
    decoded = list(iter_frames(encoders.video_path(session / "video", "cam0", codec)))
    assert len(decoded) == 12
    for r, img, dec in zip(rows, imgs, decoded, strict=True):
        assert dec.shape == img.shape and dec.dtype == img.dtype
        assert image_checksum(dec) == r["checksum"] == image_checksum(img)
    summ = json.loads((session / "video" / "cam0.json").read_text())
    assert summ["frames_recorded"] == 12 and summ["frames_lost"] == 0 and summ["closed"]
    assert c["rec_frames"] == 12


def test_full_queue_is_loud_and_in_the_frame_table(tmp_path: Path, monkeypatch: Any) -> None:
    cfg = cfg_for(tmp_path, queue_s=0.01)  # 8 frames (the minimum)
    real = encoders.AvSink.write

    def slow(self: Any, image: np.ndarray, index: int) -> None:
        time.sleep(0.05)
        real(self, image, index)

    monkeypatch.setattr(encoders.AvSink, "write", slow)
    session, c, errs = record(cfg, frames(40))
    rows = table(session)
    lost = [r for r in rows if r["recorded"] == "0"]
    assert len(rows) == 40 and lost and c["rec_queue_full"] == len(lost) == c["rec_lost"]
    assert errs and "NOT recorded" in errs[0]
    assert any(e["kind"] == "queue_full" for e in read_events(session))
    assert json.loads((session / "video" / "cam0.json").read_text())["frames_lost"] == len(lost)
    assert len(list(iter_frames(session / "video" / "cam0.mkv"))) == 40 - len(lost)


def test_disk_full_fails_loudly_and_keeps_what_was_written(tmp_path: Path,
                                                          monkeypatch: Any) -> None:
    real = encoders.AvSink.write

    def enospc(self: Any, image: np.ndarray, index: int) -> None:
        if index >= 5:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
        real(self, image, index)

    monkeypatch.setattr(encoders.AvSink, "write", enospc)
    session, c, errs = record(cfg_for(tmp_path), frames(10))
    summ = json.loads((session / "video" / "cam0.json").read_text())
    assert "No space left on device" in summ["error"] and "cam0.mkv" in summ["error"]
    assert errs and c["rec_errors"] >= 1 and summ["frames_recorded"] == 5
    assert len(list(iter_frames(session / "video" / "cam0.mkv"))) == 5
    assert [r["recorded"] for r in table(session)] == ["1"] * 5 + ["0"] * 5
    assert any(e["kind"] == "writer_error" for e in read_events(session))


def test_session_bad_input_names_the_path_or_codec(tmp_path: Path) -> None:
    cfg = cfg_for(tmp_path)
    create_session(tmp_path / "s", "trial", cfg, None)
    with pytest.raises(SessionError, match=r"trial.*already exists"):
        create_session(tmp_path / "s", "trial", cfg, None)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SessionError, match=str(blocker)):
        create_session(blocker / "sessions", "x", cfg, None)
    with pytest.raises(SessionError, match="session name"):
        create_session(tmp_path / "s", "a/b", cfg, None)
    with pytest.raises(CodecUnavailable, match="hevc_nvenc"):
        check_codec(cfg_for(tmp_path, codec="hevc_nvenc").recording)  # no GPU here
    check_codec(cfg.recording)
    assert decode_record_control(encode_record_control("start", tmp_path, 7)) == {
        "v": 1, "cmd": "start", "session": str(tmp_path), "frame": 7}
    assert decode_record_control([b"record", b"\x93junk"]) is None


CHILD = """
import sys, time, numpy as np
from collections import Counter
from pathlib import Path
from livepose.core import protocol
from livepose.acquisition.recorder import FrameRecorder
from livepose.core.config import parse_config
cfg = parse_config({"fps": 100, "cameras": [{"name": "cam0", "backend": "sim"},
                    {"name": "cam1", "backend": "sim"}]})
r = FrameRecorder(Path(sys.argv[1]), "cam0", cfg, Counter(), print)
rng = np.random.default_rng(0)
base = (np.add.outer(np.arange(256), np.arange(320)) % 256).astype(np.uint8)
for i in range(100000):
    t = time.time_ns()
    img = base + rng.integers(0, 3, base.shape, dtype=np.uint8)
    r.submit(protocol.Frame(cam="cam0", frame_id=i, t_grab_ns=t, pixel_format="Mono8",
                            image=img, t_trigger_ns=t, t_pub_ns=t))
    print(i, flush=True)
    time.sleep(0.01)
"""


def test_kill_9_leaves_a_decodable_video_and_repair_finalises(tmp_path: Path) -> None:
    cfg = cfg_for(tmp_path)
    s = create_session(tmp_path / "sessions", "crash", cfg, None)
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(s.path)], stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout is not None
    video = s.path / "video" / "cam0.mkv"
    last = int(p.stdout.readline())  # the child is up (slow to import on a loaded machine)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 2.5 or not video.exists():
        assert time.monotonic() - t0 < 60, "the writer never opened its video"
        last = int(p.stdout.readline())
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    decoded = list(iter_frames(video))
    assert len(decoded) >= last + 1 - 100  # all but (at most) the last second at 100 fps
    rows = table(s.path)  # parses (a torn last line is cut by repair)
    assert len(rows) >= len(decoded) - 1
    assert read_status(s.path)["state"] == "recording"  # this process wrote it and lives
    report = repair(s.path)
    assert report["cam0"]["frames_decodable"] == len(decoded)
    rows = table(s.path)
    for r, img in zip(rows, decoded, strict=False):
        assert image_checksum(img) == r["checksum"]
    assert read_status(s.path)["state"] == "incomplete"
    assert (s.path / "video" / "cam0.json").exists()
    assert recorder.COLUMNS[0] == "frame_id"


def test_cli_session_commands_and_bare_record_flag(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from livepose.cli.app import RECORD_DEFAULT, app
    from livepose.cli.session import expand_record_flag

    assert expand_record_flag(["run", "c.yaml", "--record"], "@") == ["run", "c.yaml", "--record", "@"]
    assert expand_record_flag(["demo", "--record", "--no-live"], "@")[2] == "@"
    assert expand_record_flag(["demo", "--record", "trial"], "@") == ["demo", "--record", "trial"]
    assert RECORD_DEFAULT.startswith("@")
    session, _, _ = record(cfg_for(tmp_path), frames(3))
    r = CliRunner().invoke(app, ["session", "status", str(session)])
    assert r.exit_code == 0 and json.loads(r.output)["state"] == "recording"
    r = CliRunner().invoke(app, ["session", "repair", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "not a livepose session" in r.output
    r = CliRunner().invoke(app, ["export", "eks", str(session), str(tmp_path / "out")])
    assert r.exit_code == 2 and "no 2D predictions" in r.output
