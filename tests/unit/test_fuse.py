"""``livepose fuse`` (fusion/offline.py) on the real eks-fly recordings and on broken
inputs: every bad input is a one-line UserError or a NaN output flagged with ncams = 0."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from livepose.core.calibration import CalibrationError
from livepose.core.errors import UserError
from livepose.formats import FormatError
from livepose.formats.anipose3d import read_anipose3d
from livepose.formats.dlc import read_dlc_csv, write_dlc_csv
from livepose.formats.trc import read_trc
from livepose.fusion.offline import FuseInputError, assign_files, fuse_files

CAMS = ["Cam-A", "Cam-B", "Cam-C"]


def small_copy(eks_fly: Path, dst: Path, frames: int = 80, members: int = 1) -> Path:
    """The first ``frames`` frames of ``members`` ensemble members per camera, in ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    for cam in CAMS:
        for m in range(members):
            src = next(eks_fly.glob(f"*_{cam}_*rng={m}.csv"))
            pose = read_dlc_csv(src)
            write_dlc_csv(dst / src.name, pose.points[:frames], pose.keypoints, pose.scorer)
    shutil.copy(eks_fly / "calibration.toml", dst / "calibration.toml")
    return dst


def test_fuse_eks_fly_ensemble(eks_fly: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = fuse_files(eks_fly / "calibration.toml", CAMS, [eks_fly], out, filter="ekf",
                     progress=False, fps=100.0, units="mm")
    assert res["frames"] == 500 and len(res["keypoints"]) == 12
    assert all(len(v) == 3 for v in res["files"].values())  # 3 ensemble members per camera
    assert res["measured_pct"] > 95 and res["mean_reproj_px"] < 3.0
    t = read_anipose3d(out / "pose3d.csv")
    assert t.xyz.shape == (500, 12, 3) and t.var is not None
    assert np.all(t.ncams[np.isfinite(t.xyz[..., 0])] <= 3)
    assert np.all(t.var[np.isfinite(t.var)] > 0)
    xyz, names, fps = read_trc(out / "pose3d.trc")
    assert names == t.keypoints and fps == 100.0
    np.testing.assert_allclose(xyz, t.xyz, atol=1e-5, equal_nan=True)
    load_poses = pytest.importorskip("movement.io.load_poses")
    ds = load_poses.from_anipose_file(out / "pose3d.csv", fps=100)
    assert ds.position.sizes["keypoints"] == 12


@pytest.mark.parametrize("flt", ["none", "kf", "ekf"])
def test_missing_views_give_nan_or_ncams_0(eks_fly: Path, tmp_path: Path, flt: str) -> None:
    d = small_copy(eks_fly, tmp_path / "in")
    for cam in ("Cam-B", "Cam-C"):  # keypoint 0 seen by Cam-A only in frames 30-69
        f = next(d.glob(f"*{cam}*.csv"))
        pose = read_dlc_csv(f)
        pose.points[30:70, 0, :2] = np.nan
        write_dlc_csv(f, pose.points, pose.keypoints)
    f = next(d.glob("*Cam-A*.csv"))  # all-zero confidence: Cam-A never counts for keypoint 1
    pose = read_dlc_csv(f)
    pose.points[:, 1, 2] = 0.0
    write_dlc_csv(f, pose.points, pose.keypoints)
    fuse_files(d / "calibration.toml", CAMS, [d], tmp_path / "out", filter=flt, progress=False, fps=100.0, units="mm")
    t = read_anipose3d(tmp_path / "out" / "pose3d.csv")
    if flt == "ekf":  # the EKF updates from the single view (along its ray)
        assert np.all(t.ncams[30:70, 0] == 1) and np.all(t.error[30:70, 0] < 5.0)
    else:
        assert np.all(t.ncams[30:70, 0] == 0) and np.all(np.isnan(t.error[30:70, 0]))
    if flt == "none":
        assert np.all(np.isnan(t.xyz[30:70, 0]))
    else:  # filtered: predicted or single-view updated, never NaN within max_gap_s
        assert np.all(np.isfinite(t.xyz[30:70, 0]))
    assert np.all(t.ncams[:, 1] <= 2) and np.all(t.ncams[:30, 0] == 3)
    assert np.all(np.isnan(t.xyz) == (np.isnan(t.xyz[..., :1])))  # whole rows NaN or none


def test_different_lengths_are_refused(eks_fly: Path, tmp_path: Path) -> None:
    d = small_copy(eks_fly, tmp_path / "in")
    f = next(d.glob("*Cam-C*.csv"))
    pose = read_dlc_csv(f)
    write_dlc_csv(f, pose.points[:50], pose.keypoints)
    with pytest.raises(FuseInputError, match="50 frames"):
        fuse_files(d / "calibration.toml", CAMS, [d], tmp_path / "out", progress=False, fps=100.0, units="mm")


def test_different_keypoints_are_refused(eks_fly: Path, tmp_path: Path) -> None:
    d = small_copy(eks_fly, tmp_path / "in")
    f = next(d.glob("*Cam-B*.csv"))
    pose = read_dlc_csv(f)
    write_dlc_csv(f, pose.points[:, 1:], pose.keypoints[1:])
    with pytest.raises(FuseInputError, match=r"keypoints differ.*missing \['L1A'\]"):
        fuse_files(d / "calibration.toml", CAMS, [d], tmp_path / "out", progress=False, fps=100.0, units="mm")


def test_reordered_keypoints_are_fine(eks_fly: Path, tmp_path: Path) -> None:
    d = small_copy(eks_fly, tmp_path / "in", frames=20)
    ref = fuse_files(d / "calibration.toml", CAMS, [d], tmp_path / "o1", filter="none",
                     progress=False, fps=100.0, units="mm")
    f = next(d.glob("*Cam-B*.csv"))
    pose = read_dlc_csv(f)
    write_dlc_csv(f, pose.points[:, ::-1], pose.keypoints[::-1])
    fuse_files(d / "calibration.toml", CAMS, [d], tmp_path / "o2", filter="none", progress=False, fps=100.0, units="mm")
    a = read_anipose3d(tmp_path / "o1" / "pose3d.csv")
    b = read_anipose3d(tmp_path / "o2" / "pose3d.csv")
    np.testing.assert_allclose(a.xyz, b.xyz, rtol=1e-9)
    assert ref["keypoints"] == a.keypoints


def test_calibration_must_have_the_cameras(eks_fly: Path, tmp_path: Path) -> None:
    d = small_copy(eks_fly, tmp_path / "in", frames=10)
    src = next(d.glob("*Cam-C*.csv"))
    shutil.copy(src, d / src.name.replace("Cam-C", "Cam-X"))
    with pytest.raises(CalibrationError, match=r"\['Cam-X'\].*not in the calibration"):
        fuse_files(d / "calibration.toml", ["Cam-A", "Cam-B", "Cam-X"], [d], tmp_path / "o",
                   progress=False, fps=100.0, units="mm")


def test_file_assignment_errors(eks_fly: Path, tmp_path: Path) -> None:
    d = small_copy(eks_fly, tmp_path / "in", frames=5)
    with pytest.raises(FuseInputError, match=r"no CSV for camera\(s\) \['Cam-D'\]"):
        assign_files([d], [*CAMS, "Cam-D"])
    other = tmp_path / "other.csv"
    shutil.copy(next(d.glob("*Cam-A*.csv")), other)
    with pytest.raises(FuseInputError, match="contains none of the camera names"):
        assign_files([d, other], CAMS)
    with pytest.raises(FuseInputError, match="no such file"):
        assign_files([tmp_path / "missing"], CAMS)
    with pytest.raises(FuseInputError, match="several cameras"):
        assign_files([next(d.glob("*Cam-A*.csv"))], ["Cam-A", "fly4_0_R1C24_Cam"[-5:]])
    got = assign_files([d], ["Cam", "Cam-A"])  # the longest matching name wins
    assert len(got["Cam-A"]) == 1 and len(got["Cam"]) == 2
    (tmp_path / "empty").mkdir()
    with pytest.raises(FuseInputError, match=r"no \.csv files"):
        assign_files([tmp_path / "empty"], CAMS)


def test_a_broken_csv_is_a_user_error(eks_fly: Path, tmp_path: Path) -> None:
    d = small_copy(eks_fly, tmp_path / "in", frames=5)
    next(d.glob("*Cam-A*.csv")).write_text("not,a,dlc,file\n")
    with pytest.raises(FormatError, match="scorer"):
        fuse_files(d / "calibration.toml", CAMS, [d], tmp_path / "o", progress=False, fps=100.0, units="mm")
    assert issubclass(FormatError, UserError) and issubclass(FuseInputError, UserError)


def test_bad_options(eks_fly: Path, tmp_path: Path) -> None:
    d = small_copy(eks_fly, tmp_path / "in", frames=5)
    with pytest.raises(FuseInputError, match="fps"):
        fuse_files(d / "calibration.toml", CAMS, [d], tmp_path / "o", fps=0.0, progress=False,
                   units="mm")
    with pytest.raises(FuseInputError, match="--fps"):  # the CSVs do not say their rate
        fuse_files(d / "calibration.toml", CAMS, [d], tmp_path / "o", progress=False,
                   units="mm")
    with pytest.raises(UserError, match="calibration_units"):  # nor does this calibration
        fuse_files(d / "calibration.toml", CAMS, [d], tmp_path / "o", progress=False, fps=100.0)
    with pytest.raises(FuseInputError, match="filter"):
        fuse_files(d / "calibration.toml", CAMS, [d], tmp_path / "o", filter="ukf",
                   progress=False, fps=100.0, units="mm")


def test_fuser_fits_live_frame_geometry(eks_fly: Path) -> None:
    """kp2d frame sizes: padding is accepted with K unchanged; a size no ROI or binning
    explains stops fusion with a one-line CalibrationError naming the camera."""
    from livepose.core import protocol
    from livepose.core.calibration import CalibrationError, read_calibration
    from livepose.core.config import Config, SimCameraConfig
    from livepose.fusion.process import Fuser

    cams = read_calibration(eks_fly / "calibration.toml", CAMS)
    cfg = Config(cameras=[SimCameraConfig(backend="sim", name=n) for n in CAMS], fps=100.0)
    fuser = Fuser(cams, cfg, "mm")
    pts = np.full((3, 2, 3), np.nan, np.float32)
    w, h = cams[0].size

    def kp2d(sizes: list[list[int]]) -> protocol.Kp2d:
        return protocol.Kp2d(frame_id=0, cams=CAMS, model="m", points=pts, sizes=sizes)

    fuser.fuse(kp2d([[w + 8, h], [*cams[1].size], [*cams[2].size]]), 0)
    assert "padding" in fuser.geometry_notes["Cam-A"]
    assert fuser.cameras[0] is fuser.calibrated[0]  # K unchanged
    with pytest.raises(CalibrationError, match=r"camera 'Cam-B'.*no ROI or binning"):
        fuser.fuse(kp2d([[w + 8, h], [w // 2, h // 2], [*cams[2].size]]), 1)
