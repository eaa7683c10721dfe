"""The 68 % interval of a prediction's rate summed over a sky aperture (the aperture rule).

A prediction's ``LO68``/``HI68`` bound each pixel's rate. A sum over many pixels is not bounded by
the sum of the pixels' bounds (their errors are correlated, and partly cancel): the interval of a
sum ``s = sum(rate)`` is ``s - c x sum(rate - LO68)`` to ``s + c x sum(HI68 - rate)``, with the
scale ``c`` calibrated on simulated 20" apertures. ``c`` depends on the aperture's rate, since a
faint sum's errors are correlated over the whole aperture and a bright one's are not
(:class:`ApertureRule`): ``c = clip(APERSCAL + APERRSLP log10(s / APERRREF), APERCMIN, APERCMAX)``,
from the ``LO68`` header (``docs/outputs.md``); a file with ``APERSCAL`` alone has one ``c`` for
every aperture. :func:`aperture_interval` applies it to a circle on the sky; ``xmm-enhance
aperture`` prints it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError

__all__ = ["CALIBRATED_RADIUS_ARCSEC", "MIN_DATA_SHARE", "MIN_SCALE", "ApertureRule",
           "ApertureSum", "Circle", "InputExcess", "aperture_interval", "input_excess",
           "input_path_of", "load_prediction", "measure_circles", "read_circles",
           "read_prediction"]

#: The aperture radius the rule was calibrated for: the project's "20\" apertures" have a radius
#: of 20" (``benchmarks/bench_calibration.py``; the same apertures as ``PTFREE``'s).
CALIBRATED_RADIUS_ARCSEC = 20.0


#: An aperture with less than this share of its area on data draws a warning: the sum and its
#: interval then cover only that part.
MIN_DATA_SHARE = 0.9

#: The aperture rule's scale is never below this.
MIN_SCALE = 0.05


@dataclass(frozen=True)
class ApertureRule:
    """The aperture rule's scale ``c`` as a function of the aperture's summed rate ``s``
    (count/s): ``clip(scale + rate_slope log10(s / rate_ref), scale_min, scale_max)``, at least
    :data:`MIN_SCALE`; all at one input exposure. ``rate_slope`` 0 (a model or file without the
    brightness term) gives ``scale`` for every aperture."""

    scale: float
    rate_slope: float = 0.0
    rate_ref: float = 1e-3
    scale_min: float = MIN_SCALE
    scale_max: float = math.inf

    #: FITS keyword of each attribute (on ``LO68`` and ``HI68``) and its comment.
    KEYWORDS = (("scale", "APERSCAL", "c at APERRREF: sum -+ c x summed widths (68%)"),
                ("rate_slope", "APERRSLP", "change of c per decade of the sum's rate"),
                ("rate_ref", "APERRREF", "[count/s] rate of a sum at which c = APERSCAL"),
                ("scale_min", "APERCMIN", "c is at least this"),
                ("scale_max", "APERCMAX", "c is at most this"))

    def scale_for(self, rate_sum: float) -> float:
        """``c`` for an aperture whose rate sums to ``rate_sum`` (count/s)."""
        c = self.scale
        if self.rate_slope:
            c += self.rate_slope * math.log10(max(float(rate_sum), 1e-12) / self.rate_ref)
        return max(MIN_SCALE, min(max(c, self.scale_min), self.scale_max))

    def cards(self) -> list:
        """(keyword, value, comment) of the header cards that state the rule; the brightness
        term's only when it has one (and no infinite bound)."""
        if not self.rate_slope:
            return [("APERSCAL", float(self.scale), "aperture 68%: sum -+ c x summed widths")]
        return [(k, float(getattr(self, a)), c) for a, k, c in self.KEYWORDS
                if math.isfinite(getattr(self, a))]

    @classmethod
    def from_header(cls, header) -> "ApertureRule | None":
        """The rule a header states (None without ``APERSCAL``); ValueError for a value that is
        not a finite number, one not above 0, ``APERCMIN`` above ``APERCMAX``, or a
        brightness term (``APERRSLP`` not 0) without ``APERRREF``. A missing ``APERCMIN`` or
        ``APERCMAX`` leaves that side unbounded (as :meth:`cards` writes an infinite bound)."""
        if "APERSCAL" not in header:
            return None
        kw = {}
        for a, k, _ in cls.KEYWORDS:
            if k in header:
                v = header[k]
                if isinstance(v, bool) or not isinstance(v, (int, float)) \
                        or not math.isfinite(v):
                    raise ValueError(f"{k} = {v!r} is not a finite number")
                kw[a] = float(v)
        if kw.get("rate_slope"):
            if "rate_ref" not in kw:     # the clip may be absent: no bound on that side
                raise ValueError("APERRSLP without APERRREF")
        rule = cls(**kw)
        if min(rule.scale, rule.rate_ref, rule.scale_min, rule.scale_max) <= 0 \
                or rule.scale_min > rule.scale_max:
            raise ValueError("APERSCAL, APERRREF, APERCMIN and APERCMAX must be > 0 and "
                             "APERCMIN at most APERCMAX")
        return rule


