"""Random X-ray sky models for the EPIC-pn image simulator (0.5-2 keV).

The sky is described on the 2x pn grid (2"/pixel, ``detector.pn_grid(scale=2)``, 822 x 806) as

* an extended-emission image (clusters, galaxies, supernova remnants, diffuse fields), in
  counts/s per 2" pixel *on axis* (before vignetting and PSF), and
* a list of point sources (0-based 2x pixel coordinates ``(y, x)`` of the pixel centres and on-axis
  count rates in counts/s).

Everything is drawn from an ``np.random.Generator``; no other randomness is used. Count rates are
EPIC-pn thin/medium filter rates in 0.5-2 keV: a flux of 1e-14 erg/cm2/s gives ``ECF`` = 6.9e-3
counts/s on axis (reference sheet section 5). Point-source fluxes follow the soft-band logN-logS of
Moretti et al. (2003); extended-source brightness ranges span the real images of
``shared/data/real-pn`` (Perseus ~95 counts/s, NGC 1399 ~10, W49B ~4, M51 ~3 including background).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .. import detector

__all__ = [
    "ECF", "FIELD_KINDS", "Sky", "draw_sky", "moretti_n_above", "draw_point_fluxes",
    "gaussian_random_field", "beta_model", "sersic_model", "add_cluster", "add_galaxy",
    "add_snr", "add_filaments", "add_diffuse",
]

#: counts/s per 1e-14 erg/cm2/s on axis (pn, 0.5-2 keV, Gamma 1.7).
ECF = 6.9e-3
#: Field kinds and their default probabilities.
FIELD_KINDS = {
    "blank": 0.30, "cluster": 0.25, "galaxy": 0.12, "snr": 0.12, "diffuse": 0.09,
    "bright_point": 0.12,
}
#: 2x grid used for the sky.
GRID2 = detector.pn_grid(scale=2)
SHAPE2 = GRID2.shape
PIX2_ARCSEC = detector.pixel_size_arcsec(scale=2)


def _det_to_pix2(detx, dety):
    """DET coordinates -> 0-based (y, x) pixel coordinates on the 2x grid."""
    return ((dety - GRID2.y0) / GRID2.step - 0.5, (detx - GRID2.x0) / GRID2.step - 0.5)


#: FoV centre and radius, aimpoint (nominal target) and optical axis on the 2x grid.
FOV_C2 = _det_to_pix2(*detector.FOV_CENTRE_DET)
FOV_R2 = detector.FOV_RADIUS_DET / GRID2.step
AIM_C2 = _det_to_pix2(150.0, -50.0)
AXIS_C2 = _det_to_pix2(*detector.OPTICAL_AXIS_DET)


@dataclass
class Sky:
    """A sky model on the 2x pn grid.

    Attributes
    ----------
    image : ndarray, float32 [822, 806]
        Extended emission, counts/s per 2" pixel on axis (no vignetting, no PSF).
    points_yx : ndarray, float64 [n, 2]
        Point-source positions, 0-based 2x pixel coordinates (y, x).
    points_rate : ndarray, float64 [n]
        Point-source on-axis count rates (counts/s).
    kind : str
        Field kind (one of ``FIELD_KINDS``).
    meta : dict
        Parameters of the drawn components.
    """

    image: np.ndarray
    points_yx: np.ndarray
    points_rate: np.ndarray
    kind: str
    meta: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# point sources


def moretti_n_above(s):
    """Moretti et al. (2003) soft-band N(>S) in deg^-2 for flux ``s`` (erg/cm2/s)."""
    a1, a2, s0, ns = 1.82, 0.60, 1.48e-14, 6150.0
    s = np.asarray(s, float)
    return ns * (2e-15) ** a1 / (s ** a1 + s0 ** (a1 - a2) * s ** a2)


def draw_point_fluxes(rng, area_deg2, s_min=1e-16, s_max=1e-11, norm=1.0):
    """Draw point-source fluxes from the Moretti logN-logS by inverting N(>S) numerically.

    Parameters
    ----------
    rng : numpy.random.Generator
    area_deg2 : float
        Sky area in deg^2.
    s_min, s_max : float
        Flux range (erg/cm2/s).
    norm : float
        Multiplier of the source density (cosmic variance).

    Returns
    -------
    ndarray
        Fluxes (erg/cm2/s).
    """
    n_tot = (moretti_n_above(s_min) - moretti_n_above(s_max)) * area_deg2 * norm
    n = rng.poisson(n_tot)
    logs = np.linspace(math.log10(s_min), math.log10(s_max), 512)
    cum = moretti_n_above(10 ** logs)
    u = (cum[0] - cum) / (cum[0] - cum[-1])  # increasing 0 -> 1
    return 10 ** np.interp(rng.random(n), u, logs)


def _uniform_in_disc(rng, n, cy, cx, r):
    rr = r * np.sqrt(rng.random(n))
    ph = rng.random(n) * 2 * np.pi
    return np.stack([cy + rr * np.sin(ph), cx + rr * np.cos(ph)], axis=1)


# --------------------------------------------------------------------------------------------
# extended components (all on the 2x grid, evaluated in a stamp around the centre)


def _stamp(cy, cx, half):
    """Slices and coordinate offsets of a square stamp of half-size ``half`` (2x pixels)."""
    ny, nx = SHAPE2
    y0, y1 = max(int(cy - half), 0), min(int(cy + half) + 1, ny)
    x0, x1 = max(int(cx - half), 0), min(int(cx + half) + 1, nx)
    if y1 <= y0 or x1 <= x0:
        return None
    yy = (np.arange(y0, y1, dtype=np.float32) - np.float32(cy))[:, None]
    xx = (np.arange(x0, x1, dtype=np.float32) - np.float32(cx))[None, :]
    return (slice(y0, y1), slice(x0, x1)), yy, xx


def _elliptical_r2(yy, xx, q, theta):
    """Squared elliptical radius (major-axis units) with axis ratio ``q`` and angle ``theta``."""
    c, s = np.float32(math.cos(theta)), np.float32(math.sin(theta))
    u = xx * c + yy * s
    v = -xx * s + yy * c
    return u * u + (v * v) / np.float32(q * q)


def beta_model(yy, xx, rc, beta, q=1.0, theta=0.0):
    """Elliptical beta model surface brightness (unnormalised): [1 + (r/rc)^2]^(0.5 - 3 beta)."""
    r2 = _elliptical_r2(yy, xx, q, theta)
    return (1.0 + r2 / np.float32(rc * rc)) ** np.float32(0.5 - 3.0 * beta)


def sersic_model(yy, xx, re, n, q=1.0, theta=0.0):
    """Elliptical Sersic profile exp(-b_n ((r/re)^(1/n) - 1)) (unnormalised)."""
    bn = 2.0 * n - 1.0 / 3.0 + 0.009876 / n
    r = np.sqrt(_elliptical_r2(yy, xx, q, theta)) / np.float32(re)
    return np.exp(-np.float32(bn) * (r ** np.float32(1.0 / n) - 1.0)).astype(np.float32)


def _add_component(img, cy, cx, half, profile, rate):
    """Evaluate ``profile(yy, xx)`` in a stamp, normalise to ``rate`` counts/s and add it."""
    st = _stamp(cy, cx, half)
    if st is None or rate <= 0:
        return 0.0
    sl, yy, xx = st
    p = profile(yy, xx).astype(np.float32)
    tot = float(p.sum())
    if not np.isfinite(tot) or tot <= 0:
        return 0.0
    img[sl] += p * np.float32(rate / tot)
    return rate


def gaussian_random_field(rng, shape, slope, coarse=4):
    """Zero-mean, unit-variance Gaussian random field with power spectrum P(k) ~ k^-slope.

    Generated on a grid ``coarse`` times coarser than ``shape`` and upsampled bilinearly (the
    fluctuations of interest are larger than a few pixels).

    Parameters
    ----------
    rng : numpy.random.Generator
    shape : tuple of int
    slope : float
        Power-spectrum index (2-4 typical for turbulent gas).
    coarse : int
        Down-sampling factor of the generation grid.

    Returns
    -------
    ndarray, float32, ``shape``
    """
    cs = (max(shape[0] // coarse, 8), max(shape[1] // coarse, 8))
    ky = np.fft.fftfreq(cs[0])[:, None]
    kx = np.fft.rfftfreq(cs[1])[None, :]
    k = np.sqrt(ky ** 2 + kx ** 2)
    k[0, 0] = np.inf
    amp = k ** (-slope / 2.0)
    nshape = (cs[0], kx.shape[1])
    noise = rng.standard_normal(nshape) + 1j * rng.standard_normal(nshape)
    f = np.fft.irfft2(noise * amp, s=cs)
    f = (f - f.mean()) / (f.std() + 1e-12)
    z = ndimage.zoom(f.astype(np.float32), (shape[0] / cs[0], shape[1] / cs[1]), order=1)
    out = np.zeros(shape, np.float32)
    out[:z.shape[0], :z.shape[1]] = z[:shape[0], :shape[1]]
    return out


def _lognormal_modulation(rng, shape, sigma, slope):
    g = gaussian_random_field(rng, shape, slope)
    return np.exp(np.float32(sigma) * g - np.float32(sigma * sigma / 2))


def _loguniform(rng, lo, hi):
    return float(10 ** rng.uniform(math.log10(lo), math.log10(hi)))


def _near_aim(rng, max_arcmin):
    r = max_arcmin * 60.0 / PIX2_ARCSEC * math.sqrt(rng.random())
    ph = rng.uniform(0, 2 * math.pi)
    return AIM_C2[0] + r * math.sin(ph), AIM_C2[1] + r * math.cos(ph)


def _arcsec(a):
    return a / PIX2_ARCSEC


def add_cluster(rng, img, rate=None, centre=None, small=False):
    """Galaxy cluster: elliptical beta model, optional cool core, substructure, non-beta shape.

    Returns a dict of the drawn parameters.
    """
    if rate is None:
        rate = float(np.clip(10 ** rng.normal(0.5, 0.75), 0.03, 150.0))
    cy, cx = centre if centre is not None else _near_aim(rng, 4.0 if rng.random() < 0.8 else 11.0)
    # brighter clusters are nearer, hence larger: core radius grows with the count rate
    grow = max(1.0, rate / 2.0) ** 0.3
    rc = _loguniform(rng, 8.0, 40.0) if small else min(_loguniform(rng, 15.0, 150.0) * grow, 400.0)
    beta = rng.uniform(0.5, 0.9)
    q = rng.uniform(0.6, 1.0)
    th = rng.uniform(0, math.pi)
    half = min(_arcsec(rc) * 25, 700)
    f_cc = rng.uniform(0.1, 0.5) if rng.random() < 0.5 else 0.0
    f_sub = 0.0
    # non-beta shape: a lognormal modulation of the main body
    mod = None
    if rng.random() < 0.5:
        mod = _lognormal_modulation(rng, SHAPE2, rng.uniform(0.1, 0.5), rng.uniform(2.5, 4.0))
    main = rate * (1 - f_cc)
    subs = []
    if rng.random() < 0.5:
        for _ in range(rng.integers(1, 4)):
            fs = rng.uniform(0.03, 0.15)
            off = _arcsec(rc) * rng.uniform(0.5, 4.0)
            ph = rng.uniform(0, 2 * math.pi)
            subs.append((cy + off * math.sin(ph), cx + off * math.cos(ph), fs))
            f_sub += fs
    main *= max(1 - f_sub, 0.3)
    rcp, hf = _arcsec(rc), half
    if mod is None:
        _add_component(img, cy, cx, hf, lambda y, x: beta_model(y, x, rcp, beta, q, th), main)
    else:
        st = _stamp(cy, cx, hf)
        if st is not None:
            sl, yy, xx = st
            p = beta_model(yy, xx, rcp, beta, q, th) * mod[sl]
            img[sl] += p * np.float32(main / p.sum())
    if f_cc > 0:
        rcc = max(rcp * rng.uniform(0.1, 0.35), _arcsec(8.0 * grow))
        bcc = rng.uniform(0.6, 0.9)
        _add_component(img, cy, cx, min(rcc * 20, 300),
                       lambda y, x: beta_model(y, x, rcc, bcc, q, th), rate * f_cc)
    for sy, sx, fs in subs:
        rs = rcp * rng.uniform(0.1, 0.5)
        bs = rng.uniform(0.55, 0.9)
        qs, ts = rng.uniform(0.5, 1.0), rng.uniform(0, math.pi)
        _add_component(img, sy, sx, min(rs * 15, 300),
                       lambda y, x: beta_model(y, x, rs, bs, qs, ts), rate * fs)
    return {"type": "cluster", "rate": rate, "y2": cy, "x2": cx, "rc_arcsec": rc, "beta": beta,
            "q": q, "cool_core_frac": f_cc, "n_sub": len(subs), "modulated": mod is not None}


def add_galaxy(rng, img, rate=None, centre=None, large=False):
    """Galaxy: Sersic body (exponential disc to de Vaucouleurs), clumpy when large.

    Point-like parts (nucleus, X-ray binaries) are added by the caller. Returns the parameters.
    """
    if rate is None:
        rate = _loguniform(rng, 0.03, 8.0) if large else _loguniform(rng, 0.002, 0.3)
    cy, cx = centre if centre is not None else _near_aim(rng, 3.0 if large else 13.0)
    re = _loguniform(rng, 30.0, 150.0) if large else _loguniform(rng, 4.0, 30.0)
    n = rng.uniform(0.7, 4.0)
    q = rng.uniform(0.4, 1.0)
    th = rng.uniform(0, math.pi)
    rep = _arcsec(re)
    arms = False
    hf = min(rep * (8 if n < 2 else 15), 600)
    if large and rng.random() < 0.7:
        st = _stamp(cy, cx, hf)
        if st is not None:
            sl, yy, xx = st
            mod = _lognormal_modulation(rng, SHAPE2, rng.uniform(0.3, 0.8), rng.uniform(2.0, 3.0))
            p = sersic_model(yy, xx, rep, n, q, th) * mod[sl]
            if n < 2 and rng.random() < 0.6:  # disc: logarithmic spiral arms
                p = p * _spiral_arms(rng, yy, xx, rep, q, th)
                arms = True
            img[sl] += p * np.float32(rate / p.sum())
    else:
        _add_component(img, cy, cx, hf, lambda y, x: sersic_model(y, x, rep, n, q, th), rate)
    return {"type": "galaxy", "rate": rate, "y2": cy, "x2": cx, "re_arcsec": re, "n": n, "q": q,
            "spiral": arms}


def _spiral_arms(rng, yy, xx, re, q, theta):
    """Multiplicative m-armed logarithmic spiral pattern (in the disc plane), float32."""
    c, s = math.cos(theta), math.sin(theta)
    u = xx * c + yy * s
    v = (-xx * s + yy * c) / q
    r = np.sqrt(u * u + v * v) / np.float32(re) + np.float32(1e-3)
    phi = np.arctan2(v, u)
    m = int(rng.choice([2, 2, 3, 4]))
    pitch = math.radians(rng.uniform(10.0, 30.0))
    amp = rng.uniform(0.5, 0.9)
    wave = np.cos(m * (phi - np.log(r) / math.tan(pitch)) + rng.uniform(0, 2 * math.pi))
    # sharpen the arms and fade them in beyond the bulge
    arms = (0.5 * (1 + wave)) ** 3
    fade = np.clip(r / 0.3, 0, 1)
    return (1 - amp * fade + amp * fade * 2.5 * arms).astype(np.float32)


def add_filaments(rng, img, cy, cx, radius, n, rate):
    """Thin curved filaments near a circle of ``radius`` (2x px) about (cy, cx).

    Each filament is a smooth random curve (tangential start, about the shell's curvature with a
    random wander), 0.2-1 radius
    long and 2-8" wide (Gaussian profile), carrying an equal share of ``rate`` counts/s.
    """
    if n <= 0 or rate <= 0:
        return
    ny, nx = SHAPE2
    for _ in range(n):
        ph = rng.uniform(0, 2 * math.pi)
        r0 = radius * rng.uniform(0.6, 1.1)
        y, x = cy + r0 * math.sin(ph), cx + r0 * math.cos(ph)
        ang = ph + math.pi / 2 + rng.normal(0, 0.4)
        npt = max(int(radius * rng.uniform(0.2, 1.0) / 0.5), 4)
        # follow the shell's curvature (step 0.5 px), with a random wander
        curv = 0.5 / max(r0, 1.0) * rng.uniform(0.5, 1.5) * rng.choice([-1.0, 1.0])
        turn = np.cumsum(curv + rng.normal(0, 0.06, npt))
        ys = y + 0.5 * np.cumsum(np.sin(ang + turn))
        xs = x + 0.5 * np.cumsum(np.cos(ang + turn))
        sig = _arcsec(rng.uniform(2.0, 8.0))
        pad = int(4 * sig) + 2
        y0, y1 = max(int(ys.min()) - pad, 0), min(int(ys.max()) + pad + 1, ny)
        x0, x1 = max(int(xs.min()) - pad, 0), min(int(xs.max()) + pad + 1, nx)
        if y1 <= y0 or x1 <= x0:
            continue
        st = np.zeros((y1 - y0, x1 - x0), np.float32)
        iy, ix = np.rint(ys).astype(int) - y0, np.rint(xs).astype(int) - x0
        ok = (iy >= 0) & (iy < st.shape[0]) & (ix >= 0) & (ix < st.shape[1])
        # brightness varies along the filament
        w = np.exp(np.cumsum(rng.normal(0, 0.05, npt))).astype(np.float32)
        np.add.at(st, (iy[ok], ix[ok]), w[ok])
        st = ndimage.gaussian_filter(st, sig)
        tot = float(st.sum())
        if tot > 0:
            img[y0:y1, x0:x1] += st * np.float32(rate / n / tot)


def add_snr(rng, img, rate=None, centre=None):
    """Supernova remnant: (partial) limb-brightened shell with filaments, or centre-filled."""
    if rate is None:
        rate = float(np.clip(10 ** rng.normal(0.5, 0.6), 0.1, 150.0))
    cy, cx = centre if centre is not None else _near_aim(rng, 3.0)
    radius = _arcsec(_loguniform(rng, 40.0, 600.0))
    q = rng.uniform(0.7, 1.0)
    th = rng.uniform(0, math.pi)
    width = radius * rng.uniform(0.05, 0.3)
    filled = rng.random() < 0.3
    st = _stamp(cy, cx, radius * 1.6 + 10)
    if st is None:
        return {"type": "snr", "rate": 0.0}
    sl, yy, xx = st
    r = np.sqrt(_elliptical_r2(yy, xx, q, th))
    shell = np.exp(-0.5 * ((r - radius) / width) ** 2) * (r < radius * 1.5)
    # limb brightening inside the shell
    inner = np.where(r < radius, np.sqrt(np.clip(1 - (r / radius) ** 2, 0, 1)), 0)
    p = shell + inner * rng.uniform(0.05, 0.4)
    if filled:
        p = p * rng.uniform(0.1, 0.5) + np.exp(-0.5 * (r / (radius * 0.5)) ** 2)
    # brightness asymmetry and filaments: a steep lognormal field (large scales) times a
    # shallow one (thin structures)
    mod = _lognormal_modulation(rng, SHAPE2, rng.uniform(0.4, 1.0), 3.5)
    fil = _lognormal_modulation(rng, SHAPE2, rng.uniform(0.3, 0.9), 1.8)
    p = (p * mod[sl] * fil[sl]).astype(np.float32)
    f_fil = rng.uniform(0.1, 0.4) if rng.random() < 0.5 else 0.0
    img[sl] += p * np.float32(rate * (1 - f_fil) / p.sum())
    nfil = int(rng.integers(2, 9)) if f_fil else 0
    add_filaments(rng, img, cy, cx, radius, nfil, rate * f_fil)
    return {"type": "snr", "rate": rate, "y2": cy, "x2": cx,
            "radius_arcsec": radius * PIX2_ARCSEC, "filled": filled, "n_filaments": nfil}


def add_diffuse(rng, img, level):
    """Diffuse emission over the field with power-law (lognormal GRF) fluctuations.

    ``level`` is the mean surface brightness in counts/s per 2" pixel on axis.
    """
    slope = rng.uniform(2.0, 4.0)
    sigma = rng.uniform(0.2, 1.0)
    mod = _lognormal_modulation(rng, SHAPE2, sigma, slope)
    # a large-scale gradient as well
    gy, gx = rng.normal(0, 0.3, 2)
    yy = np.linspace(-1, 1, SHAPE2[0], dtype=np.float32)[:, None]
    xx = np.linspace(-1, 1, SHAPE2[1], dtype=np.float32)[None, :]
    grad = np.clip(1 + gy * yy + gx * xx, 0.2, None)
    img += np.float32(level) * mod * grad
    return {"type": "diffuse", "level": level, "slope": slope, "sigma": sigma}


# --------------------------------------------------------------------------------------------
# fields


def _field_points(rng, norm):
    area = math.pi * (FOV_R2 * PIX2_ARCSEC / 3600.0) ** 2
    flux = draw_point_fluxes(rng, area, s_min=1e-16, s_max=1e-11, norm=norm)
    rate = flux / 1e-14 * ECF * np.exp(rng.normal(0, 0.25, flux.size))
    yx = _uniform_in_disc(rng, flux.size, FOV_C2[0], FOV_C2[1], FOV_R2 + 4)
    return yx, rate


#: ``draw_sky(halo_points=)``: on-axis count-rate range (counts/s) of the sources that trace
#: the light of clusters and galaxies (about 4-300 counts in 20 ks).
HALO_POINT_RATES = (2e-4, 1.5e-2)


def _halo_points(rng, light, mean):
    """Positions (2x pixels, [n, 2]) and rates of ``draw_sky(halo_points=)``'s sources."""
    w = np.sqrt(np.maximum(light, 0.0, dtype=np.float64)).ravel()
    n = int(rng.poisson(mean)) if w.sum() > 0 else 0
    if n == 0:
        return np.zeros((0, 2)), np.zeros(0)
    idx = rng.choice(w.size, size=n, p=w / w.sum())
    yx = np.stack(np.unravel_index(idx, light.shape), axis=1) + rng.random((n, 2)) - 0.5
    lo, hi = HALO_POINT_RATES
    return yx, np.exp(rng.uniform(np.log(lo), np.log(hi), n))


