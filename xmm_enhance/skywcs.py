"""RA/Dec WCS of DETX/DETY images and its transforms for padded and 2x grids.

Conventions: FITS 1-based pixel coordinates in headers; the sky WCS is TAN with a CD matrix
(no CDELT/CD mix, no CROTA). The DET frame is a mirror image of the sky, so a DETX-right /
DETY-up image has det(CD) > 0 (``xmm-pn-reference.md`` §3).
"""
from __future__ import annotations

import datetime as _dt
import math
import re
from typing import TYPE_CHECKING

import numpy as np
from astropy.io import fits

from . import detector

if TYPE_CHECKING:  # imported where used: astropy.wcs pulls in astropy.coordinates (~0.3 s)
    from astropy.wcs import WCS

__all__ = [
    "ARCSEC_PER_DET", "SKY_KEYS", "cd_from_pa", "approx_sky_wcs", "wcs_to_header",
    "strip_celestial_wcs", "pad_wcs", "crop_offset", "upscale_wcs", "has_sky_wcs",
    "time_keywords",
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
    from astropy.wcs import WCS

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


_MJD0 = _dt.datetime(1858, 11, 17)


def _iso_to_mjd(text: str) -> float | None:
    """MJD of a FITS date string ``YYYY-MM-DD[Thh:mm:ss[.s...]]`` in its own time scale
    (no scale conversion: MJD-OBS must match DATE-OBS as written); None if unparsable."""
    s = str(text).strip()
    m = re.fullmatch(r"(\d{4})-(\d{2})-(\d{2})(?:T(\d{2}):(\d{2}):(\d{2}(?:\.\d*)?))?", s)
    if not m:
        return None
    y, mo, d = int(m.group(1)), int(m.group(2)), int(m.group(3))
    hh = int(m.group(4) or 0)
    mi = int(m.group(5) or 0)
    sec = float(m.group(6) or 0.0)
    try:
        days = (_dt.datetime(y, mo, d) - _MJD0).days
    except ValueError:
        return None
    return days + (hh * 3600 + mi * 60 + sec) / 86400.0


def _mjd_to_iso(mjd: float) -> str:
    """``YYYY-MM-DDThh:mm:ss[.ffffff]`` of an MJD (same time scale)."""
    day = math.floor(mjd)
    usec = round((mjd - day) * 86400e6)
    t = _MJD0 + _dt.timedelta(days=int(day), microseconds=usec)
    return t.strftime("%Y-%m-%dT%H:%M:%S") + (f".{t.microsecond:06d}".rstrip("0")
                                                if t.microsecond else "")


def mission_time_utc(t: float, mjdref: float = 50814.0, timesys: str = "TT") -> str | None:
    """UTC date ``YYYY-MM-DDThh:mm:ss`` (to the nearest second) of mission time ``t`` (s after
    ``mjdref``, in the time scale ``timesys``), as XMM writes ``DATE-OBS`` ("Start Time
    (UTC)"); None for a time scale astropy does not know or a non-finite time.

    astropy's bundled leap-second table is used as it is (no download: the tools run offline);
    none has been added since 2017.
    """
    from astropy.time import Time
    from astropy.utils import iers

    from .procstate import LOCK, quiet_warnings

    scale = str(timesys).strip().lower()
    if scale not in Time.SCALES or not (math.isfinite(t) and math.isfinite(mjdref)):
        return None
    # process-wide settings, changed for this block only (procstate: threads take turns)
    with LOCK, iers.conf.set_temp("auto_download", False), quiet_warnings():
        # no warning about an expired bundled leap-second table
        # + 0.5 s: strftime drops the fraction, so this rounds to the nearest second
        tm = Time(mjdref, (float(t) + 0.5) / 86400.0, format="mjd", scale=scale).utc
        return tm.strftime("%Y-%m-%dT%H:%M:%S")


def time_keywords(header) -> fits.Header:
    """``DATEREF``, ``MJD-OBS`` and ``MJD-END`` consistent with the header's time keywords.

    FITS WCS readers (wcslib's ``datfix``, which astropy runs in ``WCS(header)``) fill these
    in from ``MJDREF`` (or ``MJDREFI + MJDREFF``), ``DATE-OBS`` and ``DATE-END`` and warn that
    they did; writing them ourselves keeps our files warning-free. ``MJD-OBS``/``MJD-END`` are
    ``MJDREF + TSTART/86400`` and ``MJDREF + TSTOP/86400``: exact, in the time scale
    ``TIMESYS`` names, as a FITS reader takes them. Only without ``TSTART``/``TSTOP`` are they
    the MJDs of ``DATE-OBS``/``DATE-END``: as written, or converted from UTC to ``TIMESYS``
    (TT or TAI) where the card's comment says UTC. (XMM writes ``DATE-OBS`` in UTC under
    ``TIMESYS = 'TT'``, 69 s from TT since 2017: taken as written, it would put ``MJD-OBS``
    69 s early.) Keys whose source is missing or unparsable are left out.

    Parameters
    ----------
    header : Header or mapping

    Returns
    -------
    Header
        Only the new cards (add them with ``Header.update``).
    """
    h = fits.Header()
    mjdref = None
    if "MJDREF" in header:
        mjdref = float(header["MJDREF"])
    elif "MJDREFI" in header:
        mjdref = float(header["MJDREFI"]) + float(header.get("MJDREFF", 0.0))
    if mjdref is not None and math.isfinite(mjdref) and "DATEREF" not in header:
        h["DATEREF"] = (_mjd_to_iso(mjdref), "time reference date, = MJDREF")
    scale = str(header.get("TIMESYS", "TT")).strip().upper()
    for src, met, dst, what in (("DATE-OBS", "TSTART", "MJD-OBS", "start"),
                                ("DATE-END", "TSTOP", "MJD-END", "end")):
        if dst in header:
            continue
        mjd = None
        if mjdref is not None and met in header:
            try:
                t = float(header[met])
            except (TypeError, ValueError):
                t = math.nan
            if math.isfinite(t) and math.isfinite(mjdref):
                mjd = mjdref + t / 86400.0
                h[dst] = (mjd, f"[d] MJD ({scale}) of {met}, the {what}")
        if mjd is None and src in header:
            mjd = _iso_to_mjd(header[src])
            if mjd is not None:
                utc = _says_utc(header, src)
                if utc and scale in ("TT", "TDT", "TAI"):
                    mjd = _utc_mjd_to(mjd, scale)
                    h[dst] = (mjd, f"[d] MJD ({scale}) of {src} (UTC)")
                else:
                    h[dst] = (mjd, f"[d] MJD of {src}")
    return h


def _says_utc(header, key) -> bool:
    """Whether the card ``key``'s comment says its date is UTC (XMM writes ``DATE-OBS``
    'Start Time (UTC) of exposure' under ``TIMESYS = 'TT'``)."""
    comments = getattr(header, "comments", None)
    try:
        text = str(comments[key]) if comments is not None else ""
    except KeyError:
        return False
    return re.search(r"\bUTC\b", text) is not None


def _utc_mjd_to(mjd_utc: float, scale: str) -> float:
    """An MJD in UTC as an MJD in TAI or TT: TAI - UTC from erfa's leap-second table (built
    in; no download), + 32.184 s for TT."""
    import erfa

    day = math.floor(mjd_utc)
    y, mo, d, _ = erfa.jd2cal(2400000.5, day)
    # the ufunc returns a status instead of warning "dubious year" (dates past the table's
    # horizon keep its last value, as erfa.dat would)
    tai_utc = float(erfa.ufunc.dat(y, mo, d, mjd_utc - day)[0])
    return mjd_utc + (tai_utc + (32.184 if scale in ("TT", "TDT") else 0.0)) / 86400.0


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


# --------------------------------------------------------------------------------------------
# Sky WCS of a DETX/DETY image fitted from its events (design.md §4.2)

class SkyWcsFit:
    """Result of :func:`fit_sky_wcs_from_events`.

    Attributes
    ----------
    wcs : astropy.wcs.WCS
        TAN WCS with a CD matrix for the image grid ``pn_grid(binsize, scale)``.
    affine : ndarray [2, 3]
        ``[[a0, a1, a2], [b0, b1, b2]]`` with ``X = a0 + a1 DETX + a2 DETY``, ``Y`` likewise.
    rms_arcsec : float
        RMS distance between each fitted event's X/Y and the affine prediction (arcsec);
        attitude wander during the observation shows up here.
    n_used, n_clipped : int
        Events in the final fit and rejected as outliers.
    method : str
        ``'EVENTFIT'``, or ``'PNT'`` for the approximate fallback (too few events).
    """

    def __init__(self, wcs, affine, rms_arcsec, n_used, n_clipped, method="EVENTFIT"):
        self.wcs = wcs
        self.affine = affine
        self.rms_arcsec = rms_arcsec
        self.n_used = n_used
        self.n_clipped = n_clipped
        self.method = method

    def header(self) -> fits.Header:
        """``wcs_to_header(wcs)`` plus keywords recording how the WCS was made."""
        h = wcs_to_header(self.wcs)
        h["WCSNAME"] = ("EQUATORIAL", "RA/Dec (ICRS-aligned FK5 J2000)")
        if self.method == "EVENTFIT":
            h["WCSMETH"] = ("EVENTFIT", "sky WCS: affine fit of X,Y to DETX,DETY")
            h["WCSNFIT"] = (int(self.n_used), "events in the WCS fit")
            h["WCSRMS"] = (float(round(self.rms_arcsec, 4)),
                           "[arcsec] rms residual of the WCS fit")
        else:
            h["WCSMETH"] = ("PNT", "sky WCS from RA/DEC/PA_PNT: approximate (few arcsec)")
        return h


def _header_ref(header, axis):
    """(CRVAL, CRPIX, CDELT) of sky X (axis 'X') or Y from REF?C* or the TC* column keywords."""
    keys = (f"REF{axis}CRVL", f"REF{axis}CRPX", f"REF{axis}CDLT")
    if all(k in header for k in keys):
        return tuple(float(header[k]) for k in keys)
    for i in range(1, 1000):
        name = header.get(f"TTYPE{i}")
        if name is None:
            break
        if str(name).strip().upper() == axis:
            k3 = (f"TCRVL{i}", f"TCRPX{i}", f"TCDLT{i}")
            if all(k in header for k in k3):
                return tuple(float(header[k]) for k in k3)
            break
    raise ValueError(f"event header has no sky {axis} reference (REF{axis}CRVL/CRPX/CDLT or "
                     f"TCRVL/TCRPX/TCDLT of column {axis})")


def fit_sky_wcs_from_events(detx, dety, x, y, header, *, binsize=detector.PN_BINSIZE,
                            scale=1, max_events=1_000_000, clip=5.0, iterations=3,
                            min_events=10):
    """TAN WCS of a DETX/DETY image from the events' DET and sky X/Y positions.

    Fits ``X = a0 + a1 DETX + a2 DETY`` and ``Y = b0 + b1 DETX + b2 DETY`` by least squares,
    rejecting events further than ``clip`` times the median residual distance (``iterations``
    rounds), then composes the affine map with the event list's tangent-plane projection of sky
    X/Y (``REFXCRVL/REFXCRPX/REFXCDLT``, same for Y; the ``TCRVLn``... keywords of the X, Y
    columns as a fallback). The result is exact TAN, no approximation beyond the affine fit:

    - ``CRVAL = (REFXCRVL, REFYCRVL)``;
    - ``CRPIX`` = FITS pixel of the DET point whose fitted X/Y is ``(REFXCRPX, REFYCRPX)``;
    - ``CD = diag(REFXCDLT, REFYCDLT) . [[a1, a2], [b1, b2]] . step``, step = binsize/scale.

    Parameters
    ----------
    detx, dety, x, y : array [n]
        Event positions: DET (0.05" units) and sky pixels (0.05").
    header : Header or mapping
        The EVENTS header.
    binsize, scale : float, int
        The image grid, ``detector.pn_grid(binsize, scale)``.
    max_events : int
        At most this many events (an even stride through the list) enter the fit.
    min_events : int
        With fewer usable events, fall back to :func:`approx_sky_wcs` from ``RA_PNT``,
        ``DEC_PNT``, ``PA_PNT`` (method ``'PNT'``; the caller should warn).

    Returns
    -------
    SkyWcsFit
    """
    detx = np.asarray(detx)
    dety = np.asarray(dety)
    x = np.asarray(x)
    y = np.asarray(y)
    n = len(detx)
    if n > max_events:
        step_idx = int(math.ceil(n / max_events))
        sl = slice(0, None, step_idx)
        detx, dety, x, y = detx[sl], dety[sl], x[sl], y[sl]
    finite = np.isfinite(x.astype(float)) & np.isfinite(y.astype(float))
    detx, dety = detx[finite].astype(float), dety[finite].astype(float)
    xs, ys = x[finite].astype(float), y[finite].astype(float)
    if len(detx) < min_events or np.ptp(detx) == 0 or np.ptp(dety) == 0:
        w = approx_sky_wcs(float(header["RA_PNT"]), float(header["DEC_PNT"]),
                           float(header["PA_PNT"]), binsize=binsize, scale=scale)
        return SkyWcsFit(w, None, float("nan"), len(detx), 0, method="PNT")
    # centre for conditioning
    mx, my = detx.mean(), dety.mean()
    A = np.column_stack([np.ones_like(detx), detx - mx, dety - my])
    keep = np.ones(len(detx), bool)
    n_clipped = 0
    for _ in range(max(1, iterations)):
        cx, *_ = np.linalg.lstsq(A[keep], xs[keep], rcond=None)
        cy, *_ = np.linalg.lstsq(A[keep], ys[keep], rcond=None)
        r = np.hypot(xs - A @ cx, ys - A @ cy)
        lim = clip * max(float(np.median(r[keep])), 1.0)
        new = r <= lim
        if new.sum() < min_events or np.array_equal(new, keep):
            break
        keep = new
    n_clipped = int((~keep).sum())
    rms = float(np.sqrt(np.mean(r[keep] ** 2))) * ARCSEC_PER_DET
    # back to un-centred coefficients
    a1, a2 = cx[1], cx[2]
    b1, b2 = cy[1], cy[2]
    a0 = cx[0] - a1 * mx - a2 * my
    b0 = cy[0] - b1 * mx - b2 * my
    M = np.array([[a1, a2], [b1, b2]])
    ra0, xref, cdx = _header_ref(header, "X")
    dec0, yref, cdy = _header_ref(header, "Y")
    det_ref = np.linalg.solve(M, np.array([xref - a0, yref - b0]))
    g = detector.pn_grid(binsize, scale)
    crpix = ((det_ref[0] - g.x0) / g.step + 0.5, (det_ref[1] - g.y0) / g.step + 0.5)
    cd = np.diag([cdx, cdy]) @ M * g.step
    w = _tan_wcs(crpix, (ra0, dec0), cd)
    return SkyWcsFit(w, np.array([[a0, a1, a2], [b0, b1, b2]]), rms, int(keep.sum()),
                     n_clipped)


__all__ += ["SkyWcsFit", "fit_sky_wcs_from_events"]
