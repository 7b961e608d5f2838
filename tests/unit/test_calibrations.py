"""Calibration import from other tools (livepose.formats.calibrations / qualisys); no
Pose2Sim needed: its conversion of the demo file is pinned in the test where compared."""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from livepose.acquisition.sim.rig import make_camera
from livepose.core.calibration import CalibrationError, read_calibration_units, write_calibration
from livepose.core.camera import CameraModel, rodrigues, rodrigues_inv
from livepose.formats import calibrations as ci
from livepose.formats import qualisys

_HERE = Path(__file__).resolve()
# repo/tests/unit/this.py -> repo's sibling "shared"; scratch/calib/this.py -> /work/shared
_SHARED = next(
    (c for c in (_HERE.parents[2].parent / "shared", _HERE.parents[2] / "shared") if c.is_dir()),
    None,
)
QCA = (
    None
    if _SHARED is None
    else _SHARED / "data" / "pose2sim-demo" / "calibration" / "Calib.qca.txt"
)


@pytest.fixture
def qca() -> Path:
    if QCA is None or not QCA.exists():
        pytest.skip("../shared/data/pose2sim-demo is not present")
    return QCA


def _cam(name: str = "c0", dist=(-0.05, 0.12, 0.001, -0.0007, 0.01)) -> CameraModel:
    return CameraModel(
        name=name,
        size=(1088, 1920),
        matrix=np.array([[1650.0, 0.0, 530.3], [0.0, 1652.5, 951.7], [0.0, 0.0, 1.0]]),
        dist=np.array(dist, dtype=float),
        rvec=np.array([1.2, -0.9, 0.4]),
        tvec=np.array([120.0, -340.0, 3900.0]),
    )


def _points_in_view(cam: CameraModel, n: int = 400, seed: int = 0) -> np.ndarray:
    """World points in front of ``cam`` whose pixels fall inside its image."""
    rng = np.random.default_rng(seed)
    w, h = cam.size
    uv = rng.uniform([0, 0], [w - 1, h - 1], size=(n, 2))
    xy = cam.undistort(uv)
    depth = rng.uniform(1000.0, 6000.0, size=(n, 1))
    Xc = np.hstack([xy, np.ones((n, 1))]) * depth
    return (Xc - cam.tvec) @ cam.R  # R.T @ (Xc - t)


# ---------------------------------------------------------------- Qualisys, real file


def test_qualisys_demo_file(qca: Path) -> None:
    cams, unit = qualisys.read_qualisys(qca)
    assert unit == "mm"
    assert [c.name for c in cams] == ["cam01", "cam02", "cam03", "cam04"]
    root = ET.parse(qca).getroot()
    for c, el in zip(cams, root.findall("cameras/camera"), strict=False):
        assert c.size == (1088, 1920)
        intr = el.find("intrinsic")
        assert c.matrix[0, 0] == pytest.approx(float(intr.get("focalLengthU")) / 64)
        assert c.matrix[1, 2] == pytest.approx(float(intr.get("centerPointV")) / 64)
        tr = el.find("transform")
        # camera centre = Qualisys position, in mm
        pos = [float(tr.get(a)) for a in "xyz"]
        np.testing.assert_allclose(c.center, pos, atol=1e-6)
        # every camera sees the world origin (floor centre), in front of it
        uv = c.project(np.zeros(3))[0]
        assert 0 <= uv[0] < c.size[0] and 0 <= uv[1] < c.size[1], (c.name, uv)


def test_qualisys_demo_matches_pose2sim_extrinsics(qca: Path) -> None:
    # rotation / translation (m) written by Pose2Sim 0.10.49's converter for this file
    ref = {
        "cam01": ([1.68827548, 1.04832205, -0.41955852], [0.32110489, 0.95633206, 2.89071305]),
        "cam03": ([0.81096549, -2.19721293, 1.37602778], [-0.79348039, 0.32283594, 4.35351487]),
    }
    cams = {c.name: c for c in qualisys.read_qualisys(qca)[0]}
    for name, (r, t) in ref.items():
        np.testing.assert_allclose(cams[name].rvec, r, atol=1e-6)
        np.testing.assert_allclose(cams[name].tvec / 1000.0, t, atol=1e-6)


