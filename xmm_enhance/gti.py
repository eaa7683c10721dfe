"""Good time intervals (GTIs): from a flaring-background rate curve, algebra, exposure subsets.

A GTI set is a float64 array of shape ``(n, 2)`` holding ``[START, STOP)`` pairs in seconds
(mission time, the ``TIME`` column of the event list), sorted by ``START``, with no overlaps and
``START < STOP``. An event at time ``t`` is inside when ``START <= t < STOP`` for some row.

The steps follow what SAS does for the seed's image maker (``xmm-pn-reference.md`` §3):

1. :func:`gti_from_rate` -- ``tabgtigen table=FBKTSR expression="RATE<=FLCUTTHR"
   mingtisize=50``: each row of the rate curve where the expression is true keeps the time bin
   ``[TIME - TIMEDEL/2, TIME + TIMEDEL/2)`` (the bin edges lie half-way between row times, which
   is tabgtigen's ``prefraction = postfraction = 0.5``); a ``NaN`` rate is bad; adjacent good bins
   merge; intervals shorter than ``min_gti_s`` (50 s) are dropped.
2. :func:`intersect` with the event list's own good time (the per-CCD ``STDGTInn`` tables).
3. :func:`sub_gti` -- the seed's ``max_expo_gti``: the first ``exposure_s`` seconds of the
   longest interval when that is long enough, otherwise whole intervals taken longest first,
   the last one cut so that the total is exactly ``exposure_s`` (the seed cut it to
   ``sum - target`` instead, ``xmm-pn-reference.md`` §7 bug 5).

When less good time exists than was asked for, :func:`sub_gti` keeps all of it: silently within
the seed's 15 % tolerance, with an :class:`ExposureWarning` beyond it. It never raises for this:
a shorter image is still a valid image, and its ``EXPOSURE`` keyword says how long it is.
"""
from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import PPSError

__all__ = [
    "ExposureWarning", "RateCurve", "as_gti", "merge", "intersect", "intersect_many", "total",
    "in_gti", "gti_from_rate", "drop_short", "sub_gti", "read_fbktsr", "plot_gti",
    "EXPOSURE_TOLERANCE", "MIN_GTI_S",
]

log = logging.getLogger(__name__)

#: Minimum GTI length kept by the flare filter (tabgtigen ``mingtisize`` used by the seed).
MIN_GTI_S = 50.0
#: Relative shortfall of good time accepted without a warning (the seed's "15 % tolerance").
EXPOSURE_TOLERANCE = 0.15


class ExposureWarning(UserWarning):
    """Less good time than requested: the image keeps all of it."""


def as_gti(intervals) -> np.ndarray:
    """Normalise ``intervals`` (any ``(n, 2)`` array-like) to a clean GTI set.

    Rows with ``STOP <= START`` or non-finite ends are dropped, the rest sorted and merged.
    """
    a = np.asarray(intervals, dtype=np.float64).reshape(-1, 2)
    return merge(a)


def merge(gti) -> np.ndarray:
    """Union of possibly overlapping or touching intervals, as a clean GTI set."""
    a = np.asarray(gti, dtype=np.float64).reshape(-1, 2)
    ok = np.isfinite(a).all(axis=1) & (a[:, 1] > a[:, 0])
    a = a[ok]
    if len(a) == 0:
        return np.empty((0, 2))
    a = a[np.argsort(a[:, 0], kind="stable")]
    # a new interval starts where its START exceeds every STOP before it
    run_max = np.maximum.accumulate(a[:, 1])
    new = np.empty(len(a), bool)
    new[0] = True
    new[1:] = a[1:, 0] > run_max[:-1]
    starts = a[new, 0]
    idx = np.flatnonzero(new)
    stops = np.maximum.reduceat(a[:, 1], idx)
    return np.column_stack([starts, stops])


def intersect(a, b) -> np.ndarray:
    """Intersection of two GTI sets."""
    a, b = as_gti(a), as_gti(b)
    if len(a) == 0 or len(b) == 0:
        return np.empty((0, 2))
    # all candidate pairs that overlap, found with a sweep through sorted edges
    out = []
    i = j = 0
    while i < len(a) and j < len(b):
        lo = max(a[i, 0], b[j, 0])
        hi = min(a[i, 1], b[j, 1])
        if hi > lo:
            out.append((lo, hi))
        if a[i, 1] < b[j, 1]:
            i += 1
        else:
            j += 1
    return merge(np.array(out, dtype=np.float64).reshape(-1, 2))


def intersect_many(gtis) -> np.ndarray:
    """Intersection of several GTI sets (an empty list gives an empty set)."""
    gtis = list(gtis)
    if not gtis:
        return np.empty((0, 2))
    out = as_gti(gtis[0])
    for g in gtis[1:]:
        out = intersect(out, g)
    return out


