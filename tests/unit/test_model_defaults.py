"""A model's manifest brings its subject's ``fusion.multi`` defaults; a config's own values
win, and a malformed section is refused naming the field."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from livepose.core.config import MultiConfig, load_default_config
from livepose.core.errors import UserError
from livepose.core.modelinfo import apply_model_defaults, fusion_noise_px, manifest_path
from livepose.inference.manifest import ModelError, default_model_dir, load_manifest


def test_blazepose_brings_the_gates_for_people_and_a_config_keeps_its_own() -> None:
    cfg = load_default_config()
    cfg.model.path = "blazepose"
    cfg.fusion.multi.gate_mm = 90.0  # the user's: kept
    section = yaml.safe_load(manifest_path(cfg).read_text())["multi"]
    applied = apply_model_defaults(cfg)
    assert cfg.fusion.multi.gate_mm == 90.0
    multi = {k.removeprefix("fusion.multi."): v for k, v in applied.items()
             if k.startswith("fusion.multi.")}
    assert multi == {k: v for k, v in section.items() if k != "gate_mm"} and multi
    m, default = cfg.fusion.multi, MultiConfig()
    for k, v in multi.items():
        assert getattr(m, k) == v != getattr(default, k), k
    # its 2D noise too (null: the model's), so a session's config records what fusion used
    assert applied["fusion.pixel_noise_px"] == cfg.fusion.pixel_noise_px == fusion_noise_px(cfg)
    assert cfg.fusion.pixel_noise_px > 1.0
    assert m.enabled is False and m.individuals is None  # never the model's to choose
    assert apply_model_defaults(cfg) == {}  # once applied, the fields are the config's


def test_the_sim_model_brings_only_its_noise() -> None:
    cfg = load_default_config()
    before = cfg.fusion.multi.model_dump()
    assert apply_model_defaults(cfg) == {"fusion.pixel_noise_px": 1.0}
    assert cfg.fusion.multi.model_dump() == before


def test_a_configured_noise_wins_over_the_manifests() -> None:
    cfg = load_default_config()
    cfg.model.path = "blazepose"
    assert fusion_noise_px(cfg) > 1.0  # the manifest's
    cfg.fusion.pixel_noise_px = 3.0
    assert fusion_noise_px(cfg) == 3.0
    assert "fusion.pixel_noise_px" not in apply_model_defaults(cfg)
    assert cfg.fusion.pixel_noise_px == 3.0


@pytest.mark.parametrize(("section", "message"), [
    ({"individuals": 3}, "multi: individuals cannot come from a model; allowed: epipolar_px"),
    ({"gate_mm": -5}, "multi.gate_mm: Input should be greater than 0"),
    ({"gate_mm": "wide"}, "multi.gate_mm: Input should be a valid number"),
    ([1, 2], "multi: a mapping of fusion.multi fields, got list"),
])
def test_a_malformed_section_names_the_field(tmp_path: Path, section: object,
                                             message: str) -> None:
    model = tmp_path / "model"
    shutil.copytree(default_model_dir("default"), model)
    data = yaml.safe_load((model / "manifest.yaml").read_text())
    data["multi"] = section
    (model / "manifest.yaml").write_text(yaml.safe_dump(data))
    cfg = load_default_config()
    cfg.model.path = str(model)
    before = cfg.fusion.multi.model_dump()
    with pytest.raises(UserError, match=message):
        apply_model_defaults(cfg)
    assert cfg.fusion.multi.model_dump() == before  # nothing half-applied
    with pytest.raises(ModelError, match=message.split(":", maxsplit=1)[0]):
        load_manifest(model / "manifest.yaml")
