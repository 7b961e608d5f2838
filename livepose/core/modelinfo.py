"""What every process may know of the run's model without loading it: keypoint names and
skeleton from the manifest (the inference stage owns the manifest's full schema), and the
defaults its subject brings to a run's config (:func:`apply_model_defaults`)."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from livepose.core.config import Config, MultiConfig
from livepose.core.errors import UserError

log = logging.getLogger(__name__)

#: ``model.path`` values naming a model bundled in ``livepose.inference`` (``models/<name>``).
BUNDLED_MODELS = ("default", "blazepose", "default-crops")

#: ``fusion.multi`` fields a manifest's ``multi`` section may set: what depends on the
#: model's subject (its size, speed, keypoints, images), not on the user's experiment
SUBJECT_FIELDS = ("epipolar_px", "min_keypoints", "gate_mm", "confirm_frames", "timeout_s",
                  "min_motion_mm", "min_depth_ratio", "body_radius_mm")


def manifest_path(cfg: Config) -> Path:
    """The model manifest of ``cfg`` (``model.manifest``, or ``manifest.yaml`` next to the
    model), found without importing the inference stage."""
    if cfg.model.manifest is not None:
        return Path(cfg.model.manifest)
    if cfg.model.path in BUNDLED_MODELS:
        spec = importlib.util.find_spec("livepose.inference")
        roots = list(spec.submodule_search_locations or []) if spec else []
        return Path(roots[0] if roots else ".") / "models" / cfg.model.path / "manifest.yaml"
    p = Path(cfg.model.path)
    return (p if p.is_dir() else p.parent) / "manifest.yaml"


def model_keypoints(cfg: Config) -> tuple[list[str], list[tuple[str, str]]]:
    """Keypoint names and skeleton edges of the run's model (empty lists if unreadable)."""
    p = manifest_path(cfg)
    try:
        data = yaml.safe_load(p.read_text())
        names = [str(k) for k in data["keypoints"]]
        edges = [(str(a), str(b)) for a, b in data.get("skeleton") or []]
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        log.warning("no keypoint names from %s (%s)", p, exc)
        return [], []
    return names, edges


def model_noise_px(cfg: Config) -> float | None:
    """σ (px) of the run's model's keypoints at confidence 1 (manifest ``noise.sigma_px``),
    ``None`` when the manifest has none or cannot be read."""
    p = manifest_path(cfg)
    try:
        noise = (yaml.safe_load(p.read_text()) or {}).get("noise") or {}
        sigma = noise.get("sigma_px")
        return float(sigma) if sigma is not None else None
    except (OSError, yaml.YAMLError, AttributeError, TypeError, ValueError) as exc:
        log.warning("no noise model from %s (%s)", p, exc)
        return None


def fusion_noise_px(cfg: Config) -> float:
    """σ (px) of a 2D keypoint at confidence 1 that the run's fusion uses:
    ``fusion.pixel_noise_px`` when the config sets it, else the model manifest's
    ``noise.sigma_px``, else 1 px. Live fusion, replay, reanalysis and the benches all take it
    from here, so they fuse the same 2D into the same 3D."""
    if cfg.fusion.pixel_noise_px is not None:
        return float(cfg.fusion.pixel_noise_px)
    return model_noise_px(cfg) or 1.0


def check_multi_defaults(section: Any) -> dict[str, Any]:
    """A manifest's ``multi`` section, checked: keys among :data:`SUBJECT_FIELDS`, values
    as ``fusion.multi`` accepts them (``ValueError`` naming the field)."""
    if not isinstance(section, dict):
        raise ValueError(f"multi: a mapping of fusion.multi fields, got {type(section).__name__}")
    bad = sorted(str(k) for k in section if k not in SUBJECT_FIELDS)
    if bad:
        raise ValueError(f"multi: {', '.join(bad)} cannot come from a model; allowed: "
                         f"{', '.join(SUBJECT_FIELDS)}")
    try:
        checked = MultiConfig.model_validate(section)
    except ValidationError as exc:
        e = exc.errors()[0]
        raise ValueError(f"multi.{'.'.join(str(x) for x in e['loc'])}: {e['msg']}") from None
    return {k: getattr(checked, k) for k in section}


def apply_model_defaults(cfg: Config) -> dict[str, Any]:
    """Give the config what its model brings, where the config did not set it itself: the
    manifest's ``multi`` section (the subject's ``fusion.multi`` defaults, e.g. BlazePose's
    gates for people, in mm) and its 2D noise (``fusion.pixel_noise_px`` when null). Run
    once, where the config is made (the supervisor's preflight, a bench), before it is passed
    to processes and recorded with a session (whose replay then fuses as the run did).

    Returns
    -------
    dict
        The fields set from the manifest by dotted name (``fusion.multi.gate_mm``,
        ``fusion.pixel_noise_px``); empty when it brings nothing.

    Raises
    ------
    UserError
        The manifest's ``multi`` section is malformed (names the field).
    """
    p = manifest_path(cfg)
    try:
        section = (yaml.safe_load(p.read_text()) or {}).get("multi")
    except (OSError, yaml.YAMLError, AttributeError) as exc:
        log.debug("no model defaults from %s (%s)", p, exc)  # preflight reports the manifest
        return {}
    applied: dict[str, Any] = {}
    if section is not None:
        try:
            defaults = check_multi_defaults(section)
        except ValueError as exc:
            raise UserError(f"{p}: {exc}") from None
        m = cfg.fusion.multi
        for k, v in defaults.items():
            if k not in m.model_fields_set:
                setattr(m, k, v)
                applied[f"fusion.multi.{k}"] = v
    if cfg.fusion.pixel_noise_px is None:
        sigma = model_noise_px(cfg)
        if sigma is not None:
            cfg.fusion.pixel_noise_px = sigma
            applied["fusion.pixel_noise_px"] = sigma
    return applied
