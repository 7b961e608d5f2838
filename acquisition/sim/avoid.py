"""Collision avoidance for the sim herd: rodents steer around each other instead of passing
through each other.

Every animal's head is steered on a fine time grid (:data:`GRID_S`) and leaves a *trail*;
the body is laid along the trail (:meth:`Rodent.set_trail`), so it follows the head around a
detour exactly as a real body does, with constant segment lengths. Per step, for each
animal:

1. **Look ahead.** Points of the other animals' bodies (head and spine as discs:
   :data:`BODY_LAGS`, :data:`BODY_R`) within :data:`LOOK_MM` ahead and closer sideways than
   the two half-widths plus :data:`MARGIN_MM` are in its way. The one that asks for the
   steepest turn sets the avoiding heading: away from it, on the side chosen once per
   meeting (the shorter way round; head-on both keep to their right, so they pass; one
   whose side is the wall gives way instead: it creeps while the other passes). With
   nothing in the way, the head aims at its own path :data:`PURSUIT_MM` ahead (it cuts the
   tightest corners and, after a detour, drifts back onto the path).
2. **Turn** towards that heading no faster than a turn radius of :data:`TURN_MM`, and
   **slow down** while a body is on a collision course (to :data:`CREEP` × the own speed at
   contact). The speed is the animal's own speed profile (:class:`Rodent`) times that.
3. **No overlap.** A step that would press the head (half-width :data:`HEAD_R`) more than
   :data:`SQUEEZE_MM` into another body (bodies are soft) is not taken (a step beyond
   :data:`WALL_MM` inside the wall slides along the wall): the animal creeps on turning as
   hard as it can (its side, else the other), or waits; wedged for :data:`WAIT_STEPS` (three animals in a knot), it backs
   up along its own trail for :data:`BACK_STEPS` and then tries the other side. A knot that
   does not come undone within :data:`JAM_STEPS` (10 s) is cut: one animal goes through the
   others for a second (``counters["through"]``).

Everything is a deterministic function of the herd's seed, tabulated from ``t = 0`` as far
as asked.
"""

from __future__ import annotations

import numpy as np

from livepose.acquisition.sim.animal import Rodent

GRID_S = 1.0 / 120.0
"""Time step of the steering (s)."""
BODY_LAGS = np.array([0.0, 22.0, 36.0, 50.0, 63.0, 75.0, 92.0])
"""Arc lags (mm, scale 1) behind the head of the points that make a body an obstacle."""
BODY_R = np.array([9.0, 10.0, 12.0, 13.0, 12.5, 10.5, 6.5])
"""Their half-widths (mm, scale 1)."""
HEAD_R = 13.0
"""Half-width of the body behind a head: what must not enter another body (mm, scale 1)."""
LOOK_MM = 70.0
"""How far ahead (beyond contact) an animal looks for other bodies."""
PURSUIT_MM = 30.0
"""With nothing in the way, the head aims at its own path this far ahead."""
TURN_MM = 10.0
"""Smallest turn radius of the head."""
MAX_TURN = 0.9
"""Largest heading change (rad) an obstacle asks for at once."""
MARGIN_MM = 1.0
"""Clearance kept between two bodies when passing."""
SQUEEZE_MM = 3.0
"""Bodies are soft: a head may press this far into another body."""
WALL_MM = 16.0
"""The head stays this far inside the arena wall."""
CREEP = 0.25
"""Speed factor at contact (turning needs motion)."""
WAIT_STEPS = 36
"""Wedged this many steps in a row (0.3 s), an animal backs up …"""
BACK_STEPS = 60
"""… for this many steps, at :data:`BACK_SPEED` × its own speed."""
BACK_SPEED = 0.5
JAM_STEPS = 1200
"""An animal blocked or backing up this many steps (10 s) without gaining 20 mm of new
ground (a knot of animals that backing up did not undo: a last resort, none in the
benchmark's minute) goes through the others for :data:`GHOST_STEPS` (counted as
``through``; the one place where bodies would overlap)."""
GHOST_STEPS = 120
FAR_MM = 260.0
"""Heads farther apart than this cannot touch within a step or see each other's bodies
ahead (a body is ~170 mm with its tail, the look-ahead ~100 mm): such pairs are skipped."""
TRAIL_BEHIND_MM = 400.0
"""The trail starts this far behind the head at t = 0 (the body and tail lie on it)."""


def _smooth(x: float) -> float:
    x = min(max(x, 0.0), 1.0)
    return x * x * (3.0 - 2.0 * x)


def _wrap(a: float) -> float:
    return (a + np.pi) % (2.0 * np.pi) - np.pi


