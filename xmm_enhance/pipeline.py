"""OBS_ID -> cleaned EPIC-pn DETX/DETY image with a sky WCS (``make_detxy_pn_image_pps.py``).

Steps (``design.md`` §2): PPS folder (download or ``--pps_dir``) -> pn exposure -> flare GTI
from FBKTSR (rate <= FLCUTTHR, tabgtigen rules) ∩ the event list's own good time -> sub-GTI of
``expo_time_ks`` -> events ``FLAG==0 && PATTERN<=4 && PI in [low:high]`` inside it -> DETX/DETY
image on evselect's grid -> sky WCS fitted from the events -> FITS written atomically.

Where things go: the PPS is downloaded to ``<save_dir>/<obsid>/pps``; the image is written beside
the PPS files (``pn_cleaned_20.0ks_detxy_500_2000_80.fits``), or into ``save_dir`` when both
``pps_dir`` and ``save_dir`` are given.

``EXPOSURE`` in the image is the kept good time in seconds, the summed length of its ``STDGTI``
extension (see :mod:`xmm_enhance.imaging`); ``EXPREQ`` records the request (s, <= 0: all).
When less good time exists than ``expo_time_ks`` asks for, all of it is kept, one
:class:`~xmm_enhance.gti.ExposureWarning` says so (requested vs kept) and the file gets the name
of an all-good-time image (``pn_cleaned_full_...``, as for ``expo_time_ks <= 0``): a name never
promises more exposure than the file holds. :func:`find_image` finds such a file again.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import detector, events, gti, imaging, skywcs
from .errors import InputError, OutputError, PPSError, UsageError
from .fitsio import atomic_write_hdul, check_creatable_dir
from .imageargs import BACKENDS, check_backend, check_image_args  # noqa: F401

__all__ = ["ImageResult", "make_image", "output_name", "find_image", "resolve_backend",
           "BACKENDS"]

log = logging.getLogger(__name__)

#: Below this many selected events in the kept time, the WCS is fitted on all band-selected
#: events of the list (the DET -> sky map does not depend on time beyond the attitude wander).
_MIN_FIT_EVENTS = 1000


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


def _fmt_ks(expo_ks: float) -> str:
    """Exposure (ks) for a file name: one decimal (``20.0``) unless that would hide a
    difference of a second or more (``20.04``, not ``20.0``)."""
    ks = round(float(expo_ks), 3)
    return f"{ks:.1f}" if ks == round(ks, 1) else f"{ks:.3f}".rstrip("0")


def output_name(expo_time_ks: float, low_pi: int, high_pi: int, binsize) -> str:
    """``pn_cleaned_{expo}ks_detxy_{low}_{high}_{binsize}.fits`` (``full`` for expo <= 0;
    ``expo`` with one decimal, ``20.0``, or to the second when that differs: ``20.04``).

    This is the name of an image that holds the requested exposure. When the observation has
    less good time than requested, :func:`make_image` keeps all of it and uses the ``full``
    name instead (see :func:`find_image`).
    """
    expo = f"{_fmt_ks(expo_time_ks)}ks" if expo_time_ks and expo_time_ks > 0 else "full"
    return f"pn_cleaned_{expo}_detxy_{low_pi}_{high_pi}_{_fmt_bin(binsize)}.fits"


def image_folder(obsid: str, save_dir=None, pps_dir=None) -> Path:
    """Where :func:`make_image` writes the image: beside the downloaded PPS,
    ``<save_dir>/<obsid>/pps`` (``save_dir`` default: the current folder), or with ``pps_dir``
    into ``save_dir`` when given, else into ``pps_dir``."""
    if pps_dir is None:
        return Path(save_dir if save_dir is not None else ".") / obsid / "pps"
    return Path(save_dir if save_dir is not None else pps_dir)


def find_image(folder, expo_time_ks: float, low_pi: int, high_pi: int, binsize) -> Path:
    """Path of the image :func:`make_image` makes (or made) in ``folder`` for these options.

    ``folder / output_name(expo_time_ks, ...)``, except when that file does not exist, the
    all-good-time file ``folder / output_name(0, ...)`` does, and its good time (``GOODTIME``,
    else ``EXPOSURE``) is shorter than ``expo_time_ks``: a request for more exposure than the
    observation has gives exactly that file, so it is returned (reruns find it, e.g. the batch
    engine skipping finished work). The file is not validated here.
    """
    folder = Path(folder)
    wanted = folder / output_name(expo_time_ks, low_pi, high_pi, binsize)
    if not (expo_time_ks and expo_time_ks > 0) or wanted.exists():
        return wanted
    full = folder / output_name(0, low_pi, high_pi, binsize)
    if full.is_file():
        from astropy.io import fits

        try:
            with warnings.catch_warnings():
                # a cut file (redone by the caller) read only for its header: astropy's
                # "may have been truncated" line would reach stderr even with -q
                warnings.simplefilter("ignore")
                h = fits.getheader(full)
            have = float(h.get("GOODTIME", h["EXPOSURE"]))
        except (OSError, KeyError, TypeError, ValueError):
            return wanted
        if have < float(expo_time_ks) * 1e3:
            return full
    return wanted


def resolve_backend(backend: str) -> str:
    """'auto' -> 'sas' when pysas is usable, else 'native'; 'sas' without SAS raises."""
    from . import sas

    check_backend(backend)
    if backend == "native":
        return "native"
    if backend == "sas":
        sas.require()
        return "sas"
    return "sas" if sas.available() else "native"


def _keep(good, expo_s: float):
    """The kept GTIs: all of ``good`` when ``expo_s <= 0`` or longer than the good time (the
    caller warns), else :func:`gti.sub_gti`."""
    if expo_s <= 0 or gti.total(good) < expo_s:
        return gti.as_gti(good)
    return gti.sub_gti(good, expo_s)


def _one_line(err) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:160]


def _check_out_dir(folder: Path) -> None:
    """The output folder exists and is writable, or can be made (``mkdir -p`` at write time,
    so a failed run leaves no empty folder behind)."""
    check_creatable_dir(folder, "choose another --save_dir")


# --------------------------------------------------------------------------------------------

def _check_existing(path: Path, obsid: str, overwrite: bool, what: str = ";", *,
                    folder_option: str = "--save_dir") -> None:
    """Refuse to replace ``path`` without ``overwrite``, and never when it holds the image of
    another observation (its ``OBS_ID``): images of several observations written to one
    folder have the same name, and a per-observation folder (``folder_option``) is the fix."""
    if not path.exists():
        return
    other = None
    try:
        from astropy.io import fits

        other = str(fits.getheader(path).get("OBS_ID", "")).strip() or None
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        pass  # unreadable: --overwrite replaces it
    if other is not None and other != obsid:
        raise OutputError(f"{path}: exists and holds OBS_ID {other}, not {obsid}; give each "
                          f"observation its own {folder_option} (e.g. {path.parent / obsid})")
    if not overwrite:
        raise OutputError(f"{path}: exists{what} pass --overwrite to replace it (--skip-existing "
                          "keeps it and exits 0)")


def gti_plot_path(image: Path) -> Path:
    """``<image stem>_gti.png`` beside ``image``: where ``make_image(gti_plot=True)`` puts
    the light curve."""
    image = Path(image)
    return image.with_name(image.name.removesuffix(".gz").removesuffix(".fits") + "_gti.png")


#: Event-list header values this tool images; others are refused (the models know the pn in
#: imaging mode only). The file name says the same, but a renamed or rewritten file may not.
EVENT_LIST_INSTRUMENT = "EPN"
EVENT_LIST_DATAMODE = "IMAGING"


def _check_event_list(path, ev, obsid: str) -> None:
    """PPSError for an event list this tool cannot image (no events at all, another instrument
    or a non-imaging mode, said by its header); a warning when its header names another
    OBS_ID than the one asked for."""
    name = Path(path).name
    if ev.n_rows == 0:
        raise PPSError(f"{name}: the event list holds no events at all; download the PPS "
                       "again (delete the PPS folder, or use --pps_dir with a complete copy)")
    for key, want, what in (("INSTRUME", EVENT_LIST_INSTRUMENT, "instrument"),
                            ("DATAMODE", EVENT_LIST_DATAMODE, "mode")):
        got = str(ev.header.get(key, ev.primary.get(key, want))).strip()
        if got.upper() != want:
            raise PPSError(f"{name}: {key} = {got!r}, not {want!r}: this tool images the pn "
                           f"in imaging mode only; give the observation's pn imaging event "
                           "list (PIEVLI)")
    other = str(ev.header.get("OBS_ID", ev.primary.get("OBS_ID", obsid))).strip()
    if other and other != obsid:
        warnings.warn(f"{name}: its header says OBS_ID {other}, not {obsid}: the image is "
                      f"named and labelled {obsid}; check that --pps_dir holds this "
                      "observation's products", UserWarning, stacklevel=3)


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
        Exposure to keep, ks; ``<= 0`` keeps all good time. More than the observation's good
        time also keeps all of it, with an :class:`~xmm_enhance.gti.ExposureWarning`, in the
        file an all-good-time request makes (``pn_cleaned_full_...``).
    binsize : float
        Pixel size in DET units (0.05"); 80 = 4".
    save_dir : path-like, optional
        Download folder (PPS in ``<save_dir>/<obsid>/pps``; default the current folder); with
        ``pps_dir``, the output folder (created if missing).
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
        Explicit output file name (overrides the default name and folder, and is used as
        given even when less good time than requested exists).

    Returns
    -------
    ImageResult

    Raises
    ------
    UsageError, PPSError, InputError, ArchiveError, OutputError, sas.SASNotAvailable,
    sas.SASError
        One-line messages; ``exit_code`` 2 for usage, 1 otherwise.

    The paths of the returned :class:`ImageResult` are absolute (resolved when the call is
    made), so they stay right after an ``os.chdir``.
    """
    stages = []
    t_begin = time.perf_counter()

    def mark(name, t0):
        stages.append((name, t0, time.perf_counter()))
        log.debug("stage %s: %.3f s", name, stages[-1][2] - t0)   # -v shows where time goes
        return time.perf_counter()

    check_image_args(low_pi, high_pi, binsize, expo_time_ks)
    low_pi, high_pi = int(low_pi), int(high_pi)
    from . import archive as arch  # lazy: astroquery is only needed to download

    obsid = arch.validate_obsid(obsid)
    backend = resolve_backend(backend)

    # ---- PPS folder and output path
    t0 = time.perf_counter()
    # absolute, as the paths returned: a caller may change its folder afterwards
    save_dir = Path(os.path.abspath(save_dir)) if save_dir is not None else None
    pps_dir = Path(os.path.abspath(pps_dir)) if pps_dir is not None else None
    output = Path(os.path.abspath(output)) if output is not None else None
    if pps_dir is None:
        root = Path(save_dir) if save_dir is not None else Path.cwd()
        new_dirs = [d for d in [root, *root.parents] if not d.exists()]
        try:
            pps_folder = Path(arch.download_pps(obsid, root, credentials_file=credentials_file))
        except BaseException:
            for d in new_dirs:     # a failed download leaves no empty --save_dir behind
                with contextlib.suppress(OSError):
                    d.rmdir()      # only when empty
            raise
        out_dir = pps_folder
    else:
        pps_folder = Path(pps_dir)
        if pps_folder.is_file():
            raise PPSError(f"{pps_folder}: --pps_dir is a file, not a folder; pass the folder "
                           "that holds the P<OBSID>... PPS files")
        if not pps_folder.is_dir():
            raise PPSError(f"{pps_folder}: --pps_dir does not exist; pass the folder that "
                           "holds the P<OBSID>... PPS files")
        out_dir = image_folder(obsid, save_dir, pps_dir)

    def name_for(expo_ks):
        return Path(output) if output is not None else \
            out_dir / output_name(expo_ks, low_pi, high_pi, binsize)

    # the name holds the request unless the good time is shorter (known after reading the
    # events): fail early for the likely name, check again once the name is final
    out_path = name_for(expo_time_ks)
    _check_existing(out_path, obsid, overwrite)
    _check_out_dir(out_path.parent)
    files = arch.find_pps_files(pps_folder, obsid)
    tried = []
    while True:
        if files.fbktsr is None:
            raise PPSError(f"{pps_folder}: no FBKTSR flaring-background file for the pn "
                           "exposure; download the PPS again")
        t0 = mark("locate", t0)

        # ---- flare GTI (FBKTSR) and the event list
        curve = gti.read_fbktsr(files.fbktsr)
        flare_gti = gti.gti_from_rate(curve.time, curve.rate, curve.threshold, curve.timedel)
        t0 = mark("flare_gti", t0)
        ev = events.read_events(files.events, low_pi=low_pi, high_pi=high_pi)
        t0 = mark("read_events", t0)
        _check_event_list(files.events, ev, obsid)
        own = ev.own_gti()
        good = gti.intersect(flare_gti, own)
        if len(good) or not files.others:
            break
        # an exposure that is all flare: the observation's next pn exposure may be clean
        tried.append(files.expid)
        warnings.warn(f"{obsid}: pn exposure {files.expid} has no good time left after the "
                      f"flare filter; using exposure {files.others[0]} instead",
                      gti.ExposureWarning, stacklevel=2)
        files = arch.find_pps_files(pps_folder, obsid, exclude=tried)
    if len(good) == 0:
        also = (f" (exposure{'s' if len(tried) > 1 else ''} {', '.join(tried)} "
                f"{'have' if len(tried) > 1 else 'has'} none either)" if tried else "")
        raise InputError(f"{files.events.name}: no good time left after the flare filter "
                         f"({Path(files.fbktsr).name} RATE <= FLCUTTHR = "
                         f"{curve.threshold:g}) and the event list's GTIs{also}; the exposure is "
                         "all flare or gaps, nothing to image: choose another observation")
    expo_s = float(expo_time_ks) * 1e3
    if backend == "sas":
        from . import sas
        image, kept, good = sas.image_with_sas(files, curve.threshold, own, low_pi=low_pi,
                                               high_pi=high_pi, binsize=binsize,
                                               expo_time_s=expo_s)
        in_kept = gti.in_gti(ev.TIME, kept)
        t0 = mark("sas", t0)
    else:
        kept = _keep(good, expo_s)
        in_kept = gti.in_gti(ev.TIME, kept)
        t0 = mark("gti", t0)
        image = imaging.bin_det(ev.DETX[in_kept], ev.DETY[in_kept], binsize)
        t0 = mark("bin", t0)
    exposure = gti.total(kept)
    good_time = gti.total(good)
    short = expo_s > 0 and good_time < expo_s
    if short:
        out_path = name_for(0)
        warnings.warn(f"{obsid}: requested {expo_time_ks:g} ks but only {good_time / 1e3:.2f} "
                      f"ks ({good_time:.3f} s) of good time; kept all of it (EXPOSURE "
                      f"{exposure:.3f} s) in "
                      f"{out_path.name}", gti.ExposureWarning, stacklevel=2)
        _check_existing(out_path, obsid, overwrite,
                        f" (all {good_time / 1e3:.2f} ks of good time, less than requested); "
                        "use it, or")

    # ---- sky WCS from the events
    if int(in_kept.sum()) >= _MIN_FIT_EVENTS:
        fsel = in_kept
    else:
        fsel = slice(None)
    try:
        fit = skywcs.fit_sky_wcs_from_events(ev.DETX[fsel], ev.DETY[fsel], ev.X[fsel],
                                             ev.Y[fsel], ev.header, binsize=binsize)
    except (KeyError, ValueError) as err:
        raise InputError(f"{files.events.name}: cannot build the sky WCS ({_one_line(err)}); "
                         "the EVENTS header lacks its sky reference keywords, download the "
                         "PPS again") from err
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
        "GOODTIME": (good_time, "[s] good time before the --expo_time cut"),
        "BACKEND": (backend, "native (numpy/astropy) or sas (pysas)"),
    }
    header = imaging.image_header(ev.header, binsize=binsize, sky_wcs_header=fit.header(),
                                  selection=sel, exposure=exposure, gti=kept,
                                  primary_header=ev.primary, requested_exposure=expo_s,
                                  extra=extra)
    imaging.add_history(header, f"xmm-enhance make_image: flare GTI from "
                                f"{Path(files.fbktsr).name} RATE<={curve.threshold:g} "
                                f"(mingtisize {gti.MIN_GTI_S:g} s), intersected with the "
                                "event list's CCD GTIs")
    if expo_s <= 0:
        imaging.add_history(header, f"all good time kept: {exposure:.1f} s")
    elif short:
        imaging.add_history(header, f"requested {expo_s:.1f} s (EXPREQ) but only "
                                    f"{good_time:.1f} s of good time: all of it kept")
    else:
        imaging.add_history(header, f"sub-GTI of {expo_time_ks:g} ks (longest interval "
                                    f"first); kept {exposure:.1f} s of {good_time:.1f} s "
                                    "good time")
    hdul = imaging.make_image_hdul(image, header, kept, gti_extra={
        "METHOD": ("pps", "Method used to derive the rate threshold"),
        "RLIM": (curve.threshold, "The PPS derived threshold")})
    made = [d for d in (out_path.parent, *out_path.parent.parents) if not d.exists()]
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_hdul(hdul, out_path, overwrite=overwrite)
    except OSError as err:
        for d in made:  # the folders this write made, deepest first: a failed run leaves none
            try:
                d.rmdir()
            except OSError:
                break
        raise OutputError(f"{out_path}: cannot write ({_one_line(err)}); free disk space or "
                          "fix the folder's permissions, or choose another --save_dir") \
            from err
    t0 = mark("write", t0)
    png = None
    if gti_plot:
        png = gti_plot_path(out_path)
        try:
            gti.plot_gti(curve, kept, png, flare_gti=good,
                         title=f"{obsid} pn {files.expid}: kept {exposure / 1e3:.2f} ks of "
                               f"{good_time / 1e3:.2f} ks good time")
        except OutputError as err:  # the image is written: say so, and how to get the plot
            raise OutputError(f"{err} (the image {out_path.name} is written: rerun with "
                              "--overwrite --gti-plot once fixed)") from None
        t0 = mark("gti_plot", t0)
    stages.append(("total", t_begin, time.perf_counter()))
    counts = int(image.sum(dtype=np.int64))
    if counts == 0:
        warnings.warn(f"{out_path.name}: no events selected (PI {low_pi}-{high_pi} eV, FLAG==0, "
                      f"PATTERN<=4, {exposure:.1f} s kept): the image is empty; check "
                      "--low_pi/--high_pi (eV; the models take 500-2000)", UserWarning,
                      stacklevel=2)
    log.info("%s: %d counts, EXPOSURE %.1f s, WCS %s", out_path, counts, exposure,
             f"rms {fit.rms_arcsec:.2f}\"" if fit.method == "EVENTFIT" else
             "from the pointing (approximate)")
    return ImageResult(path=out_path, exposure=exposure, counts=counts, obsid=obsid,
                       backend=backend, gti=kept, good_time=good_time,
                       requested_exposure=expo_s, binsize=binsize, low_pi=low_pi,
                       high_pi=high_pi, shape=image.shape, n_rows=ev.n_rows,
                       wcs_method=fit.method, wcs_rms_arcsec=fit.rms_arcsec,
                       pps_dir=pps_folder, events_file=Path(files.events), gti_plot=png,
                       stages=stages)


def grid_shape(binsize) -> tuple:
    """(ny, nx) of the image for ``binsize`` (re-exported for callers)."""
    return detector.pn_grid(binsize).shape
