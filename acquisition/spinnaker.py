"""The ``spinnaker`` camera backend: FLIR (Teledyne) cameras through PySpin.

PySpin comes with FLIR's Spinnaker SDK as a wheel of its own; it is **not on PyPI** (the PyPI
package ``pyspin`` is an unrelated terminal spinner — never install it). It is imported when
a camera is opened, inside the camera process. FLIR cameras also work through the
``genicam`` backend with Spinnaker's GenTL producer.

FLIR feature names: ``ExposureTime`` (µs), ``Gain`` (dB), ``AcquisitionFrameRateEnable``,
trigger inputs ``Line0`` (opto-isolated) or ``Line3`` (GPIO), ``TriggerOverlap=ReadOut`` so an
exposure may start while the previous frame is read out (needed near the maximum rate), and
selector/source writable only while ``TriggerMode=Off`` (the shared
:func:`~livepose.acquisition.genapi.configure_trigger` order handles that).

Not run against a real camera or the SDK here: the feature mapping and grab path are tested
against a stand-in PySpin module (``tests/unit/test_acq_spinnaker.py``); see
docs/acquisition.md.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from livepose.acquisition.base import DeviceLost, Grab, GrabFailed, ImageSink, copy_out
from livepose.acquisition.genapi import SPINNAKER_NAMES, FeatureWriter, UserOutputs, configure
from livepose.acquisition.swtrigger import FrameTriggerWait
from livepose.core.errors import UserError


class SpinNodes:
    """:class:`~livepose.acquisition.genapi.Nodes` over a PySpin ``INodeMap``."""

    def __init__(self, nodemap: Any, ps: Any) -> None:
        self.nm = nodemap
        self.ps = ps

    def _typed(self, name: str) -> Any:
        ps = self.ps
        node = self.nm.GetNode(name)
        kind = node.GetPrincipalInterfaceType()
        cast = {
            ps.intfIFloat: ps.CFloatPtr,
            ps.intfIInteger: ps.CIntegerPtr,
            ps.intfIEnumeration: ps.CEnumerationPtr,
            ps.intfIBoolean: ps.CBooleanPtr,
            ps.intfICommand: ps.CCommandPtr,
            ps.intfIString: ps.CStringPtr,
        }.get(kind)
        return (cast(node) if cast else node), kind

    def has(self, name: str) -> bool:
        node = self.nm.GetNode(name)
        return node is not None and bool(self.ps.IsAvailable(node))

    def get(self, name: str) -> Any:
        node, kind = self._typed(name)
        if kind == self.ps.intfIEnumeration:
            return node.GetCurrentEntry().GetSymbolic()
        return node.GetValue()

    def set(self, name: str, value: Any) -> None:
        node, kind = self._typed(name)
        if not self.ps.IsWritable(node):
            raise RuntimeError(f"{name} is not writable now")
        if kind == self.ps.intfIEnumeration:
            node.SetIntValue(node.GetEntryByName(str(value)).GetValue())
        elif kind == self.ps.intfIInteger:
            node.SetValue(int(value))
        else:
            node.SetValue(value)

    def limits(self, name: str) -> tuple[float, float] | None:
        node, kind = self._typed(name)
        if kind in (self.ps.intfIFloat, self.ps.intfIInteger):
            return float(node.GetMin()), float(node.GetMax())
        return None

    def choices(self, name: str) -> list[str] | None:
        node, kind = self._typed(name)
        if kind != self.ps.intfIEnumeration:
            return None
        return [self.ps.CEnumEntryPtr(e).GetSymbolic() for e in node.GetEntries()]

    def execute(self, name: str) -> None:
        self._typed(name)[0].Execute()


class SpinnakerCamera(UserOutputs):
    """A FLIR camera.

    Parameters
    ----------
    cam_cfg
        A :class:`~livepose.core.config.SpinnakerCameraConfig`.
    cfg, index
        Unused (uniform backend signature).
    """

    pixel_format = "Mono8"
    counter_bits = 64
    counter_origin: int | None = None
    overlapped_trigger = True  # software trigger: fired from a trigger thread (swtrigger.py)
    exposure_origin: int | None = None  # FrameID after BeginAcquisition: not verified here
    image_sink: ImageSink | None = None  # set by the camera loop (frame ring slot)

    def __init__(self, cam_cfg: Any, cfg: Any = None, index: int = 0) -> None:
        self.cc = cam_cfg
        self.name: str = cam_cfg.name
        self.software_triggered = cam_cfg.trigger.mode == "software"
        if self.software_triggered:  # frames are numbered by pulse: pulse 0 is frame 0
            self.counter_origin = 0
        self.counters: Counter[str] = Counter()
        self._ready: FrameTriggerWait | None = None
        self._ps: Any = None
        self._system: Any = None
        self._list: Any = None
        self._cam: Any = None
        self._nodes: SpinNodes | None = None
        self._trigger: tuple[int, int] | None = None
        self._armed_at: float | None = None
        self._frames = 0

    def _fail(self, setting: str, why: str) -> UserError:
        return UserError(f"camera {self.name!r}: {setting}: {why}")

    def open(self) -> None:
        """Find the camera by serial, initialise it and apply the config."""
        import PySpin

        self._ps = PySpin
        self._system = PySpin.System.GetInstance()
        try:
            self._list = self._system.GetCameras()
            self._cam = self._find()
            self._cam.Init()
            self._nodes = SpinNodes(self._cam.GetNodeMap(), PySpin)
            w = FeatureWriter(self.name, self._nodes)
            configure(w, self.cc, SPINNAKER_NAMES)
            self.setup_outputs(w, self.cc.outputs)
            self.pixel_format = str(self._nodes.get("PixelFormat"))
            self._ready = FrameTriggerWait(self._nodes) if self.software_triggered else None
            stream = FeatureWriter(self.name, SpinNodes(self._cam.GetTLStreamNodeMap(), PySpin))
            stream.set("buffers", "StreamBufferCountMode", "Manual", required=False)
            stream.set("buffers", "StreamBufferCountManual", self.cc.buffers, required=False)
            stream.set("buffers", "StreamBufferHandlingMode", "OldestFirst", required=False)
        except PySpin.SpinnakerException as exc:
            self.close()
            raise self._fail("open", f"Spinnaker error: {exc}") from None
        except BaseException:
            self.close()
            raise

    def _find(self) -> Any:
        cams = [self._list.GetByIndex(i) for i in range(self._list.GetSize())]
        serials = [str(SpinNodes(c.GetTLDeviceNodeMap(), self._ps).get("DeviceSerialNumber"))
                   for c in cams]
        if self.cc.serial is None:
            if len(cams) != 1:
                raise self._fail("serial", f"{len(cams)} FLIR cameras found "
                                 f"({', '.join(serials) or 'none'}); say which one with serial:")
            return cams[0]
        if self.cc.serial not in serials:
            raise self._fail("serial", f"no FLIR camera with serial {self.cc.serial!r}; found: "
                             f"{', '.join(serials) or 'none'}")
        return cams[serials.index(self.cc.serial)]

    def arm(self) -> None:
        """Begin acquisition (waiting for triggers unless free-running)."""
        self._cam.BeginAcquisition()
        self._armed_at = time.monotonic()

    def wait_trigger_ready(self, timeout_s: float) -> bool:
        """Whether the camera waits for a frame trigger within ``timeout_s``
        (``AcquisitionStatus[FrameTriggerWait]``; always ``True`` if it lacks that)."""
        return self._ready is None or self._ready.wait(timeout_s)

    def fire(self, frame_id: int) -> None:
        """Execute ``TriggerSoftware`` now; the grab carries the camera's ``FrameID``."""
        assert self._nodes is not None
        self._nodes.execute("TriggerSoftware")

    def software_trigger(self, frame_id: int, t_trigger_ns: int) -> None:
        """Fire one exposure and number the next grab by this pulse (one at a time; the
        camera process fires from a trigger thread instead, see :meth:`fire`)."""
        self.wait_trigger_ready(1.0)
        self.fire(frame_id)
        self._trigger = (frame_id, t_trigger_ns)

    def grab(self, timeout_s: float) -> Grab | None:
        """Next image; ``None`` on timeout. Raises GrabFailed / DeviceLost / UserError."""
        ps = self._ps
        trig, self._trigger = self._trigger, None
        try:
            img = self._cam.GetNextImage(max(1, round(timeout_s * 1000)))
        except ps.SpinnakerException as exc:
            if getattr(exc, "errorcode", None) == ps.SPINNAKER_ERR_TIMEOUT:
                self._check_first_frame()
                return None
            raise DeviceLost(f"{self.name}: {exc}") from None
        t_grab = time.time_ns()
        try:
            counter = trig[0] if self.software_triggered and trig else int(img.GetFrameID())
            if img.IsIncomplete():
                self.counters["failed_buffers"] += 1
                raise GrabFailed(self.name, counter, f"image status {img.GetImageStatus()}")
            image = copy_out(img.GetNDArray(), self.image_sink)
            t_dev = int(img.GetTimeStamp()) or None
        finally:
            img.Release()
        self._frames += 1
        return Grab(image=image, counter=counter, t_grab_ns=t_grab,
                    t_device_ns=round(t_dev * self.cc.timestamp_tick_ns) if t_dev else None,
                    t_trigger_ns=trig[1] if trig else None)

    def _check_first_frame(self) -> None:
        t = self.cc.trigger
        if t.mode == "hardware" and self._frames == 0 and self._armed_at is not None and (
            time.monotonic() - self._armed_at > t.first_frame_timeout_s
        ):
            raise self._fail(f"trigger.source={t.source}",
                             f"no frame within {t.first_frame_timeout_s:g} s of arming; "
                             "is the trigger wired and running?")

    def close(self) -> None:
        """End acquisition, de-initialise and release the system (idempotent)."""
        cam, self._cam = self._cam, None
        if cam is not None:
            try:
                if cam.IsStreaming():
                    cam.EndAcquisition()
                if cam.IsInitialized():
                    cam.DeInit()
            except self._ps.SpinnakerException:
                pass  # the device is gone; releasing the system below is all that is left
            del cam
        if self._list is not None:
            self._list.Clear()
            self._list = None
        if self._system is not None:
            self._system.ReleaseInstance()
            self._system = None
