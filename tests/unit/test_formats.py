"""File formats: DeepLabCut / Lightning Pose 2D CSV (real eks-fly files), Anipose 3D CSV (read
back by movement), TRC."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from livepose.formats import FormatError
from livepose.formats.anipose3d import read_anipose3d, var_path, write_anipose3d
from livepose.formats.dlc import read_dlc_csv, write_dlc_csv
from livepose.formats.trc import read_trc, write_trc

FLY_KP = ["L1A", "L1B", "L2A", "L2B", "L3A", "L3B", "R1A", "R1B", "R2A", "R2B", "R3A", "R3B"]


def test_reads_the_eks_fly_csvs(eks_fly: Path) -> None:
    files = sorted(eks_fly.glob("*.csv"))
    assert len(files) == 9
    for f in files:
        pose = read_dlc_csv(f)
        assert pose.points.shape == (500, 12, 3) and pose.keypoints == FLY_KP
        assert pose.scorer == "heatmap_tracker" and pose.index[:2] == ["0", "1"]
        assert np.all(np.isfinite(pose.points)) and np.all((pose.points[..., 2] >= 0)
                                                           & (pose.points[..., 2] <= 1))
    first = np.loadtxt(files[0], delimiter=",", skiprows=3)[:, 1:].reshape(500, 12, 3)
    np.testing.assert_array_equal(read_dlc_csv(files[0]).points, first)


def test_dlc_roundtrip_with_missing_values(tmp_path: Path, eks_fly: Path) -> None:
    pose = read_dlc_csv(next(eks_fly.glob("*Cam-B*rng=1.csv")))
    pts = pose.points.copy()
    pts[3, 2] = np.nan
    pts[7, :, 2] = 0.0
    p = write_dlc_csv(tmp_path / "a.csv", pts, pose.keypoints, scorer="net")
    back = read_dlc_csv(p)
    np.testing.assert_allclose(back.points, pts, rtol=1e-9, equal_nan=True)
    assert back.keypoints == pose.keypoints and back.scorer == "net"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("a,b\n1,2\n", "scorer"),
        ("scorer,s,s\nindividuals,a,a\nbodyparts,k,k\ncoords,x,y\n", "multi-animal"),
        ("scorer,s,s,s\nbodyparts,k,k,k\ncoords,x,likelihood,y\n0,1,2,3\n", "coords row"),
        ("scorer,s,s,s\nbodyparts,k,k,k\ncoords,x,y,likelihood\n0,1,2\n", "row 4"),
        ("scorer,s,s,s\nbodyparts,k,k,k\ncoords,x,y,likelihood\n0,1,two,3\n", "non-numeric"),
        ("scorer,s,s,s,s,s,s\nbodyparts,k,k,k,k,k,k\ncoords,x,y,likelihood,x,y,likelihood\n",
         "repeated"),
    ],
)
def test_dlc_bad_files_are_clear_errors(tmp_path: Path, text: str, needle: str) -> None:
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(FormatError, match=needle):
        read_dlc_csv(p)
    with pytest.raises(FormatError, match="not found"):
        read_dlc_csv(tmp_path / "nope.csv")


def test_labelled_data_without_likelihood(tmp_path: Path) -> None:
    p = tmp_path / "labels.csv"
    p.write_text("scorer,me,me,me,me\nbodyparts,a,a,b,b\ncoords,x,y,x,y\n"
                 "labeled-data/v/img0.png,1,2,,\n")
    pose = read_dlc_csv(p)
    np.testing.assert_array_equal(pose.points[0, 0], [1, 2, 1])
    assert np.isnan(pose.points[0, 1, 2]) and pose.index == ["labeled-data/v/img0.png"]


def _table(T: int = 6, J: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(T, J, 3)) * 50
    xyz[2, 1] = np.nan
    ncams = np.full((T, J), 3)
    ncams[2, 1] = 0
    err = rng.uniform(0, 2, (T, J))
    var = rng.uniform(0.1, 1, (T, J, 3))
    return xyz, ncams, err, var


def test_anipose3d_roundtrip(tmp_path: Path) -> None:
    xyz, ncams, err, var = _table()
    names = ["snout", "left_ear", "tail_base"]
    p = write_anipose3d(tmp_path / "pose3d.csv", xyz, names, error=err, ncams=ncams,
                        score=np.full(ncams.shape, 0.9), var=var, fnum=np.arange(6) + 10)
    assert var_path(p).name == "pose3d_var.csv" and var_path(p).exists()
    head = p.read_text().splitlines()[0].split(",")
    assert head[:6] == ["snout_x", "snout_y", "snout_z", "snout_error", "snout_ncams",
                        "snout_score"]
    assert head[-1] == "fnum" and "M_00" in head and "center_2" in head
    t = read_anipose3d(p)
    assert t.keypoints == names
    np.testing.assert_allclose(t.xyz, xyz, rtol=1e-9, equal_nan=True)
    assert t.ncams[2, 1] == 0 and np.isnan(t.error[2, 1]) and t.score[2, 1] == 0
    np.testing.assert_array_equal(t.fnum, np.arange(6) + 10)
    assert t.var is not None
    np.testing.assert_allclose(t.var, var, rtol=1e-9)


def test_movement_reads_our_anipose_csv(tmp_path: Path) -> None:
    load_poses = pytest.importorskip("movement.io.load_poses")
    xyz, ncams, err, var = _table()
    names = ["snout", "left_ear", "tail_base"]
    p = write_anipose3d(tmp_path / "pose3d.csv", xyz, names, error=err, ncams=ncams, var=var)
    ds = load_poses.from_anipose_file(p, fps=100)
    pos = ds.position.sel(individuals="id_0").transpose("time", "keypoints", "space").values
    order = [names.index(k) for k in ds.keypoints.values]  # movement sorts keypoints
    np.testing.assert_allclose(pos, xyz[:, order], rtol=1e-9, equal_nan=True)
    assert ds.position.sizes["time"] == 6


def test_trc_roundtrip(tmp_path: Path) -> None:
    xyz, *_ = _table()
    p = write_trc(tmp_path / "m.trc", xyz, ["a", "b", "c"], fps=60.0)
    lines = p.read_text().splitlines()
    assert lines[0].startswith("PathFileType\t4\t(X/Y/Z)\tm.trc")
    assert lines[2].split("\t")[:5] == ["60.00", "60.00", "6", "3", "mm"]
    assert lines[3].split("\t")[:3] == ["Frame#", "Time", "a"]
    assert lines[6].split("\t")[:2] == ["1", "0.000000"]
    back, names, fps = read_trc(p)
    assert names == ["a", "b", "c"] and fps == 60.0
    np.testing.assert_allclose(back, xyz, atol=1e-6, equal_nan=True)
    # y up: X, Y, Z ← y, z, x
    np.testing.assert_allclose(np.array(lines[6].split("\t")[2:5], float), xyz[0, 0, [1, 2, 0]],
                               atol=1e-6)
    # in metres the same nanometre resolution: a fly's micrometre steps survive
    fly = xyz * 1e-3 + 3.4e-3
    back, *_ = read_trc(write_trc(tmp_path / "fly.trc", fly, ["a", "b", "c"], fps=60.0,
                                  units="m"))
    np.testing.assert_allclose(back, fly, atol=1e-9, equal_nan=True)
