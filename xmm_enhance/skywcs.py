"""RA/Dec WCS of DETX/DETY images and its transforms for padded and 2x grids.

Conventions: FITS 1-based pixel coordinates in headers; the sky WCS is TAN with a CD matrix
(no CDELT/CD mix, no CROTA). The DET frame is a mirror image of the sky, so a DETX-right /
DETY-up image has det(CD) > 0 (``xmm-pn-reference.md`` §3).
"""
from __future__ import annotations

import math

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from . import detector

__all__ = [
    "ARCSEC_PER_DET", "SKY_KEYS", "cd_from_pa", "approx_sky_wcs", "wcs_to_header",
    "strip_celestial_wcs", "pad_wcs", "crop_offset", "upscale_wcs", "has_sky_wcs",
]

ARCSEC_PER_DET = 0.05
#: Keywords of the celestial WCS we write (everything else of a WCS is removed first).
SKY_KEYS = ("WCSAXES", "CTYPE1", "CTYPE2", "CUNIT1", "CUNIT2", "CRPIX1", "CRPIX2", "CRVAL1",
            "CRVAL2", "CD1_1", "CD1_2", "CD2_1", "CD2_2", "RADESYS", "EQUINOX", "LONPOLE",
            "LATPOLE", "MJDREF", "WCSNAME")
_STRAY = ("CDELT1", "CDELT2", "CROTA1", "CROTA2", "CROT2", "PC1_1", "PC1_2", "PC2_1", "PC2_2",
          "PV1_1", "PV1_2", "PV2_1", "PV2_2", "RADECSYS", "MJD-OBS", "DATEREF", "MJDREFI",
          "MJDREFF")
#: FITS pixel (x, y) of the RA_PNT/DEC_PNT position on the binsize-80 grid (measured, reference
#: sheet §4: DET ~ (-1050, +1480)); used only for the approximate WCS.
BORESIGHT_DET = (-1050.0, 1480.0)


def _det_to_pix(detx, dety, binsize=detector.PN_BINSIZE, scale=1):
    """DET coordinates -> FITS 1-based pixel coordinates on ``pn_grid(binsize, scale)``."""
    g = detector.pn_grid(binsize, scale)
    return ((detx - g.x0) / g.step + 0.5, (dety - g.y0) / g.step + 0.5)


def cd_from_pa(pa_deg: float, pixel_arcsec: float) -> np.ndarray:
    """CD matrix (deg/pixel) of a DETX/DETY grid for position angle ``pa_deg``.

    From the measured orientation of the DET frame on the sky (reference sheet §3):
    ``CD = c [[sin PA, -cos PA], [cos PA, sin PA]]`` with ``c`` the pixel size in degrees.
    """
    c = pixel_arcsec / 3600.0
    s, k = math.sin(math.radians(pa_deg)), math.cos(math.radians(pa_deg))
    return c * np.array([[s, -k], [k, s]])


def _tan_wcs(crpix, crval, cd):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.cunit = ["deg", "deg"]
    w.wcs.crpix = list(crpix)
    w.wcs.crval = [float(crval[0]) % 360.0, float(crval[1])]
    w.wcs.cd = np.asarray(cd, float)
    w.wcs.radesys = "FK5"
    w.wcs.equinox = 2000.0
    return w


def approx_sky_wcs(ra_pnt: float, dec_pnt: float, pa_pnt: float, *,
                   binsize: float = detector.PN_BINSIZE, scale: int = 1) -> WCS:
    """Approximate TAN WCS of a DET image from the mean pointing (no event list at hand).

    Places ``RA_PNT/DEC_PNT`` at the nominal boresight DET position; expect errors of a few
    arcsec (the boresight varies between observations).
    """
    crpix = _det_to_pix(*BORESIGHT_DET, binsize=binsize, scale=scale)
    return _tan_wcs(crpix, (ra_pnt, dec_pnt),
                    cd_from_pa(pa_pnt, detector.pixel_size_arcsec(binsize, scale)))


def has_sky_wcs(header: fits.Header) -> bool:
    """True when the header carries a celestial RA/Dec WCS on its primary axes."""
    return (str(header.get("CTYPE1", "")).startswith("RA--")
            and str(header.get("CTYPE2", "")).startswith("DEC-"))


def strip_celestial_wcs(header: fits.Header) -> fits.Header:
    """Copy of ``header`` without primary-axis WCS keywords (alternate WCS ``L`` etc. kept)."""
    h = header.copy()
    for key in SKY_KEYS + _STRAY + ("CTYPE1", "CTYPE2", "CUNIT1", "CUNIT2"):
        while key in h:
            del h[key]
    return h


def wcs_to_header(w: WCS) -> fits.Header:
    """The TAN/CD keywords of ``w`` only (no CDELT, no PC, no CROTA, no DATE keywords)."""
    h = fits.Header()
    h["WCSAXES"] = 2
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
    h["CUNIT1"], h["CUNIT2"] = "deg", "deg"
    h["CRPIX1"], h["CRPIX2"] = float(w.wcs.crpix[0]), float(w.wcs.crpix[1])
    h["CRVAL1"], h["CRVAL2"] = float(w.wcs.crval[0]), float(w.wcs.crval[1])
    cd = w.wcs.cd if w.wcs.has_cd() else w.pixel_scale_matrix
    h["CD1_1"], h["CD1_2"] = float(cd[0, 0]), float(cd[0, 1])
    h["CD2_1"], h["CD2_2"] = float(cd[1, 0]), float(cd[1, 1])
    h["RADESYS"] = "FK5"
    h["EQUINOX"] = 2000.0
    return h


def pad_wcs(w: WCS, top: int, left: int) -> WCS:
    """WCS after adding ``left`` columns before and ``top`` rows below (negative = crop)."""
    out = w.deepcopy()
    out.wcs.crpix = [w.wcs.crpix[0] + left, w.wcs.crpix[1] + top]
    return out


def crop_offset(size_in: int, size_out: int) -> int:
    """Offset of a centred pad (>0) or crop (<0): ``(size_out - size_in) // 2`` (design §4.3)."""
    return (size_out - size_in) // 2


def upscale_wcs(w: WCS, factor: int = 2) -> WCS:
    """WCS of an exact ``factor``x subdivision of the grid: pixel x -> factor*x - (factor-1)/2."""
    out = w.deepcopy()
    out.wcs.crpix = [factor * c - (factor - 1) / 2.0 for c in w.wcs.crpix]
    cd = w.wcs.cd if w.wcs.has_cd() else w.pixel_scale_matrix
    out.wcs.cd = np.asarray(cd) / factor
    return out
