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
           "ApertureSum", "InputExcess", "aperture_interval", "input_excess", "input_path_of",
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
        keys = self.KEYWORDS if self.rate_slope else self.KEYWORDS[:1]
        return [(k, float(getattr(self, a)), c) for a, k, c in keys
                if math.isfinite(getattr(self, a))]

    @classmethod
    def from_header(cls, header) -> "ApertureRule | None":
        """The rule a header states (None without ``APERSCAL``); ValueError for a value that is
        not a finite number, or ``APERCMIN`` above ``APERCMAX``."""
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
        rule = cls(**kw)
        if rule.rate_ref <= 0 or rule.scale_min > rule.scale_max:
            raise ValueError("APERRREF must be > 0 and APERCMIN at most APERCMAX")
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


def read_prediction(path):
    """(rate, lo68, hi68, celestial WCS, :class:`ApertureRule`, input exposure) of a
    ``*_predict_wcs_<W>.fits.gz`` file: float64 maps (non-finite pixels of any map are NaN in
    all three); InputError, naming the file and the fix, for a missing, cut or damaged file, one
    without its ``LO68``/``HI68`` (or ``APERSCAL``), or without an RA/Dec WCS. The input
    exposure is NaN without ``INEXPO``."""
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
            wcs = WCS(h[0].header).celestial
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
    return rate, lo, hi, wcs, rule, exposure


def _sum(rate, lo, hi, sel, rule, exposure, npix_expected) -> ApertureSum:
    data = sel & (hi > 0)   # read_prediction made a pixel NaN in all three maps or none
    s = float(rate[data].sum())
    scale = rule.scale_for(s)
    low = max(0.0, s - scale * float((rate - lo)[data].sum()))
    high = s + scale * float((hi - rate)[data].sum())
    return ApertureSum(s, low, high, s * exposure, low * exposure, high * exposure,
                       int(sel.sum()), int(data.sum()), float(npix_expected), scale)


def _separations(wcs, shape, ra, dec, reach_arcsec, path):
    """Angle (arcsec) of each pixel centre from (``ra``, ``dec``) on the sky, within a box
    reaching ``reach_arcsec`` around it, on and off the image: (sep [ny, nx] of the box,
    (y0, x0) of the box's first pixel). InputError when the centre is off the image."""
    lng, lat = wcs.wcs.lng, wcs.wcs.lat        # axis order as the header gives it
    world = [0.0, 0.0]
    world[lng], world[lat] = float(ra), float(dec)
    x, y = wcs.all_world2pix([world], 0)[0]
    if not (np.isfinite(x) and np.isfinite(y)
            and -0.5 <= x < shape[1] - 0.5 and -0.5 <= y < shape[0] - 0.5):
        raise InputError(f"{path}: RA {ra:g}, Dec {dec:g} is off the image; give a position "
                         "inside it")
    scales = np.abs(np.linalg.svd(wcs.pixel_scale_matrix, compute_uv=False)) * 3600.0
    reach = int(math.ceil(reach_arcsec / scales.min())) + 1
    y0, x0 = int(round(y)) - reach, int(round(x)) - reach
    yy, xx = np.mgrid[y0:y0 + 2 * reach + 1, x0:x0 + 2 * reach + 1]
    w = wcs.all_pix2world(xx.ravel(), yy.ravel(), 0)
    a0, d0, a1, d1 = (np.radians(v) for v in (float(ra), float(dec), w[lng], w[lat]))
    # haversine: accurate at small angles
    h = (np.sin((d1 - d0) / 2) ** 2
         + np.cos(d0) * np.cos(d1) * np.sin((a1 - a0) / 2) ** 2)
    sep = np.degrees(2 * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))) * 3600.0
    return sep.reshape(yy.shape), (y0, x0)


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
    sep, origin = _separations(wcs, shape, ra, dec, radius_arcsec, path)
    inside = sep <= radius_arcsec
    return _on_image(inside, origin, shape), int(inside.sum())