@dataclass
class ApertureSum:
    """A prediction's rate summed over the pixels of an aperture that hold data, with its 68 %
    interval.

    Attributes
    ----------
    rate, lo68, hi68 : float
        Summed rate and the interval's ends (count/s); ``lo68`` is at least 0.
    counts, counts_lo68, counts_hi68 : float
        The same at the input's exposure (``INEXPO``), in counts; NaN without ``INEXPO``.
    npix : int
        Pixels whose centres lie in the aperture, on the image.
    npix_data : int
        Of them, those with data (``HI68 > 0`` and every map finite: not a CCD gap, not off the
        chips); only these are summed.
    npix_expected : float
        The pixel centres the circle holds, on and off the image.
    scale : float
        The rule's scale ``c`` used for this sum (:meth:`ApertureRule.scale_for`).
    """

    rate: float
    lo68: float
    hi68: float
    counts: float
    counts_lo68: float
    counts_hi68: float
    npix: int
    npix_data: int
    npix_expected: float
    scale: float = math.nan

    @property
    def data_share(self) -> float:
        """Share of the aperture's pixels that hold data (``npix_data / npix_expected``, at
        most 1)."""
        return min(1.0, self.npix_data / self.npix_expected) if self.npix_expected else 0.0


def _damaged(path: Path, why: str) -> InputError:
    return InputError(f"{path}: {why}; make the prediction again with run_inference_on_real.py "
                      "(--overwrite)")


@dataclass
class _Prediction:
    path: Path
    rate: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    wcs: object
    rule: ApertureRule
    exposure: float
    insha: str | None
    sources: tuple | None      # (RA, DEC, COUNTS) of SOURCES, or None


def _load(path) -> _Prediction:
    from astropy.io import fits
    from astropy.wcs import WCS

    from .batch import cut_short

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise InputError(f"{path}: is a folder; give a *_predict_wcs_SR/DN.fits.gz file")
    try:
        _, cut = cut_short(path)
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc}); check its "
                         "permissions") from None
    if cut:
        raise _damaged(path, f"cut short ({cut})")
    sources = None
    try:
        with fits.open(path, memmap=False) as h:
            names = [x.name for x in h]
            if "LO68" not in names or "HI68" not in names:
                raise InputError(f"{path}: no LO68/HI68 extensions; give a prediction made by "
                                 "run_inference_on_real.py (*_predict_wcs_SR/DN.fits.gz)")
            rate = np.asarray(h[0].data, np.float64)
            lo = np.asarray(h["LO68"].data, np.float64)
            hi = np.asarray(h["HI68"].data, np.float64)
            try:
                rule = ApertureRule.from_header(h["LO68"].header)
            except ValueError as exc:
                raise _damaged(path, f"LO68's aperture rule: {exc}") from None
            exposure = h[0].header.get("INEXPO")
            insha = h[0].header.get("INSHA")
            wcs = WCS(h[0].header).celestial
            if "SOURCES" in names and h["SOURCES"].data is not None:
                t = h["SOURCES"].data
                if {"RA", "DEC", "COUNTS"} <= set(t.columns.names):
                    sources = tuple(np.asarray(t[c], np.float64) for c in ("RA", "DEC",
                                                                           "COUNTS"))
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - astropy's many ways of saying "not readable"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise _damaged(path, f"not a readable prediction ({first})") from None
    if rate.ndim != 2 or lo.shape != rate.shape or hi.shape != rate.shape:
        raise _damaged(path, "the primary image and LO68/HI68 differ in shape")
    if rule is None:
        raise InputError(f"{path}: LO68 has no APERSCAL (a model without the aperture "
                         "calibration); the interval of a sum is not known for it")
    types = [str(t).upper() for t in wcs.wcs.ctype] if wcs.naxis == 2 else []
    if not (len(types) == 2 and {t[:4] for t in types} == {"RA--", "DEC-"}):
        raise InputError(f"{path}: no RA/Dec WCS; an aperture on the sky needs one")
    bad = ~(np.isfinite(rate) & np.isfinite(lo) & np.isfinite(hi))
    if bad.any():
        rate, lo, hi = (np.where(bad, np.nan, a) for a in (rate, lo, hi))
    try:
        exposure = float(exposure)
    except (TypeError, ValueError):
        exposure = float("nan")
    return _Prediction(path, rate, lo, hi, wcs, rule, exposure,
                       str(insha) if insha else None, sources)


