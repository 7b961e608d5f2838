"""Several animals per view without a learned detector: background subtraction into blobs,
then the single-animal full-frame model once per blob.

This is what DeepLabStream and Bonsai users do on lab rigs (a static camera, an arena whose
floor differs from the animals), and it needs no retraining of the bundled sim model:

1. **Background.** Per camera, the per-pixel median of frames spread over a few seconds
   (:meth:`BlobDetector.learn`): the animals move, so each pixel sees the floor most of the
   time. An image of the empty arena does as well.
2. **Blobs.** ``|frame - background| > threshold``, opened by ``open_px`` (a thin tail
   across another animal would join the two), dilated by ``join_px``, labelled into
   8-connected components
   (a compiled two-pass union-find, :func:`label_nb`); components smaller than
   ``min_area_px`` are noise.
3. **One image per blob.** The frame with every *other* blob's pixels (grown by
   ``mask_margin_px``, which takes their soft shadows too) replaced by the background: the
   single-animal model sees one animal on an empty floor, exactly what it was trained on.
   All blobs of all views go through the model in one batched call
   (:class:`MaskedInstances`).
4. **Overlaps.** Two animals that touch or hide one another in a view make one blob, and the
   model's keypoints on it mix both animals. Such a blob must not poison the cross-view
   association: a blob is ``merged`` when the 3D tracks' projections
   (``expected``: what fusion already knows) put 40 % or more of the keypoints of two or
   more individuals in it, or, before any track exists, when its area exceeds
   ``merge_area`` × the camera's running median blob area. A merged blob with tracks is
   *split*: one image per track in it, its pixels nearer to another track's projected
   keypoints replaced by the background (:meth:`BlobDetector.split`), the keypoints off its
   share given confidence 0 and the others' confidence halved (the association and the EKF
   weigh them less); a merged blob without tracks is dropped. Blobs that one track's keypoints fall on (an animal cut in pieces by low
   contrast) are joined into one. A keypoint the model puts off its own blob (a partial blob's guess) gets
   confidence 0 (:class:`~livepose.inference.instances.MaskedInstances`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numba as nb
import numpy as np


@nb.njit(cache=True, nogil=True)
def _find(parent: np.ndarray, i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@nb.njit(cache=True, nogil=True)
def label_nb(mask: np.ndarray, labels: np.ndarray) -> int:
    """8-connected components of ``mask`` ``(H, W)`` bool into ``labels`` ``(H, W)`` int32
    (0 = background, 1..n); returns ``n``."""
    h, w = mask.shape
    parent = np.arange(h * w + 1, dtype=np.int64)
    nxt = 1
    for y in range(h):
        for x in range(w):
            if not mask[y, x]:
                labels[y, x] = 0
                continue
            best = 0
            for dy, dx in ((-1, -1), (-1, 0), (-1, 1), (0, -1)):
                yy, xx = y + dy, x + dx
                if yy >= 0 and 0 <= xx < w:
                    lab = labels[yy, xx]
                    if lab > 0:
                        if best == 0:
                            best = lab
                        else:
                            a, b = _find(parent, best), _find(parent, lab)
                            if a != b:
                                parent[max(a, b)] = min(a, b)
            if best == 0:
                best = nxt
                nxt += 1
            labels[y, x] = best
    # flatten to consecutive labels
    remap = np.zeros(nxt, dtype=np.int32)
    n = 0
    for i in range(1, nxt):
        r = _find(parent, i)
        if remap[r] == 0:
            n += 1
            remap[r] = n
        remap[i] = remap[r]
    for y in range(h):
        for x in range(w):
            if labels[y, x] > 0:
                labels[y, x] = remap[labels[y, x]]
    return n


@nb.njit(cache=True, nogil=True)
def square_nb(src: np.ndarray, r: int, erode: bool, out: np.ndarray) -> None:
    """``out`` = ``src`` ``(h, w)`` bool eroded (or dilated) by a ``2r + 1`` square, with
    running sums along rows then columns (erosion is False where the square leaves the
    image). Shared by the blob detector and the 3D-guided crops
    (:mod:`livepose.inference.track_crops`)."""
    h, w = src.shape
    full = 2 * r + 1
    tmp = np.empty((h, w), np.bool_)
    for y in range(h):
        c = 0
        for x in range(min(r, w)):
            c += src[y, x]
        for x in range(w):
            if x + r < w:
                c += src[y, x + r]
            if x - r - 1 >= 0:
                c -= src[y, x - r - 1]
            tmp[y, x] = c == full if erode else c > 0
    for x in range(w):
        c = 0
        for y in range(min(r, h)):
            c += tmp[y, x]
        for y in range(h):
            if y + r < h:
                c += tmp[y + r, x]
            if y - r - 1 >= 0:
                c -= tmp[y - r - 1, x]
            out[y, x] = c == full if erode else c > 0


@nb.njit(cache=True, nogil=True)
def diff_open_nb(frame: np.ndarray, bg: np.ndarray, thr: float, r_open: int, r_join: int,
                  core: np.ndarray, tmp: np.ndarray, out: np.ndarray) -> None:
    """``core`` = |frame - bg| > thr; ``out`` = ``core`` opened by a square of radius
    ``r_open`` (thin tails and legs cut off: they would bridge two animals' blobs), then
    dilated by ``r_join``."""
    h, w = frame.shape
    for y in range(h):
        for x in range(w):
            core[y, x] = abs(float(frame[y, x]) - bg[y, x]) > thr
    if r_open > 0:
        square_nb(core, r_open, True, tmp)
        square_nb(tmp, r_open + r_join, False, out)
    else:
        square_nb(core, r_join, False, out)


@nb.njit(cache=True, nogil=True)
def _blob_stats_nb(labels: np.ndarray, core: np.ndarray, n: int) -> np.ndarray:
    """Per label 1..n: area (core pixels), x0, y0, x1, y1 (inclusive), rows ``(n, 5)``."""
    h, w = labels.shape
    st = np.zeros((n, 5), dtype=np.int64)
    for i in range(n):
        st[i, 1], st[i, 2], st[i, 3], st[i, 4] = w, h, -1, -1
    for y in range(h):
        for x in range(w):
            lab = labels[y, x]
            if lab > 0:
                k = lab - 1
                if core[y, x]:
                    st[k, 0] += 1
                st[k, 1] = min(st[k, 1], x)
                st[k, 2] = min(st[k, 2], y)
                st[k, 3] = max(st[k, 3], x)
                st[k, 4] = max(st[k, 4], y)
    return st


@nb.njit(cache=True, nogil=True)
def _mask_others_nb(frame: np.ndarray, bg8: np.ndarray, labels: np.ndarray, keep: int,
                    grow: np.ndarray, out: np.ndarray) -> None:
    """``out`` = ``frame`` with pixels of labels other than ``keep`` (and ``grow`` around
    them: a bool image of the grown other-blob mask, precomputed per blob) set to ``bg8``."""
    h, w = frame.shape
    for y in range(h):
        for x in range(w):
            lab = labels[y, x]
            if (lab > 0 and lab != keep) or (grow[y, x] and lab != keep):
                out[y, x] = bg8[y, x]
            else:
                out[y, x] = frame[y, x]


@dataclass(slots=True)
class Blob:
    """One detected blob: ``label`` in the label image, ``area`` (px), ``box`` (x0, y0, x1,
    y1; inclusive), ``merged`` (holds more than one animal), ``tracks`` (with ``expected``:
    the rows of the tracks in it)."""

    label: int
    area: int
    box: tuple[int, int, int, int]
    merged: bool = False
    tracks: tuple[int, ...] = ()


class BlobDetector:
    """Background subtraction for one camera (module docstring).

    Parameters
    ----------
    threshold
        Grey levels (8-bit) a pixel must differ from the background by.
    min_area_px
        Smaller components are noise.
    open_px
        Opening radius before labelling: parts thinner than ``2 · open_px + 1`` px (tails)
        are cut off, so a tail across another animal does not join their blobs.
    join_px
        Dilation radius after the opening.
    mask_margin_px
        Other blobs are grown by this much when masked out.
    merge_area
        Before tracks exist: a blob larger than this × the running median area is merged.
    """

    def __init__(self, threshold: float = 28.0, min_area_px: int = 200, open_px: int = 1,
                 join_px: int = 2,
                 mask_margin_px: int = 4, merge_area: float = 1.8) -> None:
        self.threshold = float(threshold)
        self.min_area_px = int(min_area_px)
        self.open_px = int(open_px)
        self.join_px = int(join_px)
        self.mask_margin_px = int(mask_margin_px)
        self.merge_area = float(merge_area)
        self.background: np.ndarray | None = None
        self.bg8: np.ndarray | None = None
        self._areas: list[int] = []
        self.labels = np.zeros((1, 1), dtype=np.int32)
        self.counters = {"blobs": 0, "merged": 0, "noise": 0, "joined": 0}

    @classmethod
    def warm_up(cls) -> None:
        """Compile (or load from numba's cache) the kernels for the frames a live worker
        passes: read-only (a frame in a ring, a decoded message) and writable (the
        background standing in for a missing view). Without it, a fresh install compiled
        them at the first detection, mid-run: a stall of seconds on a loaded host. Runs on a
        detector of its own (no live detector's buffers are touched)."""
        det = cls()
        det.learn([np.zeros((32, 32), np.uint8)] * 3)
        frame = np.zeros((32, 32), np.uint8)
        frame[6:26, 6:26] = 255  # one blob (400 px)
        ro = frame.copy()
        ro.setflags(write=False)
        for f in (ro, frame):
            blobs = det.detect(f)
            if blobs:
                det.masked(f, blobs, blobs[0], np.empty_like(f))

    def learn(self, frames: list[np.ndarray]) -> None:
        """Background = per-pixel median of ``frames`` (each ``(H, W)`` uint8)."""
        bg = np.median(np.stack(frames), axis=0)
        self.background = np.ascontiguousarray(bg, dtype=np.float64)
        self.bg8 = np.ascontiguousarray(np.clip(np.rint(bg), 0, 255).astype(np.uint8))

    def detect(self, frame: np.ndarray, expected: np.ndarray | None = None) -> list[Blob]:
        """Blobs of one frame.

        Parameters
        ----------
        frame
            ``(H, W)`` uint8 mono.
        expected
            Optional ``(T, J, 2)`` projected keypoints of the live 3D tracks in this view
            (NaN: unknown): a blob holding the median point of two or more is merged.

        Returns
        -------
        list[Blob]
            Largest first; :attr:`labels` holds the label image until the next call.
        """
        if self.background is None:
            raise RuntimeError("BlobDetector.learn() first: no background")
        if frame.shape != self.background.shape:
            raise ValueError(f"frame is {frame.shape}, background {self.background.shape}")
        h, w = frame.shape
        if self.labels.shape != (h, w):
            self.labels = np.zeros((h, w), dtype=np.int32)
            self._core = np.zeros((h, w), dtype=np.bool_)
            self._mask = np.zeros((h, w), dtype=np.bool_)
            self._tmp = np.zeros((h, w), dtype=np.bool_)
        diff_open_nb(frame, self.background, self.threshold, self.open_px, self.join_px,
                      self._core, self._tmp, self._mask)
        n = label_nb(self._mask, self.labels)
        st = _blob_stats_nb(self.labels, self._core, n)
        blobs = []
        for k in range(n):
            if st[k, 0] < self.min_area_px:
                self.counters["noise"] += 1
                continue
            blobs.append(Blob(k + 1, int(st[k, 0]), (int(st[k, 1]), int(st[k, 2]),
                                                      int(st[k, 3]), int(st[k, 4]))))
        blobs.sort(key=lambda b: -b.area)
        self._flag_merged(blobs, expected)
        self.counters["blobs"] += len(blobs)
        return blobs

    def _flag_merged(self, blobs: list[Blob], expected: np.ndarray | None) -> None:
        h, w = self.labels.shape
        if expected is not None and len(expected):
            e = np.asarray(expected, dtype=np.float64)
            fin = np.all(np.isfinite(e), axis=-1) & (e[..., 0] >= 0) & (e[..., 0] < w) & (
                e[..., 1] >= 0) & (e[..., 1] < h)
            ix = np.clip(np.nan_to_num(e[..., 0]).astype(np.int64), 0, w - 1)
            iy = np.clip(np.nan_to_num(e[..., 1]).astype(np.int64), 0, h - 1)
            lab = np.where(fin, self.labels[iy, ix], 0)  # (T, J): blob under each keypoint
            n_fin = np.maximum(fin.sum(axis=1), 1)
            share = np.stack([(lab == b.label).sum(axis=1) / n_fin for b in blobs]) if (
                blobs) else np.zeros((0, len(e)))  # (B, T)
            for b, sh in zip(blobs, share, strict=True):
                b.tracks = tuple(int(i) for i in np.flatnonzero(sh >= 0.4))
                b.merged = len(b.tracks) >= 2
            self._join_fragments(blobs, share)
        else:
            med = float(np.median(self._areas)) if len(self._areas) >= 20 else np.inf
            for b in blobs:
                b.merged = b.area > self.merge_area * med
        for b in blobs:
            if b.merged:
                self.counters["merged"] += 1
            else:
                self._areas.append(b.area)
        del self._areas[:-500]

    def _join_fragments(self, blobs: list[Blob], share: np.ndarray) -> None:
        """One animal cut into several blobs (low contrast through the wall, a shadow): the
        blobs that one track's keypoints fall on, none of them merged, become one blob (the
        largest's label)."""
        gone: set[int] = set()
        for t in range(share.shape[1]):
            parts = [i for i, b in enumerate(blobs)
                     if share[i, t] >= 0.15 and not b.merged and i not in gone]
            if len(parts) < 2:
                continue
            main = blobs[max(parts, key=lambda i: blobs[i].area)]
            for i in parts:
                o = blobs[i]
                if o is main:
                    continue
                x0, y0, x1, y1 = o.box
                sub = self.labels[y0:y1 + 1, x0:x1 + 1]
                sub[sub == o.label] = main.label
                main.area += o.area
                main.box = (min(main.box[0], x0), min(main.box[1], y0), max(main.box[2], x1),
                            max(main.box[3], y1))
                gone.add(i)
                self.counters["joined"] += 1
        if gone:
            blobs[:] = [b for i, b in enumerate(blobs) if i not in gone]

    def inside(self, points: np.ndarray, blob: Blob, tol_px: int = 6) -> np.ndarray:
        """Which of ``points`` ``(J, 2+)`` (frame px) lie on ``blob`` or within ``tol_px``
        of it (thin parts cut off by the opening), ``(J,)`` bool (False for NaN)."""
        h, w = self.labels.shape
        x, y = points[:, 0], points[:, 1]
        ok = np.isfinite(x) & np.isfinite(y) & (x >= 0) & (x < w) & (y >= 0) & (y < h)
        on = np.zeros(len(x), dtype=bool)
        for dx in (-tol_px, 0, tol_px):
            for dy in (-tol_px, 0, tol_px):
                ix = np.clip(np.nan_to_num(x).astype(np.int64) + dx, 0, w - 1)
                iy = np.clip(np.nan_to_num(y).astype(np.int64) + dy, 0, h - 1)
                on |= self.labels[iy, ix] == blob.label
        return ok & on

    def masked(self, frame: np.ndarray, blobs: list[Blob], keep: Blob,
               out: np.ndarray) -> np.ndarray:
        """``frame`` with every blob but ``keep`` replaced by the background, into ``out``
        ``(H, W)`` uint8 (returned)."""
        assert self.bg8 is not None
        others = self._grown_others(blobs, keep)
        _mask_others_nb(frame, self.bg8, self.labels, keep.label, others, out)
        return out

    def split(self, out: np.ndarray, blob: Blob, expected: np.ndarray, track: int
              ) -> np.ndarray:
        """Within a merged ``blob`` of ``out`` (a :meth:`masked` image), replace by the
        background the pixels nearer to another of its tracks' projected keypoints than to
        ``track``'s (``expected`` ``(T, J, 2)``): the model then sees ``track``'s animal
        with the other cut away. Returns the ``(h, w)`` bool ownership of the box."""
        assert self.bg8 is not None
        x0, y0, x1, y1 = blob.box
        sub = self.labels[y0:y1 + 1, x0:x1 + 1] == blob.label
        yy, xx = np.nonzero(sub)
        px = np.stack([xx + x0, yy + y0], axis=1).astype(np.float64)  # (P, 2)
        dist = []
        for t in blob.tracks:
            e = expected[t][np.all(np.isfinite(expected[t]), axis=1)]
            dist.append(np.min(np.linalg.norm(px[:, None] - e[None], axis=-1), axis=1)
                        if len(e) else np.full(len(px), np.inf))
        owner = np.asarray(blob.tracks)[np.argmin(np.stack(dist), axis=0)]
        lose = owner != track
        out[yy[lose] + y0, xx[lose] + x0] = self.bg8[yy[lose] + y0, xx[lose] + x0]
        own = np.zeros(sub.shape, dtype=bool)
        own[yy[~lose], xx[~lose]] = True
        return own

    def _grown_others(self, blobs: list[Blob], keep: Blob) -> np.ndarray:
        h, w = self.labels.shape
        grow = np.zeros((h, w), dtype=np.bool_)
        m = self.mask_margin_px
        for b in blobs:
            if b is keep:
                continue
            x0, y0, x1, y1 = b.box
            ya, yb, xa, xb = max(y0 - m, 0), min(y1 + m + 1, h), max(x0 - m, 0), min(x1 + m + 1, w)
            sub = self.labels[ya:yb, xa:xb] == b.label
            if m > 0:  # grow by m with shifted ORs (separable square dilation)
                g = sub.copy()
                for s in range(1, m + 1):
                    g[s:, :] |= sub[:-s, :]
                    g[:-s, :] |= sub[s:, :]
                sub2 = g.copy()
                for s in range(1, m + 1):
                    g[:, s:] |= sub2[:, :-s]
                    g[:, :-s] |= sub2[:, s:]
                sub = g
            grow[ya:yb, xa:xb] |= sub
        return grow