def aperture_interval(path, ra: float, dec: float,
                      radius_arcsec: float = CALIBRATED_RADIUS_ARCSEC) -> ApertureSum:
    """The rate of prediction ``path`` summed over the pixels with data whose centres lie
    within ``radius_arcsec`` of (``ra``, ``dec``) (deg, in the file's frame), with its 68 %
    interval by the aperture rule.

    The rule is calibrated for 20" apertures (radius 20", the default); other radii get the
    same rule, uncalibrated. For an SR prediction the rate is the sky's, background removed,
    with point sources drawn with the PSF halved; for DN it includes the background. An
    aperture with no pixel of data (a CCD gap, off the chips) is an InputError; check
    :attr:`ApertureSum.data_share` for one partly off the data.
    """
    if not (math.isfinite(radius_arcsec) and radius_arcsec > 0):
        raise ValueError(f"radius_arcsec: must be > 0, got {radius_arcsec!r}")
    rate, lo, hi, wcs, rule, exposure = read_prediction(path)
    sel, area = _aperture_pixels(wcs, rate.shape, ra, dec, radius_arcsec, path)
    out = _sum(rate, lo, hi, sel, rule, exposure, area)
    if out.npix_data == 0:
        raise InputError(f"{path}: no data within {radius_arcsec:g}\" of RA {ra:g}, Dec "
                         f"{dec:g} (a CCD gap or off the chips); give a position on a CCD")
    return out


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
        is included; negative for a deficit.
    """

    counts: int
    ring_counts: int
    npix: int
    npix_ring: int
    expected: float
    signif: float

    @property
    def excess(self) -> float:
        return self.counts - self.expected


def input_path_of(path) -> Path:
    """The ``<stem>_input_wcs_<W>.fits.gz`` that run_inference_on_real.py wrote beside the
    prediction ``<stem>_predict_wcs_<W>.fits.gz``."""
    path = Path(path)
    stem, tag, rest = path.name.rpartition("_predict_wcs_")
    if not tag:
        raise InputError(f"{path}: not named *_predict_wcs_SR/DN.fits.gz, so its input file "
                         "is not known; give the prediction as run_inference_on_real.py named "
                         "it")
    return path.with_name(f"{stem}_input_wcs_{rest}")


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


def input_excess(path, ra: float, dec: float, ring_arcsec: tuple,
                 radius_arcsec: float = CALIBRATED_RADIUS_ARCSEC) -> InputExcess:
    """The input's counts within ``radius_arcsec`` of (``ra``, ``dec``) against the ring
    ``ring_arcsec`` = (inner, outer) around it, from the input file beside prediction
    ``path`` (:func:`input_path_of`), over the pixels with data (those the prediction's
    ``HI68`` marks). Does a knot stand above its surroundings in the photons themselves?

    InputError when the input file is missing or not the one the prediction was made from
    (its ``INSHA`` differs), or when the circle or the ring holds no data; ValueError for a
    ring that does not lie outside the circle."""
    from astropy.io import fits
    from astropy.wcs import WCS

    inner, outer = (float(v) for v in ring_arcsec)
    if not (math.isfinite(inner) and math.isfinite(outer) and radius_arcsec <= inner < outer):
        raise ValueError(f"ring_arcsec: give inner < outer, inner at least the radius "
                         f"({radius_arcsec:g}\"), got {ring_arcsec!r}")
    _, _, hi, _, _, _ = read_prediction(path)
    ipath = input_path_of(path)
    if not ipath.exists():
        raise InputError(f"{ipath}: no such file; the ring test reads the input file that "
                         "run_inference_on_real.py writes beside the prediction; make both "
                         "again (--overwrite)")
    try:
        with fits.open(path, memmap=False) as h:
            sha = h[0].header.get("INSHA")
        with fits.open(ipath, memmap=False) as h:
            rate = np.asarray(h[0].data, np.float64)
            hdr = h[0].header
            wcs = WCS(hdr).celestial
    except Exception as exc:  # noqa: BLE001 - astropy's many ways of saying "not readable"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise _damaged(ipath, f"not a readable input file ({first})") from None
    if sha and hdr.get("INSHA") and hdr["INSHA"] != sha:
        raise InputError(f"{ipath}: made from another input than {Path(path).name} (INSHA "
                         "differs); make both again (--overwrite)")
    exposure = hdr.get("INEXPO", hdr.get("EXPOSURE"))
    try:
        exposure = float(exposure)
    except (TypeError, ValueError):
        exposure = float("nan")
    if not (math.isfinite(exposure) and exposure > 0):
        raise _damaged(ipath, "no INEXPO or EXPOSURE, so its counts are not known")
    if rate.ndim != 2 or hi.shape[0] % rate.shape[0] or hi.shape[1] % rate.shape[1] \
            or hi.shape[0] // rate.shape[0] != hi.shape[1] // rate.shape[1]:
        raise _damaged(ipath, f"its grid {rate.shape} does not match the prediction's "
                       f"{hi.shape}")
    f = hi.shape[0] // rate.shape[0]
    # an input pixel has data when every output pixel on it has (CCD gaps are 0 in all maps)
    data = (hi.reshape(rate.shape[0], f, rate.shape[1], f) > 0).all(axis=(1, 3))
    counts = np.where(data & np.isfinite(rate), np.rint(rate * exposure), 0.0)
    sep, origin = _separations(wcs, rate.shape, ra, dec, outer, ipath)
    circle = _on_image(sep <= radius_arcsec, origin, rate.shape) & data
    ring = _on_image((sep > inner) & (sep <= outer), origin, rate.shape) & data
    if not circle.any():
        raise InputError(f"{ipath}: no input pixel with data within {radius_arcsec:g}\" of "
                         f"RA {ra:g}, Dec {dec:g}; give a position on a CCD")
    if not ring.any():
        raise InputError(f"{ipath}: no input pixel with data in the {inner:g}-{outer:g}\" "
                         "ring; give a ring that reaches the CCDs")
    n_on, n_off = int(counts[circle].sum()), int(counts[ring].sum())
    a_on, a_off = int(circle.sum()), int(ring.sum())
    return InputExcess(n_on, n_off, a_on, a_off, n_off * a_on / a_off,
                       _signif(n_on, n_off, a_on / (a_on + a_off)))
