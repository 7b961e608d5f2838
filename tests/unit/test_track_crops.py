"""Several animals through 3D-guided crops (``inference/track_crops.py``): the bundled model
(real ONNX Runtime) on one crop per animal per view of sim renders of the herd, against the
herd's true keypoints; the masking of other animals inside a crop; the live-skip count of
``bench multi``."""

from __future__ import annotations

import numpy as np
import pytest

from livepose.acquisition.sim.herd import Herd
from livepose.acquisition.sim.render import SimRenderer
from livepose.acquisition.sim.rig import make_rig
from livepose.bench.multi import config
from livepose.core.config import SimConfig
from livepose.inference.blobs import BlobDetector
from livepose.inference.engine import create_engine, engine_name
from livepose.inference.manifest import resolve_model
from livepose.inference.track_crops import (
    TrackCrops,
    _capsule_owner_nb,
    _track_mask_nb,
    crops_supported,
    project_individuals,
)

T_CLOSE = 13.0  # s: two of the herd's animals ~37 mm apart (spine midpoints), side by side


@pytest.fixture(scope="module")
def scene():  # type: ignore[no-untyped-def]
    sim = SimConfig()
    rig = make_rig(sim, [f"cam{i}" for i in range(4)])
    herd = Herd(3, 0, 200.0, 120.0, avoid=False)  # the scene this test was built on
    rends = [SimRenderer(cam, sim, 200.0) for cam in rig]
    dets = [BlobDetector() for _ in rig]
    for r, d in zip(rends, dets, strict=True):
        d.learn([r.render(*herd.body(t), k) for k, t in enumerate(np.linspace(0, 20, 25))])
    cfg = config(3)
    path, manifest = resolve_model(cfg.model)
    engine = create_engine(engine_name(cfg.model, path), path, manifest, cfg.model)
    return rig, herd, rends, dets, engine, manifest


def _truth(rig, herd: Herd, t: float) -> list[np.ndarray]:  # type: ignore[no-untyped-def]
    kp = herd.keypoints(t)
    return [cam.project(kp.reshape(-1, 3)).reshape(kp.shape[0], kp.shape[1], 2) for cam in rig]


def _errors(views: list[np.ndarray], truth: list[np.ndarray]) -> np.ndarray:
    """Per view and animal: the median px error of the nearest instance (inf: none)."""
    err = np.full((len(views), truth[0].shape[0]), np.inf)
    for c, (v, uv) in enumerate(zip(views, truth, strict=True)):
        for a in range(uv.shape[0]):
            for inst in v:
                ok = inst[:, 2] > 0.3
                if ok.sum() >= 4:
                    e = float(np.median(np.linalg.norm(inst[ok, :2] - uv[a, ok], axis=1)))
                    err[c, a] = min(err[c, a], e)
    return err


