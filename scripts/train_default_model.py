"""Train the bundled default 2D keypoint model (``inference/models/default``) on sim renders.

A developer step, not run by the tests. Reproducible given ``--seed``::

    .venv/bin/python scripts/train_default_model.py

renders a training set (the default rig's four cameras plus randomised camera placements,
optics, lighting, floor and brightness; random animal seeds and times), trains a small
heatmap CNN on 128×128 crops with torch on the CPU, exports ONNX (input ``image``
``N×1×H×W`` normalised mono, 256×320 in the manifest, any size accepted; output
``heatmaps`` ``N×J×H/4×W/4`` in [0, 1]), checks ONNX
Runtime against torch, evaluates on held-out renders of the default rig (2D error after
:func:`livepose.inference.decode.decode_heatmaps`, and 3D error after triangulating the four
views) and writes ``model.onnx`` and ``manifest.yaml``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from livepose.acquisition.sim.animal import KEYPOINTS, SKELETON, Rodent
from livepose.acquisition.sim.render import SimRenderer
from livepose.acquisition.sim.rig import arena_of, make_camera, make_rig
from livepose.core.camera import CameraModel
from livepose.core.config import SimConfig

ROOT = Path(__file__).resolve().parents[1]
STRIDE = 4
OFFSET = 1.5  # heatmap cell i is centred on input pixel OFFSET + i * STRIDE (decode.py)
SIGMA_PX = 4.0
NAMES = ["cam0", "cam1", "cam2", "cam3"]


# --------------------------------------------------------------------------- data


def _random_camera(rng: np.random.Generator, sim: SimConfig) -> CameraModel:
    w, h = sim.width, sim.height
    k1 = float(rng.uniform(-0.32, 0.02))
    dist = [k1, float(rng.uniform(0.0, 0.06)), *rng.normal(0, 6e-4, 2).tolist(), 0.0]
    target = np.array([*rng.normal(0.0, 20.0, 2), rng.uniform(0.0, 40.0)])
    return make_camera(
        "rand",
        (w, h),
        float(rng.uniform(0, 360)),
        float(rng.uniform(28, 75)),
        float(rng.uniform(420, 680)),
        float(w * rng.uniform(0.78, 1.15)),
        dist,
        (float(rng.uniform(-8, 8)), float(rng.uniform(-8, 8))),
        target,
        float(rng.normal(0, 3)),
    )


def _crop(
    img: np.ndarray, uv: np.ndarray, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A ``size`` square crop holding the keypoints (random placement), clipped to the image."""
    h, w = img.shape
    lo, hi = np.nanmin(uv, 0), np.nanmax(uv, 0)
    if rng.random() < 0.1:  # some crops anywhere near the animal, even cutting it
        c = 0.5 * (lo + hi) + rng.normal(0, size / 4, 2)
        x0, y0 = c - size / 2
    else:
        slack = np.maximum(size - 8 - (hi - lo), 0)
        x0, y0 = lo - 4 - rng.random(2) * slack
    x0 = int(np.clip(np.round(x0), 0, w - size))
    y0 = int(np.clip(np.round(y0), 0, h - size))
    return img[y0 : y0 + size, x0 : x0 + size], (uv - [x0, y0]).astype(np.float32)


