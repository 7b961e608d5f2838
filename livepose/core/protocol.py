"""The livepose wire protocol: one module owns the schema, encoding and validation.

Every message is a ZeroMQ multipart ``[topic, header, *buffers]``:

- ``topic`` is bytes (``b"frame/cam0"``, ``b"kp2d"``, ``b"pose3d"``, ``b"health/infer0"``…)
  so that subscribers can filter by prefix;
- ``header`` is a msgpack map with ``v`` (protocol version), ``kind``, the kind's scalar
  fields and ``arrays``: a list of ``[name, dtype, shape]`` describing the buffers;
- each buffer is the raw bytes of one C-contiguous NumPy array, sent and received without
  copying (``send_multipart(..., copy=False)`` / ``recv_multipart(copy=False)``).

Decoding never raises for a malformed message: :meth:`Decoder.decode` returns ``None``,
counts the reason in :attr:`Decoder.errors` and logs it (rate-limited). A receive loop
therefore cannot be killed by what a peer sends.

Kinds
-----
===========  ===========================================================================
``frame``     one camera image: cam, frame_id, timestamps, pixel format, drops before it
``preview``   a small JPEG of a camera frame for the dashboard
``trigger``   one trigger pulse of the software trigger clock
``truth``     ground-truth 3D keypoints of the simulated rig for one frame_id
``kp2d``      2D keypoints of one frame-set: float32 ``[C, J, 3]`` (x, y, confidence)
``pose3d``    fused 3D pose of one frame-set: xyz, variance, reprojection error, views
``health``    a process's state, counters, rates and last error
===========  ===========================================================================
"""

from __future__ import annotations

import dataclasses
import logging
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, TypeVar

import msgpack
import numpy as np

PROTOCOL_VERSION = 3
"""2: ``pose3d`` says per keypoint what is known (``status``), ``late`` and ``units``, and
keeps the forward-predicted position apart (``xyz_lead``); ``frame`` and ``kp2d`` carry the
timing model's verdict and the frame-set policy's (missing and desynced views).
3: ``pose3d`` may carry several individuals (``ind_*`` arrays, ``[N, J, 3]`` with track ids
and per-individual status); a version-2 message is still accepted (it has none)."""

ACCEPTED_VERSIONS = (2, 3)
"""Versions :func:`decode_strict` accepts (a version-2 sender's messages decode unchanged)."""

#: ``Pose3d.status`` per keypoint: no estimate (``xyz`` NaN).
MISSING = 0
#: measured in this frame-set (at least one view updated or triangulated it).
MEASURED = 1
#: predicted: a track coasting without a measurement in this frame-set (``xyz`` finite).
PREDICTED = 2
STATUS_NAMES = {MISSING: "missing", MEASURED: "measured", PREDICTED: "predicted"}

log = logging.getLogger(__name__)

Buffer = bytes | memoryview
M = TypeVar("M", bound="Message")


