"""Vendor-neutral GenICam feature setting for the machine-vision backends.

pypylon, harvesters and PySpin all expose the same GenICam node maps through different
Python APIs. Each backend wraps its node map in a small :class:`Nodes` adapter; everything
else — which features a config field maps to, the order they are written in, range and
enumeration checks, and one clear :class:`~livepose.core.errors.UserError` naming the camera and
the setting — lives here once. No SDK is imported by this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from livepose.core.errors import UserError


class Nodes(Protocol):
    """What the feature writer needs from a node map (one adapter per SDK)."""

    def has(self, name: str) -> bool:
        """Whether the feature exists and is available now."""

    def get(self, name: str) -> Any:
        """Current value (enumerations as their symbolic name)."""

    def set(self, name: str, value: Any) -> None:
        """Write a value (raises the SDK's exception if the camera refuses it)."""

    def limits(self, name: str) -> tuple[float, float] | None:
        """``(min, max)`` of a numeric feature, else ``None``."""

    def choices(self, name: str) -> list[str] | None:
        """Symbolic values of an enumeration, else ``None``."""

    def execute(self, name: str) -> None:
        """Run a command feature."""


@dataclass(frozen=True)
class FeatureNames:
    """The feature names a vendor uses for each setting (first existing one wins)."""

    exposure: tuple[str, ...] = ("ExposureTime", "ExposureTimeAbs")
    exposure_auto: str = "ExposureAuto"
    gain: tuple[str, ...] = ("Gain", "GainAbs")
    gain_auto: str = "GainAuto"
    frame_rate: tuple[str, ...] = ("AcquisitionFrameRate", "AcquisitionFrameRateAbs")
    frame_rate_enable: tuple[str, ...] = (
        "AcquisitionFrameRateEnable",
        "AcquisitionFrameRateEnabled",
    )
    binning: tuple[str, ...] = ("BinningHorizontal", "BinningVertical")
    software_source: str = "Software"
    trigger_overlap: str = "TriggerOverlap"


PYLON_NAMES = FeatureNames()
GENICAM_NAMES = FeatureNames()
SPINNAKER_NAMES = FeatureNames(exposure=("ExposureTime",), gain=("Gain",))


class FeatureWriter:
    """Write camera settings, turning every refusal into a ``UserError``.

    Parameters
    ----------
    camera
        The camera's name in the config (named in every error).
    nodes
        The SDK adapter.
    """

    def __init__(self, camera: str, nodes: Nodes) -> None:
        self.camera = camera
        self.nodes = nodes
        self.written: list[tuple[str, Any]] = []

    def _fail(self, setting: str, why: str) -> UserError:
        return UserError(f"camera {self.camera!r}: {setting}: {why}")

    def find(self, setting: str, names: Sequence[str], required: bool = True) -> str | None:
        """The first of ``names`` the camera has (``UserError`` if none and ``required``)."""
        for n in names:
            if self.nodes.has(n):
                return n
        if required:
            raise self._fail(setting, f"the camera has no feature {' / '.join(names)}")
        return None

    def set(self, setting: str, names: Sequence[str] | str, value: Any, required: bool = True) -> bool:
        """Set the first existing feature of ``names`` to ``value`` after checking it.

        Returns
        -------
        bool
            Whether a feature was written (``False`` only when optional and absent).
        """
        name = self.find(setting, [names] if isinstance(names, str) else names, required)
        if name is None:
            return False
        choices = self.nodes.choices(name)
        if choices is not None and str(value) not in choices:
            raise self._fail(setting, f"{name}={value!r} is not one of {', '.join(choices)}")
        lim = self.nodes.limits(name)
        if lim is not None and isinstance(value, int | float) and not isinstance(value, bool):
            lo, hi = lim
            if not lo <= value <= hi:
                raise self._fail(setting, f"{name}={value} is out of range [{lo:g}, {hi:g}]")
        try:
            self.nodes.set(name, value)
        except Exception as exc:  # each SDK raises its own exception family
            raise self._fail(setting, f"the camera refused {name}={value!r} ({exc})") from None
        self.written.append((name, value))
        return True

    def execute(self, setting: str, name: str) -> None:
        """Run a command feature (``UserError`` if missing or refused)."""
        self.find(setting, [name])
        try:
            self.nodes.execute(name)
        except Exception as exc:  # each SDK raises its own exception family
            raise self._fail(setting, f"{name} failed ({exc})") from None


def configure(writer: FeatureWriter, cfg: Any, names: FeatureNames = GENICAM_NAMES) -> None:
    """Apply a machine-vision camera config (``_MachineVisionConfig``) in a safe order.

    Order: binning, pixel format, ROI (offsets zeroed first so any size fits), exposure,
    gain, trigger (selector → mode → source → activation), frame rate, output line, then the
    raw ``features`` in the order given.
    """
    if cfg.binning != 1:
        for n in names.binning:
            writer.set("binning", n, cfg.binning)
    writer.set("pixel_format", "PixelFormat", cfg.pixel_format)
    if cfg.roi is not None:
        writer.set("roi.offset_x", "OffsetX", 0, required=False)
        writer.set("roi.offset_y", "OffsetY", 0, required=False)
        writer.set("roi.width", "Width", cfg.roi.width)
        writer.set("roi.height", "Height", cfg.roi.height)
        writer.set("roi.offset_x", "OffsetX", cfg.roi.offset_x, required=cfg.roi.offset_x > 0)
        writer.set("roi.offset_y", "OffsetY", cfg.roi.offset_y, required=cfg.roi.offset_y > 0)
    if cfg.exposure_us is not None:
        writer.set("exposure_us", names.exposure_auto, "Off", required=False)
        writer.set("exposure_us", names.exposure, cfg.exposure_us)
    if cfg.gain_db is not None:
        writer.set("gain_db", names.gain_auto, "Off", required=False)
        writer.set("gain_db", names.gain, cfg.gain_db)
    configure_trigger(writer, cfg, names)
    for name, value in cfg.features.items():
        writer.set(f"features.{name}", name, value)


def configure_outputs(writer: FeatureWriter, lines: Sequence[str]) -> dict[str, str]:
    """Make each of ``lines`` an output driven by a user output (closed-loop actions).

    Line ``i`` (in order) gets ``UserOutput{i+1}`` as its source and starts low.

    Returns
    -------
    dict
        Line name → its user output.
    """
    out: dict[str, str] = {}
    for i, line in enumerate(lines):
        user, setting = f"UserOutput{i + 1}", f"outputs[{i}] ({line})"
        writer.set(setting, "LineSelector", line)
        writer.set(setting, "LineMode", "Output", required=False)
        writer.set(setting, "LineSource", user)
        writer.set(setting, "UserOutputSelector", user)
        writer.set(setting, "UserOutputValue", False)
        out[line] = user
    return out


class UserOutputs:
    """Mixin of the GenICam backends: output lines that closed-loop actions pulse
    (:mod:`livepose.acquisition.outputs`)."""

    def setup_outputs(self, writer: FeatureWriter, lines: Sequence[str]) -> None:
        """Configure ``lines`` (``outputs`` in the camera's config) at open."""
        self._outputs = (configure_outputs(writer, lines), writer.nodes)

    @property
    def output_lines(self) -> list[str]:
        """The lines :meth:`set_output` may drive (none before :meth:`setup_outputs`)."""
        outputs = getattr(self, "_outputs", None)
        return list(outputs[0]) if outputs else []

    def set_output(self, line: str, high: bool) -> None:
        """Set an output line high or low (``KeyError`` for a line not configured)."""
        users, nodes = self._outputs
        nodes.set("UserOutputSelector", users[line])
        nodes.set("UserOutputValue", high)


def configure_trigger(writer: FeatureWriter, cfg: Any, names: FeatureNames) -> None:
    """Trigger and frame-rate features for ``cfg.trigger.mode``."""
    t = cfg.trigger
    if t.mode == "free_run":
        writer.set("trigger.mode", "TriggerMode", "Off", required=False)
        if cfg.frame_rate is not None:
            writer.set("frame_rate", names.frame_rate_enable, True, required=False)
            writer.set("frame_rate", names.frame_rate, cfg.frame_rate)
    else:
        # FLIR only lets selector and source change while TriggerMode is Off; Basler does
        # not mind. So: Off, selector, Off (for that selector), source, activation, On.
        writer.set("trigger.mode", "TriggerMode", "Off")
        writer.set("trigger.selector", "TriggerSelector", t.selector, required=False)
        writer.set("trigger.mode", "TriggerMode", "Off")
        source = names.software_source if t.mode == "software" else t.source
        writer.set("trigger.source", "TriggerSource", source)
        if t.mode == "hardware":
            writer.set("trigger.activation", "TriggerActivation", t.activation, required=False)
        overlap = getattr(cfg, "trigger_overlap", None)
        if overlap is not None:
            writer.set("trigger_overlap", names.trigger_overlap, overlap)
        writer.set("frame_rate", names.frame_rate_enable, False, required=False)
        writer.set("trigger.mode", "TriggerMode", "On")
    if t.output_line is not None:
        writer.set("trigger.output_line", "LineSelector", t.output_line)
        writer.set("trigger.output_line", "LineMode", "Output", required=False)
        writer.set("trigger.output_line", "LineSource", "ExposureActive")
