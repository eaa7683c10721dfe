"""EPIC-pn point-spread function (King profile) for the image simulator.

The King profile ``[1 + (r/rc)^2]^(-alpha)`` with rc ~ 5.4", alpha ~ 1.55 (FWHM ~ 8.1") was
measured on bright isolated sources in the real images (reference sheet section 5). Off axis the
core widens slowly (rc = RC0 + RC_SLOPE theta, an assumption: the real sources measured span
4-14') and the wings get shallower: alpha = ALPHA0 - ALPHA_SLOPE theta, with the theta coefficient
0.012 per arcmin of the pn CCF PSF model (XRT3_XPSF, reference sheet section 5). Since simulator
0.13.0; before, alpha was 1.55 everywhere, and real point sources 9-16' off axis held less of
their 40" flux within 10-20" than simulated ones (EEF(10")/EEF(40") 0.56 against 0.63,
EEF(20")/EEF(40") 0.82 against 0.88; ``benchmarks/bench_psf_profiles.py``).
Since 0.14.0 the core is also stretched tangentially off axis (``elongation``,
``ELONGATION_A``; ``king_kernel(..., q, phi)``). ``king_params`` gives the on-sky parameters at
off-axis angle ``theta``. RC0 is set so that
pixel-integrated King fits to simulated sources at 4-14' give rc ~ 5.4" as on the real ones.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["king_params", "king_fwhm", "king_eef", "king_kernel", "elongation", "RC0", "RC_SLOPE",
           "ALPHA0", "ALPHA_SLOPE", "ELONGATION_A"]

#: Core radius on axis (arcsec), its growth per arcmin off axis, the slope on axis and its
#: decrease per arcmin off axis.
RC0 = 4.9
RC_SLOPE = 0.07
ALPHA0 = 1.55
ALPHA_SLOPE = 0.012
#: Off-axis astigmatism: the core is stretched tangentially (perpendicular to the direction to
#: the optical axis) and squeezed radially, keeping its area: core radii rc sqrt(q) and rc / sqrt(q)
#: with axis ratio q = 1 + ELONGATION_A theta^2 (theta in arcmin; aberrations of this kind grow as
#: theta^2). Since simulator 0.14.0. Calibrated so that the simulated sources show the
#: tangential/radial ratio of Gaussian-weighted second moments measured on the 9 bright isolated
#: real sources at 8.6-15.6' (1.16-1.97, every one elongated tangentially;
#: ``benchmarks/bench_psf_profiles.py``). The pn CCF describes the same effect (reference sheet
#: section 5: "off-axis the PSF elongates"); before 0.14.0 the simulated PSF was circular.
ELONGATION_A = 0.008


def king_params(theta_arcmin):
    """King (rc [arcsec], alpha) at off-axis angle ``theta_arcmin``."""
    t = float(theta_arcmin)
    return RC0 + RC_SLOPE * t, ALPHA0 - ALPHA_SLOPE * t


def king_fwhm(rc, alpha):
    """FWHM of a King profile (same units as ``rc``)."""
    return 2.0 * rc * math.sqrt(2.0 ** (1.0 / alpha) - 1.0)


def king_eef(r, rc, alpha):
    """Encircled-energy fraction of an untruncated King profile within radius ``r``."""
    return 1.0 - (1.0 + (np.asarray(r, float) / rc) ** 2) ** (1.0 - alpha)


def elongation(theta_arcmin, scale=1.0):
    """Tangential/radial core axis ratio q at off-axis angle ``theta_arcmin`` (``scale`` x A)."""
    return 1.0 + scale * ELONGATION_A * float(theta_arcmin) ** 2


def king_kernel(rc_pix, alpha, radius, oversample=5, *, q=1.0, phi=0.0):
    """Pixel-integrated King kernel, normalised to unit sum, shape (2 radius + 1,)^2.

    Parameters
    ----------
    rc_pix : float
        Core radius in pixels of the kernel grid (geometric mean of the two axes).
    alpha : float
        King slope.
    radius : int
        Kernel half-size in pixels (the kernel is truncated there and renormalised).
    oversample : int
        Sub-pixels per pixel and axis used to integrate over the pixel area.
    q : float
        Axis ratio (>= 1): core radius ``rc sqrt(q)`` along the direction ``phi + 90 deg`` (the
        tangential one) and ``rc / sqrt(q)`` along ``phi`` (the radial one).
    phi : float
        Angle (radians) of the radial direction from the +x axis towards +y (array axes).

    Returns
    -------
    ndarray, float64
    """
    n = 2 * radius + 1
    o = oversample
    c = (np.arange(n * o) + 0.5) / o - (radius + 0.5)
    if q == 1.0:
        r2 = c[:, None] ** 2 + c[None, :] ** 2
    else:
        cy, cx = c[:, None], c[None, :]
        dr = cx * math.cos(phi) + cy * math.sin(phi)
        dt = -cx * math.sin(phi) + cy * math.cos(phi)
        r2 = dr * dr * q + dt * dt / q
    k = (1.0 + r2 / rc_pix ** 2) ** (-alpha)
    k = k.reshape(n, o, n, o).sum(axis=(1, 3))
    return k / k.sum()
