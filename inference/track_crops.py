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
   none is split pixel by pixel by the nearest projected keypoint — or, given the keypoints'
   depths (:func:`project_individuals`, ``fusion.multi.body_radius_mm`` > 0), by the body
   capsule nearest the camera that holds the pixel (:func:`_capsule_owner_nb`) — (both:
   another individual has 40 % of its keypoints there, the blob detector's rule for a merged
   blob). Pixels of the other
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

from livepose.core.camera import CameraModel
from livepose.core.config import Config
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
def _capsule_owner_nb(x: float, y: float, kpa: np.ndarray, za: np.ndarray, ra: np.ndarray,
                      bones: np.ndarray, allowed: np.ndarray) -> int:
    """The individual whose body holds pixel ``(x, y)`` (module docstring, step 1): among
    the ``allowed`` individuals' capsules (each bone of ``bones`` ``(B, 2)``, radius ``ra``
    px and depth ``za`` interpolated along it; ``kpa`` ``(T, J, 2)`` crop px), the one
    nearest the camera that contains the pixel, else the one whose surface is nearest; -1
    when no bone is known."""
    best_z, in_owner = np.inf, -1
    best_s, s_owner = np.inf, -1
    for t in range(kpa.shape[0]):
        if not allowed[t]:
            continue
        for b in range(bones.shape[0]):
            i, j = bones[b, 0], bones[b, 1]
            ax, ay, bx, by = kpa[t, i, 0], kpa[t, i, 1], kpa[t, j, 0], kpa[t, j, 1]
            if not (np.isfinite(ax) and np.isfinite(ay) and np.isfinite(bx)
                    and np.isfinite(by) and np.isfinite(ra[t, i]) and np.isfinite(ra[t, j])):
                continue
            dx, dy = bx - ax, by - ay
            L2 = dx * dx + dy * dy
            u = 0.0
            if L2 > 0.0:
                u = min(max(((x - ax) * dx + (y - ay) * dy) / L2, 0.0), 1.0)
            px, py = ax + u * dx, ay + u * dy
            s = np.sqrt((x - px) ** 2 + (y - py) ** 2) - (ra[t, i] + u * (ra[t, j] - ra[t, i]))
            z = za[t, i] + u * (za[t, j] - za[t, i])
            if s <= 0.0 and z < best_z:
                best_z, in_owner = z, t
            if s < best_s:
                best_s, s_owner = s, t
    return in_owner if in_owner >= 0 else s_owner


@nb.njit(cache=True, nogil=True)
def _track_mask_nb(sub: np.ndarray, bgf: np.ndarray, bg8: np.ndarray, thr: float,
                   r_open: int, r_join: int, kp: np.ndarray, owner: np.ndarray, me: int,
                   margin: int, out: np.ndarray, own: np.ndarray, kpa: np.ndarray,
                   za: np.ndarray, ra: np.ndarray, bones: np.ndarray) -> tuple[int, bool]:
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
    kpa, za, ra, bones
        Every individual's projected keypoints ``(T, J, 2)`` (crop px, NaN: unknown), their
        depths and body radii (px) ``(T, J)``, and the skeleton's bones ``(B, 2)``: the
        pixels of a component two animals share go to the body that holds them
        (:func:`_capsule_owner_nb`); no bones: to the nearest projected keypoint.

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
    allowed = np.zeros(max(T, kpa.shape[0]), np.bool_)
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
                else:  # two animals, or nobody's: the bodies (or keypoints) decide
                    anyone = n_own[lab] == 0 and n_oth[lab] == 0
                    for t in range(T):  # only the individuals on this component
                        allowed[t] = anyone or t == me or counts[lab, t] > 0
                    who = -1
                    if bones.shape[0] > 0:
                        who = _capsule_owner_nb(x + 0.0, y + 0.0, kpa, za, ra, bones, allowed)
                    if who >= 0:
                        mine = who == me
                    else:
                        best = np.inf
                        for k in range(K):
                            if not allowed[owner[k]]:
                                continue
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


def crop_model_path(cfg: Config) -> str | None:
    """``fusion.multi.crop_model`` resolved: the crop model's ``model.path``, or ``None``
    for the main model (``'auto'``: the bundled ``default-crops`` with the bundled
    ``default``)."""
    name = cfg.fusion.multi.crop_model
    if name == "auto":
        return "default-crops" if cfg.model.path == "default" else None
    return None if name == "main" else name


