"""The simulated rig, animal and renderer."""

from __future__ import annotations

import numpy as np
import pytest

from livepose.acquisition.sim.animal import KEYPOINTS, SKELETON, Rodent
from livepose.acquisition.sim.render import SimRenderer
from livepose.acquisition.sim.rig import arena_of, make_rig
from livepose.core.config import SimConfig

NAMES = ["cam0", "cam1", "cam2", "cam3"]


@pytest.fixture(scope="module")
def sim() -> SimConfig:
    return SimConfig()


@pytest.fixture(scope="module")
def rig(sim: SimConfig):  # type: ignore[no-untyped-def]
    return make_rig(sim, NAMES)


@pytest.fixture(scope="module")
def animal(sim: SimConfig) -> Rodent:
    return Rodent(sim.seed, arena_of(sim).radius_mm, sim.speed_mm_s)


@pytest.fixture(scope="module")
def renderers(sim: SimConfig, rig) -> list[SimRenderer]:  # type: ignore[no-untyped-def]
    return [SimRenderer(c, sim, arena_of(sim).radius_mm) for c in rig.cameras]


# --------------------------------------------------------------------------- rig


def test_rig_is_deterministic(sim: SimConfig, rig) -> None:  # type: ignore[no-untyped-def]
    again = make_rig(sim, NAMES)
    assert again.names == NAMES
    for a, b in zip(rig.cameras, again.cameras, strict=True):
        np.testing.assert_array_equal(a.matrix, b.matrix)
        np.testing.assert_array_equal(a.dist, b.dist)
        np.testing.assert_array_equal(a.rvec, b.rvec)
        np.testing.assert_array_equal(a.tvec, b.tvec)
    other = make_rig(SimConfig(seed=1), NAMES)
    assert not np.array_equal(other[0].dist, rig[0].dist)


def test_rig_geometry(sim: SimConfig, rig) -> None:  # type: ignore[no-untyped-def]
    for i, cam in enumerate(rig.cameras):
        c = cam.center
        az = np.degrees(np.arctan2(c[1], c[0])) % 360
        assert az == pytest.approx((45 + 90 * i) % 360, abs=1e-6)
        assert cam.dist.shape == (5,)
        assert cam.dist[0] == pytest.approx(sim.distortion_k1, rel=0.06)
        assert cam.size == (sim.width, sim.height)


def test_every_camera_sees_the_whole_arena(sim: SimConfig, rig) -> None:  # type: ignore[no-untyped-def]
    rim = arena_of(sim).rim(360)
    for cam in rig.cameras:
        uv = cam.project(rim)
        assert np.all(np.isfinite(uv))
        assert np.all(uv >= 2) and np.all(uv[:, 0] <= sim.width - 3)
        assert np.all(uv[:, 1] <= sim.height - 3)


# --------------------------------------------------------------------------- animal


def test_keypoint_names_and_skeleton(animal: Rodent) -> None:
    assert len(KEYPOINTS) >= 12 and len(set(KEYPOINTS)) == len(KEYPOINTS)
    assert all(a in KEYPOINTS and b in KEYPOINTS for a, b in SKELETON)
    kp = animal.keypoints(3.0)
    assert kp.shape == (len(KEYPOINTS), 3) and kp.dtype == np.float64
    spheres, albedo = animal.body(3.0)
    assert spheres.shape[1] == 4 and albedo.shape == (spheres.shape[0],)
    np.testing.assert_array_equal(spheres[animal.keypoint_sphere_index, :3], kp)


def test_animal_is_deterministic_with_random_access(sim: SimConfig, animal: Rodent) -> None:
    twin = Rodent(sim.seed, arena_of(sim).radius_mm, sim.speed_mm_s)
    for t in (0.0, 777.7, 12.34):  # any order
        np.testing.assert_array_equal(twin.keypoints(t), animal.keypoints(t))
    assert not np.allclose(Rodent(5, 200, 120).keypoints(1.0), animal.keypoints(1.0))


def test_animal_stays_in_the_arena(sim: SimConfig, animal: Rodent) -> None:
    radius = arena_of(sim).radius_mm
    for t in np.random.default_rng(0).uniform(0, 2000, 400):
        spheres, _ = animal.body(float(t))
        rho = np.hypot(spheres[:, 0], spheres[:, 1]) + spheres[:, 3]
        assert rho.max() < radius
        assert np.all(spheres[:, 2] - spheres[:, 3] > -1.0)  # nothing sinks into the floor
        assert np.all(spheres[:, 2] < 120)


def test_animal_speed_is_plausible(sim: SimConfig, animal: Rodent) -> None:
    body = KEYPOINTS.index("spine_mid")
    steps, speeds = [], []
    for t0 in np.linspace(0, 600, 25):
        kp = np.stack([animal.keypoints(float(t)) for t in t0 + 0.01 * np.arange(60)])
        d = np.linalg.norm(np.diff(kp, axis=0), axis=-1)  # (59, J) mm per 10 ms
        steps.append(d.max())
        speeds.append(d[:, body] / 0.01)
    med = float(np.median(np.concatenate(speeds)))
    assert sim.speed_mm_s / 2 < med < sim.speed_mm_s * 2
    assert max(steps) < 25.0  # no teleporting: < 2.5 m/s for any keypoint


# --------------------------------------------------------------------------- renderer


def test_render_output(sim: SimConfig, animal: Rodent, renderers: list[SimRenderer]) -> None:
    r = renderers[0]
    spheres, albedo = animal.body(1.0)
    a = r.render(spheres, albedo, 7)
    assert a.dtype == np.uint8 and a.shape == (sim.height, sim.width)
    np.testing.assert_array_equal(a, r.render(spheres, albedo, 7))
    b = r.render(*animal.body(4.0), 7)
    assert np.abs(a.astype(int) - b).mean() > 0.2  # the animal moved
    assert not np.array_equal(a, r.render(spheres, albedo, 8))  # sensor noise changes
    assert a.std() > 10  # a scene, not a flat field


def test_keypoints_land_on_the_animal(animal: Rodent, rig, renderers) -> None:  # type: ignore[no-untyped-def]
    for t in (0.5, 9.0, 31.0):
        spheres, albedo, kp = animal.pose(t)
        for cam, r in zip(rig.cameras, renderers, strict=True):
            img = r.render(spheres, albedo, 0)
            depth = r.depth
            uv = np.round(cam.project(kp)).astype(int)
            for j in range(len(KEYPOINTS)):
                u, v = uv[j]
                dist = np.linalg.norm(kp[j] - cam.center)
                # the pixel is animal: its own sphere (whose front surface is nearer than its
                # centre), or something in front of it
                assert depth[v, u] <= dist, (t, cam.name, KEYPOINTS[j])
            body = np.isfinite(depth)
            assert img[body].mean() < img[~body].mean()  # a darker animal on a lighter floor
