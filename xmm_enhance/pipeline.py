"""OBS_ID -> cleaned EPIC-pn DETX/DETY image with a sky WCS (``make_detxy_pn_image_pps.py``).

Steps (``design.md`` §2): PPS folder (download or ``--pps_dir``) -> pn exposure -> flare GTI
from FBKTSR (rate <= FLCUTTHR, tabgtigen rules) ∩ the event list's own good time -> sub-GTI of
``expo_time_ks`` -> events ``FLAG==0 && PATTERN<=4 && PI in [low:high]`` inside it -> DETX/DETY
image on evselect's grid -> sky WCS fitted from the events -> FITS written atomically.

Where things go: the PPS is downloaded to ``<save_dir>/<obsid>/pps``; the image is written beside
the PPS files (``pn_cleaned_20.0ks_detxy_500_2000_80.fits``), or into ``save_dir`` when both
``pps_dir`` and ``save_dir`` are given.

``EXPOSURE`` in the image is the kept good time in seconds, the summed length of its ``STDGTI``
extension (see :mod:`xmm_enhance.imaging`). When less good time exists than ``expo_time_ks``
asks for, all of it is kept (an :class:`~xmm_enhance.gti.ExposureWarning` beyond the 15 %
tolerance) and ``EXPOSURE`` says how much there was; ``EXPREQ`` records the request.
"""
from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import detector, events, gti, imaging, skywcs
from .errors import InputError, OutputError, PPSError, UsageError
from .fitsio import atomic_write_hdul, check_writable_dir

__all__ = ["ImageResult", "make_image", "output_name", "resolve_backend", "BACKENDS"]

log = logging.getLogger(__name__)

BACKENDS = ("auto", "native", "sas")
#: Below this many selected events in the kept time, the WCS is fitted on all band-selected
#: events of the list (the DET -> sky map does not depend on time beyond the attitude wander).
_MIN_FIT_EVENTS = 1000
#: Largest image accepted (pixels): ~200 MB of int32 counts.
_MAX_PIXELS = 50_000_000


def _min_binsize():
    b = 1
    while np.prod(detector.pn_grid(b).shape) > _MAX_PIXELS:
        b += 1
    return b


@dataclass
class ImageResult:
    """What :func:`make_image` made."""

    path: Path                    #: the image FITS file
    exposure: float               #: EXPOSURE, s (kept good time)
    counts: int                   #: total counts in the image
    obsid: str
    backend: str                  #: 'native' or 'sas'
    gti: np.ndarray               #: kept GTIs [n, 2]
    good_time: float              #: good time available before the --expo_time cut, s
    requested_exposure: float     #: s (<= 0: all)
    binsize: float
    low_pi: int
    high_pi: int
    shape: tuple
    n_rows: int                   #: rows in the event list
    wcs_method: str               #: 'EVENTFIT' or 'PNT'
    wcs_rms_arcsec: float
    pps_dir: Path
    events_file: Path
    gti_plot: Path | None = None
    stages: list = field(default_factory=list)  #: (name, t_start, t_end) perf_counter stamps

    @property
    def timings(self) -> dict:
        return {n: b - a for n, a, b in self.stages}


def _fmt_bin(binsize) -> str:
    b = float(binsize)
    return str(int(b)) if b.is_integer() else f"{b:g}"


def output_name(expo_time_ks: float, low_pi: int, high_pi: int, binsize) -> str:
    """``pn_cleaned_{expo:.1f}ks_detxy_{low}_{high}_{binsize}.fits`` (``full`` for expo <= 0)."""
    expo = f"{expo_time_ks:.1f}ks" if expo_time_ks and expo_time_ks > 0 else "full"
    return f"pn_cleaned_{expo}_detxy_{low_pi}_{high_pi}_{_fmt_bin(binsize)}.fits"