def load_prediction(path) -> _Prediction:
    """A prediction file read once, for several :func:`aperture_interval` /
    :func:`input_excess` calls (each also takes the path itself); the same errors as
    :func:`read_prediction`."""
    return path if isinstance(path, _Prediction) else _load(path)


def read_prediction(path):
    """(rate, lo68, hi68, celestial WCS, :class:`ApertureRule`, input exposure) of a
    ``*_predict_wcs_<W>.fits.gz`` file: float64 maps (non-finite pixels of any map are NaN in
    all three); InputError, naming the file and the fix, for a missing, cut or damaged file, one
    without its ``LO68``/``HI68`` (or ``APERSCAL``), or without an RA/Dec WCS. The input
    exposure is NaN without ``INEXPO``."""
    p = _load(path)
    return p.rate, p.lo, p.hi, p.wcs, p.rule, p.exposure


def _sum(rate, lo, hi, sel, rule, exposure, npix_expected) -> ApertureSum:
    data = sel & (hi > 0)   # read_prediction made a pixel NaN in all three maps or none
    s = float(rate[data].sum())
    scale = rule.scale_for(s)
    low = max(0.0, s - scale * float((rate - lo)[data].sum()))
    high = s + scale * float((hi - rate)[data].sum())
    return ApertureSum(s, low, high, s * exposure, low * exposure, high * exposure,
                       int(sel.sum()), int(data.sum()), float(npix_expected), scale)


def _centre(wcs, shape, ra, dec, path):
    """(x, y) pixel of (``ra``, ``dec``); InputError when it is off the image."""
    lng, lat = wcs.wcs.lng, wcs.wcs.lat        # axis order as the header gives it
    world = [0.0, 0.0]
    world[lng], world[lat] = float(ra), float(dec)
    x, y = wcs.all_world2pix([world], 0)[0]
    if not (np.isfinite(x) and np.isfinite(y)
            and -0.5 <= x < shape[1] - 0.5 and -0.5 <= y < shape[0] - 0.5):
        raise InputError(f"{path}: RA {ra:g}, Dec {dec:g} is off the image; give a position "
                         "inside it")
    return float(x), float(y)


def _angle_arcsec(ra0, dec0, ra, dec):
    """Angle on the sky (arcsec) from (``ra0``, ``dec0``) to (``ra``, ``dec``) (deg; arrays
    broadcast), by the haversine: accurate at small angles."""
    a0, d0, a1, d1 = (np.radians(np.asarray(v, np.float64)) for v in (ra0, dec0, ra, dec))
    h = np.sin((d1 - d0) / 2) ** 2 + np.cos(d0) * np.cos(d1) * np.sin((a1 - a0) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))) * 3600.0


def _separations(wcs, shape, ra, dec, reach_arcsec, path):
    """Angle (arcsec) of each pixel centre from (``ra``, ``dec``) on the sky, over the part of
    the image within a box reaching ``reach_arcsec`` around it: (sep [ny, nx] of the box,
    (y0, x0) of its first pixel, whether the box was cut at the image's edge, the centre's
    (x, y) pixel). InputError when the centre is off the image."""
    lng, lat = wcs.wcs.lng, wcs.wcs.lat
    x, y = _centre(wcs, shape, ra, dec, path)
    scales = np.abs(np.linalg.svd(wcs.pixel_scale_matrix, compute_uv=False)) * 3600.0
    reach = int(min(math.ceil(reach_arcsec / scales.min()) + 1, 2 * max(shape)))
    yc, xc = int(round(y)), int(round(x))
    y0, y1 = max(yc - reach, 0), min(yc + reach + 1, shape[0])
    x0, x1 = max(xc - reach, 0), min(xc + reach + 1, shape[1])
    cut = (y0, x0, y1, x1) != (yc - reach, xc - reach, yc + reach + 1, xc + reach + 1)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    w = wcs.all_pix2world(xx.ravel(), yy.ravel(), 0)
    sep = _angle_arcsec(float(ra), float(dec), w[lng], w[lat])
    return sep.reshape(yy.shape), (y0, x0), cut, (x, y)


