"""Event-level simulator: a realistic EPIC-pn PPS folder for a known sky and pointing.

``write_pps`` writes, with real PPS names (``xmm-pn-reference.md`` §1-2)::

    P<OBSID>PN<S003>PIEVLI0000.FTZ   pn imaging event list: EVENTS + STDGTI01..12
    P<OBSID>PN<S003>FBKTSR0000.FTZ   flaring-background time series: RATE (+ FLCUTTHR)
    P<OBSID>OBX000ATTTSR0000.FTZ     attitude time series: ATTHK
    P<OBSID>OBX000CALIND0000.FTZ     calibration index: CALINDEX

and returns a :class:`PPSTruth` with what tests check against: the sources' RA/Dec, the true
good time (the event list's GTIs minus the flare), the flare interval and the file paths.

Instrument model (deliberately simple, but with the geometry and conventions of the real files):

- Sky X/Y: TAN projection centred on ``RA_PNT/DEC_PNT`` at pixel 25921, 0.05" pixels, X
  increasing westward (``REFXCDLT < 0``). Implemented here with numpy (independent of astropy,
  so tests cross-check the two).
- DET <-> sky (reference sheet §3): ``X - X0(t) = -sin(PA) DETX + cos(PA) DETY``,
  ``Y - Y0(t) = cos(PA) DETX + sin(PA) DETY``: a mirror map (its own inverse). ``X0/Y0`` place
  sky pixel 25921 (the mean pointing) on the boresight DET position (nominal
  ``skywcs.BORESIGHT_DET`` plus ``boresight_offset``), plus a small attitude wander in time.
- Sky photons (point sources with a King PSF, a vignetted flat sky background) reach the CCDs
  only inside the field-of-view circle; particle background falls on every live pixel, the CCD
  corners included. Events off the live CCD area (gaps, dead columns) are lost.
- ``FLAG``: 0, except CCD-edge pixels inside the FoV (0x4), the corners outside the FoV
  (0x10000) and a random ~3 % with other bits. ``PATTERN`` 0-12, ``PI`` 150-12000 eV.
- A background flare (``flare=(t0, t1, factor)``, seconds from TSTART, snapped to the 10 s
  FBKTSR bins) multiplies the background rate; FBKTSR follows it and crosses ``FLCUTTHR``.
- The event list has a short telemetry gap (``gaps``) absent from its GTIs; FBKTSR has NaN rates
  there.

RAWX/RAWY/CCDNR are approximate (the CCD numbering on the DET grid is not confirmed).
"""
from __future__ import annotations

import datetime as _dt
import gzip
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits

from .. import detector
from ..skywcs import BORESIGHT_DET

__all__ = ["Source", "PPSTruth", "write_pps", "default_sources", "sky_to_pix", "pix_to_sky",
           "det_to_sky_pix", "sky_pix_to_det", "pps_name", "KING_RC_ARCSEC", "KING_ALPHA"]

REF_PIX = 25921.0
DEG_PER_PIX = 0.05 / 3600.0          # 1.38888888888889E-05
TIMEDEL_FBK = 10.0
MJDREF = 50814.0
#: pn PSF (King profile) measured on real data (reference sheet §5).
KING_RC_ARCSEC = 5.4
KING_ALPHA = 1.55
_VIGN_ARCMIN = np.array([0, 2, 4, 6, 8, 10, 12, 14, 15, 30.0])
_VIGN = np.array([1.0, 0.95, 0.86, 0.75, 0.63, 0.52, 0.43, 0.35, 0.32, 0.2])
_CALFILES = ("EPN_BADPIX_0023", "EPN_CTI_0049", "EPN_LINCOORD_0005", "EPN_QUANTUMEF_0021",
             "XRT3_XAREAEF_0015", "XRT3_XPSF_0016", "EPN_FILTERTRANSX_0017",
             "XMM_BORESIGHT_0033", "XMM_MISCDATA_0022")


@dataclass
class Source:
    """A point source: position (deg, ICRS/FK5) and detected count rate (count/s, all PI)."""

    ra: float
    dec: float
    rate: float
    name: str = ""


@dataclass
class PPSTruth:
    """What the simulator put in a PPS folder."""

    folder: Path
    obsid: str
    events: Path
    fbktsr: Path | None
    attitude: Path
    calind: Path
    ra_pnt: float
    dec_pnt: float
    pa_pnt: float
    boresight_det: tuple
    sources: list
    tstart: float
    tstop: float
    flare: tuple                 #: (start, stop, factor), absolute seconds
    event_gti: np.ndarray        #: good time common to all CCDs of the event list
    good_gti: np.ndarray         #: event_gti minus the flare
    flcutthr: float | None
    timedel: float
    n_events: int
    expidstr: str
    counts: dict = field(default_factory=dict)  #: events per component

    @property
    def files(self):
        return {"events": self.events, "fbktsr": self.fbktsr, "attitude": self.attitude,
                "calind": self.calind}


# --------------------------------------------------------------------------------------------
# Geometry

