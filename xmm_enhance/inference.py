"""Run the bundled SR / DN networks on a pn DETX/DETY counts image.

Pipeline (pure functions over arrays, I/O only at the ends):
``read_input`` -> ``input_mask`` -> count rate -> ``pad_to`` 416x416 -> ``Model.predict``
-> outputs with the exact WCS of design §4.2-4.3 and provenance (``write_outputs``).

Pixel conventions: arrays are ``[y, x]`` (0-based); FITS CRPIX are 1-based.

Only ``numpy`` and ``astropy.io.fits`` are imported here (``onnxruntime`` when a model is
loaded): the sky WCS of the grids is kept as a :class:`SkyTan` (CRPIX, CRVAL, CD), and an
``astropy.wcs.WCS`` is built only when asked for (``InputImage.wcs``, ``EnhanceResult.input_wcs``
and ``output_wcs``: figures, tests), so that a command-line run does not pay for importing
``astropy.wcs`` (and with it ``astropy.coordinates`` and ``astropy.table``).
"""
from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import logging
import math
import os
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

from . import __version__, detector, procstate, skywcs
from .errors import InputError, ModelError, UsageError
from .fitsio import (add_history as _history, atomic_write_hduls, check_name_length,
                     ensure_output_dir, header_text, refuse_existing)
from .imageargs import (BAND_TOLERANCE_PI, MODEL_BAND_PI, PIXEL_TOLERANCE,  # noqa: F401
                        check_min_signif, check_threads, is_model_band)

__all__ = [
    "PAD_SIZE", "MODEL_FILES", "TASKS", "InputImage", "Model", "EnhanceResult", "SkyTan",
    "PIXEL_ARCSEC", "PIXEL_TOLERANCE", "pixel_scales", "is_own_output",
    "InputWarning", "ModelWarning", "default_model_path", "load_model", "read_input", "input_mask",
    "output_mask", "pad_to", "sky_transmission",
    "prepare", "enhance_image", "write_outputs", "enhance_file", "output_paths",
    "check_output_collisions", "approx_sky", "check_exposure", "find_sources", "region_path",
    "sources_hdu", "candidates_of", "EXTRA_OUTPUTS", "input_band", "MODEL_BAND_PI",
    "png_path", "run_outputs", "outputs_complete", "source_settings_differ",
    "prediction_headers", "region_problem",
]

log = logging.getLogger(__name__)

PAD_SIZE = 416
TASKS = ("SR", "DN")
MODEL_FILES = {"SR": "XMM-SuperRes.onnx", "DN": "XMM-DeNoise.onnx"}
#: Exposure range (s) accepted without a warning by models trained for 20 ks inputs only (recipe
#: 1); exposure-aware models state their range in their metadata (``Model.trained_exposure``).
TRAINED_EXPOSURE = (15e3, 25e3)
#: Optional graph outputs besides the rate, with their FITS extension names.
EXTRA_OUTPUTS = {"points": "POINTS", "diffuse": "DIFFUSE", "lo68": "LO68", "hi68": "HI68"}
#: Keywords copied from the input header into both outputs.
OBS_KEYS = ("TELESCOP", "INSTRUME", "OBS_ID", "EXP_ID", "EXPIDSTR", "OBJECT", "OBSERVER",
            "DATE-OBS", "DATE-END", "DATAMODE", "SUBMODE", "FILTER", "FRMTIME", "RA_OBJ",
            "DEC_OBJ", "RA_NOM", "DEC_NOM", "RA_PNT", "DEC_PNT", "PA_PNT", "TIMESYS", "MJDREF",
            "TSTART", "TSTOP", "SLCTEXPR", "REVOLUT", "OBS_MODE", "PPSVERS",
            # the time convention of TSTART and TSTOP (OGIP): without them the times are
            # ambiguous
            "TIMEUNIT", "TIMEREF", "TASSIGN", "TIMEZERO", "CLOCKAPP"
            ) + tuple(f"ONTIME{n:02d}" for n in range(1, 13))
#: Per-CCD good times (``ONTIMEnn``) that differ from ``EXPOSURE`` by more than this fraction
#: are reported (:func:`ccd_ontime_note`).
ONTIME_TOLERANCE = 0.01
REQUIRED_META = ("task", "scale", "version")
#: Input pixel size the models were trained for (arcsec; the tolerance accepted is
#: ``imageargs.PIXEL_TOLERANCE``).
PIXEL_ARCSEC = 4.0
#: Exposure (s) about which the metadata's ``*_interval_slope`` calibrations change (the
#: networks' reference exposure, ``training.net.EXPOSURE_REF``).
CALIBRATION_REF_EXPOSURE = 20e3
#: Relative difference between ``--exposure`` and a header's ``EXPOSURE`` taken as agreement.
EXPOSURE_TOLERANCE = 1e-3
#: Keywords that only this tool's outputs carry (with ``MODEL``, ``SOFTVER``, ``INFILE``).
PROVENANCE_KEYS = ("MODELSHA", "MODELVER", "INEXPO")
#: ``BUNIT`` values (lower case, spaces removed, ``/pixel`` dropped) that mean counts.
COUNT_UNITS = ("", "count", "counts", "ct", "cts", "photon", "photons", "event", "events")
_OUTPUT_NAME = re.compile(r"_(input|predict)_wcs_(SR|DN)\.fits(\.gz)?$", re.IGNORECASE)


class InputWarning(UserWarning):
    """The input is usable but not what the models were trained on."""


class ModelWarning(UserWarning):
    """The model is usable but flagged in its metadata (e.g. a preview below its quality bars)."""


class HeaderValueError(ValueError):
    """A header keyword whose value is not what its standard says (a number, mostly)."""

    def __init__(self, key: str, value):
        super().__init__(f"{key} = {value!r} is not a number")
        self.key, self.value = key, value


def _number(value) -> float | None:
    """A header value as a float (NaN and inf included), or None: not a number, or a FITS
    logical (``T`` is no 1)."""
    if isinstance(value, (bool, np.bool_)):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _equinox_years(value) -> float:
    """EQUINOX/EPOCH as years: a number, or the strings 'J2000' / 'B1950' some writers use."""
    v = _number(value)
    if v is None and not isinstance(value, bool):
        text = str(value).strip().upper()
        v = _number(text[1:]) if text[:1] in ("J", "B") else None
    if v is None:
        raise HeaderValueError("EQUINOX", value)
    return v


class SkyTan:
    """A celestial TAN WCS as numbers: FITS 1-based ``crpix`` (x, y), ``crval`` (RA, Dec) and
    ``cd`` (2x2, deg/pixel), plus ``radesys``/``equinox``.

    The pad and 2x-grid transforms of design §4.3 are exact on these numbers, so inference needs
    no ``astropy.wcs``; :meth:`to_wcs` builds one when a caller wants it.
    """

    __slots__ = ("crpix", "crval", "cd", "radesys", "equinox")

    def __init__(self, crpix, crval, cd, radesys="FK5", equinox=2000.0):
        self.crpix = (float(crpix[0]), float(crpix[1]))
        self.crval = (float(crval[0]) % 360.0, float(crval[1]))
        self.cd = np.array(cd, dtype=float).reshape(2, 2)
        self.radesys = str(radesys or "FK5").strip().upper()
        self.equinox = (float(equinox) if equinox is not None and self.radesys in ("FK5", "FK4")
                        else None)

    def __repr__(self):
        return (f"SkyTan(crpix={self.crpix}, crval={self.crval}, cd={self.cd.tolist()}, "
                f"radesys={self.radesys!r})")

    @property
    def pixel_arcsec(self) -> float:
        """Pixel size (arcsec): the square root of the pixel area, ``sqrt(|det CD|)``."""
        return math.sqrt(abs(float(np.linalg.det(self.cd)))) * 3600.0

    def padded(self, top: int, left: int) -> "SkyTan":
        """After adding ``left`` columns before and ``top`` rows below (negative: crop)."""
        return SkyTan((self.crpix[0] + left, self.crpix[1] + top), self.crval, self.cd,
                      self.radesys, self.equinox)

    def upscaled(self, factor: int) -> "SkyTan":
        """Of the exact ``factor``x subdivision: ``CRPIX' = f CRPIX - (f-1)/2``, ``CD' = CD/f``."""
        c = (factor - 1) / 2.0
        return SkyTan((factor * self.crpix[0] - c, factor * self.crpix[1] - c), self.crval,
                      self.cd / factor, self.radesys, self.equinox)

    def header(self) -> fits.Header:
        """TAN/CD keywords only (no CDELT, PC, CROTA or date keywords)."""
        h = fits.Header()
        h["WCSAXES"] = 2
        h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
        h["CUNIT1"], h["CUNIT2"] = "deg", "deg"
        h["CRPIX1"], h["CRPIX2"] = self.crpix
        h["CRVAL1"], h["CRVAL2"] = self.crval
        h["CD1_1"], h["CD1_2"] = float(self.cd[0, 0]), float(self.cd[0, 1])
        h["CD2_1"], h["CD2_2"] = float(self.cd[1, 0]), float(self.cd[1, 1])
        h["RADESYS"] = self.radesys
        if self.equinox is not None:
            h["EQUINOX"] = self.equinox
        return h

    def pixel_to_world(self, x, y):
        """RA, Dec (deg) of 0-based pixel coordinates ``x`` (column), ``y`` (row): the gnomonic
        (TAN) deprojection with the native pole at LONPOLE = 180 deg (FITS paper II)."""
        p = np.stack([np.asarray(x, float) + 1.0 - self.crpix[0],
                      np.asarray(y, float) + 1.0 - self.crpix[1]])
        xi, eta = np.radians(np.tensordot(self.cd, p, axes=1))
        a0, d0 = np.radians(self.crval[0]), np.radians(self.crval[1])
        den = math.cos(d0) - eta * math.sin(d0)
        ra = np.degrees(a0 + np.arctan2(xi, den)) % 360.0
        dec = np.degrees(np.arctan2(math.sin(d0) + eta * math.cos(d0), np.hypot(xi, den)))
        return ra, dec

    def to_wcs(self):
        """The same WCS as an ``astropy.wcs.WCS`` (imports ``astropy.wcs``)."""
        from astropy.wcs import WCS

        w = WCS(naxis=2)
        w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        w.wcs.cunit = ["deg", "deg"]
        w.wcs.crpix = list(self.crpix)
        w.wcs.crval = list(self.crval)
        w.wcs.cd = self.cd
        w.wcs.radesys = self.radesys
        if self.equinox is not None:
            w.wcs.equinox = self.equinox
        return w

    @classmethod
    def from_wcs(cls, w) -> "SkyTan":
        """From the celestial part of an ``astropy.wcs.WCS`` (taken as TAN)."""
        w = w.celestial
        cd = w.wcs.cd if w.wcs.has_cd() else w.pixel_scale_matrix
        eq = w.wcs.equinox
        return cls(w.wcs.crpix, w.wcs.crval, cd, w.wcs.radesys or "FK5",
                   eq if np.isfinite(eq) else 2000.0)

    @classmethod
    def from_header(cls, h) -> "SkyTan | None":
        """Read a plain RA---TAN/DEC--TAN WCS (CD, or CDELT with PC or CROTA2) from ``h``.

        Returns None for anything else (no sky WCS, other projections, distortions, units
        other than deg); the caller then falls back to ``astropy.wcs``.
        """
        if (str(h.get("CTYPE1", "")).strip(), str(h.get("CTYPE2", "")).strip()) != (
                "RA---TAN", "DEC--TAN"):
            return None
        if any(k in h for k in ("A_ORDER", "B_ORDER", "LONPOLE", "LATPOLE")) or any(
                str(k).startswith(("PV1_", "PV2_", "DP1", "DP2", "D2IM")) for k in h):
            return None
        if any(str(h.get(f"CUNIT{i}", "deg")).strip().lower() not in ("deg", "")
               for i in (1, 2)):
            return None
        def g(k, d):
            v = _number(h.get(k, d))
            if v is None:
                raise HeaderValueError(k, h.get(k, d))
            return v

        crpix = (g("CRPIX1", 0.0), g("CRPIX2", 0.0))
        crval = (g("CRVAL1", 0.0), g("CRVAL2", 0.0))
        if any(f"CD{i}_{j}" in h for i in (1, 2) for j in (1, 2)):
            cd = [[g("CD1_1", 0.0), g("CD1_2", 0.0)], [g("CD2_1", 0.0), g("CD2_2", 0.0)]]
        else:
            c1, c2 = g("CDELT1", 1.0), g("CDELT2", 1.0)
            if any(f"PC{i}_{j}" in h for i in (1, 2) for j in (1, 2)):
                pc = np.array([[g("PC1_1", 1.0), g("PC1_2", 0.0)],
                               [g("PC2_1", 0.0), g("PC2_2", 1.0)]])
                cd = np.diag([c1, c2]) @ pc
            else:  # CROTA2 (FITS paper II, eq. 189): rotation of the second axis
                r = math.radians(g("CROTA2", 0.0))
                cd = [[c1 * math.cos(r), -c2 * math.sin(r)], [c1 * math.sin(r), c2 * math.cos(r)]]
        if not np.all(np.isfinite(cd)) or np.linalg.det(np.asarray(cd, float)) == 0:
            return None
        radesys = h.get("RADESYS", h.get("RADECSYS"))
        equinox = h.get("EQUINOX", h.get("EPOCH"))
        equinox = None if equinox is None else _equinox_years(equinox)
        if radesys is None:  # FITS defaults (paper II §3.1)
            radesys = "ICRS" if equinox is None else ("FK4" if equinox < 1984 else "FK5")
        return cls(crpix, crval, cd, radesys, 2000.0 if equinox is None else equinox)