def _lattice_count(wcs, x, y, radius_arcsec) -> int:
    """Pixel centres (on and off the image) within ``radius_arcsec`` of pixel (``x``, ``y``),
    with the WCS's local linear scale there (exact to ~1e-6 relative over the pn's field):
    row by row, the centres inside the ellipse the sky circle makes on the pixel grid."""
    d = 1e-3
    p0 = wcs.all_pix2world([[x, y], [x + d, y], [x, y + d]], 0)
    lng, lat = wcs.wcs.lng, wcs.wcs.lat
    cosd = math.cos(math.radians(p0[0][lat]))
    J = np.array([[((p0[k][lng] - p0[0][lng] + 180.0) % 360.0 - 180.0) * cosd,
                   p0[k][lat] - p0[0][lat]]
                  for k in (1, 2)]).T * 3600.0 / d        # arcsec per pixel, columns x and y
    # |J (u, v)|^2 <= r^2 with u = X - x, v = Y - y: a u^2 + 2 b u v + c v^2 <= r^2
    a, b, c = J[:, 0] @ J[:, 0], J[:, 0] @ J[:, 1], J[:, 1] @ J[:, 1]
    r2 = float(radius_arcsec) ** 2
    vmax = math.sqrt(r2 * a / max(a * c - b * b, 1e-300))
    total = 0
    for Y in range(math.ceil(y - vmax), math.floor(y + vmax) + 1):
        v = Y - y
        disc = (b * v) ** 2 - a * (c * v * v - r2)
        if disc < 0:
            continue
        lo_u, hi_u = (-b * v - math.sqrt(disc)) / a, (-b * v + math.sqrt(disc)) / a
        total += max(0, math.floor(x + hi_u) - math.ceil(x + lo_u) + 1)
    return total


def _on_image(box, origin, shape):
    """A box-shaped map (:func:`_separations`) placed on the image: [ny, nx], False off the
    box."""
    out = np.zeros(shape, box.dtype)
    y0, x0 = origin
    ys, xs = max(y0, 0), max(x0, 0)
    ye, xe = min(y0 + box.shape[0], shape[0]), min(x0 + box.shape[1], shape[1])
    if ys < ye and xs < xe:
        out[ys:ye, xs:xe] = box[ys - y0:ye - y0, xs - x0:xe - x0]
    return out


def _aperture_pixels(wcs, shape, ra, dec, radius_arcsec, path):
    """Pixels of the image whose centres lie within ``radius_arcsec`` of (``ra``, ``dec``) on
    the sky (the angle from the centre, so any pixel shape or projection), bool [ny, nx], and
    how many pixel centres the circle holds on and off the image."""
    sep, origin, cut, (x, y) = _separations(wcs, shape, ra, dec, radius_arcsec, path)
    inside = sep <= radius_arcsec
    n = int(inside.sum())
    if cut:
        n = max(n, _lattice_count(wcs, x, y, radius_arcsec))
    return _on_image(inside, origin, shape), n


def _interval(pred: _Prediction, ra, dec, radius_arcsec) -> ApertureSum:
    sel, area = _aperture_pixels(pred.wcs, pred.rate.shape, ra, dec, radius_arcsec, pred.path)
    out = _sum(pred.rate, pred.lo, pred.hi, sel, pred.rule, pred.exposure, area)
    if out.npix_data == 0:
        raise InputError(f"{pred.path}: no data within {radius_arcsec:g}\" of RA {ra:g}, Dec "
                         f"{dec:g} (a CCD gap or off the chips); give a position on a CCD")
    return out


def aperture_interval(path, ra: float, dec: float,
                      radius_arcsec: float = CALIBRATED_RADIUS_ARCSEC) -> ApertureSum:
    """The rate of prediction ``path`` (or a :func:`load_prediction` result) summed over the
    pixels with data whose centres lie
    within ``radius_arcsec`` of (``ra``, ``dec``) (deg, in the file's frame), with its 68 %
    interval by the aperture rule.

    The rule is calibrated for 20" apertures (radius 20", the default); other radii get the
    same rule, uncalibrated. For an SR prediction the rate is the sky's, background removed,
    with point sources drawn with the PSF halved; for DN it includes the background. An
    aperture with no pixel of data (a CCD gap, off the chips) is an InputError; check
    :attr:`ApertureSum.data_share` for one partly off the data.
    """
    if not (math.isfinite(radius_arcsec) and 0 < radius_arcsec <= MAX_RADIUS_ARCSEC):
        raise ValueError(f"radius_arcsec: must be > 0 and at most {MAX_RADIUS_ARCSEC:g}, got {radius_arcsec!r}")
    return _interval(load_prediction(path), ra, dec, radius_arcsec)


