"""Several animals: assignment, cross-view association and 3D tracks with identities against
the sim herd's ground truth (2D = the true keypoints projected through the sim rig, with
pixel noise, dropped views and wrong instances)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from livepose.acquisition.sim.herd import Herd, count_onsets, hidden_keypoints
from livepose.acquisition.sim.rig import make_rig
from livepose.core.config import FusionConfig, SimConfig
from livepose.fusion.assign import assign
from livepose.fusion.associate import Associator
from livepose.fusion.multitrack import MultiTracker

FPS = 30.0


@pytest.fixture(scope="module")
def rig():  # type: ignore[no-untyped-def]
    return make_rig(SimConfig(), [f"cam{i}" for i in range(4)])


def _views(rig, kp: np.ndarray, rng: np.random.Generator, sigma: float = 1.0,  # type: ignore[no-untyped-def]
           drop: float = 0.0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per camera: instances ``(K, J, 3)`` in a shuffled order, and which animal each is."""
    N, J, _ = kp.shape
    views, who = [], []
    for cam in rig:
        uv = cam.project(kp.reshape(-1, 3)).reshape(N, J, 2) + rng.normal(0, sigma, (N, J, 2))
        keep = [a for a in range(N) if rng.random() >= drop]
        order = rng.permutation(keep) if keep else np.array([], dtype=int)
        pts = np.concatenate([uv, np.full((N, J, 1), 0.9)], axis=-1)[order]
        views.append(pts.astype(np.float32).reshape(len(order), J, 3))
        who.append(np.asarray(order, dtype=int))
    return views, who


def test_assign_is_optimal_and_rejects() -> None:
    rng = np.random.default_rng(1)
    for _ in range(200):
        n, m = (int(v) for v in rng.integers(1, 6, 2))
        c = rng.random((n, m)) * 10
        r, k = assign(c)
        best = min(sum(c[i, p[i]] for i in range(n)) for p in itertools.permutations(range(m), n)
                   ) if n <= m else min(sum(c[p[j], j] for j in range(m))
                                        for p in itertools.permutations(range(n), m))
        assert c[r, k].sum() == pytest.approx(best)
    r, k = assign(np.array([[1.0, 9.0], [9.0, 9.0]]), max_cost=5.0)
    assert r.tolist() == [0] and k.tolist() == [0]
    r, _ = assign(np.array([[np.nan, 7.0]]), max_cost=5.0)
    assert r.size == 0


def test_association_matches_truth_with_missing_views(rig) -> None:  # type: ignore[no-untyped-def]
    herd = Herd(3, 0, 200.0, 120.0)
    assoc = Associator(rig, 0.3, 12.0, 4)
    rng = np.random.default_rng(2)
    wrong = total = 0
    for t in np.arange(0, 20, 0.37):
        kp = herd.keypoints(float(t))
        views, who = _views(rig, kp, rng, sigma=1.5, drop=0.2)
        res = assoc(views)
        for mem in res.members:
            ids = {int(who[c][k]) for c, k in mem}
            wrong += len(ids) > 1
            total += 1
        # every animal seen by two or more cameras is one cluster of exactly its views
        for a in range(3):
            seen = {c for c in range(4) if a in who[c]}
            if len(seen) >= 2:
                cl = [m for m in res.members if {int(who[c][k]) for c, k in m} == {a}]
                assert len(cl) == 1 and {c for c, _ in cl[0]} == seen
    assert total > 100 and wrong == 0


def test_association_ignores_an_inconsistent_instance(rig) -> None:  # type: ignore[no-untyped-def]
    herd = Herd(2, 3, 200.0, 120.0)
    assoc = Associator(rig, 0.3, 12.0, 4)
    rng = np.random.default_rng(3)
    kp = herd.keypoints(4.0)
    views, _ = _views(rig, kp, rng)
    ghost = views[1][:1].copy()
    ghost[..., :2] += 40.0  # an instance of nobody (e.g. two animals' blob) in camera 1
    views[1] = np.concatenate([views[1], ghost])
    res = assoc(views)
    assert len(res.members) == 2
    assert all((1, len(views[1]) - 1) not in m for m in res.members)


