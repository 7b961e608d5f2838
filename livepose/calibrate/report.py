"""The calibration report: one HTML page (per-camera reprojection error, detections, corner
coverage and the rig seen from above and from the side, as inline SVG) and a PNG of the
per-camera error histograms."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from livepose.calibrate.bundle import BundleResult
from livepose.calibrate.detect import Detections
from livepose.calibrate.intrinsics import Intrinsics
from livepose.core.board import Board


def _rig_svg(res: BundleResult, axes: tuple[int, int], title: str) -> str:
    cen = np.stack([c.center for c in res.cameras])
    bt = res.board_t[np.isfinite(res.board_t[:, 0])]
    pts = np.concatenate([cen, bt]) if bt.size else cen
    lo, hi = pts[:, list(axes)].min(0), pts[:, list(axes)].max(0)
    span = float(max(hi - lo)) or 1.0

    def xy(p: np.ndarray) -> tuple[float, float]:
        q = (p[list(axes)] - lo) / span
        return 20 + 260 * float(q[0]), 280 - 260 * float(q[1])

    out = [f'<svg width="300" height="300" style="border:1px solid #ccc"><text x="5" y="15">'
           f'{title}</text>']
    for p in bt:
        x, y = xy(p)
        out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2" fill="#999"/>')
    for c in res.cameras:
        x, y = xy(c.center)
        tip = c.center + c.R[2] * 0.15 * span
        x2, y2 = xy(tip)
        out.append(f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" '
                   'stroke="#c00"/>')
        out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="#c00"/>'
                   f'<text x="{x + 6:.1f}" y="{y:.1f}">{html.escape(c.name)}</text>')
    out.append("</svg>")
    return "".join(out)


def coverage(uv: np.ndarray, size: tuple[int, int], grid: tuple[int, int] = (8, 8)
             ) -> np.ndarray:
    """Corners seen per image cell ``(gy, gx)`` from ``uv`` ``(F, N, 2)``."""
    w, h = size
    p = uv.reshape(-1, 2)
    p = p[np.isfinite(p[:, 0])]
    gx = np.clip((p[:, 0] / w * grid[0]).astype(int), 0, grid[0] - 1)
    gy = np.clip((p[:, 1] / h * grid[1]).astype(int), 0, grid[1] - 1)
    cov = np.zeros((grid[1], grid[0]), int)
    np.add.at(cov, (gy, gx), 1)
    return cov


def write_report(path: Path, det: Detections, res: BundleResult, intr: list[Intrinsics],
                 board: Board) -> Path:
    """Write the HTML report to ``path`` (and ``path`` with ``.png``: error histograms)."""
    from PIL import Image, ImageDraw

    rows = []
    views = det.views().sum(1)
    shared = det.shared()
    for c, cam in enumerate(res.cameras):
        e = res.errors[c][res.inliers[c]]
        cov = coverage(det.uv[c], det.sizes[c])
        filled = float((cov > 0).mean())
        rows.append(
            f"<tr><td>{html.escape(cam.name)}</td><td>{views[c]}</td>"
            f"<td>{e.size}</td><td>{np.mean(e):.3f}</td><td>{np.percentile(e, 95):.3f}</td>"
            f"<td>{intr[c].rms:.3f}</td><td>{cam.matrix[0, 0]:.1f} / {cam.matrix[1, 1]:.1f}</td>"
            f"<td>{cam.matrix[0, 2]:.1f}, {cam.matrix[1, 2]:.1f}</td>"
            f"<td>{filled:.0%}</td></tr>")
    pairs = " ".join(f"{det.names[i]}–{det.names[j]}: {shared[i, j]}"
                     for i in range(len(det.names)) for j in range(i + 1, len(det.names)))
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>livepose calibration
</title></head><body style="font-family:sans-serif">
<h1>Calibration</h1><p>{html.escape(board.describe())}; mean reprojection error
{res.reproj_px:.3f} px over the kept corners; solved in {res.seconds:.2f} s.</p>
<table border="1" cellpadding="4"><tr><th>camera</th><th>views</th><th>corners kept</th>
<th>mean error (px)</th><th>95th pct (px)</th><th>intrinsics RMS (px)</th><th>fx / fy</th>
<th>cx, cy</th><th>image coverage</th></tr>{"".join(rows)}</table>
<p>Shared views per camera pair: {html.escape(pairs)}</p>
<h2>Rig</h2>{_rig_svg(res, (0, 2), "camera 0 frame: x (right) / z (forward)")}
{_rig_svg(res, (0, 1), "x (right) / y (down)")}
<p><img src="{html.escape(path.with_suffix('.png').name)}"></p></body></html>"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc)
    W, H = 300, 160
    img = Image.new("RGB", (W * len(res.cameras), H), "white")
    d = ImageDraw.Draw(img)
    for c, cam in enumerate(res.cameras):
        e = res.errors[c][res.inliers[c]]
        hist, _ = np.histogram(e, bins=30, range=(0, max(1.0, float(np.percentile(e, 99)))))
        top = max(int(hist.max()), 1)
        for b, n in enumerate(hist):
            x0 = c * W + 10 + b * 9
            d.rectangle([x0, H - 20 - 120 * n / top, x0 + 7, H - 20], fill="#36c")
        d.text((c * W + 10, 5), f"{cam.name}: mean {np.mean(e):.3f} px", fill="black")
    img.save(path.with_suffix(".png"))
    return path
