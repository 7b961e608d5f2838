"""The video writer of a camera's encoder: lossless round trips, loud losses (lapped ring,
gaps), full disks, kill -9."""

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
from livepose.acquisition.recorder import SegmentWriter, image_checksum
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
    w = SegmentWriter(s.path, "cam0", cfg, c, errs.append)
    for i, img in enumerate(imgs):
        w.frame(msg(i, img))
    w.close()
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


def test_a_lapped_encoder_loses_pixels_never_rows(tmp_path: Path) -> None:
    """Frames go through a real 4-slot ring; the encoder reads their headers after the
    camera has written 10: the first 6 slots were reused — those frames are ``recorded=0``
    rows (counted, loud), the last 4 are in the video, bit-exact; a frame_id gap that the
    camera did not drop is back-filled with rows."""
    from livepose.acquisition.encoder import LapTolerantRings
    from livepose.transport import codec, shmring

    cfg = cfg_for(tmp_path)
    imgs = frames(10)
    ring = shmring.FrameRing("cam0", 4, imgs[0].nbytes)
    try:
        sent = [codec.encode_in_ring(msg(i, img), ring) for i, img in enumerate(imgs)]
        extra = msg(13, imgs[0])  # frames 10 and 11 never reached the encoder, 12 was dropped
        extra.dropped_before = 1
        sent.append(codec.encode_in_ring(extra, ring))
        dec = codec.Decoder(expect=["frame"], copy_shared=False)
        dec.rings = LapTolerantRings()
        s = create_session(cfg.recording.dir, "t", cfg, None)
        c: Counter[str] = Counter()
        errs: list[str] = []
        w = SegmentWriter(s.path, "cam0", cfg, c, errs.append)
        for parts in sent:
            m = dec.decode([bytes(p) for p in parts])
            assert isinstance(m, protocol.Frame)
            w.frame(m)
        w.close()
    finally:
        ring.close()
    rows = table(s.path)
    assert [int(r["frame_id"]) for r in rows] == [*range(12), 13]
    assert [r["recorded"] for r in rows] == ["0"] * 7 + ["1"] * 3 + ["0", "0", "1"]
    assert rows[10]["t_grab_ns"] == "" and rows[12]["dropped_before"] == "1"
    assert c["rec_lapped"] == 7 and c["rec_gap"] == 2 and c["rec_lost"] == 9
    assert errs and "NOT recorded" in errs[0] and dec.rejected == 0
    assert any(e["kind"] == "rec_lapped" for e in read_events(s.path))
    summ = json.loads((s.path / "video" / "cam0.json").read_text())
    assert summ["frames_lost"] == 9 and summ["lapped"] == 7 and summ["gap"] == 2
    decoded = list(iter_frames(s.path / "video" / "cam0.mkv"))
    kept = [r for r in rows if r["recorded"] == "1"]
    assert [image_checksum(d) for d in decoded] == [r["checksum"] for r in kept]
    assert [image_checksum(i) for i in (*imgs[7:], imgs[0])] == [r["checksum"] for r in kept]


def test_disk_full_fails_loudly_and_keeps_what_was_written(tmp_path: Path,
                                                          monkeypatch: Any) -> None:
    real = encoders.AvSink.put

    def enospc(self: Any, prepared: Any, index: int) -> None:  # an injected disk failure
        if index >= 5:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
        real(self, prepared, index)

    monkeypatch.setattr(encoders.AvSink, "put", enospc)
    session, c, errs = record(cfg_for(tmp_path), frames(10))
    summ = json.loads((session / "video" / "cam0.json").read_text())
    assert "No space left on device" in summ["error"] and "cam0.mkv" in summ["error"]
    assert errs and c["rec_errors"] >= 1 and summ["frames_recorded"] == 5
    assert len(list(iter_frames(session / "video" / "cam0.mkv"))) == 5
    assert [r["recorded"] for r in table(session)] == ["1"] * 5 + ["0"] * 5
    assert any(e["kind"] == "writer_error" for e in read_events(session))


def test_encoder_goes_on_in_a_new_segment_once_the_disk_takes_writes(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """A disk that refuses every write (injected: the video sink and the table's
    ``write(2)``) for frames 4–7: that segment fails loudly and holds its rows; once writes
    succeed again the held rows are written and the encoder goes on in ``cam0.1``."""
    import zmq

    from livepose.acquisition import encoder as enc_mod
    from livepose.kit.process import StageContext
    from livepose.transport import codec

    full = {"on": False}
    real_put = encoders.AvSink.put

    def put(self: Any, prepared: Any, index: int) -> None:
        if full["on"]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
        real_put(self, prepared, index)

    class FullDisk:  # the recorder module's ``os``, whose write(2) fails while full
        def __getattr__(self, name: str) -> Any:
            return getattr(os, name)

        def write(self, fd: int, data: Any) -> int:
            if full["on"]:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return os.write(fd, data)

    monkeypatch.setattr(encoders.AvSink, "put", put)
    monkeypatch.setattr(recorder, "os", FullDisk())
    monkeypatch.setattr(enc_mod, "RETRY_S", 0.0)
    cfg = cfg_for(tmp_path)
    s = create_session(cfg.recording.dir, "t", cfg, None)
    ctx = StageContext(name="enc-cam0", cfg=cfg, endpoints={})
    sub = ctx.zmq_ctx.socket(zmq.SUB)
    imgs = frames(12)
    try:
        e = enc_mod.Encoder(ctx, "cam0", sub, codec.Decoder())
        e.start(s.path, 0)
        for i, img in enumerate(imgs):
            full["on"] = 4 <= i < 8
            e.on_frame(msg(i, img))
        e.close()
    finally:
        sub.close(0)
        ctx.zmq_ctx.term()
    video = s.path / "video"
    with (video / "cam0_frames.csv").open() as f:
        first = list(csv.DictReader(f))
    with (video / "cam0.1_frames.csv").open() as f:
        second = list(csv.DictReader(f))
    assert [r["recorded"] for r in first] == ["1"] * 4 + ["0"] * 4
    assert [int(r["frame_id"]) for r in first + second] == list(range(12))
    assert [r["recorded"] for r in second] == ["1"] * 4
    assert "No space left on device" in json.loads((video / "cam0.json").read_text())["error"]
    assert json.loads((video / "cam0.1.json").read_text())["error"] is None
    for stem, rows in (("cam0", first[:4]), ("cam0.1", second)):
        decoded = list(iter_frames(video / f"{stem}.mkv"))
        assert [image_checksum(d) for d in decoded] == [r["checksum"] for r in rows]
    assert ctx.counters["rec_errors"] >= 1 and ctx.counters["rec_lost"] == 4


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
from livepose.acquisition.recorder import SegmentWriter
from livepose.core.config import parse_config
cfg = parse_config({"fps": 100, "cameras": [{"name": "cam0", "backend": "sim"},
                    {"name": "cam1", "backend": "sim"}]})
r = SegmentWriter(Path(sys.argv[1]), "cam0", cfg, Counter(), print)
rng = np.random.default_rng(0)
base = (np.add.outer(np.arange(256), np.arange(320)) % 256).astype(np.uint8)
for i in range(100000):
    t = time.time_ns()
    img = base + rng.integers(0, 3, base.shape, dtype=np.uint8)
    r.frame(protocol.Frame(cam="cam0", frame_id=i, t_grab_ns=t, pixel_format="Mono8",
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