def _track(rig, seconds: float, n: int, drop: float, seed: int,  # type: ignore[no-untyped-def]
           cfg: FusionConfig | None = None) -> tuple[np.ndarray, np.ndarray, MultiTracker]:
    herd = Herd(n, seed, 200.0, 120.0)
    if cfg is None:
        cfg = FusionConfig()
        cfg.multi.enabled = True
        cfg.multi.individuals = n
    tr = MultiTracker(rig, 14, cfg, FPS)
    rng = np.random.default_rng(seed)
    T = int(seconds * FPS)
    ids = np.full((T, n), -1)
    err = []
    for t in range(T):
        kp = herd.keypoints(t / FPS)
        views, _ = _views(rig, kp, rng, sigma=1.0, drop=drop)
        ind = tr.step(views, t / FPS)
        for i, x in zip(ind.ids, ind.xyz, strict=True):
            d = np.nanmedian(np.linalg.norm(kp - x[None], axis=-1), axis=1)
            a = int(np.argmin(d))
            if d[a] < 30:
                ids[t, a] = i
                err.append(d[a])
    return ids, np.asarray(err), tr


def test_tracks_keep_identities_through_missing_views(rig) -> None:  # type: ignore[no-untyped-def]
    from livepose.bench.multi import count_swaps

    ids, err, tr = _track(rig, 4.0, 3, drop=0.25, seed=5)
    assert count_swaps(ids) == 0
    assert sorted(set(ids[-1].tolist())) == [0, 1, 2]  # three individuals, ids 0..2
    assert np.mean(ids[30:] >= 0) > 0.95  # born within a second, then always there
    assert np.median(err) < 3.0  # mm, 1 px noise
    assert tr.counters["births"] == 3


def test_birth_needs_confirmation_and_death_after_timeout(rig) -> None:  # type: ignore[no-untyped-def]
    cfg = FusionConfig()
    cfg.multi.confirm_frames = 5
    cfg.multi.timeout_s = 0.5
    tr = MultiTracker(rig, 14, cfg, FPS)
    herd = Herd(1, 0, 200.0, 120.0)
    rng = np.random.default_rng(0)
    for t in range(4):
        views, _ = _views(rig, herd.keypoints(t / FPS)[:1], rng)
        assert len(tr.step(views, t / FPS).ids) == 0  # tentative: no id yet
    views, _ = _views(rig, herd.keypoints(4 / FPS)[:1], rng)
    assert tr.step(views, 4 / FPS).ids.tolist() == [0]
    empty = [np.zeros((0, 14, 3), np.float32)] * 4
    t = 5
    while t / FPS < 4 / FPS + 0.45:
        assert tr.step(empty, t / FPS).ids.tolist() == [0]  # coasting
        t += 1
    for _ in range(3):
        ind = tr.step(empty, t / FPS)
        t += 1
    assert len(ind.ids) == 0 and tr.counters["deaths"] == 1


def test_static_and_flat_figures_are_never_born(rig) -> None:  # type: ignore[no-untyped-def]
    cfg = FusionConfig()
    cfg.multi.min_motion_mm = 20.0
    cfg.multi.min_depth_ratio = 0.05
    tr = MultiTracker(rig, 14, cfg, FPS)
    herd = Herd(1, 0, 200.0, 120.0)
    statue = herd.keypoints(2.0)[0]
    picture = statue.copy()
    picture[:, 2] = 1.0  # flat on the floor
    picture[:, :2] += 150.0 * np.array([0.0, 1.0]) - picture[:, :2].mean(axis=0) * 0.5
    rng = np.random.default_rng(0)
    for t in range(60):
        moving = herd.keypoints(t / FPS)[0]
        kp = np.stack([statue, picture, moving])
        views, _ = _views(rig, kp, rng, sigma=0.5)
        ind = tr.step(views, t / FPS)
    assert len(ind.ids) == 1
    d = np.nanmedian(np.linalg.norm(ind.xyz[0] - herd.keypoints(59 / FPS)[0], axis=-1))
    assert d < 5.0
    assert tr.counters["rejected_static"] >= 1


