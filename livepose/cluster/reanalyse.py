"""``livepose reanalyse``: recorded sessions through a new model, on one process or on Ray.

The work is cut into *units*, one per (session, camera) video: decode the video
(``video/<cam>.mkv``), run the model on every recorded frame in batches of ``batch`` frames,
map the keypoints back to full-frame pixels. Units are independent; the set of units and
each unit's batches depend only on the sessions and ``batch``, never on how many workers
run them, so a cluster run and a single-process run make the same ONNX Runtime calls on the
same inputs. ONNX Runtime runs with one intra-op and one inter-op thread (sequential
execution): its reductions are then summed in one fixed order, and the 2D results are
bit-identical however the units are spread.

Fusion of a session (the live :class:`~livepose.fusion.process.Fuser`, frame by frame in
``frame_id`` order; a Kalman filter is sequential in time) runs in the driver process as
soon as all the session's cameras are in, while the workers go on with other units.

On Ray (:func:`run_ray`) the workers are an actor pool (one model loaded per actor, ``num_cpus``
/ ``num_gpus`` each). An actor that dies (``kill -9``, a lost node) is restarted by Ray
(``max_restarts=-1``); the unit it held fails in the driver with ``RayActorError`` and is put
back in the queue (counted ``redone``): work lost to a dead worker is redone, never skipped.
Sessions, the model and ``--out`` must be on a file system every node sees (the units read
videos and the model by path).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from livepose.core.config import Config
from livepose.core.errors import UserError

log = logging.getLogger(__name__)

#: frames per model call (fixed: it is part of what makes results reproducible)
BATCH = 8


class ReanalyseError(UserError):
    """Sessions or options that ``livepose reanalyse`` cannot run."""


@dataclass(frozen=True)
class Unit:
    """One camera video of one session: the unit of work."""

    session: str  # the session folder (absolute)
    cam: str
    frames: int  # recorded frames (progress)


@dataclass
class UnitResult:
    """The 2D keypoints of one unit.

    Attributes
    ----------
    frame_ids
        int64 ``(N,)``: the frame_id of each recorded frame, in video order.
    points
        float32 ``(N, J, 3)``: x, y (full-frame pixels), confidence.
    size
        ``(width, height)`` of the frames.
    """

    unit: Unit
    frame_ids: np.ndarray
    points: np.ndarray
    size: tuple[int, int]
    pid: int = 0
    host: str = ""


@dataclass
class SessionPlan:
    session: Path
    cfg: Config
    units: list[Unit] = field(default_factory=list)


def _segments(session: Path, cam: str) -> list[Any]:
    """The camera's recorded segments with a video and at least one recorded frame
    (:func:`livepose.kit.session.recorded_segments`: a restarted encoder's ``<cam>.1`` …
    too)."""
    from livepose.kit.session import recorded_segments, video_dir

    segs = recorded_segments(session, cam)
    if not segs:
        raise ReanalyseError(f"{video_dir(session)}: the session has no frame table for "
                             f"camera {cam!r}")
    return [s for s in segs if s.video is not None and len(s.frame_ids)]


def _frame_table(session: Path, cam: str) -> np.ndarray:
    """frame_id of each recorded frame of the camera, over its segments in order."""
    ids = [s.frame_ids for s in _segments(session, cam)]
    return np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)


def plan_sessions(sessions: Sequence[str | Path]) -> list[SessionPlan]:
    """Check the sessions and cut them into units.

    Raises
    ------
    ReanalyseError
        A path that is not a session, a session without calibration or without a camera's
        ``.mkv`` video or frame table, or a session given twice.
    """
    from livepose.kit.session import video_dir
    from livepose.recording.tools import session_config

    if not sessions:
        raise ReanalyseError("no sessions given (SESSION…)")
    plans = []
    seen: set[str] = set()
    for s in sessions:
        path = Path(s).resolve()
        if not path.is_dir():
            raise ReanalyseError(f"{s}: no such session folder")
        if path.name in seen:
            raise ReanalyseError(f"{s}: a session named {path.name!r} is given twice "
                                 "(outputs go to OUT/<session name>)")
        seen.add(path.name)
        cfg = session_config(path)
        if not (path / "calibration.toml").is_file():
            raise ReanalyseError(f"{path}: the session has no calibration.toml")
        plan = SessionPlan(path, cfg)
        for cam in cfg.camera_names:
            segs = _segments(path, cam)
            if not segs or any(s.video.suffix != ".mkv" for s in segs):
                raise ReanalyseError(f"{video_dir(path)}: camera {cam!r} has no .mkv video "
                                     "(codec raw or none cannot be re-analysed)")
            plan.units.append(Unit(str(path), cam, len(_frame_table(path, cam))))
        plans.append(plan)
    return plans


def model_config(cfg: Config, model: str, providers: str | None = None) -> dict[str, Any]:
    """The session's ``model`` section with ``path = model``, one ONNX Runtime thread, one
    worker, no crops (crops follow the live fused pose: not reproducible offline)."""
    data = cfg.model.model_dump(mode="json")
    data.update(path=str(model), intra_op_threads=1, workers=1)
    data.setdefault("crop", {})
    data["crop"] = {**data["crop"], "enabled": False}
    if providers is not None:
        data["providers"] = providers
    return data


class InferWorker:
    """Loads the model once and runs units (a Ray actor, or used in-process).

    Parameters
    ----------
    model
        The ``model`` config section (:func:`model_config`).
    batch
        Frames per model call.
    """

    def __init__(self, model: dict[str, Any], batch: int = BATCH) -> None:
        from livepose.core.config import ModelConfig
        from livepose.inference.engine import create_engine, engine_name
        from livepose.inference.manifest import resolve_model
        from livepose.inference.preprocess import Preprocessor

        mcfg = ModelConfig.model_validate(model)
        path, self.manifest = resolve_model(mcfg)
        if self.manifest.two_stage:
            raise ReanalyseError(f"{path}: two-stage models are not supported by reanalyse yet")
        self.engine = create_engine(engine_name(mcfg, path), path, self.manifest, mcfg)
        self.batch = batch
        self.pre = Preprocessor(self.manifest.input, batch)
        self.pre.warm_up()
        self.keypoints = list(self.manifest.keypoints)

    def pid(self) -> int:
        return os.getpid()

    def _run(self, n: int) -> np.ndarray:
        from livepose.inference.decode import decode_outputs

        outs = self.engine.run(self.pre.batch(n))
        return self.pre.to_frame_pixels(decode_outputs(outs, self.manifest)).astype(np.float32)

    def run_unit(self, unit: Unit) -> UnitResult:
        """Keypoints of every recorded frame of the unit's video."""
        from livepose.acquisition.encoders import iter_frames

        session = Path(unit.session)
        segs = _segments(session, unit.cam)
        ids = _frame_table(session, unit.cam)
        J = len(self.keypoints)
        out = np.full((len(ids), J, 3), np.nan, dtype=np.float32)
        n = 0
        size = (0, 0)
        rows: list[int] = []  # rows of ``out`` of the images in the batch
        base = 0
        for seg in segs:  # every segment: a restarted encoder continues in <cam>.1 …
            k = 0
            for image in iter_frames(seg.video):
                if k >= len(seg.frame_ids):
                    break  # frames the table does not name (a torn table): not attributable
                size = (int(image.shape[1]), int(image.shape[0]))
                self.pre.fill(n, image, "")
                rows.append(base + k)
                k, n = k + 1, n + 1
                if n == self.batch:
                    out[rows] = self._run(n)
                    rows, n = [], 0
            if k < len(seg.frame_ids):  # the video ends early (killed writer): NaN rows
                log.warning("%s/%s: %d frames in the table are not in the video",
                            session.name, seg.stem, len(seg.frame_ids) - k)
            base += len(seg.frame_ids)
        if n:
            out[rows] = self._run(n)
        return UnitResult(unit, ids, out, size, os.getpid(), os.uname().nodename)