@dataclass
class InputExcess:
    """The input's counts in a circle against those of a ring around it (an on/off test on the
    photons, independent of the network).

    Attributes
    ----------
    counts : int
        Input counts in the circle's pixels with data.
    ring_counts : int
        Input counts in the ring's pixels with data.
    npix, npix_ring : int
        Input pixels with data in the circle and in the ring.
    expected : float
        Counts the circle would hold at the ring's level (``ring_counts x npix / npix_ring``).
    signif : float
        One-sided significance (sigma) of the circle's excess over the ring's level: the
        exact conditional test of two Poisson counts (given ``counts + ring_counts``, the
        circle's share is binomial with ``npix / (npix + npix_ring)``), so the ring's own noise
        is included; negative for a deficit; at most ~37 either way (the tail's float limit).
    near_source : tuple or None
        (distance in arcsec, ``COUNTS``) of the brightest ``SOURCES`` entry (>= 100 counts)
        outside the circle whose PSF wings reach the circle or the ring (within the ring's
        outer radius + 30"), when the prediction has a source list: its wings then take part
        in the test.
    ring_uneven : tuple or None
        (highest over lowest sector level, chi-square probability) when the ring's
        :data:`RING_SECTORS` azimuthal sectors differ by more than Poisson noise allows
        (probability below :data:`RING_UNEVEN_P`): a gradient or bright emission (a cluster
        core, a source not in ``SOURCES``) crosses the ring, and its mean is not the circle's
        level. None when the ring is even, or too faint to tell.
    """

    counts: int
    ring_counts: int
    npix: int
    npix_ring: int
    expected: float
    signif: float
    near_source: tuple | None = None
    ring_uneven: tuple | None = None

    @property
    def excess(self) -> float:
        return self.counts - self.expected


#: ``CONTENT`` of the input files run_inference_on_real.py writes.
INPUT_CONTENT = "masked padded input rate"
#: Largest circle or ring radius (arcsec) accepted: 10 degrees, far beyond the pn's field.
MAX_RADIUS_ARCSEC = 36000.0

#: A SOURCES entry this bright (counts) or more, within the ring's outer radius plus
#: WING_REACH_ARCSEC of the circle's centre, is reported as shining into the ring test.
WING_MIN_COUNTS = 100.0
WING_REACH_ARCSEC = 30.0


def input_path_of(path) -> Path:
    """The ``<stem>_input_wcs_<W>.fits.gz`` that run_inference_on_real.py wrote beside the
    prediction ``<stem>_predict_wcs_<W>.fits[.gz]`` (the first of ``.fits.gz``, ``.fits`` that
    exists, else the ``.fits.gz`` name)."""
    path = Path(path)
    stem, tag, rest = path.name.rpartition("_predict_wcs_")
    if not tag:
        raise InputError(f"{path}: not named *_predict_wcs_SR/DN.fits.gz, so its input file "
                         "is not known; name it with --input")
    which = rest.split(".", 1)[0]
    names = [path.with_name(f"{stem}_input_wcs_{which}{ext}") for ext in (".fits.gz", ".fits")]
    return next((n for n in names if n.exists()), names[0])


def _signif(n_on: int, n_off: int, share: float) -> float:
    """One-sided significance (sigma) of ``n_on`` counts in a region holding ``share`` of the
    on + off area, given ``n_on + n_off``: binomial tail, as a Gaussian's sigma."""
    from scipy import stats

    n = n_on + n_off
    if n == 0:
        return 0.0
    if n_on >= share * n:
        p = stats.binom.sf(n_on - 1, n, share)           # P(X >= n_on)
        return float(min(stats.norm.isf(max(p, 1e-300)), 38.0)) if p < 0.5 else 0.0
    p = stats.binom.cdf(n_on, n, share)                   # P(X <= n_on): a deficit
    return -float(min(stats.norm.isf(max(p, 1e-300)), 38.0)) if p < 0.5 else 0.0


@dataclass
class _Input:
    path: Path
    counts: np.ndarray
    data: np.ndarray
    wcs: object


