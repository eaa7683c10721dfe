"""DETX/DETY binning on evselect's grid and the image HDU with its header.

The grid is :func:`xmm_enhance.detector.pn_grid`: the first bin starts at the lower legal edge
(DETX -18283.5, DETY -17527.5) and ``ceil(range / binsize)`` bins of ``binsize`` DET units cover
the legal range, so binsize 80 gives 403 x 411 pixels with ``CRVAL1 = -18243.5``,
``CRVAL2 = -17487.5`` at FITS pixel (1, 1) (``design.md`` §4.1). An event lands in 0-based
column ``floor((DETX - x0) / binsize)`` and row ``floor((DETY - y0) / binsize)``; events outside
the legal range are not binned (evselect's ``ignorelegallimits=no``).

Header of the image (primary HDU, int32 counts, ``BUNIT = 'count'``):

- the observation keywords of the event list (``OBS_ID``, ``OBJECT``, ``RA_PNT``...);
- the sky WCS (RA---TAN/DEC--TAN with a CD matrix) on the primary axes, fitted from the events
  (:func:`xmm_enhance.skywcs.fit_sky_wcs_from_events`);
- the DET linear WCS as alternate axes ``L`` (``CTYPE1L = 'DETX'``..., ``WCSNAMEL =
  'PHYSICAL'``) and the IRAF ``LTV/LTM`` keywords (image pixel = LTM * DET + LTV), as SAS
  writes them;
- ``SLCTEXPR``, the event selection as a SAS expression;
- ``EXPOSURE``: the length in seconds of the kept good time, i.e. the summed length of the
  ``STDGTI`` extension's intervals: (FBKTSR rate <= FLCUTTHR, tabgtigen rules) intersected with
  the good time common to all CCDs of the event list, then cut to ``--expo_time``. No dead-time,
  out-of-time or vignetting correction; for a full-frame pn exposure this is what evselect's
  ``EXPOSURE`` (the largest per-CCD ``ONTIMEnn``) gives to within the CCDs' millisecond offsets.
"""
from __future__ import annotations

import datetime as _dt

import numpy as np
from astropy.io import fits

from . import __version__, detector, skywcs
from .fitsio import add_history

__all__ = ["bin_det", "det_index", "det_pixel", "shape_for", "det_wcs_header", "image_header",
           "gti_hdu", "make_image_hdul", "add_history", "fit_comment", "OBS_KEYWORDS"]

#: Keywords copied from the event list (EVENTS header first, then the primary header).
OBS_KEYWORDS = (
    "TELESCOP", "INSTRUME", "OBS_MODE", "OBS_ID", "EXP_ID", "EXPIDSTR", "DATAMODE", "SUBMODE",
    "FILTER", "FRMTIME", "OBJECT", "OBSERVER", "DATE-OBS", "DATE-END", "TIMESYS", "MJDREF",
    "TIMEZERO", "TIMEUNIT", "TIMEREF", "TASSIGN", "CLOCKAPP", "RA_OBJ", "DEC_OBJ", "RA_NOM",
    "DEC_NOM", "SRCPOSX", "SRCPOSY", "CCDSRC", "AVRG_PNT", "RA_PNT", "DEC_PNT", "PA_PNT",
    "REFXCTYP", "REFXCRPX", "REFXCRVL", "REFXCDLT", "REFXLMIN", "REFXLMAX", "REFXCUNI",
    "REFYCTYP", "REFYCRPX", "REFYCRVL", "REFYCDLT", "REFYLMIN", "REFYLMAX", "REFYCUNI",
    "REVOLUT", "PROCDATE", "PPSVERS", "SASVERS", "ODSVER",
)


def bin_det(detx, dety, binsize: float = detector.PN_BINSIZE) -> np.ndarray:
    """Counts image of events on the evselect DET grid, int32 ``[ny, nx]`` (row = DETY).

    Integer DET values and an integer ``binsize`` use exact integer arithmetic (bin edges are
    half-integers, so no event sits on an edge); otherwise float64 ``floor``.
    """
    g = detector.pn_grid(binsize)
    ny, nx = g.shape
    col, row = det_index(detx, dety, binsize)
    ok = (col >= 0) & (col < nx) & (row >= 0) & (row < ny)
    ok &= _in_legal(detx, dety)
    flat = row[ok].astype(np.int64) * nx + col[ok]
    counts = np.bincount(flat, minlength=ny * nx)
    return counts.astype(np.int32).reshape(ny, nx)


def _in_legal(detx, dety):
    x = np.asarray(detx)
    y = np.asarray(dety)
    return ((x >= detector.DETX_MIN) & (x <= detector.DETX_MAX)
            & (y >= detector.DETY_MIN) & (y <= detector.DETY_MAX))