@dataclass
class SessionOutput:
    """What fusion made of one session (also written under ``OUT/<session name>/``)."""

    session: str
    out: str
    frame_ids: np.ndarray  # int64 (T,)
    xyz: np.ndarray  # float64 (T, J, 3), NaN where unknown
    units: str
    keypoints: list[str]


def fuse_session(plan: SessionPlan, results: dict[str, UnitResult], keypoints: list[str],
                 out_dir: Path, model: dict[str, Any] | None = None) -> SessionOutput:
    """Fuse one session's 2D (every camera's :class:`UnitResult`) and write its files.

    Frame-sets are every frame_id recorded by at least one camera, in order; a camera that
    did not record a frame is a missing view (NaN). ``model``: the ``model`` section of the
    new 2D (:func:`model_config`): fusion weighs its views with that model's noise, not the
    recorded run's.
    """
    from livepose.core import protocol
    from livepose.core.calibration import read_calibration
    from livepose.core.config import ModelConfig
    from livepose.fusion.process import Fuser
    from livepose.recording.recorder import PredictionWriter, session_units

    cams = plan.cfg.camera_names
    ids = np.unique(np.concatenate([results[c].frame_ids for c in cams]))
    J = len(keypoints)
    pts = np.full((len(ids), len(cams), J, 3), np.nan, dtype=np.float32)
    for i, c in enumerate(cams):
        r = results[c]
        pts[np.searchsorted(ids, r.frame_ids), i] = r.points
    units = session_units(plan.session, plan.cfg.calibration_units)
    cfg = plan.cfg
    if model is not None:  # the new model's 2D: its manifest's noise (fusion_noise_px)
        cfg = cfg.model_copy(deep=True)
        cfg.model = ModelConfig.model_validate(model)
        cfg.fusion.pixel_noise_px = None
    fuser = Fuser(read_calibration(plan.session / "calibration.toml", cams), cfg, units)
    dest = out_dir / plan.session.name
    dest.mkdir(parents=True, exist_ok=True)
    writer = PredictionWriter(dest, list(cams), keypoints, int(ids[0]) if len(ids) else 0,
                              scorer="livepose-reanalyse")
    xyz = np.full((len(ids), J, 3), np.nan)
    sizes = [list(results[c].size) for c in cams]
    for t, fid in enumerate(ids):
        if np.isnan(pts[t, ..., :2]).all():
            continue
        msg = protocol.Kp2d(frame_id=int(fid), cams=list(cams), model="reanalyse",
                            points=pts[t], sizes=sizes)
        writer.on_kp2d(msg)
        pose = fuser.fuse(msg, 0)
        writer.on_pose3d(pose)
        xyz[t] = pose.xyz
    writer.close(plan.cfg.fps, units)
    return SessionOutput(str(plan.session), str(dest), ids, xyz, units, keypoints)