def _lazy_wcs(sky, shape=None):
    """``sky`` as an astropy WCS; with ``shape`` (rows, columns) its ``pixel_shape`` set, as
    astropy gives it for the written file."""
    if sky is None:
        return None
    w = sky.to_wcs()
    if shape is not None:
        w.pixel_shape = (int(shape[1]), int(shape[0]))
    return w


def _as_sky(w) -> SkyTan | None:
    """``SkyTan`` of ``w`` (None, a SkyTan or an astropy WCS)."""
    if w is None or isinstance(w, SkyTan):
        return w
    return SkyTan.from_wcs(w)


class InputImage:
    """A validated input image.

    Attributes
    ----------
    counts : ndarray [ny, nx]
        Counts per pixel: float64 when read by :func:`read_input`; an array given in memory
        is kept as it is (:func:`checked_image` checks it).
    exposure : float
        Exposure in seconds.
    header : astropy.io.fits.Header
        The primary header of the image HDU.
    sky : SkyTan or None
        Celestial WCS of the image grid.
    wcs : astropy.wcs.WCS or None
        The same as an astropy WCS (built on first use; may be set to a WCS or a SkyTan).
    wcs_note : str
        How the WCS was obtained ("" when read from the file).
    path : Path
    sha256 : str or None
        sha256 of the file it was read from (None when made in memory); the outputs record it
        (``INSHA``), so a later run can tell whether they were made from this file.
    """

    def __init__(self, counts, exposure, header, wcs=None, wcs_note="", path=Path("image.fits"),
                 notes=None, sha256=None, header_checked=False):
        self.sha256 = sha256
        #: whether :func:`read_input` checked the header (else :func:`checked_image` does)
        self.header_checked = header_checked
        self.counts = counts
        self.exposure = exposure
        self.header = header
        if wcs is None and header is not None:
            # made in memory from an array and its header: take the header's sky WCS
            with contextlib.suppress(HeaderValueError):
                wcs = header_sky(header)
        self.wcs = wcs
        self.wcs_note = wcs_note
        self.path = Path(path)
        self.notes = list(notes or [])

    @property
    def wcs(self):
        if self._wcs is None and self.sky is not None:
            self._wcs = self.sky.to_wcs()
        return self._wcs

    @wcs.setter
    def wcs(self, value):
        self.sky = _as_sky(value)
        self._wcs = None if isinstance(value, SkyTan) else value

    def __repr__(self):
        return (f"InputImage(path={str(self.path)!r}, shape={np.shape(self.counts)}, "
                f"exposure={self.exposure}, sky={self.sky!r})")


@dataclass
class Model:
    """A loaded ONNX model and its metadata."""

    path: Path
    session: object
    meta: dict
    sha256: str

    @property
    def task(self) -> str:
        return self.meta["task"]

    @property
    def scale(self) -> int:
        return int(self.meta["scale"])

    @property
    def version(self) -> str:
        return self.meta.get("version", "")

    def _positive(self, key: str) -> float | None:
        """Metadata ``key`` as a finite positive number; None when absent or not one."""
        try:
            v = float(self.meta.get(key, ""))
        except ValueError:
            return None
        return v if np.isfinite(v) and v > 0 else None

    @property
    def target_exposure(self) -> float | None:
        """Exposure (s) the prediction emulates; None for a noise-free target (or unknown)."""
        v = self._positive("target_exposure_ks")
        return None if v is None else v * 1e3

    @property
    def aperture_scale(self) -> float | None:
        """Scale ``c`` of the aperture rule (metadata ``aperture_interval_scale``): the 68 %
        interval of a sum over pixels is ``sum(rate) -+ c x sum(rate - lo68)`` / ``sum(hi68 -
        rate)``, calibrated on simulated 20" apertures (model card)."""
        return self._positive("aperture_interval_scale")

    @property
    def interval_scale(self) -> float | None:
        """Log-space widening of the graph's percentile maps about the rate (metadata
        ``pixel_interval_scale``, chosen on simulations; None when not stated), at 20 ks."""
        return self._positive("pixel_interval_scale")

    def _slope(self, key: str) -> float:
        """Metadata ``key`` as a finite number (a calibration's change per decade of exposure);
        0 when absent or not one."""
        try:
            v = float(self.meta.get(key, ""))
        except ValueError:
            return 0.0
        return v if np.isfinite(v) else 0.0

    def _at_exposure(self, value: float | None, slope_key: str, exposure: float | None,
                     floor: float) -> float | None:
        """``value + slope log10(exposure / 20 ks)`` (at least ``floor``), the slope from the
        metadata ``slope_key``; ``value`` itself without a slope or an exposure."""
        slope = self._slope(slope_key)
        if value is None or not slope or not exposure or exposure <= 0:
            return value
        return max(floor, value + slope * math.log10(exposure / CALIBRATION_REF_EXPOSURE))

    def aperture_scale_at(self, exposure: float | None) -> float | None:
        """:attr:`aperture_scale` at input ``exposure`` (s): metadata
        ``aperture_interval_slope`` is its change per decade of exposure about 20 ks."""
        return self._at_exposure(self.aperture_scale, "aperture_interval_slope", exposure, 0.05)

    def aperture_rule_at(self, exposure: float | None):
        """The aperture rule (:class:`~xmm_enhance.apertures.ApertureRule`) at input
        ``exposure`` (s); None for a model without ``aperture_interval_scale``. Its scale at
        the reference rate is :meth:`aperture_scale_at`; the metadata
        ``aperture_interval_rate_slope`` (change per decade of the aperture's rate about
        ``aperture_interval_rate_ref`` count/s) and the clip ``aperture_interval_min`` /
        ``aperture_interval_max`` (at 20 ks, moved with the scale by
        ``aperture_interval_slope``) make it follow the aperture's brightness; without a rate
        slope it is one scale for every aperture."""
        from .apertures import MIN_SCALE, ApertureRule

        scale = self.aperture_scale_at(exposure)
        if scale is None:
            return None
        slope, ref = self._slope("aperture_interval_rate_slope"), \
            self._positive("aperture_interval_rate_ref")
        if not slope or ref is None:
            return ApertureRule(scale)
        shift = scale - self.aperture_scale  # the exposure's move of the whole rule
        lo, hi = self._positive("aperture_interval_min"), self._positive("aperture_interval_max")
        lo = MIN_SCALE if lo is None else max(MIN_SCALE, lo + shift)
        hi = math.inf if hi is None else max(lo, hi + shift)
        return ApertureRule(scale, slope, ref, lo, hi)

    def interval_scale_at(self, exposure: float | None) -> float | None:
        """:attr:`interval_scale` at input ``exposure`` (s), as the graph applies it: metadata
        ``pixel_interval_slope`` is its change per decade of exposure about 20 ks (the graph's
        floor is 0.25)."""
        return self._at_exposure(self.interval_scale, "pixel_interval_slope", exposure, 0.25)

    @property
    def output_names(self) -> list[str]:
        """Names of the graph's outputs (the first is the prediction)."""
        return [o.name for o in self.session.get_outputs()]

    @property
    def takes_exposure(self) -> bool:
        """The graph has an ``exposure`` input (recipe 2: exposure-aware)."""
        return "exposure" in [i.name for i in self.session.get_inputs()]

    @property
    def trained_exposure(self) -> tuple[float, float]:
        """Range of input exposures (s) the model was trained for (metadata
        ``input_exposure_ks``: ``"20"`` or ``"5-150"``); a single value gets +-25 %."""
        text = str(self.meta.get("input_exposure_ks", "20")).strip()
        try:
            if "-" in text:
                lo, hi = (float(v) * 1e3 for v in text.split("-", 1))
            else:
                v = float(text) * 1e3
                lo, hi = TRAINED_EXPOSURE if v == 20e3 else (0.75 * v, 1.25 * v)
        except ValueError:
            lo, hi = TRAINED_EXPOSURE
        return lo, hi

    def predict(self, rate: np.ndarray, mask: np.ndarray, exposure: float | None = None
                ) -> np.ndarray:
        """Predicted rate for one padded image ``rate`` [H, W] with detector ``mask`` [H, W]."""
        return self.predict_all(rate, mask, exposure)["rate"]

    def predict_all(self, rate: np.ndarray, mask: np.ndarray, exposure: float | None = None
                    ) -> dict:
        """All outputs of the graph for one padded image: ``rate`` (the prediction) and, where
        the graph has them, ``lo68``, ``hi68``, ``points``, ``diffuse`` (each [sH, sW]).

        ``exposure`` (s) feeds the graph's ``exposure`` input when it has one. ``rate``: a
        2-D array of finite, non-negative count rates whose sides are multiples of
        :data:`SIZE_MULTIPLE` (the U-Net halves it three times; :func:`pad_to` gives 416 x 416);
        ``mask`` of the same shape. Anything else is a :class:`UsageError`.
        """
        feeds = {}
        inputs = [i.name for i in self.session.get_inputs()]
        rate, mask = _checked_feed(rate, mask if len(inputs) > 1 else None, len(inputs) > 1)
        if "exposure" in inputs and exposure is not None and _positive_seconds(exposure) is None:
            raise UsageError(f"exposure={exposure!r}: must be a positive number of seconds")
        feeds[inputs[0]] = rate[None, None].astype(np.float32)
        if len(inputs) > 1:
            feeds[inputs[1]] = mask[None, None].astype(np.float32)
        if "exposure" in inputs:
            if exposure is None:
                raise ModelError(f"{self.path}: this model needs the input's exposure")
            feeds["exposure"] = np.array([exposure], np.float32)
        names = [o.name for o in self.session.get_outputs()]
        outs = self.session.run(None, feeds)
        s = self.scale
        expected = (1, 1, rate.shape[0] * s, rate.shape[1] * s)
        result = {}
        for name, out in zip(names, outs):
            out = np.asarray(out, dtype=np.float32)
            if out.shape != expected:
                raise ModelError(f"{self.path}: model returned shape {out.shape} for {name}, "
                                 f"expected {expected}; the file is not a {self.task} model of "
                                 "this project")
            key = "rate" if name == names[0] else name
            if key in EXTRA_OUTPUTS or key == "rate":
                if not np.isfinite(out.sum(dtype=np.float64)):   # NaN/inf anywhere
                    raise ModelError(f"{self.path.name}: the network gave non-finite values "
                                     f"({name}) for this input; check the input's counts and "
                                     "EXPOSURE (far beyond what it was trained on?)")
                result[key] = out[0, 0]
        return result


class EnhanceResult:
    """What :func:`enhance_image` computed, before anything is written.

    Attributes
    ----------
    task : str
    input_rate : ndarray float32 [416, 416]
        Masked, padded input rate (count/s/pixel).
    input_mask : ndarray bool [416, 416]
    prediction : ndarray float32 [416 s, 416 s]
    input_sky, output_sky : SkyTan or None
        WCS of the padded input grid and of the prediction grid.
    input_wcs, output_wcs : astropy.wcs.WCS or None
        The same as astropy WCS objects (built on first use).
    pad : (int, int)
        (top, left): offsets added to the original grid.
    image : InputImage
    model : Model
    extras : dict of ndarray float32 [416 s, 416 s]
        The graph's other maps, masked and tapered as ``prediction``: ``lo68``, ``hi68``
        (16th/84th percentiles of the true rate) and, for SR, ``points`` and ``diffuse``
        (summing to ``prediction``). Empty for models without them.
    sources : list of dict or None
        SR point sources (:func:`xmm_enhance.sources.detect_sources`) with ``ra``/``dec``
        added; None when the model has no ``points`` map or with ``enhance_image(...,
        sources=False)``.
    redrawn : int
        Listed sources redrawn with the halved PSF (:func:`xmm_enhance.sources.redraw_points`).
    psf_core : (float, int)
        The input's PSF core radius over the King model's that the redraw used, and the number
        of sources it was measured on (:func:`xmm_enhance.sources.psf_core_scale`; (1.0, 0)
        when none).
    released : float or None
        Rate (count/s) of ``points`` away from every supporting source that moved to
        ``diffuse`` (:func:`xmm_enhance.sources.release_unlisted`); None when not applied.
    support : list of dict
        Unlisted candidates whose ``points`` stayed (:func:`xmm_enhance.sources.detect_sources`
        ``support``), padded 2x grid positions ``y2``/``x2``.
    list_signif, support_signif : float
        The thresholds (sigma) of ``sources`` and of ``support``.
    coverage : bool or None
        Whether the source fits used the pn coverage map (:func:`input_coverage`); None when
        no source list was made or the input is not on the pn grid.
    output_keep : bool ndarray [416 s, 416 s] or None
        Where the maps hold a prediction (:func:`output_mask` on the output grid); elsewhere
        they are 0 because no photon can land there (gaps, off-chip, padding).
    """

    def __init__(self, task, input_rate, input_mask, prediction, input_wcs, output_wcs, pad,
                 image, model, extras=None, sources=None, redrawn=0, psf_core=(1.0, 0),
                 released=None, support=None, list_signif=None, support_signif=None,
                 coverage=None, output_keep=None):
        from .sources import DEFAULT_MIN_SIGNIF, POINTS_SUPPORT_SIGNIF

        self.coverage = coverage
        self.output_keep = output_keep

        self.list_signif = float(DEFAULT_MIN_SIGNIF if list_signif is None else list_signif)
        self.support_signif = float(POINTS_SUPPORT_SIGNIF if support_signif is None
                                    else support_signif)
        self.extras = dict(extras or {})
        self.support = list(support or [])
        self.sources = sources
        self.redrawn = int(redrawn)
        self.released = None if released is None else float(released)
        self.psf_core = (float(psf_core[0]), int(psf_core[1]))
        self.task = task
        self.input_rate = input_rate
        self.input_mask = input_mask
        self.prediction = prediction
        self.input_sky = _as_sky(input_wcs)
        self.output_sky = _as_sky(output_wcs)
        self.pad = pad
        self.image = image
        self.model = model

    @property
    def smoothed(self) -> bool:
        """Whether ``diffuse`` (and so the prediction) keeps only the structure the input
        counts demand (:func:`xmm_enhance.sources.smooth_diffuse`): it runs with the release of
        unlisted points, so whenever ``released`` is set."""
        return self.released is not None

    @functools.cached_property
    def input_wcs(self):
        return _lazy_wcs(self.input_sky, np.shape(self.input_rate))

    @functools.cached_property
    def output_wcs(self):
        return _lazy_wcs(self.output_sky, np.shape(self.prediction))


