"""Pose2Sim's own conversion of a Qualisys ``.qca.txt`` calibration, as the reference that
``livepose calibration import`` is checked against (tests/unit/test_calibrations.py).

Pose2Sim is not a project dependency; run this in a scratch venv::

    python3 -m venv /tmp/p2s
    /tmp/p2s/bin/pip install --no-deps pose2sim==0.10.49
    /tmp/p2s/bin/pip install numpy opencv-python-headless lxml rtoml pandas matplotlib \
        scipy c3d anytree toml tqdm
    /tmp/p2s/bin/python scripts/pose2sim_calibration_reference.py \
        ../shared/data/pose2sim-demo/calibration/Calib.qca.txt \
        tests/data/pose2sim_Calib_qca.toml

It calls ``Pose2Sim.calibration.calib_qca_fun`` (read, object → camera view, the π turn about
x, Rodrigues) and ``toml_write`` exactly as ``Pose2Sim.calibration`` does for
``convert_from = 'qualisys'``; the output is Pose2Sim's TOML (metres).
"""

from __future__ import annotations

import sys


def main(src: str, out: str) -> None:
    from Pose2Sim import calibration as p2s  # the scratch venv's Pose2Sim

    _ret, C, S, D, K, R, T = p2s.calib_qca_fun(src, binning_factor=1)
    p2s.toml_write(out, C, S, D, K, R, T)
    print(f"wrote {out} ({len(C)} cameras: {', '.join(C)})")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
