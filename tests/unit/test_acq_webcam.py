"""The ``webcam`` backend through OpenCV's own capture path (``cv2.VideoCapture``, its FFmpeg
backend) on small lossless FFV1 videos written here with ``cv2.VideoWriter``: pixel formats
(bit-exact), counting and timestamps, the reader thread's queue, end of stream → device lost
→ reconnect, and the errors (device missing, resolution/fourcc/property refused).

No USB camera exists on this machine (no ``/dev/video*``), so the V4L2 path itself is not run:
a real webcam differs in pacing (frames come at the camera's rate, not as fast as a file
decodes) and in which settings it accepts; the missing-device errors do go through V4L2.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from livepose.core.config import ConfigError, parse_config
from livepose.core.errors import UserError

pytestmark = pytest.mark.skipif(importlib.util.find_spec("cv2") is None,
                                reason="OpenCV not installed (extra webcam)")

N, W, H = 8, 64, 48


def write_ffv1(path: Path, frames: list[np.ndarray], fps: float = 30.0) -> None:
    """Lossless BGR video (FFV1) through OpenCV's writer."""
    import cv2

    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), fps, (W, H))
    assert out.isOpened()
    for f in frames:
        out.write(f)
    out.release()


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("webcam")
    rng = np.random.default_rng(5)
    colour = [rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for _ in range(N)]
    grey = [np.repeat(rng.integers(0, 256, (H, W, 1), dtype=np.uint8), 3, axis=2)
            for _ in range(N)]
    write_ffv1(root / "colour.mkv", colour)
    write_ffv1(root / "grey.mkv", grey)
    return {"root": root, "colour": colour, "grey": grey}


def _cfg(**cam: object) -> Any:
    cfg = parse_config({"calibration": "x.toml", "fusion": {"min_views": 2}, "cameras": [
        {"backend": "webcam", "name": "web", **cam}, {"backend": "webcam", "name": "other"}]})
    return cfg.cameras[0]


def _open(**cam: object) -> Any:
    from livepose.acquisition.base import make_backend

    backend = make_backend(_cfg(**cam))
    backend.open()
    return backend


def _grab_all(cam: Any, n: int, timeout_s: float = 5.0) -> list[Any]:
    out: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        g = cam.grab(0.5)
        if g is not None:
            out.append(g)
    return out


def _drain(cam: Any) -> list[Any]:
    """Every frame until the file ends (``DeviceLost`` after ``lost_after_s``). A file
    decodes faster than a camera delivers, so the reader may overwrite some (counted)."""
    from livepose.acquisition.base import DeviceLost

    out: list[Any] = []
    deadline = time.monotonic() + 10
    with pytest.raises(DeviceLost):
        while time.monotonic() < deadline:
            g = cam.grab(0.5)
            if g is not None:
                out.append(g)
    return out


def test_rgb8_frames_bit_exact_counted_and_stamped_at_grab(videos: dict[str, Any]) -> None:
    t0 = time.time_ns()
    cam = _open(device=str(videos["root"] / "colour.mkv"), pixel_format="RGB8",
                lost_after_s=0.3)
    try:
        assert cam.pixel_format == "RGB8" and not cam.software_triggered
        assert (cam.info["width"], cam.info["height"]) == (W, H)
        assert cam.info["opencv_backend"] == "FFMPEG"
        cam.arm()
        got = _drain(cam)
        t1 = time.time_ns()
    finally:
        cam.close()
    # frame 0 was read by open() to check the device; counter c is file frame c + 1
    counters = [g.counter for g in got]
    assert counters == sorted(set(counters)) and counters[-1] == N - 2
    assert len(got) + cam.counters["overwritten"] == N - 1
    for g in got:
        assert g.image.shape == (H, W, 3)
        assert np.array_equal(g.image, videos["colour"][g.counter + 1][..., ::-1])  # BGR→RGB
    stamps = [g.t_grab_ns for g in got]
    assert t0 < stamps[0] and stamps == sorted(stamps) and stamps[-1] < t1
    assert cam.counters["bad_images"] == 0


