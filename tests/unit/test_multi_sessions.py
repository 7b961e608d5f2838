"""A several-animals session downstream: its single-animal 2D (``pose2d/``) is empty and its
2D is per individual (``pose2d_individuals/``), so ``export eks`` writes one folder per
individual, ``replay --fuse-only`` says to replay in full instead of writing an empty CSV,
and NWB leaves out the empty per-camera 2D."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from session_files import session_skeleton

from livepose.core.config import parse_config
from livepose.core.modelinfo import model_keypoints
from livepose.formats.dlc import read_dlc_csv, write_dlc_csv
from livepose.formats.dlc_multi import write_dlc_multi_csv
from livepose.kit.session import SessionError
from livepose.recording.tools import export_eks, fuse_only_session

T, CAMS = 10, ["cam0", "cam1"]


def _multi_session(root: Path) -> tuple[Path, np.ndarray, list[str]]:
    cfg = parse_config({"name": "m", "fps": 50, "calibration": "calibration.toml",
                        "cameras": [{"name": c, "backend": "sim"} for c in CAMS],
                        "fusion": {"multi": {"enabled": True, "individuals": 2}}})
    names = model_keypoints(cfg)[0]
    s = session_skeleton(root, "20260101-000000_m", cfg, CAMS)
    rng = np.random.default_rng(0)
    ind2d = np.concatenate([rng.uniform(0, 300, (T, 2, len(names), 2)),
                            np.full((T, 2, len(names), 1), 0.8)], -1)
    ind2d[:4, 1] = np.nan  # id1 is born at frame 4
    for c in CAMS:
        write_dlc_csv(s / "pose2d" / f"{c}.csv", np.full((T, len(names), 3), np.nan), names,
                      index=list(range(T)))  # what the worker's single view holds then
        write_dlc_multi_csv(s / "pose2d_individuals" / f"{c}.csv", ind2d, ["id0", "id1"],
                            names, coords=("x", "y", "likelihood"))
    return s, ind2d, names


def test_export_eks_writes_one_folder_per_individual(tmp_path: Path) -> None:
    s, ind2d, names = _multi_session(tmp_path)
    written = export_eks(s, tmp_path / "eks")
    assert sorted(p.relative_to(tmp_path / "eks").as_posix() for p in written) == sorted(
        [f"{i}/{s.name}_{c}.csv" for i in ("id0", "id1") for c in CAMS]
        + ["id0/calibration.toml", "id1/calibration.toml"])
    back = read_dlc_csv(tmp_path / "eks" / "id1" / f"{s.name}_cam1.csv")
    assert list(back.keypoints) == names and [int(i) for i in back.index] == list(range(T))
    np.testing.assert_allclose(back.points, ind2d[:, 1], atol=1e-6, equal_nan=True)


def test_fuse_only_refuses_a_several_animals_session(tmp_path: Path) -> None:
    s, *_ = _multi_session(tmp_path)
    with pytest.raises(SessionError, match=r"several-animals session.*livepose replay SESSION"):
        fuse_only_session(s)
    assert not (s / "refused").exists()