# --------------------------------------------------------------------------- models
def models_dir() -> Path:
    """Folder of the bundled models (``$XMM_ENHANCE_MODELS`` overrides)."""
    env = os.environ.get("XMM_ENHANCE_MODELS")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "models"


def default_model_path(which: str) -> Path:
    """The bundled model file of ``which`` (``SR`` or ``DN``, any case)."""
    w = str(which).strip().upper()
    if w not in MODEL_FILES:
        raise UsageError(f"which={which!r}: must be one of {', '.join(MODEL_FILES)}")
    return models_dir() / MODEL_FILES[w]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


#: The sides of an image the networks take must be multiples of this.
SIZE_MULTIPLE = 8


def _checked_feed(rate, mask, needs_mask: bool):
    """``rate`` (float32) and ``mask`` as :meth:`Model.predict_all` feeds them, or UsageError
    naming what is wrong (onnxruntime's own errors name a node of the graph)."""
    rate = np.asarray(rate)
    if rate.ndim != 2 or rate.dtype.kind not in "uif":
        raise UsageError(f"rate: a {rate.ndim}-D {rate.dtype} array; pass a 2-D count-rate image "
                         "(pad it with pad_to)")
    if any(n % SIZE_MULTIPLE or n == 0 for n in rate.shape):
        raise UsageError(f"rate: shape {rate.shape}; the networks take sides that are multiples "
                         f"of {SIZE_MULTIPLE}: pad it with pad_to (416 x 416)")
    if not np.all(np.isfinite(rate)) or np.any(rate < 0):
        raise UsageError("rate: NaN, infinite or negative values; pass count rates >= 0")
    if needs_mask:
        if mask is None:
            raise UsageError("mask: this model needs the mask of live pixels (input_mask)")
        mask = np.asarray(mask)
        if mask.shape != rate.shape:
            raise UsageError(f"mask: shape {mask.shape}, but rate is {rate.shape}")
    return rate, mask


def load_model(which: str, path: str | Path | None = None, *, threads: int | None = None
               ) -> Model:
    """Load the ``which`` (SR or DN) model and check its metadata. ``threads``: onnxruntime's
    intra-op threads (None or 0: its choice, all cores).

    Raises
    ------
    UsageError
        ``which`` is not SR or DN, or ``threads`` is not a whole number >= 1.
    ModelError
        File missing or corrupt, or metadata not that of a ``which`` model.
    """
    which = str(which).strip().upper()
    if which not in TASKS:
        raise UsageError(f"which must be one of {', '.join(TASKS)} (--which), got {which!r}")
    if threads is not None and not isinstance(threads, (bool, np.bool_)) and threads == 0:
        threads = None   # 0: onnxruntime's choice, as onnxruntime itself reads it
    check_threads(threads)
    path = Path(path).absolute() if path is not None else default_model_path(which)
    if not path.is_file():
        raise ModelError(f"{path}: model file missing; train it with `make models` "
                         f"(see models/MODEL_CARD.md) or pass --model PATH (path=)")
    import onnxruntime as ort

    # ORT_DISABLE_TELEMETRY (xmm_enhance/__init__) counts only when set before onnxruntime
    # is first imported: a notebook may have imported it earlier
    if os.environ.get("ORT_DISABLE_TELEMETRY", "1") != "0":
        with contextlib.suppress(Exception):
            ort.disable_telemetry_events()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads is not None:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    try:
        sess = ort.InferenceSession(str(path), sess_options=opts,
                                    providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises several private exception types
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path}: not a loadable ONNX model ({first}); restore it with "
                         "`git checkout models/` or retrain with `make models`") from None
    meta = dict(sess.get_modelmeta().custom_metadata_map)
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ModelError(f"{path}: model metadata lacks {', '.join(missing)}; it was not "
                         "exported by xmm_enhance.training.export — re-export it")
    want_scale = 2 if which == "SR" else 1
    if meta["task"] != which or str(meta["scale"]) != str(want_scale):
        raise ModelError(f"{path}: metadata says task={meta['task']} scale={meta['scale']}, "
                         f"but --which {which} needs task={which} scale={want_scale}; pass the "
                         "right --model (path=)")
    status = str(meta.get("status", ""))
    if status.startswith("preview"):
        warnings.warn(f"{path.name} is a preview model ({status.split(':', 1)[-1].strip()})",
                      ModelWarning, stacklevel=2)
    return Model(path=path, session=sess, meta=meta, sha256=_sha256(path))


# --------------------------------------------------------------------------- input
def _open_image_hdu(path: Path):
    """Return (data, image header, primary header) of the first HDU holding an image.

    A file cut short is refused before (:func:`_check_whole_file`)."""
    try:
        with fits.open(path, memmap=False) as hdul:
            for hdu in hdul:
                if hdu.is_image and hdu.data is not None and hdu.data.size > 0:
                    return np.array(hdu.data), hdu.header.copy(), hdul[0].header.copy()
    except (OSError, EOFError, ValueError, TypeError) as exc:
        reason = "truncated or corrupt gzip" if isinstance(exc, EOFError) or "gzip" in str(
            exc).lower() or "compressed" in str(exc).lower() else "not a readable FITS file"
        raise InputError(f"{path}: {reason}; re-create it with make_detxy_pn_image_pps.py "
                         "or pass a FITS image") from None
    raise InputError(f"{path}: no image data in any HDU; pass a 2-D DETX/DETY counts image")


def is_own_output(header, name: str = "") -> bool:
    """True when ``header`` (or the file ``name``) is that of an output of this tool.

    Recognised by the provenance keywords :func:`write_outputs` writes (``MODELSHA``,
    ``MODELVER``, ``INEXPO``, or ``MODEL`` with ``SOFTVER``/``INFILE``), or by the output name
    pattern ``<stem>_{input,predict}_wcs_{SR,DN}.fits[.gz]``.
    """
    if any(k in header for k in PROVENANCE_KEYS):
        return True
    if "MODEL" in header and ("SOFTVER" in header or "INFILE" in header):
        return True
    return bool(_OUTPUT_NAME.search(name))


def _unit_is_counts(bunit) -> bool:
    u = re.sub(r"\s+", "", str(bunit)).lower()
    for per_pixel in ("/pixel", "/pix", "perpixel"):
        if u.endswith(per_pixel):
            u = u[: -len(per_pixel)]
    return u in COUNT_UNITS


def _check_counts(path: Path, data: np.ndarray, header, primary) -> None:
    """Raise InputError unless ``data`` is a counts image (not a rate or other image)."""
    if is_own_output(header, path.name) or is_own_output(primary):
        made_from = header.get("INFILE", primary.get("INFILE"))
        content = header.get("CONTENT", primary.get("CONTENT"))
        what = f"{content}, count/s/pixel" if content else "by its name"
        fix = (f"pass the counts image it was made from ({made_from})" if made_from else
               "pass the counts image from make_detxy_pn_image_pps.py")
        raise InputError(f"{path}: is an output of run_inference_on_real ({what}), not a "
                         f"counts image; {fix}")
    bunit = header.get("BUNIT", primary.get("BUNIT"))
    if bunit is not None and not _unit_is_counts(bunit):
        u = str(bunit).strip()
        kind = ("a count-rate image" if re.search(r"/s\b|s-1|s\*\*-1|/sec|rate", u.lower())
                else "not a counts image")
        raise InputError(f"{path}: BUNIT = '{u}': {kind}; pass a counts image (BUNIT 'count') "
                         "from make_detxy_pn_image_pps.py")


def _whole_counts(name, data) -> np.ndarray:
    """``data`` as float64 counts: float pixels within 1e-3 of whole numbers are rounded (a
    pixel of 1e-5 would otherwise count as having counts and open the detector mask on it);
    InputError for others (NaN/inf are left for :func:`_check_values`)."""
    data = np.asarray(data)
    counts = data.astype(np.float64, copy=data.dtype != np.float64)
    if data.dtype.kind != "f":
        return counts
    whole = np.round(counts)
    off = np.abs(counts - whole) > 1e-3   # False at NaN/inf
    if off.any():
        lossy = (" or a float image tile-compressed with loss (fpack's default "
                 "quantisation: compress counts with fpack -q 0, or pass the uncompressed "
                 "file)" if str(name).lower().endswith(".fz") else "")
        raise InputError(f"{name}: {int(off.sum())} pixels hold non-integer values: not a "
                         f"counts image (a rate, smoothed or exposure-corrected image?{lossy}); "
                         "pass the counts image from make_detxy_pn_image_pps.py")
    return counts if np.array_equal(counts, whole, equal_nan=True) else whole


def _check_values(name, counts, header=None) -> None:
    """InputError for NaN/inf (a ``BLANK`` value of ``header``) or negative pixels."""
    bad = ~np.isfinite(counts)
    if bad.any():
        what = (f"pixels equal to its BLANK value ({header['BLANK']}), which mark no data"
                if header is not None and "BLANK" in header else "NaN/inf pixels")
        raise InputError(f"{name}: {int(bad.sum())} {what}; pass a counts image (replace them "
                         "by 0 if they are off the detector)")
    if np.any(counts < 0):
        raise InputError(f"{name}: {int(np.sum(counts < 0))} negative pixels; pass a counts "
                         "image, not a background-subtracted one")


def _check_some_counts(name, counts, band=None) -> None:
    """InputError for an image without a single count. Every pixel with counts is in the input
    mask (:func:`input_mask`), so none there means none at all: the networks would paint a
    rate from nothing."""
    if not np.any(counts > 0):
        stated = f" ({_band_text(band[0], band[1])} eV)" if band is not None else ""
        raise InputError(f"{name}: no counts in the image (every pixel is 0); check its energy "
                         f"band{stated} and good-time selection, and make it again with "
                         "make_detxy_pn_image_pps.py")


def pixel_scales(header) -> list[tuple[float, str]]:
    """Pixel sizes (arcsec) that ``header`` states, each with where it comes from.

    From the sky WCS (``sqrt|det CD|``, also CDELT/PC/CROTA), the ``BINSIZE`` keyword written
    by make_detxy_pn_image_pps.py (DET units of 0.05"), and the DETX/DETY axes (primary or
    alternate ``L`` WCS, CDELT in DET units). Empty when the header states none.
    """
    out = []
    sky = header_sky(header)
    if sky is not None:
        out.append((sky.pixel_arcsec, "sky WCS"))
    if "BINSIZE" in header:
        b = _number(header["BINSIZE"])
        if b is not None and np.isfinite(b) and b > 0:
            out.append((detector.pixel_size_arcsec(b), f"BINSIZE = {b:g}"))
    b = _det_binsize(header)
    if b:
        out.append((detector.pixel_size_arcsec(b), f"DETX/DETY CDELT = {b:g}"))
    return out


def pn_grid_binsize(shape) -> int | None:
    """The integer ``binSize`` (DET units) whose pn DETX/DETY grid (``imaging.bin_det``: the
    evselect range in ``ceil(range / binSize)`` bins) has ``shape``, or None."""
    ny, nx = (int(n) for n in shape)
    for b in range(8, 2001):
        if (math.ceil((detector.DETY_MAX - detector.DETY_MIN) / b) == ny
                and math.ceil((detector.DETX_MAX - detector.DETX_MIN) / b) == nx):
            return b
    return None


def _bad_wcs_keyword(path, exc: HeaderValueError) -> InputError:
    return InputError(f"{path}: its sky WCS has {exc}; correct that keyword (e.g. "
                      "astropy.io.fits.setval) or delete the WCS keywords, and rerun")


def _check_pixel_scale(path: Path, header, shape=None) -> None:
    want = round(PIXEL_ARCSEC / skywcs.ARCSEC_PER_DET)
    try:
        scales = pixel_scales(header)
    except HeaderValueError as exc:
        raise _bad_wcs_keyword(path, exc) from None
    for scale, source in scales:
        if abs(scale / PIXEL_ARCSEC - 1) > PIXEL_TOLERANCE:
            raise InputError(
                f"{path}: pixel scale {scale:.3g}\"/pixel (from the {source}), but the models "
                f"need {PIXEL_ARCSEC:g}\"/pixel; make the image with make_detxy_pn_image_pps.py "
                f"--binSize {want}")
    # nothing says the scale: an image of the pn grid at another binSize shows it by its shape
    b = pn_grid_binsize(shape) if shape is not None and not scales else None
    if b is not None and abs(b / want - 1) > PIXEL_TOLERANCE:
        raise InputError(
            f"{path}: {shape[0]}x{shape[1]} pixels is the pn DETX/DETY grid at binSize {b} "
            f"({b * skywcs.ARCSEC_PER_DET:.3g}\"/pixel), but the models need "
            f"{PIXEL_ARCSEC:g}\"/pixel; make the image with make_detxy_pn_image_pps.py "
            f"--binSize {want}")


_NUMBER = r"[-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?"
#: ``PI in [lo:hi]`` (SAS: ``(`` / ``)`` exclude the bound; several ``lo:hi`` comma-separated).
_PI_IN = re.compile(r"\bPI\s+in\s*([\[(])([^\])]*)([\])])", re.IGNORECASE)
_PI_CMP = re.compile(rf"\bPI\s*(<=|>=|==|<|>)\s*({_NUMBER})", re.IGNORECASE)
_CMP_PI = re.compile(rf"({_NUMBER})\s*(<=|>=|==|<|>)\s*PI\b", re.IGNORECASE)
_MIRROR = {"<": ">", ">": "<", "<=": ">=", ">=": "<=", "==": "=="}