P2S_TOML = _HERE.parents[1] / "data" / "pose2sim_Calib_qca.toml"


def _grid_m() -> np.ndarray:
    """A 3D grid (m) over the demo room: 3 × 3 m of floor, 0–2 m high (world origin: the
    floor's centre)."""
    g = np.meshgrid(np.linspace(-1.5, 1.5, 13), np.linspace(-1.5, 1.5, 13),
                    np.linspace(0.0, 2.0, 9), indexing="ij")
    return np.stack([a.ravel() for a in g], -1)


@pytest.mark.parametrize("distortion_scale", [1 / 64, 1.0])
def test_qualisys_demo_reprojects_like_pose2sim(qca: Path, distortion_scale: float) -> None:
    """The issue's bar: a grid of 3D points lands within 0.5 px of where Pose2Sim's own
    conversion puts it. The reference is Pose2Sim 0.10.49's ``calib_qca_fun`` output for this
    file (scripts/pose2sim_calibration_reference.py made ``tests/data/pose2sim_Calib_qca.toml``
    in a scratch venv), projected with OpenCV as Pose2Sim does.

    Pose2Sim also divides the distortion coefficients by 64; livepose does not by default
    (an independent checkerboard calibration of these cameras finds k1 ≈ −0.05, the file's
    value, not −0.0007). With ``distortion_scale=1/64`` the two conversions must agree to
    0.5 px everywhere; with the default they agree at the image centre and differ by the
    distortion alone, which must then be what separates them."""
    import tomllib

    import cv2

    ref = tomllib.loads(P2S_TOML.read_text())
    ours = {c.name: c for c in qualisys.read_qualisys(qca, distortion_scale=distortion_scale)[0]}
    X = _grid_m()
    checked = 0
    for sec in ref.values():
        if not isinstance(sec, dict) or "matrix" not in sec:
            continue
        cam = ours[sec["name"]]
        assert tuple(cam.size) == tuple(int(v) for v in sec["size"])
        K, d = np.array(sec["matrix"]), np.array(sec["distortions"])
        rv, tv = np.array(sec["rotation"]), np.array(sec["translation"])
        Xc = X @ cv2.Rodrigues(rv)[0].T + tv
        uv_ref = cv2.projectPoints(X, rv, tv, K, d)[0][:, 0]
        w, h = cam.size
        keep = (Xc[:, 2] > 0.5) & (uv_ref >= 0).all(1) & (uv_ref[:, 0] < w) & (uv_ref[:, 1] < h)
        assert keep.sum() > 50, (cam.name, keep.sum())
        uv = cam.project(X[keep] * 1000.0)  # ours keeps the file's mm
        err = np.linalg.norm(uv - uv_ref[keep], axis=1)
        if distortion_scale != 1.0:
            assert err.max() <= 0.5, (cam.name, err.max())
        else:  # the same camera but for the distortion: equal where distortion vanishes
            same = dataclasses.replace(cam, dist=d)
            uv_d = same.project(X[keep] * 1000.0)
            assert np.linalg.norm(uv_d - uv_ref[keep], axis=1).max() <= 0.5
            assert err.max() > 0.5  # … and the distortion does matter on this lens
        checked += 1
    assert checked == 4


def test_detect_and_import_auto(qca: Path) -> None:
    assert ci.detect_format(qca) == "qualisys"
    cams, unit = ci.import_calibration(qca)
    assert unit == "mm" and len(cams) == 4


# ---------------------------------------------------------------- Qualisys, synthetic


