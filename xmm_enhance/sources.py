"""Point-source list of an SR prediction, with significances measured on the input counts.

The SR network's ``points`` map says *where* point sources may be; whether one is there is
decided on the photons, not on the network (issue 13): for each candidate a PSF-fit likelihood
ratio against the local background is computed from the input counts, in the way SAS
``emldetect`` does it (maximum-likelihood PSF fit, Cash statistic):

* candidates: local maxima of the ``points`` map (2x grid) summed over 3 x 3 2x pixels, above
  ``min_counts`` at the input exposure;
* background ``b``: for each candidate, the mean counts per live pixel in an annulus of
  ``BKG_ANNULUS`` (1x pixels) around it, other candidates' cores excluded; it holds the
  instrumental background and the local diffuse emission, and no network output;
* source model ``b + F k(x0, y0)``, ``k`` the pn PSF (the King profile of
  :mod:`xmm_enhance.simulate.psf`, widening and stretching tangentially off axis) integrated
  over the 1x pixels, at the centroid of the ``points`` map around the candidate (to a quarter
  pixel); ``F >= 0`` (total counts over the whole PSF) by maximum likelihood;
* ``C = 2 [ln L(b + F k) - ln L(b)]``, converted to a Gaussian significance with three degrees
  of freedom (flux and two position coordinates), as ``emldetect``'s detection likelihood is;
  with ``BKG_SYSTEMATIC`` > 0 (default 0), ``C`` is first scaled by ``var / (var +
  (BKG_SYSTEMATIC B)^2)`` for a fractional error of the background model (``B`` the background
  counts under the PSF): on a bright cluster core a per-cent error of the ``DIFFUSE`` map is
  many Poisson sigma;
* a candidate that a King profile ``EXTENT_RC_FACTOR`` times wider in its core fits better by
  more than ``EXTENT_C`` is extended emission (a knot, a cluster core), not a point source, and
  is dropped;
* the listed position: where the likelihood ratio peaks on a grid of 1" steps (quarter input
  pixels) around the centroid, re-centred up to ``POSITION_STEPS`` times when the peak is at
  the grid's edge, and interpolated by a parabola; ``RADEC_ERR`` is its 1-sigma radial error
  (``sqrt(err_ra^2 + err_dec^2)`` as in ``emldetect``) from the fit's Fisher information, with
  ``POSITION_ERR_FLOOR_ARCSEC`` in quadrature, without the pointing's systematic error;
* candidates closer than ``MERGE_PX`` keep the most significant one;
* the listed flux is the ``points`` map's within 20" of the source, scaled to the whole PSF: the
  map is the network's posterior mean given all the counts, while the fitted flux
  (``fit_counts``) of a source found near the threshold is biased upwards (it was selected for
  having fluctuated up; independent photons then show less).

All positions are 0-based array coordinates ``[y, x]``: 1x pixels of the input, and the 2x
output grid where ``x2 = 2 x + 0.5``.
"""
from __future__ import annotations

import logging
import math

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["detect_sources", "redraw_points", "claim_excess", "psf_core_scale",
           "DEFAULT_MIN_SIGNIF", "FLUX_SYSTEMATIC", "flux_error",
           "region_text", "SOURCE_COLUMNS", "psf_fraction"]

#: Default detection threshold (Gaussian sigma, three degrees of freedom); chosen on simulated
#: fields to keep false sources rare. 5 until session 16; 4.5, the level at which ``POINTS``
#: already kept candidates, lists 4-5 % more of the simulated sources of >= 20 counts at 20
#: and 50 ks for 0.1-0.7 % more false entries (1.4-3.3 % on seeds 515151 and 424242,
#: ``bench_calibration.py --pipeline``), and no more flat-background frames with a listed
#: entry (2 of 108, as at 5).
DEFAULT_MIN_SIGNIF = 4.5
#: Half-size of the fit window (1x pixels; 6 px = 24").
FIT_RADIUS = 6
#: Inner and outer radius of the background annulus (1x pixels).
BKG_ANNULUS = (8.0, 16.0)
#: Cores of other candidates excluded from a background annulus (1x pixels).
EXCLUDE_RADIUS = 4.0
#: Radius (1x pixels) of a candidate's core in which the diffuse background is not allowed
#: below its mean over the ring from there to ``FIT_RADIUS`` (:func:`detect_sources`).
DIP_FILL_RADIUS = 3
#: Extent test: a King profile with this many times the PSF's core radius, and the likelihood
#: gain over the PSF that marks a candidate as extended emission.
EXTENT_RC_FACTOR = 2.5
EXTENT_C = 9.0
#: Fractional error of the background model (the ``DIFFUSE`` map plus the annulus level, and
#: the PSFs of modelled neighbours) under a candidate, as a systematic on the fitted flux: the
#: likelihood ratio is scaled by ``var / (var + (BKG_SYSTEMATIC * B)^2)``, ``var`` the fit's
#: Poisson variance and ``B`` the PSF-weighted background counts under the source
#: (:func:`_background_systematic`). It matters only where the background under the PSF holds
#: thousands of counts (a bright cluster core), where a per-cent error of its shape is many
#: Poisson sigma. 0 (the default): Poisson errors only; ``detect_sources(bkg_systematic=)``
#: sets it per call. Measured in session 21 with 3 %: on simulations (seeds 515151 and 424242,
#: 20 and 50 ks) it removed 13 of 114 false entries and 43 of 5274 true ones; in fields
#: simulated without point sources the false entries over B > 1000 counts needed 0.6-4 %. On
#: the dev images (real look 22) it removed no entry that the independent photons exclude and
#: 1 (20 ks) and 2 (50 ks) of the reference's real sources, so it stays off.
BKG_SYSTEMATIC = 0.0
#: Radius (2x pixels; 10 = 20") of the points-map aperture that gives a source's listed flux.
NET_RADIUS_2X = 10
#: Positions fitted: the candidate's centroid and the quarter 1x pixels within this many of it.
SEARCH_Q = 1
#: Added in quadrature to each source's statistical position error (arcsec): the position is
#: interpolated between 1" grid points by a parabola, which the likelihood's peak only
#: approximates, and the simulator's PSF variants that the fit's King model does not follow.
#: Chosen on simulations (``bench_calibration.py``, 12 frames at 20 and 50 ks): seed 515151,
#: 61.7 % of the true positions within ``RADEC_ERR``; held-out seed 424242, 61.0 % (59-66 %
#: in every brightness bin); a 2-D Gaussian gives 63 %.
POSITION_ERR_FLOOR_ARCSEC = 0.3
#: Re-centrings of the position grid on a listed source whose best offset is at its edge.
POSITION_STEPS = 4
#: Candidates closer than this (1x pixels) are one source.
MERGE_PX = 2.5
#: Iterations of :func:`_apportion_discs` (the shares of neighbouring sources' discs converge to
#: 1e-4 within ~10-20 for sources 8-40" apart).
APPORTION_ITERS = 50
_SUB4 = (np.arange(4) - 1.5) / 4.0  # a 2x pixel's 4 x 4 sub-grid, in 2x pixels
#: Candidates beside a dead stripe (CCD gap, bad column) get one more at the stripe's centre
#: (:func:`_gap_candidates`): stripes of at most ``GAP_MAX_WIDTH`` 1x pixels within
#: ``GAP_REACH`` of a candidate with at least ``GAP_MIN_COUNTS`` points counts in 3 x 3 2x
#: pixels. Such a candidate is fitted when ``GAP_MIN_LIVE`` of the 1x pixels within
#: ``GAP_CORE_PX`` of it are live (instead of 3 of the central 3 x 3).
GAP_CANDIDATES = True
GAP_MAX_WIDTH = 8
GAP_REACH = 6
GAP_MIN_COUNTS = 5.0
GAP_CORE_PX = 4
GAP_MIN_LIVE = 15
#: Candidates within this many 1x pixels of a gap candidate compete with it
#: (:func:`_resolve_gap_candidates`).
GAP_SIDE_PX = 4.5
#: A side candidate this significant (sigma, in the stripe candidate's window over a flat
#: level) could be listed or keep its points: only then does :func:`detect_sources` detect
#: again without a stripe candidate that replaced it and was not listed.
GAP_SIDE_SIGNIF = 5.0
#: Neighbours brighter than this (whole-PSF counts) are not modelled in a fit's background.
NEIGHBOUR_MAX_COUNTS = 1e4
#: 1x pixel size (arcsec).
PIXEL_ARCSEC = 4.0

#: Fractional error of a listed source's whole-PSF counts beyond the fit's Poisson error, added
#: in quadrature in ``COUNTS_ERR`` and ``RATE_ERR`` (header ``FLUXSYS``): the counts are the
#: ``points`` map's within 20" over the King model's share of the halved PSF there, and an
#: observation's PSF differs from the model (the simulator's per-observation variants move that
#: share by -10 to +5 %). On simulations (seeds 2718 and 424242, 12 frames at 20 and 50 ks,
#: 2644 listed sources of >= 20 true counts) the Poisson error alone held the truth for 0.24 of
#: the sources of >= 1000 counts and 0.44 at 200-1000; with 0.09 it holds 0.70 and 0.66 (0.64-0.66
#: below 200 counts, where the Poisson error dominates). Session 29.
FLUX_SYSTEMATIC = 0.09

#: (name, unit, description) of the SOURCES / CANDIDATES columns; the description is the
#: TTYPEn comment, which holds 46 characters beside an 8-character name.
SOURCE_COLUMNS = (
    ("RA", "deg", "right ascension (frame: RADESYS)"),
    ("DEC", "deg", "declination (frame: RADESYS)"),
    ("X", "pixel", "0-based column on the output grid"),
    ("Y", "pixel", "0-based row on the output grid"),
    ("RATE", "count/s", "points-map rate, whole PSF, not vignet.-corr."),
    ("RATE_ERR", "count/s", "1-sigma error of RATE, FLUXSYS included"),
    ("COUNTS", "count", "counts over the whole PSF at input EXPOSURE"),
    ("COUNTS_ERR", "count", "1-sigma error of COUNTS, FLUXSYS included"),
    ("FIT_COUNTS", "count", "maximum-likelihood PSF-fit counts on the input"),
    # sigma is no FITS unit (readers drop it with a warning): the description says it
    ("SIGNIF", None, "significance (sigma), PSF-fit LR on the input"),
    ("BKG", "count/pixel", "local background per 4\" input pixel"),
    ("RADEC_ERR", "arcsec", "1-sigma position error (pointing: SYSERR)"),
    ("EXT_DC", None, "C(2.5x wider King) - C(PSF); > 9: extended"),
)
#: Systematic position error (arcsec, 1 sigma) of an XMM-Newton field without astrometric
#: correction (4XMM, Webb et al. 2020: about 1.3"); not in ``RADEC_ERR``, written to the table's
#: header.
SYSTEMATIC_POS_ERR_ARCSEC = 1.3


#: Radius (arcsec) within which the PSF holds the "whole" flux: the simulator's kernels (and so the
#: SR flux scale the networks learnt) are truncated there and renormalised.
PSF_TOTAL_RADIUS_ARCSEC = 128.0


def _king_windows(rc_pix, alpha, q, phi, dy, dx, radius, oversample=4):
    """Pixel-integrated King PSFs over a (2 radius + 1)^2 window whose centre pixel is offset by
    ``(dy, dx)`` pixels from the source, in units of the whole PSF's flux (the flux within
    ``PSF_TOTAL_RADIUS_ARCSEC``), so a window sums to less than one. ``q`` and ``phi``: the
    area-preserving tangential stretch of :func:`xmm_enhance.simulate.psf.king_kernel`. All
    parameters are arrays [M] (one window each); returns [M, (2 radius + 1)^2]."""
    # float32 (relative error ~1e-7, far below the fit's needs): its power is ~5x faster, and a
    # command-line call makes ~1000 windows
    rc_pix, alpha, q, phi, dy, dx = (np.asarray(v, np.float32)[:, None, None]
                                     for v in (rc_pix, alpha, q, phi, dy, dx))
    n = 2 * radius + 1
    o = oversample
    c = ((np.arange(n * o) + 0.5) / o - (radius + 0.5)).astype(np.float32)
    yy, xx = c[None, :, None] - dy, c[None, None, :] - dx
    cp, sp = np.cos(phi), np.sin(phi)
    dr = xx * cp + yy * sp
    dt = yy * cp - xx * sp
    r2 = dr * dr * q + dt * dt / q
    m = len(rc_pix)
    k = ((1.0 + r2 / rc_pix ** 2) ** (-alpha)).reshape(m, n, o, n, o).sum(
        axis=(2, 4), dtype=np.float64) / (o * o)
    # analytic total of the circular profile within R (the stretch keeps the area)
    R = PSF_TOTAL_RADIUS_ARCSEC / PIXEL_ARCSEC
    rc64, a64 = rc_pix.astype(np.float64), alpha.astype(np.float64)
    total = np.pi * rc64 ** 2 / (a64 - 1.0) * (1.0 - (1.0 + R * R / rc64 ** 2) ** (1.0 - a64))
    return (k / total).reshape(m, n * n)


#: PSF windows already made, by (theta_bin, az_bin, sub_y, sub_x, extended)
_KERNELS: dict = {}


def _kernels(keys):
    """PSF windows (flattened, [len(keys), P]) for ``keys`` of (off-axis angle in arcmin,
    azimuth bin of 12 over 180 degrees, offset of the source from the window's centre pixel in
    quarter pixels (y, x), extended); ``extended``: the core radius times ``EXTENT_RC_FACTOR``
    (a source ~10" across). Made in batches and kept for the process's life."""
    from .simulate import psf

    keys = [tuple(int(v) for v in k) for k in keys]
    missing = [k for k in dict.fromkeys(keys) if k not in _KERNELS]
    for i in range(0, len(missing), 512):
        part = np.array(missing[i:i + 512], np.float64).reshape(-1, 5)
        tb, ab, sy, sx, ext = part.T
        rc, alpha = np.array([psf.king_params(t) for t in tb]).T
        q = np.array([psf.elongation(t) for t in tb])
        rc = np.where(ext > 0, rc * EXTENT_RC_FACTOR, rc)
        win = _king_windows(rc / PIXEL_ARCSEC, alpha, q, (ab + 0.5) * math.pi / 12, sy * 0.25,
                            sx * 0.25, FIT_RADIUS)
        _KERNELS.update(zip(missing[i:i + 512], win))
    if not keys:
        return np.zeros((0, (2 * FIT_RADIUS + 1) ** 2))
    return np.stack([_KERNELS[k] for k in keys])


def _kernel(theta_bin, az_bin, sub_y, sub_x, extended):
    """One PSF window of :func:`_kernels`."""
    return _kernels([(theta_bin, az_bin, sub_y, sub_x, extended)])[0]