def _ranges(text: str, lo_open: bool = False, hi_open: bool = False
            ) -> tuple[float, float] | None:
    """Extent (lo, hi) of ``"a:b[,c:d...]"`` (an empty bound is unbounded; ``lo_open`` /
    ``hi_open``: the first lower / last upper bound excluded, PI being an integer); None when
    ``text`` is not such a list."""
    bounds = []
    for piece in text.split(","):
        a, sep, b = (s.strip() for s in piece.partition(":"))
        try:
            lo = float(a) if a else -math.inf
            hi = (float(b) if b else math.inf) if sep else lo
        except ValueError:
            return None
        bounds.append((lo, hi))
    if not bounds:
        return None
    lo, hi = min(b[0] for b in bounds), max(b[1] for b in bounds)
    return lo + (1 if lo_open else 0), hi - (1 if hi_open else 0)


def _band_of_expression(expr: str) -> tuple[float, float] | None:
    """PI band (eV) that a SAS selection expression keeps: its ``PI in [...]`` terms and
    comparisons of PI with a number, all taken as joined by ``&&``; None without a PI term, or
    when several are joined by ``||`` (a union this does not judge)."""
    lows, highs = [], []
    terms = 0
    for m in _PI_IN.finditer(expr):
        r = _ranges(m.group(2), m.group(1) == "(", m.group(3) == ")")
        if r is None:
            return None
        lows.append(r[0])
        highs.append(r[1])
        terms += 1
    compares = [(op, float(v)) for op, v in _PI_CMP.findall(expr)]
    compares += [(_MIRROR[op], float(v)) for v, op in _CMP_PI.findall(expr)]
    for op, v in compares:
        terms += 1
        if op in (">", ">="):
            lows.append(v + 1 if op == ">" else v)
        elif op in ("<", "<="):
            highs.append(v - 1 if op == "<" else v)
        else:
            lows.append(v)
            highs.append(v)
    if not terms or (terms > 1 and "||" in expr):
        return None
    return max(lows, default=-math.inf), min(highs, default=math.inf)


def input_band(header, primary=None) -> tuple[float, float, str] | None:
    """The PI band (eV, inclusive) an image's header says its events were selected in.

    Read from ``SLCTEXPR`` (the selection expression make_detxy_pn_image_pps.py writes, e.g.
    ``(PI in [500:2000])``, or ``PI >= 500 && PI <= 2000``), else from the data-subspace
    keywords SAS writes (``DSTYPn = 'PI'``, ``DSVALn = '500:2000'``), in ``header`` then
    ``primary``.

    Returns
    -------
    (lo, hi, source) or None
        The band (an unbounded side is -inf / inf) and the keyword(s) it came from; None when
        the header states no band (or one this cannot read).
    """
    for h in (header, primary):
        if h is None:
            continue
        expr = h.get("SLCTEXPR")
        if isinstance(expr, str):
            band = _band_of_expression(expr)
            if band is not None:
                return band[0], band[1], "SLCTEXPR"
        for i in range(1, 100):
            kind = h.get(f"DSTYP{i}")
            if kind is None:
                break
            if str(kind).strip().upper() != "PI":
                continue
            band = _ranges(str(h.get(f"DSVAL{i}", "")))
            if band is not None:
                if str(h.get(f"DSUNI{i}", "")).strip().lower() == "kev":
                    band = (band[0] * 1e3, band[1] * 1e3)
                return band[0], band[1], f"DSTYP{i}/DSVAL{i}"
    return None


def _band_text(lo: float, hi: float) -> str:
    """``PI 500-2000`` (``PI >= 2001`` / ``PI <= 400`` for an unbounded side)."""
    f = lambda v: f"{v:.0f}" if float(v).is_integer() else f"{v:g}"  # noqa: E731
    if math.isinf(hi) and math.isinf(lo):
        return "PI (any)"
    if math.isinf(hi):
        return f"PI >= {f(lo)}"
    if math.isinf(lo):
        return f"PI <= {f(hi)}"
    return f"PI {f(lo)}-{f(hi)}"


def _check_band(path: Path, band) -> None:
    """Warn (InputWarning) when ``band`` (:func:`input_band`) is not the models' 0.5-2 keV."""
    if band is None:
        return
    lo, hi, source = band
    if is_model_band(lo, hi):
        return
    warnings.warn(f"{path.name}: energy band {_band_text(lo, hi)} eV (from {source}), but the "
                  f"models were trained on 0.5-2 keV images (PI {MODEL_BAND_PI[0]}-"
                  f"{MODEL_BAND_PI[1]}); expect unreliable predictions (make the image with "
                  f"--low_pi {MODEL_BAND_PI[0]} --high_pi {MODEL_BAND_PI[1]})", InputWarning,
                  stacklevel=3)


def _positive_seconds(value) -> float | None:
    """``value`` as a finite number > 0, else None (a FITS logical T is not a number)."""
    v = _number(value)
    return v if v is not None and math.isfinite(v) and v > 0 else None


#: The pn records at most one event per raw pixel and frame; a 4" DET pixel overlaps at most
#: 2 x 2 raw pixels (4.1"). Frame time (s) assumed without ``FRMTIME``: the shortest imaging
#: mode's (Small Window, 5.7 ms).
MIN_FRAME_S = 0.0057
RAW_PIXELS_PER_BIN = 4


def max_recordable_counts(exposure: float, header=None) -> float:
    """The most counts one 4" pixel can hold in ``exposure`` s: one event per raw pixel per
    frame (``FRMTIME`` of ``header`` in ms, else ``MIN_FRAME_S``)."""
    frame = _number(header.get("FRMTIME")) if header is not None else None
    frame_s = frame / 1e3 if frame is not None and math.isfinite(frame) and frame > 0 \
        else MIN_FRAME_S
    return RAW_PIXELS_PER_BIN * exposure / frame_s


def _check_recordable(name, counts, exposure, header) -> None:
    """InputError where a pixel holds more counts than the pn can record in ``exposure``: the
    networks give absurd or non-finite predictions there (a rate or exposure-corrected image,
    a wrong EXPOSURE, a corrupted pixel)."""
    bound = max_recordable_counts(exposure, header)
    top = float(np.max(counts)) if np.size(counts) else 0.0
    if top > bound:
        n = int(np.sum(counts > bound))
        raise InputError(f"{name}: {n} pixel(s) hold more counts (up to {top:.3g}) than the "
                         f"pn can record in EXPOSURE {exposure:.6g} s ({bound:.3g}: one event "
                         "per raw pixel and frame, 4 raw pixels per 4\" pixel); pass a counts "
                         "image with its true EXPOSURE")


def ccd_ontime_note(header, exposure: float, *, brief: bool = False) -> str:
    """"" or a note naming the CCDs whose good time (``ONTIMEnn``, as evselect images carry
    them) differs from ``exposure`` by more than ``ONTIME_TOLERANCE``; ``brief``: the same
    without the explanation, for a figure title's line.

    A pn quadrant can lose time that the others keep (counting mode behind a bright source,
    per-CCD flare filtering): an evselect image's ``EXPOSURE`` is then the largest
    ``ONTIMEnn``. The models take one exposure and every pixel's rate is counts /
    ``EXPOSURE``, so the rates on such CCDs are low by the fraction of time they lost. The
    CCD layout on the DETX/DETY grid is not confirmed, so no per-CCD correction is made.
    """
    times = {}
    for n in range(1, 13):
        v = _positive_seconds(header.get(f"ONTIME{n:02d}"))
        if v is not None:
            times[n] = v
    off = {n: t for n, t in times.items() if abs(t / exposure - 1) > ONTIME_TOLERANCE}
    if not off:
        return ""
    groups: dict[float, list[int]] = {}
    for n, t in off.items():
        groups.setdefault(round(t), []).append(n)
    parts = []
    for t, ccds in sorted(groups.items()):
        runs = (f"{ccds[0]}-{ccds[-1]}" if len(ccds) > 2 and ccds[-1] - ccds[0] == len(ccds) - 1
                else ",".join(map(str, ccds)))
        parts.append(f"CCD {runs} {t:.0f} s")
    worst = max(abs(1 - t / exposure) for t in off.values())
    how = "low" if all(t < exposure for t in off.values()) else "off"
    head = f"per-CCD good time differs from EXPOSURE {exposure:.0f} s ({'; '.join(parts)})"
    if brief:   # a figure title's line
        return f"{head}: rates {how} there"
    return (f"{head}: rates are counts / EXPOSURE on every CCD, so {how} by up to "
            f"{100 * worst:.0f} % on those")


def read_input(path: str | Path, *, exposure: float | None = None) -> InputImage:
    """Read and validate a pn counts image.

    Parameters
    ----------
    path : path to a FITS image (optionally gzipped).
    exposure : float, optional
        Exposure in seconds for an image whose header has no valid ``EXPOSURE`` (a positive
        number). The header's, where valid, is used: an ``exposure`` differing from it by more
        than ``EXPOSURE_TOLERANCE`` (0.1 %) only draws an :class:`InputWarning`.

    Raises
    ------
    InputError
        Missing or unreadable file, no 2-D image, not a counts image (an output of this tool,
        a ``BUNIT`` other than counts, non-integer values), NaN/inf or negative pixels, a pixel
        scale other than 4" (sky WCS, ``BINSIZE`` or DET axes), no counts at all, no exposure.

    Warns
    -----
    InputWarning
        The header states an energy band other than the models' 0.5-2 keV
        (:func:`input_band`); ``exposure`` disagrees with the header's ``EXPOSURE``; no sky
        WCS.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise UsageError(f"read_input takes a file path, not {type(path).__name__} (an array "
                         "in memory: InputImage(counts, exposure, header))")
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise InputError(f"{path}: is a folder; pass a FITS image file")
    _check_whole_file(path)
    data, header, primary = _open_image_hdu(path)
    if data.ndim == 3 and data.shape[0] == 1:
        data = data[0]
    if data.ndim != 2:
        raise InputError(f"{path}: image is {data.ndim}-D with shape {data.shape}; pass a 2-D "
                         "DETX/DETY counts image")
    _check_counts(path, data, header, primary)
    counts = _whole_counts(path, data)
    _check_values(path, counts, header)
    _check_pixel_scale(path, header, counts.shape)
    for key in OBS_KEYS + ("EXPOSURE",):
        if key not in header and key in primary:
            header[key] = primary[key]
    notes = []
    band = input_band(header, primary)
    _check_some_counts(path, counts, band)
    in_header = _positive_seconds(header.get("EXPOSURE"))
    if in_header is not None:
        if exposure is not None and not abs(float(exposure) / in_header - 1) <= (
                EXPOSURE_TOLERANCE):
            warnings.warn(f"{path.name}: --exposure {float(exposure):.6g} s differs from the "
                          f"header's EXPOSURE {in_header:.6g} s; using the header's "
                          "(--exposure is only for inputs without a valid EXPOSURE)",
                          InputWarning, stacklevel=2)
        exposure = in_header
    elif exposure is None:
        if "EXPOSURE" not in header:
            raise InputError(f"{path}: no EXPOSURE keyword; pass --exposure SECONDS")
        raise InputError(f"{path}: EXPOSURE = {header['EXPOSURE']!r} is not a positive number "
                         "of seconds; pass --exposure SECONDS")
    elif _positive_seconds(exposure) is None:
        raise InputError(f"{path}: exposure {exposure} s is not positive; pass --exposure "
                         "SECONDS")
    exposure = float(exposure)
    _check_recordable(path, counts, exposure, header)
    ontime = ccd_ontime_note(header, exposure)
    if ontime:
        notes.append(ontime)
        warnings.warn(f"{path.name}: {ontime} (an image of the time common to all CCDs, as "
                      "make_detxy_pn_image_pps.py makes, has none of this)", InputWarning,
                      stacklevel=2)
    _check_band(path, band)
    sky, note = _sky_wcs_of(header, path)
    if counts.shape != detector.PN_SHAPE:
        _check_detector_axes(path, header, sky)
    _warn_submode(path, header)   # the primary's SUBMODE is copied into header above
    return InputImage(counts=counts, exposure=exposure, header=header, wcs=sky, wcs_note=note,
                      path=path, notes=notes, sha256=_file_sha256(path), header_checked=True)


#: Largest angle (deg) between an image's axes on the sky and those of the DETX/DETY frame
#: at its ``PA_PNT`` (a WCS fitted to the events follows the attitude to well under 1 deg).
DET_AXES_TOLERANCE_DEG = 10.0


def _check_detector_axes(path: Path, header, sky) -> None:
    """InputError for an image whose sky axes are turned against the DETX/DETY frame that its
    ``PA_PNT`` gives: a sky (X/Y) image, such as ``evselect`` makes by default. The models
    know the detector's frame (its PSF, CCD gaps and out-of-time streaks); on a turned image
    they would draw them wrong without a word."""
    pa = _number(header.get("PA_PNT"))
    if sky is None or pa is None or not math.isfinite(pa):
        return
    want = skywcs.cd_from_pa(pa, PIXEL_ARCSEC)
    have = np.asarray(sky.cd, float)
    worst = 0.0
    for k in range(2):  # the angle between each pixel axis and the DET frame's, on the sky
        a, b = have[:, k], want[:, k]
        cos = float(a @ b) / (np.linalg.norm(a) * np.linalg.norm(b) or 1.0)
        worst = max(worst, math.degrees(math.acos(max(-1.0, min(1.0, cos)))))
    if worst > DET_AXES_TOLERANCE_DEG:
        # the DET frame is mirrored against the sky's east-left convention (det CD > 0)
        how = ("mirrored, as on a sky (X/Y) image" if np.linalg.det(have) * np.linalg.det(want)
               < 0 else f"turned {worst:.0f} deg")
        raise InputError(f"{path}: its axes are not the DETX/DETY frame of its PA_PNT "
                         f"({pa:g} deg) but {how}; the models take DETX/DETY images: make one "
                         "with make_detxy_pn_image_pps.py")


def _warn_submode(path: Path, header) -> None:
    """InputWarning for an image of a pn mode other than the full-frame ones the models were
    trained on (``SUBMODE``, as the image maker copies it from the event list)."""
    from .archive import SUPPORTED_SUBMODES

    mode = str(header.get("SUBMODE", "")).strip()
    if mode and mode not in SUPPORTED_SUBMODES:
        warnings.warn(f"{path.name}: SUBMODE {mode!r}: the models were trained on "
                      f"{' and '.join(SUPPORTED_SUBMODES)} images; expect a poorer prediction "
                      "outside the window this mode reads out", InputWarning, stacklevel=3)


def _file_sha256(path: Path) -> str | None:
    """sha256 of the input file, or None where it cannot be read again."""
    try:
        return _sha256(path)
    except OSError:
        return None


def made_from_another_file(pred_header, infile) -> str:
    """Why a prediction (primary header ``pred_header``) was not made from the file ``infile``
    as it is now (its ``INSHA`` differs: another image of the same name, or the image made
    again); "" when it was, or when the prediction does not record its input's checksum."""
    infile = Path(infile)
    if "INSHA" in pred_header and pred_header["INSHA"] != _file_sha256(infile):
        return f"made from another {infile.name} (INSHA)"
    return ""


