"""Prediction files written as they stream: dense rows, readable by our readers and movement."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from livepose.core import protocol
from livepose.formats.anipose3d import read_anipose3d
from livepose.formats.dlc import read_dlc_csv
from livepose.formats.trc import read_trc
from livepose.kit.session import pose2d_path, pose3d_path
from livepose.recording.recorder import PredictionWriter
from livepose.recording.tools import _trim_torn_tail

CAMS = ["cam0", "cam1", "cam2"]
KP = ["snout", "tail"]


def stream(session: Path, ids: list[int]) -> tuple[PredictionWriter, dict[int, np.ndarray]]:
    rng = np.random.default_rng(0)
    w = PredictionWriter(session, CAMS, KP, first=0)
    xyz_by_id = {}
    for fid in ids:
        pts = rng.uniform(0, 100, (3, 2, 3)).astype(np.float32)
        pts[2, 1] = np.nan  # cam2 does not see the tail
        w.on_kp2d(protocol.Kp2d(frame_id=fid, cams=CAMS, model="m", points=pts))
        xyz = rng.normal(0, 50, (2, 3))
        xyz_by_id[fid] = xyz
        w.on_pose3d(protocol.Pose3d(
            frame_id=fid, xyz=xyz, variance=np.full((2, 3), 0.5),
            reproj=np.array([0.3, 0.7], np.float32), views=np.array([7, 3], np.uint16),
            status=np.ones(2, np.uint8)))
    return w, xyz_by_id


def test_rows_are_dense_in_frame_order_and_load_in_movement(tmp_path: Path) -> None:
    ids = [0, 2, 1, 3, 6, 5, 7]  # out of order (two workers) and frame 4 skipped
    w, xyz = stream(tmp_path, ids)
    w.close(fps=50.0)
    d2 = read_dlc_csv(pose2d_path(tmp_path, "cam0"))
    assert d2.keypoints == KP and d2.index == [str(i) for i in range(8)]
    assert np.isnan(d2.points[4]).all() and np.isfinite(d2.points[3]).all()
    assert np.isnan(read_dlc_csv(pose2d_path(tmp_path, "cam2")).points[0, 1, :2]).all()
    t3 = read_anipose3d(pose3d_path(tmp_path))
    assert list(t3.fnum) == list(range(8)) and t3.var is not None
    np.testing.assert_allclose(t3.xyz[6], xyz[6], rtol=1e-9)
    assert list(t3.ncams[0]) == [3, 2] and np.isnan(t3.xyz[4]).all()
    trc, names, fps = read_trc(tmp_path / "pose3d.trc")
    assert names == KP and fps == 50.0 and trc.shape == (8, 2, 3)
    np.testing.assert_allclose(trc[6], xyz[6], atol=1e-5)

    load_poses = pytest.importorskip("movement.io.load_poses")
    ds = load_poses.from_dlc_file(pose2d_path(tmp_path, "cam0"), fps=50)
    assert ds.position.shape[0] == 8
    ds3 = load_poses.from_anipose_file(pose3d_path(tmp_path), fps=50)
    assert ds3.position.shape[0] == 8
    np.testing.assert_allclose(ds3.position.values[6, :, :, 0].T, xyz[6], rtol=1e-9)


def test_unclosed_files_parse_after_a_torn_tail_is_cut(tmp_path: Path) -> None:
    w, _ = stream(tmp_path, list(range(200)))
    w.flush()  # a killed recorder: held-back rows lost, the rest on disk
    p = pose3d_path(tmp_path)
    with p.open("a") as f:
        f.write("1.5,2.")  # a torn row
    _trim_torn_tail(p)
    t3 = read_anipose3d(p)
    assert 100 < len(t3.fnum) <= 200 and list(t3.fnum) == list(range(len(t3.fnum)))
    assert read_dlc_csv(pose2d_path(tmp_path, "cam1")).points.shape[0] >= 100