def render_training_set(
    n: int, seed: int, size: int, frames_per_scene: int = 120
) -> tuple[np.ndarray, np.ndarray]:
    """Render ``n`` crops ``(n, size, size)`` uint8 and labels ``(n, J, 2)`` (crop pixels).

    Half the scenes use the default rig's cameras, half a random camera, random arena size,
    light, floor albedo, floor texture and sensor noise. Each scene has a new animal seed.
    """
    rng = np.random.default_rng(seed)
    base = SimConfig()
    rig = make_rig(base, NAMES)
    radius = arena_of(base).radius_mm
    default_renderers = [SimRenderer(c, base, radius) for c in rig.cameras]
    imgs = np.empty((n, size, size), np.uint8)
    kps = np.empty((n, len(KEYPOINTS), 2), np.float32)
    i = 0
    while i < n:
        if rng.random() < 0.5:
            cams, rends, r_arena = list(rig.cameras), default_renderers, radius
        else:
            sim = SimConfig(
                seed=int(rng.integers(1 << 30)),
                noise_std=float(rng.uniform(0.5, 4.0)),
                arena_diameter_mm=float(rng.uniform(320, 480)),
            )
            r_arena = arena_of(sim).radius_mm
            cam = _random_camera(rng, sim)
            light = np.array([*rng.normal(0, 0.35, 2), 1.0])
            cams = [cam]
            rends = [
                SimRenderer(
                    cam, sim, r_arena, light_dir=light, floor_albedo=float(rng.uniform(0.5, 0.9))
                )
            ]
        animal = Rodent(int(rng.integers(1, 1 << 30)), r_arena, float(rng.uniform(60, 200)))
        t_max = float(rng.uniform(100, 1000))
        for _ in range(min(frames_per_scene, n - i)):
            t = float(rng.uniform(0, t_max))
            spheres, albedo, kp3 = animal.pose(t)
            k = int(rng.integers(len(cams)))
            img = rends[k].render(spheres, albedo, int(rng.integers(1 << 20)))
            uv = cams[k].project(kp3)
            if not np.all(np.isfinite(uv)):
                continue
            imgs[i], kps[i] = _crop(img, uv, size, rng)
            i += 1
    return imgs, kps


def render_heldout(n: int, seed: int) -> dict[str, np.ndarray]:
    """Held-out full frames of the default rig: ``images`` ``(n, C, H, W)``, ``uv``
    ``(n, C, J, 2)``, ``xyz`` ``(n, J, 3)``; animals seeded apart from training."""
    rng = np.random.default_rng(seed)
    sim = SimConfig()
    rig = make_rig(sim, NAMES)
    radius = arena_of(sim).radius_mm
    rends = [SimRenderer(c, sim, radius) for c in rig.cameras]
    imgs = np.empty((n, len(NAMES), sim.height, sim.width), np.uint8)
    uv = np.empty((n, len(NAMES), len(KEYPOINTS), 2))
    xyz = np.empty((n, len(KEYPOINTS), 3))
    per_animal = 50
    for i in range(n):
        if i % per_animal == 0:
            animal = Rodent(-1 - i // per_animal, radius, sim.speed_mm_s)  # training uses ≥ 1
        t = float(rng.uniform(0, 600))
        spheres, albedo, kp3 = animal.pose(t)
        xyz[i] = kp3
        for c, (cam, r) in enumerate(zip(rig.cameras, rends, strict=True)):
            imgs[i, c] = r.render(spheres, albedo, i)
            uv[i, c] = cam.project(kp3)
    return {"images": imgs, "uv": uv, "xyz": xyz}


# --------------------------------------------------------------------------- model


def build_model(
    n_keypoints: int, widths: tuple[int, int, int, int] = (16, 20, 40, 64), head: int = 24
):  # type: ignore[no-untyped-def]
    """The heatmap CNN: stride-2 stem, stride-4/8/16 stages (dilated at 16 for a receptive
    field over the whole animal), top-down merge back to stride 4, 1×1 head."""
    import torch
    from torch import nn

    def cbr(i: int, o: int, s: int = 1, d: int = 1) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(i, o, 3, s, d, dilation=d, bias=False),
            nn.BatchNorm2d(o),
            nn.ReLU(inplace=True),
        )

    c1, c2, c3, c4 = widths

    class HeatmapNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = cbr(1, c1, 2)
            self.s4 = nn.Sequential(cbr(c1, c2, 2), cbr(c2, c2))
            self.s8 = nn.Sequential(cbr(c2, c3, 2), cbr(c3, c3))
            self.s16 = nn.Sequential(cbr(c3, c4, 2), cbr(c4, c4, d=2), cbr(c4, c4, d=4))
            self.lat16 = nn.Conv2d(c4, c3, 1)
            self.m8 = cbr(c3, c3, d=2)
            self.lat8 = nn.Conv2d(c3, c2, 1)
            self.m4 = cbr(c2, head)
            self.out = nn.Conv2d(head, n_keypoints, 1)
            self.up = nn.Upsample(scale_factor=2, mode="nearest")

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x4 = self.s4(self.stem(x))
            x8 = self.s8(x4)
            x16 = self.s16(x8)
            y8 = self.m8(x8 + self.up(self.lat16(x16)))
            return self.out(self.m4(x4 + self.up(self.lat8(y8))))

    return HeatmapNet()


