"""The ``genicam`` camera backend: any GenICam camera through a GenTL producer (``.cti``)
and harvesters (extra ``genicam``) — also FLIR cameras through Spinnaker's GenTL producer.

harvesters is imported when the camera is opened (inside the camera process). Settings go
through :mod:`livepose.acquisition.genapi` (one ``UserError`` naming camera and setting).
Frame counter: the GenTL buffer ``frame_id`` (64 bit); harvesters discards incomplete
buffers, which are counted (``failed_buffers``) and show up as a gap at the next frame.
Device timestamps: the buffer's ``timestamp_ns`` when the producer has one.

Tested for real with the simulator producer in the ``genicam`` wheel (``viky.cti``: three
free-running cameras, no trigger features); see docs/acquisition.md.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from livepose.acquisition.base import DeviceLost, Grab, ImageSink, copy_out
from livepose.acquisition.genapi import GENICAM_NAMES, FeatureWriter, UserOutputs, configure
from livepose.acquisition.swtrigger import FrameTriggerWait
from livepose.core.errors import UserError


def producer_files(cti: list[str]) -> list[str]:
    """The GenTL producers to load: the config's, else every ``.cti`` on
    ``GENICAM_GENTL64_PATH``."""
    if cti:
        return cti
    found = []
    for folder in os.environ.get("GENICAM_GENTL64_PATH", "").split(os.pathsep):
        if folder and Path(folder).is_dir():
            found += sorted(str(p) for p in Path(folder).glob("*.cti"))
    return found


def bundled_simulator() -> str | None:
    """Path of the simulator producer shipped in the ``genicam`` wheel, if installed."""
    import importlib.util

    spec = importlib.util.find_spec("genicam")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "viky.cti"
    return str(path) if path.exists() else None


class HarvestersNodes:
    """:class:`~livepose.acquisition.genapi.Nodes` over a harvesters node map."""

    def __init__(self, nodemap: Any) -> None:
        self.nm = nodemap

    def has(self, name: str) -> bool:
        try:
            node = getattr(self.nm, name)
        except AttributeError:
            return False
        from genicam.genapi import is_available

        return bool(is_available(node.node))

    def get(self, name: str) -> Any:
        return getattr(self.nm, name).value

    def set(self, name: str, value: Any) -> None:
        getattr(self.nm, name).value = value

    def limits(self, name: str) -> tuple[float, float] | None:
        node = getattr(self.nm, name)
        try:
            return float(node.min), float(node.max)
        except AttributeError:
            return None

    def choices(self, name: str) -> list[str] | None:
        node = getattr(self.nm, name)
        try:
            return list(node.symbolics)
        except AttributeError:
            return None

    def execute(self, name: str) -> None:
        getattr(self.nm, name).execute()


class GenICamCamera(UserOutputs):
    """A camera behind a GenTL producer.

    Parameters
    ----------
    cam_cfg
        A :class:`~livepose.core.config.GenICamCameraConfig`.
    cfg, index
        Unused (uniform backend signature).
    """

    pixel_format = "Mono8"
    counter_bits = 64
    counter_origin: int | None = None
    overlapped_trigger = True  # software trigger: fired from a trigger thread (swtrigger.py)
    exposure_origin: int | None = None  # GenTL frame ids start where the producer likes
    image_sink: ImageSink | None = None  # set by the camera loop (frame ring slot)

    def __init__(self, cam_cfg: Any, cfg: Any = None, index: int = 0) -> None:
        self.cc = cam_cfg
        self.name: str = cam_cfg.name
        self.software_triggered = cam_cfg.trigger.mode == "software"
        if self.software_triggered:  # frames are numbered by pulse: pulse 0 is frame 0
            self.counter_origin = 0
        self.counters: Counter[str] = Counter()
        self._ready: FrameTriggerWait | None = None
        self._h: Any = None
        self._ia: Any = None
        self._t_trigger: int | None = None
        self._trigger_id: int | None = None
        self._armed_at: float | None = None
        self._frames = 0

    def _fail(self, setting: str, why: str) -> UserError:
        return UserError(f"camera {self.name!r}: {setting}: {why}")

    def open(self) -> None:
        """Load the producer(s), find the device by serial, open and configure it."""
        from harvesters.core import Harvester

        files = producer_files(self.cc.cti)
        if not files:
            raise self._fail("cti", "no GenTL producer: set cti: or GENICAM_GENTL64_PATH")
        missing = [f for f in files if not Path(f).is_file()]
        if missing:
            raise self._fail("cti", f"GenTL producer not found: {missing[0]}")
        self._h = Harvester()
        try:
            for f in files:
                self._h.add_file(f)
            self._h.update()
            self._ia = self._h.create(self._device_index())
            self._configure()
        except BaseException:
            self.close()
            raise

    def _device_index(self) -> int:
        serials = [str(d.serial_number) for d in self._h.device_info_list]
        if self.cc.serial is None:
            if len(serials) != 1:
                raise self._fail("serial", f"{len(serials)} devices found "
                                 f"({', '.join(serials) or 'none'}); say which one with serial:")
            return 0
        if self.cc.serial not in serials:
            raise self._fail("serial", f"no device with serial {self.cc.serial!r}; found: "
                             f"{', '.join(serials) or 'none'}")
        return serials.index(self.cc.serial)

    def _configure(self) -> None:
        nodes = HarvestersNodes(self._ia.remote_device.node_map)
        w = FeatureWriter(self.name, nodes)
        configure(w, self.cc, GENICAM_NAMES)
        self.setup_outputs(w, self.cc.outputs)
        self.pixel_format = str(nodes.get("PixelFormat"))
        self._ready = FrameTriggerWait(nodes) if self.software_triggered else None
        try:
            self._ia.num_buffers = self.cc.buffers
        except ValueError as exc:
            raise self._fail("buffers", str(exc)) from None
        from harvesters.core import Callback, ImageAcquirer

        counters = self.counters

        class _Incomplete(Callback):
            def emit(self, context: object = None) -> None:
                counters["failed_buffers"] += 1

        self._ia.add_callback(ImageAcquirer.Events.INCOMPLETE_BUFFER, _Incomplete())

    def arm(self) -> None:
        """Start acquisition (waiting for triggers unless free-running)."""
        self._ia.start()
        self._armed_at = time.monotonic()

    def wait_trigger_ready(self, timeout_s: float) -> bool:
        """Whether the camera waits for a frame trigger within ``timeout_s``
        (``AcquisitionStatus[FrameTriggerWait]``; always ``True`` if it lacks that)."""
        return self._ready is None or self._ready.wait(timeout_s)

    def fire(self, frame_id: int) -> None:
        """Execute ``TriggerSoftware`` now; the grab carries the GenTL frame id."""
        self._ia.remote_device.node_map.TriggerSoftware.execute()

    def software_trigger(self, frame_id: int, t_trigger_ns: int) -> None:
        """Fire one exposure and number the next grab by this pulse (one at a time; the
        camera process fires from a trigger thread instead, see :meth:`fire`)."""
        self.wait_trigger_ready(1.0)
        self.fire(frame_id)
        self._t_trigger = t_trigger_ns
        self._trigger_id = frame_id

    def grab(self, timeout_s: float) -> Grab | None:
        """Next complete image; ``None`` on timeout. Raises DeviceLost / UserError."""
        from genicam.gentl import GenericException, NotAvailableException

        try:
            buf = self._ia.try_fetch(timeout=timeout_s)
        except GenericException as exc:
            raise DeviceLost(f"{self.name}: {exc}") from None
        t_grab = time.time_ns()
        if buf is None:
            self._check_first_frame()
            return None
        with buf:
            comp = buf.payload.components[0]
            shape = (comp.height, comp.width)
            n = int(comp.num_components_per_pixel)
            image = copy_out(comp.data.reshape(shape + ((n,) if n > 1 else ())), self.image_sink)
            counter = int(buf.frame_id)
            try:
                t_dev: int | None = int(buf.timestamp_ns)
            except NotAvailableException:
                t_dev = None
        self._frames += 1
        if self.software_triggered and self._trigger_id is not None:
            counter = self._trigger_id  # numbered by its pulse: a lost pulse is a gap
        t_trig, self._t_trigger, self._trigger_id = self._t_trigger, None, None
        return Grab(image=image, counter=counter, t_grab_ns=t_grab, t_device_ns=t_dev or None,
                    t_trigger_ns=t_trig)

    def _check_first_frame(self) -> None:
        t = self.cc.trigger
        if self._frames == 0 and self._armed_at is not None and t.mode != "software" and (
            time.monotonic() - self._armed_at > t.first_frame_timeout_s
        ):
            what = f"trigger.source={t.source}" if t.mode == "hardware" else "trigger.mode=free_run"
            raise self._fail(what, f"no frame within {t.first_frame_timeout_s:g} s of arming")

    def reconnect(self) -> None:
        """Re-open the same device after it was lost."""
        self.close()
        self.open()
        self.arm()
        self.counters["reconnects"] += 1

    def close(self) -> None:
        """Stop acquisition, release the device and the producer (idempotent)."""
        ia, self._ia = self._ia, None
        h, self._h = self._h, None
        if ia is not None:
            if ia.is_acquiring():
                ia.stop()
            ia.destroy()
        if h is not None:
            h.reset()
