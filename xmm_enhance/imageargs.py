"""The image maker's option checks, shared by ``make_detxy_pn_image_pps.py`` and ``xmm-enhance
batch`` (which runs them before any observation starts, so a bad option is a usage error, exit
2, there too). Imports only numpy: a batch's parent process stays light."""
from __future__ import annotations

import numpy as np

import re

from . import detector
from .errors import UsageError

__all__ = ["check_image_args", "MAX_PIXELS", "MIN_EXPO_KS", "MODEL_BAND_PI",
           "BAND_TOLERANCE_PI", "is_model_band", "BACKENDS", "check_backend",
           "check_archive_url", "check_threads", "check_model_binsize"]

#: PI band (eV, inclusive) of the images the models were trained on (0.5-2 keV), and how far
#: (eV) a band's edges may lie from it and still count as that band (``PI < 2000``...).
MODEL_BAND_PI = (500, 2000)
BAND_TOLERANCE_PI = 10

#: Largest image accepted (pixels): ~200 MB of int32 counts.
MAX_PIXELS = 50_000_000
#: Shortest --expo_time (ks): the file name holds it to the second
#: (:func:`xmm_enhance.pipeline.output_name`).
MIN_EXPO_KS = 0.001


def _min_binsize() -> int:
    b = 1
    while np.prod(detector.pn_grid(b).shape) > MAX_PIXELS:
        b += 1
    return b


def check_image_args(low_pi, high_pi, binsize, expo_time_ks) -> None:
    """Raise :class:`UsageError` (naming the option and the fix) for a PI band, bin size or
    exposure that cannot make an image."""
    for name, arg, v in (("--low_pi", "low_pi", low_pi), ("--high_pi", "high_pi", high_pi),
                         ("--binSize", "binsize", binsize),
                         ("--expo_time", "expo_time_ks", expo_time_ks)):
        if v is not None and (isinstance(v, (bool, np.bool_))
                              or not isinstance(v, (int, float, np.integer, np.floating))):
            raise UsageError(f"{name} ({arg}=) {v!r}: must be a number, not "
                             f"{type(v).__name__}")
    for name, v in (("--low_pi", low_pi), ("--high_pi", high_pi)):
        if v is None or int(v) != v or v < 0:
            raise UsageError(f"{name} {v}: must be a non-negative integer (eV)")
    if low_pi >= high_pi:
        raise UsageError(f"--low_pi {low_pi} must be below --high_pi {high_pi}")
    if binsize is None or not np.isfinite(binsize) or binsize <= 0:
        raise UsageError(f"--binSize (binsize=) {binsize}: must be > 0 (DET units of 0.05\"; "
                         "80 = 4\")")
    ny, nx = detector.pn_grid(binsize).shape
    if ny * nx > MAX_PIXELS:
        raise UsageError(f"--binSize (binsize=) {binsize}: the image would have {ny} x {nx} "
                         f"pixels; use a bin size of at least {_min_binsize()} (80 = 4\")")
    if expo_time_ks is None or not np.isfinite(expo_time_ks):
        raise UsageError(f"--expo_time (expo_time_ks=) {expo_time_ks}: must be a number of ks "
                         "(<= 0: all)")
    if 0 < expo_time_ks < MIN_EXPO_KS:
        raise UsageError(f"--expo_time (expo_time_ks=) {expo_time_ks:g}: under "
                         f"{MIN_EXPO_KS * 1e3:g} s; it is in ks (20 = 20000 s; <= 0: all good "
                         "time)")


def is_model_band(low_pi: float, high_pi: float) -> bool:
    """Whether the PI band ``[low_pi, high_pi]`` (eV) is the models' 0.5-2 keV
    (:data:`MODEL_BAND_PI`, within :data:`BAND_TOLERANCE_PI`)."""
    return (abs(low_pi - MODEL_BAND_PI[0]) <= BAND_TOLERANCE_PI
            and abs(high_pi - MODEL_BAND_PI[1]) <= BAND_TOLERANCE_PI)


#: The range of the SR source list's threshold ``min_signif`` (sigma, ``--min-signif``).
MIN_SIGNIF_RANGE = (3.0, 100.0)


def check_min_signif(min_signif) -> None:
    """UsageError unless ``min_signif`` is None or a number of sigma in
    ``MIN_SIGNIF_RANGE``."""
    if min_signif is None:
        return
    try:
        v = None if isinstance(min_signif, (bool, np.bool_)) else float(min_signif)
    except (TypeError, ValueError):
        v = None
    lo, hi = MIN_SIGNIF_RANGE
    if v is None or not lo <= v <= hi:
        raise UsageError(f"min_signif={min_signif!r} (--min-signif): must be a number of sigma "
                         f"from {lo:g} to {hi:g}")


#: The image maker's backends (``--backend``).
BACKENDS = ("auto", "native", "sas")


def check_backend(backend) -> None:
    """UsageError unless ``backend`` is one of :data:`BACKENDS`."""
    if backend not in BACKENDS:
        raise UsageError(f"--backend {backend!r}: choose one of {', '.join(BACKENDS)}")


def check_archive_url(url: str | None, option: str = "--archive-url") -> None:
    """UsageError unless ``url`` (when given) is an http(s) URL."""
    if url is not None and not re.match(r"https?://[^/?#\s]+", str(url).strip()):
        raise UsageError(f"{option} {url!r}: not an http(s) URL; pass the mirror's "
                         "data-action-aio URL, e.g. https://host/nxsa-sl/servlet/"
                         "data-action-aio?")


def check_threads(threads, option: str = "--threads (threads=)") -> None:
    """UsageError unless ``threads`` is None or a whole number >= 1."""
    if threads is None:
        return
    if isinstance(threads, (bool, np.bool_)) or not isinstance(threads, (int, np.integer)) \
            or threads < 1:
        raise UsageError(f"{option} {threads!r}: must be a whole number >= 1 (or leave it out "
                         "for onnxruntime's choice)")


#: Relative tolerance of an input's pixel size against the models' 4" (a fitted WCS's scale).
PIXEL_TOLERANCE = 0.03


def check_model_binsize(binsize, which) -> None:
    """UsageError when SR or DN (``which``) is asked for images of another pixel size than the
    models' 4" (``binsize`` 80, within :data:`PIXEL_TOLERANCE`, as the inference's own check):
    every observation would make its image and then fail."""
    want = detector.PN_BINSIZE
    if which and abs(float(binsize) / want - 1) > PIXEL_TOLERANCE:
        raise UsageError(f"--binSize (binsize=) {binsize:g} makes "
                         f"{detector.pixel_size_arcsec(binsize):g}\"/pixel images, but the "
                         f"{'/'.join(which)} models take {detector.pixel_size_arcsec():g}\"/pixel "
                         f"ones: use --binSize {want}, or --which none for images only")
