"""The 68 % interval of a prediction's rate summed over a sky aperture (the aperture rule).

A prediction's ``LO68``/``HI68`` bound each pixel's rate. A sum over many pixels is not bounded by
the sum of the pixels' bounds (their errors are correlated, and partly cancel): the outputs carry
``APERSCAL``, calibrated on simulated 20" apertures, and the interval of a sum is
``sum(rate) - APERSCAL x sum(rate - LO68)`` to ``sum(rate) + APERSCAL x sum(HI68 - rate)``
(``docs/outputs.md``). :func:`aperture_interval` applies it to a circle on the sky; ``xmm-enhance
aperture`` prints it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError

__all__ = ["CALIBRATED_RADIUS_ARCSEC", "ApertureSum", "aperture_interval", "read_prediction"]

#: The aperture radius the rule was calibrated for: the project's "20\" apertures" have a radius
#: of 20" (``benchmarks/bench_calibration.py``; the same apertures as ``PTFREE``'s).
CALIBRATED_RADIUS_ARCSEC = 20.0


@dataclass
class ApertureSum:
    """A prediction's rate summed over a set of pixels, with its 68 % interval.

    Attributes
    ----------
    rate, lo68, hi68 : float
        Summed rate and the interval's ends (count/s); ``lo68`` is at least 0.
    counts, counts_lo68, counts_hi68 : float
        The same at the input's exposure (``INEXPO``), in counts.
    npix : int
        Pixels whose centres lie in the aperture, on the image.
    npix_data : int
        Of them, those with data (``HI68 > 0``: not a CCD gap, not off the chips).
    """

    rate: float
    lo68: float
    hi68: float
    counts: float
    counts_lo68: float
    counts_hi68: float
    npix: int
    npix_data: int


def read_prediction(path):
    """(rate, lo68, hi68, celestial WCS, aperture scale, input exposure) of a
    ``*_predict_wcs_<W>.fits.gz`` file: float64 maps; InputError, naming the file and the fix,
    for a file without its ``LO68``/``HI68`` (or ``APERSCAL``) or without a sky WCS."""
    from astropy.io import fits
    from astropy.wcs import WCS

    path = Path(path)
    try:
        with fits.open(path, memmap=False) as h:
            names = [x.name for x in h]
            if "LO68" not in names or "HI68" not in names:
                raise InputError(f"{path}: no LO68/HI68 extensions; give a prediction made by "
                                 "run_inference_on_real.py (*_predict_wcs_SR/DN.fits.gz)")
            rate = np.asarray(h[0].data, np.float64)
            lo = np.asarray(h["LO68"].data, np.float64)
            hi = np.asarray(h["HI68"].data, np.float64)
            scale = h["LO68"].header.get("APERSCAL")
            exposure = h[0].header.get("INEXPO", h[0].header.get("EXPOSURE"))
            wcs = WCS(h[0].header).celestial
    except OSError as exc:
        raise InputError(f"{path}: cannot be read as FITS ({exc}); give a prediction file "
                         "written by run_inference_on_real.py") from None
    if rate.ndim != 2 or lo.shape != rate.shape or hi.shape != rate.shape:
        raise InputError(f"{path}: the primary image and LO68/HI68 differ in shape; give a "
                         "prediction file written by run_inference_on_real.py")
    if scale is None:
        raise InputError(f"{path}: LO68 has no APERSCAL (a model without the aperture "
                         "calibration); the interval of a sum is not known for it")
    if not wcs.has_celestial or "RA" not in str(wcs.wcs.ctype[0]).upper():
        raise InputError(f"{path}: no RA/Dec WCS; an aperture on the sky needs one")
    return rate, lo, hi, wcs, float(scale), (float(exposure) if exposure else float("nan"))


def _disc(shape, y, x, radius_px):
    """Pixels whose centres lie within ``radius_px`` of (y, x) (0-based), bool [ny, nx]."""
    yy, xx = np.ogrid[:shape[0], :shape[1]]
    return (yy - y) ** 2 + (xx - x) ** 2 <= radius_px ** 2


def _sum(rate, lo, hi, sel, scale, exposure) -> ApertureSum:
    s = float(rate[sel].sum())
    low = max(0.0, s - scale * float((rate - lo)[sel].sum()))
    high = s + scale * float((hi - rate)[sel].sum())
    return ApertureSum(s, low, high, s * exposure, low * exposure, high * exposure,
                       int(sel.sum()), int((sel & (hi > 0)).sum()))


def _pixel_of(wcs, ra, dec, shape, path):
    x, y = wcs.all_world2pix([[float(ra), float(dec)]], 0)[0]
    if not (np.isfinite(x) and np.isfinite(y)
            and -0.5 <= x < shape[1] - 0.5 and -0.5 <= y < shape[0] - 0.5):
        raise InputError(f"{path}: RA {ra:g}, Dec {dec:g} is off the image; give a position "
                         "inside it")
    return float(y), float(x)


def _pixel_arcsec(wcs) -> float:
    return float(np.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix)))) * 3600.0


def aperture_interval(path, ra: float, dec: float,
                      radius_arcsec: float = CALIBRATED_RADIUS_ARCSEC) -> ApertureSum:
    """The rate of prediction ``path`` summed over a circle of ``radius_arcsec`` round
    (``ra``, ``dec``) (deg, in the file's frame), with its 68 % interval by the aperture rule.

    The rule is calibrated for 20" apertures (radius 20", the default); other radii get the
    same rule, uncalibrated. For an SR prediction the rate is the sky's, background removed;
    for DN it includes the background.
    """
    if not (math.isfinite(radius_arcsec) and radius_arcsec > 0):
        raise ValueError(f"radius_arcsec: must be > 0, got {radius_arcsec!r}")
    rate, lo, hi, wcs, scale, exposure = read_prediction(path)
    y, x = _pixel_of(wcs, ra, dec, rate.shape, path)
    sel = _disc(rate.shape, y, x, radius_arcsec / _pixel_arcsec(wcs))
    return _sum(rate, lo, hi, sel, scale, exposure)