def det_index(detx, dety, binsize: float = detector.PN_BINSIZE):
    """0-based (column, row) of DET positions on ``pn_grid(binsize)`` (may be out of range)."""
    x = np.asarray(detx)
    y = np.asarray(dety)
    b = float(binsize)
    if x.dtype.kind in "iu" and y.dtype.kind in "iu" and b.is_integer():
        # (DET - (-18283.5)) / b == (2 DET + 36567) / (2 b): exact floor division
        twob = 2 * int(b)
        cx = int(round(-2 * detector.DETX_MIN))
        cy = int(round(-2 * detector.DETY_MIN))
        col = (2 * x.astype(np.int64) + cx) // twob
        row = (2 * y.astype(np.int64) + cy) // twob
    else:
        col = np.floor((x - detector.DETX_MIN) / b).astype(np.int64)
        row = np.floor((y - detector.DETY_MIN) / b).astype(np.int64)
    return col, row


def det_pixel(detx, dety, binsize: float = detector.PN_BINSIZE):
    """FITS 1-based (continuous) image pixel coordinates of DET positions."""
    g = detector.pn_grid(binsize)
    return ((np.asarray(detx, float) - g.x0) / g.step + 0.5,
            (np.asarray(dety, float) - g.y0) / g.step + 0.5)


def det_wcs_header(binsize: float = detector.PN_BINSIZE) -> fits.Header:
    """The DET linear WCS as alternate axes ``L`` and the ``LTV/LTM`` keywords."""
    g = detector.pn_grid(binsize)
    cx, cy = g.crval
    h = fits.Header()
    h["WCSNAMEL"] = ("PHYSICAL", "WCS L name: detector coordinates")
    h["WCSAXESL"] = (2, "No. of axes for WCS L")
    h["CTYPE1L"] = ("DETX", "WCS coordinate name")
    h["CRPIX1L"] = (1.0, "WCS reference pixel")
    h["CRVAL1L"] = (float(cx), "[0.05 arcsec] DETX at the centre of pixel 1")
    h["CDELT1L"] = (float(g.step), "[0.05 arcsec] WCS pixel size")
    h["CTYPE2L"] = ("DETY", "WCS coordinate name")
    h["CRPIX2L"] = (1.0, "WCS reference pixel")
    h["CRVAL2L"] = (float(cy), "[0.05 arcsec] DETY at the centre of pixel 1")
    h["CDELT2L"] = (float(g.step), "[0.05 arcsec] WCS pixel size")
    # IRAF physical -> image: pixel = LTM * DET + LTV
    h["LTV1"] = (0.5 - g.x0 / g.step, "image pixel = LTM1_1 * DETX + LTV1")
    h["LTV2"] = (0.5 - g.y0 / g.step, "image pixel = LTM2_2 * DETY + LTV2")
    h["LTM1_1"] = 1.0 / g.step
    h["LTM1_2"] = 0.0
    h["LTM2_1"] = 0.0
    h["LTM2_2"] = 1.0 / g.step
    return h


def fit_comment(key: str, value, comment: str) -> str:
    """``comment`` shortened so that the card fits in 80 characters (no truncation warning).

    A card copied from another file can be too long once re-formatted (a long string value
    written without padding, a value wider than astropy's 20-character field); its comment is
    then cut here, explicitly, instead of by astropy with a ``VerifyWarning``.
    """
    image = fits.Card(key, value).image
    if len(image) > 80:  # long string: CONTINUE cards carry the comment too
        return comment
    room = 80 - len(image.rstrip()) - 3  # " / "
    return comment[:room] if room > 0 else ""


def _copy_obs_keywords(dst: fits.Header, *srcs) -> None:
    for key in OBS_KEYWORDS:
        for src in srcs:
            if src is not None and key in src:
                value = src[key]
                dst[key] = (value, fit_comment(key, value, src.comments[key]))
                break