def sky_to_pix(ra, dec, ra0, dec0):
    """RA/Dec (deg) -> sky X/Y (0.05" pixels) of the TAN projection at (ra0, dec0), pixel 25921.

    Gnomonic projection; X increases westward (``REFXCDLT = -0.05"``).
    """
    a = np.radians(np.asarray(ra, float) - ra0)
    d = np.radians(np.asarray(dec, float))
    d0 = math.radians(dec0)
    cosc = math.sin(d0) * np.sin(d) + math.cos(d0) * np.cos(d) * np.cos(a)
    xi = np.cos(d) * np.sin(a) / cosc
    eta = (math.cos(d0) * np.sin(d) - math.sin(d0) * np.cos(d) * np.cos(a)) / cosc
    return (REF_PIX + np.degrees(xi) / -DEG_PER_PIX, REF_PIX + np.degrees(eta) / DEG_PER_PIX)


def pix_to_sky(x, y, ra0, dec0):
    """Inverse of :func:`sky_to_pix`: sky X/Y -> RA (0-360) / Dec in degrees."""
    xi = np.radians((np.asarray(x, float) - REF_PIX) * -DEG_PER_PIX)
    eta = np.radians((np.asarray(y, float) - REF_PIX) * DEG_PER_PIX)
    d0 = math.radians(dec0)
    rho = np.hypot(xi, eta)
    c = np.arctan(rho)
    sinc, cosc = np.sin(c), np.cos(c)
    with np.errstate(invalid="ignore", divide="ignore"):
        dec = np.arcsin(cosc * math.sin(d0) + np.where(rho > 0, eta * sinc / rho, 0.0)
                        * math.cos(d0))
    ra = ra0 + np.degrees(np.arctan2(xi * sinc, rho * math.cos(d0) * cosc
                                     - eta * math.sin(d0) * sinc))
    return np.mod(ra, 360.0), np.degrees(dec)


def _rot(pa_deg):
    s, c = math.sin(math.radians(pa_deg)), math.cos(math.radians(pa_deg))
    return np.array([[-s, c], [c, s]])  # its own inverse (a reflection)


def det_to_sky_pix(detx, dety, pa_deg, x0, y0):
    """DET -> sky X/Y for the DET origin at sky pixel (x0, y0) (arrays broadcast)."""
    m = _rot(pa_deg)
    return (x0 + m[0, 0] * detx + m[0, 1] * dety, y0 + m[1, 0] * detx + m[1, 1] * dety)


def sky_pix_to_det(x, y, pa_deg, x0, y0):
    """Sky X/Y -> DET (inverse of :func:`det_to_sky_pix`)."""
    m = _rot(pa_deg)
    dx, dy = x - x0, y - y0
    return m[0, 0] * dx + m[0, 1] * dy, m[1, 0] * dx + m[1, 1] * dy


def _origin(pa_deg, boresight_det):
    """Sky pixel of the DET origin when the boresight DET position sits at pixel 25921."""
    bx, by = det_to_sky_pix(boresight_det[0], boresight_det[1], pa_deg, 0.0, 0.0)
    return REF_PIX - bx, REF_PIX - by


def pps_name(obsid: str, inst_exp: str, product: str) -> str:
    """``P<OBSID><inst+exposure><product>0000.FTZ``, e.g. ``pps_name(o, 'PNS003', 'PIEVLI')``."""
    return f"P{obsid}{inst_exp}{product}0000.FTZ"


# --------------------------------------------------------------------------------------------
# Sky

def _clean_pixels(margin_pix: int):
    """Binsize-80 pixels whose neighbourhood (``margin_pix``) is all FLAG==0 detector area."""
    from scipy import ndimage

    g = detector.pn_grid()
    m = detector.detector_mask(g, corners=False)
    r = int(margin_pix)
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return g, ndimage.binary_erosion(m, structure=(xx ** 2 + yy ** 2) <= r * r,
                                     border_value=0)


def default_sources(rng=None, *, ra_pnt=150.1, dec_pnt=2.2, pa_pnt=70.0, n=8,
                    rate=(0.05, 0.3), boresight_det=BORESIGHT_DET, margin_arcsec=40.0,
                    min_sep_arcsec=90.0):
    """``n`` point sources on clean CCD area (no gap within ``margin_arcsec``), well apart.

    Rates are log-uniform in ``rate`` (count/s, all PI). Positions are chosen in DET on the
    mean pointing and converted to RA/Dec, so every source is fully on the detector.
    """
    rng = np.random.default_rng(rng)
    g, ok = _clean_pixels(int(math.ceil(margin_arcsec / 4.0)))
    iy, ix = np.nonzero(ok)
    x0, y0 = _origin(pa_pnt, boresight_det)
    chosen = []
    tries = 0
    while len(chosen) < n and tries < 100 * n:
        tries += 1
        k = rng.integers(len(ix))
        dx = g.x0 + g.step * (ix[k] + rng.random())
        dy = g.y0 + g.step * (iy[k] + rng.random())
        if all(math.hypot(dx - a, dy - b) * 0.05 >= min_sep_arcsec for a, b in chosen):
            chosen.append((dx, dy))
    srcs = []
    for i, (dx, dy) in enumerate(chosen):
        sx, sy = det_to_sky_pix(dx, dy, pa_pnt, x0, y0)
        ra, dec = pix_to_sky(sx, sy, ra_pnt, dec_pnt)
        r = float(np.exp(rng.uniform(math.log(rate[0]), math.log(rate[1]))))
        srcs.append(Source(float(ra), float(dec), r, name=f"SIM{i + 1:02d}"))
    return srcs


