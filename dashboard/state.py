"""What the dashboard knows about a run, built from the messages it receives.

:class:`DashState` is fed decoded messages (``preview``, ``kp2d``, ``pose3d``, ``trigger``,
``health``) and produces what the web page shows: camera tiles (the JPEG preview with the 2D
keypoints of the same ``frame_id``; with several animals every instance of that view, named by
the id of the individual its crop was made for), the newest 3D pose, per-stage latency, the frame
accounting, and a feed of warnings and errors. It holds no sockets and does no I/O, so it is
tested directly.
"""

from __future__ import annotations

import json
import struct
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from livepose.core import protocol
from livepose.core.latency import STAGES, stage_latencies_ms

WINDOW = 300
"""Latency samples per stage kept for p50/p99."""
KP2D_KEEP_S = 3.0
"""How long a kp2d message is kept to pair with its previews (by ``frame_id``): a preview
that comes later than its keypoints (a camera process preempted on a loaded host) still
finds them."""
KP2D_CACHE = 2000
"""At most this many kp2d messages kept (3 s at 660 frame-sets per second)."""
PAIR_TIMEOUT_S = 1.0
"""A preview whose keypoints did not arrive within this is shown without them — or within
1.5 × the 90th percentile of how late keypoints have come lately, up to :data:`PAIR_MAX_S`
(a model slower than 1 s a frame-set on a CPU, or a loaded host, still gets its keypoints
drawn, later)."""
PAIR_MAX_S = 5.0
LAG_WINDOW = 50
"""Recent keypoint lags (arrival after their preview) the pairing wait is set from."""
STALE_KP_S = 2.0
"""A camera whose tiles have gone out without keypoints for this long is marked on its tile
(``kp_age_s``) and in the status (``keypoints_stale``)."""
FEED_LEN = 200


def pct(values: Any, q: float) -> float | None:
    """Percentile of finite values (``None`` if there are none)."""
    a = np.asarray(values, dtype=np.float64)
    a = a[np.isfinite(a)]
    return round(float(np.percentile(a, q)), 3) if a.size else None


def tile_payload(header: dict[str, Any], jpeg: bytes) -> bytes:
    """A binary websocket message: ``u32`` header length (little endian), JSON header, JPEG."""
    head = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<I", len(head)) + head + jpeg


def _points(xyz: np.ndarray) -> list[list[float | None]]:
    """``(J, 3)`` → JSON rows (NaN → null), 0.01 resolution."""
    return [[round(float(v), 2) if np.isfinite(v) else None for v in p] for p in xyz]


@dataclass
class CamStats:
    """Per-camera numbers shown on its tile."""

    previews: int = 0
    preview_times: deque[float] = field(default_factory=lambda: deque(maxlen=30))
    frames: int = 0
    dropped: int = 0
    lost: int = 0
    desync_ms: float | None = None
    fps: float | None = None
    exposure_us: float | None = None
    last_frame_id: int | None = None
    #: when a tile of this camera last went out with keypoints, else its first tile
    #: (monotonic s; the age of "no keypoints")
    kp_since: float | None = None
    #: tiles sent without keypoints, and whether the newest one was
    bare_tiles: int = 0
    bare: bool = False

    def kp_stale(self, now: float | None = None) -> bool:
        """Whether the newest tile went out without keypoints and the camera has had none
        for :data:`STALE_KP_S` (its keypoints stopped arriving, or never came)."""
        now = time.monotonic() if now is None else now
        return self.bare and self.kp_since is not None and now - self.kp_since > STALE_KP_S