def _check_whole_file(path: Path) -> None:
    """InputError for an input cut short. astropy reads a gzipped file up to the cut and says
    nothing (an image whose last extensions, its GTIs, were lost would pass), and an
    uncompressed one with a warning line of its own: a gzip stream must reach its trailer
    (:func:`batch.gzip_is_complete`), an uncompressed file's data its headers' length
    (:func:`fitsio.fits_truncation`)."""
    from .batch import cut_short

    try:
        gzipped, why = cut_short(path)
    except OSError:
        return  # _open_image_hdu names the problem
    if why and not gzipped:
        raise InputError(f"{path}: truncated ({why}); re-create it with "
                         "make_detxy_pn_image_pps.py or copy it again")
    if why:
        raise InputError(f"{path}: {why}; the gzip file is cut short or damaged: copy or "
                         "make it again")


def header_sky(header) -> SkyTan | None:
    """The header's RA/Dec sky WCS as a :class:`SkyTan` (through astropy.wcs for forms
    :meth:`SkyTan.from_header` does not read), or None; :class:`HeaderValueError` for a WCS
    keyword that is not a number."""
    if not skywcs.has_sky_wcs(header):
        return None
    return SkyTan.from_header(header) or _sky_from_astropy(header)


def _sky_from_astropy(header) -> SkyTan | None:
    """Sky WCS of a header that :meth:`SkyTan.from_header` does not read (via astropy.wcs)."""
    from astropy.wcs import WCS

    with procstate.quiet_warnings():
        try:
            return SkyTan.from_wcs(WCS(header, naxis=2))
        except Exception:  # astropy raises several types for malformed WCS keywords
            return None


def approx_sky(ra_pnt: float, dec_pnt: float, pa_pnt: float, *,
               binsize: float = detector.PN_BINSIZE) -> SkyTan:
    """:func:`skywcs.approx_sky_wcs` as a :class:`SkyTan` (same numbers, no astropy.wcs)."""
    crpix = skywcs._det_to_pix(*skywcs.BORESIGHT_DET, binsize=binsize)
    cd = skywcs.cd_from_pa(pa_pnt, detector.pixel_size_arcsec(binsize))
    return SkyTan(crpix, (ra_pnt, dec_pnt), cd, "FK5", 2000.0)


def _sky_wcs_of(header, path):
    try:
        sky = header_sky(header)
    except HeaderValueError as exc:
        raise _bad_wcs_keyword(path, exc) from None
    if sky is not None:
        return sky, ""
    ctype = str(header.get("CTYPE1", "")).strip()
    if ctype[1:4] in ("LON",) or ctype.startswith(("GLON", "ELON", "SLON", "HPLN")):
        warnings.warn(f"{path.name}: its sky WCS is {ctype}/{header.get('CTYPE2', '')}, not "
                      "RA/Dec, which the outputs need; it is not used", InputWarning,
                      stacklevel=3)
    keys = ("RA_PNT", "DEC_PNT", "PA_PNT")
    pnt = None
    if all(k in header for k in keys):
        pnt = [_number(header[k]) for k in keys]
        if None in pnt or not all(map(math.isfinite, pnt)):
            bad = ", ".join(f"{k} = {header[k]!r}" for k in keys)
            warnings.warn(f"{path.name}: no sky WCS, and the pointing is not numeric ({bad}); "
                          "outputs will have pixel coordinates only", InputWarning,
                          stacklevel=3)
            return None, "no sky WCS available"
    if pnt is not None:
        binsize = _det_binsize(header) or detector.PN_BINSIZE
        sky = approx_sky(*pnt, binsize=binsize)
        warnings.warn(f"{path.name}: no sky WCS in the file; using an approximate one from "
                      "RA_PNT/DEC_PNT/PA_PNT (good to a few arcsec)", InputWarning,
                      stacklevel=3)
        return sky, "approximate: from RA_PNT/DEC_PNT/PA_PNT, nominal boresight"
    warnings.warn(f"{path.name}: no sky WCS and no RA_PNT/DEC_PNT/PA_PNT; outputs will have "
                  "pixel coordinates only", InputWarning, stacklevel=3)
    return None, "no sky WCS available"


def _det_binsize(header) -> float | None:
    """Bin size (DET units) of a DETX/DETY image, from its primary or 'L' WCS, if any."""
    for suffix in ("", "L"):
        if str(header.get("CTYPE1" + suffix, "")).strip() == "DETX":
            cd = _number(header.get("CDELT1" + suffix))   # not a number: as if absent
            if cd and math.isfinite(cd):
                return abs(cd)
    return None


def _is_pn_grid(img: InputImage) -> bool:
    if img.counts.shape != detector.PN_SHAPE:
        return False
    b = _det_binsize(img.header)
    return b is None or b == detector.PN_BINSIZE


def input_mask(counts: np.ndarray, *, pn_grid: bool = True) -> np.ndarray:
    """Pixels passed to the model, bool [ny, nx].

    On the standard pn grid: the detector geometry (:func:`detector.detector_mask`), with the
    CCD corners outside the field of view when the image has events there, plus every pixel
    that has counts (a pixel that collected photons is never zeroed). Other grids: all pixels.
    """
    if not pn_grid:
        return np.ones(counts.shape, bool)
    corners = detector.corner_mask()
    with_corners = counts[corners].sum() > 0
    return detector.detector_mask(corners=bool(with_corners)) | (counts > 0)


def output_mask(counts: np.ndarray, in_mask: np.ndarray, *, pn_grid: bool = True
                ) -> np.ndarray:
    """Pixels where a prediction is kept (elsewhere it is 0), bool [ny, nx].

    Every CCD pixel that can collect events in an image of this kind: the live CCD area inside
    the field of view (including the CCD-edge and flagged columns that ``FLAG == 0`` empties in
    the input, since photons do land there in other exposures), the corners outside it when the
    input has corner events, and every pixel of the input mask. Only true gaps and off-chip
    pixels are zeroed: a zero where photons arrive would be a wrong prediction.
    """
    if not pn_grid:
        return np.ones(counts.shape, bool)
    with_corners = counts[detector.corner_mask()].sum() > 0
    live = detector.live_mask()
    if not with_corners:
        live &= detector.fov_mask()
    return live | in_mask