def _king_radius_arcsec(rng, n, rc=KING_RC_ARCSEC, alpha=KING_ALPHA, rmax=300.0):
    """Radii drawn from a 2-D King profile, truncated at ``rmax`` arcsec."""
    # P(<r) = 1 - (1 + (r/rc)^2)^(1 - alpha)
    pmax = 1.0 - (1.0 + (rmax / rc) ** 2) ** (1.0 - alpha)
    u = rng.random(n) * pmax
    return rc * np.sqrt((1.0 - u) ** (1.0 / (1.0 - alpha)) - 1.0)


def _vignetting(detx, dety):
    th = np.hypot(detx - detector.OPTICAL_AXIS_DET[0], dety - detector.OPTICAL_AXIS_DET[1]) \
        * 0.05 / 60.0
    return np.interp(th, _VIGN_ARCMIN, _VIGN)


# --------------------------------------------------------------------------------------------
# Event attributes

def _patterns(rng, n, particle: bool):
    if particle:
        p = np.r_[0.45, np.full(4, 0.25 / 4), np.full(8, 0.30 / 8)]
    else:
        p = np.r_[0.62, np.full(4, 0.28 / 4), np.full(4, 0.06 / 4), np.full(4, 0.04 / 4)]
    return rng.choice(13, size=n, p=p / p.sum()).astype(np.int8)


def _pi(rng, n, particle: bool):
    if particle:
        v = np.exp(rng.uniform(math.log(150.0), math.log(12000.0), n))
    else:
        v = 10.0 ** rng.normal(math.log10(1100.0), 0.33, n)
    return np.clip(np.rint(v), 150, 12000).astype(np.int16)


def _pixel_lookup(mask, detx, dety):
    """mask[row, col] on the binsize-80 grid at DET positions (False outside)."""
    g = detector.pn_grid()
    col = np.floor((detx - g.x0) / g.step).astype(np.int64)
    row = np.floor((dety - g.y0) / g.step).astype(np.int64)
    ny, nx = g.shape
    inside = (col >= 0) & (col < nx) & (row >= 0) & (row < ny)
    out = np.zeros(len(detx), bool)
    out[inside] = mask[row[inside], col[inside]]
    return out


# chip column edges (1-based columns of the 80 grid) and approximate CCD numbers
_CHIP_EDGES = np.array([67, 134, 201, 269, 337])
_CCD_UPPER = np.array([3, 2, 1, 4, 5, 6], np.uint8)
_CCD_LOWER = np.array([9, 8, 7, 10, 11, 12], np.uint8)


def _raw(detx, dety):
    g = detector.pn_grid()
    colf = (detx - g.x0) / g.step + 1.0  # 1-based continuous column
    rowf = (dety - g.y0) / g.step + 1.0
    chip = np.searchsorted(_CHIP_EDGES, colf, side="right")
    lo = np.r_[1.0, _CHIP_EDGES][chip]
    hi = np.r_[_CHIP_EDGES, 404.0][chip]
    frac = np.clip((colf - lo) / (hi - lo), 0, 0.999999)
    upper = rowf >= 206.0
    ccd = np.where(upper, _CCD_UPPER[chip], _CCD_LOWER[chip]).astype(np.uint8)
    rawx = (1 + np.floor(np.where(upper, 1 - frac, frac) * 64)).clip(1, 64).astype(np.int16)
    fy = np.where(upper, (401.0 - rowf) / 194.0, (rowf - 11.0) / 194.0)
    rawy = (1 + np.floor(np.clip(fy, 0, 0.999999) * 200)).astype(np.int16)
    return rawx, rawy, ccd


# --------------------------------------------------------------------------------------------
# The writer

def _snap(t, t0, step=TIMEDEL_FBK):
    return t0 + step * round((t - t0) / step)


def _times_in(rng, n, intervals):
    """``n`` times uniform over the union of ``intervals`` (array [m, 2])."""
    iv = np.asarray(intervals, float).reshape(-1, 2)
    lengths = iv[:, 1] - iv[:, 0]
    if n == 0 or lengths.sum() <= 0:
        return np.empty(0)
    cum = np.concatenate([[0.0], np.cumsum(lengths)])
    u = rng.random(n) * cum[-1]
    k = np.clip(np.searchsorted(cum, u, side="right") - 1, 0, len(iv) - 1)
    return iv[k, 0] + (u - cum[k])


def _subtract(iv, cut):
    """Intervals ``iv`` minus one interval ``cut``."""
    out = []
    for a, b in np.asarray(iv, float).reshape(-1, 2):
        if cut[1] <= a or cut[0] >= b:
            out.append((a, b))
            continue
        if a < cut[0]:
            out.append((a, cut[0]))
        if cut[1] < b:
            out.append((cut[1], b))
    return np.array(out, float).reshape(-1, 2)


def _date(t):
    """UTC date of mission time ``t`` (TT s after MJDREF), as XMM's DATE-OBS."""
    from ..skywcs import mission_time_utc

    return mission_time_utc(t, MJDREF, "TT")


