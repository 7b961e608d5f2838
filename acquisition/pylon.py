"""The ``pylon`` camera backend: Basler cameras through pypylon (extra ``basler``).

pypylon is imported when a camera is opened (inside the camera process), never at import of
this module. Everything a config sets goes through :mod:`livepose.acquisition.genapi`, so a
missing feature or an out-of-range value is one ``UserError`` naming camera and setting.

Frame counters: pylon's ``BlockID``. USB3 and the camera emulation count from 0 with 64 bits;
GigE counts 1…65535 and wraps to 1 (0 is never used) unless the Extended ID mode is on — the
backend unwraps that into a 64-bit counter, so :class:`FrameIdentity` sees one that never
wraps. A failed buffer (incomplete, lost packets) raises :class:`GrabFailed` with its block id
(counted as a dropped frame); device removal raises :class:`DeviceLost`, and
:meth:`PylonCamera.reconnect` re-opens the same serial number. Software trigger: the camera
process fires from a trigger thread (``WaitForFrameTriggerReady``, then ``TriggerSoftware``;
pypylon releases the GIL in both and in ``RetrieveResult``) and maps block ids to pulses
(:mod:`livepose.acquisition.swtrigger`).

Camera emulation (``PYLON_CAMEMU=N`` in the environment before pypylon loads) is how this
backend is tested: see docs/acquisition.md. The emulator has no device timestamps
(``TimeStamp`` is 0, then ``t_device_ns`` is ``None``).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from livepose.acquisition.base import (
    DeviceLost,
    Grab,
    GrabFailed,
    ImageSink,
    copy_out,
    reopen,
)
from livepose.acquisition.genapi import PYLON_NAMES, FeatureWriter, UserOutputs, configure
from livepose.acquisition.swtrigger import poll_until
from livepose.core.errors import UserError

_STRATEGIES = {
    "one_by_one": "GrabStrategy_OneByOne",
    "latest_image_only": "GrabStrategy_LatestImageOnly",
    "latest_images": "GrabStrategy_LatestImages",
    "upcoming_image": "GrabStrategy_UpcomingImage",
}
GIGE_BLOCK_IDS = 65535  # 1..65535, then 1 again


class PylonNodes:
    """:class:`~livepose.acquisition.genapi.Nodes` over a pypylon node map."""

    def __init__(self, nodemap: Any, genicam: Any) -> None:
        self.nm = nodemap
        self.genicam = genicam

    def _node(self, name: str) -> Any:
        return self.nm.GetNode(name)

    def has(self, name: str) -> bool:
        node = self._node(name)
        return node is not None and bool(self.genicam.IsAvailable(node))

    def get(self, name: str) -> Any:
        return self._node(name).Value

    def set(self, name: str, value: Any) -> None:
        self._node(name).Value = value

    def limits(self, name: str) -> tuple[float, float] | None:
        node = self._node(name)
        try:
            return float(node.Min), float(node.Max)
        except AttributeError:
            return None

    def choices(self, name: str) -> list[str] | None:
        node = self._node(name)
        try:
            return list(node.Symbolics)
        except AttributeError:
            return None

    def execute(self, name: str) -> None:
        self._node(name).Execute()


class BlockIdUnwrapper:
    """GigE block ids (1…65535, wrapping to 1) → a monotonic counter starting at 0."""

    def __init__(self, modulus: int = GIGE_BLOCK_IDS) -> None:
        self.modulus = modulus
        self._last = -1
        self._wraps = 0

    def __call__(self, block_id: int) -> int:
        c = block_id - 1
        if self._last >= 0 and c < self._last and self._last - c > self.modulus // 2:
            self._wraps += 1
        self._last = c
        return self._wraps * self.modulus + c


class PylonCamera(UserOutputs):
    """A Basler camera (or an emulated one).

    Parameters
    ----------
    cam_cfg
        A :class:`~livepose.core.config.PylonCameraConfig`.
    cfg, index
        The whole config and this camera's position (unused; uniform backend signature).
    """

    pixel_format = "Mono8"
    counter_bits = 64
    counter_origin: int | None = 0
    overlapped_trigger = True  # software trigger: fired from a trigger thread (swtrigger.py)
    exposure_origin: int | None = 0  # BlockID of the first exposure after StartGrabbing
    image_sink: ImageSink | None = None  # set by the camera loop (frame ring slot)

    def __init__(self, cam_cfg: Any, cfg: Any = None, index: int = 0) -> None:
        self.cc = cam_cfg
        self.name: str = cam_cfg.name
        self.software_triggered = cam_cfg.trigger.mode == "software"
        self.counters: Counter[str] = Counter()
        self.serial: str | None = cam_cfg.serial
        self.device_class = ""
        self._pylon: Any = None
        self._genicam: Any = None
        self._cam: Any = None
        self._unwrap: BlockIdUnwrapper | None = None
        self._t_trigger: int | None = None
        self._trigger_id: int | None = None
        self._last_block: int | None = None
        self._armed_at: float | None = None
        self._frames = 0
        self._faults_done: set[int] = set()

    # ------------------------------------------------------------------ open/configure
    def _fail(self, setting: str, why: str) -> UserError:
        return UserError(f"camera {self.name!r}: {setting}: {why}")

    def _find_device(self) -> Any:
        tlf = self._pylon.TlFactory.GetInstance()
        devices = list(tlf.EnumerateDevices())
        serials = [d.GetSerialNumber() for d in devices]
        if self.serial is None:
            if len(devices) != 1:
                raise self._fail(
                    "serial", f"{len(devices)} Basler devices found ({', '.join(serials) or 'none'}); "
                    "say which one with serial:",
                )
            return devices[0]
        if self.serial not in serials:
            raise self._fail(
                "serial", f"no Basler camera with serial {self.serial!r}; found: "
                f"{', '.join(serials) or 'none'}",
            )
        return devices[serials.index(self.serial)]

    def open(self) -> None:
        """Find the camera by serial, open it and apply the config (``UserError`` on refusal)."""
        from pypylon import genicam, pylon

        self._pylon, self._genicam = pylon, genicam
        info = self._find_device()
        self.serial = info.GetSerialNumber()
        self.device_class = info.GetDeviceClass()
        try:
            self._cam = pylon.InstantCamera(pylon.TlFactory.GetInstance().CreateDevice(info))
            self._cam.Open()
            self._configure()
        except genicam.GenericException as exc:
            self.close()
            raise self._fail("open", f"pylon error: {exc}") from None
        except BaseException:
            self.close()
            raise

    def _configure(self) -> None:
        cam, cc = self._cam, self.cc
        w = FeatureWriter(self.name, PylonNodes(cam.GetNodeMap(), self._genicam))
        emu = cc.emulation
        if emu is not None and self.device_class != "BaslerCamEmu":
            raise self._fail("emulation", f"{self.serial} is a real camera, not an emulated one")
        if emu is not None and emu.image_dir is not None:
            if not emu.image_dir.is_dir():
                raise self._fail("emulation.image_dir", f"{emu.image_dir} is not a folder")
            w.set("emulation.image_dir", "TestImageSelector", "Off")
            w.set("emulation.image_dir", "ImageFileMode", "On")
            w.set("emulation.image_dir", "ImageFilename", str(emu.image_dir))
        configure(w, cc, PYLON_NAMES)
        self.setup_outputs(w, cc.outputs)
        if cc.chunks and w.find("chunks", ["ChunkSelector"], required=False):
            w.set("chunks", "ChunkModeActive", True)
            for chunk in ("Timestamp", "Framecounter"):
                if chunk in (w.nodes.choices("ChunkSelector") or []):
                    w.set("chunks", "ChunkSelector", chunk)
                    w.set("chunks", "ChunkEnable", True)
        cam.MaxNumBuffer.Value = cc.buffers
        self.pixel_format = str(w.nodes.get("PixelFormat"))
        extended = any(
            w.nodes.has(n) and str(w.nodes.get(n)) == "On"
            for n in ("GevGVSPExtendedIDMode", "BslGevGVSPExtendedIDMode")
        )
        gige = self.device_class == "BaslerGigE" and not extended
        self._unwrap = BlockIdUnwrapper() if gige else None
        self.counter_origin = 0

    def arm(self) -> None:
        """Start grabbing; the camera now waits for trigger pulses."""
        strategy = getattr(self._pylon, _STRATEGIES[self.cc.grab_strategy])
        self._last_block = None
        if self._unwrap is not None:  # block ids restart with the grab
            self._unwrap = BlockIdUnwrapper()
        self._cam.StartGrabbing(strategy)
        self._armed_at = time.monotonic()

    # ------------------------------------------------------------------ grab
    def _check_removed(self) -> None:
        if self._cam is not None and self._cam.IsCameraDeviceRemoved():
            raise DeviceLost(f"{self.name}: camera {self.serial} was removed")

    def wait_trigger_ready(self, timeout_s: float) -> bool:
        """Whether the camera is ready for a trigger within ``timeout_s`` (a trigger fired
        before that is lost: no image, no block id)."""
        cam, ret = self._cam, self._pylon.TimeoutHandling_Return
        return poll_until(lambda: bool(cam.WaitForFrameTriggerReady(0, ret)), timeout_s)

    def fire(self, frame_id: int) -> None:
        """Execute ``TriggerSoftware`` now (emulation: after injecting the faults configured
        for pulse ``frame_id``); the grab carries the block id."""
        emu = self.cc.emulation
        if emu is not None and frame_id not in self._faults_done:
            if frame_id in emu.fail_buffers_at:
                self._cam.ForceFailedBufferCount.Value = 1
                self._cam.ForceFailedBuffer.Execute()
                self._faults_done.add(frame_id)
            if frame_id in emu.remove_at:
                self._cam.FirePnPCallback.Execute()
                self._faults_done.add(frame_id)
        self._check_removed()
        self._cam.ExecuteSoftwareTrigger()

    def software_trigger(self, frame_id: int, t_trigger_ns: int) -> None:
        """Fire one exposure and number the next grab by this pulse (one at a time; the
        camera process fires from a trigger thread instead, see :meth:`fire`)."""
        self.wait_trigger_ready(1.0)
        self.fire(frame_id)
        self._t_trigger = t_trigger_ns
        self._trigger_id = frame_id

    def _counter(self, r: Any) -> int | None:
        """The pulse's ``frame_id`` after :meth:`software_trigger`; otherwise the unwrapped
        block id (which the camera process maps to pulses when it fires from its trigger
        thread)."""
        block = int(r.BlockID)
        if block >= 2**64 - 1:  # UINT64_MAX: invalid
            return self._trigger_id
        block = self._unwrap(block) if self._unwrap is not None else block
        if self._last_block is not None and block != self._last_block + 1:
            self.counters["block_id_jumps"] += 1
        self._last_block = block
        return block if self._trigger_id is None else self._trigger_id

    def _device_time(self, r: Any) -> int | None:
        ts = int(r.TimeStamp)
        if ts == 0 and r.IsChunkDataAvailable():
            node = r.GetChunkDataNodeMap().GetNode("ChunkTimestamp")
            if node is not None and self._genicam.IsAvailable(node):
                ts = int(node.Value)
        return round(ts * self.cc.timestamp_tick_ns) if ts else None

    def grab(self, timeout_s: float) -> Grab | None:
        """Next image; ``None`` on timeout. Raises GrabFailed / DeviceLost / UserError."""
        r = self._cam.RetrieveResult(round(timeout_s * 1000), self._pylon.TimeoutHandling_Return)
        t_grab = time.time_ns()
        if r is None or not r.IsValid():
            self._check_removed()
            self._check_first_frame()
            return None
        try:
            self._check_removed()
            if not r.GrabSucceeded():
                self.counters["failed_buffers"] += 1
                counter = self._counter(r)
                self._trigger_id = None
                raise GrabFailed(self.name, counter, r.GetErrorDescription())
            with r.GetArrayZeroCopy() as view:  # one copy: into the frame ring when shared
                image = copy_out(view, self.image_sink)
            counter = self._counter(r)
            t_dev = self._device_time(r)
        finally:
            r.Release()
        if counter is None:
            raise GrabFailed(self.name, None, "invalid block id")
        self._frames += 1
        t_trig, self._t_trigger, self._trigger_id = self._t_trigger, None, None
        return Grab(image=image, counter=counter, t_grab_ns=t_grab, t_device_ns=t_dev,
                    t_trigger_ns=t_trig)

    def _check_first_frame(self) -> None:
        t = self.cc.trigger
        if (
            t.mode == "hardware"
            and self._frames == 0
            and self._armed_at is not None
            and time.monotonic() - self._armed_at > t.first_frame_timeout_s
        ):
            raise self._fail(
                f"trigger.source={t.source}",
                f"no frame within {t.first_frame_timeout_s:g} s of arming; "
                "is the trigger wired and running?",
            )

    # ------------------------------------------------------------------ recovery/close
    def reconnect(self) -> None:
        """Re-open the same serial after a removal, within ``reconnect_timeout_s``."""
        self.close()
        last = reopen(self, self.cc.reconnect_timeout_s, 0.2)
        if last is not None:
            raise self._fail("reconnect", f"camera {self.serial} did not come back ({last})")

    def close(self) -> None:
        """Stop grabbing (disarms the trigger) and release the device (idempotent)."""
        cam, self._cam = self._cam, None
        if cam is None:
            return
        try:
            if cam.IsGrabbing():
                cam.StopGrabbing()
            cam.Close()
        except self._genicam.GenericException:
            pass  # the device is gone; releasing it below is all that is left
        cam.DestroyDevice()