class Steering:
    """The avoidance state of a herd's animals (module docstring).

    Parameters
    ----------
    animals
        The rodents; their trails are set here.
    arena_radius_mm
        Radius of the arena.
    """

    def __init__(self, animals: list[Rodent], arena_radius_mm: float) -> None:
        self.animals = animals
        N = len(animals)
        self.scales = np.array([a.scale for a in animals])
        self.r_wall = float(arena_radius_mm) - WALL_MM
        self.tau = np.zeros((N, 1))  # clocks on the grid (N, K)
        self.arc = np.zeros((N, 1))  # the heads' arcs on their trails (N, K)
        self._ts: list[np.ndarray] = []
        self._txy: list[np.ndarray] = []
        self._tn = np.zeros(N, dtype=np.int64)
        self.theta = np.zeros(N)  # headings
        self.sigma = np.zeros(N)  # progress along the own path (arc)
        for i, a in enumerate(animals):
            s0 = a.arc(0.0)
            s = np.arange(s0 - TRAIL_BEHIND_MM, s0 + 0.5, 1.0)
            p, d = a._path(s)
            self._ts.append(np.concatenate([s, np.empty(8192)]))
            self._txy.append(np.concatenate([p, np.empty((8192, 2))]))
            self._tn[i] = len(s)
            self.arc[i, 0] = s[-1]
            self.theta[i] = np.arctan2(d[-1, 1], d[-1, 0])
            self.sigma[i] = s0
            self._publish(i)
        self.history: list[list[tuple[int, np.ndarray, np.ndarray]]] = [[] for _ in animals]
        self.side = np.zeros((N, N))  # side chosen to pass animal j (per meeting)
        self.wait = np.zeros(N, dtype=np.int64)
        self.back = np.zeros(N, dtype=np.int64)
        self.jam = np.zeros(N, dtype=np.int64)  # blocked / backing steps since new ground
        self.mark = self.arc[:, 0].copy()  # the farthest arc reached (new ground: 20 mm on)
        self.ghost = np.zeros(N, dtype=np.int64)  # steps left going through the others
        self.counters = {"contacts": 0, "blocked": 0, "backed": 0, "through": 0}

    # ------------------------------------------------------------------ trail

    def _publish(self, i: int) -> None:
        n = int(self._tn[i])
        self.animals[i].set_trail(self._ts[i][:n], self._txy[i][:n])

    def _append(self, i: int, s: float, p: np.ndarray, k: int) -> None:
        """The head of ``i`` is at ``p``, trail arc ``s``, after step ``k``."""
        n = int(self._tn[i])
        ts = self._ts[i]
        if s <= ts[n - 1] + 1e-9:
            if s >= ts[n - 1] - 1e-9:
                return  # did not move
            # it backed up and goes forward again: the trail ahead of it is rewritten, so
            # keep the old one for the steps before (any t gives the same pose)
            self.history[i].append((k, ts[:n].copy(), self._txy[i][:n].copy()))
            n = max(int(np.searchsorted(ts[:n], s, side="left")), 1)
        if n == len(ts):
            self._ts[i] = np.concatenate([ts, np.empty(n)])
            self._txy[i] = np.concatenate([self._txy[i], np.empty((n, 2))])
        self._ts[i][n], self._txy[i][n] = s, p
        self._tn[i] = n + 1
        self._publish(i)

    def trail_at(self, i: int, k: float) -> tuple[np.ndarray, np.ndarray]:
        """Animal ``i``'s trail (arcs ``(K,)``, points ``(K, 2)``) as it was at grid step
        ``k``."""
        for k_end, ts, txy in self.history[i]:
            if k < k_end:
                return ts, txy
        n = int(self._tn[i])
        return self._ts[i][:n], self._txy[i][:n]

    @staticmethod
    def _own_path(a: Rodent, s: float) -> tuple[np.ndarray, float]:
        """Point ``(2,)`` and heading (rad) of animal ``a``'s own path at arc ``s``."""
        trail, a._trail = a._trail, None
        p, d = a._path(np.array(s))
        a._trail = trail
        return p, float(np.arctan2(d[1], d[0]))

    # ------------------------------------------------------------------ geometry

    def _overlap(self, i: int, head: np.ndarray, bodies: list[np.ndarray]) -> float:
        """How deep (mm) animal ``i``'s head at ``head`` is in another animal's body."""
        out = -np.inf
        for j, pts in enumerate(bodies):
            if j != i:
                dist = np.hypot(*(pts - head).T)
                width = BODY_R * self.scales[j] + HEAD_R * self.scales[i]
                out = max(out, float(np.max(width - dist)))
        return out

    def _free(self, i: int, p: np.ndarray, pen0: float, bodies: list[np.ndarray]) -> bool:
        """Whether the head of ``i`` may step to ``p`` (no deeper into a body)."""
        return self._overlap(i, p, bodies) <= max(pen0, SQUEEZE_MM)

    def _wall(self, p: np.ndarray) -> np.ndarray:
        """``p`` slid back along the radius to :data:`WALL_MM` inside the wall (a head
        that runs into the wall slides along it)."""
        r = float(np.hypot(*p))
        return p * (self.r_wall / r) if r > self.r_wall else p

    def _look(self, i: int, bodies: list[np.ndarray]) -> tuple[float | None, float]:
        """Animal ``i``'s avoiding heading change (``None``: nothing in the way) and speed
        factor."""
        head = bodies[i][0]
        th = self.theta[i]
        fwd = np.array([np.cos(th), np.sin(th)])
        left = np.array([-fwd[1], fwd[0]])
        turn: float | None = None
        urgency = 0.0
        rate = 1.0
        for j, pts in enumerate(bodies):
            if j == i:
                continue
            rel = pts - head
            along = rel @ fwd
            lat = rel @ left
            width = BODY_R * self.scales[j] + HEAD_R * self.scales[i] + MARGIN_MM
            ahead = (along > -0.5 * width) & (along < LOOK_MM + width) & (np.abs(lat) < width)
            if not ahead.any():
                self.side[i, j] = 0.0
                continue
            if self.side[i, j] == 0.0:  # pick a side once per meeting
                right = float(np.max((width - lat)[ahead]))  # sideways travel to clear it
                left_ = float(np.max((width + lat)[ahead]))
                side = -1.0 if right <= left_ + 2.0 else 1.0  # the shorter way; tie: right
                hd = pts[0] - pts[1]
                if float(fwd @ hd) < -0.5 * float(np.hypot(*hd)):
                    side = -1.0  # head-on: both keep to their right
                self.side[i, j] = side
            side = self.side[i, j]
            r_head = float(np.hypot(*head))
            if r_head > self.r_wall - 25.0 and side * float(left @ head) > 0.3 * r_head:
                rate = min(rate, CREEP)  # that side is the wall: give way, the other passes
                continue
            need = width + side * lat  # sideways travel still needed on that side
            room = np.maximum(along - 0.5 * width, 4.0)
            u = np.where(ahead, need / room, 0.0)
            q = int(np.argmax(u))
            if u[q] > urgency:
                urgency, turn = float(u[q]), side * min(float(np.arctan(u[q])), MAX_TURN)
            core = ahead & (np.abs(lat) < width - MARGIN_MM)  # on a collision course
            if core.any():
                gap = float(np.min(along[core] - width[core]))
                rate = min(rate, CREEP + (1.0 - CREEP) * _smooth(gap / 40.0))
                if gap < 0:
                    self.counters["contacts"] += 1
        return turn, rate

    # ------------------------------------------------------------------ stepping

    def extend(self, t: float) -> None:
        """Tabulate the clocks and trails up to ``t``."""
        K = int(np.ceil(t / GRID_S)) + 2
        k0 = self.tau.shape[1]
        if k0 >= K:
            return
        N = len(self.animals)
        for i in range(N):
            self._publish(i)  # the current trails (a pose of the past may have set others)
        tau = np.concatenate([self.tau, np.zeros((N, K - k0))], axis=1)
        arc = np.concatenate([self.arc, np.zeros((N, K - k0))], axis=1)
        for k in range(k0, K):
            bodies = [a._path(arc[i, k - 1] - a.scale * BODY_LAGS)[0]
                      for i, a in enumerate(self.animals)]
            for i in range(N):
                self._step(i, k, tau, arc, bodies)
        self.tau, self.arc = tau, arc

    def _step(self, i: int, k: int, tau: np.ndarray, arc: np.ndarray,
              bodies: list[np.ndarray]) -> None:
        a = self.animals[i]
        t0, s0 = float(tau[i, k - 1]), float(arc[i, k - 1])
        tau[i, k], arc[i, k] = t0, s0
        head = bodies[i][0]
        alone = all(float(np.hypot(*(bodies[j][0] - head))) > FAR_MM
                    for j in range(len(bodies)) if j != i)
        if self.ghost[i] > 0:  # a knot that did not come undone: it goes through
            self.ghost[i] -= 1
            bodies = [bodies[i] if j == i else bodies[j] + 1e6 for j in range(len(bodies))]
        elif self.jam[i] > JAM_STEPS and not self.ghost.any():
            self.jam[i], self.ghost[i] = 0, GHOST_STEPS
            self.counters["through"] += 1
        pen0 = -np.inf if alone else self._overlap(i, head, bodies)
        if self.back[i] > 0:  # backing up along the own trail
            self.back[i] -= 1
            tb = t0 - BACK_SPEED * GRID_S
            sb = s0 - (a.arc(t0) - a.arc(tb))
            n = int(self._tn[i])
            p = np.array([np.interp(sb, self._ts[i][:n], self._txy[i][:n, 0]),
                          np.interp(sb, self._ts[i][:n], self._txy[i][:n, 1])])
            if sb < s0 and self._overlap(i, p, bodies) <= max(pen0, SQUEEZE_MM):
                tau[i, k], arc[i, k] = tb, sb  # the trail ahead stays until it goes forward
                d = p - bodies[i][1]
                self.theta[i] = float(np.arctan2(d[1], d[0]))
                self.counters["backed"] += 1
                self.jam[i] += 1
                return
            self.back[i] = 0
        if alone:  # nobody within reach: nothing in the way (the same as looking)
            self.side[i] = 0.0
            turn, rate = None, 1.0
        else:
            turn, rate = self._look(i, bodies)
        th = self.theta[i]
        # avoiding, or back to (or along) the own path
        want = th + turn if turn is not None else self._pursue(i, a, head, th)
        t1 = t0 + rate * GRID_S
        ds = a.arc(t1) - a.arc(t0)
        dth = float(np.clip(_wrap(want - th), -ds / TURN_MM, ds / TURN_MM))
        for tt, step, new in self._moves(a, t0, t1, ds, th, dth, turn):
            p = self._wall(head + step * np.array([np.cos(new - 0.5 * (new - th)),
                                                   np.sin(new - 0.5 * (new - th))]))
            if alone or self._free(i, p, pen0, bodies):
                self.wait[i] = 0
                self._append(i, s0 + step, p, k)
                tau[i, k], arc[i, k] = tt, s0 + step
                v = p - head
                heading = new
                if np.hypot(*v) > 1e-6 and np.hypot(*p) >= self.r_wall - 1e-6:
                    heading = float(np.arctan2(v[1], v[0]))  # along the wall
                self.theta[i] = _wrap(heading)
                if tt != t1:
                    self.side[i][self.side[i] != 0] = np.sign(heading - th)
                if s0 + step > self.mark[i] + 20.0:  # new ground: not in a knot
                    self.mark[i], self.jam[i] = s0 + step, 0
                return
        self.counters["blocked"] += 1
        self.jam[i] += 1
        self.wait[i] += 1  # wedged: wait, and after a while back up and try the other side
        if self.wait[i] >= WAIT_STEPS:
            self.wait[i], self.back[i] = 0, BACK_STEPS
            self.side[i] = -self.side[i]

    def _pursue(self, i: int, a: Rodent, head: np.ndarray, th: float) -> float:
        """The heading (rad) towards animal ``i``'s own path, :data:`PURSUIT_MM` ahead of
        the path point nearest to the head (searched a little ahead of the last one; a
        target that would make the head circle — behind it, or within a turn — is taken
        further on)."""
        trail, a._trail = a._trail, None
        try:
            q = self.sigma[i] + np.linspace(0.0, 6.0, 7)
            p, _ = a._path(q)
            self.sigma[i] = float(q[int(np.argmin(np.hypot(*(p - head).T)))])
            cand = self.sigma[i] + PURSUIT_MM * np.array([1.0, 2.0, 3.0, 4.0])
            pts, _ = a._path(cand)
        finally:
            a._trail = trail
        for pt in pts:
            v = pt - head
            ang = float(np.arctan2(v[1], v[0]))
            if np.hypot(*v) > 2.2 * TURN_MM * abs(np.sin(_wrap(ang - th))) + 1.0:
                return ang
        return ang

    @staticmethod
    def _moves(a: Rodent, t0: float, t1: float, ds: float, th: float, dth: float,
               turn: float | None) -> list[tuple[float, float, float]]:
        """Candidate steps ``(clock, arc step, new heading)``: the wanted one, then creeping
        and turning as hard as possible (the avoiding side first)."""
        out = [(t1, ds, th + dth)]
        tc = t0 + CREEP * GRID_S
        dc = a.arc(tc) - a.arc(t0)
        side = float(np.sign(turn)) if turn else -1.0
        out += [(tc, dc, th + sd * dc / TURN_MM) for sd in (side, -side)]
        return out

    def at(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Clocks ``τ_i(t)`` and head arcs ``(N,)`` at ``t`` (tabulated as needed); the
        animals' trails are set as they were then."""
        self.extend(t)
        x = max(float(t), 0.0) / GRID_S
        k = min(int(x), self.tau.shape[1] - 2)
        w = x - k
        for i, a in enumerate(self.animals):
            a.set_trail(*self.trail_at(i, x))
        return ((1.0 - w) * self.tau[:, k] + w * self.tau[:, k + 1],
                (1.0 - w) * self.arc[:, k] + w * self.arc[:, k + 1])
