"""The genicam backend, for real, on the GenTL simulator producer shipped in the ``genicam``
wheel (``viky.cti``: three free-running cameras, serials 0–2, no trigger features).

Real camera processes (the ``livepose run`` camera main) grab through harvesters; skipped
when harvesters/genicam are not installed.
"""

from __future__ import annotations

import importlib.util

import pytest

from livepose.core import protocol
from livepose.core.config import Config, parse_config
from livepose.core.errors import UserError

pytestmark = [
    pytest.mark.integration,
    pytest.mark.genicam,
    pytest.mark.skipif(
        importlib.util.find_spec("harvesters") is None or importlib.util.find_spec("genicam") is None,
        reason="harvesters/genicam not installed",
    ),
]


def _cti() -> str:
    from livepose.acquisition.genicam import bundled_simulator

    path = bundled_simulator()
    if path is None:
        pytest.skip("the genicam wheel has no viky.cti")
    return path


def _cfg(**cam1: object) -> Config:
    # free-running cameras on a multi-camera rig are matched to the trigger clock by time
    # (match: clock); numbering by their own counters is refused (frame ids would not be
    # instants shared by the cameras)
    base = {"backend": "genicam", "cti": [_cti()],
            "trigger": {"mode": "free_run", "match": "clock"},
            "frame_rate": 60, "roi": {"width": 320, "height": 240}}
    return parse_config({
        "fps": 30, "calibration": "x.toml",
        "cameras": [{**base, "name": "red", "serial": "0"}, {**base, "name": "green", "serial": "1", **cam1}],
    })


def test_simulated_gentl_cameras_stream_through_camera_processes() -> None:
    from livepose.bench.acquisition import run_acquisition

    shapes = set()

    def seen(f: protocol.Frame, t_recv: int) -> None:
        shapes.add((f.cam, f.image.shape, f.pixel_format))

    res = run_acquisition(_cfg(), pulses=20, on_frame=seen, timeout_s=30)
    assert shapes == {("red", (240, 320), "Mono8"), ("green", (240, 320), "Mono8")}
    for cam, r in res.items():
        # free-running: frames flow from arming on, so ours start wherever we subscribed;
        # frame_id follows the buffer counter with no gap
        ids = r.frame_ids
        assert len(ids) >= 20 and ids == list(range(ids[0], ids[0] + len(ids))), cam
        assert r.counters.get("dropped", 0) == r.dropped_before


def test_bad_input_names_camera_and_setting(tmp_path: object) -> None:
    from livepose.acquisition.base import make_backend

    def open_(cfg: Config) -> None:
        cam = make_backend(cfg.cameras[1])
        cam.open()
        cam.close()

    with pytest.raises(UserError, match=r"camera 'green': serial: no device with serial '9'"):
        open_(_cfg(serial="9"))
    with pytest.raises(UserError, match=r"camera 'green': trigger.mode: the camera has no feature TriggerMode"):
        open_(_cfg(trigger={"mode": "software"}))
    with pytest.raises(UserError, match=r"camera 'green': frame_rate: .*out of range \[1, 200\]"):
        open_(_cfg(frame_rate=500))
    with pytest.raises(UserError, match=r"camera 'green': cti: GenTL producer not found"):
        open_(_cfg(cti=["/nonexistent/producer.cti"]))
    open_(_cfg())  # nothing left open by the failures
