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

from ..detector import detector_mask

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
    sources : list of (y, x, counts)
        1x pixel positions of point sources and their expected (vignetted) counts at
        ``exposure``, for source-centred crops.
    """

    dn_target: np.ndarray
    mask: np.ndarray
    exposure: float
    sr_target: np.ndarray | None = None
    counts: np.ndarray | None = None
    sources: list = None


def toy_simulate(rng, *, exposure=20e3, sr=True, dn=True, shape=(411, 403), sources=True):
    """Trivial stand-in for the simulator (tests): flat background plus Gaussian sources.

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
    o.meta = {"kind": "toy"}
    return o


def simulator(name="instrument"):
    """The ``simulate_observation`` function: ``"instrument"`` (real simulator) or ``"toy"``."""
    if name == "toy":
        return toy_simulate
    from ..simulate.instrument import simulate_observation
    return simulate_observation


def _to_frame(obs, keep_counts=False):
    return Frame(dn_target=np.asarray(obs.dn_target, np.float32), mask=np.asarray(obs.mask, bool),
                 exposure=float(obs.exposure),
                 sr_target=None if getattr(obs, "sr_target", None) is None
                 else np.asarray(obs.sr_target, np.float32),
                 counts=np.asarray(obs.counts, np.float32) if keep_counts else None,
                 sources=[(float(d["y"]), float(d["x"]),
                           float(d.get("counts", d.get("rate", 0.0) * obs.exposure)))
                          for d in getattr(obs, "meta", {}).get("sources", [])])


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
        Input exposure (s).
    source_crop_prob : float
        Probability that a crop is centred (within +-crop/4) on a point source of its frame:
        point sources cover few pixels, so without this the sharpening of SR and the bright
        cores of DN are rarely trained.
    faint_source_share : float
        Share of those source crops centred on a faint source (fewer than ``FAINT_COUNTS``
        expected counts); the others go to brighter ones. Faint sources are most of the sky's
        point sources but a tiny part of any crop's loss.
    empty_frame_prob : float
        Probability that a new frame is source-free (background only, ``sources=False`` of the
        simulator): without such fields the network's prior says that every background bump may
        be a faint source, and SR paints false sources in empty sky.
    """

    def __init__(self, simulate, rng, *, task="DN", size=48, exposure=20e3,
                 source_crop_prob=0.0, empty_frame_prob=0.0, faint_source_share=0.0,
                 position=False):
        self.simulate, self.rng, self.task = simulate, rng, task
        self.source_crop_prob = float(source_crop_prob)
        self.faint_source_share = float(faint_source_share)
        self.position = bool(position)
        self.empty_frame_prob = float(empty_frame_prob)
        self.exposure = float(exposure)
        self.frames = []
        self.size = size
        self._next = 0
        while len(self.frames) < size:
            self.frames.append(self._new())

    def _new(self):
        kw = {}
        if self.empty_frame_prob and self.rng.random() < self.empty_frame_prob:
            kw["sources"] = False
        return _to_frame(self.simulate(self.rng, exposure=self.exposure, sr=self.task == "SR",
                                       dn=True, **kw))

    def refresh(self, n=1):
        """Replace the ``n`` oldest frames by new simulations."""
        for _ in range(n):
            self.frames[self._next] = self._new()
            self._next = (self._next + 1) % self.size

    def _pick_source(self, sources):
        rng = self.rng
        faint = [s for s in sources if s[2] < FAINT_COUNTS]
        bright = [s for s in sources if s[2] >= FAINT_COUNTS and s[2] >= MIN_SOURCE_COUNTS]
        if self.faint_source_share <= 0:  # the older recipe: bright sources only
            pool = bright
        else:
            faint = [s for s in faint if s[2] >= MIN_SOURCE_COUNTS]
            pool = faint if (faint and rng.random() < self.faint_source_share) or not bright \
                else bright
        return pool[int(rng.integers(len(pool)))] if pool else None

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
        from .net import position_maps

        rng = self.rng
        s = 2 if self.task == "SR" else 1
        rates, masks, targets, tmasks, poss = [], [], [], [], []
        while len(rates) < batch:
            f = self.frames[int(rng.integers(len(self.frames)))]
            ny, nx = f.mask.shape
            src = (self._pick_source(f.sources)
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
            lam = f.dn_target[y:y + crop, x:x + crop].astype(np.float64) * f.exposure
            counts = rng.poisson(lam).astype(np.float32)
            rate = counts / np.float32(f.exposure)
            if s == 1:
                t = f.dn_target[y:y + crop, x:x + crop]
                tm = m
            else:
                t = f.sr_target[2 * y:2 * (y + crop), 2 * x:2 * (x + crop)]
                tm = np.repeat(np.repeat(m, 2, 0), 2, 1)
            # Flips only: a transpose would turn the detector's column effects (out-of-time
            # streaks along DETY, partially covered columns, corner edge rows) sideways, which
            # never happens in real images.
            k = int(rng.integers(4))
            arrs = [rate, m.astype(np.float32), t, tm.astype(np.float32)]
            if k & 1:
                arrs = [a[::-1] for a in arrs]
            if k & 2:
                arrs = [a[:, ::-1] for a in arrs]
            for lst, a in zip((rates, masks, targets, tmasks), arrs):
                lst.append(np.ascontiguousarray(a)[None])
            if self.position:
                poss.append(position_maps(y, x, crop, crop, flip_y=bool(k & 1),
                                          flip_x=bool(k & 2)))
        out = tuple(np.stack(lst).astype(np.float32) for lst in (rates, masks, targets, tmasks))
        return out + (np.stack(poss),) if self.position else out


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


def validation_frames(simulate, *, n=24, seed=20261128, task="DN", exposure=20e3):
    """Fixed simulated validation set (fixed seeds, fixed noise), never used for fitting."""
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        out.append(_to_frame(simulate(rng, exposure=exposure, sr=task == "SR", dn=True),
                             keep_counts=True))
    return out