def total(gti) -> float:
    """Summed length of the intervals, seconds."""
    a = np.asarray(gti, dtype=np.float64).reshape(-1, 2)
    return float(np.sum(a[:, 1] - a[:, 0])) if len(a) else 0.0


def in_gti(time, gti) -> np.ndarray:
    """Boolean mask of ``time`` values inside the (clean) GTI set, ``START <= t < STOP``."""
    t = np.asarray(time)
    g = np.asarray(gti, dtype=np.float64).reshape(-1, 2)
    if len(g) == 0:
        return np.zeros(t.shape, bool)
    edges = g.ravel()  # START0, STOP0, START1, ... non-decreasing for a clean set
    return (np.searchsorted(edges, t, side="right") & 1).astype(bool)


def drop_short(gti, min_length_s: float) -> np.ndarray:
    """Intervals of at least ``min_length_s`` seconds."""
    g = as_gti(gti)
    return g[(g[:, 1] - g[:, 0]) >= min_length_s]


def gti_from_rate(time, rate, threshold: float, timedel: float, *,
                  min_gti_s: float = MIN_GTI_S) -> np.ndarray:
    """GTIs where ``rate <= threshold``, with tabgtigen semantics.

    Parameters
    ----------
    time : array, float64 [n]
        Bin centres (s), the ``TIME`` column of an FBKTSR ``RATE`` table.
    rate : array, float [n]
        Count rate (count/s); ``NaN`` (empty bins) counts as bad.
    threshold : float
        ``FLCUTTHR`` (count/s). A row is good when ``rate <= threshold``.
    timedel : float
        Bin width (s); each good row keeps ``[time - timedel/2, time + timedel/2)``.
    min_gti_s : float
        Merged good intervals shorter than this are dropped (tabgtigen ``mingtisize``).

    Returns
    -------
    ndarray, float64 [m, 2]
    """
    t = np.asarray(time, dtype=np.float64)
    r = np.asarray(rate, dtype=np.float64)
    if t.shape != r.shape:
        raise ValueError(f"time and rate differ in shape: {t.shape} vs {r.shape}")
    if not timedel > 0:
        raise ValueError(f"timedel must be > 0, got {timedel}")
    with np.errstate(invalid="ignore"):
        good = np.isfinite(t) & (r <= threshold)  # NaN compares False: bad
    if not good.any():
        return np.empty((0, 2))
    half = 0.5 * float(timedel)
    runs = merge(np.column_stack([t[good] - half, t[good] + half]))
    return runs[(runs[:, 1] - runs[:, 0]) >= min_gti_s]


def sub_gti(gti, exposure_s: float, *, tolerance: float = EXPOSURE_TOLERANCE) -> np.ndarray:
    """A subset of ``gti`` amounting to ``exposure_s`` seconds (the seed's ``max_expo_gti``).

    - ``exposure_s <= 0``: all of ``gti``.
    - The longest interval holds ``exposure_s``: its first ``exposure_s`` seconds.
    - Otherwise whole intervals, longest first (ties: earliest first), until the next one would
      reach the target; that one is cut to ``exposure_s - sum_before`` seconds from its start.
    - Less good time than ``exposure_s`` in total: all of it; an :class:`ExposureWarning` when
      the shortfall exceeds ``tolerance`` (15 %), a log message otherwise.

    Returns a clean GTI set sorted by time whose :func:`total` equals ``exposure_s`` (to float
    rounding) whenever enough good time exists.
    """
    g = as_gti(gti)
    if exposure_s is None or exposure_s <= 0:
        return g
    exposure_s = float(exposure_s)
    have = total(g)
    if have < exposure_s:
        msg = (f"only {have / 1e3:.2f} ks of good time for the requested "
               f"{exposure_s / 1e3:.2f} ks; keeping all of it")
        if have < (1.0 - tolerance) * exposure_s:
            warnings.warn(msg + f" (more than {tolerance:.0%} short)", ExposureWarning,
                          stacklevel=2)
        else:
            log.info("%s (within the %.0f%% tolerance)", msg, 100 * tolerance)
        return g
    length = g[:, 1] - g[:, 0]
    order = np.lexsort((g[:, 0], -length))  # longest first, then earliest
    out = []
    acc = 0.0
    for k in order:
        need = exposure_s - acc
        if length[k] >= need:
            out.append((g[k, 0], g[k, 0] + need))
            acc = exposure_s
            break
        out.append((g[k, 0], g[k, 1]))
        acc += length[k]
    out = np.array(out, dtype=np.float64)
    return out[np.argsort(out[:, 0])]


@dataclass
class RateCurve:
    """An FBKTSR flaring-background light curve (``RATE`` extension)."""

    time: np.ndarray
    rate: np.ndarray
    timedel: float
    threshold: float
    tstart: float
    tstop: float
    path: Path | None = None
    header: dict = field(default_factory=dict)


