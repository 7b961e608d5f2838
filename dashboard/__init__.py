"""The web dashboard (``livepose.dashboard``): a consumer-only stage process serving a live
view of the run — camera previews with 2D keypoints, the 3D skeleton, latency, frame
accounting, recording control, health — plus ``/api/status`` and ``/metrics``.
See docs/dashboard.md."""