def _load_input(pred: _Prediction, input_path=None) -> _Input:
    """The input file beside the prediction (or ``input_path``) as counts, with the pixels
    that have data; InputError when it is missing, unreadable, or not the input of this
    prediction: ``INSHA`` differs, or (without ``INSHA`` on both) its grid or ``INEXPO``
    does not match the prediction's."""
    from astropy.io import fits
    from astropy.wcs import WCS

    ipath = Path(input_path) if input_path is not None else input_path_of(pred.path)
    if not ipath.exists():
        raise InputError(f"{ipath}: no such file; the ring test reads the input file that "
                         "run_inference_on_real.py writes beside the prediction; name it with "
                         "--input, or make both again (--overwrite)")
    def not_input(why):
        return InputError(f"{ipath}: {why}; give the prediction's own *_input_wcs_* file "
                          "(--input), or make both again with run_inference_on_real.py "
                          "(--overwrite)")

    if ipath.is_dir():
        raise not_input("is a folder")
    try:
        with fits.open(ipath, memmap=False) as h:
            names = [x.name for x in h]
            rate = np.asarray(h[0].data, np.float64)
            hdr = h[0].header
            wcs = WCS(hdr).celestial
    except Exception as exc:  # noqa: BLE001 - astropy's many ways of saying "not readable"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise not_input(f"not a readable input file ({first})") from None
    # a prediction carries its input's INSHA too: tell them apart by what they hold
    if "LO68" in names or "HI68" in names or hdr.get("CONTENT", INPUT_CONTENT) != INPUT_CONTENT:
        raise not_input(f"not an input file (CONTENT {hdr.get('CONTENT', '?')!r})")
    hi = pred.hi
    if rate.ndim != 2 or hi.shape[0] % rate.shape[0] or hi.shape[1] % rate.shape[1] \
            or hi.shape[0] // rate.shape[0] != hi.shape[1] // rate.shape[1]:
        raise not_input(f"its grid {rate.shape} does not match the prediction's {hi.shape}")
    f = hi.shape[0] // rate.shape[0]
    other = (f"{ipath}: not the input of {pred.path.name} (%s); give its own input file "
             "(--input) or make both again (--overwrite)")
    if pred.insha and hdr.get("INSHA"):
        if hdr["INSHA"] != pred.insha:
            raise InputError(other % "INSHA differs")
    else:
        # no checksum to compare: input pixel i lies under prediction pixels f i .. f i + f - 1
        ny, nx = rate.shape
        pix = np.array([[0.0, 0.0], [nx - 1.0, 0.0], [0.0, ny - 1.0], [nx - 1.0, ny - 1.0]])
        try:
            back = pred.wcs.all_world2pix(wcs.all_pix2world(pix, 0), 0)
        except Exception:  # noqa: BLE001 - a WCS that cannot be inverted: not the same grid
            back = np.full_like(pix, np.nan)
        if not np.allclose(back, f * pix + (f - 1) / 2, atol=0.05):
            raise InputError(other % "its grid is not under the prediction's")
        inexpo = hdr.get("INEXPO")
        if inexpo is not None and math.isfinite(pred.exposure) \
                and not math.isclose(float(inexpo), pred.exposure, rel_tol=1e-6):
            raise InputError(other % "INEXPO differs")
    exposure = hdr.get("INEXPO", hdr.get("EXPOSURE"))
    try:
        exposure = float(exposure)
    except (TypeError, ValueError):
        exposure = float("nan")
    if not (math.isfinite(exposure) and exposure > 0):
        raise not_input("no INEXPO or EXPOSURE, so its counts are not known")
    counts = np.where(np.isfinite(rate), np.rint(rate * exposure), 0.0)
    # an input pixel has data when every output pixel on it has (CCD gaps are 0 in all maps)
    data = (hi.reshape(rate.shape[0], f, rate.shape[1], f) > 0).all(axis=(1, 3))
    # ... and when the model was given it: the maps also fill the CCD-edge and flagged columns
    # that FLAG == 0 empties in the input (photons land there in other exposures), but this
    # input holds no photon there, and counting them as area biases the ring test
    given = _given_pixels(counts, hdr)
    if given is not None:
        data &= given
    return _Input(ipath, np.where(data, counts, 0.0), data, wcs)