def crop_engine(cfg: Config, engine: Engine, manifest: Manifest) -> tuple[Engine, Manifest]:
    """The engine and manifest for the crops (:func:`crop_model_path`); the main ones when
    the crops use the main model.

    Raises
    ------
    ModelError
        The crop model's keypoints differ from the main model's, or it takes a fixed input
        size.
    """
    from livepose.inference.engine import create_engine, engine_name
    from livepose.inference.manifest import ModelError, resolve_model

    name = crop_model_path(cfg)
    if name is None:
        return engine, manifest
    mc = cfg.model.model_copy(update={"path": name, "manifest": None})
    try:
        path, man = resolve_model(mc)
    except ModelError as exc:
        raise ModelError(f"fusion.multi.crop_model {name!r}: {exc}") from None
    if list(man.keypoints) != list(manifest.keypoints):
        raise ModelError(f"fusion.multi.crop_model {name}: keypoints {man.keypoints} differ "
                         f"from model.path's {manifest.keypoints}")
    eng = create_engine(engine_name(mc, path), path, man, mc)
    if not crops_supported(eng):
        raise ModelError(f"fusion.multi.crop_model {name}: a fixed input size; crops need "
                         "dynamic height and width")
    return eng, man


def project_individuals(cameras: list[CameraModel], xyz: np.ndarray, body_radius: float
                        ) -> tuple[list[np.ndarray | None], list[np.ndarray | None]]:
    """The individuals ``xyz`` ``(T, J, 3)`` in every view, for :class:`TrackCrops`: per
    camera the projected keypoints ``(T, J, 2)`` (distorted px) and each keypoint's depth
    and body radius in px ``(T, J, 2)`` (``f_x · body_radius / depth``; calibration units),
    ``None`` per camera when ``body_radius`` is 0; NaN where a keypoint is unknown or behind
    the camera. ``None`` per camera without individuals."""
    if not len(xyz):
        return [None] * len(cameras), [None] * len(cameras)
    bodies = body_radius > 0  # else the nearest projected keypoint splits: no depths
    T, J = xyz.shape[:2]
    flat = np.ascontiguousarray(xyz, dtype=np.float64).reshape(-1, 3)
    ok = np.isfinite(flat).all(axis=1)
    uvs: list[np.ndarray | None] = []
    deps: list[np.ndarray | None] = []
    for cam in cameras:
        z = flat @ cam.R[2] + float(cam.tvec[2])
        good = ok & (z > 0)
        uv = np.full((len(flat), 2), np.nan)
        if good.any():
            uv[good] = cam.project(flat[good])
        uvs.append(uv.reshape(T, J, 2))
        if bodies:
            dep = np.full((len(flat), 2), np.nan)
            dep[good, 0] = z[good]
            dep[good, 1] = cam.matrix[0, 0] * body_radius / z[good]
            deps.append(dep.reshape(T, J, 2))
        else:
            deps.append(None)
    return uvs, deps


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
        index = {k: i for i, k in enumerate(manifest.keypoints)}
        self.bones = np.array([(index[a], index[b]) for a, b in manifest.skeleton],
                              dtype=np.int64).reshape(-1, 2)
        spec = manifest.input.model_copy(update={"width": self.size, "height": self.size,
                                                 "resize": "letterbox"})
        self.pre = Preprocessor(spec, len(detectors) * self.max_crops)
        self.pre.warm_up()
        self.count = 0
        self.pending = False
        self.shared_scale = 0.5  # confidence of a crop whose animal shared a component
        self.last_owner: list[np.ndarray] = []  # per view: each instance's crop owner
        self.counters = {"track_crops": 0, "blob_crops": 0, "detections": 0, "hidden": 0,
                         "shared": 0}
        self._warm()

    def _warm(self) -> None:
        """Compile (or load) the kernels for the types of a frame's slices: a live frame is
        read-only (a ring's slot, a decoded message), the background standing in for a
        missing view is not; each is its own numba specialisation, and one compiled at the
        first crop stalls the worker for seconds."""
        z = np.zeros((10, 10), np.uint8)
        ro = z.copy()
        ro.setflags(write=False)
        for frame in (z, ro):
            for bones in (self.bones, np.zeros((0, 2), np.int64)):
                _track_mask_nb(frame[1:9, 1:9], np.zeros((10, 10))[1:9, 1:9], z[1:9, 1:9],
                               28.0, 1, 2, np.zeros((1, 2)), np.zeros(1, np.int64), 0, 4,
                               np.empty((8, 8), np.uint8), np.empty((8, 8), np.bool_),
                               np.zeros((1, self.J, 2)), np.ones((1, self.J)),
                               np.ones((1, self.J)), bones)
        _on_mask_nb(np.zeros((8, 8), np.bool_), np.zeros((1, 3), np.float32), 0.0, 0.0, 6, 1.0)

    def owners(self, keys: np.ndarray | None) -> list[np.ndarray]:
        """Per view, the last call's instances' owners as track keys ``(K_c,)`` int64: the
        key of the individual (``keys`` ``(T,)``, in the order of ``expected``) each crop
        was cut for, -1 for blob crops and without keys."""
        k = np.zeros(0, np.int64) if keys is None else np.asarray(keys, np.int64)
        if not len(k):
            return [np.full(len(o), -1, np.int64) for o in self.last_owner]
        return [np.where(o >= 0, k[np.clip(o, 0, len(k) - 1)], -1) for o in self.last_owner]

    def detecting(self, n_known: int) -> bool:
        """Whether the next frame-set is a detection frame-set (module docstring)."""
        return (n_known == 0 or self.pending or self.count % self.every == 0
                or (self.individuals is not None and n_known < self.individuals))

    def __call__(self, frames: list[np.ndarray], expected: list[np.ndarray | None] | None,
                 depths: list[np.ndarray | None] | None = None) -> list[np.ndarray]:
        """Instances of one frame-set.

        Parameters
        ----------
        frames
            ``C`` mono uint8 frames ``(H, W)``, camera order.
        expected
            Per view the individuals' projected keypoints ``(T, J, 2)`` (NaN: unknown), or
            ``None`` (no individuals; a view's ``None``: none there).
        depths
            Per view ``(T, J, 2)``: each projected keypoint's depth and body radius (px)
            (:func:`project_individuals`); without them, overlapping animals' pixels go to
            the nearest projected keypoint.

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
        slots: list[tuple[int, int, int, np.ndarray, float, int]] = []  # view, x0, y0, own, scale, owner
        for c, (frame, det) in enumerate(zip(frames, self.detectors, strict=True)):
            exp = None if expected is None else expected[c]
            k0 = len(slots)
            if exp is not None and len(exp):
                dep = None if depths is None else depths[c]
                self._track_crops(c, frame, det, exp, dep, slots)
            if detect:
                self._blob_crops(c, frame, det, exp, slots, self.max_crops - (len(slots) - k0))
        views = [np.empty((0, self.J, 3), np.float32) for _ in frames]
        self.last_owner = [np.array([s[5] for s in slots if s[0] == c], np.int64)
                           for c in range(len(frames))]
        if not slots:
            return views
        n = len(slots)
        pts = self.pre.to_frame_pixels(decode_outputs(self.engine.run(self.pre.batch(n)),
                                                      self.manifest))
        pts = pts.astype(np.float32, copy=False)
        for i, (_c, x0, y0, own, scale, _o) in enumerate(slots):
            pts[i, :, 0] += x0
            pts[i, :, 1] += y0
            _on_mask_nb(own, pts[i], float(x0), float(y0), self.tol_px, scale)
        cams = np.array([s[0] for s in slots])
        return [pts[cams == c] for c in range(len(frames))]

    def _fill(self, slots: list[tuple[int, int, int, np.ndarray, float, int]], c: int,
              img: np.ndarray, box: tuple[int, int, int, int], own: np.ndarray,
              scale: float, owner: int) -> None:
        x0, y0, w, h = box
        self.pre.fill(len(slots), img, "Mono8", None if (w, h) == (self.size, self.size)
                      else (0, 0, w, h))
        slots.append((c, x0, y0, own, scale, owner))

    def _track_crops(self, c: int, frame: np.ndarray, det: BlobDetector, exp: np.ndarray,
                     dep: np.ndarray | None,
                     slots: list[tuple[int, int, int, np.ndarray, float, int]]) -> None:
        assert det.background is not None and det.bg8 is not None
        fh, fw = frame.shape
        T = exp.shape[0]
        fin = np.isfinite(exp).all(axis=-1) & (exp[..., 0] >= -0.5) & (
            exp[..., 0] <= fw - 0.5) & (exp[..., 1] >= -0.5) & (exp[..., 1] <= fh - 0.5)
        flat = exp.reshape(-1, 2)
        okf = fin.reshape(-1)
        owner = np.repeat(np.arange(T), self.J)
        if dep is None:
            za = ra = np.full((T, self.J), np.nan)
            bones = self.bones[:0]
        else:
            za, ra, bones = dep[..., 0], dep[..., 1], self.bones
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
                int(t), det.mask_margin_px, out, own,
                np.ascontiguousarray(exp - (x0, y0), dtype=np.float64),
                np.ascontiguousarray(za, dtype=np.float64),
                np.ascontiguousarray(ra, dtype=np.float64), bones)
            if n_own < self.min_area_px:
                self.counters["hidden"] += 1
                continue
            self.counters["track_crops"] += 1
            self.counters["shared"] += shared
            self._fill(slots, c, out, (x0, y0, w, h), own, self.shared_scale if shared else 1.0,
                       int(t))

    def _blob_crops(self, c: int, frame: np.ndarray, det: BlobDetector,
                    exp: np.ndarray | None, slots: list[tuple[int, int, int, np.ndarray, float, int]],
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
                       1.0, -1)
