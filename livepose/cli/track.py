"""``livepose track VIDEO_DIR``: the live pipeline fed by a folder of synchronized videos.

One video per camera of the calibration, named after it (``cam01.mp4``…; the ``video``
camera backend). Same processes, same fusion as a rig; the software trigger clock runs at the
videos' rate, or ``--paced``: each pulse waits until fusion has accounted for the frame-sets
before it (``trigger.paced``), so every frame-set is processed. The session (frame tables,
2D and 3D predictions, config, calibration) is recorded under ``OUT`` (``recording.codec:
none``: no video is written, the source videos are the video), and ``OUT/pose3d.csv``
(Anipose 3D, ``fnum`` = video frame index, the calibration's units) and
``OUT/pose2d/<cam>.csv`` are copied out of it.

``--individuals N|free`` tracks several people or animals (``fusion.multi``,
docs/multi-animal.md): ``OUT/pose3d_individuals.csv`` (DeepLabCut's multi-animal layout, one
column group per id) besides; ``--config FILE`` merges config sections over the generated
config (``fusion.multi`` gates; a model's manifest brings its subject's, e.g. BlazePose's for
people).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from livepose.core.config import Config
from livepose.core.errors import UserError

PACED_DEADLINE_S = 5.0
log = logging.getLogger(__name__)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged into ``base`` section by section (mappings recursively)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) \
            else v
    return out


#: what ``--config`` may not set: the track command makes these from its arguments
TRACK_OWNS = ("cameras", "calibration", "recording", "fps", "name")


def video_config(
    video_dir: Path, calibration: Path, model: str, out: Path, paced: bool,
    frames: int | None = None, fps: float | None = None, name: str = "track",
    individuals: str | None = None, extra: Path | None = None,
) -> tuple[Config, int]:
    """The run config for a folder of videos, and the number of frame-sets to trigger.

    ``individuals``: ``"free"`` or a number turns on several individuals
    (``fusion.multi``, docs/multi-animal.md); ``extra``: a YAML file whose sections (any
    but :data:`TRACK_OWNS`) are merged over the generated config (``fusion.multi`` gates,
    the model's settings …).

    Raises
    ------
    UserError
        Missing folder, calibration, or a camera without its video; a bad ``individuals``
        or ``extra``.
    """
    from livepose.core.config import ConfigError
    from livepose.core.yamlfile import read_yaml

    over: dict[str, Any] = {}
    if extra is not None:
        over = read_yaml(extra, ConfigError, "config file (--config)") or {}
        if not isinstance(over, dict):
            raise UserError(f"{extra}: --config must be a mapping of config sections")
        owned = sorted(set(over) & set(TRACK_OWNS))
        if owned:
            raise UserError(f"{extra}: --config cannot set {', '.join(owned)} (track makes "
                            "them from its arguments)")
    if individuals is not None:
        n = individuals.strip().lower()
        if n != "free" and not (n.isdigit() and int(n) >= 1):
            raise UserError(f"--individuals: {individuals!r}: a number ≥ 1, or 'free'")
        over = _merge(over, {"fusion": {"multi": {
            "enabled": True, "individuals": None if n == "free" else int(n)}}})
    from livepose.acquisition.video import find_video, probe_rate
    from livepose.core.calibration import read_calibration

    if not video_dir.is_dir():
        raise UserError(f"{video_dir}: no such folder of videos")
    if not calibration.is_file():
        raise UserError(f"{calibration}: calibration file not found (--calibration)")
    names = [c.name for c in read_calibration(calibration).cameras]
    videos, missing = {}, []
    for n in names:
        try:
            videos[n] = find_video(video_dir, n)
        except UserError as exc:
            missing.append(str(exc))
    if missing:  # every camera at once, and what the names must be
        raise UserError("; ".join(missing) + f" — the calibration's cameras are "
                        f"{', '.join(names)}; each video's name must contain its camera's")
    rate = fps or probe_rate(videos[names[0]])
    if not rate:
        raise UserError(f"{videos[names[0]]}: no frame rate in the file; pass --fps")
    lengths = {n: _count(v) for n, v in videos.items()}
    n_frames = min(lengths.values())
    if max(lengths.values()) != n_frames:  # the rig stops with its shortest video
        log.warning("the videos differ in length (%s): tracking stops after %d frame-sets, "
                    "the shortest video's", ", ".join(f"{n} {k}" for n, k in lengths.items()),
                    n_frames)
    if frames is not None and frames > n_frames:
        log.warning("--frames %d: the videos hold %d frame-sets; tracking those", frames,
                    n_frames)
    if out.is_dir():  # one session per run: track, track-2, … in the same output folder
        taken = {p.name.split("_", 1)[-1] for p in out.iterdir() if p.is_dir()}
        name = next(f"{name}-{k}" if k > 1 else name for k in range(1, 10_000)
                    if (f"{name}-{k}" if k > 1 else name) not in taken)
    count = n_frames if frames is None else min(frames, n_frames)
    data = {
        "name": name, "fps": rate, "calibration": str(calibration.resolve()),
        "cameras": [{"name": n, "backend": "video", "path": str(video_dir.resolve())}
                    for n in names],
        "model": {"path": model},
        "trigger": {"paced": paced},
        # paced: every view of a set will come (decoding may lag under load): wait for it
        **({"frameset": {"deadline_frames": round(PACED_DEADLINE_S * rate, 1)}} if paced else {}),
        # replayed frames are of their index by construction: no timing verdicts
        "desync_tolerance_ms": 10_000.0,
        "recording": {"enabled": True, "dir": str(out.resolve()), "name": name,
                      "codec": "none"},
        "dashboard": {"enabled": False},
    }
    from livepose.core.config import parse_config

    cfg = parse_config(_merge(data, over), source=str(extra) if extra else "<track>")
    return cfg, count


def video_pulses(cfg: Config) -> int | None:
    """A rig of non-looping videos stops after its shortest video (``None`` otherwise)."""
    from livepose.acquisition.video import find_video
    from livepose.core.config import VideoCameraConfig

    cams = cfg.cameras
    if not cams or not all(isinstance(c, VideoCameraConfig) and not c.loop and not c.free_run
                           for c in cams):
        return None
    return min(_count(find_video(Path(c.path), c.name)) for c in cams)  # type: ignore[union-attr]


def _count(video: Path) -> int:
    """Frames in a video (the container's count, else by decoding)."""
    import av

    with av.open(str(video)) as c:
        s = c.streams.video[0]
        if s.frames:
            return int(s.frames)
        return sum(1 for _ in c.demux(s) if _.size)


def collect(summary: dict[str, Any], out: Path) -> dict[str, Any]:
    """Copy the session's predictions to ``out`` (``pose3d.csv`` and its sidecars,
    ``pose2d/``); return what was written."""
    sess = summary.get("session") or {}
    path = Path(sess["path"]) if sess.get("path") else None
    if path is None or not path.is_dir():
        raise UserError("the run recorded no session (see the log above)")
    written = {"session": str(path)}
    for f in sorted(path.glob("pose3d*")):
        shutil.copy2(f, out / f.name)
        written[f.name] = str(out / f.name)
    for sub in ("pose2d", "pose2d_individuals"):  # the latter: several individuals
        if (path / sub).is_dir():
            shutil.copytree(path / sub, out / sub, dirs_exist_ok=True)
            written[sub] = str(out / sub)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return written


DEMO_DATA = Path("../shared/data/pose2sim-demo")


def register(app: typer.Typer, err: Console, bench_group: Callable[[], typer.Typer],
             fail: Callable[..., None]) -> None:
    """Add ``track`` to ``app`` and ``real`` to its ``bench`` group."""

    @app.command()
    def track(
        video_dir: Annotated[Path, typer.Argument(
            help="folder of synchronized videos, one per camera, named after the "
            "calibration's cameras")],
        calibration: Annotated[Path, typer.Option(
            "--calibration", "-c", help="Anipose TOML (livepose calibration import)")],
        out: Annotated[Path, typer.Option("--out", "-o", help="output folder")],
        model: Annotated[str, typer.Option(
            "--model", "-m", help="'blazepose', 'default', a model folder or a model file"
        )] = "blazepose",
        paced: Annotated[bool, typer.Option(
            "--paced", help="process every frame-set (the clock waits for fusion); default: "
            "the videos' rate, skips counted")] = False,
        frames: Annotated[int | None, typer.Option(
            "--frames", min=1, help="only the first N frames")] = None,
        fps: Annotated[float | None, typer.Option(
            "--fps", help="override the videos' frame rate")] = None,
        workers: Annotated[int, typer.Option(
            "--workers", min=1, max=16, help="inference workers")] = 1,
        threads: Annotated[int, typer.Option(
            "--threads", min=0, help="ONNX Runtime threads per worker (0: its default)")] = 2,
        providers: Annotated[str, typer.Option(
            "--providers", help="ONNX Runtime providers, comma-separated, or 'auto'")
        ] = "CPUExecutionProvider",
        individuals: Annotated[str | None, typer.Option(
            "--individuals", help="several people/animals: their number, or 'free' "
            "(fusion.multi; OUT/pose3d_individuals.csv)")] = None,
        config: Annotated[Path | None, typer.Option(
            "--config", help="YAML of config sections merged over track's (e.g. "
            "fusion.multi gates; not cameras, calibration, recording, fps, name)")] = None,
        no_live: Annotated[bool, typer.Option("--no-live", help="no live terminal view")] = False,
        verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log INFO")] = False,
    ) -> None:
        """Track the videos of VIDEO_DIR with the live pipeline: OUT/pose3d.csv (Anipose 3D,
        fnum = video frame index, calibration units), OUT/pose2d/<cam>.csv and a session;
        with --individuals, OUT/pose3d_individuals.csv (DeepLabCut multi-animal layout)."""
        from livepose.cli.demo import run_pipeline
        from livepose.runtime.supervisor import ProcessDied

        try:
            out.mkdir(parents=True, exist_ok=True)
            cfg, count = video_config(video_dir, calibration, model, out, paced, frames, fps,
                                      individuals=individuals, extra=config)
            cfg.model.workers = workers
            cfg.model.intra_op_threads = threads
            cfg.model.providers = "auto" if providers == "auto" else \
                [p.strip() for p in providers.split(",") if p.strip()]
            summary = run_pipeline(cfg, None, None, live=not no_live, pulses=count,
                                   log_level=logging.INFO if verbose else logging.WARNING)
            written = collect(summary, out)
        except UserError as exc:
            fail(str(exc))
            return
        except (ProcessDied, TimeoutError) as exc:
            fail(str(exc), code=1)
            return
        err.print(f"3D: {written.get('pose3d.csv', '(none)')}; session {written['session']}",
                  highlight=False)

    bench = bench_group()

    @bench.command("real")
    def bench_real(
        json_path: Annotated[Path | None, typer.Option(
            "--json", help="write the results as JSON here")] = None,
        data: Annotated[Path, typer.Option(
            "--data", help="Pose2Sim's demo folder (single/, calibration/)")] = DEMO_DATA,
        frames: Annotated[int, typer.Option("--frames", min=10, help="frame-sets")] = 100,
        oracle: Annotated[Path | None, typer.Option(
            "--oracle", help="MediaPipe runtime's 2D (.npz from scripts/blazepose_oracle.py)"
        )] = None,
        out: Annotated[Path, typer.Option("--out", help="working folder")] = Path("bench-real"),
        live: Annotated[bool, typer.Option(
            "--live/--no-live", help="also an unpaced run at the videos' rate")] = True,
    ) -> None:
        """BlazePose on real footage through `livepose track`: 2D vs MediaPipe, reprojection
        and leave-one-camera-out vs aniposelib, coverage, detector runs, throughput."""
        from livepose.bench.real import run_real

        if not (data / "single").is_dir():
            fail(f"{data}: no single/ footage here (--data: Pose2Sim's demo folder)")
            return
        if oracle is not None and not oracle.is_file():
            fail(f"{oracle}: oracle file not found (--oracle)")
            return
        res = run_real(data, out, frames, oracle, live)
        if json_path is not None:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(res, indent=2))
        Console().print_json(data=res)