def targets(kp, h: int, w: int):  # type: ignore[no-untyped-def]
    """Gaussian heatmaps ``(B, J, h, w)`` of height 1 for keypoints ``kp`` ``(B, J, 2)`` in
    input pixels; cell ``(i, j)`` is centred on pixel ``(OFFSET + j·STRIDE, OFFSET + i·STRIDE)``."""
    import torch

    gx = OFFSET + STRIDE * torch.arange(w, dtype=torch.float32)
    gy = OFFSET + STRIDE * torch.arange(h, dtype=torch.float32)
    dx = (gx[None, None, None, :] - kp[..., 0, None, None]) ** 2
    dy = (gy[None, None, :, None] - kp[..., 1, None, None]) ** 2
    return torch.exp(-(dx + dy) / (2 * SIGMA_PX**2))


def train(
    imgs: np.ndarray,
    kps: np.ndarray,
    mean: float,
    std: float,
    epochs: float,
    seed: int,
    batch: int = 32,
    lr: float = 3e-3,
    log: Path | None = None,
):  # type: ignore[no-untyped-def]
    """Train on crops with brightness/contrast/noise augmentation; returns the model."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed + 1)
    model = build_model(kps.shape[1])
    n = len(imgs)
    steps = int(epochs * n / batch)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=steps, pct_start=0.05, final_div_factor=200
    )
    size = imgs.shape[1]
    hh = ww = size // STRIDE
    t0 = time.time()
    run = 0.0
    model.train()
    order = rng.permutation(n)
    for step in range(steps):
        j = (step * batch) % n
        if j + batch > n:
            order = rng.permutation(n)
            j = 0
        idx = np.sort(order[j : j + batch])
        x = torch.from_numpy(imgs[idx]).float()[:, None] / 255.0
        gain = torch.from_numpy(rng.uniform(0.7, 1.3, (batch, 1, 1, 1))).float()
        bias = torch.from_numpy(rng.uniform(-0.08, 0.08, (batch, 1, 1, 1))).float()
        noise = torch.from_numpy(rng.uniform(0, 3.0, (batch, 1, 1, 1)) / 255.0).float()
        x = x * gain + bias + noise * torch.randn_like(x)
        x = (torch.round(x.clamp(0, 1) * 255) / 255 - mean) / std
        y = targets(torch.from_numpy(kps[idx]), hh, ww)
        p = model(x)
        loss = (((p - y) ** 2) * (1 + 10 * y)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        run = 0.98 * run + 0.02 * float(loss.detach()) if step else float(loss.detach())
        if step % 200 == 0 or step == steps - 1:
            lr_now = sched.get_last_lr()[0]
            msg = f"step {step}/{steps} loss {run:.5f} lr {lr_now:.2e} {time.time() - t0:.0f}s"
            print(msg, flush=True)
            if log is not None:
                with log.open("a") as fh:
                    fh.write(msg + "\n")
                torch.save(model.state_dict(), log.parent / "checkpoint.pt")
    model.eval()
    return model


# --------------------------------------------------------------------------- export


def export_onnx(model, path: Path, width: int, height: int) -> None:  # type: ignore[no-untyped-def]
    """Export ``clamp(model(image), 0, 1)`` to ONNX (opset 17, dynamic batch, height and
    width: the network is fully convolutional, and the several-animals worker runs it on
    crops, ``inference/track_crops.py``)."""
    import torch

    class Clamped(torch.nn.Module):
        def __init__(self, m: torch.nn.Module) -> None:
            super().__init__()
            self.m = m

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return torch.clamp(self.m(image), 0.0, 1.0)

    wrapped = Clamped(model).eval()
    x = torch.zeros(2, 1, height, width)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        wrapped,
        (x,),
        str(path),
        input_names=["image"],
        output_names=["heatmaps"],
        dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},  # any size: crops
                      "heatmaps": {0: "batch", 2: "height_out", 3: "width_out"}},
        opset_version=17,
        dynamo=False,
    )


# --------------------------------------------------------------------------- evaluation


def _session(path: Path, threads: int = 2):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def triangulate(cams: list[CameraModel], uvc: np.ndarray) -> np.ndarray:
    """Confidence-weighted DLT of ``uvc`` ``(C, J, 3)`` (pixels + confidence) → ``(J, 3)``."""
    nrm = [c.undistort(uvc[i, :, :2]) for i, c in enumerate(cams)]
    out = np.empty((uvc.shape[1], 3))
    for j in range(uvc.shape[1]):
        rows = []
        for i, c in enumerate(cams):
            w = max(float(uvc[i, j, 2]), 1e-3)
            x, y = nrm[i][j]
            rows += [w * (x * c.P[2] - c.P[0]), w * (y * c.P[2] - c.P[1])]
        _, _, vt = np.linalg.svd(np.asarray(rows))
        out[j] = vt[-1, :3] / vt[-1, 3]
    return out


def evaluate(
    onnx_path: Path, held: dict[str, np.ndarray], mean: float, std: float
) -> dict[str, object]:
    """2D errors (px) per keypoint and overall, PCK@5px, 3D errors (mm) over the 4 views."""
    from livepose.inference.decode import decode_heatmaps

    sess = _session(onnx_path)
    imgs, uv, xyz = held["images"], held["uv"], held["xyz"]
    n, c = imgs.shape[:2]
    pred = np.empty((n, c, len(KEYPOINTS), 3), np.float32)
    for i in range(n):
        x = ((imgs[i][:, None].astype(np.float32) / 255.0) - mean) / std
        hm = sess.run(None, {"image": x})[0]
        pred[i] = decode_heatmaps(hm, STRIDE, OFFSET)
    err = np.linalg.norm(pred[..., :2] - uv, axis=-1)  # (n, C, J)
    rig = make_rig(SimConfig(), NAMES)
    e3 = np.stack(
        [np.linalg.norm(triangulate(rig.cameras, pred[i]) - xyz[i], axis=-1) for i in range(n)]
    )
    per_kp = {k: round(float(np.median(err[:, :, j])), 3) for j, k in enumerate(KEYPOINTS)}
    per_kp95 = {
        k: round(float(np.percentile(err[:, :, j], 95)), 3) for j, k in enumerate(KEYPOINTS)
    }
    per_kp3 = {k: round(float(np.median(e3[:, j])), 3) for j, k in enumerate(KEYPOINTS)}
    return {
        "frames": int(n),
        "views": int(n * c),
        "median_px": round(float(np.median(err)), 3),
        "p95_px": round(float(np.percentile(err, 95)), 3),
        "pck5": round(float(np.mean(err < 5.0)), 4),
        "median_conf": round(float(np.median(pred[..., 2])), 3),
        "per_keypoint_median_px": per_kp,
        "per_keypoint_p95_px": per_kp95,
        "median_3d_mm": round(float(np.median(e3)), 3),
        "p95_3d_mm": round(float(np.percentile(e3, 95)), 3),
        "per_keypoint_median_3d_mm": per_kp3,
    }


def time_inference(
    onnx_path: Path, width: int, height: int, batch: int = 4, runs: int = 200
) -> float:
    """Median ONNX Runtime (CPU, 2 threads) latency in ms for one batch."""
    sess = _session(onnx_path)
    x = np.random.default_rng(0).standard_normal((batch, 1, height, width)).astype(np.float32)
    for _ in range(10):
        sess.run(None, {"image": x})
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, {"image": x})
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts) * 1e3)


def write_manifest(path: Path, mean: float, std: float, info: dict[str, object]) -> None:
    """``manifest.yaml`` in the ``livepose-model/1`` schema."""
    sim = SimConfig()

    def flow(seq: list[str]) -> str:
        return "[" + ", ".join(seq) + "]"

    training = ", ".join(f"{k}: {v}" for k, v in info.items())
    text = (
        "format: livepose-model/1\n"
        "name: sim-rodent-heatmap-v1\n"
        "file: model.onnx\n"
        f"input: {{name: image, layout: NCHW, width: {sim.width}, height: {sim.height}, "
        f"channels: 1, color: mono, scale: {1 / 255!r}, mean: [{mean:.6f}], "
        f"std: [{std:.6f}], resize: none}}\n"
        f"output: {{name: heatmaps, type: heatmap, stride: {STRIDE}, offset: {OFFSET}, "
        "activation: none}\n"
        f"keypoints: {flow(KEYPOINTS)}\n"
        f"skeleton: [{', '.join(flow([a, b]) for a, b in SKELETON)}]\n"
        f"training: {{{training}}}\n"
    )
    path.write_text(text)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--samples", type=int, default=60000, help="training crops")
    ap.add_argument("--epochs", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--heldout", type=int, default=400, help="held-out frame-sets (4 views)")
    ap.add_argument("--out", type=Path, default=ROOT / "inference/models/default")
    ap.add_argument(
        "--cache",
        type=Path,
        default=ROOT / "build/train_default_model",
        help="rendered data cache folder",
    )
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    args.cache.mkdir(parents=True, exist_ok=True)
    data = args.cache / f"train_{args.samples}_{args.seed}_{args.crop}.npz"
    t0 = time.time()
    if data.exists():
        z = np.load(data)
        imgs, kps = z["imgs"], z["kps"]
    else:
        imgs, kps = render_training_set(args.samples, args.seed, args.crop)
        np.savez(data, imgs=imgs, kps=kps)
    print(f"training set {imgs.shape} ready in {time.time() - t0:.0f}s", flush=True)
    mean = float(imgs[:2000].mean() / 255.0)
    std = float(imgs[:2000].std() / 255.0)
    t1 = time.time()
    model = train(imgs, kps, mean, std, args.epochs, args.seed, log=args.cache / "train.log")
    train_s = time.time() - t1
    torch.save(model.state_dict(), args.cache / "model.pt")
    onnx_path = args.out / "model.onnx"
    export_onnx(model, onnx_path, SimConfig().width, SimConfig().height)

    # ONNX Runtime must agree with torch
    x = torch.randn(4, 1, SimConfig().height, SimConfig().width)
    with torch.no_grad():
        ref = torch.clamp(model(x), 0, 1).numpy()
    got = _session(onnx_path).run(None, {"image": x.numpy()})[0]
    diff = float(np.abs(ref - got).max())
    print(f"onnx vs torch max |diff| = {diff:.2e}", flush=True)
    if diff > 1e-3:
        raise SystemExit("ONNX export disagrees with torch")

    held = render_heldout(args.heldout, args.seed + 12345)
    res = evaluate(onnx_path, held, mean, std)
    ms = time_inference(onnx_path, SimConfig().width, SimConfig().height)
    res["onnx_batch4_ms"] = round(ms, 2)
    res["train_seconds"] = round(train_s)
    res["onnx_bytes"] = onnx_path.stat().st_size
    print(json.dumps(res, indent=1), flush=True)
    (args.cache / "eval.json").write_text(json.dumps(res, indent=1))
    write_manifest(
        args.out / "manifest.yaml",
        mean,
        std,
        {
            "script": "scripts/train_default_model.py",
            "samples": args.samples,
            "epochs": args.epochs,
            "seed": args.seed,
            "heldout_median_px": res["median_px"],
            "heldout_p95_px": res["p95_px"],
            "heldout_pck5": res["pck5"],
        },
    )


if __name__ == "__main__":
    main()
