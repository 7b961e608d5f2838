"""``livepose export nwb``: a session written with livepose's own writers (3D, 2D per camera,
frame tables, calibration, config) exported to NWB, read back with pynwb (values, units,
confidence, timestamps, skeleton, cameras, metadata), inspected with nwbinspector, and loaded
by movement."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from session_files import session_skeleton

from livepose.core.config import parse_config
from livepose.formats.anipose3d import write_anipose3d
from livepose.formats.dlc import write_dlc_csv

pynwb = pytest.importorskip("pynwb")
pytest.importorskip("ndx_pose")

T, CAMS = 12, ["cam0", "cam1"]


def _session(root: Path, metadata: dict[str, object] | None) -> tuple[Path, np.ndarray]:
    from livepose.core.modelinfo import model_keypoints

    cfg = parse_config({"name": "s", "fps": 50, "calibration": "calibration.toml",
                        "cameras": [{"name": c, "backend": "sim"} for c in CAMS],
                        "metadata": metadata or {}})
    names = model_keypoints(cfg)[0]
    s = session_skeleton(root, "20260101-000000_s", cfg, CAMS)
    (s / "video").mkdir()
    rng = np.random.default_rng(0)
    xyz = rng.normal(0, 50, (T, len(names), 3))
    xyz[3, 2] = np.nan
    write_anipose3d(s / "pose3d.csv", xyz, names, error=np.ones((T, len(names))),
                    ncams=np.full((T, len(names)), 2), score=np.full((T, len(names)), 0.8),
                    fnum=np.arange(T))
    for c in CAMS:
        pts = np.concatenate([rng.uniform(0, 300, (T, len(names), 2)),
                              np.full((T, len(names), 1), 0.9)], -1)
        write_dlc_csv(s / "pose2d" / f"{c}.csv", pts, names, index=list(range(T)))
        with (s / "video" / f"{c}_frames.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["frame_id", "t_trigger_ns"])
            for k in range(T):
                w.writerow([k, 10**18 + k * 20_000_000 + (1000 if c == "cam1" else 0)])
    return s, xyz


def _issues(path: Path) -> list[tuple[str, str]]:
    from nwbinspector import inspect_nwbfile

    return [(str(m.importance.name), m.check_function_name) for m in inspect_nwbfile(path)]


def test_export_reads_back_and_inspects(tmp_path: Path) -> None:
    from livepose.recording.nwb import export_nwb

    meta = {"subject_id": "mouse7", "species": "Mus musculus", "sex": "F", "age": "P90D",
            "session_description": "open field", "experimenter": ["A. B."], "lab": "L",
            "institution": "I"}
    s, xyz = _session(tmp_path, meta)
    out = tmp_path / "s.nwb"
    res = export_nwb(s, out)
    assert res["frames"] == T and set(res["series"]) == {"pose3d", "pose2d_cam0", "pose2d_cam1"}
    with pynwb.NWBHDF5IO(str(out), "r") as io:
        f = io.read()
        assert f.subject.subject_id == "mouse7" and f.subject.species == "Mus musculus"
        assert f.session_description == "open field"
        beh = f.processing["behavior"]
        p3 = beh["pose3d"]
        nose = p3.pose_estimation_series["snout"]
        assert nose.unit == "millimeters"
        assert np.allclose(nose.data[:], xyz[:, 0], equal_nan=True)
        assert np.allclose(nose.confidence[:], 0.8)
        assert np.allclose(np.diff(nose.timestamps[:]), 0.02)  # frame tables, 50 fps
        # the zero of the timestamps: frame 0's trigger time (cam0's, the earlier), not the
        # folder's modification time
        assert nose.timestamps[0] == 0.0
        assert f.session_start_time.timestamp() == pytest.approx(1e9, abs=1e-5)
        assert np.isnan(p3.pose_estimation_series[p3.skeleton.nodes[2]].data[3]).all()
        assert len(p3.skeleton.edges[:]) > 0
        cam1 = p3.pose_estimations["pose2d_cam1"]
        assert cam1.device.name == "cam1"
        assert np.allclose(cam1.device.translation_vector[:], [0, 0, 500])
        assert cam1.pose_estimation_series["snout"].data.shape == (T, 2)
    bad = [i for i in _issues(out) if i[0] in ("CRITICAL", "BEST_PRACTICE_VIOLATION")]
    assert not bad, bad


def test_without_frame_tables_the_session_start_event_is_the_start(tmp_path: Path) -> None:
    import json

    from livepose.recording.nwb import export_nwb

    s, _ = _session(tmp_path, None)
    for c in CAMS:
        (s / "video" / f"{c}_frames.csv").unlink()
    (s / "events.jsonl").write_text(json.dumps({"t_ns": 1_700_000_000_250_000_000,
                                                "kind": "session_start"}) + "\n")
    export_nwb(s, tmp_path / "s.nwb")
    with pynwb.NWBHDF5IO(str(tmp_path / "s.nwb"), "r") as io:
        f = io.read()
        assert f.session_start_time.timestamp() == pytest.approx(1_700_000_000.25)
        ts = f.processing["behavior"]["pose3d"].pose_estimation_series["snout"].timestamps[:]
        assert np.allclose(ts, np.arange(T) / 50)  # frame_id / fps


def test_unset_metadata_says_so(tmp_path: Path) -> None:
    from livepose.recording.nwb import export_nwb

    s, _ = _session(tmp_path, None)
    out = tmp_path / "u.nwb"
    export_nwb(s, out)
    with pynwb.NWBHDF5IO(str(out), "r") as io:
        f = io.read()
        assert f.subject.subject_id == "unset (config metadata.subject_id)"
        assert "metadata.species" in f.subject.description
        assert f.session_description.startswith("unset")
    # nwbinspector flags exactly what the user has to set: the subject's age and species
    bad = {i[1] for i in _issues(out) if i[0] in ("CRITICAL", "BEST_PRACTICE_VIOLATION")}
    assert bad <= {"check_subject_age", "check_subject_species_exists"}, bad


def test_movement_reads_the_3d(tmp_path: Path) -> None:
    load_poses = pytest.importorskip("movement.io.load_poses")
    from livepose.recording.nwb import export_nwb

    s, xyz = _session(tmp_path, {"species": "Mus musculus", "age": "P90D"})
    export_nwb(s, tmp_path / "m.nwb")
    ds = load_poses.from_nwb_file(tmp_path / "m.nwb", pose_estimation_key="pose3d")
    assert ds.position.shape[:2] == (T, 3) and ds.attrs["fps"] == pytest.approx(50)
    assert np.allclose(ds.position.sel(keypoints="snout").values[:, :, 0], xyz[:, 0],
                       equal_nan=True)


def test_individuals_get_one_pose_estimation_each(tmp_path: Path) -> None:
    from livepose.formats.anipose3d import read_anipose3d
    from livepose.formats.dlc_multi import write_dlc_multi_csv
    from livepose.recording.nwb import export_nwb

    s, xyz = _session(tmp_path, None)
    names = list(read_anipose3d(s / "pose3d.csv").keypoints)
    ind = np.full((T, 2, len(names), 3), np.nan)
    ind[:, 0] = xyz
    ind[:, 1] = xyz + 100.0
    write_dlc_multi_csv(s / "pose3d_individuals.csv", ind, ["id0", "id1"], names,
                        coords=("x", "y", "z"))
    out = tmp_path / "m.nwb"
    res = export_nwb(s, out)
    assert res["series"]["pose3d_id0"] == T and res["series"]["pose3d_id1"] == T
    with pynwb.NWBHDF5IO(str(out), "r") as io:
        beh = io.read().processing["behavior"]
        a = beh["pose3d_id1"].pose_estimation_series["snout"]
        assert np.allclose(a.data[:], xyz[:, 0] + 100.0, equal_nan=True)
        assert np.allclose(np.diff(a.timestamps[:]), 0.02)