def write_pps(folder, obsid: str = "0123456789", *, ra_pnt: float = 150.1, dec_pnt: float = 2.2,
              pa_pnt: float = 70.0, sources=None, n_sources: int = 8, duration: float = 60e3,
              bkg_rate: float = 3.0, sky_bkg_rate: float = 1.0,
              flare=(30e3, 36e3, 15.0), fbk_rate: float = 2.0, flcutthr: float | None = None,
              gaps=((12e3, 12.3e3),), n_events: int | None = None,
              boresight_offset=None, wander_arcsec: float = 1.5, tstart: float = 6.7923e8,
              expidstr: str = "S003", submode: str = "PrimeFullWindow",
              filter_name: str = "Thin1", object_name: str = "SIMULATED FIELD",
              write_fbktsr: bool = True, write_flcutthr: bool = True,
              compresslevel: int = 1, seed=0) -> PPSTruth:
    """Write a simulated pn PPS folder and return its truth.

    Parameters
    ----------
    folder : path-like
        Created if missing; files with the same names are overwritten.
    obsid : str
        10-digit OBS_ID used in names and headers.
    ra_pnt, dec_pnt, pa_pnt : float
        Mean pointing (deg) and position angle (deg) written as ``RA_PNT/DEC_PNT/PA_PNT``.
    sources : list of Source, optional
        Point sources; default ``default_sources(rng, n=n_sources, ...)`` on clean CCD area.
    duration : float
        Exposure length (s), ``TSTOP - TSTART``.
    bkg_rate, sky_bkg_rate : float
        Particle background (count/s over all live pixels) and flat vignetted sky background
        (count/s over the FoV, on-axis equivalent), all PI, before the flare.
    flare : (t0, t1, factor) or None
        Seconds from TSTART (snapped to the 10 s bins) and the background rate multiplier.
    fbk_rate, flcutthr : float
        Quiescent FBKTSR rate (count/s) and the threshold (default ``fbk_rate + 4 sigma`` of
        one 10 s bin).
    gaps : sequence of (t0, t1)
        Telemetry gaps (seconds from TSTART): no events, not in the GTIs, NaN in FBKTSR.
    n_events : int, optional
        Scale all rates (background and sources) so that the list has about this many events.
    boresight_offset : (dx, dy), optional
        DET offset of the boresight from the nominal position (default: random, ~3").
    wander_arcsec : float
        Amplitude of the attitude wander (two sinusoids).
    write_fbktsr, write_flcutthr : bool
        Set False to make broken PPS folders for error tests.
    compresslevel : int
        gzip level of the ``.FTZ`` files.
    seed : int or Generator
        Everything random follows from it.
    """
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if boresight_offset is None:
        boresight_offset = tuple(rng.normal(0.0, 40.0, 2))
    bore = (BORESIGHT_DET[0] + boresight_offset[0], BORESIGHT_DET[1] + boresight_offset[1])
    if sources is None:
        sources = default_sources(rng, ra_pnt=ra_pnt, dec_pnt=dec_pnt, pa_pnt=pa_pnt,
                                  n=n_sources, boresight_det=bore)
    t0 = float(tstart)
    t1 = t0 + float(duration)

    # ---- time structure: event-list GTIs, flare
    gap_iv = [(_snap(t0 + a, t0), _snap(t0 + b, t0)) for a, b in (gaps or ())]
    event_gti = np.array([[t0, t1]])
    for g in gap_iv:
        event_gti = _subtract(event_gti, g)
    if flare is not None:
        fl = (_snap(t0 + flare[0], t0), _snap(t0 + flare[1], t0), float(flare[2]))
    else:
        fl = (t1, t1, 1.0)
    flare_iv = _subtract(event_gti, (-np.inf, fl[0]))
    flare_iv = _subtract(flare_iv, (fl[1], np.inf))
    good_gti = _subtract(event_gti, (fl[0], fl[1]))
    t_live = float(np.sum(event_gti[:, 1] - event_gti[:, 0]))
    t_flare = float(np.sum(flare_iv[:, 1] - flare_iv[:, 0])) if len(flare_iv) else 0.0

    g80 = detector.pn_grid()
    live = detector.live_mask(g80)
    fov = detector.fov_mask(g80)
    clean = detector.detector_mask(g80, corners=False)

    # ---- attitude: DET origin on the sky, with wander
    x0m, y0m = _origin(pa_pnt, bore)
    amp = wander_arcsec / 0.05
    ph = rng.uniform(0, 2 * np.pi, 4)

    def origin_at(t):
        tt = (t - t0)
        wx = amp * (0.7 * np.sin(2 * np.pi * tt / 5400.0 + ph[0])
                    + 0.3 * np.sin(2 * np.pi * tt / 1700.0 + ph[1]))
        wy = amp * (0.7 * np.sin(2 * np.pi * tt / 6100.0 + ph[2])
                    + 0.3 * np.sin(2 * np.pi * tt / 2300.0 + ph[3]))
        return x0m + wx, y0m + wy

    # ---- scale every rate so that the list has about n_events events
    if n_events is not None:
        per_s = t_live + (fl[2] - 1) * t_flare
        sky_acc = float(np.mean(_vignetting(*np.meshgrid(*g80.centres()))[fov] * live[fov]))
        expect = (bkg_rate * per_s + sky_bkg_rate * per_s * sky_acc
                  + sum(s.rate for s in sources) * t_live * 0.95)
        f = float(n_events) / expect if expect > 0 else 0.0
        bkg_rate, sky_bkg_rate = bkg_rate * f, sky_bkg_rate * f
        sources = [Source(s.ra, s.dec, s.rate * f, s.name) for s in sources]

    parts = []

    def add(detx, dety, x, y, t, particle):
        n = len(t)
        parts.append(dict(detx=detx, dety=dety, x=x, y=y, t=t,
                          pattern=_patterns(rng, n, particle), pi=_pi(rng, n, particle)))

    # particle background: uniform on live pixels (corners too), rate x factor in the flare
    counts = {}
    iy, ix = np.nonzero(live)
    n_q = rng.poisson(bkg_rate * t_live)
    n_f = rng.poisson(bkg_rate * (fl[2] - 1.0) * t_flare) if t_flare > 0 else 0
    t = np.concatenate([_times_in(rng, n_q, event_gti), _times_in(rng, n_f, flare_iv)])
    k = rng.integers(len(ix), size=len(t))
    dx = g80.x0 + g80.step * (ix[k] + rng.random(len(t)))
    dy = g80.y0 + g80.step * (iy[k] + rng.random(len(t)))
    ox, oy = origin_at(t)
    sx, sy = det_to_sky_pix(dx, dy, pa_pnt, ox, oy)
    add(dx, dy, sx, sy, t, True)
    counts["particle"] = len(t)
    del k, dx, dy, sx, sy, ox, oy, t

    # sky background (and soft protons in the flare): FoV circle, vignetted
    fy_, fx_ = np.nonzero(fov)
    n_q = rng.poisson(sky_bkg_rate * t_live)
    n_f = rng.poisson(sky_bkg_rate * (fl[2] - 1.0) * t_flare) if t_flare > 0 else 0
    t = np.concatenate([_times_in(rng, n_q, event_gti), _times_in(rng, n_f, flare_iv)])
    k = rng.integers(len(fx_), size=len(t))
    dx = g80.x0 + g80.step * (fx_[k] + rng.random(len(t)))
    dy = g80.y0 + g80.step * (fy_[k] + rng.random(len(t)))
    keep = rng.random(len(t)) < _vignetting(dx, dy)
    t, dx, dy = t[keep], dx[keep], dy[keep]
    ox, oy = origin_at(t)
    sx, sy = det_to_sky_pix(dx, dy, pa_pnt, ox, oy)
    add(dx, dy, sx, sy, t, False)
    counts["sky_background"] = len(t)
    del k, dx, dy, sx, sy, ox, oy, t, keep

    # point sources: King PSF around the true position on the sky
    n_src = 0
    for s in sources:
        n = rng.poisson(s.rate * t_live)
        t = _times_in(rng, n, event_gti)
        px, py = sky_to_pix(s.ra, s.dec, ra_pnt, dec_pnt)
        r = _king_radius_arcsec(rng, n) / 0.05
        phi = rng.uniform(0, 2 * np.pi, n)
        sx = px + r * np.cos(phi)
        sy = py + r * np.sin(phi)
        ox, oy = origin_at(t)
        dx, dy = sky_pix_to_det(sx, sy, pa_pnt, ox, oy)
        add(dx, dy, sx, sy, t, False)
        n_src += n
    counts["sources"] = n_src

    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    parts.clear()
    n_sky = counts["sky_background"] + counts["sources"]
    is_sky = np.zeros(len(cols["t"]), bool)
    is_sky[counts["particle"]:] = True
    assert is_sky.sum() == n_sky

    # integer DET / sky positions; keep events that land on live pixels (sky photons: in FoV)
    detx = np.rint(cols["detx"]).astype(np.int32)
    dety = np.rint(cols["dety"]).astype(np.int32)
    on = _pixel_lookup(live, detx, dety)
    infov = _pixel_lookup(fov, detx, dety)
    keep = on & (infov | ~is_sky)
    keep &= (detx >= detector.DETX_MIN) & (detx <= detector.DETX_MAX)
    keep &= (dety >= detector.DETY_MIN) & (dety <= detector.DETY_MAX)
    order = np.argsort(cols["t"][keep], kind="stable")
    sel = np.flatnonzero(keep)[order]
    del keep, order
    time = cols["t"][sel]
    detx, dety = detx[sel], dety[sel]
    xs = np.rint(cols["x"][sel]).astype(np.int32)
    ys = np.rint(cols["y"][sel]).astype(np.int32)
    pattern = cols["pattern"][sel]
    pi = cols["pi"][sel]
    infov = infov[sel]
    del cols, sel, is_sky
    n = len(time)

    # flags
    flag = np.zeros(n, np.int32)
    edge = ~_pixel_lookup(clean, detx, dety) & infov
    flag[edge] = 0x4
    flag[~infov] = 0x10000
    other = (rng.random(n) < 0.03) & (flag == 0)
    flag[other] = rng.choice(np.array([0x1, 0x2, 0x8, 0x20, 0x100, 0x800], np.int32),
                             size=int(other.sum()))
    rawx, rawy, ccdnr = _raw(detx.astype(float), dety.astype(float))
    pha = np.clip(np.rint(pi / 4.0 + rng.normal(0, 3, n)), 0, 4095).astype(np.int16)

    # ---- files
    names = {
        "events": folder / pps_name(obsid, f"PN{expidstr}", "PIEVLI"),
        "fbktsr": folder / pps_name(obsid, f"PN{expidstr}", "FBKTSR"),
        "attitude": folder / pps_name(obsid, "OBX000", "ATTTSR"),
        "calind": folder / pps_name(obsid, "OBX000", "CALIND"),
    }
    common = _common_keywords(obsid, expidstr, submode, filter_name, object_name, ra_pnt,
                              dec_pnt, pa_pnt, t0, t1, sources)
    ccd_gti = {c: event_gti + (c - 1) * np.array([0.0005, -0.0005]) for c in range(1, 13)}
    common_gti = event_gti + 11 * np.array([0.0005, -0.0005])
    _write_events(names["events"], common, time, rawx, rawy, detx, dety, xs, ys, pha, pi, flag,
                  pattern, ccdnr, ccd_gti, ra_pnt, dec_pnt, t0, t1, compresslevel)
    del rawx, rawy, xs, ys, pha, flag, pattern, ccdnr, detx, dety, pi

    thr = None
    if write_fbktsr:
        thr = _write_fbktsr(names["fbktsr"], common, rng, t0, t1, fl, gap_iv, fbk_rate,
                            flcutthr, write_flcutthr, compresslevel)
    else:
        names["fbktsr"] = None
        if flcutthr is not None:
            thr = flcutthr
    _write_attitude(names["attitude"], common, t0, t1, pa_pnt, ra_pnt, dec_pnt, bore,
                    origin_at, compresslevel)
    _write_calind(names["calind"], common, compresslevel)

    return PPSTruth(folder=folder, obsid=obsid, events=names["events"], fbktsr=names["fbktsr"],
                    attitude=names["attitude"], calind=names["calind"], ra_pnt=ra_pnt,
                    dec_pnt=dec_pnt, pa_pnt=pa_pnt, boresight_det=bore, sources=list(sources),
                    tstart=t0, tstop=t1, flare=fl, event_gti=common_gti, good_gti=_intersect2(
                        good_gti, common_gti), flcutthr=thr, timedel=TIMEDEL_FBK, n_events=n,
                    expidstr=expidstr, counts=counts)


