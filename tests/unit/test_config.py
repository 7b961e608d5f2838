"""Config: defaults load; every mistake names the file, the field and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from livepose.core.config import ConfigError, load_config, load_default_config

BASE = {"cameras": [{"name": "a", "backend": "sim"}, {"name": "b", "backend": "sim"}]}


def write(tmp_path: Path, data: object) -> Path:
    p = tmp_path / "rig.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_default_config_loads() -> None:
    cfg = load_default_config()
    assert cfg.camera_names == ["cam0", "cam1", "cam2", "cam3"]
    assert cfg.is_sim and cfg.fps > 0


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"cameras": [{"name": "a", "backend": "baslr"}]},
            ["cameras.0", "'baslr'", "allowed: sim"],
        ),
        ({"fps": -3}, ["fps", "greater than 0"]),
        ({"fusion": {"min_views": 1}}, ["fusion.min_views=1", "needs 2 views or more",
                                         "one camera: fusion.mode: lift"]),
        ({"fusion": {"min_viewz": 2}}, ["fusion.min_viewz", "unknown field"]),
        ({"transport": {"kind": "udp"}}, ["transport.kind", "'udp'", "'ipc' or 'tcp'"]),
        (
            {"cameras": [{"name": "a", "backend": "sim"}, {"name": "a", "backend": "sim"}]},
            ["unique", "'a'"],
        ),
        ({"fusion": {"min_views": 3}}, ["min_views=3", "2 cameras"]),
        ({"model": {"providers": "fastest"}}, ["model.providers"]),
        ({"cameras": []}, ["cameras", "at least 1"]),
    ],
)
def test_errors_name_file_field_and_allowed(
    tmp_path: Path, change: dict, expected: list[str]
) -> None:
    p = write(tmp_path, {**BASE, **change})
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    msg = str(ei.value)
    assert str(p) in msg
    for e in expected:
        assert e in msg, (e, msg)
    assert "\n" not in msg


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    p = tmp_path / "bad.yaml"
    p.write_text("cameras: [\n  - {name: a\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    p.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(p)


def test_relative_paths_resolve_against_config_dir(tmp_path: Path) -> None:
    p = write(tmp_path, {**BASE, "calibration": "calib.toml", "model": {"path": "m.onnx"}})
    cfg = load_config(p)
    assert cfg.calibration == tmp_path / "calib.toml"
    assert cfg.model.path == str(tmp_path / "m.onnx")


def test_bundled_full_configs_validate() -> None:
    """Every config in configs/ that describes a whole run (it has cameras) loads."""
    from pathlib import Path

    import yaml

    from livepose.core.config import load_config

    root = Path(__file__).parents[2] / "configs"
    full = [p for p in sorted(root.glob("*.yaml")) if "cameras" in (yaml.safe_load(
        p.read_text()) or {})]
    assert {p.name for p in full} >= {"demo.yaml", "demo_multi.yaml"}
    cfgs = {p.name: load_config(p) for p in full}
    multi = cfgs["demo_multi.yaml"]
    assert multi.sim.animals == 3 and multi.fusion.multi.enabled
    assert multi.fusion.multi.individuals == 3
