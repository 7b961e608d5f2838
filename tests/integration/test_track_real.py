"""``livepose track`` on real footage: the first 30 frames of Pose2Sim's demo (``single/``:
4 colour cameras, 60 fps, portrait full HD, one person) through the live pipeline with the
bundled BlazePose, from the Qualisys calibration imported here. Skipped when the footage
(``../shared/data/pose2sim-demo``, next to the repository) is absent.

The checks are what a lab would look at:

- every frame-set processed (paced), ``fnum`` = video frame index, MediaPipe's 33 names;
- the reprojection error (pose3d.csv ``_error``: the 3D against the views used) stays
  below twice what MediaPipe's own runtime gives on the same frames (its 2D triangulated by
  livepose: median 8.6 px on frames 0–29; ``livepose bench real`` measures both);
- coverage: every limb, hip, foot and nose keypoint in 3D in ≥ 95 % of the frames after the
  first (the filter outputs a track from its second frame), and every keypoint that ≥ 2
  confident views saw has a 3D position there;
- the detector ran once per view, then tracking held (no re-detection);
- the 2D per camera and a session were written, and ``livepose replay --fuse-only`` of that
  session gives the live run's 3D again (the same fusion, the same model noise).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from livepose.bench.real import CORE, load_2d
from livepose.formats.anipose3d import read_anipose3d

DEMO = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "pose2sim-demo"
FRAMES = 30
ORACLE_REPROJ_MEDIAN_PX = 8.6

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (DEMO / "single").is_dir(), reason=f"{DEMO} not present"),
]


def _livepose(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "livepose", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.mark.timeout(240)
def test_track_first_30_frames(tmp_path: Path) -> None:
    calib = tmp_path / "calibration.toml"
    r = _livepose("calibration", "import", str(DEMO / "calibration" / "Calib.qca.txt"),
                  "--out", str(calib), timeout=60)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    t0 = time.monotonic()
    r = _livepose("track", str(DEMO / "single"), "-c", str(calib), "-o", str(out), "--paced",
                  "--frames", str(FRAMES), "--no-live", timeout=200)
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr[-2000:]
    assert took <= 120, f"track took {took:.0f} s"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["framesets_fused"] == FRAMES and summary["frame_accounting_ok"]
    assert summary["framesets_partial"] == 0  # paced: every view of every set
    det = summary["detector"]
    assert det["detector_runs"] == 4 and det["redetect_sets"] == 0, det

    table = read_anipose3d(out / "pose3d.csv")
    assert list(table.fnum) == list(range(FRAMES))
    assert table.keypoints[0] == "nose" and len(table.keypoints) == 33
    err = np.asarray(table.error)[1:]
    assert np.nanmedian(err) <= 2 * ORACLE_REPROJ_MEDIAN_PX, np.nanmedian(err)
    xyz = np.asarray(table.xyz)[1:]
    core = [table.keypoints.index(k) for k in CORE]
    fin = np.isfinite(xyz).all(-1)
    assert fin[:, core].all(1).mean() >= 0.95
    kps = list(table.keypoints)
    pts = load_2d(out / "pose2d", ["cam01", "cam02", "cam03", "cam04"], kps, FRAMES)
    seen = ((pts[..., 2] >= 0.3).sum(0) >= 2)[1:]
    assert seen.mean() > 0.5 and fin[seen].all()  # seen by two views: a 3D position
    # a person, in mm: hips to ankles about 0.7–1 m, in the calibrated volume
    leg = np.linalg.norm(xyz[:, kps.index("left_hip")] - xyz[:, kps.index("left_ankle")], axis=-1)
    assert 600 < np.nanmedian(leg) < 1100, np.nanmedian(leg)
    session = Path(summary["session"]["path"])
    assert (session / "video" / "cam01_frames.csv").is_file()
    assert (session / "config.yaml").is_file()
    r = _livepose("replay", str(session), "--fuse-only", "--out", str(tmp_path / "refused"),
                  timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    again = read_anipose3d(next((tmp_path / "refused").rglob("pose3d.csv")))
    assert list(again.fnum) == list(table.fnum)
    np.testing.assert_allclose(np.asarray(again.xyz), np.asarray(table.xyz), atol=1e-3)