def _intersect2(a, b):
    out = []
    for x0, x1 in a:
        for y0, y1 in b:
            lo, hi = max(x0, y0), min(x1, y1)
            if hi > lo:
                out.append((lo, hi))
    return np.array(sorted(out), float).reshape(-1, 2)


def _common_keywords(obsid, expidstr, submode, filter_name, object_name, ra_pnt, dec_pnt, pa_pnt,
                     t0, t1, sources):
    expno = "".join(c for c in expidstr if c.isdigit()).zfill(3)
    ra_obj = sources[0].ra if sources else ra_pnt
    dec_obj = sources[0].dec if sources else dec_pnt
    return [
        ("TELESCOP", "XMM", "Telescope (mission) name"),
        ("INSTRUME", "EPN", "Instrument name"),
        ("OBS_MODE", "POINTING", "Observation mode (pointing or slew)"),
        ("OBS_ID", obsid, "Observation identifier"),
        ("EXP_ID", f"{obsid}{expno}", "Exposure identifier"),
        ("EXPIDSTR", expidstr, "Exposure identifier (Xnnn)"),
        ("DATAMODE", "IMAGING", "Instrument mode"),
        ("SUBMODE", submode, "Guest Observer mode"),
        ("FILTER", filter_name, "Filter ID"),
        ("FRMTIME", 73 if submode == "PrimeFullWindow" else 199, "[ms] Frame Time"),
        ("OBJECT", object_name, "Name of observed object"),
        ("OBSERVER", "Simulated", "Name of PI"),
        ("DATE-OBS", _date(t0), "Start Time (UTC) of exposure"),
        ("DATE-END", _date(t1), "End Time (UTC) of exposure"),
        ("TIMESYS", "TT", "XMM time will be TT (Terrestial Time)"),
        ("MJDREF", MJDREF, "[d] 1998-01-01T00:00:00 (TT) expressed in MJD"),
        ("TIMEZERO", 0, "Clock correction (if not zero)"),
        ("TIMEUNIT", "s", "All times in s unless specified otherwise"),
        ("TIMEREF", "LOCAL", "Reference location of photon arrival times"),
        ("TASSIGN", "SATELLITE", "Location of time assignment"),
        ("CLOCKAPP", True, "Clock correction applied"),
        ("RA_OBJ", float(ra_obj), "[deg] Ra of the observed object"),
        ("DEC_OBJ", float(dec_obj), "[deg] Dec of the observed object"),
        ("RA_NOM", float(ra_obj), "[deg] Ra of boresight"),
        ("DEC_NOM", float(dec_obj), "[deg] Dec of boresight"),
        ("AVRG_PNT", "MEDIAN", "Meaning of PNT values (mean or median)"),
        ("RA_PNT", float(ra_pnt), "[deg] Actual (mean) pointing RA"),
        ("DEC_PNT", float(dec_pnt), "[deg] Actual (mean) pointing Dec"),
        ("PA_PNT", float(pa_pnt), "[deg] Actual (mean) measured position angle"),
        ("ORIGIN", "xmm-enhance simulator", "Origin of FITS file"),
        ("PPSVERS", "simulated", "PPS configuration"),
    ]


