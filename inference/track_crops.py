"""Several animals per view through 3D-guided crops: once fusion's individuals are locked,
one crop per individual per view around its projected 3D keypoints, every crop of every view
in one batched model call; full-frame blob detection only to (re)acquire.

Why: the masked full-frame route (:class:`~livepose.inference.instances.MaskedInstances`)
runs the model once per animal per view on the *whole* frame (12 full-frame calls per
frame-set for 3 animals × 4 cameras); a crop of ``size`` × ``size`` frame pixels (96 by
default, native resolution; the bundled model was trained on 128 × 128 crops and is as
accurate on 96 × 96 ones, docs/multi-animal.md) costs a ninth of a 320×256 frame. A fully convolutional model takes any input size when its ONNX input has
dynamic height and width (the bundled one does); a model with a fixed input keeps the
full-frame route (:func:`crops_supported`).

Per frame-set, for each view:

1. **Track crops.** Every individual with ``min_keypoints`` projected keypoints inside the
   frame gets a crop (:func:`~livepose.inference.crops.place_crop`: centred on the
   keypoints' box grown by ``margin``; a larger box makes a larger crop, resampled to
   ``size``). Inside the crop (:func:`_track_mask_nb`): ``|frame - background| >
   threshold`` opened and dilated as the blob detector does, 8-connected components; a
   component that holds projected keypoints of this individual only is its own, one that
   holds another individual's only is that one's, one with both (two animals touching) or
   none is split pixel by pixel by the nearest projected keypoint (both: another individual
   has 40 % of its keypoints there, the blob detector's rule for a merged blob). Pixels of the other
   individuals (grown by ``mask_margin_px``) are replaced by the background — the model sees
   one animal on an empty floor, as in the blob route. A crop whose own pixels are fewer
   than ``min_area_px`` (the animal hidden or gone in this view) is not run.
2. **Re-acquisition.** On a *detection* frame-set the blob detector runs on the full frame
   (:class:`~livepose.inference.blobs.BlobDetector`, compiled, a few ms) with the
   individuals' projections: a blob that holds none of them (a new animal, a lost track)
   gets a crop of its own (the other blobs replaced by the background); a merged blob
   without individuals is dropped. Detection frame-sets: while there are no individuals,
   while fewer than ``individuals`` (fixed count) are known, while the previous detection
   found an unclaimed blob (free number of individuals), and one in ``reacquire_every``.
3. **One model call** on all crops; keypoints mapped back to frame pixels. A keypoint off
   the crop's own pixels (beyond ``tol_px``) gets confidence 0; a crop whose animal shared a
   component with another gets half confidence on the others (as a split blob does).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from livepose.inference.blobs import BlobDetector, diff_open_nb, label_nb, square_nb
from livepose.inference.crops import place_crop
from livepose.inference.decode import decode_outputs
from livepose.inference.engine import Engine
from livepose.inference.manifest import Manifest
from livepose.inference.preprocess import Preprocessor


def crops_supported(engine: Engine) -> bool:
    """Whether ``engine`` takes any input height and width (dynamic ONNX dimensions)."""
    shape = getattr(engine, "input_shape", None)
    if shape is None or len(shape) != 4:
        return False
    return all(not (isinstance(d, int) and d > 0) for d in shape[2:4])


@nb.njit(cache=True, nogil=True)
def _track_mask_nb(sub: np.ndarray, bgf: np.ndarray, bg8: np.ndarray, thr: float,
                   r_open: int, r_join: int, kp: np.ndarray, owner: np.ndarray, me: int,
                   margin: int, out: np.ndarray, own: np.ndarray) -> tuple[int, bool]:
    """One track crop (module docstring, step 1).

    Parameters
    ----------
    sub, bgf, bg8
        ``(h, w)`` the frame's crop (uint8), the background (float64, uint8) there.
    kp
        ``(K, 2)`` projected keypoints in crop pixels (finite), every individual's.
    owner, me
        ``(K,)`` int64: whose each keypoint is (``0..T-1``); this crop's individual.
    out, own
        ``(h, w)`` uint8 image for the model, bool pixels of this individual (written).

    Returns
    -------
    tuple[int, bool]
        Own pixel count; whether a component was shared with another individual.
    """
    h, w = sub.shape
    core = np.empty((h, w), np.bool_)
    tmp = np.empty((h, w), np.bool_)
    fg = np.empty((h, w), np.bool_)
    labels = np.empty((h, w), np.int32)
    diff_open_nb(sub, bgf, thr, r_open, r_join, core, tmp, fg)  # the blob detector's
    n = label_nb(fg, labels)
    K = kp.shape[0]
    T = 0
    for k in range(K):
        T = max(T, owner[k] + 1)
    counts = np.zeros((n + 1, T), np.int64)
    total = np.zeros(T, np.int64)
    for k in range(K):
        total[owner[k]] += 1
        x = int(np.floor(kp[k, 0] + 0.5))
        y = int(np.floor(kp[k, 1] + 0.5))
        lab = 0
        for r in range(4):  # the nearest labelled pixel within 3 px (thin parts opened away)
            for yy in range(max(y - r, 0), min(y + r + 1, h)):
                for xx in range(max(x - r, 0), min(x + r + 1, w)):
                    if lab == 0 and labels[yy, xx] > 0:
                        lab = labels[yy, xx]
            if lab > 0:
                break
        if lab > 0:
            counts[lab, owner[k]] += 1
    # per component: this individual's keypoints on it, and whether another individual
    # holds 40 % of its keypoints there (the blob detector's merged rule; a stray tail tip
    # of another does not make a component shared)
    n_own = np.zeros(n + 1, np.int64)
    n_oth = np.zeros(n + 1, np.int64)
    big = np.zeros(n + 1, np.bool_)
    for lab in range(1, n + 1):
        for t in range(T):
            if t == me:
                n_own[lab] = counts[lab, t]
            else:
                n_oth[lab] += counts[lab, t]
                if counts[lab, t] >= 0.4 * total[t] and counts[lab, t] > 0:
                    big[lab] = True
    theirs = np.zeros((h, w), np.bool_)
    n_theirs = 0
    count = 0
    shared = False
    for lab in range(1, n + 1):
        if n_own[lab] > 0 and big[lab]:
            shared = True
    for y in range(h):
        for x in range(w):
            lab = labels[y, x]
            mine = False
            if lab > 0:
                if n_own[lab] > 0 and not big[lab]:
                    mine = True
                elif n_oth[lab] > 0 and n_own[lab] == 0:
                    mine = False
                else:  # two animals, or nobody's: the nearest projected keypoint decides
                    best = np.inf
                    anyone = n_own[lab] == 0 and n_oth[lab] == 0
                    for k in range(K):
                        if not (anyone or owner[k] == me or counts[lab, owner[k]] > 0):
                            continue  # only the individuals on this component
                        d = (kp[k, 0] - x) ** 2 + (kp[k, 1] - y) ** 2
                        if d < best:
                            best = d
                            mine = owner[k] == me
                if not mine:
                    theirs[y, x] = True
                    n_theirs += 1
            own[y, x] = mine
            count += mine
    if n_theirs == 0:
        out[:, :] = sub
        return count, shared
    grown = np.empty((h, w), np.bool_)
    if margin > 0:
        square_nb(theirs, margin, False, grown)
    else:
        grown[:, :] = theirs
    for y in range(h):
        for x in range(w):
            out[y, x] = bg8[y, x] if grown[y, x] and not own[y, x] else sub[y, x]
    return count, shared


@nb.njit(cache=True, nogil=True)
def _on_mask_nb(mask: np.ndarray, pts: np.ndarray, x0: float, y0: float, tol: int,
                conf_scale: float) -> None:
    """Keypoints ``pts`` ``(J, 3)`` (frame px; in place): confidence × ``conf_scale``, or 0
    when no pixel of ``mask`` (crop at ``x0, y0``) lies at the point or ``tol`` px around it
    (the 3 × 3 pattern of the blob route's check)."""
    h, w = mask.shape
    for j in range(pts.shape[0]):
        x, y = pts[j, 0] - x0, pts[j, 1] - y0
        on = False
        if np.isfinite(x) and np.isfinite(y):
            xi, yi = int(np.floor(x)), int(np.floor(y))
            for dy in (-tol, 0, tol):
                for dx in (-tol, 0, tol):
                    xx, yy = xi + dx, yi + dy
                    if 0 <= xx < w and 0 <= yy < h and mask[yy, xx]:
                        on = True
        pts[j, 2] = pts[j, 2] * conf_scale if on else 0.0


class TrackCrops:
    """Instances of a frame-set from the individuals' 3D-guided crops (module docstring).

    Parameters
    ----------
    engine, manifest
        The single-animal model; ``engine`` must take any input size
        (:func:`crops_supported`).
    detectors
        One :class:`BlobDetector` per camera (backgrounds learnt): the background, and the
        full-frame detection of detection frame-sets.
    individuals
        The fixed number of individuals (``fusion.multi.individuals``), or ``None``.
    size
        Crop side (frame pixels, before a crop grows; the model input side).
    margin
        Pixels around the projected keypoints' box.
    min_keypoints
        Projected keypoints inside the frame an individual needs for a crop.
    reacquire_every
        A detection frame-set at least one in this many.
    max_crops
        Crops per view at most.
    """

    def __init__(self, engine: Engine, manifest: Manifest, detectors: list[BlobDetector],
                 individuals: int | None = None, size: int = 96, margin: float = 8.0,
                 min_keypoints: int = 4, reacquire_every: int = 15, max_crops: int = 6,
                 min_area_px: int = 100, tol_px: int = 6) -> None:
        self.engine = engine
        self.manifest = manifest
        self.detectors = detectors
        self.individuals = individuals
        self.size = int(size)
        self.margin = float(margin)
        self.min_keypoints = int(min_keypoints)
        self.every = max(int(reacquire_every), 1)
        self.max_crops = int(max_crops)
        self.min_area_px = int(min_area_px)
        self.tol_px = int(tol_px)
        self.J = len(manifest.keypoints)
        spec = manifest.input.model_copy(update={"width": self.size, "height": self.size,
                                                 "resize": "letterbox"})
        self.pre = Preprocessor(spec, len(detectors) * self.max_crops)
        self.pre.warm_up()
        self.count = 0
        self.pending = False
        self.counters = {"track_crops": 0, "blob_crops": 0, "detections": 0, "hidden": 0,
                         "shared": 0}
        self._warm()

    def _warm(self) -> None:
        """Compile (or load) the kernels for the types of a frame's slices."""
        z = np.zeros((10, 10), np.uint8)
        _track_mask_nb(z[1:9, 1:9], np.zeros((10, 10))[1:9, 1:9], z[1:9, 1:9], 28.0, 1, 2,
                       np.zeros((1, 2)), np.zeros(1, np.int64), 0, 4, np.empty((8, 8), np.uint8),
                       np.empty((8, 8), np.bool_))
        _on_mask_nb(np.zeros((8, 8), np.bool_), np.zeros((1, 3), np.float32), 0.0, 0.0, 6, 1.0)

    def detecting(self, n_known: int) -> bool:
        """Whether the next frame-set is a detection frame-set (module docstring)."""
        return (n_known == 0 or self.pending or self.count % self.every == 0
                or (self.individuals is not None and n_known < self.individuals))

    def __call__(self, frames: list[np.ndarray], expected: list[np.ndarray | None] | None
                 ) -> list[np.ndarray]:
        """Instances of one frame-set.

        Parameters
        ----------
        frames
            ``C`` mono uint8 frames ``(H, W)``, camera order.
        expected
            Per view the individuals' projected keypoints ``(T, J, 2)`` (NaN: unknown), or
            ``None`` (no individuals; a view's ``None``: none there).

        Returns
        -------
        list[np.ndarray]
            Per view ``(K, J, 3)`` float32 x, y (frame px), confidence.
        """
        T = max((len(e) for e in expected or [] if e is not None), default=0)
        detect = self.detecting(T)
        self.count += 1
        if detect:
            self.counters["detections"] += 1
            self.pending = False
        slots: list[tuple[int, int, int, np.ndarray, float]] = []  # view, x0, y0, own, scale
        for c, (frame, det) in enumerate(zip(frames, self.detectors, strict=True)):
            exp = None if expected is None else expected[c]
            k0 = len(slots)
            if exp is not None and len(exp):
                self._track_crops(c, frame, det, exp, slots)
            if detect:
                self._blob_crops(c, frame, det, exp, slots, self.max_crops - (len(slots) - k0))
        views = [np.empty((0, self.J, 3), np.float32) for _ in frames]
        if not slots:
            return views
        n = len(slots)
        pts = self.pre.to_frame_pixels(decode_outputs(self.engine.run(self.pre.batch(n)),
                                                      self.manifest))
        pts = pts.astype(np.float32, copy=False)
        for i, (_c, x0, y0, own, scale) in enumerate(slots):
            pts[i, :, 0] += x0
            pts[i, :, 1] += y0
            _on_mask_nb(own, pts[i], float(x0), float(y0), self.tol_px, scale)
        cams = np.array([s[0] for s in slots])
        return [pts[cams == c] for c in range(len(frames))]

    def _fill(self, slots: list[tuple[int, int, int, np.ndarray, float]], c: int,
              img: np.ndarray, box: tuple[int, int, int, int], own: np.ndarray,
              scale: float) -> None:
        x0, y0, w, h = box
        self.pre.fill(len(slots), img, "Mono8", None if (w, h) == (self.size, self.size)
                      else (0, 0, w, h))
        slots.append((c, x0, y0, own, scale))

    def _track_crops(self, c: int, frame: np.ndarray, det: BlobDetector, exp: np.ndarray,
                     slots: list[tuple[int, int, int, np.ndarray, float]]) -> None:
        assert det.background is not None and det.bg8 is not None
        fh, fw = frame.shape
        T = exp.shape[0]
        fin = np.isfinite(exp).all(axis=-1) & (exp[..., 0] >= -0.5) & (
            exp[..., 0] <= fw - 0.5) & (exp[..., 1] >= -0.5) & (exp[..., 1] <= fh - 0.5)
        flat = exp.reshape(-1, 2)
        okf = fin.reshape(-1)
        owner = np.repeat(np.arange(T), self.J)
        for t in np.flatnonzero(fin.sum(axis=1) >= self.min_keypoints)[: self.max_crops]:
            x0, y0, w, h = place_crop(exp[t][fin[t]], (fw, fh), (self.size, self.size),
                                      self.margin)
            kp = flat[okf] - (x0, y0)
            sub = frame[y0:y0 + h, x0:x0 + w]
            out = np.empty((h, w), np.uint8)
            own = np.empty((h, w), np.bool_)
            n_own, shared = _track_mask_nb(
                sub, det.background[y0:y0 + h, x0:x0 + w], det.bg8[y0:y0 + h, x0:x0 + w],
                det.threshold, det.open_px, det.join_px, np.ascontiguousarray(kp), owner[okf],
                int(t), det.mask_margin_px, out, own)
            if n_own < self.min_area_px:
                self.counters["hidden"] += 1
                continue
            self.counters["track_crops"] += 1
            self.counters["shared"] += shared
            self._fill(slots, c, out, (x0, y0, w, h), own, 0.5 if shared else 1.0)

    def _blob_crops(self, c: int, frame: np.ndarray, det: BlobDetector,
                    exp: np.ndarray | None, slots: list[tuple[int, int, int, np.ndarray, float]],
                    room: int) -> None:
        fh, fw = frame.shape
        blobs = det.detect(frame, exp)
        new = [b for b in blobs if not b.tracks and not b.merged][: max(room, 0)]
        if not new:
            return
        self.pending = self.pending or (exp is not None and self.individuals is None)
        img = np.empty(frame.shape, np.uint8)
        for b in new:
            bx0, by0, bx1, by1 = b.box
            box = place_crop(np.array([[bx0, by0], [bx1, by1]], float), (fw, fh),
                             (self.size, self.size), 2.0)
            x0, y0, w, h = box
            det.masked(frame, blobs, b, img)
            own = det.labels[y0:y0 + h, x0:x0 + w] == b.label
            self.counters["blob_crops"] += 1
            self._fill(slots, c, np.ascontiguousarray(img[y0:y0 + h, x0:x0 + w]), box, own,
                       1.0)