def resolve_backend(backend: str) -> str:
    """'auto' -> 'sas' when pysas is usable, else 'native'; 'sas' without SAS raises."""
    from . import sas

    if backend not in BACKENDS:
        raise UsageError(f"--backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend == "native":
        return "native"
    if backend == "sas":
        sas.require()
        return "sas"
    return "sas" if sas.available() else "native"


def _check_args(low_pi, high_pi, binsize, expo_time_ks):
    for name, v in (("--low_pi", low_pi), ("--high_pi", high_pi)):
        if v is None or int(v) != v or v < 0:
            raise UsageError(f"{name} {v}: must be a non-negative integer (eV)")
    if low_pi >= high_pi:
        raise UsageError(f"--low_pi {low_pi} must be below --high_pi {high_pi}")
    if binsize is None or not np.isfinite(binsize) or binsize <= 0:
        raise UsageError(f"--binSize {binsize}: must be > 0 (DET units of 0.05\"; 80 = 4\")")
    ny, nx = detector.pn_grid(binsize).shape
    if ny * nx > _MAX_PIXELS:
        raise UsageError(f"--binSize {binsize}: the image would have {ny} x {nx} pixels; use "
                         f"a bin size of at least {_min_binsize()} (80 = 4\")")
    if expo_time_ks is None or not np.isfinite(expo_time_ks):
        raise UsageError(f"--expo_time {expo_time_ks}: must be a number of ks (<= 0: all)")


# --------------------------------------------------------------------------------------------

def make_image(obsid: str, *, low_pi: int = 500, high_pi: int = 2000,
               expo_time_ks: float = 20.0, binsize: float = 80, save_dir=None, pps_dir=None,
               backend: str = "auto", overwrite: bool = False, gti_plot: bool = False,
               credentials_file=None, output=None) -> ImageResult:
    """Make the cleaned DETX/DETY image of an observation.

    Parameters
    ----------
    obsid : str
        10-digit OBS_ID.
    low_pi, high_pi : int
        Inclusive PI band in eV (``PI in [low_pi:high_pi]``).
    expo_time_ks : float
        Exposure to keep, ks; ``<= 0`` keeps all good time.
    binsize : float
        Pixel size in DET units (0.05"); 80 = 4".
    save_dir : path-like, optional
        Download folder (PPS in ``<save_dir>/<obsid>/pps``; default the current folder); with
        ``pps_dir``, the output folder.
    pps_dir : path-like, optional
        Use these PPS files instead of downloading.
    backend : {'auto', 'native', 'sas'}
        ``auto`` = SAS when pysas is usable, else native.
    overwrite : bool
        Replace an existing image (otherwise :class:`OutputError`).
    gti_plot : bool
        Also write ``<image stem>_gti.png``: light curve, threshold, kept intervals.
    credentials_file : path-like, optional
        Passed to astroquery for proprietary data.
    output : path-like, optional
        Explicit output file name (overrides the default name and folder).

    Returns
    -------
    ImageResult

    Raises
    ------
    UsageError, PPSError, InputError, ArchiveError, OutputError
        One-line messages; ``exit_code`` 2 for usage, 1 otherwise.
    """
    stages = []
    t_begin = time.perf_counter()

    def mark(name, t0):
        stages.append((name, t0, time.perf_counter()))
        return time.perf_counter()

    _check_args(low_pi, high_pi, binsize, expo_time_ks)
    low_pi, high_pi = int(low_pi), int(high_pi)
    from . import archive as arch  # lazy: astroquery is only needed to download

    obsid = arch.validate_obsid(obsid)
    backend = resolve_backend(backend)

    # ---- PPS folder and output path
    t0 = time.perf_counter()
    if pps_dir is None:
        root = Path(save_dir) if save_dir is not None else Path.cwd()
        pps_folder = Path(arch.download_pps(obsid, root, credentials_file=credentials_file))
        out_dir = pps_folder
    else:
        pps_folder = Path(pps_dir)
        if not pps_folder.is_dir():
            raise PPSError(f"{pps_folder}: --pps_dir does not exist; pass the folder that "
                           "holds the P<OBSID>... PPS files")
        out_dir = Path(save_dir) if save_dir is not None else pps_folder
    out_path = Path(output) if output is not None else \
        out_dir / output_name(expo_time_ks, low_pi, high_pi, binsize)
    if out_path.exists() and not overwrite:
        raise OutputError(f"{out_path}: exists; pass --overwrite to replace it")
    check_writable_dir(out_path.parent)
    files = arch.find_pps_files(pps_folder, obsid)
    if files.fbktsr is None:
        raise PPSError(f"{pps_folder}: no FBKTSR flaring-background file for the pn exposure; "
                       "download the PPS again")
    t0 = mark("locate", t0)

    # ---- flare GTI (FBKTSR) and the event list
    curve = gti.read_fbktsr(files.fbktsr)
    flare_gti = gti.gti_from_rate(curve.time, curve.rate, curve.threshold, curve.timedel)
    t0 = mark("flare_gti", t0)
    ev = events.read_events(files.events, low_pi=low_pi, high_pi=high_pi)
    t0 = mark("read_events", t0)
    own = ev.own_gti()
    good = gti.intersect(flare_gti, own)
    if len(good) == 0:
        raise InputError(f"{files.events.name}: no good time left after the flare filter "
                         f"(FBKTSR rate <= FLCUTTHR = {curve.threshold:g}); nothing to image")
    expo_s = float(expo_time_ks) * 1e3
    if backend == "sas":
        from . import sas
        image, kept, good = sas.image_with_sas(files, curve.threshold, own, low_pi=low_pi,
                                               high_pi=high_pi, binsize=binsize,
                                               expo_time_s=expo_s)
        in_kept = gti.in_gti(ev.TIME, kept)
        t0 = mark("sas", t0)
    else:
        kept = gti.sub_gti(good, expo_s)
        in_kept = gti.in_gti(ev.TIME, kept)
        t0 = mark("gti", t0)
        image = imaging.bin_det(ev.DETX[in_kept], ev.DETY[in_kept], binsize)
        t0 = mark("bin", t0)
    exposure = gti.total(kept)

    # ---- sky WCS from the events
    if int(in_kept.sum()) >= _MIN_FIT_EVENTS:
        fsel = in_kept
    else:
        fsel = slice(None)
    try:
        fit = skywcs.fit_sky_wcs_from_events(ev.DETX[fsel], ev.DETY[fsel], ev.X[fsel],
                                             ev.Y[fsel], ev.header, binsize=binsize)
    except (KeyError, ValueError) as err:
        raise InputError(f"{files.events.name}: cannot build the sky WCS ({err}); the event "
                         "header lacks its sky reference keywords") from err
    if fit.method != "EVENTFIT":
        warnings.warn(f"{files.events.name}: too few events to fit the sky WCS; using "
                      "RA_PNT/DEC_PNT/PA_PNT (approximate, a few arcsec)", UserWarning,
                      stacklevel=2)
    t0 = mark("wcs", t0)

    # ---- header and file
    sel = events.selection_expression(low_pi, high_pi, gti="STDGTI")
    extra = {
        "OBS_ID": obsid,
        "PPSEVLI": (files.events.name, "PPS event list"),
        "PPSFBK": (Path(files.fbktsr).name, "PPS flaring-background time series"),
        "FLCUTTHR": (curve.threshold, "[count/s] flare threshold applied to FBKTSR"),
        "GOODTIME": (gti.total(good), "[s] good time before the --expo_time cut"),
        "BACKEND": (backend, "native (numpy/astropy) or sas (pysas)"),
    }
    header = imaging.image_header(ev.header, binsize=binsize, sky_wcs_header=fit.header(),
                                  selection=sel, exposure=exposure, gti=kept,
                                  primary_header=ev.primary, requested_exposure=expo_s,
                                  extra=extra)
    header.add_history(f"xmm-enhance make_image: flare GTI from {Path(files.fbktsr).name} "
                       f"RATE<={curve.threshold:g} (mingtisize {gti.MIN_GTI_S:g} s), "
                       "intersected with the event list's CCD GTIs")
    header.add_history(f"sub-GTI of {expo_time_ks:g} ks (longest interval first); "
                       f"kept {exposure:.1f} s of {gti.total(good):.1f} s good time")
    hdul = imaging.make_image_hdul(image, header, kept, gti_extra={
        "METHOD": ("pps", "Method used to derive the rate threshold"),
        "RLIM": (curve.threshold, "The PPS derived threshold")})
    try:
        atomic_write_hdul(hdul, out_path, overwrite=overwrite)
    except OSError as err:
        raise OutputError(f"{out_path}: cannot write ({err}); check the folder") from err
    t0 = mark("write", t0)
    png = None
    if gti_plot:
        png = out_path.with_name(out_path.name.removesuffix(".gz").removesuffix(".fits")
                                 + "_gti.png")
        gti.plot_gti(curve, kept, png, flare_gti=good,
                     title=f"{obsid} pn {files.expid}: kept {exposure / 1e3:.2f} ks of "
                           f"{gti.total(good) / 1e3:.2f} ks good time")
        t0 = mark("gti_plot", t0)
    stages.append(("total", t_begin, time.perf_counter()))
    counts = int(image.sum(dtype=np.int64))
    log.info("%s: %d counts, EXPOSURE %.1f s, WCS rms %.2f\"", out_path, counts, exposure,
             fit.rms_arcsec)
    return ImageResult(path=out_path, exposure=exposure, counts=counts, obsid=obsid,
                       backend=backend, gti=kept, good_time=gti.total(good),
                       requested_exposure=expo_s, binsize=binsize, low_pi=low_pi,
                       high_pi=high_pi, shape=image.shape, n_rows=ev.n_rows,
                       wcs_method=fit.method, wcs_rms_arcsec=fit.rms_arcsec,
                       pps_dir=pps_folder, events_file=Path(files.events), gti_plot=png,
                       stages=stages)


def grid_shape(binsize) -> tuple:
    """(ny, nx) of the image for ``binsize`` (re-exported for callers)."""
    return detector.pn_grid(binsize).shape
