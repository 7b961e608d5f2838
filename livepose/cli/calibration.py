"""``livepose calibration …``: bring another tool's calibration into livepose (Anipose TOML
with its length unit). See docs/fusion.md, "Calibrations from other tools"."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from livepose.cli.console import failer
from livepose.core.errors import UserError

FORMATS = ("auto", "qualisys", "pose2sim", "anipose", "freemocap", "caliscope")


def _video_sizes(items: list[str]) -> dict[str, tuple[int, int]]:
    """``["cam01=1080x1920", …]`` → ``{"cam01": (1080, 1920)}`` (UserError naming the item)."""
    out: dict[str, tuple[int, int]] = {}
    for item in items:
        name, _, size = item.partition("=")
        w, _, h = size.lower().partition("x")
        if not (name and w.isdigit() and h.isdigit() and int(w) > 0 and int(h) > 0):
            raise UserError(f"--video-size {item!r}: expected CAMERA=WIDTHxHEIGHT, e.g. "
                            "cam01=1080x1920")
        out[name] = (int(w), int(h))
    return out


def register(app: typer.Typer, err: Console) -> None:
    """Add the ``calibration`` sub-app to ``app``."""
    calib_app = typer.Typer(no_args_is_help=True,
                            help="Import calibrations from other tools.")
    app.add_typer(calib_app, name="calibration")

    @calib_app.command("import")
    def import_(
        source: Annotated[Path, typer.Argument(
            help="Qualisys .qca.txt, Pose2Sim / Anipose / FreeMoCap / caliscope TOML")],
        out: Annotated[Path, typer.Option("--out", help="Anipose calibration TOML to write")],
        fmt: Annotated[str, typer.Option("--format", help=f"one of {', '.join(FORMATS)}")]
        = "auto",
        video_size: Annotated[list[str] | None, typer.Option(
            "--video-size", help="CAMERA=WIDTHxHEIGHT of a video recorded at another "
            "resolution than the calibration's (Qualisys); repeat per camera")] = None,
        units: Annotated[str | None, typer.Option(
            help="convert translations to this unit (m, cm, mm); default: the file's")] = None,
        source_units: Annotated[str | None, typer.Option(
            "--source-units", help="the unit of SOURCE's translations when the file does not "
            "say (m, cm, mm): an Anipose file of a rig calibrated in metres, say")] = None,
        pose2sim_distortion: Annotated[bool, typer.Option(
            help="Qualisys: divide distortion by 64 as Pose2Sim does")] = False,
    ) -> None:
        """Convert SOURCE to an Anipose calibration TOML that records its length unit."""
        from livepose.core.calibration import check_unit, write_calibration
        from livepose.formats.calibrations import convert_units, import_calibration

        try:
            if fmt not in FORMATS:
                raise UserError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
            kwargs: dict[str, object] = {}
            if video_size:
                kwargs["video_size"] = _video_sizes(video_size)
            if pose2sim_distortion:
                kwargs["distortion_scale"] = 1.0 / 64.0
            check_unit(units, "--units")
            check_unit(source_units, "--source-units")
            cams, unit = import_calibration(source, fmt, **kwargs)
            if source_units is not None:
                if unit is not None and unit != source_units:
                    raise UserError(f"{source}: the file says its unit is {unit!r}, not "
                                    f"{source_units!r} (--source-units)")
                unit = source_units
            if units is not None:
                if unit is None:
                    raise UserError(f"{source}: the file does not say its unit; cannot convert "
                                    f"to {units!r} (say what it is: --source-units m|cm|mm)")
                cams, unit = convert_units(cams, unit, units), units
            write_calibration(out, cams, units=unit)
        except UserError as exc:
            failer(err)(exc)
        Console().print(f"{out}: {len(cams)} camera(s) "
                        f"({', '.join(f'{c.name} {c.size[0]}x{c.size[1]}' for c in cams)}), "
                        f"unit {unit or 'unknown'}", highlight=False)