def _apply(h, cards):
    for k, v, c in cards:
        h[k] = (v, c)


def _write(path, hdus, compresslevel):
    hdul = fits.HDUList(hdus)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with gzip.open(tmp, "wb", compresslevel=compresslevel) as fh:
            hdul.writeto(fh)
        tmp.replace(path)
    except BaseException:  # an error or an interrupt leaves no temporary behind
        tmp.unlink(missing_ok=True)
        raise


def _primary(common, content):
    p = fits.PrimaryHDU()
    _apply(p.header, common)
    p.header["CONTENT"] = (content, "Contents of file")
    return p


_FORMS = {"f8": "D", "i2": "I", "i4": "J", "u1": "B", "i1": "B"}
_EVT_COLS = [  # name, numpy dtype (big-endian), unit, TLMIN, TLMAX
    ("TIME", ">f8", "s", None, None),
    ("RAWX", ">i2", "pixel", 1, 64),
    ("RAWY", ">i2", "pixel", 1, 200),
    ("DETX", ">i2", "0.05 arcsec", -18283, 13956),
    ("DETY", ">i2", "0.05 arcsec", -17527, 15352),
    ("X", ">i4", "0.05 arcsec", 1, 51840),
    ("Y", ">i4", "0.05 arcsec", 1, 51840),
    ("PHA", ">i2", "adu", 0, 4095),
    ("PI", ">i2", "eV", 0, 20479),
    ("FLAG", ">i4", "", None, None),
    # PATTERN as an unsigned byte: astropy reads 'B' + TZERO=-128 as float, not int8
    ("PATTERN", "u1", "", 0, 12),
    ("PAT_ID", ">i2", "", None, None),
    ("PAT_SEQ", "u1", "", None, None),
    ("CCDNR", "u1", "", 1, 12),
]