def test_mono8_is_the_grey_level(videos: dict[str, Any]) -> None:
    cam = _open(device=str(videos["root"] / "grey.mkv"), pixel_format="Mono8", lost_after_s=0.3)
    cam.arm()
    got = _drain(cam)
    cam.close()
    assert cam.pixel_format == "Mono8" and got
    assert len(got) + cam.counters["overwritten"] == N - 1
    for g in got:
        assert g.image.shape == (H, W) and g.image.dtype == np.uint8
        assert np.array_equal(g.image, videos["grey"][g.counter + 1][..., 0]), g.counter


def test_slow_reader_gets_the_newest_frames_and_overwrites_are_counted(
        videos: dict[str, Any]) -> None:
    """The file decodes far faster than we take frames: only the newest two wait."""
    cam = _open(device=str(videos["root"] / "colour.mkv"), lost_after_s=30)
    cam.arm()
    deadline = time.monotonic() + 5
    while cam.counters["read_failures"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)  # waiting for the reader to hit the end of the file
    got = [cam.grab(0.05), cam.grab(0.05), cam.grab(0.05)]
    cam.close()
    assert [g.counter for g in got[:2]] == [N - 3, N - 2] and got[2] is None
    assert np.array_equal(got[1].image, videos["colour"][N - 1][..., ::-1])
    assert cam.counters["overwritten"] == N - 1 - 2


def test_end_of_stream_is_device_lost_then_reconnect_resumes_counting(
        videos: dict[str, Any]) -> None:
    from livepose.acquisition.base import DeviceLost

    cam = _open(device=str(videos["root"] / "colour.mkv"), lost_after_s=0.3)
    cam.arm()
    deadline = time.monotonic() + 5
    while cam.counters["read_failures"] == 0 and time.monotonic() < deadline:
        cam.grab(0.05)  # until the reader hits the end of the file
    t = time.monotonic()
    with pytest.raises(DeviceLost, match=r"camera 'web': no frame from .*colour.mkv.* 0.3 s"):
        while time.monotonic() - t < 5:
            cam.grab(0.1)
    assert 0.1 < time.monotonic() - t < 3
    cam.reconnect()  # the file "comes back": read from its start again
    again = _grab_all(cam, 1)
    cam.close()
    assert cam.counters["reconnects"] == 1
    # counting goes on across the reconnect: file frame 1 again is counter N - 1 (or later,
    # if the reader overwrote it already)
    assert again and again[0].counter >= N - 1
    assert np.array_equal(again[0].image, videos["colour"][again[0].counter - N + 2][..., ::-1])