def _psf_bins(cy, cx, axis):
    """Off-axis angle (whole arcmin) and azimuth bin (of 12 over 180 deg) of the PSF kernels of
    1x pixels ``cy``, ``cx`` (int arrays); zeros (on axis) when ``axis`` is None."""
    if axis is None:
        return np.zeros(len(cy), int), np.zeros(len(cy), int)
    dy, dx = cy - axis[0], cx - axis[1]
    tb = np.rint(np.hypot(dy, dx) * PIXEL_ARCSEC / 60.0).astype(int)
    ab = ((np.arctan2(dy, dx) % np.pi) / (np.pi / 12)).astype(int) % 12
    return tb, ab


def _fit_flux(c, b, k, m, iters=25):
    """Maximum-likelihood ``F >= 0`` of ``c ~ Poisson(b + F k)`` over the pixels ``m``, for many
    fits at once (Newton steps, at most ``iters``).

    Parameters
    ----------
    c, k, m : ndarray [..., P]
        Counts, PSF window and pixel weights (1 live, 0 not).
    b : ndarray [..., 1]
        Background counts per pixel.

    Returns
    -------
    F, C, var : ndarray [...]
        Flux (counts over the whole PSF), likelihood ratio ``2 [ln L(b + F k) - ln L(b)]`` and
        the variance of ``F`` (inverse Fisher information).
    """
    k = k * m
    ksum = k.sum(-1)
    f = np.maximum(((c - b) * m).sum(-1) / np.maximum(ksum, 1e-12), 0.0)
    ck = c * k
    for _ in range(iters):
        lam = b + f[..., None] * k
        r = ck / lam
        g = r.sum(-1) - ksum
        h = (r * (k / lam)).sum(-1)
        step = np.where(h > 0, g / np.maximum(h, 1e-30), 0.0)
        f_new = np.maximum(f + step, 0.0)
        # Newton converges quadratically (7-8 steps to machine precision on the benchmark field):
        # stop once no fit moves by more than 1e-12 of its flux
        done = not np.any(np.abs(f_new - f) > 1e-12 * (1.0 + f))
        f = f_new
        if done:
            break
    lam = b + f[..., None] * k
    cstat = 2.0 * ((c * m * np.log(lam / b)).sum(-1) - f * ksum)
    info = (k * k / lam).sum(-1)
    return f, np.maximum(cstat, 0.0), np.where(info > 0, 1.0 / np.maximum(info, 1e-30), np.inf)


def _background_systematic(b, f, k, m):
    """``B``: the background counts the flux fit of :func:`_fit_flux` weighs under each source,
    ``sum(w b)`` with its weights ``w = var k / lam`` (``lam = b + F k``), so that a fractional
    error ``e`` of the background shifts ``F`` by ``e B``. Arrays [N, P] (``f`` [N])."""
    k = k * m
    lam = b + f[:, None] * k
    info = (k * k / lam).sum(-1)
    return (k * b / lam).sum(-1) / np.maximum(info, 1e-30)


def _with_systematic(cstat, var, bkg_counts, frac):
    """Likelihood ratios ``cstat`` of flux fits with Poisson variance ``var`` deflated for a
    systematic error ``frac * bkg_counts`` of the fitted flux: ``C var / (var + (frac B)^2)``,
    as ``C ~ F^2 / var``."""
    s2 = (frac * np.asarray(bkg_counts, np.float64)) ** 2
    v = np.asarray(var, np.float64)
    return np.where(np.isfinite(v), cstat * v / np.maximum(v + s2, 1e-300), cstat)


def _signif(cstat, dof=3):
    """Gaussian (one-sided) significance of likelihood ratios ``cstat`` with 3 degrees of
    freedom (numpy and the standard library only: scipy costs ~0.2 s to import)."""
    from statistics import NormalDist

    if dof != 3:
        raise ValueError("only 3 degrees of freedom are implemented")
    c = np.maximum(np.asarray(cstat, float), 0.0)
    out = np.zeros(c.shape)
    nd = NormalDist()
    for i, x in np.ndenumerate(c):
        # chi-square survival function, 3 dof: erfc(sqrt(x/2)) + sqrt(2x/pi) exp(-x/2)
        p = math.erfc(math.sqrt(x / 2.0)) + math.sqrt(2.0 * x / math.pi) * math.exp(-x / 2.0)
        if p >= 0.5:
            out[i] = 0.0
        elif p > 1e-300:
            out[i] = -nd.inv_cdf(p)
        else:  # beyond float range (C > ~1400) the significance grows as sqrt(C)
            out[i] = math.sqrt(x)
    return out


def _binomial_blur(a, mask):
    """``a`` smoothed with a 3 x 3 binomial kernel (sigma 0.7 pixel: the half PSF's width
    brought back to about the full PSF's, at 4" pixels) within ``mask``, zero outside."""
    m = np.asarray(mask, np.float64)
    out = []
    for v in (np.asarray(a, np.float64) * m, m):
        p = np.pad(v, 1)
        v = 0.25 * p[:-2] + 0.5 * p[1:-1] + 0.25 * p[2:]
        out.append(0.25 * v[:, :-2] + 0.5 * v[:, 1:-1] + 0.25 * v[:, 2:])
    return np.where(m > 0, out[0] / np.maximum(out[1], 1e-12), 0.0)


def _box_sum(a, half, dtype=np.float64):
    """Sum of ``a`` over (2 half + 1)^2 windows, zero outside (separable shifted adds, in
    ``dtype``)."""
    h, w = a.shape
    p = np.pad(np.asarray(a, dtype), half)
    rows = p[0:h].copy()
    for dy in range(1, 2 * half + 1):
        rows += p[dy:dy + h]
    out = rows[:, 0:w].copy()
    for dx in range(1, 2 * half + 1):
        out += rows[:, dx:dx + w]
    return out


def coverage_in_counts(counts, mask, coverage):
    """``coverage`` where the counts show it, else None.

    A real pn image collects in each column next to a CCD gap the share of a full column's
    events that ``coverage`` gives (:func:`xmm_enhance.detector.coverage_map`); an image made
    another way (a simulation that fills every live pixel fully) does not, and fitting it with
    the coverage would read those columns as sources. The test is one likelihood ratio over all
    the partly covered live pixels: their counts against the level of the fully covered live
    pixels within 2 pixels, times the coverage or not. None when the counts favour no coverage;
    the coverage when they favour it or cannot tell (no counts).
    """
    counts = np.asarray(counts, np.float64)
    cov = np.asarray(coverage, np.float64)
    mask = np.asarray(mask, bool)
    part = mask & (cov < 0.95)
    full = mask & (cov >= 0.999)
    den = _box_sum(full.astype(np.float64), 2)
    level = np.where(den > 0, _box_sum(counts * full, 2) / np.maximum(den, 1), 0.0)
    obs = counts[part].sum()
    e_full = level[part].sum()
    e_cov = (cov * level)[part].sum()
    if e_full <= 0 or e_cov <= 0:
        return coverage
    # ln L(no coverage) - ln L(coverage) for Poisson counts obs
    llr = obs * math.log(e_full / e_cov) - (e_full - e_cov)
    return None if llr > 0 else coverage


def _window_sum(a, half):
    """Sum of ``a`` over (2 half + 1)^2 windows, zero outside (a summed-area table: the cost
    does not grow with the window)."""
    h, w = a.shape
    n = 2 * half + 1
    c = np.zeros((h + n, w + n))
    c[half + 1:half + 1 + h, half + 1:half + 1 + w] = a
    np.cumsum(c, 0, out=c)
    np.cumsum(c, 1, out=c)
    # window of output pixel (y, x): padded rows y..y + 2 half, i.e. c[y + n] - c[y]
    return (c[n:, n:] - c[:h, n:]) - (c[n:, :w] - c[:h, :w])


#: Box half-sizes (2x pixels) of the scales of :func:`smooth_diffuse`: 6", 10", 18" windows.
DIFFUSE_SCALES = (1, 2, 4)
#: Within ``DIFFUSE_PROTECT_RADIUS_2X`` (2x pixels; 5 = 10") of a source-list candidate of at
#: least this significance (sigma) that the PSF fits, :func:`smooth_diffuse` keeps the
#: network's drawing: a faint source below the list's threshold stays a compact feature of the
#: SR image. On the dev images this kept 0.49 (20 ks) and 0.79 (50 ks) of the full exposures'
#: sources as features of the image, against 0.43 and 0.75 without it and 0.52 and 0.82
#: unsmoothed, with the excluded share of the testable features at 17 % and 9 % (19 % and 9 %
#: without it; 28 % and 12 % unsmoothed).
DIFFUSE_PROTECT_SIGNIF = 3.0
DIFFUSE_PROTECT_RADIUS_2X = 5
#: A detail of the ``DIFFUSE`` map at one of those scales stays where the input counts demand
#: it at least this significantly (sigma); elsewhere the map keeps its smoother version. On
#: the dev images (session 17) the SR image's compact features off the listed sources that
#: the independent photons exclude at 3 sigma went from 44 (of 101 testable) to 12 (of 31) at
#: 20 ks; on simulations, whose diffuse emission the network knows, the primary's error in
#: sqrt(counts) grew by 2-8 % (2 sigma: the same on both).
DIFFUSE_DETAIL_SIGNIF = 3.0


def smooth_diffuse(diffuse2, counts2, exposure, live2, *, scales=DIFFUSE_SCALES,
                   z_min=None, protect2=None):
    """The ``DIFFUSE`` map with the structure the input counts do not demand smoothed away.

    The network draws bright diffuse emission with knots that independent photons do not
    confirm. The map is split into box-filtered levels ``L_0 = D``, ``L_k`` = the mean of
    ``D`` over the live pixels of a ``(2 h_k + 1)^2`` window (``scales`` = the ``h_k``) and
    the details ``L_k - L_{k+1}``. A detail stays where its counts within the finer window
    stand ``z_min`` Poisson sigma above or below the input counts' noise in that window (an
    adaptive smoothing in the spirit of ``csmooth``); elsewhere it is dropped and the coarser
    level shows. Flux is conserved up to the clip at zero.

    Parameters
    ----------
    diffuse2 : ndarray [2H, 2W]
        The ``DIFFUSE`` map (count/s per 2x pixel).
    counts2 : ndarray [2H, 2W]
        The input counts on the 2x grid (each 1x pixel's counts / 4): the noise reference.
    exposure : float
        Input exposure (s).
    live2 : bool ndarray [2H, 2W]
        Pixels of the output; the map stays 0 elsewhere.
    z_min : float, optional
        Default :data:`DIFFUSE_DETAIL_SIGNIF`.
    protect2 : bool ndarray [2H, 2W], optional
        Where the map stays as it is (around source candidates, :func:`protect_mask`).

    Returns
    -------
    ndarray float32 [2H, 2W]
    """
    z_min = DIFFUSE_DETAIL_SIGNIF if z_min is None else float(z_min)
    T = float(exposure)
    live = np.asarray(live2, bool)
    lf = live.astype(np.float32)
    d = np.where(live, np.asarray(diffuse2, np.float32) * np.float32(T), np.float32(0))
    c = np.where(live, np.maximum(np.asarray(counts2, np.float32), 0), np.float32(0))

    def bsum(a, h):  # window sums in float32
        return _box_sum(a, h, np.float32)

    levels, noise = [d], [c]
    for k, h in enumerate(scales):
        levels.append(np.where(live, bsum(d, h) / np.maximum(bsum(lf, h), 1), 0))
        if k < len(scales) - 1:
            noise.append(bsum(c, h))  # input counts in the window of the next detail
    out = levels[-1].astype(np.float64)
    sizes = [0] + list(scales)
    for k in range(len(scales)):
        w = levels[k] - levels[k + 1]
        h = sizes[k]
        # the detail's counts in the finer window against the input's noise there
        z = (bsum(w, h) if h else w) / np.sqrt(noise[k] + 1)
        out += np.where(np.abs(z) >= z_min, w, 0)
    if protect2 is not None:
        out = np.where(np.asarray(protect2, bool), d, out)
    return (np.maximum(out, 0.0) * live / T).astype(np.float32)


def protect_mask(shape, candidates, *, min_signif=None, radius=None):
    """Bool map [shape] of the discs of ``radius`` (2x pixels; default
    ``DIFFUSE_PROTECT_RADIUS_2X``) around the ``candidates`` (:func:`detect_sources`) of at
    least ``min_signif`` (default ``DIFFUSE_PROTECT_SIGNIF``)."""
    min_signif = DIFFUSE_PROTECT_SIGNIF if min_signif is None else min_signif
    r = DIFFUSE_PROTECT_RADIUS_2X if radius is None else radius
    out = np.zeros(shape, bool)
    ry, rx = np.mgrid[-r:r + 1, -r:r + 1]
    disc = ry * ry + rx * rx <= r * r
    ry, rx = ry[disc], rx[disc]
    for d in candidates:
        if d["signif"] >= min_signif:
            ys = int(round(d["y2"])) + ry
            xs = int(round(d["x2"])) + rx
            ok = (ys >= 0) & (ys < shape[0]) & (xs >= 0) & (xs < shape[1])
            out[ys[ok], xs[ok]] = True
    return out


def _box_max(a, half):
    """Maximum of ``a`` over (2 half + 1)^2 windows (edges padded with -inf; separable)."""
    h, w = a.shape
    p = np.pad(np.asarray(a, np.float64), half, constant_values=-np.inf)
    rows = p[:h].copy()
    for dy in range(1, 2 * half + 1):
        np.maximum(rows, p[dy:dy + h], out=rows)
    out = rows[:, :w].copy()
    for dx in range(1, 2 * half + 1):
        np.maximum(out, rows[:, dx:dx + w], out=out)
    return out


def _check_inputs(counts, mask, exposure, points2, diffuse2, sky, coverage) -> None:
    """UsageError for inputs that would give a wrong list without a word (a cut array is
    broadcast or indexed short; a rate image passed as counts, or a negative exposure,
    gives no sources)."""
    from .errors import UsageError

    if counts.ndim != 2:
        raise UsageError(f"counts: a {counts.ndim}-D array; pass the 2-D input counts image")
    if not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise UsageError("counts: NaN, infinite or negative values; pass the input counts")
    h, w = counts.shape
    for name, a, want in (("mask", mask, (h, w)), ("sky", sky, (h, w)),
                          ("coverage", coverage, (h, w)), ("points2", points2, (2 * h, 2 * w)),
                          ("diffuse2", diffuse2, (2 * h, 2 * w))):
        if a is not None and np.shape(a) != want:
            raise UsageError(f"{name}: shape {np.shape(a)}, but counts {counts.shape} need "
                             f"{want}")
    try:
        t = float(exposure)
    except (TypeError, ValueError):
        t = float("nan")
    if not (math.isfinite(t) and t > 0):
        raise UsageError(f"exposure={exposure!r}: must be a positive number of seconds")