@dataclass
class Report:
    """The summary of a reanalysis (``reanalyse.json`` under ``OUT``)."""

    sessions: list[SessionOutput]
    frames: int
    seconds: float
    workers: int
    backend: str
    redone: int = 0
    hosts: list[str] = field(default_factory=list)
    startup_s: float = 0.0  # until every worker had its model loaded and warmed up
    fuse_s: float = 0.0  # fusion in the driver (sequential per session)

    def summary(self) -> dict[str, Any]:
        run_s = self.seconds - self.startup_s
        return {
            "backend": self.backend, "workers": self.workers, "frames": self.frames,
            "seconds": round(self.seconds, 3), "startup_s": round(self.startup_s, 3),
            "fuse_s": round(self.fuse_s, 3),
            # after start-up (what more sessions cost); with_startup: the whole command
            "frames_per_s": round(self.frames / run_s, 1) if run_s > 0 else None,
            "frames_per_s_with_startup": round(self.frames / self.seconds, 1)
            if self.seconds > 0 else None,
            "redone": self.redone, "hosts": sorted(set(self.hosts)),
            "sessions": [{"session": s.session, "out": s.out, "frame_sets": len(s.frame_ids),
                          "units": s.units} for s in self.sessions],
        }


Progress = Callable[[int], None]


