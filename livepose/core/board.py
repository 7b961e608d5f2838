"""The calibration board, described once: ChArUco (any dictionary, OpenCV's legacy or current
pattern) or a plain checkerboard, with its square length and unit. It lives in the core
because the calibration tools, the sim rig's board camera and the benchmark share it; OpenCV
is imported only by the functions that draw or detect.

A printed board is rarely at its nominal size: ``measured_square`` overrides the nominal
square length (the marker length scales with it), and every 3D point uses the measured one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from livepose.core.calibration import LENGTH_UNITS
from livepose.core.errors import UserError

MM_PER_INCH = 25.4


class BoardError(UserError, ValueError):
    """A board description that cannot be right (sizes, dictionary, unit)."""


def cv2_module() -> Any:
    """``cv2`` with the aruco module, or a one-line error naming the extra to install."""
    try:
        import cv2
    except ImportError:
        raise UserError("calibration needs OpenCV: pip install 'livepose[calibrate]'") from None
    if not hasattr(cv2, "aruco") or not hasattr(cv2.aruco, "CharucoDetector"):
        raise UserError(f"OpenCV {cv2.__version__} has no cv2.aruco.CharucoDetector; "
                        "need opencv-python-headless>=4.9")
    return cv2


@dataclass(frozen=True)
class Board:
    """A calibration board.

    Parameters
    ----------
    kind
        ``"charuco"`` or ``"checkerboard"``.
    squares
        Squares across and down ``(nx, ny)``; a checkerboard of ``(nx-1) × (ny-1)`` inner
        corners (OpenCV's pattern size) has ``squares = (cols+1, rows+1)``.
    square_length
        Nominal side of one square, in ``unit``.
    unit
        ``"mm"``, ``"cm"`` or ``"m"``: the unit of the calibration's translations.
    marker_length
        ChArUco: side of one ArUco marker, in ``unit``.
    dictionary
        ChArUco: an OpenCV predefined dictionary name, e.g. ``"DICT_4X4_50"``.
    legacy
        ChArUco: OpenCV's pattern before 4.6 (boards made by older OpenCV, calib.io and
        Anipose with an even number of rows start with a marker in the other corner).
    measured_square
        The square length measured on the print (same unit); overrides the nominal one.
    """

    kind: Literal["charuco", "checkerboard"] = "charuco"
    squares: tuple[int, int] = (5, 7)
    square_length: float = 40.0
    unit: str = "mm"
    marker_length: float = 30.0
    dictionary: str = "DICT_4X4_50"
    legacy: bool = False
    measured_square: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("charuco", "checkerboard"):
            raise BoardError(f"board kind {self.kind!r}: expected charuco or checkerboard")
        nx, ny = self.squares
        if nx < 3 or ny < 3:
            raise BoardError(f"board squares {nx}x{ny}: need at least 3x3")
        if self.unit not in LENGTH_UNITS:
            raise BoardError(f"board unit {self.unit!r}: expected one of {sorted(LENGTH_UNITS)}")
        if not self.square_length > 0:
            raise BoardError(f"board square length {self.square_length}: must be > 0")
        if self.measured_square is not None and not self.measured_square > 0:
            raise BoardError(f"measured square {self.measured_square}: must be > 0")
        if self.kind == "charuco":
            if not 0 < self.marker_length < self.square_length:
                raise BoardError(f"marker length {self.marker_length} must be > 0 and smaller "
                                 f"than the square ({self.square_length})")
            if not self.dictionary.startswith("DICT_"):
                raise BoardError(f"dictionary {self.dictionary!r}: expected an OpenCV name "
                                 "like DICT_4X4_50")

    @classmethod
    def checkerboard(cls, corners: tuple[int, int], square_length: float,
                     unit: str = "mm", measured_square: float | None = None) -> Board:
        """A checkerboard of ``corners = (cols, rows)`` inner corners (OpenCV pattern size)."""
        return cls(kind="checkerboard", squares=(corners[0] + 1, corners[1] + 1),
                   square_length=square_length, unit=unit, measured_square=measured_square)

    # ------------------------------------------------------------------ geometry

    @property
    def length(self) -> float:
        """Square length used for 3D points: the measured one if given, else nominal."""
        return float(self.measured_square or self.square_length)

    @property
    def marker(self) -> float:
        """Marker length used for 3D points (scaled like the square)."""
        return float(self.marker_length) * self.length / float(self.square_length)

    @property
    def inner(self) -> tuple[int, int]:
        """Inner corners ``(cols, rows)``."""
        return self.squares[0] - 1, self.squares[1] - 1

    @property
    def n_corners(self) -> int:
        """Number of inner corners (ChArUco corner ids run ``0 … n_corners-1``)."""
        cols, rows = self.inner
        return cols * rows

    def object_points(self) -> np.ndarray:
        """Inner corners on the board plane ``(n_corners, 3)`` in ``unit`` (``z = 0``), in
        id order: row-major from the first corner, x fastest (OpenCV's order for both
        ChArUco corner ids and checkerboard pattern corners)."""
        cols, rows = self.inner
        j, i = np.meshgrid(np.arange(cols), np.arange(rows))
        L = self.length
        pts = np.stack([(j.ravel() + 1) * L, (i.ravel() + 1) * L, np.zeros(cols * rows)], axis=1)
        if self.kind == "checkerboard":
            pts[:, :2] -= L  # first inner corner at the origin, as OpenCV users do
        return pts

    @property
    def size(self) -> tuple[float, float]:
        """Board width and height (squares only), in ``unit``."""
        return self.squares[0] * self.length, self.squares[1] * self.length

    def cv_dictionary(self) -> Any:
        cv2 = cv2_module()
        code = getattr(cv2.aruco, self.dictionary, None)
        if not isinstance(code, int):
            raise BoardError(f"dictionary {self.dictionary!r} is not an OpenCV predefined one")
        return cv2.aruco.getPredefinedDictionary(code)

    def cv_board(self) -> Any:
        """The OpenCV ``CharucoBoard`` (ChArUco only), in ``unit``."""
        if self.kind != "charuco":
            raise BoardError("a checkerboard has no ChArUco board")
        cv2 = cv2_module()
        d = self.cv_dictionary()
        nx, ny = self.squares
        n_markers = (nx * ny) // 2
        if n_markers > int(d.bytesList.shape[0]):
            raise BoardError(f"{nx}x{ny} squares need {n_markers} markers; {self.dictionary} "
                             f"has {d.bytesList.shape[0]}")
        b = cv2.aruco.CharucoBoard((nx, ny), self.length, self.marker, d)
        b.setLegacyPattern(bool(self.legacy))
        return b

    # ------------------------------------------------------------------ printing

    def image(self, px_per_square: int = 100, margin_squares: float = 0.5) -> np.ndarray:
        """The board as a grey image ``(H, W)`` uint8, ``px_per_square`` pixels per square
        and a white margin of ``margin_squares`` squares."""
        nx, ny = self.squares
        pps = int(px_per_square)
        if self.kind == "charuco":
            img = self.cv_board().generateImage((nx * pps, ny * pps), marginSize=0,
                                                borderBits=1)
        else:
            yy, xx = np.mgrid[0:ny * pps, 0:nx * pps]
            img = np.where(((yy // pps) + (xx // pps)) % 2 == 0, 0, 255).astype(np.uint8)
        m = round(margin_squares * pps)
        return np.pad(img, m, constant_values=255)

    def save(self, out: str | Path, dpi: int = 300, margin_squares: float = 0.5) -> Path:
        """Write the board at true scale: PNG with its DPI, or a PDF page of that size.

        The square length is rounded to whole pixels at ``dpi``; the file says so by its
        DPI, and a 1 % scale error over the board is caught by ``measured_square``.
        """
        from PIL import Image

        p = Path(out)
        if p.suffix.lower() not in (".png", ".pdf"):
            raise BoardError(f"{p}: the board is written as .png or .pdf")
        mm = self.square_length * LENGTH_UNITS[self.unit] * 1000.0
        pps = round(mm / MM_PER_INCH * dpi)
        if pps < 20:
            raise BoardError(f"{mm:.1f} mm squares at {dpi} dpi are {pps} px: raise --dpi")
        img = Image.fromarray(self.image(pps, margin_squares))
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.suffix.lower() == ".pdf":
            img.save(p, "PDF", resolution=float(dpi))
        else:
            img.save(p, dpi=(dpi, dpi))
        return p

    # ------------------------------------------------------------------ files

    def dump(self, path: str | Path) -> Path:
        """Write the description as TOML (``[board]``), to be passed back with ``--board``."""
        import tomli_w

        doc: dict[str, Any] = {"kind": self.kind, "squares": list(self.squares),
                               "square_length": self.square_length, "unit": self.unit}
        if self.kind == "charuco":
            doc |= {"marker_length": self.marker_length, "dictionary": self.dictionary,
                    "legacy": self.legacy}
        if self.measured_square is not None:
            doc["measured_square"] = self.measured_square
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(tomli_w.dumps({"board": doc}))
        return p

    @classmethod
    def load(cls, path: str | Path) -> Board:
        """Read a description written by :meth:`dump` (or by hand)."""
        import tomllib

        p = Path(path)
        try:
            doc = tomllib.loads(p.read_text())["board"]
        except (OSError, tomllib.TOMLDecodeError, KeyError) as exc:
            raise BoardError(f"{p}: not a board description ({exc})") from None
        known = {"kind", "squares", "square_length", "unit", "marker_length", "dictionary",
                 "legacy", "measured_square"}
        extra = sorted(set(doc) - known)
        if extra:
            raise BoardError(f"{p}: unknown board key(s) {extra}; allowed {sorted(known)}")
        if "squares" in doc:
            sq = doc["squares"]
            if not (isinstance(sq, list) and len(sq) == 2 and all(isinstance(v, int) for v in sq)):
                raise BoardError(f"{p}: squares must be [cols, rows], got {sq!r}")
            doc["squares"] = (sq[0], sq[1])
        try:
            return cls(**doc)
        except TypeError as exc:
            raise BoardError(f"{p}: {exc}") from None

    def describe(self) -> str:
        """One line: kind, squares, lengths, dictionary."""
        nx, ny = self.squares
        s = f"{self.kind} {nx}x{ny} squares of {self.length:g} {self.unit}"
        if self.kind == "charuco":
            s += (f", markers {self.marker:g} {self.unit}, {self.dictionary}"
                  f"{' (legacy pattern)' if self.legacy else ''}")
        else:
            s += f" ({self.inner[0]}x{self.inner[1]} inner corners)"
        return s