def test_bundled_model_takes_any_input_size(scene) -> None:  # type: ignore[no-untyped-def]
    _rig, _herd, _r, _d, engine, manifest = scene
    assert crops_supported(engine)
    for h, w in ((256, 320), (128, 128), (144, 176)):
        (heat,) = engine.run(np.zeros((2, 1, h, w), np.float32))
        assert heat.shape == (2, len(manifest.keypoints), h // 4, w // 4)


def test_one_crop_per_animal_per_view_matches_truth(scene) -> None:  # type: ignore[no-untyped-def]
    rig, herd, rends, dets, engine, manifest = scene
    crops = TrackCrops(engine, manifest, dets, individuals=3, reacquire_every=1000)
    crops.count = 1  # not a detection frame-set: crops only
    frames = [r.render(*herd.body(T_CLOSE), 7) for r in rends]
    truth = _truth(rig, herd, T_CLOSE)
    views = crops(frames, truth)
    assert crops.counters["detections"] == 0 and crops.counters["blob_crops"] == 0
    n = [len(v) for v in views]
    assert sum(n) == crops.counters["track_crops"] >= 10  # 3 animals × 4 views, few hidden
    assert all(k <= 3 for k in n)
    err = _errors(views, truth)
    assert np.median(err[np.isfinite(err)]) < 2.5  # px
    assert np.isfinite(err).sum() >= 10


def test_without_individuals_blobs_are_cropped(scene) -> None:  # type: ignore[no-untyped-def]
    rig, herd, rends, dets, engine, manifest = scene
    crops = TrackCrops(engine, manifest, dets, individuals=3)
    t = 2.0  # the animals apart
    views = crops([r.render(*herd.body(t), 3) for r in rends], None)
    assert crops.counters["detections"] == 1 and crops.counters["track_crops"] == 0
    assert crops.detecting(0)  # nothing known: detect again
    err = _errors(views, _truth(rig, herd, t))
    assert np.isfinite(err).sum() >= 10 and np.median(err[np.isfinite(err)]) < 2.5


def test_other_animals_are_replaced_by_the_background(scene) -> None:  # type: ignore[no-untyped-def]
    rig, herd, rends, dets, _e, _m = scene
    truth = _truth(rig, herd, T_CLOSE)
    mids = np.array([[np.linalg.norm(uv[a, 5] - uv[b, 5]) for a, b in ((0, 1), (0, 2), (1, 2))]
                     for uv in truth])
    c, p = np.unravel_index(np.argmin(mids), mids.shape)
    a, b = ((0, 1), (0, 2), (1, 2))[p]  # the two animals nearest each other in view c
    frame = rends[c].render(*herd.body(T_CLOSE), 7)
    det = dets[c]
    assert det.background is not None and det.bg8 is not None
    x0, y0 = (np.floor(np.minimum(truth[c][a].min(0), truth[c][b].min(0))) - 10).astype(int)
    x0, y0 = max(x0, 0), max(y0, 0)
    h, w = min(160, frame.shape[0] - y0), min(200, frame.shape[1] - x0)
    sub = frame[y0:y0 + h, x0:x0 + w]
    kp = np.concatenate([truth[c][a], truth[c][b]]) - (x0, y0)
    owner = np.repeat(np.array([0, 1], np.int64), len(truth[c][a]))
    out, own = np.empty((h, w), np.uint8), np.empty((h, w), np.bool_)
    none = np.full((2, kp.shape[0] // 2), np.nan)  # no depths: the nearest keypoint splits
    n_own, _shared = _track_mask_nb(sub, det.background[y0:y0 + h, x0:x0 + w],
                                    det.bg8[y0:y0 + h, x0:x0 + w], det.threshold, det.open_px,
                                    det.join_px, kp, owner, 0, det.mask_margin_px, out, own,
                                    kp.reshape(2, -1, 2), none, none, np.zeros((0, 2), np.int64))
    assert n_own >= 100
    theirs = np.round(truth[c][b, [5, 6]] - (x0, y0)).astype(int)  # b's spine and hip
    bg = det.bg8[y0:y0 + h, x0:x0 + w]
    for x, y in theirs:
        assert not own[y, x] and out[y, x] == bg[y, x]
    mine = np.round(truth[c][a, [5, 6]] - (x0, y0)).astype(int)
    for x, y in mine:
        assert own[y, x] and out[y, x] == sub[y, x]


def test_overlapping_bodies_go_to_the_one_nearer_the_camera() -> None:
    kpa = np.array([[[0.0, 10.0], [40.0, 10.0]],     # individual 0: a bone along y = 10
                    [[20.0, 0.0], [20.0, 40.0]]])    # individual 1: a bone along x = 20
    rad = np.full((2, 2), 6.0)
    bones = np.array([[0, 1]], np.int64)
    both = np.ones(2, np.bool_)
    near0 = np.array([[100.0, 100.0], [200.0, 200.0]])  # 0 nearer the camera
    assert _capsule_owner_nb(20.0, 10.0, kpa, near0, rad, bones, both) == 0  # in both
    assert _capsule_owner_nb(20.0, 10.0, kpa, near0[::-1].copy(), rad, bones, both) == 1
    assert _capsule_owner_nb(20.0, 30.0, kpa, near0, rad, bones, both) == 1  # in 1 only
    assert _capsule_owner_nb(38.0, 22.0, kpa, near0, rad, bones, both) == 0  # nearest surface
    assert _capsule_owner_nb(20.0, 10.0, kpa, near0, rad, bones,
                             np.array([False, True])) == 1  # only the allowed
    assert _capsule_owner_nb(20.0, 10.0, kpa, near0, rad, bones[:0], both) == -1  # no bones


def test_crops_with_depths_match_truth(scene) -> None:  # type: ignore[no-untyped-def]
    rig, herd, rends, dets, engine, manifest = scene
    crops = TrackCrops(engine, manifest, dets, individuals=3, reacquire_every=1000)
    crops.count = 1
    frames = [r.render(*herd.body(T_CLOSE), 7) for r in rends]
    uv, dep = project_individuals(list(rig.cameras), herd.keypoints(T_CLOSE), 12.0)
    truth = _truth(rig, herd, T_CLOSE)
    for c in range(len(rig)):  # the projections are the cameras'; depths and radii plausible
        assert np.allclose(uv[c], truth[c])
        assert np.all((dep[c][..., 0] > 300) & (dep[c][..., 1] > 2) & (dep[c][..., 1] < 20))
    views = crops(frames, uv, dep)
    assert [len(o) for o in crops.last_owner] == [len(v) for v in views]
    err = _errors(views, truth)
    assert np.isfinite(err).sum() >= 10 and np.median(err[np.isfinite(err)]) < 2.5  # px


def test_live_skips_takes_the_newest_frame_set() -> None:
    from livepose.bench.multi import live_skips

    P = 1 / 30
    assert live_skips(np.full(100, 0.5 * P), P) == 0
    slow = np.full(10, 0.5 * P)
    slow[0] = 3.5 * P  # busy until 3.5 periods: sets 1 and 2 skipped, 3 taken
    assert live_skips(slow, P) == 2
    assert live_skips(np.full(90, 2.5 * P), P) > 50


def _square(src: np.ndarray, r: int, erode: bool, out: np.ndarray) -> None:
    """Reference: ``src`` eroded (or dilated) by a square of radius ``r``, pixel by pixel
    (erosion is False where the square leaves the image)."""
    h, w = src.shape
    pad = np.pad(src, r, constant_values=False)
    for y in range(h):
        for x in range(w):
            win = pad[y:y + 2 * r + 1, x:x + 2 * r + 1]
            out[y, x] = win.all() if erode else win.any()


def test_running_sum_morphology_equals_the_blob_detectors() -> None:
    """The blob detector's and the crops' opening (``square_nb``, running sums) against a
    pixel-by-pixel reference."""
    from livepose.inference.blobs import square_nb as _box_nb

    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = rng.integers(1, 30, 2)
        src = rng.random((h, w)) < rng.random()
        for r in (1, 3, 4):
            for erode in (True, False):
                a, b = np.empty((h, w), bool), np.empty((h, w), bool)
                _square(src, r, erode, a)
                _box_nb(src, r, erode, b)
                np.testing.assert_array_equal(a, b)


def test_crop_model_is_chosen_by_name_and_a_bad_one_is_named(scene, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from livepose.inference.manifest import ModelError
    from livepose.inference.track_crops import crop_engine, crop_model_path

    _rig, _herd, _r, _d, engine, manifest = scene
    cfg = config(3)
    assert crop_model_path(cfg) == "default-crops"  # auto, with the bundled default
    eng, man = crop_engine(cfg, engine, manifest)
    assert man.name == "sim-rodent-crops-v1" and eng is not engine and crops_supported(eng)
    cfg.fusion.multi.crop_model = "main"
    assert crop_engine(cfg, engine, manifest) == (engine, manifest)
    cfg.fusion.multi.crop_model = str(tmp_path / "nope.onnx")
    with pytest.raises(ModelError, match=r"fusion\.multi\.crop_model"):
        crop_engine(cfg, engine, manifest)
    # …and before any process starts (livepose check-config, the supervisor's preflight):
    # it crash-looped the worker before
    from livepose.runtime.supervisor import check_config_runnable

    cfg.fusion.multi.crop_model = "nonsense"
    with pytest.raises(ModelError, match=r"fusion\.multi\.crop_model 'nonsense'"):
        check_config_runnable(cfg)


def test_owners_are_the_crops_track_keys(scene) -> None:  # type: ignore[no-untyped-def]
    rig, herd, rends, dets, engine, manifest = scene
    crops = TrackCrops(engine, manifest, dets, individuals=3, reacquire_every=1000)
    crops.count = 1
    views = crops([r.render(*herd.body(T_CLOSE), 7) for r in rends], _truth(rig, herd, T_CLOSE))
    keys = np.array([40, 41, 42])
    own = crops.owners(keys)
    assert [len(o) for o in own] == [len(v) for v in views]
    for o, rows in zip(own, crops.last_owner, strict=True):
        assert np.array_equal(o, keys[rows])  # track crops only: every row named
    assert all((o == -1).all() for o in crops.owners(None))


def test_warm_up_compiles_what_live_read_only_frames_need(scene) -> None:  # type: ignore[no-untyped-def]
    """A live frame is read-only (a ring's slot), a separate numba specialisation from the
    writable arrays of a warm-up: after the worker's warm-up, detections and crops of
    read-only frames compile nothing (a fresh install compiled them mid-run, stalling the
    worker for seconds on a loaded host)."""
    from livepose.inference import blobs

    rig, herd, rends, dets, engine, manifest = scene
    BlobDetector.warm_up()
    crops = TrackCrops(engine, manifest, dets, individuals=3)
    kernels = [blobs.diff_open_nb, blobs.label_nb, blobs._blob_stats_nb,
               blobs._mask_others_nb, _track_mask_nb]
    before = [len(k.signatures) for k in kernels]
    frames = []
    for r in rends:
        f = r.render(*herd.body(2.0), 3)
        f.setflags(write=False)
        frames.append(f)
    crops(frames, None)  # a detection frame-set: blobs of read-only frames
    assert crops.counters["blob_crops"] > 0
    crops(frames, _truth(rig, herd, 2.0))  # the individuals' crops of read-only frames
    assert crops.counters["track_crops"] > 0
    assert [len(k.signatures) for k in kernels] == before, [k.signatures for k in kernels]
