"""``livepose bench multi``: several animals at once on the sim rig — identities in 3D.

Scenario: the demo rig (4 cameras, 320×256, 30 fps) with ``sim.animals`` rodents (3) for
``duration_s`` (60 s). Frame-set by frame-set, offline but with the live components:

- the herd rendered by the sim renderer (acquisition's), ground truth per identity;
- per camera a :class:`~livepose.inference.blobs.BlobDetector` (background = median of 25
  frames spread over the run); the worker's instances as a live run makes them
  (``route="crops"``, the default: :class:`~livepose.inference.track_crops.TrackCrops`, one
  3D-guided crop per individual per view once the individuals are known, blob detection on
  the full frame only to re-acquire; ``route="full"``: every blob of every view masked on the
  full frame, :class:`~livepose.inference.instances.MaskedInstances`), all in one batched
  model call; the individuals are the previous frame-set's (fusion's output reaches the
  worker one frame-set later in a live run);
- :class:`~livepose.fusion.multitrack.MultiTracker` (association + tracking + the EKF),
  ``fusion.multi.individuals`` = the number of animals.

Reference in the same run: the single-animal demo — animal 0 alone in the arena, the full
frame through the same model and the live single-animal fusion (:class:`Fuser`).

Metrics:

- ``id_swaps``: per frame-set, the confirmed individuals are matched to the true animals
  (Hungarian on the median keypoint error, ≤ ``match_mm`` = 20 mm); a swap is counted when
  a true animal's matched track id differs from the id it last held and the new id then
  holds for 0.5 s; ``id_switches_raw`` counts every change (MOT's IDSW), including the
  flickers while two animals are within 20 mm of both tracks;
- the herd (``sim.avoid``, ``sim.size_spread``): animals steer around each other
  (:mod:`livepose.acquisition.sim.avoid`); ``herd`` reports their body scales, the
  steering's counters (``through``: knots cut by letting one animal through) and the frames
  where two bodies overlap by more than 5 mm (:func:`~livepose.acquisition.sim.herd.body_overlap`);
- ``close_encounters``: events (onsets, 0.5 s apart) of two animals' spine midpoints nearer
  than one body length (100 mm); ``occlusions``: events of an animal with ≥ 3 keypoints
  hidden behind another animal's body in a camera (ray–sphere tests), per camera;
- ``error_mm_median``: 3D error of every keypoint of every matched individual;
  ``single_animal_error_mm_median`` the reference's;
- ``cost_us``: association + tracking per frame-set (``MultiTracker.step``) in the run,
  median / p99; ``cost_us_isolated``: the same alone (:func:`tracking_cost`: the herd's true
  keypoints projected with noise, no renderer or model competing for the cores);
- ``pipeline_ms``: instances (crops or blobs, model) + tracking + projecting the individuals
  into the views, per frame-set (every frame-set is processed; a live run's worker would
  not run the tracking, fusion's process does, so this is an upper bound); ``rate``: its
  median over the frame period (``ratio_to_period`` ≤ 1: the demo rate is kept);
  ``over_budget``: frame-sets that took longer than a frame period; ``skipped``: the
  frame-sets a live worker would have skipped (:func:`live_skips`: it takes the newest
  frame-set when it is free, as the worker does).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from livepose.bench.results import write_json
from livepose.core.config import Config, SimCameraConfig


def config(animals: int = 3, n_cams: int = 4, fps: float = 30.0, seed: int = 0,
           avoid: bool = True, size_spread: float | None = None,
           size_weight: float | None = None, crop_model: str | None = None,
           body_radius_mm: float | None = None) -> Config:
    """The benchmark's config: the demo rig with ``animals`` rodents, ``fusion.multi`` on
    (``sim.avoid``, ``sim.size_spread``, ``fusion.multi.size_weight``, ``crop_model`` and
    ``body_radius_mm`` as given, else the defaults)."""
    cfg = Config(cameras=[SimCameraConfig(backend="sim", name=f"cam{i}") for i in range(n_cams)],
                 fps=fps)
    cfg.sim.seed = seed
    cfg.sim.animals = animals
    cfg.sim.avoid = avoid
    if size_spread is not None:
        cfg.sim.size_spread = size_spread
    if size_weight is not None:
        cfg.fusion.multi.size_weight = size_weight
    if crop_model is not None:
        cfg.fusion.multi.crop_model = crop_model
    if body_radius_mm is not None:
        cfg.fusion.multi.body_radius_mm = body_radius_mm
    cfg.fusion.multi.enabled = True
    cfg.fusion.multi.individuals = animals
    cfg.model.intra_op_threads = 1
    return cfg


def _match(xyz: np.ndarray, truth: np.ndarray, match_mm: float) -> np.ndarray:
    """Per true animal ``(N,)``: index into ``xyz`` ``(M, J, 3)`` of its track, -1 if none."""
    from livepose.fusion.assign import assign_nb

    N = truth.shape[0]
    out = np.full(N, -1, dtype=np.int64)
    if not len(xyz):
        return out
    d = np.linalg.norm(truth[:, None] - xyz[None], axis=-1)  # (N, M, J)
    with np.errstate(all="ignore"):
        med = np.nanmedian(np.where(np.isfinite(d), d, np.nan), axis=-1)
    med = np.where(np.isfinite(med), med, np.inf)
    col = assign_nb(np.ascontiguousarray(med), match_mm)
    return col


def count_swaps(ids: np.ndarray, hold: int = 1, events: list[tuple[int, int]] | None = None
                ) -> int:
    """Swaps in ``(T, N)`` per-frame track ids of each true animal (-1: unmatched): a change
    of a true animal's id against the id it last held, counted when the new id then holds
    for ``hold`` frame-sets in a row (``hold=1``: every change, MOT's IDSW). ``events``, if
    given, gets ``(frame, animal)`` of each."""
    swaps = 0
    for a in range(ids.shape[1]):
        col = ids[:, a]
        last, i, T = -1, 0, len(col)
        while i < T:
            v = int(col[i])
            if v < 0:
                i += 1
                continue
            run = 1
            while i + run < T and col[i + run] == v:
                run += 1
            if run >= hold or i + run == T:
                if last >= 0 and v != last:
                    swaps += 1
                    if events is not None:
                        events.append((i, a))
                last = v
            i += run
    return swaps


def live_skips(pipe_s: np.ndarray, period_s: float) -> int:
    """Frame-sets a live worker would skip: frame-set ``i`` arrives at ``i · period_s``; a
    free worker takes the newest one that has arrived and is busy for its ``pipe_s[i]``;
    the ones that arrived meanwhile, but the newest, are skipped (as
    ``inference/worker.py``'s ``skipped``)."""
    T = len(pipe_s)
    i, free, skipped = 0, 0.0, 0
    while i < T:
        free = max(free, i * period_s) + float(pipe_s[i])
        nxt = max(i + 1, int(np.floor(free / period_s + 1e-9)))
        skipped += min(nxt, T) - i - 1
        i = nxt
    return skipped


def tracking_cost(frames: int = 900, animals: int = 3, seed: int = 0) -> dict[str, Any]:
    """Association + tracking alone (``MultiTracker.step``) on the herd's true keypoints
    projected into the 4 sim cameras with 1 px noise and 10 % of the instances dropped:
    median and p99 µs per frame-set (no renderer, no model). Two paths: every instance
    associated across views (``median``, ``p99``: blobs, two-stage detections), and the
    crops' path (``owned``: each instance carries its individual's id, as the worker's
    3D-guided crops do once the individuals are known). The single-animal fusion
    (``Fuser.step``, 4 cameras × J) is timed alternately on the same views as the
    reference."""
    from livepose.acquisition.sim.herd import Herd
    from livepose.acquisition.sim.rig import make_rig
    from livepose.fusion.multitrack import MultiTracker

    cfg = config(animals)
    rig = make_rig(cfg.sim, cfg.camera_names)
    herd = Herd(animals, seed, cfg.sim.arena_diameter_mm / 2, cfg.sim.speed_mm_s,
                avoid=cfg.sim.avoid, size_spread=cfg.sim.size_spread)
    rng = np.random.default_rng(seed)
    views, whos = [], []
    for t in range(frames):
        kp = herd.keypoints(t / cfg.fps)
        J = kp.shape[1]
        per, who = [], []
        for cam in rig:
            uv = cam.project(kp.reshape(-1, 3)).reshape(animals, J, 2)
            pts = np.concatenate([uv + rng.normal(0, 1.0, uv.shape),
                                  np.full((animals, J, 1), 0.9)], axis=-1)
            keep = rng.permutation(animals)[: animals - int(rng.random() < 0.3)]
            per.append(np.ascontiguousarray(pts[keep], dtype=np.float32))
            who.append(keep)
        views.append(per)
        whos.append(who)
    from livepose.fusion.process import Fuser

    tracker = MultiTracker(rig, views[0][0].shape[1], cfg.fusion, cfg.fps)
    tracker.warmup()
    owned = MultiTracker(rig, views[0][0].shape[1], cfg.fusion, cfg.fps)
    owned.warmup()
    single = Fuser(rig, cfg)  # reference: the single-animal fusion of animal 0, same views
    single.warmup()
    us, us_own, ref = np.empty(frames), np.empty(frames), np.empty(frames)
    id_of = np.full(animals, -1, np.int64)  # each animal's id in ``owned`` once it has one
    for t, v in enumerate(views):  # alternated, so all see the same load
        one = np.full((len(rig), v[0].shape[1], 3), np.nan, dtype=np.float32)
        for c, inst in enumerate(v):
            if len(inst):
                one[c] = inst[0]
        owners = [id_of[w] for w in whos[t]]
        t0 = time.perf_counter()
        tracker.step(v, t / cfg.fps)
        t1 = time.perf_counter()
        ind = owned.step(v, t / cfg.fps, owners)
        t2 = time.perf_counter()
        single.step(one, t)
        t3 = time.perf_counter()
        us[t], us_own[t], ref[t] = 1e6 * (t1 - t0), 1e6 * (t2 - t1), 1e6 * (t3 - t2)
        if (id_of < 0).any() and len(ind.ids):  # who is who (the crops' owners)
            kp = herd.keypoints(t / cfg.fps)
            for i, x in zip(ind.ids.tolist(), ind.xyz, strict=True):
                d = np.nanmedian(np.linalg.norm(kp - x[None], axis=-1), axis=1)
                id_of[int(np.argmin(d))] = i
    skip = min(30, frames // 2)  # tracks born
    us, us_own, ref = us[skip:], us_own[skip:], ref[skip:]
    return {"median": float(np.median(us)), "p99": float(np.percentile(us, 99)),
            "owned": {"median": float(np.median(us_own)),
                      "p99": float(np.percentile(us_own, 99))},
            "single_animal_fusion_median": float(np.median(ref)),
            "ratio_to_single": float(np.median(us) / np.median(ref)),
            "frames": float(len(us))}


def run(json_path: Path | None, duration_s: float = 60.0, animals: int = 3,
        match_mm: float = 20.0, cost_frames: int = 900, route: str = "crops",
        progress: Callable[[str], None] | None = None, avoid: bool = True,
        size_spread: float | None = None, size_weight: float | None = None, seed: int = 0,
        crop_model: str | None = None, body_radius_mm: float | None = None,
        owners: bool = True) -> dict[str, Any]:
    """Run the benchmark; write the JSON to ``json_path`` when given and return it.
    ``owners=False``: the crops' instances are associated like any others (ablation)."""
    from livepose.acquisition.sim.animal import Rodent
    from livepose.acquisition.sim.herd import (
        BODY_LENGTH_MM,
        Herd,
        body_overlap,
        count_onsets,
        hidden_keypoints,
    )
    from livepose.acquisition.sim.render import SimRenderer
    from livepose.acquisition.sim.rig import make_rig
    from livepose.fusion.multitrack import MultiTracker
    from livepose.fusion.process import Fuser
    from livepose.inference.blobs import BlobDetector
    from livepose.inference.decode import decode_outputs
    from livepose.inference.engine import create_engine, engine_name
    from livepose.inference.instances import MaskedInstances
    from livepose.inference.manifest import resolve_model
    from livepose.inference.preprocess import Preprocessor
    from livepose.inference.track_crops import (
        TrackCrops,
        crop_engine,
        crops_supported,
        project_individuals,
    )

    say = progress or (lambda _m: None)
    use_owners = owners
    t_start = time.perf_counter()
    cfg = config(animals, seed=seed, avoid=avoid, size_spread=size_spread,
                 size_weight=size_weight, crop_model=crop_model, body_radius_mm=body_radius_mm)
    fps = cfg.fps
    T = round(duration_s * fps)
    rig = make_rig(cfg.sim, cfg.camera_names)
    C = len(rig)
    radius = cfg.sim.arena_diameter_mm / 2
    renderers = [SimRenderer(cam, cfg.sim, radius) for cam in rig]
    herd = Herd(animals, cfg.sim.seed, radius, cfg.sim.speed_mm_s, avoid=cfg.sim.avoid,
                size_spread=cfg.sim.size_spread)
    single = Rodent(cfg.sim.seed, radius, cfg.sim.speed_mm_s)  # = the herd's animal 0
    path, manifest = resolve_model(cfg.model)
    engine = create_engine(engine_name(cfg.model, path), path, manifest, cfg.model)
    J = len(manifest.keypoints)
    noise = manifest.noise.sigma_px if manifest.noise is not None else None
    detectors = [BlobDetector() for _ in range(C)]
    for r, det in zip(renderers, detectors, strict=True):
        det.learn([r.render(*herd.body(t), 10_000 + k)
                   for k, t in enumerate(np.linspace(0.0, duration_s, 25))])
    if route not in ("crops", "full"):
        raise ValueError(f"route must be 'crops' or 'full', got {route!r}")
    m = cfg.fusion.multi
    if route == "crops" and not crops_supported(engine):
        raise ValueError(f"{manifest.name}: fixed input size, no crops (route='full')")
    c_engine, c_manifest = crop_engine(cfg, engine, manifest) if route == "crops" else (
        engine, manifest)
    crops = TrackCrops(c_engine, c_manifest, detectors, m.individuals, size=m.crop_px,
                       reacquire_every=m.reacquire_every) if route == "crops" else None
    instances = MaskedInstances(engine, manifest, detectors)
    tracker = MultiTracker(rig, J, cfg.fusion, fps, pixel_noise_px=noise)
    tracker.warmup()
    fuser = Fuser(rig, cfg, pixel_noise_px=noise)
    fuser.warmup()
    pre1 = Preprocessor(manifest.input, C)
    pre1.warm_up()
    centres = np.stack([cam.center for cam in rig])
    N = animals
    truth = np.empty((T, N, J, 3))
    out3d = np.full((T, N, J, 3), np.nan)  # by track id (fixed mode: ids 0..N-1)
    err: list[np.ndarray] = []
    err1: list[np.ndarray] = []
    ids = np.full((T, N), -1, dtype=np.int64)
    close = np.zeros((T, N * (N - 1) // 2), dtype=bool)
    occl = np.zeros((T, C, N), dtype=bool)
    overlap = np.zeros(T)  # deepest overlap of two bodies (mm)
    cost_us = np.empty(T)
    pipe_ms = np.empty(T)
    dropped = 0
    n_instances = 0
    expected: list[np.ndarray | None] | None = None
    depths: list[np.ndarray | None] | None = None
    known_ids = np.zeros(0, np.int64)
    say(f"setup {time.perf_counter() - t_start:.1f} s; {T} frame-sets, {N} animals, {C} cameras")
    for t in range(T):
        ts = t / fps
        parts = herd.parts(ts)
        spheres = np.concatenate([p[0] for p in parts])
        albedo = np.concatenate([p[1] for p in parts])
        kp = np.stack([p[2] for p in parts])
        truth[t] = kp
        frames = [r.render(spheres, albedo, t) for r in renderers]
        mid = kp[:, 5, :2]
        close[t] = [np.linalg.norm(mid[a] - mid[b]) < BODY_LENGTH_MM
                    for a in range(N) for b in range(a + 1, N)]
        occl[t] = hidden_keypoints(parts, centres).sum(axis=-1) >= 3
        overlap[t] = body_overlap(parts)
        # multi-animal path
        t0 = time.perf_counter()
        owner_ids: list[np.ndarray] | None = None
        if crops is not None:
            pts_v = crops(frames, expected, depths)
            owner_ids = crops.owners(known_ids)
        else:
            views = instances(frames, expected)
            pts_v = [v.points for v in views]
            dropped += sum(v.dropped for v in views)
        t1 = time.perf_counter()
        ind = tracker.step(pts_v, ts, owner_ids if use_owners else None)
        t2 = time.perf_counter()
        # the worker projects fusion's individuals (with depths and body radii): timed too
        known_ids, known = tracker.expected_tracks()
        expected, depths = (project_individuals(list(rig.cameras), known, m.body_radius_mm)
                            if len(known) else (None, None))
        cost_us[t] = 1e6 * (t2 - t1)
        pipe_ms[t] = 1e3 * (time.perf_counter() - t0)
        n_instances += sum(len(p) for p in pts_v)
        for i, x in zip(ind.ids, ind.xyz, strict=True):
            if 0 <= i < N:
                out3d[t, i] = x
        col = _match(ind.xyz, kp, match_mm)
        for a in range(N):
            if col[a] >= 0:
                ids[t, a] = ind.ids[col[a]]
                err.append(np.linalg.norm(ind.xyz[col[a]] - kp[a], axis=-1))
        # single-animal reference: animal 0 alone, full frame, the live single-animal fusion
        s_sph, s_alb, s_kp = single.pose(ts)
        for c, r in enumerate(renderers):
            pre1.fill(c, r.render(s_sph, s_alb, t), "Mono8")
        pts = pre1.to_frame_pixels(decode_outputs(engine.run(pre1.batch(C)), manifest))
        fused = fuser.step(np.ascontiguousarray(pts, dtype=np.float32), t)
        err1.append(np.linalg.norm(fused.xyz - s_kp, axis=-1))
        if (t + 1) % 150 == 0:
            say(f"frame-set {t + 1}/{T}: {len(ind.ids)} individuals, "
                f"swaps so far {count_swaps(ids[:t + 1], hold=round(0.5 * fps))}")
    e = np.concatenate(err) if err else np.array([np.nan])
    e1 = np.concatenate(err1)
    e, e1 = e[np.isfinite(e)], e1[np.isfinite(e1)]
    gap = round(0.5 * fps)
    events: list[tuple[int, int]] = []
    swaps = count_swaps(ids, hold=round(0.5 * fps), events=events)
    mids = truth[:, :, 5, :2]  # what was going on at each swap: the nearest other animal
    near = [min(float(np.linalg.norm(mids[f, a] - mids[f, b])) for b in range(N) if b != a)
            for f, a in events] if N > 1 else []
    animal_s = N * T / fps
    res = {
        "benchmark": "multi",
        "scenario": {"animals": N, "cameras": C, "duration_s": duration_s, "fps": fps,
                     "frame_sets": T, "keypoints": J, "match_mm": match_mm,
                     "model": manifest.name, "crop_model": c_manifest.name,
                     "seed": seed, "owners": use_owners, "multi": cfg.fusion.multi.model_dump(mode="json")},
        "id_swaps": swaps,
        "animal_seconds": animal_s,
        "swaps_per_10min": swaps / animal_s * 600.0,
        "id_switches_raw": count_swaps(ids),
        "swap_events": [{"t_s": round(f / fps, 2), "animal": a, "nearest_mm": round(d, 1),
                         "overlap_mm": round(float(overlap[max(f - 15, 0):f + 1].max()), 1)}
                        for (f, a), d in zip(events, near, strict=True)],
        "close_encounters": int(sum(count_onsets(close[:, k], gap)
                                    for k in range(close.shape[1]))),
        "occlusions": int(sum(count_onsets(occl[:, c, a], gap)
                              for c in range(C) for a in range(N))),
        "error_mm_median": float(np.median(e)) if e.size else None,
        "error_mm_p95": float(np.percentile(e, 95)) if e.size else None,
        "single_animal_error_mm_median": float(np.median(e1)) if e1.size else None,
        "coverage_pct": float(100.0 * np.mean(ids >= 0)),
        "cost_us": {"median": float(np.median(cost_us)), "p99": float(np.percentile(cost_us, 99))},
        "cost_us_isolated": tracking_cost(cost_frames, animals=N) if cost_frames else None,
        "route": route,
        "herd": {"avoid": cfg.sim.avoid, "scales": [round(float(k), 4) for k in herd.scales],
                 **(herd.steering.counters if herd.steering is not None else {}),
                 "body_overlap_frames": int(np.sum(overlap > 5.0)),
                 "body_overlap_max_mm": float(overlap.max()) if T else 0.0},
        "pipeline_ms": {"median": float(np.median(pipe_ms)),
                        "p90": float(np.percentile(pipe_ms, 90)),
                        "p99": float(np.percentile(pipe_ms, 99))},
        "rate": {"period_ms": 1e3 / fps,
                 "ratio_to_period": float(np.median(pipe_ms) * fps / 1e3),
                 "frame_sets_per_s": float(1e3 / np.median(pipe_ms))},
        "over_budget": int(np.sum(pipe_ms > 1e3 / fps)),
        "skipped": live_skips(pipe_ms / 1e3, 1.0 / fps),
        "crops": dict(crops.counters) if crops is not None else None,
        "load_average": list(os.getloadavg()),
        "instances": n_instances, "merged_blobs_dropped": dropped,
        "tracker": tracker.counters, "id_log": len(tracker.id_log),
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    em, e1m = res["error_mm_median"], res["single_animal_error_mm_median"]
    res["error_ratio"] = em / e1m if isinstance(em, float) and isinstance(e1m, float) else None
    if json_path is not None:  # the tracks' 3D in DeepLabCut's multi-animal layout
        from livepose.formats.dlc_multi import write_dlc_multi_csv

        csv_path = Path(json_path).with_name(Path(json_path).stem + "_pose3d.csv")
        write_dlc_multi_csv(csv_path, out3d, [f"id{i}" for i in range(N)], manifest.keypoints,
                            coords=("x", "y", "z"))
        res["pose3d_csv"] = str(csv_path)
    return write_json(res, json_path)
