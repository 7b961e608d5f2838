"""``livepose fuse`` and ``livepose bench fusion|accuracy`` from the command line: outputs,
one-line errors with exit code 2, and a tiny smoke run of each benchmark."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from livepose.formats.anipose3d import read_anipose3d
from livepose.formats.dlc import read_dlc_csv, write_dlc_csv


def livepose(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "livepose", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


def one_line_error(r: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


def small(eks_fly: Path, d: Path, frames: int = 40) -> Path:
    d.mkdir()
    for cam in ("Cam-A", "Cam-B", "Cam-C"):
        for m in (0, 1):
            src = next(eks_fly.glob(f"*_{cam}_*rng={m}.csv"))
            p = read_dlc_csv(src)
            write_dlc_csv(d / src.name, p.points[:frames], p.keypoints, p.scorer)
    return d


def test_fuse_command(eks_fly: Path, tmp_path: Path) -> None:
    d = small(eks_fly, tmp_path / "in")
    out = tmp_path / "out"
    r = livepose("fuse", "--calibration", str(eks_fly / "calibration.toml"), "--camera-names",
                 "Cam-A", "Cam-B", "Cam-C", "--out", str(out), "--fps", "300", "--units", "mm",
                 str(d))
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stderr and "40 frames" in r.stderr
    t = read_anipose3d(out / "pose3d.csv")
    assert t.xyz.shape == (40, 12, 3) and t.var is not None and (out / "pose3d.trc").exists()
    assert np.all(t.ncams == 3)
    # comma-separated names, explicit files, filter none
    files = [str(p) for p in sorted(d.glob("*.csv"))]
    r = livepose("fuse", "--calibration", str(eks_fly / "calibration.toml"), "--camera-names",
                 "Cam-A,Cam-B,Cam-C", "--out", str(tmp_path / "o2"), "--filter", "none",
                 "--fps", "100", "--units", "mm", *files)
    assert r.returncode == 0, r.stderr


OK = ("--fps", "100", "--units", "mm")  # what every call needs


def test_fuse_errors_are_one_line(eks_fly: Path, tmp_path: Path) -> None:
    d = small(eks_fly, tmp_path / "in", frames=5)
    calib = str(eks_fly / "calibration.toml")
    one_line_error(livepose("fuse", "--calibration", calib, "--camera-names", "Cam-A", "Cam-B",
                            "Cam-D", "--out", str(tmp_path / "o"), *OK, str(d)), "Cam-D", "no CSV")
    f = next(d.glob("*Cam-B*rng=0.csv"))
    p = read_dlc_csv(f)
    write_dlc_csv(f, p.points[:3], p.keypoints)
    one_line_error(livepose("fuse", "--calibration", calib, "--camera-names", "Cam-A", "Cam-B",
                            "Cam-C", "--out", str(tmp_path / "o"), *OK, str(d)), "3 frames")
    one_line_error(livepose("fuse", "--calibration", str(tmp_path / "nope.toml"),
                            "--camera-names", "Cam-A", "Cam-B", "Cam-C", "--out",
                            str(tmp_path / "o"), *OK, str(d)), "not found")
    one_line_error(livepose("fuse", "--calibration", calib, "--camera-names", "Cam-A", "Cam-B",
                            "Cam-C", "--out", str(tmp_path / "o"), "--filter", "ukf", "--fps",
                            "100", "--units", "mm", str(d)), "--filter")
    one_line_error(livepose("fuse", "--calibration", calib, "--camera-names", "Cam-A", "Cam-B",
                            "Cam-C", "--out", str(tmp_path / "o"), "--units", "mm", str(d)),
                   "--fps")
    one_line_error(livepose("fuse", "--calibration", calib, "--camera-names", "Cam-A", "Cam-B",
                            "Cam-C", "--out", str(tmp_path / "o"), "--fps", "100", str(d)),
                   "calibration_units")


def test_bench_smoke_runs(tmp_path: Path) -> None:
    r = livepose("bench", "fusion", "--quick", "--json", str(tmp_path / "f.json"))
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((tmp_path / "f.json").read_text())["summary"]
    assert s["ekf_4x21_median_us"] > 0 and s["ekf_4x21_p99_us"] >= s["ekf_4x21_median_us"]
    assert "speedup_vs_aniposelib_4x21" in s and "speedup_vs_numpy_dlt_4x21" in s
    r = livepose("bench", "accuracy", "--quick", "--json", str(tmp_path / "a.json"))
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((tmp_path / "a.json").read_text())["summary"]
    assert s["ekf_p95_over_dlt_p95"] < 1.0
    assert "ekf_p95_over_eks_p95" in s and "eks" in s["unavailable"]