def image_header(events_header: fits.Header, *, binsize: float, sky_wcs_header: fits.Header,
                 selection: str, exposure: float, gti, primary_header=None,
                 requested_exposure: float | None = None, extra=None) -> fits.Header:
    """The primary header of the image (without the structural NAXIS keywords).

    Parameters
    ----------
    events_header : Header
        EVENTS header of the event list (observation keywords, REFX*/REFY*).
    binsize : float
        DET units per pixel.
    sky_wcs_header : Header
        Celestial WCS keywords (``skywcs.wcs_to_header`` output plus fit diagnostics).
    selection : str
        SAS-style selection expression (``SLCTEXPR``).
    exposure : float
        Kept good time in s (``EXPOSURE`` and ``ONTIME`` are set to it; see the module
        docstring for its exact meaning).
    gti : array [n, 2]
        Kept good time intervals (for ``TSTART``/``TSTOP``, and ``DATE-OBS``/``DATE-END`` in
        UTC as XMM writes them).
    """
    h = fits.Header()
    _copy_obs_keywords(h, events_header, primary_header)
    g = np.asarray(gti, dtype=np.float64).reshape(-1, 2)
    if len(g) and "MJDREF" in h:
        # the event list's dates span its whole exposure; the image holds the kept GTIs only
        for key, t, what in (("DATE-OBS", g[0, 0], "Start (UTC) of the first kept GTI"),
                             ("DATE-END", g[-1, 1], "End (UTC) of the last kept GTI")):
            date = skywcs.mission_time_utc(t, float(h["MJDREF"]), h.get("TIMESYS", "TT"))
            if date is not None:
                h[key] = (date, what)
    h["CREATOR"] = (f"xmm-enhance {__version__}", "software that made this image")
    h["DATE"] = (_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
                 "file creation date (UTC)")
    h["CONTENT"] = ("EPIC PN DETX/DETY IMAGE", "counts image in detector coordinates")
    h["HDUCLASS"] = ("OGIP", "format conforms to OGIP/GSFC conventions")
    h["HDUCLAS1"] = ("IMAGE", "file contains an image")
    h["HDUCLAS2"] = ("TOTAL", "gross image")
    h["BUNIT"] = ("count", "counts per pixel")
    h["SLCTEXPR"] = selection  # no comment: a long value would truncate it
    h["BINSIZE"] = (float(binsize), "[0.05 arcsec] DET units per pixel")
    if len(g):
        h["TSTART"] = (float(g[0, 0]), "[s] start of the first kept GTI")
        h["TSTOP"] = (float(g[-1, 1]), "[s] end of the last kept GTI")
    h["EXPOSURE"] = (float(exposure), "[s] kept good time: sum of the STDGTI intervals")
    # DATEREF / MJD-OBS / MJD-END (from MJDREF and TSTART/TSTOP), so that WCS readers need not
    # derive them (astropy's 'datfix' warning, and a UTC DATE-OBS read as TT)
    h.update(skywcs.time_keywords(h))
    h["ONTIME"] = (float(exposure), "[s] sum of the kept GTIs")
    if requested_exposure is not None:
        h["EXPREQ"] = (float(requested_exposure), "[s] requested exposure (<= 0: all)")
    for k, v in (extra or {}).items():
        h[k] = v
    # sky WCS (primary axes) then the DET WCS (alternate L axes + LTV/LTM)
    h.update(sky_wcs_header)
    h.update(det_wcs_header(binsize))
    return h


def gti_hdu(gti, *, name: str = "STDGTI", header_extra=None) -> fits.BinTableHDU:
    """The kept good time intervals as an OGIP GTI table (START, STOP in s)."""
    g = np.asarray(gti, dtype=np.float64).reshape(-1, 2)
    cols = [fits.Column(name="START", format="D", unit="s", array=g[:, 0].copy()),
            fits.Column(name="STOP", format="D", unit="s", array=g[:, 1].copy())]
    hdu = fits.BinTableHDU.from_columns(cols, name=name)
    h = hdu.header
    h["HDUCLASS"] = ("OGIP", "format conforms to OGIP standard")
    h["HDUCLAS1"] = ("GTI", "table contains Good Time Intervals")
    h["HDUCLAS2"] = ("STANDARD", "standard Good Time Interval table")
    h["ONTIME"] = (float(np.sum(g[:, 1] - g[:, 0])) if len(g) else 0.0,
                   "[s] sum of all Good Time Intervals")
    if len(g):
        h["TSTART"] = (float(g[0, 0]), "[s] lower bound of first GTI")
        h["TSTOP"] = (float(g[-1, 1]), "[s] upper bound of last GTI")
    h["TIMEUNIT"] = ("s", "all times in s")
    for k, v in (header_extra or {}).items():
        h[k] = v
    return hdu


def make_image_hdul(image: np.ndarray, header: fits.Header, gti, *,
                    gti_extra=None) -> fits.HDUList:
    """Primary HDU (int32 counts, ``header``) + the kept-GTI extension."""
    img = np.ascontiguousarray(image, dtype=np.int32)
    prim = fits.PrimaryHDU(data=img)
    for card in header.cards:
        if card.keyword in ("SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "EXTEND"):
            continue
        if card.keyword == "HISTORY":
            add_history(prim.header, card.value)
            continue
        if card.keyword == "COMMENT":
            prim.header.add_comment(card.value)
            continue
        prim.header[card.keyword] = (card.value, card.comment)
    gti_ext = gti_hdu(gti, header_extra=gti_extra)
    # the table read on its own (OGIP GTI readers): its times' zero point and scale
    for key in ("MJDREF", "MJDREFI", "MJDREFF", "TIMESYS", "TIMEREF", "TIMEZERO", "TASSIGN"):
        if key in header:
            gti_ext.header[key] = (header[key], header.comments[key])
    gti_ext.header["INHERIT"] = (True, "the primary header's keywords apply too")
    return fits.HDUList([prim, gti_ext])


def shape_for(binsize: float) -> tuple:
    """(ny, nx) of the image for ``binsize``."""
    return detector.pn_grid(binsize).shape