def _write_qca(
    path: Path,
    cams: list[CameraModel],
    left: int = 0,
    top: int = 0,
    sensor: tuple[int, int] | None = None,
    viewrotation: int = 0,
) -> Path:
    """Our own Qualisys-like writer: the inverse of the documented conventions."""

    def repr(x: float) -> str:
        return format(float(x), ".17g")

    root = ET.Element("calibration", type="regular")
    xc = ET.SubElement(root, "cameras")
    for c in cams:
        w, h = c.size
        sw, sh = sensor or (left + w, top + h)
        el = ET.SubElement(
            xc, "camera", active="1", serial=c.name, model="none", viewrotation=str(viewrotation)
        )
        ET.SubElement(
            el,
            "fov_video",
            left=str(left),
            top=str(top),
            right=str(left + w - 1),
            bottom=str(top + h - 1),
        )
        M = np.diag([1.0, -1.0, -1.0]) @ c.R  # Qualisys camera axes
        pos = c.center
        ET.SubElement(
            el,
            "transform",
            x=repr(pos[0]),
            y=repr(pos[1]),
            z=repr(pos[2]),
            **{f"r{i + 1}{j + 1}": repr(M[i, j]) for i in range(3) for j in range(3)},
        )
        K, d = c.matrix, np.pad(c.dist, (0, 5 - c.dist.size))
        ET.SubElement(
            el,
            "intrinsic",
            focalLengthU=repr(K[0, 0] * 64),
            focalLengthV=repr(K[1, 1] * 64),
            centerPointU=repr((K[0, 2] + left) * 64),
            centerPointV=repr((K[1, 2] + top) * 64),
            sensorMinU="0",
            sensorMinV="0",
            sensorMaxU=str((sw - 1) * 64),
            sensorMaxV=str((sh - 1) * 64),
            skew="0",
            radialDistortion1=repr(d[0]),
            radialDistortion2=repr(d[1]),
            radialDistortion3=repr(d[4]),
            tangentalDistortion1=repr(d[2]),
            tangentalDistortion2=repr(d[3]),
        )
    ET.ElementTree(root).write(path)
    return path


@pytest.mark.parametrize("left,top", [(0, 0), (16, 40)])
def test_qualisys_synthetic_roundtrip_projection(tmp_path: Path, left: int, top: int) -> None:
    cam = _cam()
    f = _write_qca(tmp_path / "x.qca.txt", [cam], left=left, top=top, sensor=(1200, 2048))
    (back,), unit = qualisys.read_qualisys(f)
    assert unit == "mm" and back.size == cam.size
    P = _points_in_view(cam)
    np.testing.assert_allclose(back.project(P), cam.project(P), atol=1e-6)


def test_qualisys_window_outside_sensor(tmp_path: Path) -> None:
    cam = _cam()
    f = _write_qca(tmp_path / "x.qca.txt", [cam], sensor=(1920, 1088))  # U/V swapped sensor
    with pytest.raises(CalibrationError, match="outside the sensor"):
        qualisys.read_qualisys(f)


def test_qualisys_video_size_rescale(tmp_path: Path) -> None:
    cam = _cam()
    f = _write_qca(tmp_path / "x.qca.txt", [cam])
    (half,), _ = qualisys.read_qualisys(f, video_size=(544, 960))
    assert half.size == (544, 960)
    P = _points_in_view(cam)
    np.testing.assert_allclose(half.project(P), (cam.project(P) + 0.5) / 2 - 0.5, atol=1e-6)
    # per-camera, anisotropic (the demo's 1088 -> 1080 squeeze)
    (sq,), _ = qualisys.read_qualisys(f, video_size={"c0": (1080, 1920), "other": (1, 1)})
    uv = cam.project(P)
    np.testing.assert_allclose(sq.project(P)[:, 0], (uv[:, 0] + 0.5) * 1080 / 1088 - 0.5, atol=1e-6)
    np.testing.assert_allclose(sq.project(P)[:, 1], uv[:, 1], atol=1e-6)
    with pytest.raises(CalibrationError, match="aspect ratio"):
        qualisys.read_qualisys(f, video_size=(544, 1920))


