"""The spinnaker backend against a **stand-in** PySpin module, not FLIR's SDK.

PySpin is not on PyPI for Linux, so it cannot run here. This stand-in mimics the part of
PySpin's API the backend uses (System → CameraList → CameraPtr, node maps of typed nodes
with ``IsAvailable``/``IsWritable``, ``CEnumerationPtr`` entries, ``GetNextImage`` with
``SpinnakerException`` timeouts, ``ImagePtr``) and FLIR's rules that matter (trigger
selector and source writable only while ``TriggerMode`` is Off). It checks the feature
mapping and write order, frame numbering, incomplete images, and bad input — not a camera.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from livepose.acquisition.base import GrabFailed
from livepose.core.config import parse_config
from livepose.core.errors import UserError

F, INT, E, B, C, S = range(6)


class Node:
    def __init__(self, nm: FakeNodeMap, name: str, kind: int, value: Any = None,
                 lo: float = 0, hi: float = 0, entries: tuple[str, ...] = ()) -> None:
        self.nm, self.name, self.kind, self.value = nm, name, kind, value
        self.lo, self.hi, self.entries = lo, hi, entries

    def GetPrincipalInterfaceType(self) -> int:
        return self.kind

    def GetValue(self) -> Any:
        return self.value

    def SetValue(self, v: Any) -> None:
        if self.kind in (F, INT) and not self.lo <= v <= self.hi:
            raise PySpinError(-1002, f"{self.name} out of range")
        self.nm.log.append((self.name, v))
        self.value = v

    def GetMin(self) -> float:
        return self.lo

    def GetMax(self) -> float:
        return self.hi

    def GetEntries(self) -> list[str]:
        return list(self.entries)

    def GetEntryByName(self, name: str) -> types.SimpleNamespace:
        return types.SimpleNamespace(GetValue=lambda: name)

    def SetIntValue(self, v: str) -> None:
        self.SetValue(v)

    def GetCurrentEntry(self) -> types.SimpleNamespace:
        return types.SimpleNamespace(GetSymbolic=lambda: self.value)

    def Execute(self) -> None:
        self.nm.log.append((self.name, "execute"))
        self.nm.cam.pending += 1


class FakeNodeMap:
    def __init__(self, cam: FakeCamera, nodes: list[tuple[Any, ...]]) -> None:
        self.cam, self.log = cam, []
        self.nodes = {n[0]: Node(self, *n) for n in nodes}

    def GetNode(self, name: str) -> Node | None:
        return self.nodes.get(name)

    def writable(self, node: Node) -> bool:
        mode = self.nodes.get("TriggerMode")
        # FLIR's rule: selector and source are locked while TriggerMode is On
        return not (node.name in ("TriggerSelector", "TriggerSource") and mode and mode.value == "On")


class PySpinError(Exception):
    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.errorcode = code


class FakeImage:
    def __init__(self, frame_id: int, incomplete: bool = False) -> None:
        self.frame_id, self.incomplete, self.released = frame_id, incomplete, False

    def IsIncomplete(self) -> bool:
        return self.incomplete

    def GetImageStatus(self) -> int:
        return 3 if self.incomplete else 0

    def GetNDArray(self) -> np.ndarray:
        return np.full((4, 6), self.frame_id % 256, np.uint8)

    def GetFrameID(self) -> int:
        return self.frame_id

    def GetTimeStamp(self) -> int:
        return 1_000_000 * self.frame_id

    def Release(self) -> None:
        self.released = True


class FakeCamera:
    def __init__(self, serial: str) -> None:
        self.pending, self.next_id, self.streaming, self.inited = 0, 0, False, False
        self.fail_next = False
        self.tl = FakeNodeMap(self, [("DeviceSerialNumber", S, serial)])
        self.stream = FakeNodeMap(self, [
            ("StreamBufferCountMode", E, "Auto", 0, 0, ("Auto", "Manual")),
            ("StreamBufferCountManual", INT, 10, 1, 200),
            ("StreamBufferHandlingMode", E, "NewestOnly", 0, 0, ("OldestFirst", "NewestOnly")),
        ])
        self.nodes = FakeNodeMap(self, [
            ("PixelFormat", E, "Mono8", 0, 0, ("Mono8", "Mono16")),
            ("ExposureAuto", E, "Continuous", 0, 0, ("Off", "Continuous")),
            ("ExposureTime", F, 5000.0, 10.0, 30_000_000.0),
            ("GainAuto", E, "Continuous", 0, 0, ("Off", "Continuous")),
            ("Gain", F, 0.0, 0.0, 47.99),
            ("TriggerMode", E, "Off", 0, 0, ("Off", "On")),
            ("TriggerSelector", E, "FrameStart", 0, 0, ("FrameStart", "AcquisitionStart")),
            ("TriggerSource", E, "Software", 0, 0, ("Software", "Line0", "Line2", "Line3")),
            ("TriggerActivation", E, "RisingEdge", 0, 0, ("RisingEdge", "FallingEdge")),
            ("TriggerOverlap", E, "Off", 0, 0, ("Off", "ReadOut")),
            ("TriggerSoftware", C),
            ("AcquisitionFrameRateEnable", B, True),
            ("AcquisitionFrameRate", F, 30.0, 1.0, 170.0),
        ])

    def GetTLDeviceNodeMap(self) -> FakeNodeMap:
        return self.tl

    def GetTLStreamNodeMap(self) -> FakeNodeMap:
        return self.stream

    def GetNodeMap(self) -> FakeNodeMap:
        return self.nodes

    def Init(self) -> None:
        self.inited = True

    def IsInitialized(self) -> bool:
        return self.inited

    def DeInit(self) -> None:
        self.inited = False

    def BeginAcquisition(self) -> None:
        self.streaming = True

    def EndAcquisition(self) -> None:
        self.streaming = False

    def IsStreaming(self) -> bool:
        return self.streaming

    def GetNextImage(self, timeout_ms: int) -> FakeImage:
        if not self.pending:
            raise PySpinError(-1011, "Spinnaker: GetNextImage timeout")
        self.pending -= 1
        self.next_id += 1
        img = FakeImage(self.next_id - 1, incomplete=self.fail_next)
        self.fail_next = False
        return img


@pytest.fixture
def pyspin() -> Iterator[types.SimpleNamespace]:
    cams = [FakeCamera("19000001"), FakeCamera("19000002")]
    state = types.SimpleNamespace(cams=cams, released=0)

    class CamList:
        def GetSize(self) -> int:
            return len(cams)

        def GetByIndex(self, i: int) -> FakeCamera:
            return cams[i]

        def Clear(self) -> None:
            pass

    class System:
        @staticmethod
        def GetInstance() -> System:
            return System()

        def GetCameras(self) -> CamList:
            return CamList()

        def ReleaseInstance(self) -> None:
            state.released += 1

    ident = lambda n: n  # noqa: E731
    mod = types.ModuleType("PySpin")
    mod.__dict__.update(
        System=System, SpinnakerException=PySpinError, SPINNAKER_ERR_TIMEOUT=-1011,
        intfIFloat=F, intfIInteger=INT, intfIEnumeration=E, intfIBoolean=B, intfICommand=C,
        intfIString=S, CFloatPtr=ident, CIntegerPtr=ident, CEnumerationPtr=ident,
        CBooleanPtr=ident, CCommandPtr=ident, CStringPtr=ident,
        CEnumEntryPtr=lambda e: types.SimpleNamespace(GetSymbolic=lambda: e),
        IsAvailable=lambda n: n is not None,
        IsWritable=lambda n: n.nm.writable(n),
    )
    sys.modules["PySpin"] = mod
    yield state
    del sys.modules["PySpin"]


def _cam(**kw: Any) -> Any:
    from livepose.acquisition.spinnaker import SpinnakerCamera

    cfg = parse_config({"calibration": "x.toml", "cameras": [
        {"backend": "spinnaker", "name": "flir0", "serial": "19000002", **kw},
        {"backend": "sim", "name": "other"},
    ]})
    cam = SpinnakerCamera(cfg.cameras[0])
    cam.open()
    return cam


def test_hardware_trigger_maps_to_flir_features_in_a_safe_order(pyspin: Any) -> None:
    cam = _cam(trigger={"mode": "hardware", "source": "Line3", "activation": "FallingEdge"},
               exposure_us=1500, gain_db=6, buffers=32)
    log = pyspin.cams[1].nodes.log
    assert ("ExposureAuto", "Off") in log and ("ExposureTime", 1500) in log
    assert ("GainAuto", "Off") in log and ("Gain", 6) in log
    trig = [x for x in log if x[0].startswith("Trigger") or x[0].startswith("AcquisitionFrameRate")]
    assert trig == [
        ("TriggerMode", "Off"), ("TriggerSelector", "FrameStart"), ("TriggerMode", "Off"),
        ("TriggerSource", "Line3"), ("TriggerActivation", "FallingEdge"),
        ("TriggerOverlap", "ReadOut"), ("AcquisitionFrameRateEnable", False), ("TriggerMode", "On"),
    ]
    assert pyspin.cams[1].stream.log == [("StreamBufferCountMode", "Manual"),
                                         ("StreamBufferCountManual", 32),
                                         ("StreamBufferHandlingMode", "OldestFirst")]
    assert not pyspin.cams[0].nodes.log  # the other camera was not touched
    cam.close()
    assert pyspin.released == 1


def test_software_trigger_numbers_frames_by_pulse_and_reports_incomplete(pyspin: Any) -> None:
    cam = _cam(timestamp_tick_ns=1.0)
    cam.arm()
    assert cam.grab(0.01) is None  # timeout → None
    got = []
    for frame_id in (0, 1, 3):  # pulse 2 never reached the camera
        cam.software_trigger(frame_id, 10 * frame_id)
        got.append(cam.grab(0.1))
    assert [g.counter for g in got] == [0, 1, 3]
    assert got[2].t_trigger_ns == 30 and got[1].t_device_ns == 1_000_000
    pyspin.cams[1].fail_next = True
    cam.software_trigger(4, 40)
    with pytest.raises(GrabFailed) as ei:
        cam.grab(0.1)
    assert ei.value.counter == 4 and cam.counters["failed_buffers"] == 1
    cam.close()
    assert not pyspin.cams[1].streaming and not pyspin.cams[1].inited


def test_bad_input_names_camera_and_setting(pyspin: Any) -> None:
    with pytest.raises(UserError, match=r"camera 'flir0': serial: no FLIR camera with serial '1'.*19000001"):
        _cam(serial="1")
    with pytest.raises(UserError, match=r"camera 'flir0': exposure_us: ExposureTime=100000000.0 is out of range \[10, 3e\+07\]"):
        _cam(exposure_us=1e8)
    with pytest.raises(UserError, match=r"camera 'flir0': trigger.source: TriggerSource='Line9' is not one of"):
        _cam(trigger={"mode": "hardware", "source": "Line9"})
    with pytest.raises(UserError, match=r"camera 'flir0': features.Foo: the camera has no feature Foo"):
        _cam(features={"Foo": 1})
    assert pyspin.released == 4  # every failed open released the system
    cam = _cam(trigger={"mode": "hardware", "source": "Line0", "first_frame_timeout_s": 0.01})
    cam.arm()
    import time

    time.sleep(0.02)
    with pytest.raises(UserError, match=r"camera 'flir0': trigger.source=Line0: no frame within"):
        cam.grab(0.01)
    cam.close()


def test_missing_sdk_is_named_before_anything_starts(tmp_path: Any) -> None:
    import importlib.util

    from livepose.acquisition.base import BackendUnavailable, make_backend
    from livepose.acquisition.prepare import prepare_run

    if importlib.util.find_spec("PySpin") is not None:
        pytest.skip("PySpin is installed here")
    cfg = parse_config({"calibration": str(tmp_path / "c.toml"), "cameras": [
        {"backend": "spinnaker", "name": "flir0"}, {"backend": "sim", "name": "other"}]})
    with pytest.raises(BackendUnavailable, match=r"camera 'flir0': backend 'spinnaker' needs PySpin; install the vendor's SDK"):
        make_backend(cfg.cameras[0])
    with pytest.raises(BackendUnavailable, match=r"camera 'flir0'"):
        prepare_run(cfg, tmp_path)
