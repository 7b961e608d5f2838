"""File formats the field's tools read and write: DeepLabCut / Lightning Pose 2D CSV
(:mod:`~livepose.formats.dlc`), Anipose 3D CSV (:mod:`~livepose.formats.anipose3d`) and TRC
(:mod:`~livepose.formats.trc`, OpenSim / Pose2Sim markers). NumPy in, NumPy out; no pandas."""

from livepose.core.errors import UserError


class FormatError(UserError, ValueError):
    """A pose file is unreadable or not in the expected layout (names the file and why)."""


__all__ = ["FormatError"]
