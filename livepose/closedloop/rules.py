"""Closed-loop control: rules on the live 3D pose that call actions within milliseconds.

A :class:`Rule` watches one keypoint (by name) and becomes *active* when every condition it
has holds — the keypoint inside a region (:class:`Sphere`, :class:`Box`, :class:`HalfSpace`)
and/or its speed above a threshold — and *inactive* again only once the conditions fail by
more than the hysteresis. Going active fires the rule's action (``fire="enter"``), or every
pose while active (``fire="while"``), never more often than its refractory period. A
keypoint with no estimate (NaN) changes nothing.

Actions (:mod:`livepose.closedloop.actions`): a TTL pulse on the trigger box, a camera output
line through the camera's control channel, or any callable. Every firing is written to an
:class:`ActionLog` — the session's ``events.jsonl`` while recording, else a JSON-lines file —
with the ``frame_id`` and every timestamp from trigger to action.

Example
-------
>>> from livepose.closedloop.rules import ClosedLoop, Rule, Sphere      # doctest: +SKIP
>>> rule = Rule("nose-in-port", "snout", Sphere((120, 0, 30), 25), action=print)
>>> ClosedLoop(endpoint, ["snout", "tail_base"], [rule]).run(duration_s=60)
"""

from __future__ import annotations

import difflib
import logging
import math
import numbers
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from livepose.closedloop.actions import ActionEvent, ActionLog
from livepose.closedloop.client import IndividualPose, Pose, PoseClient, individuals_of
from livepose.core.calibration import MM_PER_UNIT
from livepose.core.errors import UserError
from livepose.transport.security import CurveKeys

log = logging.getLogger(__name__)


#: millimetres per length unit of a pose (``Pose.units``)


class RuleError(UserError, ValueError):
    """A rule cannot work as written (unknown keypoint, bad region, bad numbers)."""


# --------------------------------------------------------------------------- regions


class Region(Protocol):
    """A region of space: signed distance (mm), negative inside."""

    def distance(self, p: np.ndarray) -> float:
        """Signed distance of point ``p`` ``(3,)`` to the boundary (< 0 inside)."""
        ...


def _vec(v: Sequence[float], what: str) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    if a.shape != (3,) or not np.isfinite(a).all():
        raise RuleError(f"{what} must be 3 finite numbers (x, y, z), got {v!r}")
    return a


@dataclass(frozen=True)
class Sphere:
    """Points within ``radius`` of ``center`` (world units, mm)."""

    center: Sequence[float]
    radius: float

    def __post_init__(self) -> None:
        _vec(self.center, "Sphere.center")
        if not self.radius > 0:
            raise RuleError(f"Sphere.radius must be > 0, got {self.radius}")

    def distance(self, p: np.ndarray) -> float:
        """Signed distance (< 0 inside)."""
        return float(np.linalg.norm(p - np.asarray(self.center, dtype=np.float64))) - self.radius


@dataclass(frozen=True)
class Box:
    """The axis-aligned box ``lo <= p <= hi``."""

    lo: Sequence[float]
    hi: Sequence[float]

    def __post_init__(self) -> None:
        if not (_vec(self.lo, "Box.lo") < _vec(self.hi, "Box.hi")).all():
            raise RuleError(f"Box.lo {self.lo} must be below Box.hi {self.hi} on every axis")

    def distance(self, p: np.ndarray) -> float:
        """Largest per-axis excess (< 0 inside; exact inside, a lower bound outside)."""
        lo, hi = np.asarray(self.lo, float), np.asarray(self.hi, float)
        return float(np.max(np.maximum(lo - p, p - hi)))


