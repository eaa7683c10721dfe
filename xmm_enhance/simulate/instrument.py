"""Image-level EPIC-pn simulator: training pairs for the SR and DN networks.

``simulate_observation`` draws a sky (``sky.draw_sky``), applies vignetting and the King PSF
(widening off axis, one of five PSF variants per observation; point sources of more than ~5
counts per 20 ks get stamps elongated tangentially at their off-axis angle and azimuth, fainter
ones and extended emission a circular PSF in three radial zones blended linearly), pile-up of very bright point sources, a soft field-of-view edge, the CCD mask with
random bad columns and the partial coverage of DET columns/rows next to CCD gaps, particle /
sky / soft-proton / corner background, out-of-time streaks and Poisson noise, and returns the
noisy 1x counts together with the noise-free DN target (rate with background, 1x) and the SR
target (background-free rate, PSF half as wide, 2x grid). See ``docs/simulator.md``.

The sky is rendered once on the 2x grid (2"/pixel); the full-PSF image is computed there and summed
2x2 onto the 1x grid, so that the 1x and 2x images hold exactly the same source flux.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
from scipy import fft as sfft

from .. import detector
from ..detector import PARTIAL_COLUMNS, PARTIAL_ROWS, coverage_map  # noqa: F401 (re-exported)
from . import psf as _psf
from .sky import AXIS_C2, FIELD_KINDS, draw_sky

__all__ = [
    "SIM_VERSION", "SimulatedObservation", "simulate_observation", "vignetting",
    "VIGNETTING_TABLE", "OOT_FRACTION", "PARTICLE_RATE", "COSMIC_RATE", "PARTIAL_COLUMNS",
    "PARTIAL_ROWS", "coverage_map", "PILEUP_RATE", "PSF_VARIANTS", "source_kernels",
]

SIM_VERSION = "0.15.0"

#: Vignetting (0.5-2 keV) versus off-axis angle (arcmin) about detector.OPTICAL_AXIS_DET:
#: upper quartile in 1' annuli of the eexpmap exposure map of obs 0723801301
#: (shared/data/reference, withvignetting=yes), divided by its on-axis value. It flattens at
#: ~0.31 beyond 15'.
VIGNETTING_TABLE = (
    (0.0, 0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5, 8.5, 9.5, 10.5, 11.5, 12.5, 13.5, 14.5, 15.5,
     16.5, 17.5, 20.0),
    (1.0, 0.997, 0.979, 0.937, 0.895, 0.842, 0.793, 0.733, 0.669, 0.612, 0.557, 0.51, 0.465,
     0.42, 0.379, 0.348, 0.315, 0.306, 0.305, 0.30),
)
#: Out-of-time event fraction in full-frame mode.
OOT_FRACTION = 0.063
#: Corner pixels (outside the FoV) in the rows next to the rows excluded at the outer CCD edges
#: collect extra events: CORNER_EDGE_EXCESS (counts/s/pixel, range) times the factor per 0-based
#: row; the outermost corner rows (CORNER_OUTER_ROWS) collect 0.55-0.95 of the corner rate.
#: Measured as row means of the corners in three of the real full exposures (NGC 1399, W49B,
#: M 51: excess 2.5-4.7x the corner rate in rows 11 and 399, i.e. 25-40e-6 counts/s/pixel;
#: row 398 +0.45-1.3x; row 10 0.57-0.93x); the 2001 Perseus image shows none (15 % of draws).
CORNER_EDGE_ROWS = {11: 1.0, 399: 1.0, 398: 0.25}
CORNER_EDGE_EXCESS = (25e-6, 45e-6)
CORNER_OUTER_ROWS = (10,)
#: Observed 0.5-2 keV rate (counts/s) above which a point source is piled up.
PILEUP_RATE = 3.0
#: Particle (not vignetted) background, counts/s per 4" pixel (filter-wheel-closed level).
PARTICLE_RATE = 4.9e-6
#: Diffuse sky background (Galactic foreground + unresolved CXB below 1e-16 cgs), counts/s per
#: 4" pixel on axis, before vignetting. Point sources above 1e-16 are simulated individually.
COSMIC_RATE = 7.0e-6

_ZONES_ARCMIN = (3.0, 9.0, 15.0)
#: Per-observation PSF variants (core-radius scaling, offset added to the King alpha of
#: ``psf.king_params``), drawn with PSF_VARIANT_P: the real sources measured span rc 4.3-6.3",
#: alpha 1.19-1.76 (reference sheet), so the networks must not rely on one exact PSF.
#: (Before simulator 0.13.0 the second numbers were absolute slopes: 1.55, 1.55, 1.55, 1.4, 1.7.)
PSF_VARIANTS = ((1.0, 0.0), (0.9, 0.0), (1.1, 0.0), (0.85, -0.15), (1.15, 0.15))
PSF_VARIANT_P = (0.4, 0.15, 0.15, 0.15, 0.15)
_KERNEL_RADIUS = 64  # 2x pixels (128")
#: Per-observation scalings of the off-axis elongation (``psf.ELONGATION_A``) and their
#: probabilities: the real sources scatter about the calibrated trend.
ELONGATION_SCALES = (0.6, 1.0, 1.4)
ELONGATION_P = (0.25, 0.5, 0.25)
#: Point sources brighter than this (counts/s after vignetting, ~5 counts in 20 ks) get their
#: own elongated PSF stamp at their exact off-axis angle and azimuth; fainter ones, whose shape
#: no exposure reveals, go through the zone-blended circular convolution with the diffuse sky.
STAMP_RATE = 2.5e-4
#: Sources below this rate (~50 counts in 20 ks) get the central 97" x 97" of their stamp,
#: renormalised (the same flux in both targets; the cut wing is invisible at these counts).
SMALL_STAMP_RATE = 2.5e-3
_SMALL_RADIUS = 24
#: Stamp kernels are tabulated per 1' of off-axis angle and per 180/_N_ORIENT degrees of azimuth.
_N_ORIENT = 12


def vignetting(theta_arcmin):
    """Vignetting factor at off-axis angle(s) ``theta_arcmin`` (0.5-2 keV)."""
    t, v = VIGNETTING_TABLE
    return np.interp(theta_arcmin, t, v).astype(np.float32)


@dataclass
class SimulatedObservation:
    """One simulated EPIC-pn observation and its targets (see module docstring).

    Attributes
    ----------
    counts : ndarray, float32 [411, 403]
        Poisson counts at ``exposure``, zero outside ``mask``.
    exposure : float
        Exposure time (s).
    mask : ndarray, bool [411, 403]
        Detector pixels of this observation (CCD mask, corners or not, bad columns).
    dn_target : ndarray, float32 [411, 403]
        Expected count rate (counts/s/pixel) including all background, zero outside ``mask``.
    sr_target : ndarray, float32 [822, 806]
        Expected background-free rate per 2" pixel, PSF half as wide, zero outside the 2x mask;
        the partial coverage of the 1x pixel next to a CCD gap applies to its four 2x pixels, so
        that source fluxes agree with ``dn_target``. None when ``sr=False``.
    bkg_rate : ndarray, float32 [411, 403]
        The background part of ``dn_target`` (particle, sky, soft protons, out-of-time events).
    sr_diffuse : ndarray, float32 [822, 806] or None
        The extended-emission part of ``sr_target`` (clusters, galaxies, remnants, filaments,
        diffuse fields; same PSF, vignetting, edge and coverage), without any point source, so
        ``sr_target - sr_diffuse`` is the point sources' part. None unless ``decompose``.
    meta : dict
        Field kind, background levels, PSF, bad columns, drawn components and bright sources.
    """

    counts: np.ndarray
    exposure: float
    mask: np.ndarray
    dn_target: np.ndarray
    sr_target: np.ndarray | None
    bkg_rate: np.ndarray
    meta: dict = field(default_factory=dict)
    sr_diffuse: np.ndarray | None = None


@functools.lru_cache(maxsize=1)
def _geometry():
    g1, g2 = detector.pn_grid(), detector.pn_grid(scale=2)
    ny2, nx2 = g2.shape
    theta2 = detector.radius_arcmin(g2).astype(np.float32)
    theta1 = detector.radius_arcmin(g1).astype(np.float32)
    fov2 = detector.fov_transmission(g2)
    fov1 = detector.fov_mask(g1)
    live1 = detector.live_mask(g1)
    # hat weights for the PSF zones
    z = np.asarray(_ZONES_ARCMIN, np.float32)
    w = np.empty((len(z), ny2, nx2), np.float32)
    t = np.clip(theta2, z[0], z[-1])
    for k in range(len(z)):
        lo = z[k - 1] if k > 0 else z[k] - 1.0
        hi = z[k + 1] if k < len(z) - 1 else z[k] + 1.0
        up = (t - lo) / (z[k] - lo)
        dn = (hi - t) / (hi - z[k])
        w[k] = np.clip(np.minimum(up, dn), 0.0, 1.0)
    w /= w.sum(axis=0, keepdims=True)
    pad = (sfft.next_fast_len(ny2 + _KERNEL_RADIUS + 1, real=True),
           sfft.next_fast_len(nx2 + _KERNEL_RADIUS + 1, real=True))
    # rows of the two CCD halves (for out-of-time streaks)
    _, yc = g1.centres()
    halves = [(yc >= lo) & (yc < hi) for lo, hi in detector._HALF_Y.values()]
    return {
        "theta1": theta1, "theta2": theta2, "fov1": fov1, "fov2": fov2, "live1": live1,
        "tfov1": detector.fov_transmission(g1),
        "vig1": vignetting(theta1), "vig2": vignetting(theta2), "zones": w, "pad": pad,
        "halves": halves,
        "mask_corners": detector.detector_mask(g1, corners=True),
        "mask_nocorners": detector.detector_mask(g1, corners=False),
        "corner1": detector.corner_mask(g1), "coverage": coverage_map(),
    }


@functools.lru_cache(maxsize=len(PSF_VARIANTS))
def _kernels(variant):
    """Circular PSF kernels of variant ``variant`` (index into ``PSF_VARIANTS``): FFTs per zone."""
    geo = _geometry()
    pad = geo["pad"]
    full_k, half_k, params = [], [], []
    pix2 = detector.pixel_size_arcsec(scale=2)
    r = _KERNEL_RADIUS
    for zk in _ZONES_ARCMIN:
        rc, alpha = _psf.king_params(zk)
        rc *= PSF_VARIANTS[variant][0]
        alpha += PSF_VARIANTS[variant][1]
        params.append((float(rc), float(alpha)))
        for lst, scale in ((full_k, 1.0), (half_k, 0.5)):
            k = _psf.king_kernel(rc * scale / pix2, alpha, r)
            kp = np.zeros(pad, np.float32)
            kp[:2 * r + 1, :2 * r + 1] = k
            kp = np.roll(kp, (-r, -r), axis=(0, 1))
            lst.append(sfft.rfft2(kp).astype(np.complex64))
    return {"full_k": full_k, "half_k": half_k, "psf_params": params}


@functools.lru_cache(maxsize=None)
def _stamp_kernels(variant, escale, ti, oi):
    """Elongated PSF stamps on the 2x grid, float32: (full, half) 129 x 129 and the same cut to
    49 x 49 and renormalised.

    ``variant``: index into PSF_VARIANTS; ``escale``: index into ELONGATION_SCALES; ``ti``:
    off-axis angle in whole arcmin; ``oi``: azimuth bin of the direction to the source from the
    optical axis (modulo 180 degrees).
    """
    rc, alpha = _psf.king_params(ti)
    rc *= PSF_VARIANTS[variant][0]
    alpha += PSF_VARIANTS[variant][1]
    q = _psf.elongation(ti, ELONGATION_SCALES[escale])
    phi = oi * np.pi / _N_ORIENT
    pix2 = detector.pixel_size_arcsec(scale=2)
    big = [_psf.king_kernel(rc * scale / pix2, alpha, _KERNEL_RADIUS, oversample=3, q=q, phi=phi)
           .astype(np.float32) for scale in (1.0, 0.5)]
    c = slice(_KERNEL_RADIUS - _SMALL_RADIUS, _KERNEL_RADIUS + _SMALL_RADIUS + 1)
    small = [k[c, c] / k[c, c].sum() for k in big]
    return (*big, *small)


def source_kernels(meta, src):
    """Full and half-width PSF stamps (2x grid, unit sum, odd squares) of a source of
    ``meta["sources"]`` (not piled up), exactly as the simulator drew it."""
    var = PSF_VARIANTS.index(tuple(meta["psf_variant"]))
    esc = ELONGATION_SCALES.index(meta["psf_elongation_scale"])
    ks = _stamp_kernels(var, esc, *_stamp_index(src["y2"], src["x2"]))
    return ks[:2] if src["rate"] * src["vignetting"] >= SMALL_STAMP_RATE else ks[2:]


def _stamp_index(y, x):
    """(off-axis bin, azimuth bin) of 2x pixel (y, x) for ``_stamp_kernels``."""
    dy, dx = y - AXIS_C2[0], x - AXIS_C2[1]
    theta = np.hypot(dy, dx) * detector.pixel_size_arcsec(scale=2) / 60.0
    phi = np.arctan2(dy, dx) % np.pi
    return int(np.rint(theta)), int(np.rint(phi / (np.pi / _N_ORIENT))) % _N_ORIENT


def _stamped_sources(ker_id, yx, obs_rate, full2, half2):
    """Add point sources (observed, i.e. vignetted, rates) with their elongated PSF stamps to
    ``full2`` (and ``half2``)."""
    ny, nx = full2.shape
    for (y, x), rt in zip(yx, obs_rate):
        iy, ix = int(np.rint(y)), int(np.rint(x))
        if not (0 <= iy < ny and 0 <= ix < nx):
            continue
        obs = np.float32(rt)
        ks = _stamp_kernels(*ker_id, *_stamp_index(iy, ix))
        kf, kh = ks[:2] if obs >= SMALL_STAMP_RATE else ks[2:]
        _add_stamp(full2, iy, ix, obs * kf)
        if half2 is not None:
            _add_stamp(half2, iy, ix, obs * kh)


def _deposit_points(img, yx, rate):
    """Deposit point sources (2x pixel coordinates) into the nearest 2x pixel of ``img``.

    Positions are quantised to the 2" grid (at most 1" off) so that the SR target shows the exact
    half-width PSF, without the extra blur of a sub-pixel (cloud-in-cell) deposit.
    """
    ny, nx = img.shape
    iy = np.rint(yx[:, 0]).astype(int)
    ix = np.rint(yx[:, 1]).astype(int)
    ok = (iy >= 0) & (iy < ny) & (ix >= 0) & (ix < nx)
    np.add.at(img, (iy[ok], ix[ok]), rate[ok].astype(np.float32))


def _add_stamp(img, iy, ix, k):
    """Add kernel ``k`` (odd square) centred on pixel (iy, ix) of ``img``, clipped at the edges."""
    r = k.shape[0] // 2
    ny, nx = img.shape
    y0, y1, x0, x1 = iy - r, iy + r + 1, ix - r, ix + r + 1
    ky0, kx0 = max(0, -y0), max(0, -x0)
    ky1, kx1 = k.shape[0] - max(0, y1 - ny), k.shape[1] - max(0, x1 - nx)
    if ky1 <= ky0 or kx1 <= kx0:
        return
    img[max(y0, 0):min(y1, ny), max(x0, 0):min(x1, nx)] += k[ky0:ky1, kx0:kx1]


def _piled_sources(geo, ker_id, yx, rate, full2, half2):
    """Add piled-up point sources: core events lost, SR target scaled to the observed flux.

    Pile-up in full-frame mode removes events from the PSF core of sources brighter than
    ``PILEUP_RATE`` counts/s (0.5-2 keV, after vignetting): the core is multiplied by
    ``1 - p exp(-r^2 / 2 s^2)`` (s = 5"), p = min(0.9, 0.35 sqrt(rate / PILEUP_RATE)).
    """
    out = []
    r = _KERNEL_RADIUS
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    core = np.exp(-(yy ** 2 + xx ** 2) / (2 * 2.5 ** 2)).astype(np.float32)
    for (y, x), rt in zip(yx, rate):
        iy, ix = int(np.rint(y)), int(np.rint(x))
        if not (0 <= iy < full2.shape[0] and 0 <= ix < full2.shape[1]):
            continue
        v = float(geo["vig2"][iy, ix])
        obs = rt * v
        k_full, k_half = _stamp_kernels(*ker_id, *_stamp_index(iy, ix))[:2]
        p = min(0.9, 0.35 * np.sqrt(obs / PILEUP_RATE))
        kf = k_full * (1 - p * core)
        kept = float(kf.sum())
        _add_stamp(full2, iy, ix, np.float32(obs) * kf)
        if half2 is not None:
            _add_stamp(half2, iy, ix, np.float32(obs * kept) * k_half)
        out.append({"y2": iy, "x2": ix, "rate": float(rt), "peak_loss": float(p),
                    "flux_kept": kept})
    return out


def _convolve(geo, ker, img2, want_half, want_full=True):
    """Zone-blended PSF convolution of the 2x sky: (full PSF image or None, half PSF image or
    None)."""
    ny, nx = img2.shape
    pad = geo["pad"]
    acc_f = None
    acc_h = None
    for k, wk in enumerate(geo["zones"]):
        zk = img2 * wk
        if not zk.any():
            continue
        f = sfft.rfft2(zk, s=pad, workers=1)
        if want_full:
            acc_f = f * ker["full_k"][k] if acc_f is None else acc_f + f * ker["full_k"][k]
        if want_half:
            h = f * ker["half_k"][k]
            acc_h = h if acc_h is None else acc_h + h
    if acc_f is None and acc_h is None:
        z = np.zeros_like(img2)
        return (z if want_full else None), (z.copy() if want_half else None)
    full = None
    if want_full:
        full = sfft.irfft2(acc_f, s=pad, workers=1)[:ny, :nx]
        np.maximum(full, 0, out=full)
    half = None
    if want_half:
        half = sfft.irfft2(acc_h, s=pad, workers=1)[:ny, :nx]
        np.maximum(half, 0, out=half)
    return (full.astype(np.float32) if want_full else None,
            half.astype(np.float32) if want_half else None)


def _rebin2(a):
    ny, nx = a.shape
    return a.reshape(ny // 2, 2, nx // 2, 2).sum(axis=(1, 3))


def _bad_columns(rng, geo):
    """Random observation-specific bad columns: (half index, first column, width) tuples."""
    out = []
    live = geo["live1"]
    for _ in range(min(rng.poisson(1.5), 5)):
        h = int(rng.integers(0, 2))
        rows = geo["halves"][h]
        cols = np.flatnonzero(live[rows].any(axis=0))
        c = int(rng.choice(cols))
        out.append((h, c, 1 if rng.random() < 0.7 else 2))
    return out


def simulate_observation(rng, *, exposure=20e3, sr=True, dn=True, kind=None, sources=True,
                         decompose=False, points=True, halo_points=0.0):
    """Simulate one EPIC-pn 0.5-2 keV observation on the 411 x 403 DETX/DETY grid.

    Parameters
    ----------
    rng : numpy.random.Generator
        The only source of randomness.
    exposure : float
        Exposure time in seconds of the noisy ``counts`` image.
    sr : bool
        Compute the 2x super-resolution target (costs one more inverse FFT).
    dn : bool
        Accepted for symmetry; the DN target is always computed (it is needed for the counts).
    kind : str, optional
        Field kind (see ``sky.FIELD_KINDS``); random if None.
    sources : bool
        False: a source-free field (no sky emission, no point sources, hence no out-of-time
        events), background only; the random draws are the same as with ``sources=True``, so the
        background, mask and PSF variant match that field's.
    points : bool
        False: the same field without its point sources (the diffuse sky, background, PSF and
        mask of ``points=True``, from the same random draws; its ``dn_target`` is the first's
        minus the point sources' part, their out-of-time events included). With both, a
        counterfactual: what the point sources alone add to an input or an output.
    decompose : bool
        With ``sr``: also return ``sr_diffuse``, the extended emission's part of the SR target
        (one more half-PSF convolution; no random draw, so the other outputs are unchanged).
    halo_points : float
        Mean number of extra point sources that trace the light of the field's clusters and
        galaxies (``sky.draw_sky``; training only). 0 (default) leaves the field as before.

    Returns
    -------
    SimulatedObservation
    """
    if exposure <= 0:
        raise ValueError(f"exposure must be > 0 s, got {exposure}")
    if kind is not None and kind not in FIELD_KINDS:
        raise ValueError(f"kind must be one of {sorted(FIELD_KINDS)}, got {kind!r}")
    geo = _geometry()
    sky = draw_sky(rng, kind, halo_points=halo_points)
    if not sources:
        sky.image = np.zeros_like(sky.image)
    if not (sources and points):
        sky.points_rate = np.zeros_like(sky.points_rate)

    # --- sky through the telescope (2x grid)
    img2 = sky.image.copy()
    diff2 = sky.image * geo["vig2"] if (sr and decompose) else None
    iy = np.clip(np.rint(sky.points_yx[:, 0]).astype(int), 0, img2.shape[0] - 1)
    ix = np.clip(np.rint(sky.points_yx[:, 1]).astype(int), 0, img2.shape[1] - 1)
    obs_rate = sky.points_rate * geo["vig2"][iy, ix]
    piled = obs_rate > PILEUP_RATE
    stamped = ~piled & (obs_rate > STAMP_RATE)
    faint = ~piled & ~stamped
    _deposit_points(img2, sky.points_yx[faint], sky.points_rate[faint])
    img2 *= geo["vig2"]
    variant = int(rng.choice(len(PSF_VARIANTS), p=PSF_VARIANT_P))
    escale = int(rng.choice(len(ELONGATION_SCALES), p=ELONGATION_P))
    ker = _kernels(variant)
    full2, half2 = _convolve(geo, ker, img2, sr)
    _stamped_sources((variant, escale), sky.points_yx[stamped], obs_rate[stamped], full2, half2)
    pile = _piled_sources(geo, (variant, escale), sky.points_yx[piled], sky.points_rate[piled],
                          full2, half2)
    full2 *= geo["fov2"]
    src1 = _rebin2(full2)

    # --- mask: CCDs, corners or not, bad columns
    corners = bool(rng.random() < 0.8)
    mask = (geo["mask_corners"] if corners else geo["mask_nocorners"]).copy()
    badcols = _bad_columns(rng, geo)
    for h, c, wdt in badcols:
        mask[geo["halves"][h], c:c + wdt] = False

    # --- out-of-time events: a fraction of each column's source counts spread along the CCD
    oot = np.zeros_like(src1)
    for rows in geo["halves"]:
        colsum = src1[rows].sum(axis=0)
        oot[rows] += (OOT_FRACTION * colsum / rows.sum())[None, :]
    oot *= geo["live1"]

    # --- background (counts/s per 4" pixel)
    p_fac = float(np.exp(rng.uniform(np.log(0.5), np.log(3.0))))
    particle = PARTICLE_RATE * p_fac
    cosmic = COSMIC_RATE * float(np.exp(rng.normal(0.0, 0.3)))
    sp = PARTICLE_RATE * float(rng.exponential(0.4)) if rng.random() < 0.6 else 0.0
    fov1 = geo["fov1"]
    tfov1 = geo["tfov1"]
    vig1 = geo["vig1"]
    vig_sp = 0.4 + 0.6 * vig1  # soft protons: flatter than the photon vignetting
    bkg_sky = cosmic * vig1 + sp * vig_sp
    # corners: 0.6-1x the background 10-15' off axis (issue 3; real: W49B 0.70, M 51 0.95)
    outer = fov1 & mask & (geo["theta1"] >= 10) & (geo["theta1"] < 15)
    infield_mean = float(particle + bkg_sky[outer].mean())
    corner_ratio = float(rng.uniform(0.6, 1.0))
    corner_level = max(corner_ratio * infield_mean, particle)
    # corners: their own level; sky photons fade in over the field-of-view edge
    extra = corner_level - particle
    bkg = (particle + bkg_sky * tfov1 + extra * (1 - tfov1)).astype(np.float32)
    # corner rows at the outer CCD edges: extra events in the rows next to the excluded edge
    # rows, fewer in the outermost row (see CORNER_EDGE_ROWS)
    if rng.random() < 0.85:
        edge_excess = float(rng.uniform(*CORNER_EDGE_EXCESS))
        outer_row = float(rng.uniform(0.55, 0.95))
    else:
        edge_excess, outer_row = 0.0, 0.2
    corner = ~fov1 & geo["live1"]
    edge = np.zeros_like(bkg)  # added after the partial-coverage factors
    for r, f in CORNER_EDGE_ROWS.items():
        edge[r, corner[r]] = np.float32(f * edge_excess)
    for r in CORNER_OUTER_ROWS:
        bkg[r, corner[r]] *= np.float32(outer_row)
    bkg *= geo["live1"]
    # partially covered columns/rows next to CCD gaps collect fewer events of every kind
    cov = geo["coverage"] * mask
    bkg_rate = ((bkg + oot) * cov + edge * mask).astype(np.float32)

    dn_target = ((src1 + oot + bkg) * cov + edge * mask).astype(np.float32)
    counts = rng.poisson(dn_target.astype(np.float64) * exposure).astype(np.float32)

    sr_target = sr_diffuse = None
    if sr:
        cov2 = np.repeat(np.repeat(cov, 2, axis=0), 2, axis=1)  # mask and partial coverage
        sr_target = (half2 * geo["fov2"] * cov2).astype(np.float32)
        if diff2 is not None:
            # same zones and kernels, so the points' part sr_target - sr_diffuse is >= 0 up to
            # float rounding (clipped)
            hd = _convolve(geo, ker, diff2, True, want_full=False)[1]
            sr_diffuse = np.minimum(hd * geo["fov2"] * cov2, sr_target).astype(np.float32)

    # point sources with > 40 expected counts after vignetting (none when sources=False)
    obs_counts = obs_rate * exposure
    bright = np.flatnonzero(obs_counts > 40)
    meta = {
        "sim_version": SIM_VERSION, "kind": sky.kind if sources else "empty",
        "exposure": float(exposure),
        "particle_rate": particle, "cosmic_rate": cosmic, "soft_proton_rate": sp,
        "corner_rate": corner_level, "corner_edge_excess": edge_excess,
        "corner_ratio": corner_ratio, "infield_bkg_mean": infield_mean,
        "corners": corners, "bad_columns": badcols, "psf_zones_arcmin": _ZONES_ARCMIN,
        "psf_params": ker["psf_params"], "psf_variant": PSF_VARIANTS[variant],
        "psf_elongation_scale": ELONGATION_SCALES[escale], "n_stamped": int(stamped.sum()),
        "n_points": int(sky.points_rate.size),
        "components": sky.meta["components"], "piled_up": pile, "agn_norm": sky.meta["agn_norm"],
        # point sources with > 40 expected counts: 1x pixel coordinates (0-based y, x), 2x pixel
        # (y2, x2), on-axis rate (counts/s), vignetting at the source, expected counts, piled up
        # or not (their PSF stamps: ``source_kernels``)
        "sources": [{"y": (np.rint(sky.points_yx[i, 0]) + 0.5) / 2 - 0.5,
                     "x": (np.rint(sky.points_yx[i, 1]) + 0.5) / 2 - 0.5,
                     "y2": int(iy[i]), "x2": int(ix[i]),
                     "rate": float(sky.points_rate[i]),
                     "vignetting": float(geo["vig2"][iy[i], ix[i]]),
                     "counts": float(obs_counts[i]), "piled": bool(piled[i])}
                    for i in bright],
    }
    return SimulatedObservation(counts=counts, exposure=float(exposure), mask=mask,
                                dn_target=dn_target, sr_target=sr_target, bkg_rate=bkg_rate,
                                meta=meta, sr_diffuse=sr_diffuse)