def draw_sky(rng, kind=None, halo_points=0.0):
    """Draw a random sky on the 2x grid.

    Parameters
    ----------
    rng : numpy.random.Generator
    kind : str, optional
        One of ``FIELD_KINDS``; drawn with the default probabilities if None.
    halo_points : float
        Mean number of extra point sources that trace the emission of the field's clusters and
        galaxies (low-mass X-ray binaries in globular clusters, member galaxies, AGN seen
        through a halo), placed with a density proportional to the square root of that surface
        brightness (so halos get them, not only cores), rates log-uniform in
        ``HALO_POINT_RATES``. Training uses them: at the default density a faint source on a
        bright halo is rare, and a network learns to read every compact excess there as a
        knot. 0 (default) draws nothing more, so the rest of the random stream is unchanged.

    Returns
    -------
    Sky
    """
    if kind is None:
        kinds = list(FIELD_KINDS)
        p = np.array([FIELD_KINDS[k] for k in kinds])
        kind = kinds[rng.choice(len(kinds), p=p / p.sum())]
    if kind not in FIELD_KINDS:
        raise ValueError(f"kind must be one of {sorted(FIELD_KINDS)}, got {kind!r}")
    img = np.zeros(SHAPE2, np.float32)
    comps = []
    norm = float(np.exp(rng.normal(0, 0.2)))
    if rng.random() < 0.15:  # Galactic-plane field: extragalactic sources absorbed (cf. W49B)
        norm *= rng.uniform(0.1, 0.5)
    yx, rate = _field_points(rng, norm)
    pts_yx, pts_rate = [yx], [rate]

    def add_points(yx_, rate_):
        pts_yx.append(np.atleast_2d(np.asarray(yx_, float)))
        pts_rate.append(np.atleast_1d(np.asarray(rate_, float)))

    if kind == "cluster":
        comps.append(add_cluster(rng, img))
        if rng.random() < 0.3:  # merger / second cluster
            comps.append(add_cluster(rng, img, rate=comps[0]["rate"] * rng.uniform(0.05, 0.5)))
        # member galaxies / central AGN
        n = rng.integers(0, 8)
        c = (comps[0]["y2"], comps[0]["x2"])
        add_points(_uniform_in_disc(rng, n, c[0], c[1], _arcsec(240)),
                   _loguniform(rng, 1e-4, 3e-3) * np.ones(n))
        if rng.random() < 0.2:
            add_points([c], [comps[0]["rate"] * rng.uniform(0.005, 0.05)])
    elif kind == "galaxy":
        comps.append(add_galaxy(rng, img, large=True))
        g = comps[0]
        n = rng.poisson(8)  # X-ray binaries, ULXs
        re = _arcsec(g["re_arcsec"])
        add_points(_uniform_in_disc(rng, n, g["y2"], g["x2"], 2.5 * re),
                   10 ** rng.uniform(-4, -1.7, n))
        if rng.random() < 0.6:  # nucleus
            add_points([(g["y2"], g["x2"])], [_loguniform(rng, 1e-3, 0.3)])
        if rng.random() < 0.3:  # companion
            comps.append(add_galaxy(rng, img, rate=g["rate"] * rng.uniform(0.05, 0.4),
                                    centre=(g["y2"] + re * rng.uniform(-3, 3),
                                            g["x2"] + re * rng.uniform(-3, 3))))
    elif kind == "snr":
        comps.append(add_snr(rng, img))
        if rng.random() < 0.4:  # a compact object
            add_points([(comps[0]["y2"] + rng.normal(0, 10), comps[0]["x2"] + rng.normal(0, 10))],
                       [_loguniform(rng, 3e-3, 0.5)])
    elif kind == "diffuse":
        comps.append(add_diffuse(rng, img, _loguniform(rng, 2e-6, 1e-4) / 4.0))
    elif kind == "bright_point":
        r = _loguniform(rng, 0.1, 20.0)
        add_points([_near_aim(rng, 1.0)], [r])
        comps.append({"type": "bright_point", "rate": r})
    # light that halo sources do not trace (remnants, Galactic diffuse emission)
    untraced = img.copy() if halo_points and kind in ("snr", "diffuse") else None
    # background groups and field galaxies in any field
    if rng.random() < 0.3:
        comps.append(add_cluster(rng, img, rate=_loguniform(rng, 0.005, 0.1), small=True,
                                 centre=_uniform_in_disc(rng, 1, FOV_C2[0], FOV_C2[1],
                                                         FOV_R2 * 0.9)[0]))
    for _ in range(rng.poisson(0.7)):
        comps.append(add_galaxy(rng, img))
    # occasional very bright serendipitous sources
    nb = rng.poisson(0.25)
    if nb:
        add_points(_uniform_in_disc(rng, nb, FOV_C2[0], FOV_C2[1], FOV_R2),
                   10 ** rng.uniform(-1.5, 0.8, nb))
    if halo_points:
        add_points(*_halo_points(rng, img if untraced is None else img - untraced,
                                 halo_points))
    return Sky(image=img, points_yx=np.concatenate(pts_yx), points_rate=np.concatenate(pts_rate),
               kind=kind, meta={"components": comps, "agn_norm": norm})