def _write_events(path, common, time, rawx, rawy, detx, dety, xs, ys, pha, pi, flag, pattern,
                  ccdnr, ccd_gti, ra_pnt, dec_pnt, t0, t1, compresslevel):
    values = {"TIME": time, "RAWX": rawx, "RAWY": rawy, "DETX": detx, "DETY": dety, "X": xs,
              "Y": ys, "PHA": pha, "PI": pi, "FLAG": flag, "PATTERN": pattern,
              "PAT_ID": np.where(pattern == 0, 0, pattern.astype(np.int16) * 16),
              "PAT_SEQ": np.zeros(len(time), np.uint8), "CCDNR": ccdnr}
    cols = []
    for name, dt, *_ in _EVT_COLS:
        arr = np.asarray(values[name]).astype(np.dtype(dt).newbyteorder("="), copy=False)
        cols.append(fits.Column(name=name, format=_FORMS[np.dtype(dt).str[1:]], array=arr))
    del values
    ev = fits.BinTableHDU.from_columns(cols, name="EVENTS")
    del cols
    h = ev.header
    for i, (name, _, unit, lo, hi) in enumerate(_EVT_COLS, start=1):
        if unit:
            h[f"TUNIT{i}"] = unit
        if lo is not None:
            h[f"TLMIN{i}"] = lo
            h[f"TLMAX{i}"] = hi
    ix, iy = 6, 7  # X, Y columns
    for i, ctype, crval, cdelt in ((ix, "RA---TAN", ra_pnt, -DEG_PER_PIX),
                                   (iy, "DEC--TAN", dec_pnt, DEG_PER_PIX)):
        h[f"TCTYP{i}"] = (ctype, "WCS coordinate type")
        h[f"TCRPX{i}"] = (REF_PIX, "WCS reference pixel")
        h[f"TCRVL{i}"] = (float(ra_pnt if i == ix else dec_pnt), "[deg] WCS reference value")
        h[f"TCDLT{i}"] = (cdelt, "[deg/pix] WCS increment")
        h[f"TCUNI{i}"] = ("deg", "WCS units")
    _apply(h, common)
    h["EQUINOX"] = (2000.0, "Equinox for sky coordinate x/y axes")
    h["RADECSYS"] = ("FK5", "World coord. system for this file")
    for ax, crval, cdelt, ctype in (("X", ra_pnt, -DEG_PER_PIX, "RA---TAN"),
                                    ("Y", dec_pnt, DEG_PER_PIX, "DEC--TAN")):
        h[f"REF{ax}CTYP"] = (ctype, "WCS Coord. type")
        h[f"REF{ax}CRPX"] = (int(REF_PIX), "WCS axis reference pixel")
        h[f"REF{ax}CRVL"] = (float(crval), "[deg] WCS coord. at axis ref. pixel")
        h[f"REF{ax}CDLT"] = (cdelt, "[deg/pix] WCS increment at ref. pixel")
        h[f"REF{ax}LMIN"] = (1, "WCS minimum legal value")
        h[f"REF{ax}LMAX"] = (51840, "WCS maximum legal value")
        h[f"REF{ax}CUNI"] = ("deg", "WCS Physical units of axis")
    ontime = float(np.sum(ccd_gti[4][:, 1] - ccd_gti[4][:, 0]))
    h["TSTART"] = (t0, "[s] Date of first event")
    h["TSTOP"] = (t1, "[s] Date of last event")
    h["ONTIME"] = (ontime, "[s] Sum of GTIs (CCD 4)")
    h["LIVETIME"] = (0.999 * ontime, "[s] Live time (CCD 4)")
    h["TIMEDEL"] = (0.0687021985650063, "[s] Length of exposure entry interval")
    h["SRCPOSX"] = (37.7, "[pixel] real-valued RAWX source position")
    h["SRCPOSY"] = (190.9, "[pixel] real-valued RAWY source position")
    h["CCDSRC"] = (4, "CCDnr of source position")
    hdus = [_primary(common, "EPIC PN IMAGING MODE EVENT LIST"), ev]
    for c in range(1, 13):
        g = ccd_gti[c]
        gh = fits.BinTableHDU.from_columns(
            [fits.Column(name="START", format="D", unit="s", array=g[:, 0]),
             fits.Column(name="STOP", format="D", unit="s", array=g[:, 1])],
            name=f"STDGTI{c:02d}")
        gh.header["CCDID"] = (c, "CCD ID")
        gh.header["HDUCLASS"] = ("OGIP", "format conforms to OGIP standard")
        gh.header["HDUCLAS1"] = ("GTI", "table contains Good Time Intervals")
        gh.header["HDUCLAS2"] = ("STANDARD", "standard Good Time Interval table")
        gh.header["ONTIME"] = (float(np.sum(g[:, 1] - g[:, 0])), "[s] sum of all GTIs")
        gh.header["TSTART"] = (float(g[0, 0]), "[s] Lower bound of first GTI")
        gh.header["TSTOP"] = (float(g[-1, 1]), "[s] Upper bound of last GTI")
        hdus.append(gh)
    _write(path, hdus, compresslevel)


