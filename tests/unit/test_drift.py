"""The calibration drift check (fusion/drift.py) on the sim rig: a camera turned by 0.5°
is named within 2 s; a minute without drift names nobody."""

from __future__ import annotations

from livepose.acquisition.sim.rig import make_rig
from livepose.bench.drift import FPS, NAMES, simulate
from livepose.core.config import SimConfig
from livepose.fusion.drift import DriftMonitor


def _rig():
    return make_rig(SimConfig(width=1280, height=1024, seed=3), NAMES)


def test_turned_camera_is_named_quickly() -> None:
    events, _ = simulate(_rig(), 14.0, drift_at_s=8.0, drift_cam=1, drift_deg=0.5)
    assert events, "no drift event"
    t, cam = events[0]
    assert cam == "cam1" and 8.0 <= t <= 10.0
    assert all(c == "cam1" for _, c in events)


def test_no_drift_no_alarm() -> None:
    events, _ = simulate(_rig(), 60.0, seed=4)
    assert events == []


def test_event_message_names_camera_and_size() -> None:
    mon = DriftMonitor(_rig(), FPS)
    assert mon.pop_events() == []
    from livepose.fusion.drift import DriftEvent

    msg = DriftEvent("cam2", 300, 8.4, 0.4).message
    assert "cam2" in msg and "8.4 px" in msg and "0.40°" in msg
