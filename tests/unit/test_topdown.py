"""Two-stage models: the manifest's detector/roi sections, SSD anchors and decoding, the ROI
rule, rotated crops (against OpenCV's warpAffine), crop ↔ frame mapping, heatmap
refinement, and the bundled BlazePose end to end on a synthetic frame (no person: the
detector must find none and the view keeps no ROI)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from livepose.core.config import ModelConfig
from livepose.inference.detector import SsdDecoder, generate_anchors, nms, remove_letterbox
from livepose.inference.manifest import ModelError, load_manifest, resolve_model
from livepose.inference.roi import (
    Cropper,
    crop_matrix,
    refine_heatmap_nb,
    roi_from_points,
    to_frame,
)


@pytest.fixture(scope="module")
def blaze():  # type: ignore[no-untyped-def]
    return resolve_model(ModelConfig(path="blazepose"))


def test_bundled_manifest(blaze) -> None:  # type: ignore[no-untyped-def]
    path, m = blaze
    assert path.name == "pose_landmark_full.onnx" and path.is_file()
    assert m.two_stage and m.detector is not None and m.roi is not None
    assert len(m.keypoints) == 33 and m.keypoints[0] == "nose"
    assert m.keypoints[-1] == "right_foot_index"
    assert ("left_shoulder", "left_elbow") in m.skeleton
    assert m.noise is not None and m.noise.sigma_px > 1
    folder = path.parent
    assert (folder / m.detector.file).is_file()
    notice = (folder / "LICENSE").read_text()
    assert "Apache License" in notice and "MediaPipe" in notice
    total = sum(p.stat().st_size for p in folder.iterdir())
    assert total <= 25e6


def test_manifest_needs_both_sections(blaze, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path, _ = blaze
    data = yaml.safe_load((path.parent / "manifest.yaml").read_text())
    del data["roi"]
    p = tmp_path / "manifest.yaml"
    p.write_text(yaml.safe_dump(data))
    with pytest.raises(ModelError, match="both detector and roi"):
        load_manifest(p)
    data = yaml.safe_load((path.parent / "manifest.yaml").read_text())
    data["detector"]["anchors"]["strides"] = [8, 16]
    p.write_text(yaml.safe_dump(data))
    with pytest.raises(ModelError, match="num_layers"):
        load_manifest(p)


def test_anchors_blazepose(blaze) -> None:  # type: ignore[no-untyped-def]
    det = blaze[1].detector
    a = generate_anchors(det.anchors, det.input.width)
    assert a.shape == (28 * 28 * 2 + 14 * 14 * 2 + 7 * 7 * 6, 2) == (2254, 2)
    assert np.allclose(a[0], [0.5 / 28, 0.5 / 28]) and np.allclose(a[1], a[0])
    assert np.allclose(a[-1], [6.5 / 7, 6.5 / 7])


def test_ssd_decode_and_weighted_nms(blaze) -> None:  # type: ignore[no-untyped-def]
    det = blaze[1].detector
    dec = SsdDecoder(det)
    A = len(dec.anchors)
    boxes = np.zeros((A, 12), np.float32)
    scores = np.full((A, 1), -20.0, np.float32)
    i, j = 500, 501  # two anchors at one cell: the same box, a pixel apart
    for k, dx in ((i, 0.0), (j, 2.24)):
        boxes[k, :4] = [dx, 0.0, 44.8, 89.6]  # centre offset, w = 0.2, h = 0.4 (×224)
        boxes[k, 4:6] = [dx, 22.4]  # keypoint 0: 0.1 below the anchor
    scores[i], scores[j] = 3.0, 1.0
    frame = (1080, 1920)
    out = dec(boxes, scores, frame)
    assert out.shape == (1, 13)
    s3, s1 = 1 / (1 + math.exp(-3)), 1 / (1 + math.exp(-1))
    assert out[0, -1] == pytest.approx(s3)
    ax = dec.anchors[i, 0]
    x_in = ax + (0 * s3 + 0.01 * s1) / (s3 + s1)  # weighted mean on the 224 input
    pad = (1 - 1080 / 1920) / 2
    assert out[0, 4] == pytest.approx((x_in - pad) / (1 - 2 * pad), abs=1e-5)
    hard = nms(np.array([[0, 0, 1, 1, 0.9], [0, 0, 1, 1.1, 0.8], [2, 2, 3, 3, 0.7]], np.float32),
               0.3, weighted=False)
    assert hard.shape == (2, 5) and hard[0, -1] == pytest.approx(0.9)
    assert remove_letterbox(np.array([[0.5, 0.5, 0.5, 0.5, 1]], np.float32), (0.25, 0))[0, 0] \
        == pytest.approx(0.5)


def test_roi_rule(blaze) -> None:  # type: ignore[no-untyped-def]
    spec = blaze[1].roi
    # scale point straight above the centre: upright, no rotation
    cx, cy, w, h, a = roi_from_points(np.array([100.0, 200.0]), np.array([100.0, 100.0]), spec)
    assert (cx, cy) == (100.0, 200.0) and w == h == pytest.approx(2 * 100 * 1.25)
    assert a == pytest.approx(0.0, abs=1e-12)
    # scale point to the right: the body lies along +x, rotated by +90°
    a2 = roi_from_points(np.array([0.0, 0.0]), np.array([50.0, 0.0]), spec)[4]
    assert a2 == pytest.approx(math.pi / 2)


def test_crop_matches_opencv_and_maps_back(blaze) -> None:  # type: ignore[no-untyped-def]
    cv2 = pytest.importorskip("cv2")
    spec = blaze[1].input
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)
    img = cv2.GaussianBlur(img, (0, 0), 3)  # smooth: compare interpolation, not aliasing
    roi = (90.0, 160.0, 150.0, 150.0, 0.4)
    crop = Cropper(spec, "replicate")
    x = crop.batch(1)
    crop.fill(x, 0, img, "RGB8", roi)
    ref = cv2.warpAffine(img, crop_matrix(roi, 256, 256), (256, 256), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE).astype(np.float32) / 255.0
    assert np.abs(x[0] - ref).max() < 2.5 / 255  # OpenCV's 1/32-pixel fixed point
    bgr = crop.batch(1)
    crop.fill(bgr, 0, img[:, :, ::-1].copy(), "BGR8", roi)
    assert np.array_equal(bgr, x)  # reordered to the model's RGB
    # crop corners and centre map back onto the ROI
    pts = to_frame(np.array([[0.5, 0.5], [0.0, 0.0]]), roi)
    assert np.allclose(pts[0], roi[:2])
    m = crop_matrix(roi, 256, 256)
    assert np.allclose(m @ np.array([*pts[1], 1.0]), [0.0, 0.0], atol=1e-9)


def test_heatmap_refinement() -> None:
    heat = np.full((64, 64, 2), -20.0, np.float32)
    heat[30, 40, 0] = heat[30, 41, 0] = 5.0  # two equal cells: the mean between them
    xy = np.array([[40.2 / 64, 30.1 / 64], [0.5, 0.5]])
    refine_heatmap_nb(xy, heat, 9, 0.5)
    assert xy[0] == pytest.approx([40.5 / 64, 30 / 64], abs=1e-4)
    assert xy[1] == pytest.approx([0.5, 0.5])  # no confident cell: unchanged


def test_topdown_no_person(blaze) -> None:  # type: ignore[no-untyped-def]
    from livepose.inference.topdown import TopDown

    path, m = blaze
    td = TopDown(path, m, ModelConfig(path="blazepose", intra_op_threads=1), 2)
    grey = np.full((192, 108, 3), 128, np.uint8)
    out = td.run([(grey, "RGB8"), None], 0)
    assert out.shape == (2, 33, 3) and np.isnan(out).all()
    assert td.counters["detector_runs"] == 1 and td.counters["no_detection"] == 1
    assert td.rois == [None, None]


DEMO = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "pose2sim-demo"


@pytest.mark.skipif(not (DEMO / "single").is_dir(), reason="Pose2Sim demo footage absent")
def test_lost_view_reacquired_from_guide_not_detector(blaze) -> None:  # type: ignore[no-untyped-def]
    """A tracked view that loses its target gets its ROI from the projected fused pose
    (here: its own last keypoints, as a perfect reprojection would give) — the detector does
    not run — and the keypoints stay where they were; without a guide the detector runs."""
    import av

    from livepose.inference.topdown import TopDown

    path, m = blaze
    with av.open(str(DEMO / "single" / "cam01.mp4")) as c:
        frames = [f.to_ndarray(format="rgb24") for _, f in zip(range(3), c.decode(video=0),
                                                               strict=False)]
    td = TopDown(path, m, ModelConfig(path="blazepose", intra_op_threads=1), 1)
    first = td.run([(frames[0], "RGB8")], 0)
    assert td.counters["detector_runs"] == 1 and np.isfinite(first).all()
    uv = first[:, :, :2].astype(np.float64)
    roi = td.guided_roi(uv[0], (1080, 1920))
    assert roi is not None and roi[2] > 300  # a person-sized crop around the hips
    td.rois[0] = None  # the target was lost
    out = td.run([(frames[1], "RGB8")], 1, guide=lambda: uv)
    assert td.counters["detector_runs"] == 1 and td.counters["reacquired_3d"] == 1
    d = np.linalg.norm(out[0, :, :2] - first[0, :, :2], axis=-1)
    assert np.median(d) < 15, np.median(d)  # 1/60 s later, same person
    td.rois[0] = None
    td.run([(frames[2], "RGB8")], 2)  # no guide: the detector
    assert td.counters["detector_runs"] == 2