@dataclass(frozen=True)
class HalfSpace:
    """Points on the side ``normal`` points to: ``dot(n̂, p) >= offset`` (n̂ unit)."""

    normal: Sequence[float]
    offset: float = 0.0

    def __post_init__(self) -> None:
        if np.linalg.norm(_vec(self.normal, "HalfSpace.normal")) == 0:
            raise RuleError("HalfSpace.normal must not be zero")

    def distance(self, p: np.ndarray) -> float:
        """Signed distance to the plane (< 0 inside)."""
        n = np.asarray(self.normal, dtype=np.float64)
        return self.offset - float(n @ p) / float(np.linalg.norm(n))


# --------------------------------------------------------------------------- rules


Action = Callable[[ActionEvent], Any]


@dataclass
class Rule:
    """One condition on one keypoint and the action it triggers.

    Parameters
    ----------
    name
        Shown in the log.
    keypoint
        Keypoint name from the model manifest.
    region
        Active while the keypoint is inside (optional).
    action
        Called with an :class:`ActionEvent` (an action object or any callable).
    speed_above_mm_s
        Active while the keypoint moves faster than this (optional).
    hysteresis_mm, hysteresis_mm_s
        Leave the active state only once outside by this distance / slower by this much.
    min_frames
        The conditions must hold on this many consecutive poses before going active.
    refractory_s
        Least time between two firings.
    fire
        ``enter``: fire on going active; ``while``: on every pose while active.
    accept
        ``measured`` (default): only keypoints measured in the pose's frame-set count; a
        predicted one (a track coasting on its motion model) changes nothing, like NaN.
        ``predicted``: act on coasting estimates too.
    individual
        Several animals (``fusion.multi``): ``None`` (default) reads ``pose.xyz`` (a
        single-animal run, or the lowest id); a track id reads that individual only;
        ``"any"`` reads, per pose, the individual nearest to the region (or, with a speed
        condition only, the fastest) — "any animal in the zone".

    Lengths (regions, hysteresis, speeds) are in mm whatever the calibration's unit: poses
    are converted (``Pose.units``) before the rules see them.
    """

    name: str
    keypoint: str
    region: Region | None = None
    action: Action | None = None
    speed_above_mm_s: float | None = None
    hysteresis_mm: float = 5.0
    hysteresis_mm_s: float = 50.0
    min_frames: int = 1
    refractory_s: float = 0.5
    fire: Literal["enter", "while"] = "enter"
    accept: Literal["measured", "predicted"] = "measured"
    individual: int | Literal["any"] | None = None
    active: bool = field(default=False, init=False)
    _streak: int = field(default=0, init=False, repr=False)
    _last_fire_ns: int = field(default=-(1 << 62), init=False, repr=False)

    def check(self) -> None:
        """Raise :class:`RuleError` for a rule that cannot work."""
        if self.region is None and self.speed_above_mm_s is None:
            raise RuleError(f"rule {self.name!r}: give a region and/or speed_above_mm_s")
        if self.action is None or not callable(self.action):
            raise RuleError(f"rule {self.name!r}: action must be callable")
        if self.hysteresis_mm < 0 or self.hysteresis_mm_s < 0 or self.refractory_s < 0:
            raise RuleError(f"rule {self.name!r}: hysteresis and refractory must be >= 0")
        if self.min_frames < 1 or self.fire not in ("enter", "while"):
            raise RuleError(f"rule {self.name!r}: min_frames >= 1 and fire in (enter, while)")
        if self.accept not in ("measured", "predicted"):
            raise RuleError(f"rule {self.name!r}: accept must be 'measured' or 'predicted'")
        ind = self.individual
        if isinstance(ind, numbers.Integral) and not isinstance(ind, bool) and int(ind) >= 0:
            self.individual = int(ind)  # a NumPy integer (an id read from a pose) too
        elif not (ind is None or (isinstance(ind, str) and ind == "any")):
            raise RuleError(f"rule {self.name!r}: individual must be a track id >= 0, 'any' "
                            f"or null, got {ind!r}")

    def step(self, p: np.ndarray, speed: float | None, t_ns: int) -> bool:
        """Advance the state with one observation; True when the action should fire."""
        if not np.isfinite(p).all():
            return False
        on, off = True, False  # on: every condition holds; off: one fails by the hysteresis
        if self.region is not None:
            d = self.region.distance(p)
            on, off = d <= 0, d > self.hysteresis_mm
        if self.speed_above_mm_s is not None:
            if speed is None or not math.isfinite(speed):
                return False
            on = on and speed >= self.speed_above_mm_s
            off = off or speed < self.speed_above_mm_s - self.hysteresis_mm_s
        entered = False
        if not self.active:
            self._streak = self._streak + 1 if on else 0
            if self._streak >= self.min_frames:
                self.active, entered = True, True
        elif off:
            self.active, self._streak = False, 0
        want = entered or (self.active and self.fire == "while")
        if want and t_ns - self._last_fire_ns >= self.refractory_s * 1e9:
            self._last_fire_ns = t_ns
            return True
        return False


