"""Identities of several animals: the avoiding sim herd, the body-size cue and the control
command that fixes ids (its message; the live path is in
tests/integration/test_multi_animal.py)."""

from __future__ import annotations

import numpy as np
import pytest

from livepose.acquisition.sim.animal import Rodent
from livepose.acquisition.sim.herd import BODY_LENGTH_MM, Herd, body_overlap, count_onsets
from livepose.core.control import decode_ids_command, encode_ids_command, ids_request
from livepose.fusion.appearance import MIN_FRAMES, SizeCue


def test_avoiding_herd_meets_but_does_not_overlap() -> None:
    fps, T = 30.0, 450  # 15 s
    herd = Herd(3, 0, 200.0, 120.0, size_spread=0.06)
    free = Herd(3, 0, 200.0, 120.0, avoid=False, size_spread=0.06)
    ov, ov_free = np.zeros(T), np.zeros(T)
    close = np.zeros((T, 3), dtype=bool)
    seg = []
    for t in range(T):
        parts = herd.parts(t / fps)
        ov[t] = body_overlap(parts)
        ov_free[t] = body_overlap(free.parts(t / fps))
        mid = np.stack([p[2][5, :2] for p in parts])
        close[t] = [np.linalg.norm(mid[a] - mid[b]) < BODY_LENGTH_MM
                    for a, b in ((0, 1), (0, 2), (1, 2))]
        seg.append([np.linalg.norm(p[2][4] - p[2][5]) for p in parts])  # neck–spine_mid
    assert ov_free.max() > 15.0  # without avoidance they pass through each other …
    cut = herd.steering.counters["through"] if herd.steering else 0
    assert np.sum(ov > 5.0) <= 30 * cut  # … with it bodies only touch (a cut knot: ≤ 1 s)
    assert sum(count_onsets(close[:, k], 15) for k in range(3)) >= 4  # they still meet
    seg = np.asarray(seg)  # the body follows the head's trail: no stretching or folding
    assert seg.min() > 18.0 and seg.max() < 30.0
    # any t gives the same pose, whatever was asked before
    again = Herd(3, 0, 200.0, 120.0, size_spread=0.06)
    np.testing.assert_allclose(again.keypoints(7.3), herd.keypoints(7.3))


def test_sizes_scale_the_body_and_animal_zero_is_the_single_rig() -> None:
    herd = Herd(3, 0, 200.0, 120.0, avoid=False, size_spread=0.1)
    assert herd.scales[0] == 1.0 and np.all(np.abs(herd.scales - 1) <= 0.1)
    np.testing.assert_array_equal(herd.keypoints(3.0)[0], Rodent(0, 200.0, 120.0).keypoints(3.0))
    big = Rodent(0, 200.0, 120.0, scale=1.08)
    small = Rodent(0, 200.0, 120.0)
    length = [np.linalg.norm(r.keypoints(2.0)[0] - r.keypoints(2.0)[7]) for r in (small, big)]
    assert length[1] / length[0] == pytest.approx(1.08, rel=0.02)  # snout to tail base
    with pytest.raises(ValueError, match="size_spread"):
        Herd(2, 0, 200.0, 120.0, size_spread=0.5)


def test_size_cue_prefers_the_individual_of_that_size() -> None:
    rng = np.random.default_rng(0)
    animals = [Rodent(3, 200.0, 120.0), Rodent(3, 200.0, 120.0, scale=1.06)]
    cue = SizeCue(2, 14, weight=0.5)
    cue.warmup()
    slots = np.array([0, 1])
    far = np.array([[0.0, 0.0, 0.0], [500.0, 0.0, 0.0]])  # alone: each learns its size
    for f in range(MIN_FRAMES + 40):
        tri = np.stack([a.keypoints(f / 30) for a in animals]) + rng.normal(0, 1.0, (2, 14, 3))
        cue.costs(slots, tri)
        cue.learn(slots, np.array([0, 1]), far)
    right = 0
    for f in range(100, 160):  # later frames: the right pairing costs less than the swap
        tri = np.stack([a.keypoints(f / 30) for a in animals]) + rng.normal(0, 1.0, (2, 14, 3))
        c = cue.costs(slots, tri)
        right += c[0, 0] + c[1, 1] < c[0, 1] + c[1, 0]
    assert right >= 0.7 * 60  # 6 % apart, 1 mm noise: most frames on size alone
    # tracks that are close do not learn; a new track in a slot starts over
    before = cue.frames.copy()
    cue.learn(slots, np.array([0, 1]), np.zeros((2, 3)))
    np.testing.assert_array_equal(cue.frames, before)
    cue.reset(1)
    assert cue.frames[1] == 0 and not cue.costs(slots, tri)[1].any()
    assert not SizeCue(2, 14, weight=0.0).costs(slots, tri).any()  # off


def test_ids_command_round_trip_and_bad_input() -> None:
    msg = decode_ids_command(encode_ids_command("swap", 0, 2))
    assert msg is not None and (msg["cmd"], msg["a"], msg["b"]) == ("swap", 0, 2)
    assert decode_ids_command([b"ids", b"\x93garbage"]) is None
    assert decode_ids_command([b"record", encode_ids_command("set", 1, 0)[1]]) is None
    assert ids_request({"cmd": "set_id", "current": 2, "new": 0}) == ("set", 2, 0)
    with pytest.raises(ValueError, match="b must be an individual id"):
        ids_request({"cmd": "swap_ids", "a": 0, "b": -1})
    with pytest.raises(ValueError, match="same id"):
        ids_request({"cmd": "swap_ids", "a": 1, "b": 1})


def test_tracker_with_the_size_cue_keeps_identities() -> None:
    from livepose.acquisition.sim.rig import make_rig
    from livepose.bench.multi import count_swaps
    from livepose.core.config import FusionConfig, SimConfig
    from livepose.fusion.multitrack import MultiTracker

    rig = make_rig(SimConfig(), [f"cam{i}" for i in range(4)])
    cfg = FusionConfig()
    cfg.multi.enabled, cfg.multi.individuals, cfg.multi.size_weight = True, 2, 0.5
    tr = MultiTracker(rig, 14, cfg, 30.0)
    herd = Herd(2, 3, 200.0, 120.0, size_spread=0.08)
    rng = np.random.default_rng(1)
    T = 90
    ids = np.full((T, 2), -1)
    for t in range(T):
        kp = herd.keypoints(t / 30)
        views = []
        for cam in rig:
            uv = cam.project(kp.reshape(-1, 3)).reshape(2, 14, 2) + rng.normal(0, 1.0, (2, 14, 2))
            views.append(np.concatenate([uv, np.full((2, 14, 1), 0.9)], -1).astype(np.float32))
        ind = tr.step(views, t / 30)
        for i, x in zip(ind.ids, ind.xyz, strict=True):
            d = np.nanmedian(np.linalg.norm(kp - x[None], axis=-1), axis=1)
            if d.min() < 20:
                ids[t, int(np.argmin(d))] = i
    assert count_swaps(ids) == 0 and np.mean(ids[30:] >= 0) > 0.95
    assert (tr.size.frames[[t.slot for t in tr.tracks]] > 30).all()  # signatures learnt
