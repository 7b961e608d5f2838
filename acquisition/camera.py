"""The camera process: one per camera. Grabs, stamps, numbers and publishes frames.

It never blocks on a consumer: frames go out on a PUB socket whose high-water mark drops
frames for a slow subscriber (each consumer detects the gap from ``frame_id``). A small
decimated JPEG preview (``preview/<cam>``) goes out on the same socket for the dashboard.

``ctx.args``: ``camera`` (index into ``cfg.cameras``).
"""

from __future__ import annotations

import io
import time

import numpy as np
import zmq

from livepose import protocol
from livepose.acquisition.base import CameraBackend, make_backend
from livepose.acquisition.identity import FrameIdentity
from livepose.process import StageContext


def encode_preview(image: np.ndarray, scale: float, quality: int) -> tuple[np.ndarray, int, int]:
    """Downscale (by striding) and JPEG-encode a frame.

    Parameters
    ----------
    image
        ``(H, W)`` or ``(H, W, 3)`` uint8/uint16.

    Returns
    -------
    tuple
        JPEG bytes as uint8 ``(N,)``, width, height.
    """
    from PIL import Image

    step = max(1, round(1.0 / scale))
    small = image[::step, ::step]
    if small.dtype != np.uint8:
        small = (small >> 8).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(small)).save(buf, format="JPEG", quality=quality)
    return np.frombuffer(buf.getvalue(), dtype=np.uint8), small.shape[1], small.shape[0]


class CameraLoop:
    """Drives one backend and publishes what it grabs."""

    def __init__(self, ctx: StageContext, backend: CameraBackend, pub: zmq.Socket) -> None:  # type: ignore[type-arg]
        self.ctx = ctx
        self.cam = backend
        self.pub = pub
        self.identity = FrameIdentity(
            counter_bits=backend.counter_bits, origin=backend.counter_origin
        )
        self.preview_every = max(1, round(ctx.cfg.fps / ctx.cfg.preview.fps))

    def publish(self, grab_t_trigger: int | None, grab: object) -> None:
        """Number, stamp and publish one grab (and maybe its preview)."""
        from livepose.acquisition.base import Grab

        assert isinstance(grab, Grab)
        ident = self.identity.update(grab.counter)
        c = self.ctx.counters
        if ident is None:
            c["duplicates"] += 1
            return
        frame_id, dropped = ident
        if dropped:
            c["dropped"] += dropped
            self.ctx.error(f"{self.cam.name}: {dropped} frame(s) dropped before frame {frame_id}")
        msg = protocol.Frame(
            cam=self.cam.name,
            frame_id=frame_id,
            t_grab_ns=grab.t_grab_ns,
            pixel_format=self.cam.pixel_format,
            image=grab.image,
            t_trigger_ns=grab.t_trigger_ns if grab.t_trigger_ns is not None else grab_t_trigger,
            t_exposure_ns=None,
            dropped_before=dropped,
        )
        msg.t_pub_ns = time.time_ns()
        self.pub.send_multipart(protocol.encode(msg), copy=False)
        c["frames"] += 1
        if frame_id % self.preview_every == 0:
            p = self.ctx.cfg.preview
            jpeg, w, h = encode_preview(grab.image, p.scale, p.jpeg_quality)
            prev = protocol.Preview(
                cam=self.cam.name,
                frame_id=frame_id,
                t_grab_ns=grab.t_grab_ns,
                width=w,
                height=h,
                jpeg=jpeg,
            )
            self.pub.send_multipart(protocol.encode(prev))


def main(ctx: StageContext) -> None:
    """Camera process main."""
    index = int(ctx.args["camera"])
    cam_cfg = ctx.cfg.cameras[index]
    backend = make_backend(cam_cfg, cfg=ctx.cfg, index=index)
    pub = ctx.socket(
        zmq.PUB, bind=ctx.endpoints[f"frame/{cam_cfg.name}"], hwm=ctx.cfg.transport.frame_hwm
    )
    trig = None
    if backend.software_triggered:
        trig = ctx.socket(zmq.SUB, connect=ctx.endpoints["trigger"], subscribe=b"trigger")
    decoder = protocol.Decoder(expect=["trigger"])
    backend.open()
    try:
        backend.arm()
        loop = CameraLoop(ctx, backend, pub)
        ctx.ready(pixel_format=backend.pixel_format)
        ctx.set_state("running")
        while not ctx.stopping:
            ctx.tick_health()
            ctx.counters["rejected"] = decoder.rejected
            if trig is None:
                grab = backend.grab(0.1)
                if grab is not None:
                    loop.publish(None, grab)
                continue
            if not trig.poll(100):
                continue
            while True:
                try:
                    parts = trig.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                msg = decoder.decode(parts)
                if not isinstance(msg, protocol.Trigger):
                    continue
                backend.software_trigger(msg.frame_id, msg.t_trigger_ns)
                grab = backend.grab(1.0)
                if grab is None:
                    ctx.error(f"{backend.name}: no image within 1 s of trigger {msg.frame_id}")
                    continue
                loop.publish(msg.t_trigger_ns, grab)
    finally:
        backend.close()