@functools.lru_cache(maxsize=4)
def sky_transmission(scale: int, pad: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """``detector.fov_transmission`` of the pn grid at ``scale``, placed on a padded output grid.

    The SR output is background-free sky, and outside the field-of-view circle the CCD corners
    see particles but (almost) no sky: the network, which never knows where in the FoV a pixel
    lies, may paint corner background as sky there, so its output is multiplied by this.
    ``pad`` is the (top, left) offset of the 1x input in the padded frame. Cached (read-only).
    """
    t = detector.fov_transmission(detector.pn_grid(scale=scale))
    out = _place(t, shape, scale * pad[0], scale * pad[1])
    out.setflags(write=False)
    return out


def _place(a: np.ndarray, shape: tuple[int, int], top: int, left: int) -> np.ndarray:
    """Zero array of ``shape`` holding ``a`` with its (0, 0) at (top, left) (negative: cropped)."""
    out = np.zeros(shape, a.dtype)
    ny, nx = a.shape
    sy0, dy0 = max(0, -top), max(0, top)
    sx0, dx0 = max(0, -left), max(0, left)
    h, w = min(ny - sy0, shape[0] - dy0), min(nx - sx0, shape[1] - dx0)
    out[dy0:dy0 + h, dx0:dx0 + w] = a[sy0:sy0 + h, sx0:sx0 + w]
    return out


def pad_to(a: np.ndarray, size: int = PAD_SIZE) -> tuple[np.ndarray, tuple[int, int]]:
    """Centred zero pad (or crop) of ``a`` to ``size`` x ``size`` (design §4.3).

    Returns the new array and ``(top, left)``: the offsets added to row/column indices
    (negative when cropping).
    """
    ny, nx = a.shape
    top, left = skywcs.crop_offset(ny, size), skywcs.crop_offset(nx, size)
    out = _place(a, (size, size), top, left)
    return out, (top, left)


def prepare(img: InputImage, size: int = PAD_SIZE):
    """Masked, padded count rate.

    Returns (rate [size, size] f32, input mask bool, output mask bool, (top, left)); the output
    mask (:func:`output_mask`) is on the padded 1x grid.
    """
    pn = _is_pn_grid(img)
    if not pn:
        warnings.warn(f"{img.path.name}: shape {img.counts.shape} is not the pn 411x403 "
                      f"grid; centred pad/crop to {size}x{size} without the detector mask",
                      InputWarning, stacklevel=2)
    mask = input_mask(img.counts, pn_grid=pn)
    keep = output_mask(img.counts, mask, pn_grid=pn)
    rate = np.where(mask, img.counts / img.exposure, 0.0).astype(np.float32)
    rate_p, pad = pad_to(rate, size)
    return rate_p, pad_to(mask, size)[0], pad_to(keep, size)[0], pad


def checked_image(img: InputImage) -> InputImage:
    """``img`` as :func:`enhance_image` needs it, checked as :func:`read_input` checks a file.

    An :class:`InputImage` made in memory has not been through :func:`read_input`: its counts
    must be a 2-D array of finite, non-negative whole numbers with some counts, and its
    exposure a positive number of seconds. Float counts within 1e-3 of whole numbers are
    rounded (a pixel of 1e-5 would otherwise count as having counts and open the detector
    mask on it). Its header, when it has one, gets :func:`read_input`'s header checks too: not
    an output of this tool nor a rate image (``BUNIT``), a 4" pixel (WCS, ``BINSIZE``), the
    DETX/DETY frame off the pn grid, and warnings for another energy band or pn mode. Returns
    ``img`` itself when nothing needs changing, else a copy; ``img`` is not modified.
    :class:`InputError` names what is wrong.
    """
    name = img.path
    try:
        counts = np.asarray(img.counts)
    except Exception as exc:  # ragged lists and the like
        raise InputError(f"{name}: counts are not an array ({exc}); pass a 2-D counts "
                         "array") from None
    if counts.ndim == 3 and counts.shape[0] == 1:
        counts = counts[0]
    if counts.ndim != 2 or counts.dtype.kind not in "uif":
        raise InputError(f"{name}: counts are a {counts.ndim}-D {counts.dtype} array with "
                         f"shape {counts.shape}; pass a 2-D numeric DETX/DETY counts image")
    c = _whole_counts(name, counts)
    _check_values(name, c, img.header)
    _check_some_counts(name, c)
    if img.header is not None and not getattr(img, "header_checked", False):
        empty = fits.Header()
        _check_counts(name, c, img.header, empty)
        _check_pixel_scale(name, img.header, c.shape)
        _check_band(name, input_band(img.header))
        if c.shape != detector.PN_SHAPE:
            _check_detector_axes(name, img.header, img.sky)
        _warn_submode(name, img.header)
    exposure = _positive_seconds(img.exposure)
    if exposure is None:
        raise InputError(f"{name}: exposure {img.exposure!r} is not a positive number of "
                         "seconds; pass the image's exposure in seconds")
    _check_recordable(name, c, exposure, img.header)
    if c is img.counts and exposure == img.exposure and img.header is not None:
        return img
    out = copy.copy(img)
    out.counts, out.exposure = c, exposure
    if out.header is None:   # made from an array alone
        out.header = fits.Header()
    return out


def check_exposure(img: InputImage, model: Model) -> None:
    """Warn when the input's exposure is outside the range ``model`` was trained for."""
    lo, hi = model.trained_exposure
    if not lo <= img.exposure <= hi:
        what = (f"{lo / 1e3:g}-{hi / 1e3:g} ks inputs" if model.takes_exposure
                else "20 ks inputs")
        warnings.warn(f"{img.path.name}: exposure {img.exposure / 1e3:.3g} ks "
                      f"({img.exposure:.6g} s); the {model.task} "
                      f"model was trained for {what}, expect degraded results", InputWarning,
                      stacklevel=3)


#: A prediction holding more than this times the input's count rate draws a warning: SR
#: removes the background (it holds less than the input), DN keeps the total (on the dev
#: images 1.000-1.005 of it).
FLUX_GAIN_WARN = 2.0


def enhance_image(img: InputImage, model: Model, *, sources: bool = True,
                  redraw: bool = True, min_signif: float | None = None) -> EnhanceResult:
    """Run ``model`` on ``img``; nothing is written.

    ``sources``: for SR models with a ``points`` map, list the point sources
    (:func:`xmm_enhance.sources.detect_sources`, significances from the input counts) of at
    least ``min_signif`` sigma (default ``DEFAULT_MIN_SIGNIF``); the unlisted candidates that
    keep their points are those of at least ``POINTS_SUPPORT_SIGNIF``, or ``min_signif`` when
    lower.
    ``redraw``: then let each listed source take the ``diffuse`` map's compact excess under it
    into ``points`` (:func:`xmm_enhance.sources.claim_excess`; their sum is unchanged), and
    redraw it in ``points`` (and so in the prediction) as the halved PSF with the map's own
    flux (:func:`xmm_enhance.sources.redraw_points`); the percentile maps follow the
    prediction's change pixel by pixel. Last, the ``points`` flux that neither a listed
    source nor an unlisted candidate of ``POINTS_SUPPORT_SIGNIF`` explains moves to ``diffuse``
    (:func:`xmm_enhance.sources.release_unlisted`; sum unchanged). Then the ``diffuse`` map
    keeps only the structure the input counts demand (:func:`xmm_enhance.sources.
    smooth_diffuse`): the prediction and the percentile maps follow it pixel by pixel.
    """
    if not isinstance(img, InputImage):
        raise UsageError(f"enhance_image takes an InputImage (read_input(path), or "
                         f"InputImage(counts, exposure, header)), not {type(img).__name__}")
    if not isinstance(model, Model):
        raise UsageError(f"enhance_image takes a Model (load_model('SR' or 'DN')), not "
                         f"{type(model).__name__}")
    check_min_signif(min_signif)
    img = checked_image(img)
    check_exposure(img, model)
    rate, mask, keep, (top, left) = prepare(img)
    outs = model.predict_all(rate, mask, img.exposure)
    s = model.scale
    out_mask = np.repeat(np.repeat(keep, s, 0), s, 1) if s > 1 else keep
    factor = out_mask.astype(np.float32)
    if s > 1 and _is_pn_grid(img):
        factor = factor * sky_transmission(s, (top, left), out_mask.shape)
    # negative values (none from the bundled models) are clipped; every map gets the same
    # mask and taper, so points + diffuse = prediction and lo68 <= prediction <= hi68 survive
    maps = {k: (np.clip(v, 0, None) * factor).astype(np.float32) for k, v in outs.items()}
    pred = maps.pop("rate")
    total_in = float(rate.sum(dtype=np.float64))
    total_out = float(pred.sum(dtype=np.float64))
    if total_in > 0 and total_out > FLUX_GAIN_WARN * total_in:
        warnings.warn(f"{img.path.name}: the {model.task} prediction holds "
                      f"{total_out / total_in:.3g}x the input's count rate; this input is "
                      "outside what the network learned (a source narrower than the PSF, "
                      "counts far beyond the simulations', or a nearly empty image): check "
                      "its features against the input", InputWarning, stacklevel=2)
    in_sky = img.sky.padded(top, left) if img.sky is not None else None
    out_sky = in_sky.upscaled(s) if (in_sky is not None and s > 1) else in_sky
    from .sources import DEFAULT_MIN_SIGNIF, POINTS_SUPPORT_SIGNIF

    list_sig = float(DEFAULT_MIN_SIGNIF if min_signif is None else min_signif)
    support_sig = min(POINTS_SUPPORT_SIGNIF, list_sig)
    found = cov_used = None
    weak = []  # candidates below the list's threshold whose points stay (release_unlisted)
    fitted = []  # every candidate the PSF fits, any significance (smooth_diffuse)
    if sources and s == 2 and "points" in maps:
        cov1 = input_coverage(img)
        cov_used = (cov1 is not None) if _is_pn_grid(img) else None
        found = find_sources(img, rate, mask, maps["points"], (top, left), out_sky,
                             diffuse2=maps.get("diffuse"), support=weak, min_signif=list_sig,
                             support_signif=support_sig, coverage=cov1, candidates=fitted)
    redrawn, core, released = 0, (1.0, 0), None
    if found is not None and redraw and "diffuse" in maps:
        from .sources import claim_excess, psf_core_scale, redraw_points, release_unlisted

        axis = ((detector.AXIS_PIXEL[0] + top, detector.AXIS_PIXEL[1] + left)
                if _is_pn_grid(img) else None)
        if found:
            # this observation's PSF core radius (from its bright listed sources) over the
            # model's
            core = psf_core_scale(np.rint(np.asarray(rate, np.float64) * img.exposure), mask,
                                  found, img.exposure, axis=axis)
            # listed sources take the diffuse map's compact excess under them (sum unchanged)
            maps["points"], maps["diffuse"], _ = claim_excess(
                maps["points"], maps["diffuse"], found, live2=out_mask & (pred > 0))
            # only where the prediction is positive, so the percentile maps can follow it
            cov2 = None
            if cov1 is not None:  # the SR target holds the coverage: so does the drawing
                cov2 = np.repeat(np.repeat(_padded_coverage(cov1, rate.shape, (top, left)), s,
                                           0), s, 1)
            pts, redrawn = redraw_points(maps["points"], found, axis=axis,
                                         live2=out_mask & (pred > 0), core_scale=core[0],
                                         exposure=img.exposure, cov2=cov2)
            if redrawn:
                # only the redrawn pixels change (all have pred > 0, see live2)
                idx = np.nonzero(pts != maps["points"])
                new = pts[idx] + maps["diffuse"][idx]
                ratio = new / pred[idx]
                for k in ("lo68", "hi68"):
                    if k in maps:
                        maps[k][idx] *= ratio
                maps["points"] = pts
                pred[idx] = new
        # points keeps the sources the counts demand; the rest is diffuse (sum unchanged)
        maps["points"], maps["diffuse"], released = release_unlisted(
            maps["points"], maps["diffuse"], found + weak, img.exposure, axis=axis,
            core_scale=core[0])
        # the diffuse emission keeps only the structure the counts demand (where the
        # prediction is positive, so the percentile maps can follow it)
        from .sources import protect_mask, smooth_diffuse

        live2 = out_mask & (pred > 0)
        counts2 = np.repeat(np.repeat(np.rint(np.asarray(rate, np.float64) * img.exposure)
                                      * mask, s, 0), s, 1) / float(s * s)
        # ... but keeps its drawing around the candidates of >= DIFFUSE_PROTECT_SIGNIF
        dif = smooth_diffuse(maps["diffuse"], counts2, img.exposure, live2,
                             protect2=protect_mask(pred.shape, fitted))
        new = np.where(live2, maps["points"] + dif, pred).astype(np.float32)
        ratio = np.where(live2, new / np.where(live2, pred, 1.0), 1.0)
        for k in ("lo68", "hi68"):
            if k in maps:
                maps[k] = (maps[k] * ratio).astype(np.float32)
        maps["diffuse"] = np.where(live2, dif, maps["diffuse"]).astype(np.float32)
        pred = new
    return EnhanceResult(task=model.task, input_rate=rate, input_mask=mask, prediction=pred,
                         input_wcs=in_sky, output_wcs=out_sky, pad=(top, left), image=img,
                         model=model, extras=maps, sources=found, redrawn=redrawn,
                         psf_core=core, released=released, support=weak,
                         list_signif=list_sig, support_signif=support_sig,
                         coverage=cov_used, output_keep=out_mask)


def input_coverage(img: InputImage) -> np.ndarray | None:
    """The pn coverage map (:func:`xmm_enhance.detector.coverage_map`, float64 on the input
    grid) when the input is a pn-grid image whose counts show it
    (:func:`xmm_enhance.sources.coverage_in_counts`), else None."""
    from . import sources as S

    if not _is_pn_grid(img):
        return None
    return S.coverage_in_counts(img.counts, input_mask(img.counts),
                                detector.coverage_map().astype(np.float64))


def _padded_coverage(coverage, shape, pad):
    """The input grid's coverage map placed on the padded grid ``shape`` at ``pad`` (1 in
    the padding), float64."""
    return 1.0 + _place(np.asarray(coverage, np.float64) - 1.0, shape, pad[0], pad[1])


def find_sources(img: InputImage, rate, mask, points, pad, out_sky, *, coverage=None,
                 **kwargs) -> list:
    """Point sources of an SR ``points`` map, tested on the input counts (padded 1x grid) over
    a background of the SR ``diffuse`` map (``diffuse2=``) plus a flat level.

    ``coverage``: the input grid's coverage map (:func:`input_coverage`), placed on the padded
    grid for the fits (None: every pixel counts fully). Adds ``ra``/``dec`` (deg; NaN without a
    sky WCS) to each source of :func:`xmm_enhance.sources.detect_sources`; ``kwargs`` go to it.
    """
    from . import sources as S

    counts = np.rint(np.asarray(rate, np.float64) * img.exposure)
    axis = sky = cov = None
    if _is_pn_grid(img):
        axis = (detector.AXIS_PIXEL[0] + pad[0], detector.AXIS_PIXEL[1] + pad[1])
        sky = _place(detector.fov_mask(), rate.shape, pad[0], pad[1])
    if coverage is not None:
        cov = _padded_coverage(coverage, rate.shape, pad)
    found = S.detect_sources(counts, mask, img.exposure, points, axis=axis, sky=sky,
                             coverage=cov, **kwargs)
    for lst in (found, kwargs.get("support") or []):
        if not lst:
            continue
        x2 = np.array([d["x2"] for d in lst])
        y2 = np.array([d["y2"] for d in lst])
        if out_sky is not None:
            ra, dec = out_sky.pixel_to_world(x2, y2)
        else:
            ra = dec = np.full(len(lst), np.nan)
        for d, a, b in zip(lst, ra, dec):
            d["ra"], d["dec"] = float(a), float(b)
    return found


# --------------------------------------------------------------------------- output
def _stem(path: Path) -> str:
    name = path.name
    for ext in (".fits.gz", ".fit.gz", ".fts.gz", ".fits.bz2", ".fit.bz2", ".fits.fz",
                ".fit.fz", ".fits", ".fit", ".fts", ".gz", ".bz2", ".fz"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return path.stem


def output_paths(infile: Path, which: str, outdir: Path | None = None) -> tuple[Path, Path]:
    """``(<stem>_input_wcs_<W>.fits.gz, <stem>_predict_wcs_<W>.fits.gz)`` (design §4.5)."""
    infile = Path(infile)
    folder = Path(outdir) if outdir is not None else infile.parent
    stem = _stem(infile)
    return (folder / f"{stem}_input_wcs_{which}.fits.gz",
            folder / f"{stem}_predict_wcs_{which}.fits.gz")


def check_output_collisions(paths, which: str, outdir: Path | None = None) -> list[Path]:
    """The inputs to process, once each; raise UsageError if two would write the same outputs.

    Two different files with the same stem (``a/img.fits`` and ``b/img.fits.gz``) and one
    ``outdir`` (or one folder) would overwrite each other's outputs: refused before anything
    is written. The same file given twice is processed once.
    """
    seen: dict[Path, Path] = {}
    unique = []
    for p in paths:
        p = Path(p)
        out = output_paths(p, which, outdir)[1]
        key = Path(os.path.abspath(out))
        if key in seen:
            first = seen[key]
            if os.path.abspath(first) == os.path.abspath(p) or (
                    first.exists() and p.exists() and os.path.samefile(first, p)):
                continue
            raise UsageError(f"{first} and {p} would both write {out}; give inputs with "
                             "different names, or run them separately with different --outdir")
        seen[key] = p
        unique.append(p)
    return unique


def _set(h: fits.Header, key: str, value, comment: str = "") -> None:
    """``h[key] = (value, comment)``, without the comment when the card would not hold it
    (astropy would truncate it with a ``VerifyWarning: Card is too long``).

    The length is computed, not tried under a warnings filter: filters are process-wide, and
    one set here would turn another thread's warnings into errors. (A long string value
    continued over several cards loses its comment, which astropy could have kept.)"""
    # a card is "KEYWORD = " + value (to column 30 at least) + " / " + comment: 80 at most
    if comment and len(str(value)) + len(comment) > 45:
        base = fits.Card(key, value).image
        if len(base) > 80 or max(len(base.rstrip()), 30) + 3 + len(comment) > 80:
            comment = ""
    h[key] = (value, comment) if comment else value


def _header(res: EnhanceResult, *, wcs, exposure, pixel_arcsec, what) -> fits.Header:
    img, model = res.image, res.model
    h = fits.Header()
    for key in OBS_KEYS:
        if key in img.header:
            _set(h, key, img.header[key], img.header.comments[key])
    # DATEREF, MJD-OBS, MJD-END: astropy.wcs would add them with a 'datfix' warning
    h.update(skywcs.time_keywords(h))
    wcs = _as_sky(wcs)
    if wcs is not None:
        h.update(wcs.header())
        if img.wcs_note:
            h["WCSNOTE"] = img.wcs_note[:68]
            h["COMMENT"] = f"Sky WCS: {img.wcs_note}"
    h["BUNIT"] = ("count/s/pixel", "count rate per pixel")
    h["PIXSIZE"] = (pixel_arcsec, "[arcsec] pixel size")
    emulated = what != "input" and emulated_exposure(model, img.exposure) is not None
    h["EXPOSURE"] = (exposure, "[s] exposure the prediction emulates" if emulated else
                     "[s] input exposure")
    if what != "input" and model.takes_exposure:
        h["PREDTYPE"] = ("expected rate" if res.task == "DN" else "sky rate, PSF/2",
                         "noise-free estimate from EXPOSURE s of data")
    h["INEXPO"] = (img.exposure, "[s] exposure of the input image")
    h["PADTOP"] = (res.pad[0], "rows added before input row 1 (neg: cropped)")
    h["PADLEFT"] = (res.pad[1], "columns added left of input grid (neg: cropped)")
    h["TASK"] = (res.task, "SR: super-resolution, DN: de-noising")
    h["CONTENT"] = ("masked padded input rate" if what == "input" else f"{res.task} prediction")
    h["MODEL"] = (header_text(model.path.name), "ONNX model file")
    h["MODELVER"] = (model.version, "model version")
    if model.meta.get("status"):
        h["MODELSTA"] = (str(model.meta["status"]).split(":")[0][:40],
                         "model status (MODEL_CARD.md)")
    h["MODELSHA"] = model.sha256  # sha256 of the model file (64 hex digits: no room for a comment)
    h["SOFTVER"] = (__version__, "xmm_enhance version")
    _set(h, "INFILE", header_text(img.path.name), "input image")
    if getattr(img, "sha256", None):
        h["INSHA"] = img.sha256  # sha256 of the input file (64 hex digits: no room for a comment)
    h["DATE"] = (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()), "file creation date (UTC)")
    _history(h, f"xmm_enhance {__version__} enhance_image, {res.task} model (the inference of "
                f"run_inference_on_real.py --which {res.task})")
    _history(h, f"input {header_text(img.path.name)}: counts / EXPOSURE, detector mask, "
                f"pad to {PAD_SIZE}")
    for note in img.notes:
        _history(h, f"input: {note}")
    if what != "input":
        _history(h, f"model {header_text(model.path.name)} v{model.version} "
                    f"sha256 {model.sha256[:16]}")
        if res.task == "SR":
            _history(h, "SR: 2x grid, PSF halved, background removed")
            if res.redrawn:
                h["PTREDRAW"] = (res.redrawn, "SOURCES redrawn as the halved PSF (16\")")
                h["PSFSCALE"] = (round(res.psf_core[0], 4),
                                 "input PSF core radius / King model's (redraw)")
                h["PSFNSRC"] = (res.psf_core[1], "bright sources PSFSCALE was measured on")
                _history(h, f"{res.redrawn} listed sources redrawn within 16\" as the halved"
                            " King PSF (core x PSFSCALE) with the POINTS map's own counts, or"
                            " for sources of >= 1000 counts at least their PSF-fit counts")
            if res.released is not None:
                from . import sources as S

                h["PTMOVED"] = (round(res.released * img.exposure, 1),
                                "[counts] unlisted POINTS moved to DIFFUSE")
                h["PTSIGMIN"] = (res.support_signif,
                                 "[sigma] POINTS kept near sources >= this")
                h["PTFREE"] = (S.UNSUPPORTED_MAX_COUNTS,
                               "[counts] max other POINTS in any 20\" aperture")
                _history(h, f"POINTS: at most {S.SUPPORT_PSF_FACTOR:g} x the halved King PSFs"
                            " of the SOURCES and of unlisted candidates of >= "
                            f"{res.support_signif:g} sigma (CANDIDATES), plus the "
                            "network's other points flux scaled to at most PTFREE counts in "
                            "any 20 arcsec aperture (sources too faint for the list); the "
                            "rest is in DIFFUSE")
            if res.smoothed:
                from . import sources as S

                h["DIFSIGMA"] = (S.DIFFUSE_DETAIL_SIGNIF,
                                 "[sigma] DIFFUSE detail kept if counts demand")
                _history(h, "DIFFUSE: structure at 6, 10, 18 arcsec kept where the input "
                            f"counts demand it at >= DIFSIGMA sigma, else smoothed; the "
                            "prediction and LO68/HI68 follow")
            if _is_pn_grid(img):
                _history(h, f"SR: sky x exp(-d / {detector.FOV_EDGE_ARCSEC:g} arcsec) at a "
                            "distance d outside the FoV circle")
        else:
            _history(h, "DN: expected rate incl. background, de-noised")
        if model.takes_exposure:
            _history(h, f"the network was told the input exposure ({img.exposure:.0f} s); "
                        "its output estimates the noise-free rate from those photons")
    return h


#: What each extension of the prediction file holds (EXTNAME -> one line).
EXTENSION_TEXT = {
    "POINTS": "point sources, each drawn with the halved PSF",
    "DIFFUSE": "extended emission without the point sources",
    "LO68": "16th percentile of the true rate given the input",
    "HI68": "84th percentile of the true rate given the input",
}
#: The same once ``points`` keeps only the sources the counts demand (header ``PTMOVED``).
LISTED_TEXT = {
    "POINTS": "sources >= PTSIGMIN sigma, halved PSF; <= PTFREE else",
    "DIFFUSE": "extended emission; unlisted points beyond PTFREE",
}


def region_path(infile: Path, outdir: Path | None = None) -> Path:
    """``<stem>_sources_SR.reg`` beside the SR outputs."""
    infile = Path(infile)
    folder = Path(outdir) if outdir is not None else infile.parent
    return folder / f"{_stem(infile)}_sources_SR.reg"


def png_path(p_pred: Path) -> Path:
    """The quick-look PNG of a prediction file: ``<stem>_predict_wcs_<W>.png``."""
    p_pred = Path(p_pred)
    return p_pred.with_name(p_pred.name.replace(".fits.gz", ".png"))


def run_outputs(infile: Path, model: Model, outdir: Path | None = None, *, png: bool = False
                ) -> list[Path]:
    """Every file :func:`enhance_file` writes for ``infile`` with ``model``: the input and
    prediction files, the region file of an SR model with a ``points`` map (its source list),
    and the PNG with ``png``."""
    p_in, p_pred = output_paths(infile, model.task, outdir)
    out = [p_in, p_pred]
    if model.scale == 2 and "points" in model.output_names:
        out.append(region_path(infile, outdir))
    if png:
        out.append(png_path(p_pred))
    return out


def region_problem(path: Path, n_sources: int | None = None) -> str:
    """What is wrong with ``path`` as a region file :func:`write_outputs` wrote ("" when
    nothing): missing or unreadable, not whole (:func:`xmm_enhance.sources.region_text` puts
    its header line first and a newline last), or, given ``n_sources`` (the rows of its
    ``SOURCES`` table), another number of circles."""
    try:
        text = Path(path).read_bytes()
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable ({type(exc).__name__})"
    if not text.startswith(b"# Region file format") or not text.endswith(b"\n"):
        return "not a complete region file"
    if n_sources is not None:
        circles = sum(line.startswith(b"circle(") for line in text.splitlines())
        if circles != n_sources:
            return f"{circles} sources, its prediction lists {n_sources}"
    return ""


def _region_is_valid(path: Path) -> tuple[bool, str]:
    why = region_problem(path)
    return not why, why


def prediction_headers(pred) -> tuple[fits.Header, set, fits.Header | None]:
    """(primary header, HDU names, ``SOURCES`` header or None) of a prediction file, in one
    pass over its headers (no data is read)."""
    with fits.open(pred, memmap=False, lazy_load_hdus=True) as hdul:
        primary, names, table = hdul[0].header.copy(), set(), None
        for hdu in hdul:
            names.add(hdu.name)
            if hdu.name == "SOURCES":
                table = hdu.header.copy()
    return primary, names, table


def source_settings_differ(pred, *, min_signif: float | None = None, redraw: bool = True,
                           headers=None) -> str:
    """Why the SR prediction file ``pred`` was made with other source-list settings than
    ``min_signif`` and ``redraw`` (see :func:`enhance_image`); "" when made with these.

    Compared are the ``SOURCES`` table's ``MINSIG`` (the list's threshold; exactly, as
    ``xmm_enhance.batch`` compares it: the header keeps the float it was given, and an older
    file without the keyword passes) and, for a model with a ``diffuse`` map (a ``DIFFUSE``
    extension), the redraw: a redrawn prediction always records its release of unlisted points
    (``PTMOVED`` in the primary header), one made with ``redraw=False`` never does. A file
    without a ``SOURCES`` table (DN, or a model without a ``points`` map) made no source list:
    nothing to compare. Reads headers only (``pred`` is assumed valid:
    :func:`outputs_complete`), or takes them as ``headers`` (:func:`prediction_headers`).

    Returns
    -------
    str
        The first setting that differs, as the command-line option that would have made the
        file (``"made with --min-signif 4.5, not 3"``, ``"made with --no-redraw"``...), or "".
    """
    from .sources import DEFAULT_MIN_SIGNIF

    primary, names, table = headers if headers is not None else prediction_headers(pred)
    if table is None:
        return ""
    want = float(DEFAULT_MIN_SIGNIF if min_signif is None else min_signif)
    made = table.get("MINSIG")
    if made is not None and float(made) != want:
        default = " (the default)" if min_signif is None else ""
        return f"made with --min-signif {float(made):g}, not {want:g}{default}"
    if "DIFFUSE" in names:
        redrawn = "PTMOVED" in primary
        if redrawn and not redraw:
            return "made without --no-redraw"
        if redraw and not redrawn:
            return "made with --no-redraw"
    return ""


def outputs_complete(paths, *, model: Model | None = None, infile=None,
                     min_signif: float | None = None, redraw: bool = True,
                     exposure: float | None = None) -> tuple[bool, str]:
    """Whether every file of ``paths`` (:func:`run_outputs`) exists and is complete: FITS files
    read to the end with verified checksums (:func:`xmm_enhance.batch.fits_is_valid`), PNGs
    whole (:func:`xmm_enhance.batch.png_is_valid`), region files whole. With ``model``, its
    prediction (the second path) must also have been made by that model file (``MODELSHA``);
    with ``infile``, no output may be older than it (an input made again is predicted again),
    and the prediction must have been made from this very file (its ``INSHA``, where it has
    one: every image maker writes the same file name, so another observation's image, or one
    copied in with its old time, would otherwise pass). ``exposure`` (``--exposure``, for
    inputs without a valid ``EXPOSURE``) must be the one the prediction was made with.
    An SR prediction's source list must have been made with ``min_signif`` and ``redraw``
    (:func:`source_settings_differ`; the defaults are :func:`enhance_file`'s).

    The region file and the PNG belong to the prediction: neither may be older than it
    (``st_mtime_ns``, equal allowed), else a run that made the prediction again without
    them (without ``--png``, or by another route) left them stale. Equal-or-newer holds for
    the files of one run on any clock granularity: :func:`write_outputs` writes the
    prediction's data before the region file's (one atomic set, each to a temporary file, then
    renamed in that order; a rename keeps the mtime), and :func:`enhance_file` writes the PNG
    after both. No tolerance is allowed: one would keep a PNG made seconds before the
    prediction, and a wall clock stepped back between the writes only costs a redo.

    Returns
    -------
    (bool, str)
        Completeness and, when incomplete, the first file that is not with the reason.
    """
    from .batch import fits_is_valid, png_is_valid

    paths = [Path(p) for p in paths]
    for p in paths:
        name = p.name.lower()
        check = (png_is_valid if name.endswith(".png") else
                 _region_is_valid if name.endswith(".reg") else fits_is_valid)
        ok, why = check(p)
        if not ok:
            return False, f"{p.name}: {why}"
    if infile is not None:
        made = Path(infile).stat().st_mtime_ns
        old = [p.name for p in paths if p.stat().st_mtime_ns < made]
        if old:
            return False, f"{old[0]}: older than {Path(infile).name}"
    if len(paths) > 1:
        pred = paths[1]
        made = pred.stat().st_mtime_ns
        old = [p.name for p in paths[2:] if p.name.lower().endswith((".png", ".reg"))
               and p.stat().st_mtime_ns < made]
        if old:
            return False, f"{old[0]}: older than {pred.name}"
        headers = prediction_headers(pred)
        if model is not None and headers[0].get("MODELSHA") != model.sha256:
            return False, f"{pred.name}: made by another {model.task} model"
        why = made_from_another_file(headers[0], infile) if infile is not None else ""
        if why:
            return False, f"{pred.name}: {why}"
        if infile is not None and exposure is not None:
            why = _exposure_differs(Path(infile), headers[0], exposure)
            if why:
                return False, f"{pred.name}: {why}"
        why = source_settings_differ(pred, min_signif=min_signif, redraw=redraw,
                                     headers=headers)
        if why:
            return False, f"{pred.name}: {why}"
    return True, ""


def _exposure_differs(infile: Path, pred_header, exposure: float) -> str:
    """Why a prediction (primary header ``pred_header``, ``INEXPO``) was made with another
    exposure than ``exposure`` would give ``infile`` now: "" when the same, or when the
    input's own valid ``EXPOSURE`` decides (``exposure`` is then not used)."""
    asked = _positive_seconds(exposure)
    if asked is None:
        return ""   # read_input refuses it: the run says so
    try:   # read_input's EXPOSURE: the first image HDU's, else the primary's
        with fits.open(infile, memmap=False, lazy_load_hdus=True) as hdul:
            image = next((h for h in hdul if h.is_image and h.header.get("NAXIS", 0) >= 2),
                         hdul[0])
            own = [_positive_seconds(h.header.get("EXPOSURE")) for h in (image, hdul[0])]
    except (OSError, EOFError, ValueError, TypeError):
        return ""
    if any(v is not None for v in own):
        return ""
    made = _positive_seconds(pred_header.get("INEXPO"))
    if made is None or abs(made / asked - 1) > EXPOSURE_TOLERANCE:
        return f"made with exposure {made} s, not {float(exposure):g} s"
    return ""


#: Significant bits kept in the extension maps (float32 has 24): the lower ones are noise that
#: gzip cannot compress. 14 bits (relative error <= 3e-5) keep POINTS + DIFFUSE equal to the
#: primary within 1e-4; 10 bits (5e-4) are far below any percentile's own uncertainty.
MANTISSA_BITS = {"POINTS": 14, "DIFFUSE": 14, "LO68": 10, "HI68": 10}
#: LO68 is rounded down and HI68 up, so that the interval never shrinks.
_ROUNDING = {"LO68": "down", "HI68": "up"}


def round_mantissa(a: np.ndarray, bits: int, mode: str = "nearest") -> np.ndarray:
    """float32 copy of non-negative ``a`` rounded to ``bits`` significant bits (of 24):
    ``"nearest"``, ``"down"`` (never above ``a``) or ``"up"`` (never below)."""
    out = np.array(a, dtype=np.float32)
    drop = 24 - int(bits)
    if drop <= 0:
        return out
    i = out.view(np.uint32)
    low = np.uint32((1 << drop) - 1)
    if mode == "nearest":
        i += np.uint32(1 << (drop - 1))
    elif mode == "up":
        i += low
    i &= ~low
    return out


def _image_extension(data, name, h_out, aperture_rule=None, interval_scale=None
                     ) -> fits.ImageHDU:
    h = fits.Header()
    for key in ("WCSAXES", "CTYPE1", "CTYPE2", "CUNIT1", "CUNIT2", "CRPIX1", "CRPIX2", "CRVAL1",
                "CRVAL2", "CD1_1", "CD1_2", "CD2_1", "CD2_2", "RADESYS", "EQUINOX", "TIMESYS",
                "MJDREF", "DATEREF", "MJD-OBS", "MJD-END", "DATE-OBS", "DATE-END", "BUNIT",
                "PIXSIZE", "EXPOSURE",
                "INEXPO", "OBS_ID"):
        if key in h_out:
            h[key] = (h_out[key], h_out.comments[key])
    h["INHERIT"] = (True, "the primary header's keywords apply too")
    h["CONTENT"] = (LISTED_TEXT if "PTMOVED" in h_out else EXTENSION_TEXT).get(
        name, EXTENSION_TEXT[name])
    h["SIGBITS"] = (MANTISSA_BITS[name], "significant bits kept of 24 (float32)")
    if name in ("LO68", "HI68") and aperture_rule is not None:
        for key, value, comment in aperture_rule.cards():
            h[key] = (value, comment)
    if name in ("LO68", "HI68") and interval_scale is not None:
        h["INTSCALE"] = (interval_scale, "percentiles widened x this in log (calibration)")
    return fits.ImageHDU(round_mantissa(data, MANTISSA_BITS[name],
                                        _ROUNDING.get(name, "nearest")), h, name=name)


def candidates_of(res: EnhanceResult) -> list:
    """The unlisted candidates whose points ``POINTS`` keeps (``res.support``: PSF-fit
    significance at least ``POINTS_SUPPORT_SIGNIF`` on the input counts, but below the list's
    threshold or better fitted by the wider profile), without those within ``MERGE_PX`` of a
    listed source or of a more significant candidate; most significant first."""
    from .sources import MERGE_PX

    out = []
    for d in sorted(res.support or [], key=lambda d: -d["signif"]):
        if all(math.hypot(d["y"] - e["y"], d["x"] - e["x"]) >= MERGE_PX
               for e in list(res.sources or []) + out):
            out.append(d)
    return out


def sources_hdu(sources, exposure: float, name: str = "SOURCES", *,
                list_signif: float | None = None,
                support_signif: float | None = None,
                coverage: bool | None = None) -> fits.BinTableHDU:
    """The ``SOURCES`` table (columns of :data:`xmm_enhance.sources.SOURCE_COLUMNS`); with
    ``name="CANDIDATES"`` the same columns for :func:`candidates_of`. ``list_signif`` and
    ``support_signif``: the thresholds used (default: the package's); ``coverage``: whether
    the fits used the pn coverage map (header ``COVMAP``; none written when None)."""
    from .sources import (BKG_SYSTEMATIC, DEFAULT_MIN_SIGNIF, FLUX_SYSTEMATIC,
                          POINTS_SUPPORT_SIGNIF, SOURCE_COLUMNS, SYSTEMATIC_POS_ERR_ARCSEC,
                          flux_error)

    keys = {"RA": "ra", "DEC": "dec", "X": "x2", "Y": "y2", "RATE": "rate",
            "RATE_ERR": "rate_err", "COUNTS": "counts", "COUNTS_ERR": "counts_err",
            "FIT_COUNTS": "fit_counts",
            "SIGNIF": "signif", "BKG": "bkg", "RADEC_ERR": "radec_err", "EXT_DC": "ext_dc"}
    # the errors: the fit's Poisson error and the PSF model's share, in quadrature
    err = np.array([flux_error(d["counts_err"], d["counts"]) for d in sources], np.float64)
    cols = []
    for col, unit, _ in SOURCE_COLUMNS:
        if col in ("COUNTS_ERR", "RATE_ERR"):
            vals = err if col == "COUNTS_ERR" else err / float(exposure)
        else:
            vals = np.array([float(d[keys[col]]) for d in sources], np.float64)
        cols.append(fits.Column(name=col, format="D", unit=unit, array=vals))
    # BinTableHDU(data=...) and from_columns import astropy.table (~0.1 s of a 1 s command-line
    # call) to check for a Table; a FITS_rec assigned to an empty HDU gives the same HDU
    hdu = fits.BinTableHDU(name=name)
    hdu.data = fits.FITS_rec.from_columns(fits.ColDefs(cols))
    for i, (_, _, text) in enumerate(SOURCE_COLUMNS, start=1):
        hdu.header.comments[f"TTYPE{i}"] = text[:46]
    hdu.header["EXPOSURE"] = (exposure, "[s] input exposure (COUNTS = RATE x EXPOSURE)")
    hdu.header["XYREF"] = ("0-based", "X, Y: 0-based pixel on the primary grid")
    list_signif = DEFAULT_MIN_SIGNIF if list_signif is None else list_signif
    support_signif = POINTS_SUPPORT_SIGNIF if support_signif is None else support_signif
    hdu.header["SYSERR"] = (SYSTEMATIC_POS_ERR_ARCSEC,
                            "[arcsec] pointing, not in RADEC_ERR (4XMM)")
    if name == "CANDIDATES":
        hdu.header["CONTENT"] = ("unlisted point candidates whose POINTS are kept",
                                 "not in SOURCES")
        hdu.header["MINSIG"] = (support_signif, "candidate threshold (sigma)")
        hdu.header["LISTSIG"] = (list_signif, "SOURCES threshold (sigma)")
        _history(hdu.header, "Candidates of the SR source list that POINTS keeps but "
                             "SOURCES does not list: below its threshold, or better fitted "
                             "by a profile 2.5x wider than the PSF (a piled-up core, a "
                             "compact knot). Not in the region file.")
    else:
        hdu.header["MINSIG"] = (list_signif, "detection threshold (sigma)")
    hdu.header["SIGMETH"] = ("PSF-fit likelihood ratio on the input counts", "")
    hdu.header["BKGMODEL"] = ("DIFFUSE map + flat annulus level", "background of each fit")
    hdu.header["BKGSYS"] = (BKG_SYSTEMATIC, "its fractional error, in SIGNIF")
    hdu.header["FLUXSYS"] = (FLUX_SYSTEMATIC, "fractional PSF-model error in *_ERR")
    if coverage is not None:
        hdu.header["COVMAP"] = (bool(coverage), "fits used the pn gap columns' coverage")
    return hdu


def emulated_exposure(model: Model, input_exposure: float) -> float | None:
    """Exposure (s) a prediction stands for when it is more than its input's: a recipe-1 DN
    model's ``target_exposure_ks`` (50 ks) for a shorter input. None otherwise: a prediction
    never claims a deeper exposure than it was trained to emulate, nor less than its input's."""
    t = model.target_exposure
    return t if t is not None and t > input_exposure else None


def write_outputs(res: EnhanceResult, *, outdir: Path | None = None, overwrite: bool = False
                  ) -> tuple[Path, Path]:
    """Write the input and prediction files (atomically); return their paths.

    The prediction file's primary HDU is the prediction; models with more outputs add the
    image extensions ``POINTS``, ``DIFFUSE`` (SR), ``LO68``, ``HI68`` on the same grid and WCS,
    and SR with a ``points`` map the ``SOURCES`` table and ``<stem>_sources_SR.reg``; after the
    release of unsupported points (``res.released``) also the ``CANDIDATES`` table
    (:func:`candidates_of`). ``outdir`` is created (with its parents) if missing.
    """
    p_in, p_pred = output_paths(res.image.path, res.task, outdir)
    pix = detector.pixel_size_arcsec()
    h_in = _header(res, wcs=res.input_sky, exposure=res.image.exposure, pixel_arcsec=pix,
                   what="input")
    target = emulated_exposure(res.model, res.image.exposure) or res.image.exposure
    h_out = _header(res, wcs=res.output_sky, exposure=target,
                    pixel_arcsec=pix / res.model.scale, what="predict")
    # big-endian copies: astropy would byte-swap the result's own arrays in place while it
    # writes them (garbage for a thread reading or writing the same result meanwhile)
    pred = fits.HDUList([fits.PrimaryHDU(np.asarray(res.prediction, ">f4"), h_out)])
    for key, name in EXTRA_OUTPUTS.items():
        if key in res.extras:
            pred.append(_image_extension(res.extras[key], name, h_out,
                                         res.model.aperture_rule_at(res.image.exposure),
                                         res.model.interval_scale_at(res.image.exposure)))
    items = [(fits.HDUList([fits.PrimaryHDU(np.asarray(res.input_rate, ">f4"), h_in)]), p_in),
             (pred, p_pred)]
    if res.sources is not None:
        from .sources import region_text

        sig = {"list_signif": res.list_signif, "support_signif": res.support_signif,
               "coverage": res.coverage}
        pred.append(sources_hdu(res.sources, res.image.exposure, **sig))
        if res.released is not None:
            # what else POINTS holds (release_unlisted keeps these candidates' points)
            pred.append(sources_hdu(candidates_of(res), res.image.exposure, "CANDIDATES",
                                    **sig))
        for hdu in pred[1:]:
            if isinstance(hdu, fits.BinTableHDU):
                hdu.header["INHERIT"] = (True, "the primary header's keywords apply too")
                for key in ("RADESYS", "EQUINOX"):  # the frame of RA, DEC (the image WCS)
                    if key in h_out:
                        hdu.header[key] = (h_out[key], h_out.comments[key])
        # without a sky WCS (RA/Dec NaN) the circles are in the SR grid's pixels
        no_sky = res.output_sky is None
        text = region_text([d["ra"] for d in res.sources], [d["dec"] for d in res.sources],
                           labels=[f"{d['signif']:.1f}sig" for d in res.sources],
                           xy=([d["x2"] for d in res.sources], [d["y2"] for d in res.sources])
                           if no_sky else None, pixel_arcsec=pix / res.model.scale)
        items.append((text.encode(), region_path(res.image.path, outdir)))
    if not overwrite:  # before the folder is made (atomic_write_hduls checks too)
        refuse_existing(path for _, path in items)
    if outdir is not None and not Path(outdir).is_dir():
        ensure_output_dir(outdir)  # created only now, when there is something to write
    # all or none: a failed write (disk full...) leaves no file and no temporary
    atomic_write_hduls(items, overwrite=overwrite)
    return p_in, p_pred


def enhance_file(path, which: str, *, model: Model | None = None, outdir=None,
                 overwrite: bool = False, exposure: float | None = None, png: bool = False,
                 redraw: bool = True, min_signif: float | None = None) -> dict:
    """Read ``path``, run the ``which`` model, write outputs (and a PNG).

    ``exposure``: for an input without a valid ``EXPOSURE`` (see :func:`read_input`).
    ``redraw``, ``min_signif``: see :func:`enhance_image`. Without ``overwrite`` an existing
    output (the SR region file and the PNG included) is refused before the input is read or
    anything written; ``outdir`` is created when the outputs are written (a refused input
    leaves none behind).

    Returns
    -------
    dict
        ``input`` and ``predict`` (the two FITS files), ``region`` (SR with a source list)
        and ``png`` (with ``png``): absolute paths; ``result``: the :class:`EnhanceResult`.
    """
    which = str(which).strip().upper()   # "sr" names the outputs _SR, as the model does
    if which not in TASKS:
        raise UsageError(f"which={which!r}: must be one of {', '.join(TASKS)}")
    if model is not None and which != model.task:
        raise UsageError(f"which={which!r} but the model {model.path.name} is a "
                         f"{model.task} model; pass which={model.task!r} or a {which} model")
    check_min_signif(min_signif)
    # absolute: the returned paths (and the outputs' INFILE source) survive an os.chdir
    path = Path(os.path.abspath(path))
    outdir = Path(os.path.abspath(outdir)) if outdir is not None else None
    p_in, p_pred = output_paths(path, which, outdir)
    # the longest names this input's outputs get (the SR region file's is shorter)
    check_name_length([p_in, p_pred] + ([png_path(p_pred)] if png else []))
    if not overwrite:
        refuse_existing([p_in, p_pred] + ([png_path(p_pred)] if png else []))
    if not path.is_file():
        read_input(path)   # its one-line error (no such file, a folder), before any model load
    model = model or load_model(which)
    if not overwrite:
        refuse_existing(run_outputs(path, model, outdir, png=png))   # + the region file
    img = read_input(path, exposure=exposure)
    res = enhance_image(img, model, redraw=redraw, min_signif=min_signif)
    p_in, p_pred = write_outputs(res, outdir=outdir, overwrite=overwrite)
    out = {"input": p_in, "predict": p_pred, "result": res}
    region = region_path(path, outdir)
    if res.sources is not None and region.is_file():
        out["region"] = region
    if png:
        from .display import quicklook_png
        out["png"] = quicklook_png(res, png_path(p_pred), overwrite=overwrite)
    log.info("%s: wrote %s and %s", path.name, p_in, p_pred)
    return out


def describe(model: Model) -> str:
    """One line about a model (for -v)."""
    m = {k: model.meta.get(k) for k in ("task", "version", "training_commit")}
    return f"{model.path.name} {json.dumps(m)} sha256={model.sha256[:12]}"