def read_fbktsr(path) -> RateCurve:
    """Read the ``RATE`` table and ``FLCUTTHR`` of an FBKTSR file (FITS, plain or gzipped).

    Raises :class:`~xmm_enhance.errors.PPSError` (one line) when the file is unreadable, has no
    ``RATE`` extension, lacks ``TIME``/``RATE`` or the ``FLCUTTHR`` threshold.
    """
    from astropy.io import fits

    path = Path(path)
    fix = "download the PPS again or pass a complete --pps_dir"
    try:
        with fits.open(path, memmap=False) as hdul:
            names = [h.name for h in hdul]
            if "RATE" not in names:
                raise PPSError(f"{path}: no RATE extension (not a flaring-background time "
                               f"series); {fix}")
            hdu = hdul["RATE"]
            hdr = hdu.header
            thr = hdr.get("FLCUTTHR")
            if thr is None or not math.isfinite(float(thr)):
                raise PPSError(f"{path}: RATE header has no FLCUTTHR flare threshold, "
                               "so this pn exposure cannot be cleaned with the PPS threshold; "
                               "replace the file with the archive's current FBKTSR (download "
                               "the PPS again), or use another observation")
            cols = [c.upper() for c in hdu.columns.names]
            for c in ("TIME", "RATE"):
                if c not in cols:
                    raise PPSError(f"{path}: RATE table has no {c} column; {fix}")
            time = np.array(hdu.data["TIME"], dtype=np.float64)
            rate = np.array(hdu.data["RATE"], dtype=np.float64)
            timedel = hdr.get("TIMEDEL")
            if timedel is None:
                d = np.diff(time)
                timedel = float(np.median(d)) if len(d) else 10.0
            tstart = float(hdr.get("TSTART", time[0] - timedel / 2 if len(time) else 0.0))
            tstop = float(hdr.get("TSTOP", time[-1] + timedel / 2 if len(time) else 0.0))
            keep = {k: hdr[k] for k in ("FLCUTTHR", "TIMEDEL", "TSTART", "TSTOP") if k in hdr}
    except PPSError:
        raise
    except (OSError, EOFError, ValueError, KeyError, TypeError) as err:
        from .archive import unreadable_error

        raise unreadable_error(path, err) or PPSError(
            f"{path}: unreadable or corrupt FITS file ({_short(err)}); {fix}") from err
    if len(time) == 0:
        raise PPSError(f"{path}: the RATE table is empty; {fix}")
    return RateCurve(time=time, rate=rate, timedel=float(timedel), threshold=float(thr),
                     tstart=tstart, tstop=tstop, path=path, header=keep)


def _short(err) -> str:
    s = str(err).strip().splitlines()
    return (s[0] if s else type(err).__name__)[:160]


def plot_gti(curve: RateCurve, kept, path, *, flare_gti=None, title: str = ""):
    """PNG of the flaring-background light curve, the threshold and the kept intervals.

    ``kept`` (and ``flare_gti``, the intervals passing the threshold) are GTI sets. The file is
    written through a temporary name and renamed. Returns the path.
    """
    from .fsmode import prepare_matplotlib

    prepare_matplotlib()
    # a bare Figure draws with Agg whatever the user's backend, which stays as it is
    from matplotlib.figure import Figure

    path = Path(path)
    t0 = curve.tstart
    fig = Figure(figsize=(9, 3.6), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    tk = (curve.time - t0) / 1e3
    ax.plot(tk, curve.rate, lw=0.6, color="0.2", label="FBKTSR rate")
    ax.axhline(curve.threshold, color="tab:red", lw=1,
               label=f"FLCUTTHR = {curve.threshold:.3g} count/s")
    if flare_gti is not None:
        for i, (a, b) in enumerate(np.asarray(flare_gti).reshape(-1, 2)):
            ax.axvspan((a - t0) / 1e3, (b - t0) / 1e3, color="tab:blue", alpha=0.12, lw=0,
                       label="good (rate <= threshold)" if i == 0 else None)
    for i, (a, b) in enumerate(np.asarray(kept).reshape(-1, 2)):
        ax.axvspan((a - t0) / 1e3, (b - t0) / 1e3, color="tab:green", alpha=0.35, lw=0,
                   label="kept" if i == 0 else None)
    finite = curve.rate[np.isfinite(curve.rate)]
    # a flare far above the threshold would squeeze the quiet curve and the threshold into the
    # bottom of a linear axis
    if len(finite) and finite.max() > 5 * max(curve.threshold, 1e-9):
        ax.set_yscale("log")
    ax.set_xlabel(f"time since TSTART = {t0:.0f} s  [ks]")
    ax.set_ylabel("rate [count/s]")
    ax.set_title(title or f"{path.stem}: kept {total(kept) / 1e3:.2f} ks", fontsize=9)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    from .fitsio import atomic_savefig
    return atomic_savefig(fig, path)
