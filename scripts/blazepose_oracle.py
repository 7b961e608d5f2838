#!/usr/bin/env python3
"""MediaPipe's own runtime on Pose2Sim's demo: the oracle of ``livepose bench real --oracle``.

MediaPipe pins numpy < 2, so it is not a livepose dependency: run this in a scratch venv
(Python 3.11)::

    python3 -m venv /tmp/mpvenv
    /tmp/mpvenv/bin/pip install mediapipe==0.10.21 av
    /tmp/mpvenv/bin/python scripts/blazepose_oracle.py ../shared/data/pose2sim-demo/single \\
        --out oracle_single.npz          # git-ignored (*.npz)
    livepose bench real --oracle oracle_single.npz --json bench-real.json

It runs the legacy ``mp.solutions.pose.Pose`` (``model_complexity=1`` = pose_landmark_full,
``smooth_landmarks=False``: livepose's 2D is unsmoothed, ``static_image_mode=False``:
tracking, default confidences 0.5) on each camera's video and saves ``lm`` ``(C, T, 33, 3)``
x, y (pixels), visibility (NaN where MediaPipe found no pose), ``sizes`` ``(C, 2)`` and the
camera names (files ``cam*.mp4`` in name order).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("videos", type=Path, help="folder of cam*.mp4")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--frames", type=int, default=100)
    a = ap.parse_args()
    import av
    import mediapipe as mp

    files = sorted(a.videos.glob("cam*.mp4"))
    lm = np.full((len(files), a.frames, 33, 3), np.nan, np.float32)
    sizes = np.zeros((len(files), 2), np.int32)
    for c, path in enumerate(files):
        pose = mp.solutions.pose.Pose(static_image_mode=False, model_complexity=1,
                                      smooth_landmarks=False, enable_segmentation=False,
                                      min_detection_confidence=0.5,
                                      min_tracking_confidence=0.5)
        with av.open(str(path)) as cont:
            for t, frame in enumerate(cont.decode(video=0)):
                if t >= a.frames:
                    break
                img = frame.to_ndarray(format="rgb24")
                h, w = img.shape[:2]
                sizes[c] = (w, h)
                r = pose.process(img)
                if r.pose_landmarks is None:
                    continue
                for k, p in enumerate(r.pose_landmarks.landmark):
                    lm[c, t, k] = (p.x * w, p.y * h, p.visibility)
        pose.close()
        print(path.name, "frames with a pose:", int(np.isfinite(lm[c, :, 0, 0]).sum()))
    np.savez(a.out, lm=lm, sizes=sizes, cameras=np.array([p.stem for p in files]),
             note=np.array(f"mediapipe {mp.__version__} solutions.pose, model_complexity=1, "
                           "smooth_landmarks=False"))


if __name__ == "__main__":
    main()
