"""Acquisition-side preparation of a run, called by the supervisor before any process starts."""

from __future__ import annotations

from pathlib import Path

from livepose.core.calibration import calibration_units, read_calibration
from livepose.core.config import Config
from livepose.core.errors import UserError


def prepare_run(cfg: Config, run_dir: Path, need_calibration: bool = True) -> dict[str, str]:
    """Check the acquisition side of a config and return run-wide facts.

    For a simulated rig without a calibration file, the rig's own calibration is written to
    ``run_dir/calibration.toml``. Every backend name is checked. ``need_calibration=False``
    (a run that calibrates the rig): the calibration file is neither read nor required.

    Returns
    -------
    dict
        ``{"calibration": path}``: the calibration every stage must use.
    """
    from livepose.acquisition.base import BACKENDS, require_sdk

    for cam in cfg.cameras:
        if cam.backend not in BACKENDS:
            raise UserError(
                f"camera {cam.name!r}: unknown backend {cam.backend!r}; "
                f"allowed: {', '.join(BACKENDS)}"
            )
        require_sdk(cam)  # a missing SDK stops the run before any process starts
    if not need_calibration:
        return {"calibration": str(cfg.calibration or ""), "units": "mm"}
    if cfg.calibration is None:
        from livepose.acquisition.sim.backend import write_rig_calibration

        path = write_rig_calibration(cfg, run_dir / "calibration.toml")
    else:
        path = Path(cfg.calibration)
    try:
        read_calibration(path, cfg.camera_names)
        units = calibration_units(path, cfg.calibration_units)
    except ValueError as exc:  # CalibrationError is a ValueError
        raise UserError(str(exc)) from None
    return {"calibration": str(path), "units": units}
