"""EPIC-pn point-spread function (King profile) for the image simulator.

The King profile ``[1 + (r/rc)^2]^(-alpha)`` with rc ~ 5.4", alpha ~ 1.55 (FWHM ~ 8.1") was
measured on bright isolated sources in the real images (reference sheet section 5). Off axis the
core widens slowly (rc = RC0 + RC_SLOPE theta, an assumption: the real sources measured span
4-14') and the wings get shallower: alpha = ALPHA0 - ALPHA_SLOPE theta, with the theta coefficient
0.012 per arcmin of the pn CCF PSF model (XRT3_XPSF, reference sheet section 5). Since simulator
0.13.0; before, alpha was 1.55 everywhere, and real point sources 9-16' off axis held less of
their 40" flux within 10-20" than simulated ones (EEF(10")/EEF(40") 0.56 against 0.63,
EEF(20")/EEF(40") 0.82 against 0.88; ``benchmarks/bench_psf_profiles.py``).
``king_params`` gives the on-sky parameters at off-axis angle ``theta``. RC0 is set so that
pixel-integrated King fits to simulated sources at 4-14' give rc ~ 5.4" as on the real ones.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["king_params", "king_fwhm", "king_eef", "king_kernel", "RC0", "RC_SLOPE", "ALPHA0",
           "ALPHA_SLOPE"]

#: Core radius on axis (arcsec), its growth per arcmin off axis, the slope on axis and its
#: decrease per arcmin off axis.
RC0 = 4.9
RC_SLOPE = 0.07
ALPHA0 = 1.55
ALPHA_SLOPE = 0.012


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


def king_kernel(rc_pix, alpha, radius, oversample=5):
    """Pixel-integrated King kernel, normalised to unit sum, shape (2 radius + 1,)^2.

    Parameters
    ----------
    rc_pix : float
        Core radius in pixels of the kernel grid.
    alpha : float
        King slope.
    radius : int
        Kernel half-size in pixels (the kernel is truncated there and renormalised).
    oversample : int
        Sub-pixels per pixel and axis used to integrate over the pixel area.

    Returns
    -------
    ndarray, float64
    """
    n = 2 * radius + 1
    o = oversample
    c = (np.arange(n * o) + 0.5) / o - (radius + 0.5)
    r2 = c[:, None] ** 2 + c[None, :] ** 2
    k = (1.0 + r2 / rc_pix ** 2) ** (-alpha)
    k = k.reshape(n, o, n, o).sum(axis=(1, 3))
    return k / k.sum()