def test_qualisys_viewrotation(tmp_path: Path) -> None:
    cam = _cam()
    f = _write_qca(tmp_path / "x.qca.txt", [cam], viewrotation=90)
    with pytest.raises(CalibrationError, match="viewrotation=90"):
        qualisys.read_qualisys(f)
    (rot,), _ = qualisys.read_qualisys(f, viewrotation="cw")
    assert rot.size == (1920, 1088)
    (same,), _ = qualisys.read_qualisys(f, viewrotation="ignore")
    assert same.size == cam.size


def test_qualisys_malformed_xml(tmp_path: Path) -> None:
    f = tmp_path / "bad.qca.txt"
    f.write_text("<calibration><cameras><camera serial='a'>")
    with pytest.raises(CalibrationError, match=r"bad\.qca\.txt: not valid XML"):
        qualisys.read_qualisys(f)


def test_qualisys_missing_attribute_named(tmp_path: Path) -> None:
    f = _write_qca(tmp_path / "x.qca.txt", [_cam("camA")])
    tree = ET.parse(f)
    del tree.getroot().find("cameras/camera/intrinsic").attrib["focalLengthU"]
    tree.write(f)
    with pytest.raises(CalibrationError, match=r"camera 'camA' <intrinsic> has no 'focalLengthU'"):
        qualisys.read_qualisys(f)


def test_qualisys_bad_rotation(tmp_path: Path) -> None:
    f = _write_qca(tmp_path / "x.qca.txt", [_cam("camA")])
    tree = ET.parse(f)
    tree.getroot().find("cameras/camera/transform").set("r11", "2.0")
    tree.write(f)
    with pytest.raises(CalibrationError, match="not a rotation matrix"):
        qualisys.read_qualisys(f)


# ---------------------------------------------------------------- rotations


@pytest.mark.parametrize("turns", [1, 2, 3, -1])
def test_rotate_camera_image(turns: int) -> None:
    cam = _cam()
    rot = qualisys.rotate_camera_image(cam, turns)
    P = _points_in_view(cam)
    uv = cam.project(P)
    w, h = cam.size
    for _ in range(turns % 4):  # clockwise quarter turn: (u, v) -> (H - 1 - v, u)
        uv = np.stack([(h - 1) - uv[:, 1], uv[:, 0]], axis=1)
        w, h = h, w
    assert rot.size == (w, h)
    np.testing.assert_allclose(rot.project(P), uv, atol=1e-6)


