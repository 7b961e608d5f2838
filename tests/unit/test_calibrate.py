"""Calibration against the sim rig's ground truth: board geometry and printing, detection on
rendered boards, the solver with false detections, the folder pipeline and its "0 boards"
diagnosis. Small images (640×512) and few poses keep this file under ~30 s."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
pytest.importorskip("scipy")

from livepose.acquisition.sim.board import BoardRenderer, scripted_board_poses  # noqa: E402
from livepose.acquisition.sim.rig import make_rig  # noqa: E402
from livepose.bench.calibration import compare, inject_false  # noqa: E402
from livepose.calibrate.detect import (  # noqa: E402
    Detections,
    detect_images,
    diagnose,
)
from livepose.calibrate.pipeline import calibrate_folder, solve_detections  # noqa: E402
from livepose.core.board import Board, BoardError  # noqa: E402
from livepose.core.calibration import read_calibration, read_calibration_units  # noqa: E402
from livepose.core.config import SimConfig  # noqa: E402
from livepose.core.errors import UserError  # noqa: E402

NAMES = ["a", "b", "c"]


def _rig():
    return make_rig(SimConfig(width=640, height=512, seed=5), NAMES)


def _render(rig, board: Board, n: int, seed: int = 0, blur: float = 1.5):
    tex = board.image(40, 0.5)
    poses = scripted_board_poses(n, seed=seed, board_size=board.size)
    out = []
    for c, cam in enumerate(rig):
        r = BoardRenderer(cam, tex, 40 / board.length, (-0.5 * board.length,) * 2, seed=c)
        out.append([r.render(p, (blur, 0.5 * blur), (1.1, 0.4, -0.3)) for p in poses])
    return out, poses


@pytest.fixture(scope="module")
def scene():
    board = Board()
    rig = _rig()
    imgs, poses = _render(rig, board, 24)
    uv = np.stack([detect_images(im, board) for im in imgs])
    return board, rig, imgs, poses, uv


def test_object_points_match_opencv() -> None:
    for legacy in (False, True):
        b = Board(squares=(5, 7), legacy=legacy, measured_square=39.5)
        ref = np.asarray(b.cv_board().getChessboardCorners())
        np.testing.assert_allclose(b.object_points(), ref, atol=1e-9)
        assert b.marker == pytest.approx(30.0 * 39.5 / 40.0)
    cb = Board.checkerboard((4, 7), 60.0)
    assert cb.n_corners == 28 and cb.object_points()[1, 0] == 60.0


def test_bad_boards_raise_one_line() -> None:
    with pytest.raises(BoardError, match="marker length"):
        Board(marker_length=50.0)
    with pytest.raises(BoardError, match="unit"):
        Board(unit="inch")
    with pytest.raises(BoardError, match="not an OpenCV"):
        Board(dictionary="DICT_9X9_1").cv_board()
    with pytest.raises(BoardError, match="markers"):
        Board(squares=(12, 12), dictionary="DICT_4X4_50").cv_board()


def test_board_prints_at_true_scale(tmp_path: Path) -> None:
    from PIL import Image

    b = Board()
    png = b.save(tmp_path / "b.png", dpi=300)
    with Image.open(png) as im:
        assert im.info["dpi"][0] == pytest.approx(300, abs=0.5)
        px_per_square = round(40 / 25.4 * 300)
        assert im.size == (6 * px_per_square, 8 * px_per_square)  # 5x7 + half-square margins
    pdf = b.save(tmp_path / "b.pdf", dpi=300).read_bytes()
    width_pt = 6 * px_per_square / 300 * 72
    assert f"{width_pt:.0f}".encode() in pdf  # MediaBox in points: 240 mm wide
    with pytest.raises(BoardError, match=r"png or \.pdf"):
        b.save(tmp_path / "b.svg")


def test_detection_on_rendered_board_is_subpixel(scene) -> None:
    board, rig, _, poses, uv = scene
    errs = []
    for c, cam in enumerate(rig):
        for f, p in enumerate(poses):
            seen = np.isfinite(uv[c, f, :, 0])
            if seen.any():
                gt = cam.project(board.object_points() @ p.R.T + p.t)
                errs.append(np.linalg.norm(uv[c, f, seen] - gt[seen], axis=1))
    e = np.concatenate(errs)
    assert e.size > 0.7 * 3 * 24 * 24
    assert np.median(e) < 0.1 and np.percentile(e, 95) < 0.3  # a few real detector slips


def test_solver_recovers_the_rig_despite_false_detections(scene) -> None:
    board, rig, _, _, uv0 = scene
    uv = uv0.copy()
    false = inject_false(uv, 0.02, seed=1)
    det = Detections(names=NAMES, sizes=[c.size for c in rig], uv=uv)
    _, res = solve_detections(det, board)
    assert res is not None
    err = compare(res.cameras, rig)
    assert err["focal_err_pct_max"] < 0.5
    assert err["center_err_mm_max"] < 2.0
    assert err["rot_err_deg_max"] < 0.2
    assert (~res.inliers[false]).mean() > 0.9  # false corners dropped
    ok = np.isfinite(uv0[..., 0]) & ~false
    assert np.nanmean(np.where(ok, res.errors, np.nan)) < 0.3


def test_wrong_dictionary_is_diagnosed() -> None:
    rig = _rig()
    other = Board(dictionary="DICT_5X5_50")
    imgs, _ = _render(rig[:1], other, 1, blur=0.0)
    assert detect_images(imgs[0], Board()).shape[0] == 1
    assert np.isnan(detect_images(imgs[0], Board())).all()
    assert "wrong dictionary" in diagnose(imgs[0][0], Board())


def test_folder_to_toml_with_units_and_report(tmp_path: Path, scene) -> None:
    board, rig, imgs, _, _ = scene
    src = tmp_path / "views"
    for name, ims in zip(NAMES, imgs, strict=True):
        (src / name).mkdir(parents=True)
        for k, im in enumerate(ims[:16]):
            cv2.imwrite(str(src / name / f"{k:03d}.png"), im)
    out = tmp_path / "calib.toml"
    res = calibrate_folder(src, board, out, say=lambda m: None)
    assert read_calibration_units(out) == "mm"
    cams = read_calibration(out, NAMES)
    assert compare(cams, rig)["center_err_mm_max"] < 3.0
    assert Path(res["report"]).exists() and Path(res["report"]).with_suffix(".png").exists()
    # a camera that never sees the board: one line, the reason, and the detector's picture
    blank = src / "d"
    blank.mkdir()
    for k in range(16):
        cv2.imwrite(str(blank / f"{k:03d}.png"), np.full((512, 640), 8, np.uint8))
    with pytest.raises(UserError, match=r"d: 0 boards detected .*too dark"):
        calibrate_folder(src, board, out, say=lambda m: None)
    assert (tmp_path / "calib_debug" / "d_detector.png").exists()


def test_board_description_round_trip_and_cli(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from livepose.cli.app import app

    b = Board(squares=(6, 8), square_length=3.0, marker_length=2.2, unit="cm",
              dictionary="DICT_5X5_100", legacy=True, measured_square=2.97)
    assert Board.load(b.dump(tmp_path / "b.toml")) == b
    (tmp_path / "bad.toml").write_text("[board]\nsquares = [5, 7]\nsize = 3\n")
    with pytest.raises(BoardError, match="unknown board key"):
        Board.load(tmp_path / "bad.toml")
    r = CliRunner().invoke(app, ["calibrate", "board", "--out", str(tmp_path / "p.png"),
                                 "--squares", "4x7", "--kind", "checkerboard", "--square", "60"])
    assert r.exit_code == 0, r.output
    assert Board.load(tmp_path / "p.toml") == Board.checkerboard((4, 7), 60.0)
    r = CliRunner().invoke(app, ["calibrate", "run", str(tmp_path / "nope"), "--out",
                                 str(tmp_path / "c.toml"), "--board", str(tmp_path / "p.toml")])
    assert r.exit_code == 2 and "not a folder" in r.output
