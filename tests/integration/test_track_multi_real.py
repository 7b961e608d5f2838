"""``livepose track --individuals free`` on real footage: the first 30 frames of Pose2Sim's
multi-person demo (``multi/``: 4 colour cameras, 60 fps, two people walking among a
standing figure and a picture of a person) through the live pipeline — the bundled
BlazePose on every detection of every view (``inference/multi_worker.py``), cross-view
association and 3D tracks (``fusion/multitrack.py``) — with nothing but the command line:
the gates for people come from BlazePose's manifest (its ``multi`` section). Skipped when the
footage is absent.

There is no ground truth of identities; what a lab would check: exactly two people get ids
(the distractors never do), each is output in every frame-set once confirmed (a stable id,
never re-born), neither's 3D root jumps (an id taken over by the other person would), the
two stay apart, and each is person-sized.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from livepose.formats.dlc_multi import read_dlc_multi_csv

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT.parent / "shared" / "data" / "pose2sim-demo"
FRAMES = 30

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (DEMO / "multi").is_dir(), reason=f"{DEMO} not present"),
]


def _livepose(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "livepose", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.mark.timeout(300)
def test_two_people_get_two_stable_ids(tmp_path: Path) -> None:
    calib = tmp_path / "calibration.toml"
    r = _livepose("calibration", "import", str(DEMO / "calibration" / "Calib.qca.txt"),
                  "--out", str(calib), timeout=60)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    r = _livepose("track", str(DEMO / "multi"), "-c", str(calib), "-o", str(out), "--paced",
                  "--frames", str(FRAMES), "--individuals", "free", "--no-live", timeout=280)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["framesets_fused"] == FRAMES and summary["frame_accounting_ok"], {
        k: v for k, v in summary.items() if k.startswith(("framesets", "pace", "overhead"))}

    pts, inds, kps, coords = read_dlc_multi_csv(out / "pose3d_individuals.csv")
    assert coords == ["x", "y", "z"] and len(kps) == 33 and pts.shape[0] == FRAMES
    present = np.isfinite(pts).all(-1).any(-1)  # (T, N): the id is output in that set
    ids = [k for k in range(len(inds)) if present[:, k].any()]
    assert len(ids) == 2, [inds[k] for k in ids]  # two people; no distractor got an id
    hips = [kps.index("left_hip"), kps.index("right_hip")]
    roots = []
    for k in ids:
        first = int(np.argmax(present[:, k]))
        assert first <= 20, (inds[k], first)  # confirmed after confirm_frames (10)
        assert present[first:, k].all(), inds[k]  # never lost, never re-born
        root = pts[first:, k][:, hips].mean(axis=1)
        assert np.isfinite(root).all()
        step = np.linalg.norm(np.diff(root, axis=0), axis=-1)
        assert step.max() < 100, (inds[k], step.max())  # mm per frame at 60 fps: no jump
        leg = np.linalg.norm(pts[first:, k, kps.index("left_hip")]
                             - pts[first:, k, kps.index("left_ankle")], axis=-1)
        assert 450 < np.nanmedian(leg) < 1100, np.nanmedian(leg)  # hip to ankle, mm
        roots.append((first, root))
    both = max(roots[0][0], roots[1][0])
    apart = np.linalg.norm(roots[0][1][both - roots[0][0]:] - roots[1][1][both - roots[1][0]:],
                           axis=-1)
    assert apart.min() > 300, apart.min()  # two different people, not one tracked twice
    # their 2D instances per camera, by the same ids (DeepLabCut's multi-animal 2D layout)
    for cam in ("cam01", "cam02", "cam03", "cam04"):
        p2, inds2, kps2, co2 = read_dlc_multi_csv(out / "pose2d_individuals" / f"{cam}.csv")
        assert inds2 == inds and kps2 == kps and co2 == ["x", "y", "likelihood"]
        seen = np.isfinite(p2[..., 0]).any(-1)  # (T, N): an instance of that id in the view
        assert not seen[:, [k for k in range(len(inds)) if k not in ids]].any()
        assert all(seen[:, k].any() for k in ids), cam