def test_rotvec_from_matrix_all_angles() -> None:
    rng = np.random.default_rng(1)
    axes = rng.normal(size=(50, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    for ax, ang in zip(
        axes,
        np.concatenate([rng.uniform(0, np.pi, 45), [0.0, 1e-9, np.pi - 1e-9, np.pi, 1e-4]]),
        strict=False,
    ):
        R = rodrigues(ax * ang)
        np.testing.assert_allclose(rodrigues(rodrigues_inv(R)), R, atol=1e-9)


# ---------------------------------------------------------------- TOML formats and units


def test_toml_roundtrip_with_unit(tmp_path: Path) -> None:
    cams = [_cam("a"), _cam("b", dist=(0.0, 0.0, 0.0, 0.0))]
    f = write_calibration(tmp_path / "calibration.toml", cams, units="mm")
    assert read_calibration_units(f) == "mm"
    assert ci.detect_format(f) == "anipose"
    back, unit = ci.import_calibration(f)
    assert unit == "mm" and [c.name for c in back] == ["a", "b"]
    P = _points_in_view(cams[0])
    np.testing.assert_allclose(back[0].project(P), cams[0].project(P), atol=1e-9)


def test_unknown_unit_refused(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="furlong"):
        write_calibration(tmp_path / "c.toml", [_cam("a")], units="furlong")
    f = write_calibration(tmp_path / "c.toml", [_cam("a")], units="m")
    f.write_text(f.read_text().replace('units = "m"', 'units = "furlong"'))
    with pytest.raises(CalibrationError, match=r"\[metadata\]\.units = 'furlong'"):
        ci.import_calibration(f)


def test_plain_anipose_unit_unknown(tmp_path: Path) -> None:
    from livepose.core.calibration import write_calibration

    f = write_calibration(tmp_path / "calibration.toml", [_cam("a")])
    assert ci.detect_format(f) == "anipose"
    assert ci.import_calibration(f)[1] is None


def test_convert_units_projection_invariant() -> None:
    cam = _cam()
    (m,) = ci.convert_units([cam], "mm", "m")
    P = _points_in_view(cam)
    np.testing.assert_allclose(m.project(P / 1000.0), cam.project(P), atol=1e-6)
    with pytest.raises(CalibrationError, match="unknown length unit"):
        ci.convert_units([cam], "mm", "furlong")


def _section(c: CameraModel) -> str:
    K = c.matrix
    return (
        f'name = "{c.name}"\nsize = [ {float(c.size[0])}, {float(c.size[1])}]\n'
        f"matrix = [ [ {K[0, 0]}, 0.0, {K[0, 2]}], [ 0.0, {K[1, 1]}, {K[1, 2]}], [ 0.0, 0.0, 1.0]]\n"
        f"distortions = [ {', '.join(map(str, c.dist[:4]))}]\n"
        f"rotation = [ {', '.join(map(str, c.rvec))}]\ntranslation = [ {', '.join(map(str, c.tvec / 1000))}]\n"
        "fisheye = false\n\n"
    )


def test_pose2sim_toml(tmp_path: Path) -> None:
    cams = [
        _cam("cam01", dist=(-0.05, 0.1, 0.001, 0.0)),
        _cam("cam02", dist=(-0.04, 0.1, 0.0, 0.002)),
    ]
    f = tmp_path / "Calib_qualisys.toml"
    f.write_text(
        "".join(f"[{c.name}]\n" + _section(c) for c in cams)
        + "[metadata]\nadjusted = false\nerror = 0.0\n"
    )
    assert ci.detect_format(f) == "pose2sim"
    back, unit = ci.import_calibration(f)
    assert unit == "m"
    P = _points_in_view(cams[1])
    np.testing.assert_allclose(back[1].project(P / 1000.0), cams[1].project(P), atol=1e-6)


def test_freemocap_toml(tmp_path: Path) -> None:
    c = _cam("cam_0", dist=(-0.05, 0.1, 0.001, 0.0))
    f = tmp_path / "rec_camera_calibration.toml"
    f.write_text(
        "[cam_0]\n"
        + _section(c).replace(str(float(c.size[0])), str(c.size[0]))
        + '[metadata]\nadjusted = false\nerror = 0.3\ncharuco_square_size = 39\ncharuco_board_object = "x"\n'
    )
    assert ci.detect_format(f) == "freemocap"
    back, unit = ci.import_calibration(f)
    assert unit == "mm" and back[0].name == "cam_0"


def test_caliscope_camera_array_and_legacy(tmp_path: Path) -> None:
    import tomli_w

    c = _cam("x")
    base = {
        "size": list(c.size),
        "matrix": c.matrix.tolist(),
        "distortions": c.dist.tolist(),
        "translation": (c.tvec / 1000).tolist(),
        "fisheye": False,
    }
    new = tmp_path / "camera_array.toml"
    new.write_text(
        tomli_w.dumps(
            {
                "cameras": {
                    "0": {"cam_id": 0, **base, "rotation": c.rvec.tolist()},
                    "1": {
                        "cam_id": 1,
                        "size": [640, 480],
                        "rotation_count": 0,
                    },  # not posed: left out
                }
            }
        )
    )
    old = tmp_path / "config.toml"
    old.write_text(
        tomli_w.dumps({"cam_3": {"port": 3, **base, "rotation": c.R.tolist(), "ignore": False}})
    )
    P = _points_in_view(c)
    for f, name in ((new, "cam_0"), (old, "cam_3")):
        assert ci.detect_format(f) == "caliscope"
        (back,), unit = ci.import_calibration(f)
        assert unit == "m" and back.name == name
        np.testing.assert_allclose(back.project(P / 1000.0), c.project(P), atol=1e-6)


@pytest.mark.parametrize("name,fmt", [("rig.xcp", "vicon"), ("Calibration.cal", "optitrack")])
def test_unsupported_formats_refused(tmp_path: Path, name: str, fmt: str) -> None:
    f = tmp_path / name
    f.write_text("<x/>")
    assert ci.detect_format(f) == fmt
    with pytest.raises(CalibrationError, match="not implemented"):
        ci.import_calibration(f)


def test_missing_file() -> None:
    with pytest.raises(CalibrationError, match="not found"):
        ci.import_calibration("/nonexistent/calib.toml")


# ---------------------------------------------------------------- the command


def test_cli_import_writes_toml_with_unit(qca: Path, tmp_path: Path) -> None:
    """`livepose calibration import` on the real Qualisys file: the TOML reads back with its
    unit, converted on request, and a bad option is one line with exit code 2."""
    from typer.testing import CliRunner

    from livepose.cli.app import app
    from livepose.core.calibration import read_calibration

    out = tmp_path / "calibration.toml"
    r = CliRunner().invoke(app, ["calibration", "import", str(qca), "--out", str(out),
                                 "--units", "m"])
    assert r.exit_code == 0, r.output
    assert read_calibration_units(out) == "m"
    mm, _ = qualisys.read_qualisys(qca)
    back = read_calibration(out, [c.name for c in mm])
    for a, b in zip(mm, back, strict=True):
        np.testing.assert_allclose(b.tvec * 1000.0, a.tvec, rtol=1e-12)
        np.testing.assert_allclose(b.center * 1000.0, a.center, rtol=1e-9)
    r = CliRunner().invoke(app, ["calibration", "import", str(qca), "--out", str(out),
                                 "--video-size", "cam01=1080"])
    assert r.exit_code == 2 and "CAMERA=WIDTHxHEIGHT" in r.output


def test_cli_import_declares_the_unit_of_a_file_that_does_not_say(tmp_path: Path) -> None:
    """An Anipose file without ``[metadata] units`` (a rig calibrated in metres): the user
    says what it is with ``--source-units`` and may convert; the errors are one line each and
    keep the brackets of what they name (no markup eaten)."""
    from typer.testing import CliRunner

    from livepose.cli.app import app
    from livepose.core.calibration import read_calibration

    metres = [make_camera(f"c{i}", (320, 256), 90.0 * i, 40.0, 0.55, 300.0, [0, 0, 0, 0, 0])
              for i in range(2)]
    src = tmp_path / "anipose.toml"
    write_calibration(src, metres)  # no unit written
    assert read_calibration_units(src) is None
    out = tmp_path / "mm.toml"
    run = CliRunner().invoke
    r = run(app, ["calibration", "import", str(src), "--out", str(out), "--units", "mm"])
    assert r.exit_code == 2 and "--source-units m|cm|mm" in r.output, r.output
    r = run(app, ["calibration", "import", str(src), "--out", str(out), "--source-units", "m",
                  "--units", "mm"])
    assert r.exit_code == 0, r.output
    assert read_calibration_units(out) == "mm"
    back = read_calibration(out, ["c0", "c1"])
    for a, b in zip(metres, back, strict=True):
        np.testing.assert_allclose(b.tvec, a.tvec * 1000.0, rtol=1e-9)
    r = run(app, ["calibration", "import", str(out), "--out", str(tmp_path / "x.toml"),
                  "--source-units", "cm"])
    assert r.exit_code == 2 and "says its unit is 'mm', not 'cm'" in r.output
    r = run(app, ["calibration", "import", str(src), "--out", str(out), "--source-units", "in"])
    assert r.exit_code == 2 and "--source-units 'in': one of m, cm, mm" in r.output
    csvs = [tmp_path / f"{c}.csv" for c in ("c0", "c1")]
    for f in csvs:
        f.write_text("")
    r = run(app, ["fuse", "--calibration", str(src), "--camera-names", "c0", "c1", "--fps", "30",
                  "--out", str(tmp_path / "f"), *map(str, csvs)])
    assert r.exit_code == 2 and "write [metadata] units in the file" in r.output, r.output