def _write_fbktsr(path, common, rng, t0, t1, fl, gap_iv, fbk_rate, flcutthr, write_thr,
                  compresslevel):
    nb = int(round((t1 - t0) / TIMEDEL_FBK))
    time = t0 + TIMEDEL_FBK * (np.arange(nb) + 0.5)
    mu = np.full(nb, fbk_rate)
    infl = (time >= fl[0]) & (time < fl[1])
    mu[infl] *= fl[2]
    cnt = rng.poisson(mu * TIMEDEL_FBK)
    rate = cnt / TIMEDEL_FBK
    err = np.sqrt(np.maximum(cnt, 1)) / TIMEDEL_FBK
    frac = np.ones(nb)
    for a, b in gap_iv:
        m = (time >= a) & (time < b)
        rate[m] = np.nan
        err[m] = np.nan
        frac[m] = 0.0
    thr = flcutthr if flcutthr is not None else fbk_rate + 4.0 * math.sqrt(fbk_rate / TIMEDEL_FBK)
    cols = [fits.Column(name="TIME", format="D", unit="s", array=time),
            fits.Column(name="RATE", format="E", unit="count/s", array=rate.astype(np.float32)),
            fits.Column(name="ERROR", format="E", unit="count/s", array=err.astype(np.float32)),
            fits.Column(name="FRACEXP", format="E", array=frac.astype(np.float32)),
            fits.Column(name="T_ELAPSED", format="D", unit="s", array=time - t0)]
    hdu = fits.BinTableHDU.from_columns(cols, name="RATE")
    h = hdu.header
    _apply(h, common)
    h["TSTART"] = (t0, "[s] start time")
    h["TSTOP"] = (t1, "[s] stop time")
    h["TIMEDEL"] = (TIMEDEL_FBK, "[s] bin width")
    if write_thr:
        h["FLCUTTHR"] = (float(thr), "Optimised flare cut threshold")
    _write(path, [_primary(common, "EPIC FLARE BACKGROUND TIME SERIES"), hdu], compresslevel)
    return float(thr) if write_thr else None


def _write_attitude(path, common, t0, t1, pa, ra_pnt, dec_pnt, bore, origin_at, compresslevel):
    t = np.arange(t0, t1 + 1, 10.0)
    ox, oy = origin_at(t)
    sx, sy = det_to_sky_pix(bore[0], bore[1], pa, ox, oy)
    ra, dec = pix_to_sky(sx, sy, ra_pnt, dec_pnt)
    cols = [fits.Column(name="TIME", format="D", unit="s", array=t),
            fits.Column(name="AHFRA", format="D", unit="deg", array=ra),
            fits.Column(name="AHFDEC", format="D", unit="deg", array=dec),
            fits.Column(name="AHFPA", format="D", unit="deg", array=np.full(len(t), pa))]
    hdu = fits.BinTableHDU.from_columns(cols, name="ATTHK")
    _apply(hdu.header, common)
    hdu.header["INSTRUME"] = ("", "Instrument name")
    _write(path, [_primary(common, "ATTITUDE TIME SERIES"), hdu], compresslevel)


def _write_calind(path, common, compresslevel):
    typeid = np.array([c.rsplit("_", 1)[0] for c in _CALFILES])
    issue = np.array([int(c.rsplit("_", 1)[1]) for c in _CALFILES], np.int16)
    cols = [fits.Column(name="SCOPE", format="4A", array=np.array(["XMM"] * len(typeid))),
            fits.Column(name="TYPEID", format="32A", array=typeid),
            fits.Column(name="ISSUE", format="I", array=issue)]
    hdu = fits.BinTableHDU.from_columns(cols, name="CALINDEX")
    _apply(hdu.header, common)
    _write(path, [_primary(common, "CALIBRATION INDEX FILE"), hdu], compresslevel)