def check_rules(rules: Sequence[Rule], keypoints: Sequence[str]) -> None:
    """Raise :class:`RuleError` naming the first rule that cannot work."""
    known = list(keypoints)
    if not known:
        raise RuleError("no keypoint names: pass the model's keypoints (model_keypoints(cfg))")
    for r in rules:
        r.check()
        if r.keypoint not in known:
            near = difflib.get_close_matches(r.keypoint, known, n=3)
            hint = f"; did you mean {', '.join(near)}?" if near else ""
            raise RuleError(f"rule {r.name!r}: unknown keypoint {r.keypoint!r}{hint} "
                            f"(the model has: {', '.join(known)})")


class RuleEngine:
    """Evaluate rules on poses and call their actions.

    Parameters
    ----------
    keypoints
        The model's keypoint names, in order (``pose.xyz`` rows).
    rules
        Checked here: an unknown keypoint raises :class:`RuleError` at construction.
    log
        Where firings go.
    """

    def __init__(self, keypoints: Sequence[str], rules: Sequence[Rule],
                 log: ActionLog | None = None) -> None:
        check_rules(rules, keypoints)
        for r in rules:  # an absent device is an error now, not at the first firing
            opener = getattr(r.action, "open", None)
            if callable(opener):
                opener()
        self.keypoints = list(keypoints)
        self.rules = list(rules)
        self.log = log or ActionLog()
        self._index = {r.name: self.keypoints.index(r.keypoint) for r in self.rules}
        self._prev: tuple[np.ndarray, int] | None = None
        self._prev_ind: dict[int, tuple[np.ndarray, int]] = {}
        self.fired = 0
        self.failed = 0

    def update(self, pose: Pose) -> list[ActionEvent]:
        """Evaluate every rule on ``pose``; return the events whose actions were called."""
        scale = MM_PER_UNIT.get(pose.units)
        if scale is None:
            raise RuleError(f"pose units {pose.units!r}: rules need one of {sorted(MM_PER_UNIT)}")
        every = np.asarray(pose.xyz, dtype=np.float64) * scale
        measured = np.where(pose.measured[:, None], every, np.nan)
        xyz = every
        msg = pose.message
        t_ns = msg.t_trigger_ns or msg.t_fused_ns
        speeds = None
        if self._prev is not None and t_ns > self._prev[1]:
            speeds = np.linalg.norm(xyz - self._prev[0], axis=1) / ((t_ns - self._prev[1]) / 1e9)
        self._prev = (xyz, t_ns)
        inds = individuals_of(msg) if any(r.individual is not None for r in self.rules) else []
        cand = self._individuals(inds, scale, t_ns)
        out = []
        for r in self.rules:
            j = self._index[r.name]
            if r.individual is None:
                sp = float(speeds[j]) if speeds is not None else None
                p = xyz[j] if r.accept == "predicted" else measured[j]
            else:
                p, sp = self._pick(r, j, cand)
            if not r.step(p, sp, t_ns):
                continue
            name = str(getattr(r.action, "name", getattr(r.action, "__name__", "action")))
            ev = ActionEvent(r.name, name, r.keypoint, pose.frame_id, [float(v) for v in p], sp,
                             msg.t_trigger_ns, msg.t_fused_ns, pose.t_recv_ns, time.time_ns())
            try:
                assert r.action is not None
                r.action(ev)
                self.fired += 1
            except Exception as exc:  # an action that fails is logged; the loop goes on
                self.failed += 1
                ev.result = f"error: {type(exc).__name__}: {exc}"
                log.error("rule %r: action failed: %s", r.name, exc)
            ev.t_action_ns = time.time_ns()
            self.log.write(ev)
            out.append(ev)
        return out


    def _individuals(self, inds: list[IndividualPose], scale: float, t_ns: int
                     ) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        """Per track id: all and measured-only positions (mm) and per-keypoint speeds."""
        out: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = {}
        for ind in inds:
            every = np.asarray(ind.xyz, dtype=np.float64) * scale
            prev = self._prev_ind.get(ind.id)
            sp = (np.linalg.norm(every - prev[0], axis=1) / ((t_ns - prev[1]) / 1e9)
                  if prev is not None and t_ns > prev[1] else None)
            self._prev_ind[ind.id] = (every, t_ns)
            out[ind.id] = (every, np.where(ind.measured[:, None], every, np.nan), sp)
        return out

    @staticmethod
    def _pick(r: Rule, j: int, cand: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray | None]]
              ) -> tuple[np.ndarray, float | None]:
        """The keypoint and speed a rule naming an individual (or ``any``) reads."""
        nan = np.full(3, np.nan)
        opts = []
        for tid, (every, meas, sp) in cand.items():
            if r.individual not in ("any", tid):
                continue
            p = every[j] if r.accept == "predicted" else meas[j]
            opts.append((p, float(sp[j]) if sp is not None else None))
        if not opts:
            return nan, None
        if len(opts) == 1 or r.individual != "any":
            return opts[0]
        ok = [o for o in opts if np.isfinite(o[0]).all()] or opts
        if r.region is not None:
            region = r.region
            return min(ok, key=lambda o: region.distance(o[0]))
        return max(ok, key=lambda o: -1.0 if o[1] is None else o[1])