def test_reconnect_gives_up_naming_the_device(videos: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "gone.mkv"
    path.write_bytes((videos["root"] / "colour.mkv").read_bytes())
    cam = _open(device=str(path), reconnect_timeout_s=0.6)
    path.unlink()
    t = time.monotonic()
    with pytest.raises(UserError, match=r"camera 'web': device: .*gone.mkv' did not come back "
                                        r"within 0.6 s \(.*does not exist\)"):
        cam.reconnect()
    assert time.monotonic() - t < 3
    cam.close()
    with pytest.raises(UserError, match=r"was lost \(reconnect_timeout_s is 0\)"):
        _open(device=str(videos["root"] / "colour.mkv"), reconnect_timeout_s=0).reconnect()


def test_errors_name_camera_and_device(videos: dict[str, Any]) -> None:
    colour = str(videos["root"] / "colour.mkv")
    with pytest.raises(UserError, match=r"camera 'web': device: cannot open webcam index 99 "
                                        r"\(no such camera"):
        _open(device=99)
    with pytest.raises(UserError, match=r"camera 'web': device: cannot open webcam index 7"):
        _open(device="7")  # a string of digits is an index
    with pytest.raises(UserError, match=r"camera 'web': device: /nonexistent/video0 does not "
                                        r"exist"):
        _open(device="/nonexistent/video0")
    with pytest.raises(UserError, match=rf"camera 'web': width/height: requested 640x480, "
                                        rf"'{colour}' gave {W}x{H}"):
        _open(device=colour, width=640, height=480)
    with pytest.raises(UserError, match=r"camera 'web': fourcc: requested MJPG, .* gave ffv1"):
        _open(device=colour, fourcc="MJPG")
    with pytest.raises(UserError, match=r"properties.SHUTTER: OpenCV has no CAP_PROP_SHUTTER"):
        _open(device=colour, properties={"SHUTTER": 1})
    with pytest.raises(UserError, match=r"properties.exposure: '.*' refused 5 \(through "
                                        r"OpenCV's FFMPEG backend\)"):
        _open(device=colour, properties={"exposure": 5})
    _open(device=colour, width=W, height=H, fps=30).close()  # what it has is fine


def test_missing_capture_api_lists_the_ones_there(videos: dict[str, Any]) -> None:
    import cv2

    if cv2.videoio_registry.hasBackend(cv2.CAP_DSHOW):
        pytest.skip("this OpenCV has DirectShow")
    with pytest.raises(UserError, match=r"camera 'web': api: this OpenCV has no 'dshow' capture "
                                        r"backend; it has: .*FFMPEG"):
        _open(device=0, api="dshow")


def test_config_checks() -> None:
    with pytest.raises(ConfigError, match=r"width and height go together"):
        _cfg(width=640)
    with pytest.raises(ConfigError, match=r"fourcc: String should match"):
        _cfg(fourcc="MJPEG")
    assert _cfg(device="/dev/video2").device == "/dev/video2" and _cfg(device=1).device == 1
    base: dict[str, Any] = {"calibration": "x.toml"}
    web2 = [{"backend": "webcam", "name": "web"}, {"backend": "webcam", "name": "cam2"}]
    with pytest.raises(ConfigError, match=r"trigger.match 'clock' needs trigger.mode 'free_run'"):
        parse_config({**base, "cameras": [*web2, {"backend": "pylon", "name": "a",
                                                  "trigger": {"match": "clock"}}]})
    with pytest.raises(ConfigError, match=r"\['web', 'cam2'\] are matched to the trigger "
                                          r"clock by time"):
        parse_config({**base, "trigger": {"source": "serial", "port": "/dev/ttyACM0"},
                      "cameras": web2})
    with pytest.raises(ConfigError, match=r"\['web', 'cam2'\] run free with match: counter"):
        parse_config({**base, "trigger": {"source": "serial", "port": "/dev/ttyACM0"},
                      "cameras": [{**c, "match": "counter"} for c in web2]})


def test_matcher_settings_from_config() -> None:
    from livepose.acquisition.camera import clock_subscriber, time_matcher
    from livepose.core.config import WebcamCameraConfig

    alone = WebcamCameraConfig(backend="webcam", name="web", match="counter")  # no rig check
    assert clock_subscriber(_cfg()) and not clock_subscriber(alone)
    m = time_matcher(_cfg(match_latency_ms=40), fps=30)
    assert m is not None
    assert (m[0].tol, m[0].min_gap, m[1]) == (round(1e9 / 30) // 3, round(1e9 / 30) // 2,
                                              40_000_000)
    assert m[0].min_frame_gap == 0  # the webcam's rate is not configured
    m = time_matcher(_cfg(match_tolerance_ms=5, fps=25), fps=30)
    assert m is not None and m[0].tol == 5_000_000 and m[0].min_frame_gap == 30_000_000
    from livepose.core.config import GenICamCameraConfig

    g_cam = GenICamCameraConfig.model_validate({"backend": "genicam", "name": "g", "trigger": {
        "mode": "free_run", "match": "clock", "match_tolerance_ms": 2}})
    h_cam = GenICamCameraConfig.model_validate(  # alone: a rig would refuse match: counter
        {"backend": "genicam", "name": "h", "trigger": {"mode": "free_run"}})
    g = time_matcher(g_cam, fps=100)
    assert g is not None and g[0].tol == 2_000_000 and clock_subscriber(g_cam)
    assert time_matcher(h_cam, fps=100) is None
    assert not clock_subscriber(h_cam)
