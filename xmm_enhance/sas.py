"""Optional XMM-SAS backend through XMM's ``pysas``: tabgtigen and evselect.

The native backend (numpy/astropy) is the default; this one runs the seed's SAS tasks for the
steps SAS has (flare GTI with ``tabgtigen``, event selection and DETX/DETY binning with
``evselect``) so that the two can be compared. Everything SAS does not do (the event list's own
GTIs, the ``--expo_time`` sub-GTI, the sky WCS, the header) is shared with the native path, so
the two backends write the same file.

``pysas`` is imported lazily; :func:`available` says whether it imports and ``SAS_DIR`` is set.
Asking for this backend without SAS raises :class:`SASNotAvailable` (exit code 1).
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np

from .errors import XmmEnhanceError

__all__ = ["SASNotAvailable", "SASError", "available", "require", "tabgtigen", "evselect_image",
           "image_with_sas"]

log = logging.getLogger(__name__)

#: Held while an observation's SAS tasks run: ``SAS_CCF`` and the current folder, which they
#: need, are process-wide, so threads of one process take turns.
_SAS_LOCK = threading.Lock()


class SASNotAvailable(XmmEnhanceError):
    """``--backend sas`` was asked for but XMM-SAS / pysas is not installed or not set up."""


class SASError(XmmEnhanceError):
    """A SAS task failed."""


def _wrapper():
    """The pysas task runner class (``pysas.wrapper.Wrapper``), or raise ImportError."""
    try:
        from pysas.wrapper import Wrapper  # SAS 19-21
        return Wrapper
    except ImportError:
        from pysas.sastask import MyTask  # SAS >= 22 (raises ImportError when absent)
        return MyTask


def available() -> bool:
    """True when ``pysas`` imports and ``SAS_DIR`` is set."""
    if not os.environ.get("SAS_DIR"):
        return False
    try:
        _wrapper()
    except Exception:  # noqa: BLE001 - any failure to import pysas means "not available"
        return False
    return True


def require():
    """The pysas runner, or :class:`SASNotAvailable` with what to do."""
    if not os.environ.get("SAS_DIR"):
        raise SASNotAvailable("--backend sas: XMM-SAS is not set up (SAS_DIR is unset); "
                              "initialise SAS (source setsas.sh) or use --backend native")
    try:
        return _wrapper()
    except Exception as err:  # noqa: BLE001
        raise SASNotAvailable(f"--backend sas: cannot import pysas ({err}); initialise "
                              "XMM-SAS or use --backend native") from err


def _run(task: str, args: list[str], workdir: Path) -> None:
    runner = require()
    log.debug("SAS %s %s", task, " ".join(args))
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        r = runner(task, args)
        r.run()
    except Exception as err:  # noqa: BLE001 - pysas raises plain Exceptions
        raise SASError(f"SAS task {task} failed ({str(err).splitlines()[0] if str(err) else err}"
                       "); rerun with -v (debug logging) or use --backend native") from err
    finally:
        os.chdir(cwd)


def tabgtigen(fbktsr: Path, threshold: float, gti_out: Path, *, mingtisize: float = 50.0,
              workdir: Path | None = None) -> np.ndarray:
    """``tabgtigen table=<FBKTSR> expression="RATE<=<thr>" mingtisize=50``; returns its GTIs."""
    from astropy.io import fits

    from . import gti as _gti

    workdir = Path(workdir or gti_out.parent)
    _run("tabgtigen", [f"table={fbktsr}:RATE", f'expression="RATE<={threshold!r}"',
                       f"gtiset={gti_out}", f"mingtisize={mingtisize}"], workdir)
    with fits.open(gti_out) as h:
        t = h["STDGTI"].data
        return _gti.as_gti(np.column_stack([t["START"], t["STOP"]]))


def write_gti_file(gti, path: Path) -> Path:
    """A GTI FITS file (``STDGTI`` extension) that ``evselect``'s ``gti()`` filter accepts."""
    from astropy.io import fits

    from .imaging import gti_hdu

    fits.HDUList([fits.PrimaryHDU(), gti_hdu(gti)]).writeto(path, overwrite=True)
    return path


def evselect_image(events: Path, expression: str, binsize: float, image_out: Path, *,
                   workdir: Path | None = None) -> np.ndarray:
    """``evselect`` DETX/DETY image with the seed's parameters; returns the int32 array."""
    from astropy.io import fits

    workdir = Path(workdir or image_out.parent)
    _run("evselect", [f"table={events}:EVENTS", "xcolumn=DETX", "ycolumn=DETY",
                      "imagebinning=binSize", f"ximagebinsize={binsize:g}",
                      f"yimagebinsize={binsize:g}", "squarepixels=yes", "withimageset=yes",
                      f'expression="{expression}"', f"imageset={image_out}"], workdir)
    with fits.open(image_out) as h:
        return np.asarray(h[0].data).astype(np.int32)


def image_with_sas(files, curve_threshold: float, own_gti, *, low_pi: int, high_pi: int,
                   binsize: float, expo_time_s: float):
    """The SAS route: tabgtigen, our GTI algebra, evselect. Returns (image, kept_gti, good).

    ``files`` is the archive's ``PPSFiles``. Intermediate files live in a temporary folder that
    is removed afterwards. ``SAS_CCF`` (when not set by the user) and the current folder are
    set for the SAS tasks and put back. Both are process-wide, so threads of one process run
    their SAS observations one at a time (``_SAS_LOCK``); while one runs, the process's
    current folder is the temporary one, so other threads should use absolute paths.
    """
    require()
    with _SAS_LOCK:
        return _image_with_sas(files, curve_threshold, own_gti, low_pi=low_pi,
                               high_pi=high_pi, binsize=binsize, expo_time_s=expo_time_s)


def _image_with_sas(files, curve_threshold, own_gti, *, low_pi, high_pi, binsize, expo_time_s):
    from . import gti as _gti
    from .events import selection_expression

    # absolute: the tasks run in the temporary folder
    events, fbktsr = Path(files.events).absolute(), Path(files.fbktsr).absolute()
    tmp = Path(tempfile.mkdtemp(prefix="xmm_enhance_sas_")).absolute()
    ccf_before = os.environ.get("SAS_CCF")
    try:
        if files.calind is not None and ccf_before is None:
            # this observation's calibration index, for its SAS tasks only: the next
            # observation of a batch worker gets its own
            os.environ["SAS_CCF"] = str(Path(files.calind).absolute())
        flare_gti = tabgtigen(fbktsr, curve_threshold, tmp / "pn_pps.gti", workdir=tmp)
        good = _gti.intersect(flare_gti, own_gti)
        # less good time than requested: all of it (the caller warns and names the file)
        kept = good if expo_time_s <= 0 or _gti.total(good) < expo_time_s \
            else _gti.sub_gti(good, expo_time_s)
        gfile = write_gti_file(kept, tmp / "pn_kept.gti")
        expr = selection_expression(low_pi, high_pi, gti=str(gfile))
        image = evselect_image(events, expr, binsize, tmp / "image.fits", workdir=tmp)
        return image, kept, good
    finally:
        if ccf_before is None:
            os.environ.pop("SAS_CCF", None)
        shutil.rmtree(tmp, ignore_errors=True)