class DashState:
    """Aggregates a run's messages for the dashboard.

    Parameters
    ----------
    cams
        Camera names in config order.
    preview_step
        The cameras' preview decimation (``round(1 / preview.scale)``): keypoints in full-frame
        pixels are divided by it to land on the preview.
    desync_tolerance_ms
        Grab-time spread of one frame-set above which a camera is flagged.
    """

    def __init__(self, cams: list[str], preview_step: int, desync_tolerance_ms: float) -> None:
        self.cams = list(cams)
        self.step = max(1, int(preview_step))
        self.tol_ms = desync_tolerance_ms
        self.cam = {c: CamStats() for c in cams}
        #: recent kp2d by frame_id, in order of arrival: (arrival, message)
        self.kp2d: dict[int, tuple[float, protocol.Kp2d]] = {}
        self.pending: dict[tuple[str, int], tuple[float, protocol.Preview]] = {}
        #: how late keypoints came after their preview (s; 0 when they came first)
        self.kp_lag: deque[float] = deque(maxlen=LAG_WINDOW)
        self._wait = PAIR_TIMEOUT_S  # the pairing wait those lags give
        #: previews shown without keypoints: (cam, frame_id) → arrival, to learn how late
        #: their keypoints come
        self.shown_bare: dict[tuple[str, int], float] = {}
        self.triggered = 0
        self.fused = 0
        self.skipped = 0
        self.incomplete = 0
        self.lat: dict[str, deque[float]] = {s: deque(maxlen=WINDOW) for s in STAGES}
        self.fused_times: deque[int] = deque(maxlen=WINDOW)
        self.pose: dict[str, Any] | None = None
        #: track key (``pose3d.ind_track``) → the id it has now (``pose3d.ind_ids``): crops
        #: name their owner by key, the page colours by id
        self.track_ids: dict[int, int] = {}
        self.health: dict[str, protocol.Health] = {}
        self.feed: deque[dict[str, Any]] = deque(maxlen=FEED_LEN)
        self.feed_seq = 0
        self.recording: dict[str, Any] = {"available": None}
        self.started = time.time()

    # ------------------------------------------------------------------ ingest
    def add(self, msg: protocol.Message, now: float | None = None) -> list[tuple[str, bytes]]:
        """Take in one message; return the ``(camera, tile payload)`` pairs it completes
        (see :func:`tile_payload`)."""
        now = time.monotonic() if now is None else now
        if isinstance(msg, protocol.Preview):
            return self._on_preview(msg, now)
        if isinstance(msg, protocol.Kp2d):
            return self._on_kp2d(msg, now)
        if isinstance(msg, protocol.Pose3d):
            self._on_pose(msg)
        elif isinstance(msg, protocol.Trigger):
            self.triggered = max(self.triggered, msg.frame_id + 1)
        elif isinstance(msg, protocol.Health):
            self._on_health(msg)
        return []

    def expire(self, now: float | None = None) -> list[tuple[str, bytes]]:
        """Tiles of previews whose keypoints never came (shown without them), unless a
        newer tile of that camera was sent meanwhile (a frame-set the worker skipped)."""
        if not self.pending:
            return []
        now = time.monotonic() if now is None else now
        wait = self.pair_wait()
        old = sorted((k for k, (t, _) in self.pending.items() if now - t > wait),
                     key=lambda k: k[1])
        out = []
        for k in old:
            t, prev = self.pending.pop(k)
            self.shown_bare[k] = t
            out += self._emit(prev, None, now)
        while len(self.shown_bare) > 4 * LAG_WINDOW:
            del self.shown_bare[next(iter(self.shown_bare))]
        return out

    def pair_wait(self) -> float:
        """How long a preview waits for its keypoints now (see :data:`PAIR_TIMEOUT_S`)."""
        return self._wait

    def _lag(self, seconds: float) -> None:
        """One more keypoint lag; the pairing wait follows."""
        self.kp_lag.append(seconds)
        if len(self.kp_lag) >= 5:
            p90 = float(np.percentile(np.asarray(self.kp_lag), 90))
            self._wait = min(PAIR_MAX_S, max(PAIR_TIMEOUT_S, 1.5 * p90))

    def _on_preview(self, msg: protocol.Preview, now: float) -> list[tuple[str, bytes]]:
        st = self.cam.get(msg.cam)
        if st is None:
            return []
        st.previews += 1
        st.preview_times.append(now)
        hit = self.kp2d.get(msg.frame_id)
        if hit is not None:
            self._lag(0.0)
            return self._emit(msg, hit[1], now)
        self.pending[(msg.cam, msg.frame_id)] = (now, msg)
        return []

    def _on_kp2d(self, msg: protocol.Kp2d, now: float) -> list[tuple[str, bytes]]:
        self.kp2d.pop(msg.frame_id, None)  # (re-inserted: last in arrival order)
        self.kp2d[msg.frame_id] = (now, msg)
        while self.kp2d:
            oldest = next(iter(self.kp2d))
            if now - self.kp2d[oldest][0] <= KP2D_KEEP_S and len(self.kp2d) <= KP2D_CACHE:
                break
            del self.kp2d[oldest]
        out = []
        for cam in msg.cams:
            hit = self.pending.pop((cam, msg.frame_id), None)
            if hit is not None:
                self._lag(now - hit[0])
                out += self._emit(hit[1], msg, now)
            elif (t := self.shown_bare.pop((cam, msg.frame_id), None)) is not None:
                self._lag(now - t)  # too late for its tile: wait longer from now
        return out

    def _emit(self, prev: protocol.Preview, kp: protocol.Kp2d | None,
              now: float) -> list[tuple[str, bytes]]:
        """The tile of ``prev`` — none if a newer tile of its camera went out already (a page
        keeps only the newest: an older frame would replace it) — and older previews of
        that camera still waiting for keypoints are dropped."""
        last = self.cam[prev.cam].last_frame_id
        if last is not None and prev.frame_id <= last:
            return []
        for k in [k for k in self.pending if k[0] == prev.cam and k[1] < prev.frame_id]:
            del self.pending[k]
        return [(prev.cam, self._tile(prev, kp, now))]

    def _tile(self, prev: protocol.Preview, kp: protocol.Kp2d | None, now: float) -> bytes:
        """The tile of one preview: ``kp`` the view's keypoints ``[[x, y, conf] | [null]*3]``
        in preview pixels; with several animals ``inst`` instead, ``[{"id", "kp"}]`` (``id``
        null: an instance no track's crop was made for). A tile sent without keypoints
        says for how long its camera has had none (``kp_age_s``, from its last tile with
        keypoints, else its first tile), so a view whose keypoints stopped is told apart
        from one where the model found nothing."""
        pts: list[list[float | None]] = []
        inst: list[dict[str, Any]] = []
        if kp is not None and prev.cam in kp.cams:
            c = kp.cams.index(prev.cam)
            if kp.inst_points is not None and kp.inst_cams is not None:
                owners = kp.inst_owner
                for m in np.flatnonzero(np.asarray(kp.inst_cams) == c):
                    key = int(owners[m]) if owners is not None else -1
                    inst.append({"id": self.track_ids.get(key),
                                 "kp": self._preview_points(kp.inst_points[m])})
            else:
                pts = self._preview_points(kp.points[c])
        st = self.cam[prev.cam]
        st.last_frame_id = prev.frame_id
        st.kp_since = now if st.kp_since is None or kp is not None else st.kp_since
        head: dict[str, Any] = {"cam": prev.cam, "frame_id": prev.frame_id, "w": prev.width,
                                "h": prev.height, "kp": pts}
        if inst:
            head["inst"] = inst
        st.bare = kp is None
        if kp is None:
            st.bare_tiles += 1
            head["kp_age_s"] = round(now - st.kp_since, 1)
            head["kp_stale"] = st.kp_stale(now)
        return tile_payload(head, bytes(np.asarray(prev.jpeg, dtype=np.uint8)))

    def _preview_points(self, points: np.ndarray) -> list[list[float | None]]:
        """``(J, 3)`` full-frame ``x, y, conf`` → JSON rows in preview pixels (NaN → null)."""
        a = np.asarray(points, dtype=np.float64)
        xy = a[:, :2] / self.step
        out: list[list[float | None]] = []
        for (x, y), c in zip(xy, a[:, 2], strict=True):
            ok = bool(np.isfinite(x) and np.isfinite(y) and np.isfinite(c))
            out.append([round(float(x), 1), round(float(y), 1), round(float(c), 3)] if ok
                       else [None, None, None])
        return out

    def _on_pose(self, msg: protocol.Pose3d) -> None:
        self.fused += 1
        self.skipped += len(msg.skipped)
        self.incomplete += len(msg.incomplete)
        self.fused_times.append(msg.t_fused_ns)
        for k, v in stage_latencies_ms(msg).items():
            self.lat[k].append(v)
        if msg.t_grab_ns and len(msg.t_grab_ns) == len(msg.cams):
            g = np.asarray(msg.t_grab_ns, dtype=np.float64)
            med = float(np.median(g))
            for cam, t in zip(msg.cams, g, strict=True):
                if cam in self.cam:
                    self.cam[cam].desync_ms = round(float(t - med) / 1e6, 3)
        xyz = np.asarray(msg.xyz, dtype=np.float64)
        self.pose = {
            "type": "pose",
            "frame_id": msg.frame_id,
            "xyz": _points(xyz),
        }
        if msg.ind_ids is not None and msg.ind_track is not None:
            self.track_ids = {int(k): int(i) for k, i in zip(msg.ind_track, msg.ind_ids,
                                                             strict=False)}
        if msg.ind_ids is not None and msg.ind_xyz is not None:  # several animals: by id
            self.pose["individuals"] = [
                {"id": int(i), "xyz": _points(np.asarray(x, dtype=np.float64))}
                for i, x in zip(msg.ind_ids, msg.ind_xyz, strict=False)]

    def _on_health(self, msg: protocol.Health) -> None:
        prev = self.health.get(msg.proc)
        self.health[msg.proc] = msg
        if msg.state == "error" and (prev is None or prev.state != "error"):
            self._note("error", msg.proc, f"state error: {msg.last_error or 'no detail'}")
        elif msg.last_error and (prev is None or prev.last_error != msg.last_error):
            self._note("warning", msg.proc, msg.last_error)
        for key in ("dropped", "rejected", "late_pulses", "infer_errors", "bad_frames"):
            before = prev.counters.get(key, 0) if prev else 0
            now = msg.counters.get(key, 0)
            if now > before:
                self._note("warning", msg.proc, f"{key} +{now - before} (total {now})")
        if msg.proc in self.cam:
            st = self.cam[msg.proc]
            st.frames = msg.counters.get("frames", st.frames)
            st.dropped = msg.counters.get("dropped", 0)
            if prev is not None and msg.t_ns > prev.t_ns:
                df = msg.counters.get("frames", 0) - prev.counters.get("frames", 0)
                st.fps = round(df / ((msg.t_ns - prev.t_ns) / 1e9), 2)
            exp = msg.info.get("exposure_us")
            st.exposure_us = float(exp) if isinstance(exp, int | float) else None
        if msg.proc.startswith("infer"):
            for cam, st in self.cam.items():
                st.lost = sum(h.counters.get(f"gaps/{cam}", 0) for p, h in self.health.items()
                              if p.startswith("infer"))
        if msg.proc == "trigger":
            self.triggered = max(self.triggered, msg.counters.get("pulses", 0))

    def _note(self, level: str, proc: str, text: str) -> None:
        self.feed_seq += 1
        self.feed.append({"seq": self.feed_seq, "t": round(time.time(), 3), "level": level,
                          "proc": proc, "msg": text[:300]})

    def note(self, level: str, text: str) -> None:
        """Add a dashboard-side entry to the feed (e.g. a recording command's result)."""
        self._note(level, "dashboard", text)

    # ------------------------------------------------------------------ output
    def fused_rate(self) -> float:
        """Recent fused frame-sets per second."""
        if len(self.fused_times) < 2:
            return 0.0
        span = (self.fused_times[-1] - self.fused_times[0]) / 1e9
        return round((len(self.fused_times) - 1) / span, 2) if span > 0 else 0.0

    def snapshot(self, clients: int = 0) -> dict[str, Any]:
        """Everything ``/api/status`` returns (JSON-able)."""
        cams = {}
        for name, st in self.cam.items():
            t = st.preview_times
            pfps = (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 and t[-1] > t[0] else None
            cams[name] = {
                "fps": st.fps,
                "preview_fps": round(pfps, 2) if pfps else None,
                "frames": st.frames,
                "dropped": st.dropped,
                "lost_in_transport": st.lost,
                "desync_ms": st.desync_ms,
                "desync": st.desync_ms is not None and abs(st.desync_ms) > self.tol_ms,
                "exposure_us": st.exposure_us,
                "last_frame_id": st.last_frame_id,
                "tiles_without_keypoints": st.bare_tiles,
                "keypoints_stale": st.kp_stale(),
            }
        accounted = self.fused + self.skipped + self.incomplete
        dropped = sum(s.dropped + s.lost for s in self.cam.values())
        return {
            "type": "status",
            "t": round(time.time(), 3),
            "uptime_s": round(time.time() - self.started, 1),
            "frames": {
                "triggered": self.triggered,
                "fused": self.fused,
                "skipped": self.skipped,
                "incomplete": self.incomplete,
                "in_flight": max(0, self.triggered - accounted),
                "dropped_frames": dropped,
                "fused_fps": self.fused_rate(),
            },
            "latency_ms": {s: {"p50": pct(v, 50), "p99": pct(v, 99), "n": len(v)}
                           for s, v in self.lat.items()},
            "cameras": cams,
            "keypoint_wait_s": round(self.pair_wait(), 2),
            "processes": {p: {"state": h.state, "pid": h.pid, "last_error": h.last_error,
                              "counters": dict(h.counters), "rates": dict(h.rates)}
                          for p, h in sorted(self.health.items())},
            "feed": list(self.feed)[-50:],
            "recording": self.recording,
            "clients": clients,
            "calibration": self.calibration(),
            "drift": self.drift(),
        }

    def calibration(self) -> dict[str, Any] | None:
        """The calibration collector's status (``livepose calibrate live``; ``None`` in any
        other run): its health's ``info["calib"]``, checked for shape (a malformed one is
        shown as absent, never crashes the page)."""
        h = self.health.get("calib")
        st = h.info.get("calib") if h is not None else None
        if not isinstance(st, dict) or not isinstance(st.get("cameras"), list):
            return None
        return st

    def drift(self) -> list[dict[str, Any]]:
        """Cameras fusion found drifted (fusion's health ``info["drift"]``), largest shift
        first: ``{"camera", "shift_px", "angle_deg", "frame_id"}`` each."""
        h = self.health.get("fusion")
        d = h.info.get("drift") if h is not None else None
        if not isinstance(d, dict):
            return []
        out = [{"camera": str(cam), **{k: v.get(k) for k in ("shift_px", "angle_deg", "frame_id")}}
               for cam, v in d.items() if isinstance(v, dict)]
        return sorted(out, key=lambda e: -float(e.get("shift_px") or 0.0))