def detect_sources(counts, mask, exposure, points2, *, diffuse2=None, axis=None, sky=None,
                   min_signif=DEFAULT_MIN_SIGNIF, min_counts=2.0, max_candidates=400,
                   support=None, support_signif=None, coverage=None, candidates=None,
                   bkg_systematic=None):
    """Point sources of an SR prediction, tested on the input counts.

    Parameters
    ----------
    counts : ndarray [H, W]
        Input counts (1x grid, 4" pixels), zero outside ``mask``.
    mask : bool ndarray [H, W]
        Live input pixels.
    exposure : float
        Input exposure (s).
    points2 : ndarray [2H, 2W]
        The SR ``points`` map (count/s per 2" pixel); only used to place candidates.
    diffuse2 : ndarray [2H, 2W], optional
        The SR ``diffuse`` map (count/s per 2" pixel). When given, the background of every fit
        is this diffuse emission (summed to the input's 4" pixels) plus a flat level from the
        annulus (the annulus counts minus their diffuse part), as emldetect fits over a
        background map that holds the extended emission: a knot that the diffuse model
        already explains is not a point source, one that stands above it still is. Within
        ``DIP_FILL_RADIUS`` of the candidate the diffuse part is at least its mean in the ring
        from there to ``FIT_RADIUS``: a dip there is the network's split (flux moved to the
        point it draws), not the sky.
        Without it the background is the annulus mean, flat under the source.
    axis : (float, float), optional
        Optical axis (1x pixel ``[y, x]``, fractional) for the off-axis PSF; on-axis PSF
        everywhere if None.
    sky : bool ndarray [H, W], optional
        Where sky sources can be (the field of view): candidates elsewhere (the CCD corners,
        whose edge rows collect extra events) are skipped.
    min_signif : float
        Keep candidates at least this significant (sigma).
    min_counts : float
        Candidates need this many counts of ``points2`` in 3 x 3 2x pixels at ``exposure``.
    max_candidates : int
        At most this many candidates (brightest first) are fitted.
    support : list, optional
        When given, the candidates of at least ``support_signif`` that are not listed (below
        ``min_signif``, or better fitted by the wider profile: a piled-up core, a knot of
        diffuse emission) are appended to it, with the same keys: :func:`release_unlisted`
        keeps their ``points`` too.
    support_signif : float, optional
        Default :data:`POINTS_SUPPORT_SIGNIF`.
    coverage : ndarray [H, W], optional
        Share of a full pixel's events each input pixel collects (the pn columns and rows next
        to CCD gaps, :func:`xmm_enhance.detector.coverage_map`): the flat background and the
        PSF are scaled by it in every fit, and the annulus level is per full pixel, as
        ``emldetect`` fits over an exposure map. Without it every pixel counts fully, and a
        bright diffuse field beside a gap, whose partial columns lower the annulus mean, gives
        false sources along the gap. ``diffuse2`` already holds the coverage (the SR target
        does).
    bkg_systematic : float, optional
        Fractional error of the background model in the significance (default
        :data:`BKG_SYSTEMATIC`; 0: Poisson errors only).
    candidates : list, optional
        Gets ``{"y2", "x2", "signif"}`` (2x grid, sigma) of every fitted candidate that the PSF
        fits (not better fitted by the wider profile), whatever its significance:
        :func:`smooth_diffuse` keeps the network's drawing around those of
        ``DIFFUSE_PROTECT_SIGNIF``.

    Returns
    -------
    list of dict
        Keys ``y``, ``x`` (1x pixels, fractional), ``y2``, ``x2`` (2x grid), ``counts`` (the
        points map's counts within 20" over the halved PSF's share on the disc's live pixels,
        so over the whole PSF at ``exposure`` as if every pixel were live, and with
        ``coverage`` fully covered; where the discs of kept sources meet, each pixel shared
        between them by :func:`_apportion_discs`; the fit's where the map holds none),
        ``disc_rate`` (the map's count/s in the disc that are this source's) and
        ``disc_shared`` (whether neighbours shared its disc), ``counts_err`` (the
        fit's 1-sigma Poisson error; the table adds :data:`FLUX_SYSTEMATIC`, see
        :func:`flux_error`), ``rate``, ``rate_err``, ``fit_counts``
        (maximum-likelihood PSF fit on the input counts), ``signif``, ``bkg`` (counts per 1x
        pixel), ``radec_err`` (arcsec), ``ext_dc`` (the likelihood-ratio gain of the King
        profile ``EXTENT_RC_FACTOR`` times wider over the PSF: above ``EXTENT_C`` the candidate
        is extended and not listed); most significant first.

    Raises
    ------
    UsageError
        Arrays of mismatched shapes (``points2`` and ``diffuse2`` must be twice ``counts``),
        counts that are not finite and non-negative, or an exposure that is not a positive
        number of seconds.
    """
    def run(**extra):  # one detection, with lists of its own for the caller's
        sup = [] if support is not None else None
        cands = [] if candidates is not None else None
        found = _detect_sources(counts, mask, exposure, points2, diffuse2=diffuse2, axis=axis,
                                sky=sky, min_signif=min_signif, min_counts=min_counts,
                                max_candidates=max_candidates, support=sup,
                                support_signif=support_signif, coverage=coverage,
                                candidates=cands, bkg_systematic=bkg_systematic, **extra)
        return found, sup, cands

    won = []
    out, sup, cands = run(gap_won=won)
    # a gap candidate that took its side candidates' place but is not listed in the end (the
    # fit over the diffuse background found it extended or too weak): the detection again
    # without it, so that the sides are as before
    lost = [p for p in won if not any(math.hypot(d["y"] - p[0], d["x"] - p[1]) <= MERGE_PX
                                      for d in out)]
    if lost:
        out, sup, cands = run(gap_skip=lost)
    if support is not None:
        support.extend(sup)
    if candidates is not None:
        candidates.extend(cands)
    return out


