"""The supervisor's side of recording: sessions, the ``record`` topic, the control server.

The supervisor binds two sockets for it (before any stage starts):

- ``record`` (PUB): run-time start/stop messages to the cameras and the recorder process
  (:func:`livepose.kit.session.encode_record_control`);
- ``control`` (REP): JSON requests from the CLI or the dashboard, one JSON reply each::

    {"cmd": "status"}                           -> {"ok": true, "recording": …, "session": …}
    {"cmd": "record_start", "name": "trial1"}   -> {"ok": true, "session": DIR, "first_frame": N}
    {"cmd": "record_stop"}                      -> {"ok": true, "session": DIR, "last_frame": N}
    {"cmd": "event", "kind": "laser_on", …}     -> {"ok": true}   (closed-loop events)
    {"cmd": "swap_ids", "a": 0, "b": 1}          -> {"ok": true, "sent": …}  (several animals)
    {"cmd": "set_id", "current": 2, "new": 0}    -> {"ok": true, "sent": …}

  A failed request answers ``{"ok": false, "error": "…"}``.

A run-time start records from ``first_frame`` = the trigger's pulse count + ``LEAD_S`` of
pulses, so every camera starts at the same frame_id (the count is the trigger's last health
report, up to 0.5 s old, plus the pulses of the time since at the configured rate). At the end of a run (or after ``record_stop``) the session status is decided
from the cameras' writer summaries: ``complete``, ``incomplete`` (a process died, frames not
recorded) or ``failed`` (a writer error such as a full disk).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Protocol

import zmq

from livepose.core import protocol
from livepose.core.config import Config
from livepose.core.control import encode_ids_command, encode_record_control, ids_request
from livepose.core.modelinfo import model_keypoints
from livepose.kit.session import (
    EventLog,
    Session,
    create_session,
    encoder_name,
    read_status,
    segments,
    video_dir,
    write_status,
)
from livepose.transport import security


class Supervised(Protocol):
    """What the session control needs of its supervisor
    (:class:`livepose.runtime.supervisor.Supervisor`)."""

    cfg: Config
    endpoints: dict[str, str]
    health: dict[str, protocol.Health]
    run_dir: Path
    zctx: zmq.Context[Any]
    calibration: str
    keys: security.CurveKeys | None

log = logging.getLogger(__name__)

LEAD_S = 1.0
WATCHED = ("dropped", "duplicates", "rec_lost", "rec_lapped", "rec_gap", "rec_errors",
           "late_pulses", "incomplete", "device_lost", "id_fixes", "id_rejected")
#: what the status reply shows of each camera's encoder (its health counters)
VIDEO_COUNTERS = ("rec_frames", "rec_lost", "rec_lapped", "rec_gap", "rec_errors")


class Recording:
    """Session state of one supervisor (see the module docstring)."""

    def __init__(self, sup: Supervised) -> None:
        self.sup = sup
        self.session: Session | None = None
        self.keypoints: list[str] = []
        self.pub: zmq.Socket[Any] | None = None
        self.rep: zmq.Socket[Any] | None = None
        self.died: list[str] = []
        self._seen: dict[tuple[str, str], int] = {}
        self._errors: dict[str, str | None] = {}
        self._pending: float | None = None  # deadline of a run-time stop's finalisation
        self.first_frame = 0  # the session's first frame_id
        self.last: dict[str, Any] | None = None  # the status of the last session closed

    # ------------------------------------------------------------------ setup
    def bind(self) -> dict[str, Any] | None:
        """Bind ``record``/``control``; create the launch session if recording is enabled.

        Returns the ``record`` argument of the cameras and recorder (``None``: not yet).
        """
        cfg, eps = self.sup.cfg, self.sup.endpoints
        self.keypoints = model_keypoints(cfg)[0]
        self.pub = self._bind(zmq.PUB, "record")
        self.rep = self._bind(zmq.REP, "control", eps.get("control"))
        if not cfg.recording.enabled:
            self._warm_codec()
            return None
        self._create(cfg.recording.name or cfg.name)
        assert self.session is not None
        self.first_frame = 0
        return {"session": str(self.session.path), "frame": 0}

    def _warm_codec(self) -> None:
        """Load the codec library and open the encoder once now, so that a run-time
        ``record_start`` answers quickly; a codec that cannot work here is named now, and
        again by the ``record_start`` that needs it."""
        from livepose.acquisition.encoders import CodecUnavailable, check_codec

        try:
            check_codec(self.sup.cfg.recording)
        except CodecUnavailable as exc:
            log.warning("recording will not start in this run: %s", exc)

    def current(self) -> dict[str, Any] | None:
        """The ``record`` argument of a restarted encoder: the session being recorded
        (``None``: none, or it is stopping)."""
        if self.session is None or self._pending is not None:
            return None
        return {"session": str(self.session.path), "frame": self.first_frame}

    def _bind(self, kind: int, role: str, ep: str | None = None) -> zmq.Socket[Any]:
        s = self.sup.zctx.socket(kind)
        s.setsockopt(zmq.LINGER, 0)
        t = self.sup.cfg.transport
        if ep is None:
            ep = (f"ipc://{self.sup.run_dir / role}.sock" if t.kind == "ipc"
                  else f"tcp://{t.host}:*")
        self.sup.endpoints[role] = security.bind(s, ep, self.sup.keys)
        return s

    def _create(self, name: str) -> None:
        from livepose.acquisition.encoders import check_codec

        check_codec(self.sup.cfg.recording)
        calib = Path(self.sup.calibration) if self.sup.calibration else None
        self.session = create_session(self.sup.cfg.recording.dir, name, self.sup.cfg, calib)
        self._seen.clear()
        self.session.events.emit("session_start", name=name, path=str(self.session.path))

    # ------------------------------------------------------------------ run time
    def start(self, name: str) -> dict[str, Any]:
        """Start recording now (run time); the session begins ``LEAD_S`` ahead."""
        if self.session is not None:
            raise RuntimeError(f"already recording into {self.session.path}")
        self._create(name)
        assert self.session is not None and self.pub is not None
        first = self._pulses() + math.ceil(self.sup.cfg.fps * LEAD_S)
        self.first_frame = first
        self.pub.send_multipart(encode_record_control("start", self.session.path, first))
        return {"session": str(self.session.path), "first_frame": first}

    def stop(self) -> dict[str, Any]:
        """Stop recording (run time); the status is written once every writer closed."""
        if self.session is None:
            raise RuntimeError("not recording")
        assert self.pub is not None
        last = self._pulses() + math.ceil(self.sup.cfg.fps * LEAD_S)
        self.pub.send_multipart(encode_record_control("stop", None, last))
        self._pending = time.monotonic() + LEAD_S + 30.0
        return {"session": str(self.session.path), "last_frame": last}

    def _pulses(self) -> int:
        """The trigger's pulse count now: its last health message's (sent every 0.5 s), plus
        the pulses of the time since at the configured rate — so a loaded host's late
        health never leaves less than ``LEAD_S`` for the start to reach the cameras."""
        h = self.sup.health.get("trigger")
        if h is None:
            return 0
        n = int(h.counters.get("pulses", 0))
        if h.state == "running":
            n += int(max(0.0, (time.time_ns() - h.t_ns) / 1e9) * self.sup.cfg.fps)
        return n

    def on_health(self, msg: protocol.Health) -> None:
        """Turn counter increases and new errors into events."""
        if self.session is None:
            return
        ev = self.session.events
        for key in WATCHED:
            total = int(msg.counters.get(key, 0))
            before = self._seen.get((msg.proc, key), 0)
            if total > before:
                ev.emit(key, proc=msg.proc, delta=total - before, total=total)
            self._seen[(msg.proc, key)] = total
        if msg.last_error and msg.last_error != self._errors.get(msg.proc):
            ev.emit("error", proc=msg.proc, error=msg.last_error)
        self._errors[msg.proc] = msg.last_error

    def on_died(self, name: str, exitcode: int | None, error: str | None) -> None:
        """A stage process died while running."""
        self.died.append(name)
        if self.session is not None:
            self.session.events.emit("process_died", proc=name, exitcode=exitcode, error=error)

    def poll(self) -> None:
        """Serve control requests; finish a pending run-time stop."""
        while self.rep is not None:
            try:
                raw = self.rep.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            self.rep.send(json.dumps(self._handle(raw), default=str).encode())
        if self._pending is not None and (self._closed() or time.monotonic() > self._pending):
            self.finalize()

    def _handle(self, raw: bytes) -> dict[str, Any]:
        try:
            req = json.loads(raw)
            if not isinstance(req, dict):
                raise ValueError("the request must be a JSON object")
            cmd = req.get("cmd")
            if cmd == "status":
                return {"ok": True, **self.status()}
            if cmd == "record_start":
                return {"ok": True, **self.start(str(req.get("name") or self.sup.cfg.name))}
            if cmd == "record_stop":
                return {"ok": True, **self.stop()}
            if cmd in ("swap_ids", "set_id"):
                return {"ok": True, **self.fix_ids(req)}
            if cmd == "event":
                if self.session is None:
                    raise RuntimeError("not recording")
                fields = {k: v for k, v in req.items() if k not in ("cmd", "kind")}
                self.session.events.emit(str(req.get("kind") or "event"), via="control", **fields)
                return {"ok": True}
            raise ValueError(f"unknown cmd {cmd!r}; allowed: status, record_start, "
                             "record_stop, event, swap_ids, set_id")
        except Exception as exc:  # every failure is the requester's answer, never a crash
            return {"ok": False, "error": str(exc)}

    def fix_ids(self, req: dict[str, Any]) -> dict[str, Any]:
        """A user's fix of identities: published to fusion on ``record`` (topic ``ids``),
        logged, and an event of the session being recorded. Fusion applies it to its
        tracker and counts it (health ``id_fixes``; an id it does not hold: ``id_rejected``
        and its last error)."""
        cmd, a, b = ids_request(req)
        if not self.sup.cfg.fusion.multi.enabled:
            raise RuntimeError("identities need fusion.multi.enabled (several animals)")
        assert self.pub is not None
        self.pub.send_multipart(encode_ids_command(cmd, a, b))
        log.info("individuals: %s %d %d requested (control)", cmd, a, b)
        if self.session is not None:
            self.session.events.emit(f"ids_{cmd}", via="control", a=a, b=b)
        return {"sent": {"cmd": cmd, "a": a, "b": b}}

    def status(self) -> dict[str, Any]:
        """What ``{"cmd": "status"}`` answers."""
        procs = {n: h.state for n, h in self.sup.health.items()}
        s = self.session
        return {"recording": s is not None and self._pending is None,
                "session": str(s.path) if s else None, "processes": procs,
                "codec": self.sup.cfg.recording.codec, "video": self.video()}

    def video(self) -> dict[str, dict[str, Any]]:
        """Per camera, what its encoder says (process state, frames recorded and lost —
        lapped by the ring, never seen, write errors —, frames behind the camera, last
        error): the dashboard shows it. Counters are the encoder process's (a restarted
        encoder counts from 0 again)."""
        out: dict[str, dict[str, Any]] = {}
        for cam in self.sup.cfg.camera_names:
            h = self.sup.health.get(encoder_name(cam))
            if h is None:
                out[cam] = {"state": "absent"}
                continue
            out[cam] = {"state": h.state, **{k: int(h.counters.get(k, 0)) for k in
                                              VIDEO_COUNTERS},
                        "behind": h.rates.get("rec_behind"), "error": h.last_error}
        return out

    # ------------------------------------------------------------------ end
    def _closed(self) -> bool:
        """Whether every camera's newest segment has its writer summary."""
        s = self.session
        if s is None:
            return False
        for c in self.sup.cfg.camera_names:
            segs = segments(s.path, c)
            if not segs or not (video_dir(s.path) / f"{segs[-1]}.json").exists():
                return False
        return True

    def finalize(self) -> dict[str, Any] | None:
        """Decide and write the session status (after the writers closed). Returns it."""
        s, self.session, self._pending = self.session, None, None
        if s is None:
            return None
        state, reasons = "complete", []
        frames: dict[str, Any] = {}
        for cam in self.sup.cfg.camera_names:
            segs = segments(s.path, cam) or [cam]
            frames[cam], lost = 0, 0
            for stem in segs:  # a restarted encoder's segments: <cam>.1, <cam>.2 …
                try:
                    summ = json.loads((video_dir(s.path) / f"{stem}.json").read_text())
                except (OSError, json.JSONDecodeError):
                    state = "incomplete" if state == "complete" else state
                    reasons.append(f"{stem}: the video writer did not close")
                    continue
                frames[cam] += int(summ.get("frames_recorded") or 0)
                lost += int(summ.get("frames_lost") or 0)
                if summ.get("error"):
                    state = "failed"
                    reasons.append(str(summ["error"]))
            if lost:
                state = "incomplete" if state == "complete" else state
                reasons.append(f"{cam}: {lost} frame(s) not recorded")
        if self.died:
            state = "incomplete" if state == "complete" else state
            reasons.append(f"process(es) died: {', '.join(self.died)}")
        try:
            write_status(s.path, state, "; ".join(reasons) or None, frames=frames)
        except OSError as exc:
            log.error("%s: cannot write status.json: %s", s.path, exc)
        EventLog(s.path / "events.jsonl", "supervisor").emit("session_stop", state=state)
        try:
            self.last = {**read_status(s.path), "path": str(s.path)}
        except Exception:  # a status we could not write must not hide the run's result
            self.last = {"state": state, "reason": "; ".join(reasons), "path": str(s.path)}
        return self.last

    def close(self) -> None:
        """Close the sockets."""
        for s in (self.pub, self.rep):
            if s is not None:
                s.close(0)
        self.pub = self.rep = None
