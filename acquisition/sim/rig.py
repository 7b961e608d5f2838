"""The simulated rig: cameras evenly spaced around a round arena.

World frame: millimetres, ``z`` up, floor at ``z = 0``, arena centre at the origin. Camera
``i`` of ``N`` sits at azimuth ``45° + i · 360°/N``, at ``camera_distance_mm`` from the
look-at point and ``camera_elevation_deg`` above the floor plane, looking at
:data:`LOOK_AT`. Intrinsics are realistic and deterministic: focal ``focal_px`` (default
``FOCAL_FRACTION × width``), a principal point a few pixels off centre, barrel distortion
``k1 = distortion_k1`` plus a small ``k2`` and tiny tangential terms, all drawn from
``sim.seed`` and the camera's index.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from livepose.core.camera import CameraGroup, CameraModel, rodrigues_inv
from livepose.core.config import SimConfig

LOOK_AT = np.array([0.0, 0.0, 20.0])
"""World point ``(3,)`` every sim camera looks at (mm)."""

FOCAL_FRACTION = 0.95
"""Default focal length as a fraction of the image width."""

WALL_HEIGHT_MM = 50.0
"""Height of the (clear acrylic) arena wall."""


@dataclass(frozen=True)
class Arena:
    """The round arena: floor disc of ``radius_mm`` at ``z = 0`` and a clear wall."""

    radius_mm: float
    wall_height_mm: float = WALL_HEIGHT_MM

    def rim(self, n: int = 72, z: float = 0.0) -> np.ndarray:
        """``n`` points ``(n, 3)`` on the rim circle at height ``z``."""
        a = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
        r = self.radius_mm
        return np.stack([r * np.cos(a), r * np.sin(a), np.full(n, z)], axis=1)


def arena_of(sim: SimConfig) -> Arena:
    """The arena described by ``sim``."""
    return Arena(radius_mm=0.5 * float(sim.arena_diameter_mm))


def look_at_pose(center: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World → camera rotation ``(3, 3)`` and translation ``(3,)`` for a camera at ``center``
    looking at ``target`` with the world ``z`` axis up in the image (OpenCV axes: x right,
    y down, z forward)."""
    fwd = np.asarray(target, float) - np.asarray(center, float)
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, [0.0, 0.0, 1.0])
    nr = np.linalg.norm(right)
    right = np.array([1.0, 0.0, 0.0]) if nr < 1e-9 else right / nr
    down = np.cross(fwd, right)
    R = np.stack([right, down, fwd])
    return R, -R @ np.asarray(center, float)


def make_camera(
    name: str,
    size: tuple[int, int],
    azimuth_deg: float,
    elevation_deg: float,
    distance_mm: float,
    focal_px: float,
    dist: Sequence[float],
    principal_offset: tuple[float, float] = (0.0, 0.0),
    target: np.ndarray = LOOK_AT,
    roll_deg: float = 0.0,
) -> CameraModel:
    """One camera on a sphere around ``target``.

    Parameters
    ----------
    name, size
        Camera name and image ``(width, height)``.
    azimuth_deg, elevation_deg, distance_mm
        Camera centre in spherical coordinates around ``target``.
    focal_px
        Focal length (``fx = fy``) in pixels.
    dist
        Distortion coefficients ``(5,)``: ``k1 k2 p1 p2 k3``.
    principal_offset
        Principal point offset from the image centre, pixels.
    target
        Look-at point ``(3,)``.
    roll_deg
        Rotation about the optical axis.
    """
    az, el = np.radians(azimuth_deg), np.radians(elevation_deg)
    c = np.asarray(target, float) + distance_mm * np.array(
        [np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)]
    )
    R, _ = look_at_pose(c, target)
    if roll_deg:
        ro = np.radians(roll_deg)
        Rz = np.array([[np.cos(ro), -np.sin(ro), 0.0], [np.sin(ro), np.cos(ro), 0.0], [0, 0, 1.0]])
        R = Rz @ R
    t = -R @ c
    w, h = size
    K = np.array(
        [
            [focal_px, 0.0, (w - 1) / 2.0 + principal_offset[0]],
            [0.0, focal_px, (h - 1) / 2.0 + principal_offset[1]],
            [0.0, 0.0, 1.0],
        ]
    )
    return CameraModel(
        name=name,
        size=(w, h),
        matrix=K,
        dist=np.asarray(dist, float),
        rvec=rodrigues_inv(R),
        tvec=t,
    )


def make_rig(sim: SimConfig, names: Sequence[str]) -> CameraGroup:
    """The simulated rig's cameras, in the order of ``names``.

    Parameters
    ----------
    sim
        Rig geometry, image size, optics and seed.
    names
        Camera names; camera ``i`` sits at azimuth ``45° + i · 360° / len(names)``.

    Returns
    -------
    CameraGroup
        ``len(names)`` cameras; deterministic given ``(sim, names)``.
    """
    if not names:
        raise ValueError("the sim rig needs at least one camera name")
    n = len(names)
    focal = float(sim.focal_px) if sim.focal_px is not None else FOCAL_FRACTION * sim.width
    cams = []
    for i, name in enumerate(names):
        rng = np.random.default_rng([int(sim.seed) & 0xFFFFFFFF, 7919, i])
        k1 = float(sim.distortion_k1) * (1.0 + rng.uniform(-0.05, 0.05))
        k2 = 0.25 * abs(float(sim.distortion_k1)) * (0.1 + 0.2 * rng.random())
        p1, p2 = 4e-4 * rng.standard_normal(2)
        dist = [k1, k2, float(p1), float(p2), 0.0]
        offset = (float(rng.uniform(-3.0, 3.0)), float(rng.uniform(-3.0, 3.0)))
        focal_i = focal * (1.0 + rng.uniform(-0.01, 0.01))
        cams.append(
            make_camera(
                name,
                (sim.width, sim.height),
                45.0 + i * 360.0 / n,
                float(sim.camera_elevation_deg),
                float(sim.camera_distance_mm),
                focal_i,
                dist,
                offset,
            )
        )
    return CameraGroup(cams)