def _detect_sources(counts, mask, exposure, points2, *, diffuse2=None, axis=None, sky=None,
                    min_signif=DEFAULT_MIN_SIGNIF, min_counts=2.0, max_candidates=400,
                    support=None, support_signif=None, coverage=None, candidates=None,
                    bkg_systematic=None, gap_skip=(), gap_won=None):
    """:func:`detect_sources`; ``gap_skip``: 1x positions near which (``MERGE_PX``) no gap
    candidate is made,
    ``gap_won``: gets the 1x positions of the gap candidates that replaced their sides."""
    counts = np.asarray(counts, np.float64)
    mask = np.asarray(mask, bool)
    _check_inputs(counts, mask, exposure, points2, diffuse2, sky, coverage)
    T = float(exposure)
    h, w = counts.shape
    cov_map = (np.ones((h, w)) if coverage is None
               else np.clip(np.asarray(coverage, np.float64), 1e-3, None))
    box = _box_sum(np.asarray(points2, np.float64), 1) * T
    peaks = (box == _box_max(box, 2)) & (box >= min_counts)
    py, px = np.nonzero(peaks)
    order = np.argsort(-box[py, px])[:max_candidates]
    py, px = py[order], px[order]
    R = FIT_RADIUS
    # candidate position: the centroid of the points map in 5 x 5 2x pixels around its peak
    # (the network's estimate, which used every photon); the flux is fitted there only, as a
    # free position would pick noise peaks and inflate faint sources' fluxes
    pts = np.asarray(points2, np.float64)
    H2, W2 = pts.shape
    yc2 = np.empty(len(py))
    xc2 = np.empty(len(py))
    for i, (y2, x2) in enumerate(zip(py, px)):
        y0, y1, x0, x1 = max(y2 - 2, 0), min(y2 + 3, H2), max(x2 - 2, 0), min(x2 + 3, W2)
        win = pts[y0:y1, x0:x1]
        tot = win.sum()
        yy, xx = np.mgrid[y0:y1, x0:x1]
        yc2[i] = (win * yy).sum() / tot if tot > 0 else y2
        xc2[i] = (win * xx).sum() / tot if tot > 0 else x2
    # a source centred on a CCD gap or bad column: the network draws its wings either side
    # (it draws nothing on dead pixels), so its candidates sit beside the gap; one more
    # candidate at the gap's centre lets the fit, which knows the dead pixels, find it there
    ngap = 0
    if GAP_CANDIDATES and len(py):
        gy, gx = _gap_candidates(mask, (yc2 - 0.5) / 2.0, (xc2 - 0.5) / 2.0,
                                 box[py, px] >= GAP_MIN_COUNTS)
        if len(gap_skip) and len(gy):
            skip = np.array(gap_skip, np.float64).reshape(-1, 2)
            far = np.hypot(gy[:, None] - skip[None, :, 0],
                           gx[:, None] - skip[None, :, 1]).min(1) > MERGE_PX
            gy, gx = gy[far], gx[far]
        ngap = len(gy)
        if ngap:
            yc2 = np.concatenate([yc2, 2.0 * gy + 0.5])
            xc2 = np.concatenate([xc2, 2.0 * gx + 0.5])
            py = np.concatenate([py, np.rint(2.0 * gy + 0.5).astype(int)])
            px = np.concatenate([px, np.rint(2.0 * gx + 0.5).astype(int)])
    from_gap = np.arange(len(py)) >= len(py) - ngap
    if ngap:
        # each gap candidate against the candidates hugging its stripe: one source, placed
        # where the PSF fits the counts best (a fit in the gap candidate's window)
        stay, replaced = _resolve_gap_candidates(counts, mask, cov_map, (yc2 - 0.5) / 2.0,
                                                 (xc2 - 0.5) / 2.0, from_gap, axis)
        if gap_won is not None:
            gap_won.extend(zip(((yc2[replaced] - 0.5) / 2.0).tolist(),
                               ((xc2[replaced] - 0.5) / 2.0).tolist()))
        py, px, yc2, xc2, from_gap = py[stay], px[stay], yc2[stay], xc2[stay], from_gap[stay]
    cy = np.rint((yc2 - 0.5) / 2.0).astype(int)
    cx = np.rint((xc2 - 0.5) / 2.0).astype(int)
    inside = (cy - R >= 0) & (cx - R >= 0) & (cy + R < h) & (cx + R < w)
    if sky is not None:
        inside &= np.asarray(sky, bool)[cy, cx]
    py, px, cy, cx = py[inside], px[inside], cy[inside], cx[inside]
    from_gap = from_gap[inside]
    yc2, xc2 = yc2[inside], xc2[inside]
    if not len(py):
        return []
    r_out = int(math.ceil(BKG_ANNULUS[1]))
    ay, ax = np.mgrid[-r_out:r_out + 1, -r_out:r_out + 1]
    ar2 = ay * ay + ax * ax
    ann = (ar2 >= BKG_ANNULUS[0] ** 2) & (ar2 <= BKG_ANNULUS[1] ** 2)
    ys, xs = cy[:, None] + ay[ann][None], cx[:, None] + ax[ann][None]
    ok = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
    ysc, xsc = np.clip(ys, 0, h - 1), np.clip(xs, 0, w - 1)
    live = ok & mask[ysc, xsc]
    # the diffuse emission in counts per input pixel (blurred from the half PSF back to about
    # the input's), zero without a diffuse map
    dif1 = np.zeros((h, w))
    if diffuse2 is not None:
        dif = np.asarray(diffuse2, np.float64)[:2 * h, :2 * w]
        dif1 = _binomial_blur(dif.reshape(h, 2, w, 2).sum((1, 3)) * T, mask)
    ann_counts = counts[ysc, xsc] - dif1[ysc, xsc]
    ann_at = (ysc, xsc, live)  # the annuli (the names are reused below)
    ann_cov = cov_map[ysc, xsc]

    # windows [N, P]
    wy, wx = np.mgrid[-R:R + 1, -R:R + 1]
    wy, wx = wy.ravel(), wx.ravel()
    c = counts[cy[:, None] + wy, cx[:, None] + wx]
    m = mask[cy[:, None] + wy, cx[:, None] + wx].astype(np.float64)
    dif_win = dif1[cy[:, None] + wy, cx[:, None] + wx]
    covw = cov_map[cy[:, None] + wy, cx[:, None] + wx]  # [N, P]
    centre = len(wy) // 2  # the window's centre pixel
    fill_core = wy * wy + wx * wx <= DIP_FILL_RADIUS ** 2
    ring = (wy * wy + wx * wx > DIP_FILL_RADIUS ** 2) & (wy * wy + wx * wx <= R * R)
    dif_ring = (dif_win * (m * ring)).sum(1) / np.maximum((m * ring).sum(1), 1.0)
    # the diffuse map may not dip below its mean just outside the candidate's core: the network
    # moves flux from diffuse to points where it draws a point, so a dip there is its split, not
    # the sky (a noise clump on a flat background otherwise sits on a background ~25 % too low
    # and passes the threshold); the ring is close to the core so that a curved profile (a
    # galaxy's) is not over-filled
    dif_filled = np.where(fill_core[None], np.maximum(dif_win, dif_ring[:, None]), dif_win)

    def background(exclude):
        """Annulus means with the cores of the candidates ``exclude`` (bool [N]) left out."""
        core = np.zeros((h, w), bool)
        e = int(EXCLUDE_RADIUS)
        for dy in range(-e, e + 1):
            for dx in range(-e, e + 1):
                if dy * dy + dx * dx <= EXCLUDE_RADIUS ** 2:
                    core[np.clip(cy[exclude] + dy, 0, h - 1),
                         np.clip(cx[exclude] + dx, 0, w - 1)] = True
        clean = live & ~core[ysc, xsc]
        use = np.where((clean.sum(1) >= 20)[:, None], clean, live)
        n_use = use.sum(1)
        # per full pixel: the annulus counts over the annulus coverage
        mean = (ann_counts * use).sum(1) / np.maximum((ann_cov * use).sum(1), 1e-9)
        flat = np.maximum(mean, 0.5 / np.maximum(n_use, 1))
        # [N, P]: the flat level (times each pixel's coverage) plus the diffuse emission in
        # each fit window
        return flat[:, None] * covw + dif_filled, n_use

    good = (m.reshape(-1, 2 * R + 1, 2 * R + 1)[:, R - 1:R + 2, R - 1:R + 2]
                         .sum((1, 2)) >= 3)
    # a candidate on a gap: enough live pixels in its PSF's core region instead
    good |= from_gap & ((m * (wy * wy + wx * wx <= GAP_CORE_PX ** 2)).sum(1)
                        >= GAP_MIN_LIVE)
    # off-axis angle and azimuth bins of the PSF
    tb, ab = _psf_bins(cy, cx, axis)
    # positions, in quarter 1x pixels from the window's centre pixel: the centroid, and within
    # SEARCH_Q quarter pixels of it
    rng_ = range(-SEARCH_Q, SEARCH_Q + 1)
    offs = [(oy, ox) for oy in rng_ for ox in rng_]
    q0y = np.rint(2 * yc2 - 1 - 4 * cy).astype(int)
    q0x = np.rint(2 * xc2 - 1 - 4 * cx).astype(int)
    qy = np.stack([q0y + oy for oy, _ in offs], 1)
    qx = np.stack([q0x + ox for _, ox in offs], 1)
    K = _kernels([(tb[i], ab[i], qy[i, j], qx[i, j], 0) for i in range(len(cy))
                  for j in range(len(offs))]).reshape(len(cy), len(offs), -1)
    K = K * covw[:, None, :]  # a PSF on a partly covered column loses the same share
    # two passes: the annuli first include every candidate (a crowd of insignificant peaks would
    # otherwise leave only the low pixels), then exclude the cores of the likely sources
    n = np.arange(len(cy))
    bkg, nb = background(np.zeros(len(cy), bool))
    for final in (False, True):
        f, cst, var = _fit_flux(c[:, None, :], bkg[:, None, :], K, m[:, None, :])
        cst_grid = cst
        j = np.argmax(cst, axis=1)
        f, cst, var = f[n, j], cst[n, j], var[n, j]
        if not final:
            likely = _signif(cst) >= 3.0
            if not likely.any():
                break
            bkg, nb = background(likely)
    # blends: a likely neighbour's PSF (at its fitted flux) joins the background of a fit whose
    # window it reaches, as emldetect fits neighbours together. First each candidate gets its
    # more significant neighbours (a weaker candidate on a bright source's wing, or the fainter
    # of a pair, is fitted without the brighter one's light), then the weaker ones that are
    # still likely after that refit (so a duplicate peak on a bright source's wing, which the
    # first refit leaves with ~no flux, does not take the source's own flux). Only neighbours
    # that the PSF fits (not better fitted by the wider profile) and of at most
    # NEIGHBOUR_MAX_COUNTS are modelled: a piled-up core's PSF fit leaves most of its wings, and
    # a per-cent error of the model of a very bright source leaves hundreds of counts, which
    # must not become point sources beside it
    pos_y = cy + qy[n, j] / 4.0
    pos_x = cx + qx[n, j] / 4.0
    Ke = _kernels([(tb[i], ab[i], qy[i, j[i]], qx[i, j[i]], 1) for i in range(len(cy))]) * covw
    ext_dc = _fit_flux(c, bkg, Ke, m)[1] - cst  # the wider profile's likelihood gain
    fits_psf = ext_dc <= EXTENT_C
    bfit = bkg.copy()  # the background of each candidate's last fit
    # the fits' state, which _refit and _refit_crowds update in place (the same arrays)
    st = _FitState(c=c, m=m, K=K, covw=covw, tb=tb, ab=ab, cy=cy, cx=cx, qy=qy, qx=qx, f=f,
                   cst=cst, var=var, j=j, cst_grid=cst_grid, bfit=bfit, ext_dc=ext_dc,
                   fits_psf=fits_psf, pos_y=pos_y, pos_x=pos_x)
    for stage in (0, 1):
        sig_now = _signif(cst)
        like = (sig_now >= 3.0) & fits_psf & (f <= NEIGHBOUR_MAX_COUNTS)
        extra = np.zeros_like(bkg)
        keys, rows, fl = [], [], []
        for i, k in _neighbour_pairs(pos_y, pos_x, like):
            if stage == 0 and not sig_now[k] > sig_now[i]:
                continue
            keys.append(st.key(i, k, 0))
            rows.append(i)
            fl.append(f[k])
        if not keys:
            break
        rows_ = np.array(rows)
        np.add.at(extra, rows_, np.array(fl)[:, None] * _kernels(keys) * covw[rows_])
        redo = np.unique(rows)
        # (the PSF may now fit them: a faint neighbour looked extended when its brighter
        # neighbour's wing was part of its background)
        _refit(st, redo, (bkg + extra)[redo])
    # crowds: candidates that still look extended because their likely neighbours (which
    # look extended too, so none was modelled above) are in their windows
    if CROWD_REFIT:
        # the crowd's own test over a diffuse level without compact structure: the network
        # puts part of a close bright pair into its diffuse map, a bump that takes most of the
        # pair's light as background and leaves two "extended" remainders
        def crowd_bkg(i):
            ys_, xs_, lv = (a[i] for a in ann_at)
            level = float(np.median(dif1[ys_[lv], xs_[lv]])) if lv.any() else 0.0
            return np.minimum(bkg[i], (bkg[i] - dif_filled[i]) + level * (covw[i] > 0))

        _refit_crowds(st, bkg, good, bkg_level=crowd_bkg)
    # fits_psf: the extent test of each candidate's last fit, over that fit's background
    frac = BKG_SYSTEMATIC if bkg_systematic is None else float(bkg_systematic)
    sig = _signif(_with_systematic(cst, var, _background_systematic(bfit, f, K[n, j], m), frac)
                  if frac > 0 else cst)
    listed = good & (nb >= 10) & (f > 0) & (sig >= min_signif) & fits_psf
    if candidates is not None:
        for i in np.flatnonzero(good & (nb >= 10) & (f > 0) & fits_psf):
            candidates.append({"y2": 2 * float(pos_y[i]) + 0.5, "x2": 2 * float(pos_x[i]) + 0.5,
                               "signif": float(sig[i])})
    lo = POINTS_SUPPORT_SIGNIF if support_signif is None else support_signif
    # the entries the points map is shared among (_apportion_discs): the listed ones and the
    # support candidates, whether or not the caller asked for the latter, so that a listed
    # source's counts do not depend on it
    shared_by = listed | (good & (nb >= 10) & (f > 0) & (sig >= lo))
    keep = listed if support is None else shared_by
    found = []
    # the flux listed: the points map's (a posterior mean given every photon, so not biased
    # upwards near the threshold the way a fit selected by its own significance is), within
    # NET_RADIUS_2X of the source, scaled to the whole half-width PSF
    from .simulate import psf as _psf

    ry, rx = np.mgrid[-NET_RADIUS_2X:NET_RADIUS_2X + 1, -NET_RADIUS_2X:NET_RADIUS_2X + 1]
    disc = ry * ry + rx * rx <= NET_RADIUS_2X ** 2
    ry, rx = ry[disc], rx[disc]
    # the 2x pixels that can hold the source's flux: those of the input mask, and any the maps
    # fill (the CCD-edge columns the input's FLAG == 0 empties); CCD gaps and the grid's
    # outside hold none, so the disc's flux there is missing from the map
    live2 = np.repeat(np.repeat(mask, 2, 0), 2, 1) | (pts > 0)
    if diffuse2 is not None:
        live2 = live2 | ((pts + np.asarray(diffuse2, np.float64)) > 0)
    # the position between the quarter pixels: the vertex of a parabola through the likelihood
    # ratios of the best offset and its two neighbours along each axis (none at the grid's edge)
    side = 2 * SEARCH_Q + 1
    # where the best offset is at the grid's edge, the maximum lies beyond it (the network's
    # centroid was 1" or more off): the grid follows it, for the position only (flux,
    # significance and so the list are those of the search around the network's centroid)
    for _ in range(POSITION_STEPS):
        jy_, jx_ = j // side, j % side
        edge = np.flatnonzero(shared_by & ((jy_ == 0) | (jy_ == side - 1) | (jx_ == 0)
                                      | (jx_ == side - 1)))
        if not len(edge):
            break
        ny_ = qy[edge, j[edge]][:, None] + np.array([oy for oy, _ in offs])[None]
        nx_ = qx[edge, j[edge]][:, None] + np.array([ox for _, ox in offs])[None]
        Kn = _kernels([(tb[i], ab[i], ny_[a, b], nx_[a, b], 0) for a, i in enumerate(edge)
                       for b in range(len(offs))]).reshape(len(edge), len(offs), -1)
        Kn = Kn * covw[edge, None, :]
        cn = _fit_flux(c[edge, None, :], bfit[edge, None, :], Kn, m[edge, None, :])[1]
        qy[edge], qx[edge], K[edge], cst_grid[edge] = ny_, nx_, Kn, cn
        j[edge] = np.argmax(cn, axis=1)
    g = cst_grid.reshape(len(cy), side, side)
    jy, jx = j // side, j % side
    sub_y, sub_x = np.zeros(len(cy)), np.zeros(len(cy))
    # along y on the grid, along x on its transpose
    for sub, gg, ja, jb in ((sub_y, g, jy, jx), (sub_x, g.transpose(0, 2, 1), jx, jy)):
        cm = gg[n, np.maximum(ja - 1, 0), jb]
        c0 = gg[n, ja, jb]
        cp = gg[n, np.minimum(ja + 1, side - 1), jb]
        den = cm - 2.0 * c0 + cp
        ok_ = (ja > 0) & (ja < side - 1) & (den < 0)
        sub[ok_] = np.clip(0.5 * (cm - cp)[ok_] / den[ok_], -0.5, 0.5)
    pos_err = _position_errors(K, j, side, f, bfit, m)
    kept = np.flatnonzero(shared_by)
    discs = []  # per kept candidate: its disc's pixels, the points there, the PSF weights
    for i in kept:
        y1 = cy[i] + (qy[i, j[i]] + sub_y[i]) / 4.0
        x1 = cx[i] + (qx[i, j[i]] + sub_x[i]) / 4.0
        ys = int(round(2 * y1 + 0.5)) + ry
        xs = int(round(2 * x1 + 0.5)) + rx
        on = (ys >= 0) & (ys < H2) & (xs >= 0) & (xs < W2)
        ysc, xsc = np.clip(ys, 0, H2 - 1), np.clip(xs, 0, W2 - 1)
        rc, alpha = _psf.king_params(float(tb[i]))
        frac = (_psf.king_eef(NET_RADIUS_2X * PIXEL_ARCSEC / 2, rc / 2, alpha)
                / _psf.king_eef(PSF_TOTAL_RADIUS_ARCSEC, rc / 2, alpha))
        # the source's own counts are the map's over the halved PSF's share of the disc that
        # the map can hold: its live pixels, each times its coverage where the map holds that
        # (the SR target does; ``coverage``), with the King profile integrated over each 2"
        # pixel on a 4 x 4 sub-grid. Without it, a source beside a CCD gap or the field's edge
        # lost the share of its disc on dead pixels (simulations: listed counts 0.91 of the
        # truth within 30" of a gap, against 0.99 elsewhere)
        wk = _king_subgrid(ys, xs, y1, x1, rc / 2, alpha)
        held = on & live2[ysc, xsc]
        share = float((wk * np.where(held, cov_map[ysc // 2, xsc // 2], 0.0)).sum() / wk.sum())
        vals = np.where(on, pts[ysc, xsc], 0.0)
        discs.append({"y1": y1, "x1": x1, "ys": ys, "xs": xs, "on": on, "vals": vals,
                      "frac": frac, "share": share, "rc": rc / 2, "alpha": alpha,
                      "own": np.ones(len(ys))})
    _apportion_discs(discs, sig[kept])
    for i, dd in zip(kept, discs):
        if not keep[i]:
            continue
        y1, x1 = dd["y1"], dd["x1"]
        err = float(np.sqrt(var[i]))
        shared = bool((dd["own"] < 1.0).any())
        # count/s of the map within the disc that is this source's (its neighbours' share of
        # the disc left out: a pair 14" apart listed each with ~1.3x its counts)
        own = float((dd["vals"] * dd["own"] if shared else dd["vals"][dd["on"]]).sum())
        net = own * T / dd["frac"]
        net /= max(dd["share"], 0.05)
        n_src = net if net > 0 else float(f[i])
        found.append({"y": y1, "x": x1, "y2": 2 * y1 + 0.5, "x2": 2 * x1 + 0.5,
                      "counts": n_src, "counts_err": err, "rate": n_src / T,
                      "rate_err": err / T, "fit_counts": float(f[i]),
                      "signif": float(sig[i]),
                      "listed": bool(listed[i]),
                      "bkg": float(bkg[i, centre]),
                      "radec_err": float(pos_err[i]),
                      "ext_dc": float(ext_dc[i]),
                      "disc_rate": own, "disc_shared": shared})
    found.sort(key=lambda d: -d["signif"])
    out = []
    for d in found:
        if not d.pop("listed"):
            support.append(d)  # only when support is given (keep = listed otherwise)
        elif all(math.hypot(d["y"] - e_["y"], d["x"] - e_["x"]) >= MERGE_PX for e_ in out):
            out.append(d)
    return out


def _gap_candidates(mask, y, x, use):
    """1x positions ``(gy, gx)`` of extra candidates at the centres of the dead stripes (CCD
    gaps, bad columns: a run of 1 to ``GAP_MAX_WIDTH`` dead pixels with live ones on both
    sides, along the row or the column) within ``GAP_REACH`` 1x pixels of the candidates
    ``y``, ``x`` (1x, fractional) where ``use``; each position once."""
    h, w = mask.shape
    out = set()
    for yy, xx in zip(np.asarray(y)[use], np.asarray(x)[use]):
        r, c = int(round(yy)), int(round(xx))
        for along_x in (True, False):
            if along_x:
                lo, hi = max(c - GAP_REACH, 0), min(c + GAP_REACH + 1, w)
                line = mask[min(max(r, 0), h - 1), lo:hi] if 0 <= r < h else None
            else:
                lo, hi = max(r - GAP_REACH, 0), min(r + GAP_REACH + 1, h)
                line = mask[lo:hi, min(max(c, 0), w - 1)] if 0 <= c < w else None
            if line is None or line.all() or not line.any():
                continue
            k = 0
            n = len(line)
            while k < n:
                if line[k]:
                    k += 1
                    continue
                e = k
                while e < n and not line[e]:
                    e += 1
                if 0 < k and e < n and e - k <= GAP_MAX_WIDTH:  # live on both sides
                    centre = lo + 0.5 * (k + e - 1)
                    pos = (float(yy), centre) if along_x else (centre, float(xx))
                    out.add((round(pos[0] * 4) / 4, round(pos[1] * 4) / 4))
                k = e
    if not out:
        return np.zeros(0), np.zeros(0)
    g = np.array(sorted(out))
    return g[:, 0], g[:, 1]


def _resolve_gap_candidates(counts, mask, cov, y, x, from_gap, axis):
    """bool [N]: which candidates stay. Each gap candidate (``from_gap``; 1x positions ``y``,
    ``x``) and the other candidates within ``GAP_SIDE_PX`` of it (the wings the network drew
    either side of a stripe) may be one source: each is fitted as a PSF in the gap candidate's
    window over the flat level of its 8-16 pixel annulus. The gap candidate goes when a side,
    or another candidate within ``FIT_RADIUS`` + 3 (a brighter source whose wings reach the
    stripe), fits better (a source beside the stripe: the sides stay); else the sides go. Two
    sources straddling a stripe within ``GAP_SIDE_PX`` are taken for one on it (their sides
    fitted together beat one PSF on the stripe by about as much as the wings of one bright
    source on it do, where the PSF model is a few per cent off). Also returns bool [N]: the
    gap candidates that replaced a side of at least ``GAP_SIDE_SIGNIF``."""
    h, w = counts.shape
    R = FIT_RADIUS
    stay = np.ones(len(y), bool)
    replaced = np.zeros(len(y), bool)
    wy, wx = np.mgrid[-R:R + 1, -R:R + 1]
    ay, ax = np.mgrid[-16:17, -16:17]
    ring = (ay * ay + ax * ax >= 64) & (ay * ay + ax * ax <= 256)
    for g in np.flatnonzero(from_gap):
        if not stay[g]:
            continue
        d = np.hypot(y - y[g], x - x[g])
        sides = np.flatnonzero(~from_gap & stay & (d <= GAP_SIDE_PX))
        if not len(sides):
            continue
        # brighter sources a little farther (their wings beside the stripe can make both the
        # stripe's candidate and the peaks there): in the comparison too, never removed
        others = np.flatnonzero(~from_gap & stay & (d > GAP_SIDE_PX) & (d <= FIT_RADIUS + 3))
        cy, cx = int(round(y[g])), int(round(x[g]))
        if cy - R < 0 or cx - R < 0 or cy + R >= h or cx + R >= w:
            continue
        ys, xs = np.clip(cy + ay[ring], 0, h - 1), np.clip(cx + ax[ring], 0, w - 1)
        live = mask[ys, xs] & (cy + ay[ring] >= 0) & (cy + ay[ring] < h) & (
            cx + ax[ring] >= 0) & (cx + ax[ring] < w)
        level = (float(counts[ys, xs][live].sum()) / max(float(cov[ys, xs][live].sum()), 1.0)
                 if live.any() else 0.0)
        c = counts[cy + wy, cx + wx].ravel().astype(np.float64)
        m = mask[cy + wy, cx + wx].ravel().astype(np.float64)
        cw = cov[cy + wy, cx + wx].ravel()
        b = np.maximum(level, 1e-3) * cw
        tb, ab = _psf_bins(np.array([cy]), np.array([cx]), axis)
        who = [g] + list(sides) + list(others)
        keys = [(tb[0], ab[0], int(round((y[k] - cy) * 4)), int(round((x[k] - cx) * 4)), 0)
                for k in who]
        K = _kernels(keys) * cw
        cst = _fit_flux(c[None, None, :], b[None, None, :], K[None], m[None, None, :])[1][0]
        best = int(np.argmax(cst))
        if best != 0:  # a source beside the stripe: only the stripe's candidate goes
            stay[g] = False
            continue
        cst = cst[:1 + len(sides)]
        stay[sides] = False
        # a rerun is worth it only if a side could have been listed or kept its points
        replaced[g] = bool(_signif(cst[1:]).max() >= GAP_SIDE_SIGNIF)
    return stay, replaced


def _king_subgrid(ys, xs, y1, x1, rc, alpha):
    """The circular King profile ``(1 + (r / rc)^2)^-alpha`` (``rc`` in arcsec) of a source at
    1x position ``(y1, x1)``, summed over the 4 x 4 sub-grid of each 2x pixel ``(ys, xs)``
    (arrays [P])."""
    dy = (ys - (2 * y1 + 0.5))[:, None, None] + _SUB4[None, :, None]
    dx = (xs - (2 * x1 + 0.5))[:, None, None] + _SUB4[None, None, :]
    r_as = np.hypot(dy, dx) * PIXEL_ARCSEC / 2
    return ((1.0 + (r_as / rc) ** 2) ** (-alpha)).sum((1, 2))


def _apportion_discs(discs, signif, iters=APPORTION_ITERS):
    """Share the points map between neighbouring sources, in place: each disc's ``own``
    [pixels] becomes the share of each of its pixels that is this source's, ``a_i p_i /
    sum_k a_k p_k`` over the sources whose discs hold the pixel (``p`` each source's halved
    King profile per unit flux there, ``a`` its flux in the map, found by iterating; an EM
    for the fluxes of a sum of known profiles). A source whose disc meets no other keeps 1
    everywhere, as before. Two entries within ``MERGE_PX`` 1x pixels are one source (the list
    keeps the more significant, ``signif``): the less significant takes no share from it."""
    n = len(discs)
    if n < 2:
        return
    y = np.array([d["y1"] for d in discs])
    x = np.array([d["x1"] for d in discs])
    dist = np.hypot(y[:, None] - y[None], x[:, None] - x[None])
    reach = NET_RADIUS_2X + 1.0  # 1x pixels: discs of radius NET_RADIUS_2X / 2 that may meet
    order = np.argsort(-np.asarray(signif, np.float64), kind="stable")
    alive = np.ones(n, bool)  # not within MERGE_PX of a more significant entry
    for a_, i in enumerate(order):
        if any(alive[k] and dist[i, k] < MERGE_PX for k in order[:a_]):
            alive[i] = False
    groups = [np.flatnonzero(alive & (dist[i] <= reach) & (np.arange(n) != i))
              for i in range(n)]
    todo = [i for i in range(n) if alive[i] and len(groups[i])]
    if not todo:
        return

    def profile(d, ys, xs):  # the source's halved King per unit flux (to 128") at 2x pixels
        rc, al = d["rc"], d["alpha"]
        dens = _king_subgrid(ys, xs, d["y1"], d["x1"], rc, al) * (PIXEL_ARCSEC / 2 / 4) ** 2
        tot = math.pi * rc * rc / (al - 1.0) * (1.0 - (1.0 + (PSF_TOTAL_RADIUS_ARCSEC / rc)
                                                        ** 2) ** (1.0 - al))
        return dens / tot

    # each disc's profiles of itself and of its neighbours, at its pixels
    prof = {i: [profile(discs[i], discs[i]["ys"], discs[i]["xs"])]
            + [profile(discs[k], discs[i]["ys"], discs[i]["xs"]) for k in groups[i]]
            for i in todo}
    # start: each source's whole disc (what the list took before), over its profile's sum
    flux = np.array([max(float(d["vals"].sum()), 0.0) / max(d["frac"], 1e-9) for d in discs])
    for _ in range(iters):
        new = flux.copy()
        for i in todo:
            ks = groups[i]
            mine = flux[i] * prof[i][0]
            tot = mine + sum(flux[k] * p for k, p in zip(ks, prof[i][1:]))
            own = np.where(tot > 0, mine / np.where(tot > 0, tot, 1.0), 1.0)
            discs[i]["own"] = own
            new[i] = max(float((discs[i]["vals"] * own).sum()), 0.0) / max(discs[i]["frac"],
                                                                            1e-9)
        if np.allclose(new, flux, rtol=1e-4, atol=0.0):
            flux = new
            break
        flux = new


class _FitState:
    """The per-candidate fits of :func:`detect_sources` (arrays [N] or [N, ...], updated in
    place): counts ``c``, live pixels ``m``, PSF windows ``K`` on the position grid, coverage
    ``covw``, PSF bins ``tb``/``ab``, window centres ``cy``/``cx``, grid offsets ``qy``/``qx``;
    and the fit of each: ``f``, ``cst``, ``var``, best offset ``j``, ``cst_grid``, background
    ``bfit``, extent gain ``ext_dc``, ``fits_psf``, position ``pos_y``/``pos_x``."""

    def __init__(self, **arrays):
        self.__dict__.update(arrays)

    def key(self, i, k, extended):
        """The PSF window key of candidate ``k``'s light in candidate ``i``'s window."""
        return (self.tb[i], self.ab[i], int(round(4 * (self.pos_y[k] - self.cy[i]))),
                int(round(4 * (self.pos_x[k] - self.cx[i]))), extended)


def _refit(st, idx, b_new, *, only_psf=False):
    """Redo the fits of candidates ``idx`` over backgrounds ``b_new`` [len(idx), P] (flux at
    each grid offset, the best one, and the wider profile's gain there), in place in ``st``
    (:class:`_FitState`). ``only_psf``: keep a refit only where the PSF then fits (the extent
    test); the others keep their fits."""
    idx = np.asarray(idx)
    f_, c_, v_ = _fit_flux(st.c[idx, None, :], b_new[:, None, :], st.K[idx], st.m[idx, None, :])
    jj = np.argmax(c_, axis=1)
    r_ = np.arange(len(idx))
    Kr = _kernels([(st.tb[i], st.ab[i], st.qy[i, q], st.qx[i, q], 1)
                   for i, q in zip(idx, jj)]) * st.covw[idx]
    ext = _fit_flux(st.c[idx], b_new, Kr, st.m[idx])[1] - c_[r_, jj]
    ok = ext <= EXTENT_C if only_psf else np.ones(len(idx), bool)
    idx, r_, jj = idx[ok], r_[ok], jj[ok]
    st.f[idx], st.cst[idx], st.var[idx], st.j[idx] = f_[r_, jj], c_[r_, jj], v_[r_, jj], jj
    st.cst_grid[idx] = c_[r_]
    st.bfit[idx] = b_new[ok]
    st.ext_dc[idx] = ext[ok]
    st.fits_psf[idx] = ext[ok] <= EXTENT_C
    st.pos_y[idx] = st.cy[idx] + st.qy[idx, jj] / 4.0
    st.pos_x[idx] = st.cx[idx] + st.qx[idx, jj] / 4.0


#: Crowds (:func:`_refit_crowds`): refit the candidates that look extended because likely
#: neighbours' light is in their window. False: session-24 behaviour (only neighbours that
#: the PSF fits are modelled).
CROWD_REFIT = True
#: Neighbours within this many 1x pixels of a candidate's window centre are fitted with it
#: (their cores are in or just beyond the window's edge); farther ones stay at their own fit.
CROWD_INNER_PX = FIT_RADIUS + 1.5
#: A neighbour stays in the joint fit while dropping it costs at least this likelihood ratio
#: (3 sigma for 3 degrees of freedom); at most ``CROWD_MAX_MEMBERS`` neighbours are fitted.
CROWD_MEMBER_C = 15.6
CROWD_MAX_MEMBERS = 12
#: The group's points must beat one elliptical Gaussian (:func:`_blob_shapes`, widths from
#: ``CROWD_BLOB_SIGMAS`` 1x pixels) by ``CROWD_GROUP_C`` plus ``CROWD_MEMBER_PENALTY`` per
#: neighbour beyond the first: about 2 per parameter more than the ellipse has (3 per point
#: against 6), with the extent test's margin.
CROWD_BLOB_SIGMAS = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 10.0)
CROWD_GROUP_C = EXTENT_C
CROWD_MEMBER_PENALTY = 6.0
#: Candidates tried per image, the brightest first (a field of hundreds of crowded sources
#: costs ~6 ms per candidate tried: at most ~0.6 s).
CROWD_MAX_REFITS = 100
#: The candidate's fitted peak pixel must hold at least this many times the rest of the model
#: there (background and neighbours): a noise peak on a bright smooth cluster has a fraction.
CROWD_MIN_CONTRAST = 1.0


def _fit_joint_many(c, b, k, m, iters=50):
    """Maximum-likelihood fluxes ``F >= 0`` [S, G] of ``c ~ Poisson(b + F_s @ k_s)`` over the
    pixels ``m`` for S models at once (``c``, ``b``, ``m`` [P]; ``k`` [S, G, P]): projected
    Newton steps (the components at zero whose gradient points below zero are held), each
    halved while the likelihood drops. Returns ``(F, C)``, ``C`` [S] ``= 2 [ln L(b + F k) -
    ln L(b)]``."""
    k = np.asarray(k, np.float64) * m
    S, G, _ = k.shape
    ksum = k.sum(-1)
    cm = c * m
    eye = np.eye(G)

    def loglike(f, kk, ks):
        lam = b + np.einsum("sg,sgp->sp", f, kk)
        return (cm * np.log(lam / b)).sum(-1) - (f * ks).sum(-1)

    # start: each component's least-squares flux shared among the G, where that beats zero
    # (Newton from zero needs ~log(F / b) steps for a bright source on a faint background)
    f = np.maximum(np.einsum("sgp,p->sg", k, (c - b) * m), 0.0) / np.maximum(
        (k * k).sum(-1), 1e-300) / G
    L = loglike(f, k, ksum)
    worse = ~(L > 0)
    f[worse], L[worse] = 0.0, 0.0
    for _ in range(iters):
        lam = b + np.einsum("sg,sgp->sp", f, k)
        r = cm / lam
        g = np.einsum("sgp,sp->sg", k, r) - ksum
        free = (f > 0) | (g > 0)
        if not free.any():
            break
        both = free[:, :, None] & free[:, None, :]
        H = np.einsum("sgp,shp->sgh", k * (r / lam)[:, None, :], k)
        H = np.where(both, H, 0.0) + eye * (1e-9 + (~free)[:, :, None])
        rhs = np.where(free, g, 0.0)[..., None]
        try:
            step = np.linalg.solve(H, rhs)[..., 0]
        except np.linalg.LinAlgError:  # (near-)identical components: the least-norm step
            step = (np.linalg.pinv(H) @ rhs)[..., 0]
        f_new = np.maximum(f + step, 0.0)
        L_new = loglike(f_new, k, ksum)
        t = 1.0
        bad = ~(L_new >= L - 1e-12)  # (a NaN is bad too)
        while bad.any() and t > 1e-4:
            t *= 0.5
            f_new[bad] = np.maximum(f[bad] + t * step[bad], 0.0)
            L_new[bad] = loglike(f_new[bad], k[bad], ksum[bad])
            bad = ~(L_new >= L - 1e-12)
        up = L_new >= L
        moved = np.abs(f_new - f) > 1e-9 * (1.0 + f)
        f = np.where(up[:, None], f_new, f)
        L = np.where(up, L_new, L)
        if not (up[:, None] & moved).any():
            break
    return f, 2.0 * np.maximum(L, 0.0)


def _fit_joint(c, b, k, m, iters=50):
    """:func:`_fit_joint_many` for one model: ``k`` [G, P]; returns ``(F [G], C)``."""
    f, C = _fit_joint_many(c, b, np.asarray(k)[None], m, iters)
    return f[0], float(C[0])


def _smooth_basis():
    """[5, P] non-negative smooth shapes over a fit window (unit mean): the four bilinear
    corner weights (any tilted plane above zero) and a Gaussian bump of half the window's
    width at its centre (a curved level)."""
    R = FIT_RADIUS
    u = np.arange(2 * R + 1) / (2.0 * R)
    uy, ux = np.meshgrid(u, u, indexing="ij")
    out = [(1 - uy) * (1 - ux), (1 - uy) * ux, uy * (1 - ux), uy * ux,
           np.exp(-2.0 * ((uy - 0.5) ** 2 + (ux - 0.5) ** 2))]
    return np.stack([o.ravel() / o.mean() for o in out])


def _blob_shapes(gy, gx, ang, excess, m, wy, wx):
    """[S, P] elliptical Gaussians (unit sum over the window, flattened) that could stand for
    a group of points: the ellipse of the window's ``excess`` counts (over the background,
    clipped at zero; its centroid and second moments) at 0.5-1.4 times its size and circles
    at its centroid; then, at the points' flux-weighted centre ``(gy, gx)`` along their axis
    ``ang``, every pair of ``CROWD_BLOB_SIGMAS``."""
    def gauss(cy, cx, a, sa, sb):
        du = (wx - cx) * math.cos(a) + (wy - cy) * math.sin(a)
        dv = (wy - cy) * math.cos(a) - (wx - cx) * math.sin(a)
        g = np.exp(-0.5 * (du * du / (sa * sa) + dv * dv / (sb * sb))).ravel()
        return g / g.sum()

    out = []
    e = np.clip(excess, 0.0, None) * m
    tot = e.sum()
    if tot > 0:
        ey, ex = (e * wy.ravel()).sum() / tot, (e * wx.ravel()).sum() / tot
        syy = (e * (wy.ravel() - ey) ** 2).sum() / tot
        sxx = (e * (wx.ravel() - ex) ** 2).sum() / tot
        sxy = (e * (wy.ravel() - ey) * (wx.ravel() - ex)).sum() / tot
        lam, vec = np.linalg.eigh(np.array([[sxx, sxy], [sxy, syy]]))
        lam = np.clip(lam, 0.0, None)  # collinear excess: a rounding-negative minor axis
        ea = math.atan2(vec[1, 1], vec[0, 1])
        for scale in (1.0, 0.7, 1.4, 0.5):
            out.append(gauss(ey, ex, ea, max(scale * math.sqrt(lam[1]), 0.7),
                             max(scale * math.sqrt(lam[0]), 0.7)))
        out += [gauss(ey, ex, 0.0, sg, sg) for sg in CROWD_BLOB_SIGMAS]
    out += [gauss(gy, gx, ang, sa, sb) for sa in CROWD_BLOB_SIGMAS for sb in CROWD_BLOB_SIGMAS
            if sb <= sa]
    return np.stack(out)


def _refit_crowds(st, bkg, good, bkg_level=None):
    """Crowds, in place in ``st`` (:class:`_FitState`; ``bkg``: each candidate's background
    without neighbours, ``good``: candidates with enough live pixels; ``bkg_level``: a
    function of the candidate giving the background its group is tested and refitted over,
    default ``bkg[i]``). A likely candidate
    (>= 3 sigma, ``good``, at most ``NEIGHBOUR_MAX_COUNTS``) that the extent test calls
    extended while likely neighbours are near is refitted with the neighbours' PSFs at their
    joint fluxes in its background, as ``emldetect`` fits neighbours together, when the counts
    demand a group of points there rather than one extended source:

    - its (at most ``CROWD_MAX_MEMBERS`` nearest) neighbours within ``CROWD_INNER_PX`` join a
      joint PSF fit, and stay while dropping one costs ``CROWD_MEMBER_C``; farther ones are
      in the background at their current fits;
    - the group's PSFs beat every elliptical Gaussian of :func:`_blob_shapes`, both over the
      same smooth level (:func:`_smooth_basis`), by ``CROWD_GROUP_C`` plus
      ``CROWD_MEMBER_PENALTY`` per neighbour beyond the first (a blob, a filament or a clump
      that the network split into points fails this);
    - the group's PSFs fit at least as well as the group drawn with the wider profile;
    - the candidate's peak stands ``CROWD_MIN_CONTRAST`` times above the rest of the model.

    The candidate's fit is then redone with the neighbours at their joint fluxes in its
    background, and kept when the PSF fits it there (the extent test); it then meets the usual
    threshold. At most ``CROWD_MAX_REFITS`` candidates (the brightest) are tried. The fluxes
    of refitted members run ~15 % low in dense simulated crowds (the crowd's wings raise the
    annulus level under them too), which only makes the test conservative."""
    R = FIT_RADIUS
    c, m, covw, f, cy, cx = st.c, st.m, st.covw, st.f, st.cy, st.cx
    like = (_signif(st.cst) >= 3.0) & good & (f <= NEIGHBOUR_MAX_COUNTS)
    near = {}
    for i, k in _neighbour_pairs(st.pos_y, st.pos_x, like):
        near.setdefault(i, []).append(k)
    todo = sorted((i for i in np.flatnonzero(like & ~st.fits_psf) if i in near),
                  key=lambda i: -f[i])
    if len(todo) > CROWD_MAX_REFITS:
        log.info("source list: %d crowded candidates; the brightest %d were refitted with "
                 "their neighbours, the other %d stay unlisted (sources.CROWD_MAX_REFITS)",
                 len(todo), CROWD_MAX_REFITS, len(todo) - CROWD_MAX_REFITS)
        todo = todo[:CROWD_MAX_REFITS]
    wy, wx = np.mgrid[-R:R + 1, -R:R + 1]
    smooth = _smooth_basis()
    def try_group(i, level):
        """The crowd test and refit of candidate ``i`` over the background ``level``;
        whether the PSF then fits it."""
        dist = {k: math.hypot(st.pos_y[k] - cy[i], st.pos_x[k] - cx[i]) for k in near[i]}
        # (two members on one source: the pruning below drops the one the counts need less)
        inner = sorted((k for k in near[i] if dist[k] <= CROWD_INNER_PX),
                       key=lambda k: dist[k])[:CROWD_MAX_MEMBERS]
        outer = [k for k in near[i] if k not in inner]
        if not inner:
            return False
        base = level
        if outer:
            base = base + f[outer] @ (_kernels([st.key(i, k, 0) for k in outer]) * covw[i])
        # the candidate itself is the first member (st.key(i, i, .) is its own grid offset)
        KP = _kernels([st.key(i, k, 0) for k in [i] + inner]) * covw[i]
        fP, LP = _fit_joint(c[i], base, KP, m[i])
        while inner:
            without = np.stack([np.delete(KP, a, 0) for a in range(1, len(KP))])
            fw, Lw = _fit_joint_many(c[i], base, without, m[i])
            a = int(np.argmax(Lw))  # the member whose loss costs least
            if LP - Lw[a] >= CROWD_MEMBER_C:
                break
            KP, fP, LP = without[a], fw[a], float(Lw[a])
            inner = inner[:a] + inner[a + 1:]
        if not inner:
            return False
        b_i = base + fP[1:] @ KP[1:]
        pk = int(np.argmax(KP[0]))
        if fP[0] * KP[0, pk] < CROWD_MIN_CONTRAST * b_i[pk]:
            return False
        KE = _kernels([st.key(i, k, 1) for k in [i] + inner]) * covw[i]
        if _fit_joint(c[i], base, KE, m[i])[1] > LP:
            return False
        # one elliptical Gaussian where the group is, over the same smooth level
        sm = smooth * covw[i]
        L_pts = _fit_joint(c[i], base, np.vstack([KP, sm]), m[i])[1]
        py_ = st.pos_y[[i] + inner] - cy[i]
        px_ = st.pos_x[[i] + inner] - cx[i]
        wt = fP / max(fP.sum(), 1e-12)
        gy, gx = (wt * py_).sum(), (wt * px_).sum()
        ang = 0.5 * math.atan2(2 * (wt * (py_ - gy) * (px_ - gx)).sum(),
                               (wt * ((px_ - gx) ** 2 - (py_ - gy) ** 2)).sum())
        shapes = _blob_shapes(gy, gx, ang, c[i] - base, m[i], wy, wx) * covw[i]
        alt = np.concatenate([shapes[:, None], np.broadcast_to(sm, (len(shapes),) + sm.shape)],
                             axis=1)
        need = CROWD_GROUP_C + CROWD_MEMBER_PENALTY * (len(inner) - 1)
        if L_pts - _fit_joint_many(c[i], base, alt, m[i])[1].max() < need:
            return False
        _refit(st, [i], b_i[None], only_psf=True)
        return bool(st.fits_psf[i])

    for i in todo:
        # the usual background first; the diffuse map's annulus level only where that fails
        # (a group on a peaked diffuse core needs the core in its background, a close pair
        # that the network drew partly in DIFFUSE needs it out)
        if not try_group(i, bkg[i]) and bkg_level is not None:
            try_group(i, bkg_level(i))


def _position_errors(K, j, side, f, b, m):
    """1-sigma statistical position error (arcsec, ``sqrt(err_y^2 + err_x^2)``) of each fit,
    with ``POSITION_ERR_FLOOR_ARCSEC`` in quadrature: the inverse of the expected Fisher
    information of ``c ~ Poisson(b + F k(y, x))`` in
    ``(F, y, x)`` at the fitted flux and position, so the flux's correlation with the position
    is accounted for. The PSF's derivatives are finite differences of the kernels ``K`` [N,
    side^2, P] on the search grid (quarter 1x pixels = 1"), central where the best offset ``j``
    has both neighbours, one-sided at the grid's edge. ``inf`` where the information is
    singular (no flux)."""
    N = len(j)
    n = np.arange(N)
    g = K.reshape(N, side, side, -1)
    jy, jx = j // side, j % side
    k0 = g[n, jy, jx]

    def deriv(ja, jb, along_y):
        lo, hi = np.maximum(ja - 1, 0), np.minimum(ja + 1, side - 1)
        a = g[n, hi, jb] if along_y else g[n, jb, hi]
        z = g[n, lo, jb] if along_y else g[n, jb, lo]
        return (a - z) / np.maximum(hi - lo, 1)[:, None]  # per quarter pixel (1")

    dky = deriv(jy, jx, True)
    dkx = deriv(jx, jy, False)
    lam = np.maximum(b + f[:, None] * k0, 1e-12)
    d = np.stack([k0, f[:, None] * dky, f[:, None] * dkx], 1)  # [N, 3, P]
    info = np.einsum("nap,nbp->nab", d * (m / lam)[:, None, :], d)
    out = np.full(N, np.inf)
    ok = (f > 0) & (np.linalg.det(info) > 0)
    if ok.any():
        cov = np.linalg.inv(info[ok])
        out[ok] = np.sqrt(np.maximum(cov[:, 1, 1] + cov[:, 2, 2], 0.0)
                          + POSITION_ERR_FLOOR_ARCSEC ** 2)
    return out


def _neighbour_pairs(y, x, likely, reach=FIT_RADIUS + 3):
    """(i, k) for every candidate i and likely candidate k != i between ``MERGE_PX`` and
    ``reach`` 1x pixels from it (positions ``y``, ``x``)."""
    idx = np.flatnonzero(likely)
    if not len(idx) or len(y) < 2:
        return []
    d = np.hypot(y[:, None] - y[idx][None], x[:, None] - x[idx][None])
    ii, kk = np.nonzero((d >= MERGE_PX) & (d <= reach))
    return list(zip(ii.tolist(), idx[kk].tolist()))


def flux_error(counts_err, counts, systematic=None):
    """A listed source's 1-sigma counts error for the table: the fit's Poisson error and
    ``systematic`` (default :data:`FLUX_SYSTEMATIC`) times the counts, in quadrature."""
    f = FLUX_SYSTEMATIC if systematic is None else float(systematic)
    return math.hypot(float(counts_err), f * float(counts))


def psf_fraction(y, x, radius_px, *, axis=None, coverage=None):
    """Fraction of a point source's whole-PSF counts at 1x position ``(y, x)`` that falls in
    the pixels within ``radius_px`` (<= ``FIT_RADIUS``) of pixel ``(round(y), round(x))``: the
    King PSF of :func:`detect_sources`, at the source's off-axis angle and azimuth.
    ``coverage`` (the image's [H, W] share of a full pixel's events, as in
    :func:`detect_sources`): the fraction those pixels actually collect."""
    cy, cx = int(round(y)), int(round(x))
    tb, ab = (int(v[0]) for v in _psf_bins(np.array([cy]), np.array([cx]), axis))
    k = _kernel(tb, ab, int(round(4 * (y - cy))), int(round(4 * (x - cx))), False)
    n = 2 * FIT_RADIUS + 1
    yy, xx = np.mgrid[-FIT_RADIUS:FIT_RADIUS + 1, -FIT_RADIUS:FIT_RADIUS + 1]
    k = k.reshape(n, n)
    if coverage is not None:
        cov = np.asarray(coverage, np.float64)
        ys, xs = np.clip(cy + yy, 0, cov.shape[0] - 1), np.clip(cx + xx, 0, cov.shape[1] - 1)
        k = k * cov[ys, xs]
    return float(k[yy * yy + xx * xx <= radius_px ** 2].sum())


def region_text(ra, dec, *, radius_arcsec=10.0, labels=None, xy=None, pixel_arcsec=None):
    """ds9 region file (fk5) with one circle per source.

    ``xy`` (0-based pixel columns and rows) with ``pixel_arcsec``: circles in ds9's ``image``
    frame instead (1-based pixels), for an image without a sky WCS, whose ``ra``/``dec`` are
    NaN.
    """
    lines = ["# Region file format: DS9 version 4.1",
             "# xmm-enhance SR point sources (circles of %g\")" % radius_arcsec,
             "global color=green width=1", "fk5" if xy is None else "image"]
    if xy is None:
        centres = [f"{a:.6f},{d:.6f},{radius_arcsec:g}\"" for a, d in zip(ra, dec)]
    else:
        r = radius_arcsec / float(pixel_arcsec)
        centres = [f"{x + 1:.3f},{y + 1:.3f},{r:.4g}" for x, y in zip(*xy)]
    for i, c in enumerate(centres):
        text = f" # text={{{labels[i]}}}" if labels is not None else ""
        lines.append(f"circle({c}){text}")
    return "\n".join(lines) + "\n"


#: Sources used by :func:`psf_core_scale`: PSF-fit counts at least this, no other listed
#: source within ``PSF_SCALE_ISOLATION_PX``, at most ``PSF_SCALE_MAX_SOURCES`` (brightest).
PSF_SCALE_MIN_COUNTS = 200.0
PSF_SCALE_ISOLATION_PX = 15.0
PSF_SCALE_MAX_SOURCES = 12
#: Prior spread (natural log) of an observation's PSF width about the King model's.
PSF_SCALE_PRIOR = 0.04
#: Per-source noise of the log width ratio, ``PSF_SCALE_NOISE / sqrt(counts)``, and the noise
#: bias of the Gaussian width of a noisy source, ``-PSF_SCALE_BIAS / counts`` (simulations).
PSF_SCALE_NOISE = 2.5
PSF_SCALE_BIAS = 5.0
#: Sources brighter than this (count/s) may be piled up (wider core): not used.
PSF_SCALE_MAX_RATE = 2.0
#: The estimate is clipped to this range of core-radius scales.
PSF_SCALE_RANGE = (0.8, 1.25)
#: Prior spread (natural log) of one source's PSF width about its observation's: the core
#: depends on the source's spectrum (0.5-2 keV mean energy 0.8-1.4 keV) and its position.
PSF_SCALE_SOURCE_SPREAD = 0.05


def gaussian_fwhm(cuts, iters=25):
    """FWHM (pixels) of a circular Gaussian plus a constant fitted by least squares to each
    square cut-out of ``cuts`` [M, n, n] (centre within 3 pixels of the middle; Levenberg-
    Marquardt, batched; the same fit as ``evaluation.fit_fwhm`` without its scipy import)."""
    d = np.asarray(cuts, np.float64)
    M, n = d.shape[0], d.shape[1]
    r = n // 2
    d = d.reshape(M, -1)
    yy, xx = (v.ravel()[None].astype(np.float64) for v in np.mgrid[:n, :n])
    c0 = np.median(d, axis=1)
    p = np.stack([np.maximum(d.max(1) - c0, 1e-9), np.full(M, float(r)), np.full(M, float(r)),
                  np.full(M, 1.5), c0], 1)
    lo = np.array([0.0, r - 3, r - 3, 0.2, -np.inf])
    hi = np.array([np.inf, r + 3, r + 3, float(r), np.inf])

    def resid_jac(p):
        a, my, mx, s, c = p.T[:, :, None]
        dy, dx = yy - my, xx - mx
        e = np.exp(-(dy * dy + dx * dx) / (2 * s * s))
        g = a * e
        jac = np.stack([e, g * dy / s ** 2, g * dx / s ** 2, g * (dy * dy + dx * dx) / s ** 3,
                        np.ones_like(e)], -1)
        return g + c - d, jac

    res, jac = resid_jac(p)
    cost = (res ** 2).sum(1)
    damp = np.full(M, 1e-3)
    eye = np.eye(5)[None]
    for _ in range(iters):
        jt = jac.transpose(0, 2, 1)
        A = jt @ jac
        g = (jt @ res[..., None])[..., 0]
        diag = np.maximum(np.diagonal(A, axis1=1, axis2=2), 1e-12)[:, :, None]
        step = np.linalg.solve(A + damp[:, None, None] * eye * diag, -g[..., None])[..., 0]
        pn = np.clip(p + step, lo, hi)
        rn, jn = resid_jac(pn)
        cn = (rn ** 2).sum(1)
        ok = cn < cost
        p = np.where(ok[:, None], pn, p)
        res = np.where(ok[:, None], rn, res)
        jac = np.where(ok[:, None, None], jn, jac)
        # converged: the last step changed the cost by nothing either way, or no step helps
        # even at a heavy damping
        done = np.all((np.abs(cost - cn) <= 1e-9 * cost) | (~ok & (damp >= 1e4)))
        cost = np.where(ok, cn, cost)
        damp = np.where(ok, damp * 0.3, damp * 10.0)
        if done:  # every fit converged (or could not improve)
            break
    return 2.3548 * np.abs(p[:, 3])


def psf_core_scale(counts, mask, sources, exposure, *, axis=None):
    """The input's own PSF core radius relative to the King model, from its bright sources.

    The real PSF of an observation differs from the model by several per cent (the bright
    isolated sources of the dev fields span core radii of 4.3-6.3"), and the SR image promises
    *this* observation's PSF halved. For each listed source of at least
    ``PSF_SCALE_MIN_COUNTS`` fitted counts, isolated and too faint to pile up, the Gaussian
    FWHM of its input counts (24" cut-out) is compared with that of the noise-free King model
    at its position with its counts and background. The log ratios, corrected for the noise
    bias of faint sources and weighted by their counts, give a weighted median, shrunk towards
    the model under a log-normal prior of spread ``PSF_SCALE_PRIOR`` (an image with few or
    faint sources keeps the model), and turned into a core-radius scale through the model's
    own FWHM-versus-core-radius slope.

    Each source used also gets its own scale, ``d["psf_scale"]`` (set in place): its log ratio
    shrunk towards the observation's under a log-normal prior of spread
    ``PSF_SCALE_SOURCE_SPREAD``, so a bright source's own core counts more than a faint one's.
    :func:`redraw_points` draws a source with its own scale where it has one.

    Returns
    -------
    (float, int)
        The core-radius scale (1.0 without usable sources) and the number of sources used.
    """
    counts = np.asarray(counts, np.float64)
    mask = np.asarray(mask, bool)
    h, w = counts.shape
    R = FIT_RADIUS
    pos = np.array([[d["y"], d["x"]] for d in sources], np.float64).reshape(-1, 2)
    use = []
    for i, d in enumerate(sources):
        c = d["fit_counts"]
        if c < PSF_SCALE_MIN_COUNTS or c / exposure > PSF_SCALE_MAX_RATE:
            continue
        dist = np.hypot(*(pos - pos[i]).T)
        dist[i] = np.inf
        iy, ix = int(round(d["y"])), int(round(d["x"]))
        if (dist.min() < PSF_SCALE_ISOLATION_PX or iy - R < 0 or ix - R < 0 or iy + R >= h
                or ix + R >= w or not mask[iy - R:iy + R + 1, ix - R:ix + R + 1].all()):
            continue
        use.append(d)
    use = sorted(use, key=lambda d: -d["fit_counts"])[:PSF_SCALE_MAX_SOURCES]
    if not use:
        return 1.0, 0
    from .simulate import psf as _psf

    n = len(use)
    iy = np.array([int(round(d["y"])) for d in use])
    ix = np.array([int(round(d["x"])) for d in use])
    theta, phi = np.zeros(n), np.zeros(n)
    if axis is not None:
        ay = np.array([d["y"] for d in use]) - axis[0]
        ax = np.array([d["x"] for d in use]) - axis[1]
        theta = np.hypot(ay, ax) * PIXEL_ARCSEC / 60.0
        phi = np.arctan2(ay, ax) % np.pi
    rc, alpha = np.array([_psf.king_params(t) for t in theta]).T
    q = np.array([_psf.elongation(t) for t in theta])
    dy = np.array([d["y"] for d in use]) - iy
    dx = np.array([d["x"] for d in use]) - ix
    c = np.array([d["fit_counts"] for d in use])
    b = np.array([max(float(d["bkg"]), 0.0) for d in use])
    step = 1.1
    k = _king_windows(np.concatenate([rc, rc * step]) / PIXEL_ARCSEC, np.tile(alpha, 2),
                      np.tile(q, 2), np.tile(phi, 2), np.tile(dy, 2), np.tile(dx, 2), R)
    model = np.tile(c, 2)[:, None] * k + np.tile(b, 2)[:, None]
    obs = np.stack([counts[y - R:y + R + 1, x - R:x + R + 1] for y, x in zip(iy, ix)])
    f = gaussian_fwhm(np.concatenate([obs, model.reshape(2 * n, 2 * R + 1, 2 * R + 1)]))
    f_obs, f_mod, f_wide = f[:n], f[n:2 * n], f[2 * n:]
    ok = (f_obs > 0.3) & (f_obs < 2 * R) & (f_mod > 0)
    if not ok.any():
        return 1.0, 0
    lr = np.log(f_obs[ok] / f_mod[ok]) - np.log(1.0 - PSF_SCALE_BIAS / c[ok])
    wt = c[ok] / PSF_SCALE_NOISE ** 2
    o = np.argsort(lr)
    cw = np.cumsum(wt[o])
    est = float(lr[o][np.searchsorted(cw, 0.5 * cw[-1])])
    se2 = (1.25 ** 2) / wt.sum()
    shrink = PSF_SCALE_PRIOR ** 2 / (PSF_SCALE_PRIOR ** 2 + se2)
    gamma = max(float(np.median(np.log(f_wide[ok] / f_mod[ok]))) / math.log(step), 0.3)
    img = shrink * est
    # each source's own width, shrunk towards the observation's by its noise
    prec = 1.0 / PSF_SCALE_SOURCE_SPREAD ** 2
    own = (img * prec + lr * wt) / (prec + wt)
    for d, l_i in zip((d for d, k in zip(use, ok) if k), own):
        d["psf_scale"] = float(np.clip(math.exp(l_i / gamma), *PSF_SCALE_RANGE))
    scale = math.exp(img / gamma)
    return float(np.clip(scale, *PSF_SCALE_RANGE)), int(ok.sum())


#: Disc (2x pixels, 12") within which a listed source claims the diffuse map's compact excess,
#: and the annulus (2x pixels) whose median diffuse level is the smooth part (:func:`claim_excess`).
CLAIM_RADIUS_2X = 6
CLAIM_ANNULUS_2X = (8, 12)


def claim_excess(points2, diffuse2, sources, *, live2=None, radius=CLAIM_RADIUS_2X,
                 annulus=CLAIM_ANNULUS_2X):
    """Move the ``diffuse`` map's compact excess under each listed source into ``points``.

    Near a bright point source the network's split hedges: it leaves a compact bump in
    ``diffuse`` under the source (simulations, 50 ks, sources of >= 1000 counts: ~4 % of the
    source's flux within 12", where the diffuse truth is smooth). A listed source has passed the
    PSF-fit test on the input counts and was not better fitted by a wider profile, so the counts
    demand a point source there: the diffuse map's excess within ``radius`` of it, over the
    median diffuse level in ``annulus`` around it (other sources' discs left out), belongs to
    the point. The excess ``E`` (summed over the disc, only when positive) is taken from the
    pixels above that level in proportion to their height over it (never below the level) and
    added to ``points`` in the same pixels, so ``points + diffuse`` is unchanged pixel by pixel.
    Smooth emission (a flat or gently sloping diffuse map) has no excess and stays. Each
    source's listed ``counts`` and ``rate`` (the points map within 20", scaled to the whole PSF)
    follow the points map (updated in place); a source whose disc
    :func:`detect_sources` shared with neighbours (``disc_shared``) gains its own claim only,
    over its own part of the disc (``disc_rate``).

    Parameters
    ----------
    points2, diffuse2 : ndarray [2H, 2W]
        SR component maps (count/s per 2" pixel); not modified.
    sources : list of dict
        :func:`detect_sources` output (``y2``, ``x2``).
    live2 : bool ndarray [2H, 2W], optional
        Pixels that may change.

    Returns
    -------
    (points, diffuse, moved)
        The new maps (float32) and the summed rate moved (count/s).
    """
    P = np.array(points2, np.float32, copy=True)
    Dm = np.array(diffuse2, np.float32, copy=True)
    if not sources:
        return P, Dm, 0.0
    H2, W2 = P.shape
    live = np.ones(P.shape, bool) if live2 is None else np.asarray(live2, bool)
    pos = np.array([[d["y2"], d["x2"]] for d in sources], np.float64)
    R = int(annulus[1])
    ry, rx = np.mgrid[-R:R + 1, -R:R + 1]
    rr = np.hypot(ry, rx)
    moved = 0.0

    def flux20(m):  # the points map within NET_RADIUS_2X of each source (as listed)
        n = NET_RADIUS_2X
        out = []
        for y2, x2 in pos:
            iy, ix = int(round(y2)), int(round(x2))
            y0, y1 = max(iy - n, 0), min(iy + n + 1, H2)
            x0, x1 = max(ix - n, 0), min(ix + n + 1, W2)
            yy, xx = np.ogrid[y0 - iy:y1 - iy, x0 - ix:x1 - ix]
            out.append(float(m[y0:y1, x0:x1][yy * yy + xx * xx <= n * n].sum()))
        return np.array(out)

    before = flux20(P)
    gained = np.zeros(len(pos))  # each source's own claim (count/s)
    for i, (y2, x2) in enumerate(pos):
        iy, ix = int(round(y2)), int(round(x2))
        if iy - R < 0 or ix - R < 0 or iy + R >= H2 or ix + R >= W2:
            continue
        sl = (slice(iy - R, iy + R + 1), slice(ix - R, ix + R + 1))
        lv = live[sl]
        others = np.delete(pos, i, axis=0)
        near = (np.hypot(*(others - pos[i]).T).min() if len(others) else np.inf)
        r = min(float(radius), near / 2.0)
        if r < 2.0:
            continue
        free = np.ones_like(lv)
        for oy, ox in others:  # other sources' discs are not background
            if abs(oy - iy) <= R + radius and abs(ox - ix) <= R + radius:
                free &= np.hypot(ry + iy - oy, rx + ix - ox) > radius
        disc = (rr <= r) & lv
        ann = (rr >= annulus[0]) & (rr <= annulus[1]) & lv & free
        if disc.sum() < 5 or ann.sum() < 10:
            continue
        d = Dm[sl]
        level = float(np.median(d[ann]))
        over = np.where(disc, np.maximum(d - level, 0.0), 0.0)
        excess = float((d[disc] - level).sum())
        tot = float(over.sum())
        if excess <= 0.0 or tot <= 0.0:
            continue
        take = over * (excess / tot)
        d -= take
        P[sl] += take
        moved += excess
        gained[i] = excess
    if moved > 0:
        for d, b, a, g in zip(sources, before, flux20(P), gained):
            if d.get("disc_shared") and d.get("disc_rate", 0.0) > 0:
                # its own part of the disc (detect_sources shared it with its neighbours) and
                # its own claim: the neighbours' claims in its 20" are theirs
                b, a = d["disc_rate"], d["disc_rate"] + g
            if b > 0 and a != b:
                d["counts"] *= a / b
                d["rate"] *= a / b
    return P, Dm, moved


#: Radius (2x pixels, 16") within which :func:`redraw_points` redraws a listed source.
REDRAW_RADIUS_2X = 8
#: No redraw within this many 2x pixels: a disc that small holds mostly the core.
REDRAW_MIN_RADIUS_2X = 3
#: A listed source of at least this many PSF-fit counts keeps at least the flux its fit puts
#: in its disc (:func:`redraw_points`).
REDRAW_FIT_MIN_COUNTS = 1000.0


def redraw_points(points2, sources, *, axis=None, live2=None, radius=REDRAW_RADIUS_2X,
                  core_scale=1.0, exposure=None, cov2=None):
    """The ``points`` map with each listed source redrawn as the halved PSF at its position.

    The network's ``points`` map is a posterior mean: near a source of a few hundred counts it
    hedges between a point and a compact extended shape, and draws it ~5 % wider than half the
    PSF (simulations: Gaussian FWHM 0.58 of the input's where the truth has 0.55). A source the
    photons list as point-like (:func:`detect_sources`: significant, and not better fitted
    by a wider profile) is redrawn, within ``radius`` of its fitted position, as the halved
    King PSF of its off-axis angle and azimuth (core radius / 2, at the fitted sub-pixel
    position, pixel integrated), with the map's own counts within that disc: the flux stays,
    the shape becomes the one the SR image promises. Outside the discs nothing changes. Discs
    of neighbouring sources shrink to half their distance (none below
    ``REDRAW_MIN_RADIUS_2X``).

    Parameters
    ----------
    points2 : ndarray [2H, 2W]
        SR ``points`` map (count/s per 2" pixel); not modified.
    sources : list of dict
        :func:`detect_sources` output (``y2``, ``x2`` on the 2x grid).
    axis : (float, float), optional
        Optical axis, 1x pixel ``[y, x]`` (on-axis PSF everywhere if None).
    live2 : bool ndarray [2H, 2W], optional
        Pixels that may hold flux (others keep theirs, zero in the bundled outputs).
    radius : int
    core_scale : float
        The input's PSF core radius over the King model's (:func:`psf_core_scale`): the halved
        PSF drawn is that of this observation. A source with its own ``psf_scale`` (set by
        :func:`psf_core_scale` on the bright isolated ones) is drawn with that instead.
    exposure : float, optional
        Input exposure (s). When given, a bright source (``fit_counts`` at least
        ``REDRAW_FIT_MIN_COUNTS``) keeps at least the flux that its PSF fit on the live input
        pixels puts in the live part of its disc. On simulations the network draws such sources
        right (median 0.99-1.03 of the truth in 20") except where their disc is cut by a CCD
        gap or the field's edge (7-20 % too faint) and for the brightest (~4 count/s: 13 % too
        faint); the fit, which knows the PSF and the dead pixels, is within ~5 % there and
        ~4 % low elsewhere, so the larger of the two is kept. Where the fit's is kept, the
        source's ``counts`` and ``rate`` in ``sources`` become the fit's (updated in place).
    cov2 : ndarray [2H, 2W], optional
        Each pixel's share of a full pixel's events (the pn coverage map on the 2x grid, as the
        SR target holds it): the halved PSF is drawn times it, and the fit's flux in the disc
        counts it.

    Returns
    -------
    (ndarray float32 [2H, 2W], int)
        The new map and the number of sources redrawn.
    """
    from .simulate import psf as _psf

    out = np.array(points2, np.float32, copy=True)
    if not sources:
        return out, 0
    H2, W2 = out.shape
    live = np.ones(out.shape, bool) if live2 is None else np.asarray(live2, bool)
    pos = np.array([[d["y2"], d["x2"]] for d in sources], np.float64)
    todo = []  # (i, r, iy, ix, theta, phi, dy, dx) of the sources that get redrawn
    for i, (y2, x2) in enumerate(pos):
        others = np.delete(pos, i, axis=0)
        near = np.hypot(*(others - pos[i]).T).min() if len(others) else np.inf
        r = int(radius if near >= 2 * radius else math.floor(near / 2.0))
        iy, ix = int(round(y2)), int(round(x2))
        if r < REDRAW_MIN_RADIUS_2X or iy - r < 0 or ix - r < 0 or iy + r >= H2 or ix + r >= W2:
            continue
        # off-axis angle and azimuth of the source (1x pixel coordinates: (x2 - 0.5) / 2)
        theta = phi = 0.0
        if axis is not None:
            dy, dx = (y2 - 0.5) / 2.0 - axis[0], (x2 - 0.5) / 2.0 - axis[1]
            theta = math.hypot(dy, dx) * PIXEL_ARCSEC / 60.0
            phi = math.atan2(dy, dx) % math.pi
        todo.append((i, r, iy, ix, theta, phi, y2 - iy, x2 - ix))
    if not todo:
        return out, 0
    R = max(t[1] for t in todo)
    rc, alpha = np.array([_psf.king_params(t[4]) for t in todo]).T
    rc = rc * np.array([float(sources[t[0]].get("psf_scale", core_scale)) for t in todo])
    # the halved PSF on the 2" grid: core radius rc / 2 arcsec = rc / 4 pixels (one batch)
    wins = _king_windows(rc / 4.0, alpha, [_psf.elongation(t[4]) for t in todo],
                         [t[5] for t in todo], [t[6] for t in todo], [t[7] for t in todo],
                         R).reshape(len(todo), 2 * R + 1, 2 * R + 1)
    n = 0
    for (i, r, iy, ix, *_), win, rc_i, al_i in zip(todo, wins, rc, alpha):
        ry, rx = np.mgrid[-r:r + 1, -r:r + 1]
        cut = out[iy - r:iy + r + 1, ix - r:ix + r + 1]
        full = ry * ry + rx * rx <= r * r
        disc = full & live[iy - r:iy + r + 1, ix - r:ix + r + 1]
        w = win[R - r:R + r + 1, R - r:R + r + 1]
        wc = w if cov2 is None else w * cov2[iy - r:iy + r + 1, ix - r:ix + r + 1]
        k = np.where(disc, wc, 0.0)
        flux = float(cut[disc].sum())
        if k.sum() <= 0:
            continue
        f_live = float(k.sum() / w[full].sum())
        fit = float(sources[i].get("fit_counts", 0.0))
        if exposure and fit >= REDRAW_FIT_MIN_COUNTS:
            # the fit's whole-PSF counts times the halved PSF's share in the live disc
            eef = (_psf.king_eef(r * PIXEL_ARCSEC / 2.0, rc_i / 2.0, al_i)
                   / _psf.king_eef(PSF_TOTAL_RADIUS_ARCSEC, rc_i / 2.0, al_i))
            fitted = fit / float(exposure) * eef * f_live
            if fitted > flux:
                # the list follows the drawing: the source's whole-PSF counts are the fit's
                flux = fitted
                d = sources[i]
                d["counts"], d["rate"] = fit, fit / float(exposure)
        if flux <= 0:
            continue
        cut[disc] = (flux * k / k.sum())[disc]
        n += 1
    return out, n


#: Candidates at least this significant (sigma) that are not listed keep their ``points`` too
#: (:func:`detect_sources` ``support``, :func:`release_unlisted`).
POINTS_SUPPORT_SIGNIF = 4.5
#: Window radii (2x pixels) of a source's halved PSF in :func:`release_unlisted`: at least 20",
#: at most 128" (the halved PSF's extent in the training targets).
SUPPORT_MIN_RADIUS_2X = 10
SUPPORT_MAX_RADIUS_2X = 64
#: The window reaches out to where the halved PSF puts this many counts per 2x pixel.
SUPPORT_WING_COUNTS = 1e-4
#: ``points`` may exceed its sources' halved King PSFs by this factor before the excess moves to
#: ``diffuse``: room for the redraw's core scales of up to 1.25, the network's own (wider)
#: drawing beyond the redraw's 16" and of the unlisted candidates. With 2, bright sources
#: (>= 100 counts in 20") lost ~1 % of their 20" flux to ``diffuse`` (simulations); with 4,
#: none.
SUPPORT_PSF_FACTOR = 4.0
#: Of the ``points`` flux no supporting source explains, :func:`release_unlisted` leaves at most
#: this many counts (at the input exposure) in any 20" aperture (radius
#: ``UNSUPPORTED_RADIUS_2X``): the network's drawing of point sources too faint for the list
#: stays in ``points`` (on simulations they hold 6-8 % of all point flux at 20 ks), while no
#: unsupported clump exceeds it (the issue's flat-background bar is 10 counts). 0: none stays.
#: 8 since session 21 (5 before): what the point sources' photons add to ``diffuse`` fell from
#: 5.7 / 6.5 % to 4.9 / 6.0 % of their flux at 20 / 50 ks (seed 515151; 777: 6.5 / 3.6 % to 5.4 /
#: 3.1 %), ``points`` took 0.1 point more of fields simulated without point sources, and the
#: SR image's compact features and their tests did not change (``bench_strict_rule.py
#: --features``, seed 2718).
UNSUPPORTED_MAX_COUNTS = 8.0
UNSUPPORTED_RADIUS_2X = 10


def _king_halved(counts, theta_arcmin):
    """(a, alpha, peak): the halved King PSF of a source of ``counts`` (whole PSF) at off-axis
    angle ``theta_arcmin`` on the 2" grid: core radius ``a`` (pixels), slope and its surface
    brightness at the centre (counts per pixel)."""
    from .simulate import psf as _psf

    rc, alpha = _psf.king_params(float(theta_arcmin))
    a = rc / 4.0  # the halved core radius in 2" pixels
    return a, alpha, max(float(counts), 0.0) * (alpha - 1.0) / (math.pi * a * a)


def support_radius(counts, theta_arcmin=0.0):
    """Radius (2x pixels) out to which the halved King PSF of a source of ``counts`` (whole PSF)
    at off-axis angle ``theta_arcmin`` puts at least ``SUPPORT_WING_COUNTS`` per 2" pixel,
    within [``SUPPORT_MIN_RADIUS_2X``, ``SUPPORT_MAX_RADIUS_2X``]."""
    a, alpha, peak = _king_halved(counts, theta_arcmin)
    r = a * math.sqrt(max((peak / SUPPORT_WING_COUNTS) ** (1.0 / alpha) - 1.0, 0.0))
    return int(np.clip(math.ceil(r), SUPPORT_MIN_RADIUS_2X, SUPPORT_MAX_RADIUS_2X))


def release_unlisted(points2, diffuse2, sources, exposure, *, axis=None, live2=None,
                     core_scale=1.0):
    """``points`` keeps the sources the counts demand; the rest of it moves to ``diffuse``.

    The network's ``points`` map is a posterior mean: where the photons hint at a point but do
    not show one it still draws a faint clump, and it lays a low smear of points flux over
    the whole field. On a flat background at 2-3x the nominal level the clumps reach 10-21
    counts in 20" (simulations) although no PSF fit on the input counts finds a source there
    at 4.5 sigma. The issue's rule is that a knot stays diffuse unless the counts demand a
    point source. So ``points`` may hold, in each pixel, at most ``SUPPORT_PSF_FACTOR`` times
    what the halved King PSFs of ``sources`` put there (each with its counts, at its position
    and off-axis angle, tapered to zero at its :func:`support_radius`): the listed sources and the
    candidates of at least :data:`POINTS_SUPPORT_SIGNIF` that :func:`detect_sources` returns
    in ``support`` (just below the list's threshold, or better fitted by a wider profile: a
    piled-up core is no less a point). The excess, a smooth function of position with no
    edge, goes to ``diffuse`` in the same pixel: their sum is unchanged pixel by pixel, so the
    SR image, its percentiles and the list do not change. Of the unsupported flux, at most
    ``UNSUPPORTED_MAX_COUNTS`` in any 20" aperture stays in ``points``: the network's drawing of
    sources too faint for the list, scaled down where it would exceed that (a clump on a flat
    background, a knot of diffuse emission); the rest of such sources is in ``diffuse``.

    Parameters
    ----------
    points2, diffuse2 : ndarray [2H, 2W]
        SR component maps (count/s per 2" pixel); not modified.
    sources : list of dict
        The sources that keep their ``points`` (``y2``, ``x2``, ``counts``, ``fit_counts``,
        optional ``psf_scale``): :func:`detect_sources` output and its ``support`` list.
    exposure : float
        Input exposure (s): ``counts`` are at this exposure.
    axis : (float, float), optional
        Optical axis, 1x pixel ``[y, x]`` (on-axis PSF everywhere if None).
    live2 : bool ndarray [2H, 2W], optional
        Pixels that may change.
    core_scale : float
        King core radius scale of sources without their own ``psf_scale``
        (:func:`psf_core_scale`).

    Returns
    -------
    (points, diffuse, moved)
        The new maps (float32) and the summed rate moved (count/s).
    """
    P = np.array(points2, np.float32, copy=True)
    D = np.array(diffuse2, np.float32, copy=True)
    H2, W2 = P.shape
    cap = np.zeros(P.shape, np.float64)  # counts per pixel the sources' halved PSFs allow
    for d in sources:
        theta = 0.0
        if axis is not None:
            theta = (math.hypot((d["y2"] - 0.5) / 2.0 - axis[0], (d["x2"] - 0.5) / 2.0 - axis[1])
                     * PIXEL_ARCSEC / 60.0)
        n = max(float(d.get("counts", 0.0)), float(d.get("fit_counts", 0.0)))
        r = support_radius(n, theta)
        a, alpha, peak = _king_halved(n, theta)
        sc = float(d.get("psf_scale", core_scale))
        a, peak = a * sc, peak / (sc * sc)
        iy, ix = int(round(d["y2"])), int(round(d["x2"]))
        y0, y1 = max(iy - r, 0), min(iy + r + 1, H2)
        x0, x1 = max(ix - r, 0), min(ix + r + 1, W2)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.ogrid[y0:y1, x0:x1]
        r2 = (yy - d["y2"]) ** 2 + (xx - d["x2"]) ** 2
        # tapered to zero at the window's edge, so that what stays has no edge either
        taper = np.clip(1.0 - r2 / float(r * r), 0.0, None) ** 2
        cap[y0:y1, x0:x1] += peak * (1.0 + r2 / (a * a)) ** -alpha * taper
    keep = np.minimum(P, (SUPPORT_PSF_FACTOR * cap / float(exposure)).astype(np.float32))
    if live2 is not None:
        keep = np.where(np.asarray(live2, bool), keep, P)
    excess = P - keep
    if UNSUPPORTED_MAX_COUNTS > 0 and excess.any():
        # the unsupported part stays, scaled down to at most UNSUPPORTED_MAX_COUNTS in every
        # 20" aperture
        e = np.maximum(excess, 0.0) * np.float32(exposure)  # counts (float32)
        r = UNSUPPORTED_RADIUS_2X
        if H2 % 2 == 0 and W2 % 2 == 0:
            # on 2 x 2 blocks (4x fewer pixels): the (2h + 1)^2-block window of a block, h =
            # ceil(r / 2), holds the (2r + 1)^2 square (and the r-radius disc) around each of
            # its pixels; an aperture that holds a pixel is centred within h blocks of it. So
            # each pixel is scaled by the limit over the largest such window sum near it, and
            # every aperture keeps at most the limit
            h = (r + 1) // 2
            blocks = e[0::2, 0::2] + e[1::2, 0::2] + e[0::2, 1::2] + e[1::2, 1::2]
            worst = _box_max(_window_sum(blocks, h), h)
            f = np.minimum(1.0, UNSUPPORTED_MAX_COUNTS / np.maximum(worst, 1e-30))
            f = np.repeat(np.repeat(f.astype(np.float32), 2, 0), 2, 1)
        else:
            # the (4r + 1)^2 window of each pixel holds every (2r + 1)^2 square containing it
            f = np.minimum(1.0, UNSUPPORTED_MAX_COUNTS
                           / np.maximum(_window_sum(e, 2 * r), 1e-30)).astype(np.float32)
        # (rounded down a hair so that float32 sums cannot exceed the limit)
        keep = np.minimum(keep + excess * (f * np.float32(1.0 - 1e-6)), P)
        excess = P - keep
    moved = float(excess.sum(dtype=np.float64))
    D += excess
    P = keep
    return P, D, moved