def test_swap_and_set_ids_are_logged(rig) -> None:  # type: ignore[no-untyped-def]
    ids, _, tr = _track(rig, 1.0, 2, drop=0.0, seed=7)
    before = {int(i): tr._by_id(int(i)).slot for i in ids[-1]}  # type: ignore[union-attr]
    tr.swap_ids(0, 1)
    assert tr._by_id(0).slot == before[1]  # type: ignore[union-attr]
    tr.set_id(0, 1)
    assert tr._by_id(1).slot == before[1]  # type: ignore[union-attr]
    assert [e["action"] for e in tr.id_log][-2:] == ["swap", "set"]
    with pytest.raises(ValueError, match="individuals"):
        tr.set_id(0, 5)


def test_ground_truth_events() -> None:
    assert count_onsets(np.array([0, 1, 1, 0, 1, 0, 0, 0, 1], bool), 3) == 2
    herd = Herd(2, 0, 200.0, 120.0)
    parts = herd.parts(1.0)
    centre = np.array([[0.0, 0.0, 1000.0]])
    hid = hidden_keypoints(parts, centre)
    assert hid.shape == (1, 2, 14)
    # put animal 1 straight above animal 0: from above, animal 0 is hidden
    above = (parts[1][0].copy(), parts[1][1], parts[1][2])
    above[0][:, :3] = parts[0][0][:, :3].mean(axis=0) + (above[0][:, :3] - above[0][:, :3].mean(
        axis=0)) * 0 + np.array([0.0, 0.0, 200.0])
    above[0][:, 3] = 60.0
    hid = hidden_keypoints([parts[0], above], centre)
    assert hid[0, 0].sum() >= 10 and hid[0, 1].sum() == 0


def test_dlc_multi_animal_csv_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from livepose.formats import FormatError
    from livepose.formats.dlc_multi import read_dlc_multi_csv, write_dlc_multi_csv

    rng = np.random.default_rng(0)
    pts = rng.normal(size=(5, 2, 3, 3))
    pts[2, 1] = np.nan  # individual 1 not tracked in frame 2
    p = write_dlc_multi_csv(tmp_path / "m.csv", pts, ["id0", "id1"], ["a", "b", "c"],
                            coords=("x", "y", "z"))
    lines = p.read_text().splitlines()
    assert lines[1].startswith("individuals,id0,id0,id0,id0")
    back, ind, kps, co = read_dlc_multi_csv(p)
    assert ind == ["id0", "id1"] and kps == ["a", "b", "c"] and co == ["x", "y", "z"]
    np.testing.assert_allclose(back, pts, rtol=1e-9)
    (tmp_path / "bad.csv").write_text("scorer,a\nbodyparts,b\ncoords,x\n0,1\n")
    with pytest.raises(FormatError, match="multi-animal"):
        read_dlc_multi_csv(tmp_path / "bad.csv")


def test_pose3d_carries_individuals_and_rules_name_one_or_any() -> None:
    from livepose.closedloop.client import Pose
    from livepose.closedloop.rules import Rule, RuleEngine, Sphere
    from livepose.core import protocol
    from livepose.fusion.multitrack import Individuals, pose3d_fields

    J = 14
    xyz = np.zeros((2, J, 3))
    xyz[1] += 100.0  # individual 7 stands 100 mm away on every axis
    ind = Individuals(np.array([3, 7], np.int32), xyz, np.ones((2, J, 3)),
                      np.full((2, J), protocol.MEASURED, np.uint8), np.ones((2, J), np.uint16),
                      np.zeros((2, J), np.float32))
    msg = protocol.Pose3d(frame_id=5, **pose3d_fields(ind, J), t_trigger_ns=10**9)
    back = protocol.decode_strict(protocol.encode(msg))
    assert isinstance(back, protocol.Pose3d)
    np.testing.assert_array_equal(back.ind_ids, [3, 7])
    np.testing.assert_array_equal(back.xyz, xyz[0])  # a single-animal client sees id 3
    pose = Pose(5, back.xyz, back.variance, back.reproj, back.views, {}, 0, back,
                status=back.status)
    assert [i.id for i in pose.individuals] == [3, 7]
    assert pose.individual(7) is not None and pose.individual(4) is None
    fired: list[str] = []
    zone = Sphere([100.0, 100.0, 100.0], 10.0)
    rules = [Rule(f"r{w}", "snout", region=zone, action=lambda e: fired.append(e.rule),
                  individual=w) for w in (3, 7, "any")]
    RuleEngine([f"k{j}" if j else "snout" for j in range(J)], rules).update(pose)
    assert sorted(fired) == ["r7", "rany"]
    # an id read from a pose (a NumPy integer) names it too; a bool or a negative id does not
    fired.clear()
    kps = [f"k{j}" if j else "snout" for j in range(J)]
    rule = Rule("np7", "snout", region=zone, action=lambda e: fired.append(e.rule),
                individual=back.ind_ids[1])
    RuleEngine(kps, [rule]).update(pose)
    assert fired == ["np7"] and type(rule.individual) is int and rule.individual == 7
    from livepose.closedloop.rules import RuleError

    for bad in (True, -1, "all", 1.5):
        with pytest.raises(RuleError, match="individual must be a track id >= 0"):
            RuleEngine(kps, [Rule("bad", "snout", region=zone, action=print,
                                  individual=bad)])  # type: ignore[arg-type]
    # a version-2 message (no individuals) still decodes
    parts = protocol.encode(protocol.Pose3d(frame_id=1, **{k: v for k, v in pose3d_fields(
        ind, J).items() if not k.startswith("ind_")}))
    import msgpack

    head = msgpack.unpackb(parts[1])
    head["v"] = 2
    parts[1] = msgpack.packb(head)
    assert protocol.decode_strict(parts).ind_ids is None  # type: ignore[attr-defined]


