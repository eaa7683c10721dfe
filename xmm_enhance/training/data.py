"""Training data: a rolling buffer of simulated observations and random crops from it.

Simulating a full 411 x 403 frame costs ~60 ms, a training step ~0.3 s, so a step draws its crops
from a buffer of recent frames and refreshes a few frames per step. Because the simulator's counts
are exactly ``Poisson(dn_target * exposure)``, every crop gets a fresh Poisson draw: the same sky is
seen with new noise each time.

Arrays are numpy float32, ``[y, x]``; :func:`to_batch` turns them into torch tensors [N, 1, H, W].
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..detector import AXIS_PIXEL, detector_mask
from ..simulate.instrument import COSMIC_RATE, PARTICLE_RATE
from ..sources import PIXEL_ARCSEC

__all__ = ["Frame", "toy_simulate", "simulator", "FrameBuffer", "pad_to_multiple",
           "validation_frames"]


@dataclass
class Frame:
    """What training needs from one simulated observation.

    Attributes
    ----------
    dn_target : float32 [H, W]
        Expected rate incl. background (counts/s/pixel), zero outside ``mask``.
    mask : bool [H, W]
    exposure : float
        Exposure (s) of the noisy input.
    sr_target : float32 [2H, 2W] or None
        Background-free expected rate per 2" pixel (half PSF).
    counts : float32 [H, W] or None
        A fixed Poisson draw (validation); training redraws.
    sources : list of (y, x, counts) or (y, x, counts, diffuse_counts)
        1x pixel positions of point sources and their expected (vignetted) counts at
        ``exposure``, for source-centred crops; with ``sr_diffuse``, also the expected diffuse
        counts around each (:func:`_diffuse_near`), for halo crops.
    stamps : list of (y, x, y2, x2, rate, full_kernel, half_kernel) or None
        SR frames of the instrument simulator, when targets are aligned: the point sources
        :func:`align_point_sources` may move (1x and 2x positions, observed rate, PSF stamps).
    sr_diffuse : float32 [2H, 2W] or None
        The extended emission's part of ``sr_target`` (decomposition target; the point sources'
        part is the rest).
    """

    dn_target: np.ndarray
    mask: np.ndarray
    exposure: float
    sr_target: np.ndarray | None = None
    counts: np.ndarray | None = None
    sources: list = None
    stamps: list = None
    sr_diffuse: np.ndarray | None = None


def toy_simulate(rng, *, exposure=20e3, sr=True, dn=True, shape=(411, 403), sources=True,
                 decompose=False):
    """Trivial stand-in for the simulator (tests): flat background, one broad Gaussian blob
    (diffuse emission) and Gaussian point sources; ``decompose`` adds ``sr_diffuse``.

    Returns an object with the fields of ``simulate.instrument.SimulatedObservation`` used here.
    """
    ny, nx = shape
    mask = detector_mask() if shape == (411, 403) else np.ones(shape, bool)
    yy, xx = np.mgrid[:2 * ny, :2 * nx]
    sky2 = np.zeros((2 * ny, 2 * nx), np.float64)
    full2 = np.zeros_like(sky2)
    for _ in range(int(rng.integers(1, 6)) if sources else 0):
        cy, cx = rng.uniform(0, 2 * ny), rng.uniform(0, 2 * nx)
        rate = 10 ** rng.uniform(-3.5, -1.5)
        r2 = (yy - cy) ** 2 + (xx - cx) ** 2
        s = 1.5
        sky2 += rate * np.exp(-r2 / (2 * s * s)) / (2 * np.pi * s * s)
        s = 3.0
        full2 += rate * np.exp(-r2 / (2 * s * s)) / (2 * np.pi * s * s)
    diff2 = np.zeros_like(sky2)
    if sources:
        cy, cx = rng.uniform(0, 2 * ny), rng.uniform(0, 2 * nx)
        s = 20.0
        diff2 = (10 ** rng.uniform(-3, -1.5) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2)
                                                      / (2 * s * s)) / (2 * np.pi * s * s))
        sky2 += diff2
        full2 += diff2
    bkg = 10 ** rng.uniform(-5.5, -4.5)
    src1 = full2.reshape(ny, 2, nx, 2).sum(axis=(1, 3))
    dn_target = ((src1 + bkg) * mask).astype(np.float32)
    counts = rng.poisson(dn_target * exposure).astype(np.float32)
    mask2 = np.repeat(np.repeat(mask, 2, 0), 2, 1)

    class _Obs:
        pass

    o = _Obs()
    o.counts, o.exposure, o.mask, o.dn_target = counts, float(exposure), mask, dn_target
    o.sr_target = (sky2 * mask2).astype(np.float32) if sr else None
    o.sr_diffuse = (diff2 * mask2).astype(np.float32) if sr and decompose else None
    o.meta = {"kind": "toy"}
    return o


def simulator(name="instrument"):
    """The ``simulate_observation`` function: ``"instrument"`` (real simulator) or ``"toy"``."""
    if name == "toy":
        return toy_simulate
    from ..simulate.instrument import simulate_observation
    return simulate_observation


#: Aligned SR targets: half-size (1x pixels) of the likelihood window around a source, largest
#: move (2x pixels) searched each way, and the expected-count range of the sources moved.
ALIGN_WINDOW = 8
ALIGN_SHIFT = 2
ALIGN_COUNTS = (40.0, 5000.0)


def _bin2(a):
    return a.reshape(a.shape[0] // 2, 2, a.shape[1] // 2, 2).sum(axis=(1, 3))


def unit_source_window(kernel, y2, x2, wy, wx, n):
    """1x image [n, n] of a unit-flux source with PSF ``kernel`` (2x grid, odd square) at 2x pixel
    ``(y2, x2)``, over the 1x window whose first pixel is ``(wy, wx)`` (frame coordinates).

    The kernel must cover the window (true for windows of a few pixels around the source).
    """
    r = kernel.shape[0] // 2
    oy, ox = 2 * wy - y2 + r, 2 * wx - x2 + r
    return _bin2(kernel[oy:oy + 2 * n, ox:ox + 2 * n])


def _stamps(obs, min_ratio=1.0, max_ratio=1.0):
    """Point sources :func:`align_point_sources` may move (see ``Frame.stamps``): those whose
    expected counts at the frame's exposure lie in ``ALIGN_COUNTS`` scaled by the ratios (crops
    drawn at other exposures filter again)."""
    from ..simulate.instrument import source_kernels

    meta = getattr(obs, "meta", {})
    out = []
    for d in meta.get("sources", []):
        counts = float(d.get("counts", 0.0))
        if "y2" not in d or d.get("piled") or counts < ALIGN_COUNTS[0] * min_ratio \
                or counts > ALIGN_COUNTS[1] * max_ratio:
            continue
        kf, kh = source_kernels(meta, d)
        out.append((float(d["y"]), float(d["x"]), int(d["y2"]), int(d["x2"]),
                    counts / float(obs.exposure), kf, kh))
    return out


def align_point_sources(target2, counts, lam, mask, origin, stamps, exposure):
    """SR target with each point source moved to its most likely 2x pixel given the counts.

    The noise-free target puts a source at its true 2x pixel, but from 100-300 counts its position
    is only known to ~0.5 pixel, and a network trained on the expected deviance then predicts the
    average over the positions the counts allow: a source wider than half the PSF (the posterior
    mean of a perfectly known PSF gives FWHM ratios of 0.58 at 150-300 counts where the truth has
    0.53). Moving the source, in the target, to the position that maximises the Poisson likelihood
    of its counts (known PSF, flux and everything else; +-``ALIGN_SHIFT`` 2x pixels) makes the
    target a function of the input, so the network learns to commit to one position with the half
    PSF instead of hedging. Flux is unchanged.

    Parameters
    ----------
    target2 : float32 [2h, 2w]
        Background-free 2x target of a region (not modified).
    counts, lam : [h, w]
        Noisy and expected counts (background included) of the region at ``exposure``.
    mask : bool [h, w]
    origin : (int, int)
        Frame 1x coordinates of the region's first pixel.
    stamps : list
        ``Frame.stamps``; sources whose likelihood window does not fit in the region, or with
        expected counts at ``exposure`` outside ``ALIGN_COUNTS``, are left.
    exposure : float

    Returns
    -------
    float32 [2h, 2w]
        ``target2`` itself when no source moves, else a new array.
    """
    from ..simulate.instrument import _add_stamp

    y0, x0 = origin
    h, w = counts.shape
    W, S = ALIGN_WINDOW, ALIGN_SHIFT
    n1 = 2 * W + 1
    shifts = [(dy, dx) for dy in range(-S, S + 1) for dx in range(-S, S + 1)]
    centre = len(shifts) // 2
    delta = None
    for sy, sx, y2, x2, rate, kf, kh in stamps:
        if not ALIGN_COUNTS[0] <= rate * exposure <= ALIGN_COUNTS[1]:
            continue
        wy, wx = int(round(sy)) - W - y0, int(round(sx)) - W - x0
        if wy < 0 or wx < 0 or wy + n1 > h or wx + n1 > w:
            continue
        m = mask[wy:wy + n1, wx:wx + n1]
        if m.sum() < n1 * n1 // 2:
            continue
        k1 = np.stack([unit_source_window(kf, y2 + dy, x2 + dx, wy + y0, wx + x0, n1)
                       for dy, dx in shifts]) * m
        f = rate * exposure
        c = counts[wy:wy + n1, wx:wx + n1].astype(np.float64)
        rest = np.maximum(lam[wy:wy + n1, wx:wx + n1] - f * k1[centre], 1e-3)
        ll = (c * np.log(rest + f * k1)).sum(axis=(1, 2)) - f * k1.sum(axis=(1, 2))
        best = int(np.argmax(ll))
        if ll[best] <= ll[centre]:
            continue
        if delta is None:
            delta = np.zeros(target2.shape, np.float32)
        ry, rx = y2 - 2 * y0, x2 - 2 * x0
        _add_stamp(delta, ry + shifts[best][0], rx + shifts[best][1], np.float32(rate) * kh)
        _add_stamp(delta, ry, rx, -np.float32(rate) * kh)
    if delta is None:
        return target2
    # the target carries partial-column and field-edge transmission that the stamps lack: a
    # source moved off such pixels could leave a (tiny) negative remainder, hence the clip
    m2 = np.repeat(np.repeat(mask, 2, axis=0), 2, axis=1)
    return np.maximum(target2 + delta * m2, 0.0).astype(np.float32)


#: Halo crops (``FrameBuffer(halo_source_share=)``): the half-size (2x pixels) of the box
#: in which a source's diffuse surroundings are summed, the least ratio of those diffuse counts
#: to the source's own for a source "on a halo", and the sources' count range at the crop's
#: exposure (the real sources the list misses most have 20-50 counts in 20 ks).
HALO_BOX = 5
HALO_RATIO = 0.5
HALO_COUNTS = (15.0, 300.0)


def _diffuse_near(diffuse, y, x, exposure):
    """Expected diffuse counts at ``exposure`` in the 2x box of half-size ``HALO_BOX`` around
    the 1x position ``(y, x)``."""
    yc, xc = int(round(2 * y + 0.5)), int(round(2 * x + 0.5))
    h = HALO_BOX
    ys, xs = slice(max(yc - h, 0), yc + h + 1), slice(max(xc - h, 0), xc + h + 1)
    return float(diffuse[ys, xs].sum(dtype=np.float64)) * exposure


def _to_frame(obs, keep_counts=False, stamps=False, stamp_ratios=(1.0, 1.0)):
    diffuse = getattr(obs, "sr_diffuse", None)
    srcs = [(float(d["y"]), float(d["x"]),
             float(d.get("counts", d.get("rate", 0.0) * obs.exposure)))
            for d in getattr(obs, "meta", {}).get("sources", [])]
    if diffuse is not None:
        srcs = [s + (_diffuse_near(diffuse, s[0], s[1], float(obs.exposure)),) for s in srcs]
    return Frame(dn_target=np.asarray(obs.dn_target, np.float32), mask=np.asarray(obs.mask, bool),
                 exposure=float(obs.exposure),
                 sr_target=None if getattr(obs, "sr_target", None) is None
                 else np.asarray(obs.sr_target, np.float32),
                 counts=np.asarray(obs.counts, np.float32) if keep_counts else None,
                 sources=srcs,
                 stamps=_stamps(obs, *stamp_ratios)
                 if stamps and getattr(obs, "sr_target", None) is not None else None,
                 sr_diffuse=None if diffuse is None else np.asarray(diffuse, np.float32))


#: Unit of the extra flat background of :class:`FrameBuffer` (count/s per 4" pixel): the
#: simulator's nominal particle plus cosmic level (``simulate.instrument``).
FLAT_BKG_UNIT = PARTICLE_RATE + COSMIC_RATE

#: Off-axis angle (arcmin) beyond which ``FrameBuffer(flat_bkg_edge=)`` centres its edge crops.
FLAT_EDGE_THETA = 9.0

#: Source-centred crops: sources below this many expected counts (at the input exposure) are
#: "faint" (the real sources the SR bar is measured on have ~70-800); none below the minimum.
FAINT_COUNTS = 200.0
MIN_SOURCE_COUNTS = 40.0


class FrameBuffer:
    """Rolling buffer of simulated frames; random augmented crops with fresh Poisson noise.

    Parameters
    ----------
    simulate : callable
        ``simulate(rng, exposure=..., sr=..., dn=...)`` (see :func:`simulator`).
    rng : numpy.random.Generator
    task : {"DN", "SR"}
    size : int
        Number of frames kept.
    exposure : float
        Input exposure (s) when ``expo_range`` is None.
    source_crop_prob : float
        Probability that a crop is centred (within +-crop/4) on a point source of its frame:
        point sources cover few pixels, so without this the sharpening of SR and the bright
        cores of DN are rarely trained.
    align : bool
        SR: move point sources in the target to their most likely position given each crop's
        fresh counts (:func:`align_point_sources`).
    faint_source_share : float
        Share of those source crops centred on a faint source (fewer than ``FAINT_COUNTS``
        expected counts at the crop's exposure); the others go to brighter ones. Faint sources
        are most of the sky's point sources but a tiny part of any crop's loss.
    empty_frame_prob : float
        Probability that a new frame is source-free (background only, ``sources=False`` of the
        simulator): without such fields the network's prior says that every background bump may
        be a faint source, and SR paints false sources in empty sky.
    expo_range : (float, float) or None
        Each crop's exposure (s) is drawn log-uniformly in this range and its counts are
        ``Poisson(dn_target * T)``: the background accumulates with the exposure as the sources
        do (flares are assumed filtered). Frames are simulated at the upper end, so that their
        source lists reach the faintest source any crop may see.
    decompose : bool
        SR: keep the simulator's diffuse part of the target (``Frame.sr_diffuse``).
    flat_bkg_prob : float
        Probability that a crop gets an extra flat, unvignetted background on its live pixels
        (a quiescent-particle level above the simulator's range, or a residual soft-proton
        background after flare filtering). Its rate is ``FLAT_BKG_UNIT`` times a factor drawn
        log-uniformly in ``flat_bkg_range``. It is background: the SR target does not change,
        the DN target (expected rate with background) gets it too. Without such crops an
        observation whose background is 1.5-2x the simulator's nominal level, flat across the
        field, is read as field-filling sky emission and its fluctuations are drawn as
        20-50-count clumps in ``points``.
    halo_points : float
        SR: the simulator's ``halo_points`` (mean number of extra sources tracing the light
        of clusters and galaxies per frame; 0: the simulator's own field).
    halo_source_share : float
        Share of the source-centred crops centred on a source "on a halo": one of
        ``HALO_COUNTS`` expected counts at the crop's exposure whose diffuse surroundings hold
        at least ``HALO_RATIO`` of its own counts (needs ``decompose``). Such sources are where
        the network fails on real halos: it reads them as knots of the emission.
    flat_bkg_range : (float, float)
    flat_bkg_edge : float
        Share of those flat-background crops placed with their centre at least
        ``FLAT_EDGE_THETA`` off axis: there the vignetted sky fades and a flat excess dominates
        (a model trained with uniformly placed crops still drew 12-21-count clumps beyond 10'
        at 3x the nominal level, and none nearer the axis).
    """

    def __init__(self, simulate, rng, *, task="DN", size=48, exposure=20e3,
                 source_crop_prob=0.0, empty_frame_prob=0.0, faint_source_share=0.0,
                 position=False, align=False, expo_range=None, decompose=False,
                 flat_bkg_prob=0.0, flat_bkg_range=(0.3, 4.0), flat_bkg_edge=0.0,
                 halo_points=0.0, halo_source_share=0.0):
        self.simulate, self.rng, self.task = simulate, rng, task
        self.halo_points = float(halo_points) if task == "SR" else 0.0
        self.halo_source_share = float(halo_source_share) if task == "SR" else 0.0
        self.flat_bkg_edge = float(flat_bkg_edge)
        self.flat_bkg_prob = float(flat_bkg_prob)
        self.flat_bkg_range = (float(flat_bkg_range[0]), float(flat_bkg_range[1]))
        self.source_crop_prob = float(source_crop_prob)
        self.faint_source_share = float(faint_source_share)
        self.position = bool(position)
        self.align = bool(align) and task == "SR"
        self.decompose = bool(decompose) and task == "SR"
        self.empty_frame_prob = float(empty_frame_prob)
        self.exposure = float(exposure)
        self.expo_range = None if expo_range is None else (float(expo_range[0]),
                                                            float(expo_range[1]))
        self.frames = []
        self.size = size
        self._next = 0
        while len(self.frames) < size:
            self.frames.append(self._new())

    def _new(self):
        kw = {}
        if self.empty_frame_prob and self.rng.random() < self.empty_frame_prob:
            kw["sources"] = False
        if self.decompose:
            kw["decompose"] = True
        if self.halo_points:
            kw["halo_points"] = self.halo_points
        expo, ratios = self.exposure, (1.0, 1.0)
        if self.expo_range is not None:
            expo = self.expo_range[1]
            ratios = (1.0, expo / self.expo_range[0])
        return _to_frame(self.simulate(self.rng, exposure=expo, sr=self.task == "SR",
                                       dn=True, **kw), stamps=self.align, stamp_ratios=ratios)

    def refresh(self, n=1):
        """Replace the ``n`` oldest frames by new simulations."""
        for _ in range(n):
            self.frames[self._next] = self._new()
            self._next = (self._next + 1) % self.size

    def _pick_source(self, sources, scale=1.0):
        """A source to centre a crop on; ``scale`` turns the listed counts into the crop's."""
        rng = self.rng
        if self.halo_source_share and rng.random() < self.halo_source_share:
            halo = [s for s in sources if len(s) > 3
                    and HALO_COUNTS[0] <= s[2] * scale <= HALO_COUNTS[1]
                    and s[3] >= HALO_RATIO * s[2]]
            if halo:
                return halo[int(rng.integers(len(halo)))]
        faint = [s for s in sources if MIN_SOURCE_COUNTS <= s[2] * scale < FAINT_COUNTS]
        bright = [s for s in sources if s[2] * scale >= FAINT_COUNTS]
        pool = bright  # share 0 is the older recipe: bright sources only
        if self.faint_source_share > 0 and faint and (
                not bright or rng.random() < self.faint_source_share):
            pool = faint
        return pool[int(rng.integers(len(pool)))] if pool else None

    def _edge_crop(self, mask, crop, min_coverage, default, tries=50):
        """A crop corner ``(y, x)`` whose centre lies at least ``FLAT_EDGE_THETA`` arcmin off
        axis, with enough live pixels (``default`` if none is found)."""
        ny, nx = mask.shape
        for _ in range(tries):
            y = int(self.rng.integers(0, ny - crop + 1))
            x = int(self.rng.integers(0, nx - crop + 1))
            th = (np.hypot(y + crop / 2 - AXIS_PIXEL[0], x + crop / 2 - AXIS_PIXEL[1])
                  * PIXEL_ARCSEC / 60.0)
            if th >= FLAT_EDGE_THETA and mask[y:y + crop, x:x + crop].mean() >= min_coverage:
                return y, x
        return default

    def _exposure(self, f):
        if self.expo_range is None:
            return f.exposure
        lo, hi = np.log(self.expo_range[0]), np.log(self.expo_range[1])
        return float(np.exp(self.rng.uniform(lo, hi)))

    def sample(self, batch=8, crop=128, min_coverage=0.25):
        """A batch of crops.

        Returns
        -------
        rate, mask, target, tmask : float32 arrays [N, 1, ...]
            Noisy input rate and mask on the 1x crop; target (DN: expected rate with background,
            1x; SR: background-free 2x rate) and the mask the loss uses on the target grid.
        pos : float32 array [N, 3, crop, crop]
            Only with ``position``: the crops' position channels (``net.position_maps``).
        """
        d = self.sample_dict(batch, crop, min_coverage)
        out = tuple(d[k] for k in ("rate", "mask", "target", "tmask"))
        return out + (d["pos"],) if self.position else out

    def sample_dict(self, batch=8, crop=128, min_coverage=0.25):
        """A batch of crops as a dict of float32 arrays: ``rate``, ``mask``, ``target``, ``tmask``
        (see :meth:`sample`), ``exposure`` [N] (s), and ``pos`` (with ``position``) and
        ``diffuse`` [N, 1, 2crop, 2crop] (SR with ``decompose``: the diffuse part of ``target``;
        ``target - diffuse`` is the point sources' part, aligned as the target is)."""
        from .net import position_maps

        rng = self.rng
        s = 2 if self.task == "SR" else 1
        keys = ("rate", "mask", "target", "tmask") + (("diffuse",) if self.decompose else ())
        lists = {k: [] for k in keys}
        poss, expos = [], []
        while len(lists["rate"]) < batch:
            f = self.frames[int(rng.integers(len(self.frames)))]
            T = self._exposure(f)
            ny, nx = f.mask.shape
            src = (self._pick_source(f.sources, T / f.exposure)
                   if f.sources and rng.random() < self.source_crop_prob else None)
            if src is not None:
                sy, sx = src[0], src[1]
                y = int(round(sy)) - crop // 2 + int(rng.integers(-crop // 4, crop // 4 + 1))
                x = int(round(sx)) - crop // 2 + int(rng.integers(-crop // 4, crop // 4 + 1))
            else:
                y = int(rng.integers(-crop // 8, ny - crop + crop // 8))
                x = int(rng.integers(-crop // 8, nx - crop + crop // 8))
            y, x = min(max(y, 0), ny - crop), min(max(x, 0), nx - crop)
            m = f.mask[y:y + crop, x:x + crop]
            if m.mean() < min_coverage:
                continue
            flat = 0.0  # extra flat background (count/s per 4" pixel) on the live pixels
            if self.flat_bkg_prob and rng.random() < self.flat_bkg_prob:
                lo, hi = np.log(self.flat_bkg_range[0]), np.log(self.flat_bkg_range[1])
                flat = FLAT_BKG_UNIT * float(np.exp(rng.uniform(lo, hi)))
                if self.flat_bkg_edge and rng.random() < self.flat_bkg_edge:
                    y, x = self._edge_crop(f.mask, crop, min_coverage, (y, x))
                    m = f.mask[y:y + crop, x:x + crop]
            if s == 2 and f.stamps:
                # counts of the crop and a margin, so that sources near its edges can be aligned
                p = ALIGN_WINDOW + 1
                ya, xa = max(y - p, 0), max(x - p, 0)
                yb, xb = min(y + crop + p, ny), min(x + crop + p, nx)
                lam = (f.dn_target[ya:yb, xa:xb].astype(np.float64)
                       + flat * f.mask[ya:yb, xa:xb]) * T
                c_all = rng.poisson(lam).astype(np.float32)
                t_all = align_point_sources(f.sr_target[2 * ya:2 * yb, 2 * xa:2 * xb], c_all, lam,
                                            f.mask[ya:yb, xa:xb], (ya, xa), f.stamps, T)
                counts = c_all[y - ya:y - ya + crop, x - xa:x - xa + crop]
                t = t_all[2 * (y - ya):2 * (y - ya + crop), 2 * (x - xa):2 * (x - xa + crop)]
            else:
                lam = (f.dn_target[y:y + crop, x:x + crop].astype(np.float64) + flat * m) * T
                counts = rng.poisson(lam).astype(np.float32)
                t = (f.dn_target[y:y + crop, x:x + crop] + np.float32(flat) * m if s == 1
                     else f.sr_target[2 * y:2 * (y + crop), 2 * x:2 * (x + crop)])
            rate = counts / np.float32(T)
            tm = m if s == 1 else np.repeat(np.repeat(m, 2, 0), 2, 1)
            arrs = [rate, m.astype(np.float32), t, tm.astype(np.float32)]
            if self.decompose:
                # alignment moves point sources only: the diffuse part stays where it is
                td = f.sr_diffuse[2 * y:2 * (y + crop), 2 * x:2 * (x + crop)]
                arrs.append(np.minimum(td, t))
            # Flips only: a transpose would turn the detector's column effects (out-of-time
            # streaks along DETY, partially covered columns, corner edge rows) sideways, which
            # never happens in real images.
            k = int(rng.integers(4))
            if k & 1:
                arrs = [a[::-1] for a in arrs]
            if k & 2:
                arrs = [a[:, ::-1] for a in arrs]
            for key, a in zip(keys, arrs):
                lists[key].append(np.ascontiguousarray(a)[None])
            expos.append(T)
            if self.position:
                poss.append(position_maps(y, x, crop, crop, flip_y=bool(k & 1),
                                          flip_x=bool(k & 2)))
        out = {k: np.stack(v).astype(np.float32) for k, v in lists.items()}
        out["exposure"] = np.asarray(expos, np.float32)
        if self.position:
            out["pos"] = np.stack(poss)
        return out


def pad_to_multiple(a, multiple, *, scale=1):
    """Zero-pad a 2-D array (last two axes) centrally to multiples of ``multiple * scale``.

    The split follows design §4.3 (``top = (H' - H) // 2``); returns the padded array and the
    ``(top, left)`` offsets on this array's grid.
    """
    h, w = a.shape[-2:]
    m = multiple * scale
    hh, ww = -(-h // m) * m, -(-w // m) * m
    # offsets on the 1x grid, scaled, so 1x and 2x pads stay aligned
    top, left = ((hh - h) // scale) // 2 * scale, ((ww - w) // scale) // 2 * scale
    pad = [(0, 0)] * (a.ndim - 2) + [(top, hh - h - top), (left, ww - w - left)]
    return np.pad(a, pad), (top, left)


def validation_frames(simulate, *, n=24, seed=20261128, task="DN", exposure=20e3, align=False,
                      exposures=None, decompose=False):
    """Fixed simulated validation set (fixed seeds, fixed noise), never used for fitting.

    ``align``: SR targets with the point sources at their most likely position given the fixed
    counts (:func:`align_point_sources`), as the network is trained to predict them.
    ``exposures``: a list of exposures (s) cycled over the frames (default: ``exposure`` for all).
    ``decompose``: SR frames keep the diffuse part of the target (``Frame.sr_diffuse``).
    """
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        T = exposure if not exposures else float(exposures[i % len(exposures)])
        kw = {"decompose": True} if decompose and task == "SR" else {}
        f = _to_frame(simulate(rng, exposure=T, sr=task == "SR", dn=True, **kw),
                      keep_counts=True, stamps=align and task == "SR")
        if f.stamps:
            f.sr_target = align_point_sources(f.sr_target, f.counts,
                                              f.dn_target.astype(np.float64) * f.exposure,
                                              f.mask, (0, 0), f.stamps, f.exposure)
            f.stamps = None
            if f.sr_diffuse is not None:
                f.sr_diffuse = np.minimum(f.sr_diffuse, f.sr_target)
        out.append(f)
    return out