class ClosedLoop:
    """Subscribe to ``pose3d`` and run a :class:`RuleEngine` on the newest pose.

    Parameters
    ----------
    endpoint
        The ``pose3d`` endpoint.
    keypoints, rules, log
        See :class:`RuleEngine`.
    on_pose
        Optional callback for every pose handled (after the rules).
    keys
        CURVE keys for a ``tcp://`` endpoint (see :class:`PoseClient`).
    """

    def __init__(self, endpoint: str, keypoints: Sequence[str], rules: Sequence[Rule],
                 log: ActionLog | None = None,
                 on_pose: Callable[[Pose, list[ActionEvent]], None] | None = None,
                 keys: CurveKeys | None = None) -> None:
        self.engine = RuleEngine(keypoints, rules, log)
        self.endpoint = endpoint
        self.keys = keys
        self.on_pose = on_pose
        self.poses = 0

    def run(self, duration_s: float | None = None, max_poses: int | None = None,
            idle_timeout_s: float | None = 5.0) -> int:
        """Handle poses until ``duration_s``, ``max_poses`` or ``idle_timeout_s`` without one;
        return the number of poses handled."""
        t_end = None if duration_s is None else time.monotonic() + duration_s
        with PoseClient(self.endpoint, latest_only=True, keys=self.keys) as client:
            while (t_end is None or time.monotonic() < t_end) and (
                max_poses is None or self.poses < max_poses
            ):
                pose = client.recv(idle_timeout_s)
                if pose is None:
                    break
                events = self.engine.update(pose)
                self.poses += 1
                if self.on_pose is not None:
                    self.on_pose(pose, events)
        return self.poses