def _given_pixels(counts, hdr):
    """The pixels of a padded pn-grid input file that the model was given
    (``inference.input_mask`` of the unpadded counts, padded back), or None when the file is
    not a pn-grid input (``PADTOP``/``PADLEFT`` missing or not those of the pn grid's centred
    pad, or counts outside the pn grid's place)."""
    from . import detector
    from .inference import _place, input_mask

    top, left = hdr.get("PADTOP"), hdr.get("PADLEFT")
    ny, nx = detector.PN_SHAPE
    H, W = counts.shape
    if not (isinstance(top, int) and isinstance(left, int)) or isinstance(top, bool) \
            or (top, left) != ((H - ny) // 2, (W - nx) // 2) or top < 0 or left < 0:
        return None
    inside = np.zeros(counts.shape, bool)
    inside[top:top + ny, left:left + nx] = True
    if counts[~inside].any():
        return None
    mask = input_mask(counts[top:top + ny, left:left + nx])
    return _place(mask, counts.shape, top, left)


def _check_ring(ring_arcsec, radius_arcsec):
    inner, outer = (float(v) for v in ring_arcsec)
    if not (math.isfinite(inner) and math.isfinite(outer) and radius_arcsec <= inner < outer
            <= MAX_RADIUS_ARCSEC):
        raise ValueError(f"ring_arcsec: give inner < outer (at most {MAX_RADIUS_ARCSEC:g}\"), "
                         f"inner at least the radius ({radius_arcsec:g}\"), got {ring_arcsec!r}")
    return inner, outer


#: The ring test's flatness check: azimuthal sectors of the ring, the chi-square probability
#: below which their levels differ by more than Poisson noise, and the fewest counts per sector
#: for the check to be made.
RING_SECTORS = 8
RING_UNEVEN_P = 1e-3
RING_SECTOR_MIN_COUNTS = 5.0


def _ring_uneven(counts, ring, centre):
    """(highest / lowest sector level, probability) of a ring whose azimuthal sectors differ
    by more than Poisson noise (chi-square against one level), else None."""
    from scipy.stats import chi2

    ys, xs = np.nonzero(ring)
    ang = np.arctan2(ys - centre[1], xs - centre[0])
    k = np.minimum(((ang + np.pi) / (2 * np.pi) * RING_SECTORS).astype(int), RING_SECTORS - 1)
    n = np.bincount(k, weights=counts[ys, xs], minlength=RING_SECTORS)
    a = np.bincount(k, minlength=RING_SECTORS).astype(np.float64)
    use = a > 0
    level = n[use].sum() / a[use].sum()
    expect = level * a[use]
    if use.sum() < 3 or expect.min() < RING_SECTOR_MIN_COUNTS:
        return None
    stat = float((((n[use] - expect) ** 2) / expect).sum())
    prob = float(chi2.sf(stat, int(use.sum()) - 1))
    if prob >= RING_UNEVEN_P:
        return None
    rates = n[use] / a[use]
    return float(rates.max() / max(rates.min(), 1e-9 * level)), prob


def _excess(pred: _Prediction, inp: _Input, ra, dec, ring_arcsec, radius_arcsec):
    inner, outer = _check_ring(ring_arcsec, radius_arcsec)
    shape = inp.counts.shape
    sep, origin, _, centre = _separations(inp.wcs, shape, ra, dec, outer, inp.path)
    circle = _on_image(sep <= radius_arcsec, origin, shape) & inp.data
    ring = _on_image((sep > inner) & (sep <= outer), origin, shape) & inp.data
    if not circle.any():
        raise InputError(f"{inp.path}: no input pixel with data within {radius_arcsec:g}\" "
                         f"of RA {ra:g}, Dec {dec:g} (the input's pixels are 4\"); give a "
                         "position on a CCD, or a wider --radius")
    if not ring.any():
        raise InputError(f"{inp.path}: no input pixel with data in the {inner:g}-{outer:g}\" "
                         "ring (the input's pixels are 4\"); give a ring at least 8\" wide "
                         "that reaches the CCDs")
    n_on, n_off = int(inp.counts[circle].sum()), int(inp.counts[ring].sum())
    a_on, a_off = int(circle.sum()), int(ring.sum())
    near = None
    if pred.sources is not None and len(pred.sources[0]):
        sra, sdec, scounts = pred.sources
        dist = _angle_arcsec(ra, dec, sra, sdec)
        k = ((dist <= outer + WING_REACH_ARCSEC) & (dist > radius_arcsec)
             & (scounts >= WING_MIN_COUNTS))
        if k.any():
            i = np.flatnonzero(k)[np.argmax(scounts[k])]
            near = (float(dist[i]), float(scounts[i]))
    return InputExcess(n_on, n_off, a_on, a_off, n_off * a_on / a_off,
                       _signif(n_on, n_off, a_on / (a_on + a_off)), near,
                       _ring_uneven(inp.counts, ring, centre))


def input_excess(path, ra: float, dec: float, ring_arcsec: tuple,
                 radius_arcsec: float = CALIBRATED_RADIUS_ARCSEC,
                 input_path=None) -> InputExcess:
    """The input's counts within ``radius_arcsec`` of (``ra``, ``dec``) against the ring
    ``ring_arcsec`` = (inner, outer) around it, from the input file beside prediction
    ``path`` (or a :func:`load_prediction` result; :func:`input_path_of`, or ``input_path``),
    over the pixels with data (those the
    prediction's ``HI68`` marks that the model was given: on the pn grid, not the CCD-edge and
    flagged columns that the input's FLAG == 0 empties). Does a knot stand above its
    surroundings in the photons themselves?

    InputError when the input file is missing or not the one the prediction was made from
    (its ``INSHA``, or without one its grid or ``INEXPO``, differs), or when the circle or the
    ring holds no data; ValueError for a ring that does not lie outside the circle."""
    _check_ring(ring_arcsec, radius_arcsec)
    pred = load_prediction(path)
    return _excess(pred, _load_input(pred, input_path), ra, dec, ring_arcsec, radius_arcsec)


@dataclass
class Circle:
    """A circle of a ds9 region file on the sky: centre (deg) and radius (arcsec)."""

    ra: float
    dec: float
    radius_arcsec: float
    text: str = ""
    line: int = 0


#: ds9 coordinate systems whose circles are read (RA/Dec in the image WCS's frame).
SKY_SYSTEMS = ("fk5", "icrs", "j2000")
_RADIUS_UNITS = {'"': 1.0, "'": 60.0, "d": 3600.0, "r": 180 / math.pi * 3600.0}


def _sky_value(text: str, hours: bool) -> float:
    """A ds9 coordinate: degrees, or sexagesimal ``h:m:s`` (RA) / ``d:m:s`` (Dec)."""
    text = text.strip()
    if ":" in text or any(c in text for c in "hms"):
        from astropy.coordinates import Angle

        return float(Angle(text, unit="hourangle" if hours else "deg").deg)
    return float(text.rstrip("d"))


def read_circles(path) -> tuple:
    """The circles of a ds9 region file in ``fk5``/``icrs`` (as ``*_sources_SR.reg``, or
    circles drawn in ds9 and saved in fk5): (list of :class:`Circle`, number of regions that are
    not circles, or excluded ones, skipped). Radii in ``"``, ``'`` or degrees (ds9's default);
    centres in degrees or sexagesimal. InputError naming the file and the line for circles in
    another system (image, physical, galactic) or ones that cannot be read, and for a file
    without any circle."""
    import re

    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig", errors="replace").splitlines()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file; check the path") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    system, out, skipped = None, [], 0
    shape_re = re.compile(r"^\s*([+-]?)\s*([a-z]+)\s*\((.*)\)\s*$", re.I)
    for n, raw in enumerate(lines, 1):
        body, _, comment = raw.partition("#")
        for part in (p.strip() for p in body.split(";")):
            part = part.removesuffix("||").strip()    # a member of a ds9 composite region
            low = part.lower()
            if not part or low.startswith("global") or low.startswith("# region"):
                continue
            if re.fullmatch(r"[a-z0-9]+", low):
                system = low
                continue
            m = shape_re.match(part)
            if not m:
                raise InputError(f"{path}: line {n} is not a ds9 region ({part[:40]!r}); "
                                 "save the regions from ds9 in its own format")
            sign, shape, args = m.group(1), m.group(2).lower(), m.group(3)
            if shape != "circle" or sign == "-":
                skipped += 1
                continue
            if system not in SKY_SYSTEMS:
                raise InputError(f"{path}: line {n}: a circle in {system or 'no'} coordinates; "
                                 "save the regions in fk5 (ds9: Region > Save, coordinate "
                                 "system fk5)")
            vals = [v.strip() for v in args.split(",")]
            try:
                if len(vals) != 3:
                    raise ValueError("not 3 values")
                r = vals[2]
                unit = _RADIUS_UNITS.get(r[-1:], None)
                radius = float(r[:-1] if unit else r) * (unit or 3600.0)
                ra, dec = _sky_value(vals[0], True), _sky_value(vals[1], False)
                if not (math.isfinite(ra) and math.isfinite(dec) and -90 <= dec <= 90
                        and math.isfinite(radius) and 0 < radius <= MAX_RADIUS_ARCSEC):
                    raise ValueError("out of range")
            except ValueError:
                raise InputError(f"{path}: line {n}: circle({args[:60]}) cannot be read; give "
                                 "circle(RA,DEC,RADIUS\") in fk5") from None
            text = re.search(r"text=\{([^}]*)\}", comment)
            out.append(Circle(ra % 360.0, dec, radius, text.group(1) if text else "", n))
    if not out:
        raise InputError(f"{path}: no fk5 circle in it; draw circles in ds9 and save them in "
                         "fk5")
    return out, skipped


def measure_circles(path, circles, ring_arcsec=None, input_path=None) -> list:
    """:func:`aperture_interval` (and, with ``ring_arcsec``, :func:`input_excess`) for each
    :class:`Circle` (its own radius), reading the files once: a list of (circle, ApertureSum or
    the one-line reason it has none, InputExcess or the reason, or None without a ring). A
    circle off the image or off the data gets its reason and the others go on; a missing or
    wrong input file is an InputError for all."""
    pred = load_prediction(path)
    inp = _load_input(pred, input_path) if ring_arcsec is not None else None
    out = []
    for c in circles:
        try:
            a = _interval(pred, c.ra, c.dec, c.radius_arcsec)
        except InputError as exc:
            out.append((c, str(exc).split(": ", 1)[-1], None))
            continue
        e = None
        if inp is not None:
            try:
                e = _excess(pred, inp, c.ra, c.dec, ring_arcsec, c.radius_arcsec)
            except (InputError, ValueError) as exc:
                e = str(exc).split(": ", 1)[-1]
        out.append((c, a, e))
    return out