@contextmanager
def _progress(total: int, show: bool) -> Iterator[Progress]:
    """A rich progress bar on stderr (frames done of ``total``); yields the advance call."""
    if not show:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress("[progress.description]{task.description}", BarColumn(),
                  MofNCompleteColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("reanalyse (frames)", total=total)
        yield lambda n: bar.advance(task, n)


def _finish(plans: list[SessionPlan], results: dict[tuple[str, str], UnitResult],
            keypoints: list[str], out: Path, done: dict[str, SessionOutput],
            timing: dict[str, float], model: dict[str, Any]) -> None:
    """Fuse every session whose cameras are all in (and not fused yet)."""
    for plan in plans:
        key = str(plan.session)
        if key in done or not all((key, u.cam) in results for u in plan.units):
            continue
        t = time.perf_counter()
        done[key] = fuse_session(plan, {u.cam: results[(key, u.cam)] for u in plan.units},
                                 keypoints, out, model)
        timing["fuse_s"] = timing.get("fuse_s", 0.0) + time.perf_counter() - t


def run_local(sessions: Sequence[str | Path], model: str, out: str | Path,
              progress: bool = False, batch: int = BATCH) -> Report:
    """The single-process reanalysis (the reference a cluster run must reproduce)."""
    plans = plan_sessions(sessions)
    out = Path(out)
    t0 = time.perf_counter()
    mcfg = model_config(plans[0].cfg, model)
    worker = InferWorker(mcfg, batch)
    timing = {"startup_s": time.perf_counter() - t0}
    results: dict[tuple[str, str], UnitResult] = {}
    done: dict[str, SessionOutput] = {}
    total = sum(u.frames for p in plans for u in p.units)
    with _progress(total, progress) as advance:
        for plan in plans:
            for unit in plan.units:
                results[(unit.session, unit.cam)] = worker.run_unit(unit)
                advance(unit.frames)
            _finish(plans, results, worker.keypoints, out, done, timing, mcfg)
    return _report(plans, done, total, time.perf_counter() - t0, 1, "local", out, 0,
                   [os.uname().nodename], timing)


def _report(plans: list[SessionPlan], done: dict[str, SessionOutput], total: int, seconds: float,
            workers: int, backend: str, out: Path, redone: int, hosts: list[str],
            timing: dict[str, float]) -> Report:
    rep = Report([done[str(p.session)] for p in plans], total, seconds, workers, backend,
                 redone, hosts, timing.get("startup_s", 0.0), timing.get("fuse_s", 0.0))
    out.mkdir(parents=True, exist_ok=True)
    (out / "reanalyse.json").write_text(json.dumps(rep.summary(), indent=2))
    return rep


def run_ray(sessions: Sequence[str | Path], model: str, out: str | Path, workers: int = 2,
            address: str | None = None, num_cpus: float = 1.0, num_gpus: float = 0.0,
            progress: bool = False, batch: int = BATCH, kill_first: bool = False) -> Report:
    """The reanalysis on a Ray actor pool (see the module docstring).

    Parameters
    ----------
    address
        A running cluster (``ray://…`` or ``host:port``, ``auto``); ``None``: the cluster
        this process is already connected to, else a local one.
    num_cpus, num_gpus
        Resources of each worker actor (a GPU worker: ``num_gpus=1`` and an ONNX Runtime
        GPU build with ``model.providers``).
    kill_first
        Fault drill (``livepose bench cluster``): ``kill -9`` the worker holding the first
        unit right after it is dispatched; its unit must be redone.
    """
    from livepose.cluster.raycluster import connect

    plans = plan_sessions(sessions)
    out = Path(out)
    if workers < 1:
        raise ReanalyseError(f"--workers must be >= 1, got {workers}")
    mcfg = model_config(plans[0].cfg, model)
    keypoints = _keypoints(mcfg)  # a wrong model is one error line here, not dying actors
    t0 = time.perf_counter()
    ray = connect(address)
    from ray.exceptions import RayActorError
    actor_cls = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=-1,
                           max_task_retries=0)(InferWorker)
    pool = [actor_cls.remote(mcfg, batch) for _ in range(workers)]
    try:
        pids = ray.get([a.pid.remote() for a in pool])  # every model loaded
        timing = {"startup_s": time.perf_counter() - t0}
        queue = [u for p in plans for u in p.units]
        total = sum(u.frames for u in queue)
        results: dict[tuple[str, str], UnitResult] = {}
        done: dict[str, SessionOutput] = {}
        inflight: dict[Any, tuple[int, Unit | None]] = {}  # unit None: a liveness ping
        idle = list(range(workers))
        redone = 0
        hosts: list[str] = []
        with _progress(total, progress) as advance:
            while queue or any(u is not None for _, u in inflight.values()):
                while queue and idle:
                    w = idle.pop(0)
                    unit = queue.pop(0)
                    inflight[pool[w].run_unit.remote(unit)] = (w, unit)
                    if kill_first:
                        kill_first = False
                        os.kill(pids[w], signal.SIGKILL)  # the drill: on this host only
                ready, _ = ray.wait(list(inflight), num_returns=1)
                w, maybe = inflight.pop(ready[0])
                try:
                    got = ray.get(ready[0])
                except RayActorError as exc:
                    # the actor died (Ray restarts it): ping it until it answers again
                    inflight[pool[w].pid.remote()] = (w, None)
                    if maybe is not None:
                        redone += 1
                        log.warning("worker %d died running %s/%s (%s): redoing it", w,
                                    Path(maybe.session).name, maybe.cam, type(exc).__name__)
                        queue.insert(0, maybe)
                    else:
                        time.sleep(0.2)
                    continue
                idle.append(w)
                if maybe is None:  # back after a restart
                    pids[w] = got
                    continue
                res: UnitResult = got
                results[(maybe.session, maybe.cam)] = res
                hosts.append(res.host)
                advance(maybe.frames)
                _finish(plans, results, keypoints, out, done, timing, mcfg)
    finally:
        for a in pool:
            ray.kill(a)
    return _report(plans, done, total, time.perf_counter() - t0, workers, "ray", out, redone,
                   hosts, timing)


def _keypoints(model: dict[str, Any]) -> list[str]:
    """The model's keypoint names (raises ``ModelError`` for a model that does not load,
    :class:`ReanalyseError` for a two-stage one)."""
    from livepose.core.config import ModelConfig
    from livepose.inference.manifest import resolve_model

    path, manifest = resolve_model(ModelConfig.model_validate(model))
    if manifest.two_stage:
        raise ReanalyseError(f"{path}: two-stage models are not supported by reanalyse yet")
    return list(manifest.keypoints)