class ProtocolError(ValueError):
    """A message does not follow the protocol. ``reason`` is a short counter key."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ArraySpec:
    """What an array field may be.

    Parameters
    ----------
    dtypes
        Allowed NumPy dtype strings (``np.dtype(x).str``, e.g. ``"|u1"``, ``"<f4"``).
    ndims
        Allowed numbers of dimensions.
    required
        Whether the array must be present.
    """

    dtypes: tuple[str, ...]
    ndims: tuple[int, ...]
    required: bool = True


@dataclass(frozen=True, slots=True)
class Limits:
    """Upper bounds applied while decoding (from config ``limits``)."""

    max_array_bytes: int = 256 * 1024 * 1024
    max_header_bytes: int = 1024 * 1024
    max_arrays: int = 16
    max_dim: int = 1 << 16


DEFAULT_LIMITS = Limits()


class SharedRef(Protocol):
    """A reference to an array already in same-host shared memory (a frame-ring slot)."""

    def wire(self) -> list[Any]:
        """The reference as it travels in the header (``[ring, slot, generation]``)."""
        ...


class SharedArrays(Protocol):
    """Resolves shared-memory references in received headers into arrays
    (:class:`livepose.transport.shmring.RingReader`)."""

    def resolve(self, ref: Any, dtype: np.dtype[Any], shape: list[int],
                copy: bool) -> np.ndarray:
        """The array behind ``ref``; raise :class:`ProtocolError` when it is gone or stale."""
        ...

_U8, _U16, _F32, _F64, _U32, _I32 = "|u1", "<u2", "<f4", "<f8", "<u4", "<i4"


class Message:
    """Base of all message kinds (dataclasses). Subclasses set ``KIND`` and ``ARRAYS``."""

    KIND: ClassVar[str] = ""
    ARRAYS: ClassVar[dict[str, ArraySpec]] = {}
    _SCALARS: ClassVar[dict[str, tuple[Any, bool]]] = {}

    def topic(self) -> bytes:
        """The ZeroMQ topic this message is published under."""
        return self.KIND.encode()


def _scalar_spec(cls: type) -> dict[str, tuple[Any, bool]]:
    """Map every non-array dataclass field to (annotation, required)."""
    hints = typing.get_type_hints(cls)
    out: dict[str, tuple[Any, bool]] = {}
    for f in dataclasses.fields(cls):
        if f.name in cls.ARRAYS:  # type: ignore[attr-defined]
            continue
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        out[f.name] = (hints[f.name], required)
    return out


def _register(cls: type[M]) -> type[M]:
    cls._SCALARS = _scalar_spec(cls)
    KINDS[cls.KIND] = cls
    return cls


KINDS: dict[str, type[Message]] = {}


@_register
@dataclass(slots=True, kw_only=True)
class Frame(Message):
    """One camera image.

    ``image`` is ``(H, W)`` for mono or ``(H, W, 3)`` for colour, uint8 or uint16.
    ``dropped_before`` counts frame ids this camera missed since its previous frame,
    ``duplicates_before`` repeated counters it dropped since then.
    ``match_error_ns`` is set when a free-running camera's ``frame_id`` came from matching
    its timestamp to the nearest trigger pulse (``t_trigger_ns``): frame time − pulse time;
    ``None`` when the frame was triggered by that pulse or numbered by the camera's counter.

    The camera's timing model (:mod:`livepose.acquisition.timing`) adds ``timing_residual_ns``
    (the frame's exposure, as the model estimates it, minus where pulse ``frame_id`` puts it;
    ``None`` without a pulse time) and ``desync``: the residual is outside the desync
    tolerance (widened by the model's own uncertainty), so the frame does not show the
    instant of ``frame_id`` and must not be fused with the other views of the set.
    """

    KIND: ClassVar[str] = "frame"
    ARRAYS: ClassVar[dict[str, ArraySpec]] = {"image": ArraySpec((_U8, _U16), (2, 3))}

    cam: str
    frame_id: int
    t_grab_ns: int
    pixel_format: str
    image: np.ndarray
    t_trigger_ns: int | None = None
    t_exposure_ns: int | None = None
    t_pub_ns: int | None = None
    dropped_before: int = 0
    duplicates_before: int = 0
    match_error_ns: int | None = None
    timing_residual_ns: int | None = None
    desync: bool = False

    def topic(self) -> bytes:
        return b"frame/" + self.cam.encode()


@_register
@dataclass(slots=True, kw_only=True)
class Preview(Message):
    """A small JPEG of one camera frame for humans (dashboard), ≤ 15 per second.

    ``jpeg`` is the encoded bytes as uint8 ``(N,)``; ``width``/``height`` its size.
    """

    KIND: ClassVar[str] = "preview"
    ARRAYS: ClassVar[dict[str, ArraySpec]] = {"jpeg": ArraySpec((_U8,), (1,))}
    cam: str
    frame_id: int
    t_grab_ns: int
    width: int
    height: int
    jpeg: np.ndarray

    def topic(self) -> bytes:
        return b"preview/" + self.cam.encode()


@_register
@dataclass(slots=True, kw_only=True)
class Trigger(Message):
    """One trigger pulse: ``frame_id`` is the pulse index. From the software clock,
    ``t_trigger_ns`` is when it fired; from a trigger box, the board's stamp of the pulse
    mapped to host time, ``t_trigger_sigma_ns`` its uncertainty."""

    KIND: ClassVar[str] = "trigger"
    frame_id: int
    t_trigger_ns: int
    t_trigger_sigma_ns: int | None = None


@_register
@dataclass(slots=True, kw_only=True)
class Truth(Message):
    """Ground truth of the simulated rig for one pulse, published half a period *before* it.

    ``xyz`` ``(J, 3)`` float64: the keypoints (world units); ``(N, J, 3)`` for a herd
    (``sim.animals``, identity order). ``t_trigger_ns``: the time the
    pulse is due. Optional ``spheres`` ``(S, 4)`` (centre, radius) and ``albedo`` ``(S,)``:
    the scene the sim cameras render, computed once here instead of once per camera.
    """

    KIND: ClassVar[str] = "truth"
    ARRAYS: ClassVar[dict[str, ArraySpec]] = {
        "xyz": ArraySpec((_F64,), (2, 3)),
        "spheres": ArraySpec((_F64,), (2,), required=False),
        "albedo": ArraySpec((_F64,), (1,), required=False),
    }
    frame_id: int
    t_trigger_ns: int
    xyz: np.ndarray
    spheres: np.ndarray | None = None
    albedo: np.ndarray | None = None


@_register
@dataclass(slots=True, kw_only=True)
class Kp2d(Message):
    """2D keypoints of one frame-set.

    ``points`` is float32 ``(C, J, 3)``: x, y in full-frame pixels (distorted image
    coordinates) and confidence in [0, 1]; NaN rows mean "no view". ``cams`` names the C
    views in order. ``skipped`` lists complete frame-sets the worker jumped over since its
    previous message; ``incomplete`` lists frame-sets abandoned because no view of them was
    ever handed out. Timestamps are host ``time.time_ns()``.

    The frame-set policy (:mod:`livepose.inference.assembler`) may hand out a set without
    every view: ``missing`` names the cameras whose frame had not arrived by the deadline
    (or that are known to be gone) and ``desynced`` those whose frame the timing model
    flagged; their rows are NaN. ``sizes`` gives each view's frame ``[width, height]``
    (``[0, 0]`` where missing): fusion checks it against the calibration's geometry.

    Several animals (``fusion.multi``, protocol 3): ``inst_points`` float32 ``(M, J, 3)``
    every instance of every view, ``inst_cams`` uint8 ``(M,)`` the index in ``cams`` of each
    (``points`` is then NaN), optionally ``inst_owner`` int32 ``(M,)``: the individual id an
    instance was made for (a 3D-guided crop's: its track key, ``pose3d.ind_track``), -1 for
    none.
    """

    KIND: ClassVar[str] = "kp2d"
    ARRAYS: ClassVar[dict[str, ArraySpec]] = {
        "points": ArraySpec((_F32,), (3,)),
        "inst_points": ArraySpec((_F32,), (3,), required=False),
        "inst_cams": ArraySpec((_U8,), (1,), required=False),
        "inst_owner": ArraySpec((_I32,), (1,), required=False),
    }
    frame_id: int
    cams: list[str]
    model: str
    points: np.ndarray
    inst_points: np.ndarray | None = None
    inst_cams: np.ndarray | None = None
    inst_owner: np.ndarray | None = None
    t_trigger_ns: int | None = None
    t_grab_ns: list[int] = field(default_factory=list)
    t_set_ns: int = 0
    t_infer_start_ns: int = 0
    t_infer_end_ns: int = 0
    t_pub_ns: int = 0
    worker: int = 0
    skipped: list[int] = field(default_factory=list)
    incomplete: list[int] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    desynced: list[str] = field(default_factory=list)
    sizes: list[list[int]] = field(default_factory=list)


@_register
@dataclass(slots=True, kw_only=True)
class Pose3d(Message):
    """Fused 3D pose of one frame-set.

    Arrays (J keypoints): ``xyz`` float64 ``(J, 3)`` the estimate at the frame-set's
    instant (NaN if unknown), ``variance`` float64 ``(J, 3)``, ``reproj`` float32 ``(J,)``
    mean reprojection error in pixels, ``views`` uint16 ``(J,)`` bitmask of the cameras used,
    ``status`` uint8 ``(J,)`` (:data:`MISSING`, :data:`MEASURED`, :data:`PREDICTED`: a
    coasting track's ``xyz`` is finite but was not measured in this set); optional
    ``raw_xyz`` float64 ``(J, 3)`` (triangulated before filtering), ``gated`` uint16 ``(J,)``
    bitmask of views rejected by the filter's gate, and ``xyz_lead`` float64 ``(J, 3)``: the
    position predicted ``lead_ns`` ahead (``fusion.lead_ms``), never mixed into ``xyz``.
    ``late``: the set arrived after a newer one was fused (triangulated, not filtered).
    ``lifted``: one camera's 2D lifted to 3D (``fusion.mode: lift``), not triangulated.
    ``units``: the length unit of ``xyz`` (the calibration's). Several individuals
    (``fusion.multi``): ``ind_ids`` int32 ``(N,)`` track ids, ``ind_xyz``/``ind_variance``
    float64 ``(N, J, 3)``, ``ind_status`` uint8, ``ind_views`` uint16 and ``ind_reproj``
    float32 ``(N, J)``, optional ``ind_points2d`` float32 ``(N, C, J, 3)`` (each
    individual's 2D instance per camera of ``cams`` that was measured, NaN without one),
    optional ``ind_track`` int32 ``(N,)`` (each individual's track key: never reused, kept
    when a user swaps or sets ids — what the worker's crops name as their owner);
    ``xyz`` etc. then hold the individual of the lowest id (all NaN
    without one), so a single-animal client reads one animal as before.
    ``skipped``/``incomplete``/
    ``missing``/``desynced`` are carried from the kp2d message so one subscriber can account
    for every frame-set and every view.
    """

    KIND: ClassVar[str] = "pose3d"
    ARRAYS: ClassVar[dict[str, ArraySpec]] = {
        "xyz": ArraySpec((_F64,), (2,)),
        "variance": ArraySpec((_F64,), (2,)),
        "reproj": ArraySpec((_F32,), (1,)),
        "views": ArraySpec((_U16,), (1,)),
        "status": ArraySpec((_U8,), (1,)),
        "raw_xyz": ArraySpec((_F64,), (2,), required=False),
        "gated": ArraySpec((_U16,), (1,), required=False),
        "xyz_lead": ArraySpec((_F64,), (2,), required=False),
        "ind_ids": ArraySpec((_I32,), (1,), required=False),
        "ind_xyz": ArraySpec((_F64,), (3,), required=False),
        "ind_variance": ArraySpec((_F64,), (3,), required=False),
        "ind_status": ArraySpec((_U8,), (2,), required=False),
        "ind_views": ArraySpec((_U16,), (2,), required=False),
        "ind_reproj": ArraySpec((_F32,), (2,), required=False),
        "ind_points2d": ArraySpec((_F32,), (4,), required=False),
        "ind_track": ArraySpec((_I32,), (1,), required=False),
    }
    frame_id: int
    xyz: np.ndarray
    variance: np.ndarray
    reproj: np.ndarray
    views: np.ndarray
    status: np.ndarray
    raw_xyz: np.ndarray | None = None
    gated: np.ndarray | None = None
    xyz_lead: np.ndarray | None = None
    ind_ids: np.ndarray | None = None
    ind_xyz: np.ndarray | None = None
    ind_variance: np.ndarray | None = None
    ind_status: np.ndarray | None = None
    ind_views: np.ndarray | None = None
    ind_reproj: np.ndarray | None = None
    ind_points2d: np.ndarray | None = None
    ind_track: np.ndarray | None = None
    late: bool = False
    lifted: bool = False
    units: str = "mm"
    cams: list[str] = field(default_factory=list)
    t_trigger_ns: int | None = None
    t_grab_ns: list[int] = field(default_factory=list)
    t_set_ns: int = 0
    t_infer_start_ns: int = 0
    t_infer_end_ns: int = 0
    t_kp2d_pub_ns: int = 0
    t_fuse_recv_ns: int = 0
    t_fused_ns: int = 0
    lead_ns: int = 0
    skipped: list[int] = field(default_factory=list)
    incomplete: list[int] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    desynced: list[str] = field(default_factory=list)
    t_trigger_sigma_ns: int | None = None


@_register
@dataclass(slots=True, kw_only=True)
class Health(Message):
    """A process's state (``starting``, ``ready``, ``running``, ``stopping``, ``error``),
    counters, rates and last error. ``info`` holds static facts (e.g. the ONNX Runtime
    execution provider in use)."""

    KIND: ClassVar[str] = "health"
    proc: str
    pid: int
    state: str
    t_ns: int
    counters: dict[str, int] = field(default_factory=dict)
    rates: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    last_error: str | None = None

    def topic(self) -> bytes:
        return b"health/" + self.proc.encode()


# --------------------------------------------------------------------------- encoding


def clock_hello(name: str) -> bytes:
    """The subscription by which a subscriber of the trigger clock (a software-triggered
    camera, a run's monitor) tells the clock that it is connected: the clock's XPUB waits
    for the expected ones before pulse 0 (ZeroMQ's slow joiner)."""
    return b"trigger\x00" + name.encode()


def encode(msg: Message, shared: dict[str, SharedRef] | None = None) -> list[Buffer]:
    """Encode a message into multipart frames ``[topic, header, *buffers]``.

    Arrays are sent as their own memory (no copy) when C-contiguous; otherwise a contiguous
    copy is made. Keep the arrays alive and unmodified until the send completes (allocate a
    new array per message rather than reusing one).

    ``shared`` names arrays already written to a same-host frame ring
    (:mod:`livepose.transport.shmring`): their entry is ``[name, dtype, shape, [ring, slot, gen]]`` and
    no buffer is sent for them.
    """
    header: dict[str, Any] = {"v": PROTOCOL_VERSION, "kind": msg.KIND}
    arrays: list[list[Any]] = []
    buffers: list[Buffer] = []
    for name in msg._SCALARS:
        header[name] = getattr(msg, name)
    for name in msg.ARRAYS:
        arr = getattr(msg, name)
        if arr is None:
            continue
        if shared is not None and name in shared:
            arrays.append([name, np.dtype(arr.dtype).str, list(arr.shape), shared[name].wire()])
            continue
        a = np.ascontiguousarray(arr)
        arrays.append([name, a.dtype.str, list(a.shape)])
        buffers.append(memoryview(a.data).cast("B") if a.size else b"")
    header["arrays"] = arrays
    return [msg.topic(), msgpack.packb(header, use_bin_type=True), *buffers]


def _check_scalar(name: str, value: Any, ann: Any) -> Any:
    """Check one header value against its annotation; return the (possibly converted) value."""
    origin = typing.get_origin(ann)
    args = typing.get_args(ann)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check_scalar(name, value, inner[0])
    if ann is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ProtocolError("bad_field", f"{name} must be int, got {type(value).__name__}")
        return value
    if ann is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ProtocolError("bad_field", f"{name} must be float")
        return float(value)
    if ann is str:
        if not isinstance(value, str):
            raise ProtocolError("bad_field", f"{name} must be str")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ProtocolError("bad_field", f"{name} must be a list")
        return [_check_scalar(f"{name}[]", v, args[0]) for v in value]
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ProtocolError("bad_field", f"{name} must be a map with str keys")
        if args and args[1] is not Any:
            return {k: _check_scalar(f"{name}.{k}", v, args[1]) for k, v in value.items()}
        return value
    return value


def decode_strict(parts: Sequence[Any], limits: Limits = DEFAULT_LIMITS,
                  rings: SharedArrays | None = None, copy_shared: bool = True) -> Message:
    """Decode multipart frames into a message, raising :class:`ProtocolError` if malformed.

    ``parts`` may be bytes, memoryviews or ``zmq.Frame`` objects (their ``.buffer`` is used,
    so arrays are views of the received memory: read-only, no copy).

    Arrays in a same-host frame ring are resolved through ``rings`` (a
    :class:`SharedArrays`, in practice :class:`livepose.transport.shmring.RingReader`; without
    one they are a ``shm_unavailable`` error). With ``copy_shared`` they are copied out (safe
    to keep); without, they are views of the ring — check
    :func:`livepose.transport.shmring.intact` after using one.
    """
    if len(parts) < 2:
        raise ProtocolError("too_few_parts", f"{len(parts)} part(s), need at least 2")
    bufs = [p.buffer if hasattr(p, "buffer") else p for p in parts]
    head_raw = bufs[1]
    if len(head_raw) > limits.max_header_bytes:
        raise ProtocolError("header_too_big", f"{len(head_raw)} bytes")
    try:
        header = msgpack.unpackb(head_raw, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated exception types
        raise ProtocolError("bad_msgpack", str(exc)[:100]) from None
    if not isinstance(header, dict):
        raise ProtocolError("bad_header", "header is not a map")
    if header.get("v") not in ACCEPTED_VERSIONS:
        raise ProtocolError("bad_version", f"v={header.get('v')!r}, expected one of "
                            f"{ACCEPTED_VERSIONS}")
    kind = header.get("kind")
    cls = KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError("unknown_kind", f"kind={kind!r}")
    kwargs: dict[str, Any] = {}
    for name, (ann, required) in cls._SCALARS.items():
        if name not in header:
            if required:
                raise ProtocolError("missing_field", f"{kind}.{name}")
            continue
        kwargs[name] = _check_scalar(name, header[name], ann)
    kwargs.update(_decode_arrays(cls, header.get("arrays"), bufs[2:], limits, rings,
                                 copy_shared))
    return cls(**kwargs)


def _decode_arrays(
    cls: type[Message], spec: Any, bufs: Sequence[Buffer], limits: Limits,
    rings: SharedArrays | None = None, copy_shared: bool = True,
) -> dict[str, np.ndarray]:
    if not isinstance(spec, list) or len(spec) > limits.max_arrays:
        raise ProtocolError("bad_arrays", "arrays must be a list of [name, dtype, shape]")
    inline = sum(1 for e in spec if not (isinstance(e, list) and len(e) == 4))
    if inline != len(bufs):
        raise ProtocolError("buffer_count", f"{inline} arrays described, {len(bufs)} sent")
    out: dict[str, np.ndarray] = {}
    it = iter(bufs)
    for entry in spec:
        if not (isinstance(entry, list) and len(entry) in (3, 4)):
            raise ProtocolError("bad_arrays", "array entry must be [name, dtype, shape]")
        name, dtype, shape = entry[:3]
        aspec = cls.ARRAYS.get(name) if isinstance(name, str) else None
        if aspec is None or name in out:
            raise ProtocolError("unknown_array", f"{cls.KIND}.{name!r}")
        if dtype not in aspec.dtypes:
            raise ProtocolError("bad_dtype", f"{name}: {dtype!r} not in {aspec.dtypes}")
        if (
            not isinstance(shape, list)
            or len(shape) not in aspec.ndims
            or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
            or not all(0 <= d <= limits.max_dim for d in shape)
        ):
            raise ProtocolError("bad_shape", f"{name}: shape {shape!r}")
        dt = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        if nbytes > limits.max_array_bytes:
            raise ProtocolError("array_too_big", f"{name}: {nbytes} bytes")
        if len(entry) == 4:
            out[name] = _shared_array(entry[3], dt, shape, rings, copy_shared)
            continue
        buf = next(it)
        if len(buf) != nbytes:
            raise ProtocolError("buffer_size", f"{name}: {len(buf)} bytes, dtype×shape={nbytes}")
        out[name] = np.frombuffer(buf, dtype=dt).reshape(shape)
    for name, aspec in cls.ARRAYS.items():
        if aspec.required and name not in out:
            raise ProtocolError("missing_array", f"{cls.KIND}.{name}")
    return out


def _shared_array(ref: Any, dt: np.dtype[Any], shape: list[int], rings: SharedArrays | None,
                  copy: bool) -> np.ndarray:
    """Resolve a shared-memory reference through ``rings`` (copied out, or as a view)."""
    if rings is None:
        raise ProtocolError("shm_unavailable", "array in shared memory, no ring reader")
    return rings.resolve(ref, dt, shape, copy)