def test_recorder_writes_individuals_in_the_multi_animal_layout(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from livepose.core import protocol
    from livepose.formats.dlc_multi import read_dlc_multi_csv
    from livepose.fusion.multitrack import Individuals, pose3d_fields
    from livepose.recording.recorder import PredictionWriter

    J, kps = 14, [f"k{j}" for j in range(14)]
    w = PredictionWriter(tmp_path, ["cam0", "cam1"], kps, first=10, individuals=3)
    for fid in (10, 11, 13):  # 12 skipped: an empty row
        xyz = np.stack([np.full((J, 3), fid * 1.0), np.full((J, 3), -fid * 1.0)])
        p2 = np.full((2, 2, J, 3), np.nan, np.float32)  # (N, C, J, 3)
        p2[0, 1] = [fid, 100 + fid, 0.8]  # id 2 seen by cam1 only
        p2[1, :] = [-fid, 200 + fid, 0.9]  # id 0 by both
        ind = Individuals(np.array([2, 0], np.int32), xyz, np.ones((2, J, 3)),
                          np.ones((2, J), np.uint8), np.ones((2, J), np.uint16),
                          np.zeros((2, J), np.float32), points2d=p2)
        w.on_pose3d(protocol.Pose3d(frame_id=fid, cams=["cam0", "cam1"],
                                    **pose3d_fields(ind, J)))
    w.close(30.0)
    for cam in ("cam0", "cam1"):  # the 2D instances by the ids fusion gave them
        p, who, names2, co2 = read_dlc_multi_csv(tmp_path / "pose2d_individuals" / f"{cam}.csv")
        assert who == ["id0", "id1", "id2"] and names2 == kps
        assert co2 == ["x", "y", "likelihood"] and p.shape == (4, 3, J, 3)
        assert p[3, 0, 0].tolist() == [-13.0, 213.0, pytest.approx(0.9)]
        assert np.isnan(p[2]).all() and np.isnan(p[:, 1]).all()
        if cam == "cam0":
            assert np.isnan(p[:, 2]).all()  # id 2 had no instance in cam0
        else:
            assert p[1, 2, 5].tolist() == [11.0, 111.0, pytest.approx(0.8)]
    pts, ind_names, names, co = read_dlc_multi_csv(tmp_path / "pose3d_individuals.csv")
    assert ind_names == ["id0", "id1", "id2"] and names == kps and co == ["x", "y", "z"]
    assert pts.shape == (4, 3, J, 3)
    assert pts[0, 2, 0, 0] == 10.0 and pts[0, 0, 0, 0] == -10.0  # by track id
    assert np.isnan(pts[0, 1]).all() and np.isnan(pts[2]).all()  # id1 absent; frame 12


def _multi_fuser(rig):  # type: ignore[no-untyped-def]
    """Live fusion in multi mode (2 individuals), a 2-animal herd and a seeded generator."""
    from livepose.core.config import Config, SimCameraConfig
    from livepose.fusion.process import Fuser

    cfg = Config(cameras=[SimCameraConfig(backend="sim", name=f"cam{i}") for i in range(4)])
    cfg.fusion.multi.enabled = True
    cfg.fusion.multi.individuals = 2
    return Fuser(rig, cfg), Herd(2, 0, 200.0, 120.0), np.random.default_rng(0)


def _fuse_instances(fuser, t: int, cams: list[str], views: list[np.ndarray],  # type: ignore[no-untyped-def]
                    owner: np.ndarray | None = None):
    """One kp2d of instances through the wire format and fusion."""
    from livepose.core import protocol

    msg = protocol.Kp2d(frame_id=t, cams=cams, model="m",
                        points=np.full((4, 14, 3), np.nan, np.float32),
                        inst_points=np.concatenate(views),
                        inst_cams=np.repeat(np.arange(4, dtype=np.uint8),
                                            [len(v) for v in views]), inst_owner=owner)
    return fuser.fuse(protocol.decode_strict(protocol.encode(msg)), 0)


def test_fusion_process_multi_mode_and_malformed_instances(rig) -> None:  # type: ignore[no-untyped-def]
    from livepose.core import protocol
    from livepose.fusion.process import FusionInputError

    fuser, herd, rng = _multi_fuser(rig)
    cams = [f"cam{i}" for i in range(4)][::-1]  # the worker's order may differ
    for t in range(8):
        views, _ = _views(rig, herd.keypoints(t / FPS), rng)
        views = views[::-1]
        pose = _fuse_instances(fuser, t, cams, views)
    assert pose.ind_ids is not None and sorted(pose.ind_ids.tolist()) == [0, 1]
    kp = herd.keypoints(7 / FPS)
    err = [np.nanmin([np.nanmedian(np.linalg.norm(x - k, axis=1)) for k in kp])
           for x in pose.ind_xyz]  # type: ignore[union-attr]
    assert max(err) < 3.0
    # each individual's 2D instances: one of the instances sent, in the fusion's camera order
    p2 = pose.ind_points2d
    assert p2 is not None and p2.shape == (2, 4, 14, 3)
    sent = views[::-1]  # the views were sent reversed, with the camera names
    for n in range(2):
        for c in range(4):
            assert any(np.allclose(p2[n, c], inst, equal_nan=True) for inst in sent[c])
    bad = protocol.Kp2d(frame_id=9, cams=cams, model="m",
                        points=np.full((4, 14, 3), np.nan, np.float32),
                        inst_points=np.zeros((2, 14, 3), np.float32),
                        inst_cams=np.array([0, 9], np.uint8))
    with pytest.raises(FusionInputError, match="instances"):
        fuser.fuse(bad, 0)


def test_calibration_drift_is_watched_in_multi_mode() -> None:
    """``fusion.multi``: the drift monitor reads the best-seen confirmed individual alone
    (no other near); camera 3 of a 1280×1024 rig (tests/unit/test_drift.py's) turned by
    0.5° after 4 s (two animals, their instances as a worker sends them) is named once,
    within 2 s of an animal being alone; the same frames without the turn raise nothing."""
    from livepose.bench.drift import turned
    from livepose.core import protocol
    from livepose.core.camera import CameraGroup
    from livepose.core.config import Config, SimCameraConfig
    from livepose.fusion.process import Fuser

    rig = make_rig(SimConfig(width=1280, height=1024, seed=3), [f"cam{i}" for i in range(4)])

    cfg = Config(cameras=[SimCameraConfig(backend="sim", name=f"cam{i}") for i in range(4)])
    cfg.fusion.multi.enabled = True
    cfg.fusion.multi.individuals = 2
    cams = [f"cam{i}" for i in range(4)]
    moved = CameraGroup([turned(c, 0.5) if i == 3 else c for i, c in enumerate(rig)])
    herd = Herd(2, 0, 200.0, 120.0)
    for turn in (True, False):
        fuser = Fuser(rig, cfg)
        rng = np.random.default_rng(3)
        events = []
        for f in range(round(8 * FPS)):
            truth = moved if turn and f >= 4 * FPS else rig
            views, _ = _views(truth, herd.keypoints(f / FPS), rng)
            msg = protocol.Kp2d(frame_id=f, cams=cams, model="m",
                                points=np.full((4, 14, 3), np.nan, np.float32),
                                inst_points=np.concatenate(views),
                                inst_cams=np.repeat(np.arange(4, dtype=np.uint8),
                                                    [len(v) for v in views]))
            fuser.fuse(msg, 0)
            events += fuser.check_drift()
        if turn:
            assert [e.camera for e in events] == ["cam3"], events
            # judged only while an animal is alone (here they touch from 4 s to ~7 s: an
            # animal near another has biased 2D, which read as a moved camera on a static
            # rig): named within 2 s of the first frame after the turn with one alone
            apart = next(f / FPS for f in range(round(4 * FPS), round(8 * FPS))
                         if _alone(herd.keypoints(f / FPS)))
            assert 4.0 <= events[0].frame_id / FPS <= apart + 2.0, (events, apart)
        else:
            assert events == []


def _alone(xyz: np.ndarray) -> bool:
    """Animal 0 of two has no keypoint of the other within half its length."""
    a, b = xyz[0], xyz[1]
    reach = 0.5 * np.max(np.linalg.norm(a[:, None] - a[None], axis=-1))
    return bool(np.min(np.linalg.norm(a[:, None] - b[None], axis=-1)) >= reach)


def _multi_tracker(rig, n: int) -> MultiTracker:  # type: ignore[no-untyped-def]
    """A tracker for ``n`` individuals (fixed count), default settings."""
    cfg = FusionConfig()
    cfg.multi.enabled = True
    cfg.multi.individuals = n
    return MultiTracker(rig, 14, cfg, FPS)


def _follow(tr: MultiTracker, rig, herd: Herd, rng: np.random.Generator,  # type: ignore[no-untyped-def]
            frames: int):
    """``frames`` frame-sets of every animal in every view; the last output."""
    for t in range(frames):
        ind = tr.step(_views(rig, herd.keypoints(t / FPS), rng)[0], t / FPS)
    return ind


def test_unseen_keypoints_wait_where_they_were_seen(rig) -> None:  # type: ignore[no-untyped-def]
    herd = Herd(1, 3, 200.0, 150.0)
    tr = _multi_tracker(rig, 1)
    T = int(2 * FPS)
    _follow(tr, rig, herd, np.random.default_rng(0), T)  # tracked while it runs
    last = herd.keypoints((T - 1) / FPS)[0]
    empty = [np.zeros((0, 14, 3), np.float32)] * 4
    for t in range(T, T + 12):  # 0.4 s unseen: no instance anywhere
        ind = tr.step(empty, t / FPS)
    assert list(ind.ids) == [0]
    moved = np.linalg.norm(herd.keypoints((T + 11) / FPS)[0] - last, axis=1)
    assert np.median(moved) > 45  # the animal went on (mm) …
    off = np.linalg.norm(ind.xyz[0] - last, axis=1)
    # … its track coasts for HOLD_AFTER_S (0.1 s), then waits where it was last seen
    assert np.nanmedian(off) < 25 and np.nanmax(off) < 40


def test_owned_instances_measure_their_individual_in_one_view(rig) -> None:  # type: ignore[no-untyped-def]
    herd = Herd(2, 0, 200.0, 120.0)
    results = {}
    for use_owners in (False, True):
        tr = _multi_tracker(rig, 2)
        rng = np.random.default_rng(1)
        T = int(1.5 * FPS)
        _follow(tr, rig, herd, rng, T)
        keys = {}  # which track (key) is which animal
        ind = tr.step(_views(rig, herd.keypoints(T / FPS), rng)[0], T / FPS)
        kp = herd.keypoints(T / FPS)
        assert ind.keys is not None
        for i, x in zip(ind.keys.tolist(), ind.xyz, strict=True):
            keys[int(np.argmin([np.nanmedian(np.linalg.norm(x - k, axis=1)) for k in kp]))] = i
        assert sorted(keys) == [0, 1]
        measured, err = [], []
        for t in range(T + 1, T + 16):  # each animal seen by one camera only (cam a)
            kp = herd.keypoints(t / FPS)
            views, who = _views(rig, kp, rng)
            one = [v[w == c] if c < 2 else v[:0]
                   for c, (v, w) in enumerate(zip(views, who, strict=True))]
            owners = [np.full(len(v), keys.get(c, -1), np.int64) for c, v in enumerate(one)]
            ind = tr.step(one, t / FPS, owners if use_owners else None)
            for a in range(2):
                n = list(ind.keys).index(keys[a])
                measured.append(bool((ind.views[n] & (1 << a)).any()))
                err.append(np.nanmedian(np.linalg.norm(ind.xyz[n] - kp[a], axis=1)))
        results[use_owners] = (np.mean(measured), np.median(err))
    assert results[False][0] == 0.0  # one view: no cluster, no measurement
    assert results[True][0] > 0.9  # owned: measured from its single view
    # one view fixes two directions of three: half a second later, half the error (mm)
    assert results[True][1] < 0.6 * results[False][1]


def test_fusion_process_reads_instance_owners(rig) -> None:  # type: ignore[no-untyped-def]
    from livepose.core import protocol
    from livepose.fusion.process import FusionInputError

    fuser, herd, rng = _multi_fuser(rig)
    cams = [f"cam{i}" for i in range(4)]
    for t in range(12):
        views, who = _views(rig, herd.keypoints(t / FPS), rng)
        owner = np.concatenate(who).astype(np.int32) if t >= 8 else None  # ids 0, 1 = animals
        pose = _fuse_instances(fuser, t, cams, views, owner)
    assert pose.ind_ids is not None and sorted(pose.ind_ids.tolist()) == [0, 1]
    bad = protocol.Kp2d(frame_id=13, cams=cams, model="m",
                        points=np.full((4, 14, 3), np.nan, np.float32),
                        inst_points=np.zeros((2, 14, 3), np.float32),
                        inst_cams=np.array([0, 1], np.uint8),
                        inst_owner=np.zeros(3, np.int32))
    with pytest.raises(FusionInputError, match="inst_owner"):
        fuser.fuse(bad, 0)


def test_an_owned_instance_the_gate_refuses_does_not_keep_a_track_seen(rig) -> None:  # type: ignore[no-untyped-def]
    herd = Herd(1, 2, 200.0, 120.0)
    tr = _multi_tracker(rig, 1)
    rng = np.random.default_rng(3)
    T = int(1 * FPS)
    ind = _follow(tr, rig, herd, rng, T)
    assert list(ind.ids) == [0]
    seen_at = tr.tracks[0].last_seen_s
    for t in range(T, T + 6):  # one view, its crop's keypoints 150 px off: every one gated
        views, _ = _views(rig, herd.keypoints(t / FPS), rng)
        bad = views[0].copy()
        bad[..., 0] += 150.0
        one = [bad] + [v[:0] for v in views[1:]]
        ind = tr.step(one, t / FPS, [np.zeros(len(bad), np.int64)] + [np.zeros(0)] * 3)
        assert int(ind.views.sum()) == 0  # refused
    assert tr.tracks[0].last_seen_s == seen_at  # not seen since


def test_a_swap_holds_while_crops_still_name_the_old_owners(rig) -> None:  # type: ignore[no-untyped-def]
    """The worker's crops name tracks by key, made from a pose3d one or two frame-sets old:
    a user's id swap in between must not be undone (ids would flip back)."""
    herd = Herd(2, 0, 200.0, 120.0)
    tr = _multi_tracker(rig, 2)
    rng = np.random.default_rng(4)
    T = int(1.5 * FPS)
    ind = _follow(tr, rig, herd, rng, T)
    kp = herd.keypoints((T - 1) / FPS)
    near = [int(np.argmin([np.nanmedian(np.linalg.norm(x - k, axis=1)) for k in kp]))
            for x in ind.xyz]
    assert ind.keys is not None and sorted(near) == [0, 1]
    key_of = {a: int(k) for a, k in zip(near, ind.keys, strict=True)}  # animal → track key
    id_of = {a: int(i) for a, i in zip(near, ind.ids, strict=True)}  # animal → id
    tr.swap_ids(0, 1)  # the user's fix
    for t in range(T, T + 15):
        views, who = _views(rig, herd.keypoints(t / FPS), rng)
        owners = [np.array([key_of[int(a)] for a in w], np.int64) for w in who]
        ind = tr.step(views, t / FPS, owners)
        kp = herd.keypoints(t / FPS)
        for i, x in zip(ind.ids.tolist(), ind.xyz, strict=True):
            a = int(np.argmin([np.nanmedian(np.linalg.norm(x - k, axis=1)) for k in kp]))
            assert i == 1 - id_of[a]  # swapped, and it stays swapped
