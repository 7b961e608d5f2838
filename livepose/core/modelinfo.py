"""What every process may know of the run's model without loading it: keypoint names and
skeleton from the manifest (the inference stage owns the manifest's full schema)."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import yaml

from livepose.core.config import Config

log = logging.getLogger(__name__)

#: ``model.path`` values naming a model bundled in ``livepose.inference`` (``models/<name>``).
BUNDLED_MODELS = ("default", "blazepose", "default-crops")


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
