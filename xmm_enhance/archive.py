"""OBS_ID validation, PPS download from the XMM-Newton Science Archive, PPS folder discovery.

Three jobs, each usable on its own:

* :func:`validate_obsid` checks that an OBS_ID is ten digits.
* :func:`download_pps` fetches only the EPIC-pn products the image needs (pn imaging event
  lists ``PIEVLI``, flaring-background time series ``FBKTSR``, attitude ``ATTTSR``, calibration
  index ``CALIND``) through ``astroquery.esa.xmm_newton`` into ``<save_dir>/<OBS_ID>/pps``.
  Transient failures are retried with exponential back-off, a truncated or corrupt download is
  removed and fetched again, archives are extracted with tarfile's ``data`` filter and flattened,
  and nothing reaches the ``pps`` folder until every required product arrived intact.
* :func:`find_pps_files` picks, in a PPS folder, the pn imaging exposure to image (one with an
  ``FBKTSR``, in a full-frame mode, with the largest ``ONTIME``) and its ``FBKTSR``.

PPS file names follow the XMM Data Files Handbook (reference sheet §1), e.g.
``P0123456789PNS003PIEVLI0000.FTZ``: ``P`` + OBS_ID + instrument + exposure flag and number +
product type + data subset + source number + extension. ``.FTZ`` is gzipped FITS; uncompressed
``.FIT``/``.FITS`` (and ``.gz`` variants, lower case) are accepted as well.

The archive URL is astroquery's configuration item
``astroquery.esa.xmm_newton.conf.DATA_ACTION_AIO``, read at each call, so a mirror (or a test
server) can be set with ``conf.set_temp``.
"""
from __future__ import annotations

import configparser
import contextlib
import gzip
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from astropy.io import fits

from .errors import READ_FIX, REPLACE_FIX, ArchiveError, PPSError, UsageError
from . import procstate
from .fsmode import owner_gone, owner_tag
from .imageargs import check_archive_url  # noqa: F401 - public here too
from .obsid import obsid_problem

__all__ = [
    "PPSFiles", "SUPPORTED_SUBMODES", "validate_obsid", "pps_filename", "parse_pps_filename",
    "find_pps_files", "download_pps", "pps_folder_is_complete", "aio_url", "check_archive_url",
    "using_archive_url", "gzip_damage", "unreadable_error", "archive_answers_again",
]

log = logging.getLogger(__name__)

#: pn imaging modes the models were trained on (reference sheet §1).
SUPPORTED_SUBMODES = ("PrimeFullWindow", "PrimeFullWindowExtended")

#: Marker written into a PPS folder once a download completed; lists the files and their sizes.
MARKER_NAME = ".xmm_enhance_download.json"

#: (connect, read) timeouts in seconds for every archive request; astroquery sets none itself.
HTTP_TIMEOUT_S = (30.0, 300.0)
#: A download that receives fewer than ``STALL_MIN_BYTES`` in ``STALL_WINDOW_S`` seconds is
#: abandoned as stalled (and retried): the read time-out alone never ends a server that
#: trickles a byte every few minutes. 64 KiB in 10 min is ~110 B/s, far below any usable link.
#: A reply whose status line and headers have not all arrived ``STALL_WINDOW_S`` seconds after
#: the request was sent is abandoned the same way.
STALL_WINDOW_S = 600.0
STALL_MIN_BYTES = 64 * 1024

_OBSID_RE = re.compile(r"[0-9]{10}")
_PPS_RE = re.compile(
    r"^P(?P<obsid>\d{10})(?P<inst>[A-Z0-9]{2})(?P<expflag>[SUX])(?P<expno>\d{3})"
    r"(?P<product>[A-Z0-9]{6})(?P<subset>[0-9A-Z])(?P<source>[0-9A-F]{3})"
    r"\.(?P<ext>FTZ|FIT|FITS|FTZ\.GZ|FIT\.GZ|FITS\.GZ)$",
    re.IGNORECASE,
)
_SAFE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")
_CRED_RE = re.compile(r"(AIOUSER|AIOPWD)=[^&\s'\"]*", re.IGNORECASE)

# The products download_pps asks for: (product type, extra query parameters, required).
_PRODUCTS = (
    ("PIEVLI", {"instname": "PN"}, True),
    ("FBKTSR", {"instname": "PN"}, True),
    ("ATTTSR", {}, False),
    ("CALIND", {}, False),
)


# --------------------------------------------------------------------------------------------
# OBS_ID and file names
# --------------------------------------------------------------------------------------------
def validate_obsid(obsid: str) -> str:
    """Return ``obsid`` stripped of surrounding blanks if it is a ten-digit XMM OBS_ID.

    Parameters
    ----------
    obsid : str
        The observation identifier, e.g. ``"0123456789"``. Integers are refused because they
        lose the leading zeros most OBS_IDs have.

    Returns
    -------
    str
        The ten-digit OBS_ID.

    Raises
    ------
    UsageError
        If ``obsid`` is not a string of exactly ten digits (exit code 2).

    Examples
    --------
    >>> validate_obsid(" 0123456789 ")
    '0123456789'
    """
    if not isinstance(obsid, str):
        raise UsageError(f"OBS_ID {obsid!r}: must be given as a string of 10 digits "
                         "(e.g. '0123456789'; quote it to keep leading zeros)")
    text = obsid.strip()
    if not _OBSID_RE.fullmatch(text):
        hint = obsid_problem(text) if re.fullmatch(r"[0-9]{9}", text) else ""
        raise UsageError(f"OBS_ID {obsid!r}: " + (hint or "must be exactly 10 digits, e.g. "
                                                  "0123456789"))
    return text


def pps_filename(obsid: str, product: str, *, inst: str = "PN", expid: str = "S003",
                 subset: str = "0", source: str = "000", ext: str = "FTZ") -> str:
    """Build a PPS file name such as ``P0123456789PNS003PIEVLI0000.FTZ``.

    Parameters
    ----------
    obsid : str
        Ten-digit OBS_ID.
    product : str
        Six-character product type (``PIEVLI``, ``FBKTSR``, ``ATTTSR``, ``CALIND``...).
    inst : str, optional
        Two-character instrument code; ``OB`` for observation-level products.
    expid : str, optional
        Exposure flag and number, e.g. ``'S003'``, ``'U002'``, ``'X000'``.
    subset, source : str, optional
        Data-subset digit and three-hex-digit source number.
    ext : str, optional
        File extension without the dot.

    Returns
    -------
    str
    """
    name = f"P{validate_obsid(obsid)}{inst}{expid}{product}{subset}{source}.{ext}"
    if not _PPS_RE.match(name):
        raise UsageError(f"{name}: not a valid PPS file name; check inst, expid and product")
    return name


def parse_pps_filename(name: str) -> dict | None:
    """Split a PPS file name into its fields, or return None if it is not one.

    Parameters
    ----------
    name : str
        A file name (not a path), any case.

    Returns
    -------
    dict or None
        Keys ``obsid``, ``inst``, ``expid`` (e.g. ``'S003'``), ``product``, ``subset``,
        ``source``, ``ext``; letters upper-cased.
    """
    m = _PPS_RE.match(name)
    if m is None:
        return None
    d = {k: v.upper() for k, v in m.groupdict().items()}
    d["expid"] = d.pop("expflag") + d.pop("expno")
    return d


# --------------------------------------------------------------------------------------------
# PPS folder discovery
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PPSFiles:
    """The PPS products of one observation that the image needs.

    Attributes
    ----------
    obsid : str
        Ten-digit OBS_ID.
    folder : Path
        The folder holding the files.
    events : Path
        pn imaging event list (``PIEVLI``) of the chosen exposure.
    fbktsr : Path or None
        Flaring-background time series of the same exposure (never None from
        :func:`find_pps_files`, which raises instead).
    attitude : Path or None
        Attitude time series (``ATTTSR``), if present.
    calind : Path or None
        Calibration index (``CALIND``), if present.
    expid : str
        Exposure flag and number, e.g. ``'S003'``.
    submode : str
        ``SUBMODE`` of the event list (``''`` if the keyword is missing).
    ontime : float
        ``ONTIME`` of the event list in s (see :func:`find_pps_files` for the fallbacks).
    others : tuple of str
        The folder's other pn imaging exposures, best first (what ``exclude`` of
        :func:`find_pps_files` can move on to).
    """

    obsid: str
    folder: Path
    events: Path
    fbktsr: Path | None
    attitude: Path | None
    calind: Path | None
    expid: str
    submode: str
    ontime: float
    others: tuple = ()


def gzip_damage(path: Path) -> str | None:
    """What is wrong with a gzip file that FITS readers refuse: ``"compressed twice"``,
    ``"truncated"``, or None (not gzip, or a whole stream). Only asked on an error path: it
    reads the whole stream."""
    try:
        with open(path, "rb") as fh:
            if fh.read(2) != b"\x1f\x8b":
                return None
        with gzip.open(path, "rb") as fh:
            if fh.read(2) == b"\x1f\x8b":
                return "compressed twice"
            while fh.read(1 << 22):
                pass
    except EOFError:
        return "truncated"
    except (OSError, zlib.error):
        return None
    return None


def unreadable_error(path: Path, exc: BaseException) -> PPSError | None:
    """The PPSError of a PPS file that failed to read for a reason other than damage (no
    permission, gzipped twice), with its own fix; None otherwise. The one place for these
    messages (``events`` and ``gti`` ask it too)."""
    return _unreadable(path, exc)[0]


def _unreadable(path: Path, exc: BaseException) -> tuple[PPSError | None, str | None]:
    """(:func:`unreadable_error`, :func:`gzip_damage` when it was asked): the whole stream is
    read at most once."""
    if isinstance(exc, PermissionError):
        return PPSError(f"{path}: cannot read it (permission denied); {READ_FIX}"), None
    damage = gzip_damage(path)
    if damage == "compressed twice":
        return PPSError(f"{path}: gzip-compressed twice (a FITS file inside a gzip inside a "
                        "gzip); decompress it once (gunzip) and rerun"), damage
    return None, damage


def _corrupt(path: Path, exc: BaseException) -> PPSError:
    other, damage = _unreadable(path, exc)
    if other is not None:
        return other
    reason = ("the gzip stream ends early" if damage == "truncated" else
              str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    return PPSError(f"{path}: corrupt or truncated FITS file ({reason}); {REPLACE_FIX}")


_READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, IndexError, TypeError)


def _gti_time(hdul) -> float | None:
    """Largest total of STOP-START over the GTI tables (``STDGTInn``, ``GTI``) of ``hdul``."""
    best = None
    for hdu in hdul[1:]:
        name = hdu.name.upper()
        if not (name.startswith("STDGTI") or name == "GTI"):
            continue
        data = hdu.data
        if data is None or "START" not in data.names or "STOP" not in data.names:
            continue
        total = float((data["STOP"] - data["START"]).sum())
        best = total if best is None else max(best, total)
    return best


def _event_list_info(path: Path) -> tuple[float, str]:
    """(ONTIME in s, SUBMODE) of a pn event list; PPSError if it cannot be read."""
    from .events import read_header

    # Fast path: stop decompressing at the EVENTS header (a full .FTZ read costs ~0.4 s per
    # million events); only lists without ONTIME keywords need the GTI tables below.
    try:
        primary, hdr = read_header(path, "EVENTS")
    except PPSError:
        primary = hdr = None
    if hdr is not None:
        submode = str(hdr.get("SUBMODE", primary.get("SUBMODE", ""))).strip()
        ontime = hdr.get("ONTIME")
        if ontime is None:
            per_ccd = [float(v) for k, v in hdr.items()
                       if re.fullmatch(r"ONTIME\d\d", k) and v is not None]
            ontime = max(per_ccd) if per_ccd else None
        if ontime is not None:
            return float(ontime), submode
    try:
        with fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
            try:
                hdr = hdul["EVENTS"].header
            except KeyError:
                raise PPSError(f"{path}: has no EVENTS extension, so it is not a pn event list; "
                               "remove it or download the PPS again") from None
            submode = str(hdr.get("SUBMODE", hdul[0].header.get("SUBMODE", ""))).strip()
            ontime = hdr.get("ONTIME")
            if ontime is None:
                per_ccd = [float(v) for k, v in hdr.items()
                           if re.fullmatch(r"ONTIME\d\d", k) and v is not None]
                if per_ccd:
                    ontime = max(per_ccd)
                    log.debug("%s: no ONTIME keyword; using max(ONTIMEnn) = %.1f s",
                              path.name, ontime)
            if ontime is None:
                ontime = _gti_time(hdul)
                if ontime is not None:
                    log.debug("%s: no ONTIME keyword; using the GTI tables: %.1f s",
                              path.name, ontime)
            if ontime is None:
                tstart, tstop = hdr.get("TSTART"), hdr.get("TSTOP")
                if tstart is None or tstop is None:
                    raise PPSError(f"{path}: no ONTIME, GTI tables or TSTART/TSTOP to measure its "
                                   "exposure; download the PPS again")
                ontime = float(tstop) - float(tstart)
                log.warning("%s: no ONTIME keyword or GTI table; using TSTOP-TSTART = %.1f s",
                            path.name, ontime)
            return float(ontime), submode
    except PPSError:
        raise
    except _READ_ERRORS as exc:
        raise _corrupt(path, exc) from None


def _check_readable(path: Path, extname: str | None = None) -> None:
    """Open ``path`` (and its ``extname`` header) or raise a PPSError saying it is corrupt."""
    try:
        with fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
            if extname is not None:
                try:
                    hdul[extname].header
                except KeyError:
                    if gzip_damage(path) == "truncated":   # cut before that extension
                        raise PPSError(f"{path}: corrupt or truncated FITS file (the gzip "
                                       f"stream ends early); {REPLACE_FIX}") from None
                    raise PPSError(f"{path}: has no {extname} extension; {REPLACE_FIX}") \
                        from None
            else:
                hdul[0].header
    except PPSError:
        raise
    except _READ_ERRORS as exc:
        raise _corrupt(path, exc) from None


def _scan(folder: Path) -> list[tuple[Path, dict]]:
    try:
        names = list(folder.iterdir())
    except PermissionError:
        raise PPSError(f"{folder}: cannot read the PPS folder (permission denied); "
                       f"{READ_FIX}") from None
    except OSError as exc:
        raise PPSError(f"{folder}: cannot read the PPS folder ({exc.strerror or exc}); pass "
                       "another --pps_dir") from None
    return sorted(((p, info) for p in names
                   if p.is_file() and (info := parse_pps_filename(p.name)) is not None),
                  key=lambda t: t[0].name)


#: Sub-folders searched when the given folder holds no PPS file: as ``download_pps`` leaves
#: them (``pps``), and as the HEASARC mirror and the XSA tarballs lay them out (``PPS``).
_PPS_SUBFOLDERS = ("pps", "PPS")


def _pps_folder(folder: Path, obsid: str | None) -> tuple[Path, list]:
    """The folder holding the PPS files: ``folder`` itself, else its ``pps``/``PPS``, else (with
    ``obsid``) ``folder/<obsid>`` or its ``pps``/``PPS`` (a parent of observations)."""
    tries = [folder] + [folder / sub for sub in _PPS_SUBFOLDERS]
    if obsid is not None:
        tries += [folder / obsid] + [folder / obsid / sub for sub in _PPS_SUBFOLDERS]
    for f in tries:
        if f is folder or f.is_dir():
            files = _scan(f)
            if files:
                return f, files
    return folder, []


def find_pps_files(folder, obsid: str | None = None, *, exclude=()) -> PPSFiles:
    """Find the pn imaging exposure and its companions in a PPS folder.

    Of the pn imaging event lists (``PIEVLI``; ``S`` and ``U`` exposures alike) the one chosen
    has, in this order of preference, a flaring-background time series (``FBKTSR``), a
    full-frame ``SUBMODE`` (the models' mode) and the largest ``ONTIME``. ``ONTIME`` is read
    from the ``EVENTS`` header; if it is missing, the largest ``ONTIMEnn``, then the largest
    per-CCD sum of ``STDGTInn`` intervals, then ``TSTOP - TSTART`` is used. If ``folder``
    holds no PPS file, its ``pps`` or ``PPS`` sub-folder is searched, and with ``obsid`` also
    ``folder/<obsid>`` (and its ``pps``/``PPS``).

    Parameters
    ----------
    folder : str or Path
        Folder with PPS files (flat, as :func:`download_pps` leaves them).
    obsid : str, optional
        Only consider files of this OBS_ID; by default the single OBS_ID found in the folder.
    exclude : iterable of str
        Exposures (``'S003'``...) not to choose: ``make_image`` moves on to the next one when
        an exposure has no good time.

    Returns
    -------
    PPSFiles

    Raises
    ------
    PPSError
        The folder is missing or holds no PPS file; it has no pn imaging event list (for the
        OBS_ID); the chosen exposure has no ``FBKTSR``; a file cannot be opened (corrupt or
        truncated); it mixes several OBS_IDs and ``obsid`` was not given.
    UsageError
        ``obsid`` is malformed.

    Notes
    -----
    A ``SUBMODE`` other than ``PrimeFullWindow``/``PrimeFullWindowExtended`` is logged as a
    warning: the models were trained on full-frame images only.
    """
    return _find(folder, obsid, report=True, exclude=exclude)


def _find(folder, obsid, *, report, exclude=()):
    """:func:`find_pps_files`; with ``report=False`` it logs no choice and no mode warning."""
    folder = Path(folder)
    if obsid is not None:
        obsid = validate_obsid(obsid)
    if not folder.is_dir():
        raise PPSError(f"{folder}: PPS folder does not exist; pass the folder holding the "
                       "P<OBSID>...FTZ files, or leave --pps_dir out to download them")
    folder, files = _pps_folder(folder, obsid)
    if not files:
        raise PPSError(f"{folder}: no PPS files (P<OBSID>PN...PIEVLI0000.FTZ etc.) in this folder; "
                       "pass the right --pps_dir, or leave it out to download the PPS")
    if obsid is None:
        found = sorted({i["obsid"] for _, i in files if i["product"] == "PIEVLI"}
                       or {i["obsid"] for _, i in files})
        if len(found) > 1:
            raise PPSError(f"{folder}: holds PPS files of several OBS_IDs ({', '.join(found)}); "
                           "pass the OBS_ID to use")
        obsid = found[0]
    mine = [(p, i) for p, i in files if i["obsid"] == obsid]
    events = [(p, i) for p, i in mine if i["inst"] == "PN" and i["product"] == "PIEVLI"]
    if not events:
        others = sorted({i["obsid"] for _, i in files} - {obsid})
        timing = [p.name for p, i in mine if i["inst"] == "PN" and i["product"] == "TIEVLI"]
        hint = ("only pn timing-mode event lists (TIEVLI) are present; this tool needs imaging "
                "mode" if timing else
                f"files of OBS_ID {', '.join(others)} are present" if others else
                "download the PPS again (leave --pps_dir out) or check the folder")
        raise PPSError(f"{folder}: no EPIC-pn imaging event list (P{obsid}PN...PIEVLI0000.FTZ) "
                       f"for OBS_ID {obsid}; {hint}")

    if isinstance(exclude, str):   # one exposure id, not its letters
        exclude = (exclude,)
    exclude = {str(e).upper() for e in exclude}
    fbk_of = {}
    for p, i in mine:
        if i["inst"] == "PN" and i["product"] == "FBKTSR":
            fbk_of.setdefault(i["expid"], []).append(p)
    candidates = []
    for path, info in events:
        ontime, submode = _event_list_info(path)
        log.debug("%s: exposure %s, ONTIME %.1f s, SUBMODE %r", path.name, info["expid"],
                  ontime, submode)
        candidates.append((info["expid"] in fbk_of, submode in SUPPORTED_SUBMODES, ontime,
                           path, info, submode))
    # best first; sorted() is stable, so equal keys keep the file-name order
    candidates.sort(key=lambda c: c[:3], reverse=True)
    usable = [c for c in candidates if c[4]["expid"] not in exclude]
    if not usable:
        raise PPSError(f"{folder}: no other pn imaging exposure for OBS_ID {obsid} (tried "
                       f"{', '.join(sorted(exclude))})")
    has_fbk, _, ontime, events_path, info, submode = usable[0]
    expid = info["expid"]
    others = tuple(c[4]["expid"] for c in usable[1:])

    if not has_fbk:
        raise PPSError(f"{folder}: no flaring-background time series "
                       f"P{obsid}PN{expid}FBKTSR0000.FTZ for pn exposure {expid} (nor for any "
                       "other pn imaging exposure); download the PPS again or add that file")
    longer = [c for c in usable[1:] if c[2] > ontime and not c[0]]
    if report and longer:
        c = max(longer, key=lambda c: c[2])
        log.warning("warning: OBS_ID %s: pn exposure %s (ONTIME %.0f s) has no flaring-"
                    "background time series P%sPN%sFBKTSR0000.FTZ; using exposure %s (ONTIME "
                    "%.0f s) instead; add that file to image %s", obsid, c[4]["expid"], c[2],
                    obsid, c[4]["expid"], expid, ontime, c[4]["expid"])
    fbk = fbk_of[expid]
    if len(fbk) > 1:
        log.warning("%s: several FBKTSR files for exposure %s; using %s", folder, expid,
                    fbk[0].name)
    fbktsr = fbk[0]
    _check_readable(fbktsr, "RATE")

    def first(product):
        """The first file of an optional product (not needed by the native image), or None
        when there is none or it cannot be read (with a warning)."""
        hits = [p for p, i in mine if i["product"] == product]
        if not hits:
            return None
        try:
            _check_readable(hits[0])
        except PPSError as exc:
            log.warning("warning: %s; it is not needed for the image and is ignored", exc)
            return None
        return hits[0]

    attitude, calind = first("ATTTSR"), first("CALIND")
    found = PPSFiles(obsid=obsid, folder=folder, events=events_path, fbktsr=fbktsr,
                     attitude=attitude, calind=calind, expid=expid, submode=submode,
                     ontime=ontime, others=others)
    if not report:
        return found
    if attitude is None:
        log.info("%s: no attitude file (ATTTSR) for OBS_ID %s", folder, obsid)
    if calind is None:
        log.info("%s: no calibration index (CALIND) for OBS_ID %s", folder, obsid)
    if submode not in SUPPORTED_SUBMODES:
        log.warning("OBS_ID %s exposure %s: pn SUBMODE %r is not one the models were trained on "
                    "(%s); the image may be partial and the enhancement unreliable",
                    obsid, expid, submode or "missing", " or ".join(SUPPORTED_SUBMODES))
    log.info("OBS_ID %s: using pn exposure %s (%s, ONTIME %.0f s) from %s", obsid, expid,
             submode or "SUBMODE missing", ontime, folder)
    return found


# --------------------------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------------------------
class _Transient(Exception):
    """A failure worth retrying (HTTP 5xx, connection trouble, a truncated download).
    ``unanswered``: the archive gave no answer (refused or timed-out connection, 5xx, 408,
    429, or a download that stalled: an archive that trickles bytes is as good as down for a
    batch), as opposed to an answer that arrived damaged."""

    def __init__(self, message: str, *, unanswered: bool = False):
        super().__init__(message)
        self.unanswered = unanswered


class _Permanent(Exception):
    """A failure that retrying cannot fix (404, bad credentials, unsafe tar)."""

    def __init__(self, message: str, *, missing: bool = False):
        super().__init__(message)
        self.missing = missing


def _scrub(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Remove credentials (URL parameters and the literal values) from ``text``."""
    text = _CRED_RE.sub(lambda m: f"{m.group(1)}=***", text)
    for s in secrets:
        if s and len(s) >= 3:
            text = text.replace(s, "***")
    return text


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextlib.contextmanager
def using_archive_url(url: str | None):
    """Use the data-action-aio URL ``url`` (a mirror) in the block, ``?`` appended when
    missing (:func:`aio_url`: astroquery joins ``obsno=...`` to it as it is). astroquery's
    configuration belongs to the process: threads that download at once must use one URL
    (a batch passes one to all its observations)."""
    if not url:
        yield
        return
    from astroquery.esa.xmm_newton import conf

    with conf.set_temp("DATA_ACTION_AIO", aio_url(url)):
        yield


def aio_url(url: str) -> str:
    """``url`` as astroquery needs it: it appends ``obsno=...`` to the data-action-aio URL as
    it is, so the URL must end in ``?`` (or ``&`` after a query of its own); added when
    missing."""
    url = url.strip()
    if url.endswith(("?", "&")):
        return url
    return url + ("&" if "?" in url else "?")


def _archive_url() -> tuple[str, bool]:
    """(the data-action-aio URL in use, whether it is another than astroquery's default)."""
    from astroquery.esa import xmm_newton

    url = aio_url(xmm_newton.conf.DATA_ACTION_AIO)
    default = aio_url(type(xmm_newton.conf).DATA_ACTION_AIO.defaultvalue)
    return url, url != default


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost exception under ``exc``: requests wraps urllib3's ``MaxRetryError``,
    whose ``reason`` (``NewConnectionError``...) was raised from the socket's error."""
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = (getattr(exc, "reason", None), exc.args[0] if exc.args else None,
                 exc.__cause__, exc.__context__)
        nxt = next((e for e in inner if isinstance(e, BaseException)), None)
        if nxt is None:
            break
        exc = nxt
    return exc


def _connection_failure(exc: BaseException) -> str:
    """A connection error or time-out as one short line naming the host and the root cause
    (:func:`_root_cause`), e.g. ``cannot reach 127.0.0.1:8080 (ConnectionError: Connection
    refused)``; requests' own text is cut before that cause by :func:`_one_line`."""
    from urllib.parse import urlsplit

    root = _root_cause(exc)
    cause = root.strerror if isinstance(root, OSError) and root.strerror else str(root)
    cause = re.sub(r"^<[^>]*>:\s*|^\w+\(host=[^)]*\):\s*", "", cause.strip())
    cause = _one_line(cause or type(root).__name__, 120)
    url = getattr(getattr(exc, "request", None), "url", None)
    host = urlsplit(url).netloc.rsplit("@", 1)[-1] if url else ""
    where = f"cannot reach {host} " if host else ""
    return f"{where}({type(exc).__name__}: {cause})"


def _read_credentials(credentials_file) -> tuple[str, str]:
    """(username, password) from an astroquery-style ini file, checked before any request."""
    path = Path(credentials_file)
    if not path.is_file():
        raise UsageError(f"{path}: credentials file not found; pass an ini file with a "
                         "[xmm_newton] section holding username and password")
    # read as astroquery reads it (ConfigParser's default '%' interpolation): a lone '%' in
    # a password would otherwise fail inside astroquery, with part of the password in the
    # message
    parser = configparser.ConfigParser()
    try:
        parser.read(path)
        user, password = (parser.get("xmm_newton", "username"),
                          parser.get("xmm_newton", "password"))
    except configparser.InterpolationError:
        raise UsageError(f"{path}: a '%' in the credentials file must be written '%%' (the "
                         "file is read with ConfigParser's interpolation, as astroquery reads "
                         "it)") from None
    except (configparser.Error, UnicodeDecodeError, OSError):
        raise UsageError(f"{path}: credentials file must have a [xmm_newton] section with "
                         "'username' and 'password' entries") from None
    if any(c in password for c in "&+#"):
        log.warning("warning: %s: the password holds '&', '+' or '#', which astroquery sends "
                    "unencoded in the URL; the archive may refuse it as a wrong password",
                    path)
    return user, password


def _make_client(target_dir: Path):
    """An astroquery XMMNewton client that writes downloads into ``target_dir``.

    astroquery's ``download_data`` keeps only the base name of ``filename`` and writes into the
    current directory; this subclass sends the file to ``target_dir`` instead (so no ``chdir``
    is needed) and remembers the file name the server announced.
    """
    from astroquery.esa import xmm_newton
    from requests.adapters import HTTPAdapter

    class _TimeoutAdapter(HTTPAdapter):
        def __init__(self, client):
            self.client = client   # whose ``stalled`` a stalled reply reports to
            super().__init__()

        def init_poolmanager(self, *args, **kwargs):
            super().init_poolmanager(*args, **kwargs)
            # connections whose reply headers must arrive within STALL_WINDOW_S
            self.poolmanager.pool_classes_by_scheme = _header_deadline_pools(self.client)

        def proxy_manager_for(self, proxy, **proxy_kwargs):
            # the same behind an HTTP(S) proxy (a SOCKS proxy has pool classes of its own)
            manager = super().proxy_manager_for(proxy, **proxy_kwargs)
            if not str(proxy).lower().startswith("socks"):
                manager.pool_classes_by_scheme = _header_deadline_pools(self.client)
            return manager

        def send(self, request, **kwargs):
            if kwargs.get("timeout") is None:
                kwargs["timeout"] = HTTP_TIMEOUT_S
            resp = super().send(request, **kwargs)
            # the body's socket file (urllib3 2 -> http.client), read through a progress
            # check; left as it is where that layout differs
            inner = getattr(getattr(resp, "raw", None), "_fp", None)
            if kwargs.get("stream") and inner is not None and hasattr(inner, "fp") \
                    and hasattr(inner.fp, "read1"):
                inner.fp = _ProgressReader(inner.fp, self.client)
            return resp

    class _Client(xmm_newton.XMMNewtonClass):
        def __init__(self):
            # A placeholder TAP handler: only the data URL is used, so no TAP service is set up.
            super().__init__(tap_handler=object())
            self.data_aio_url = aio_url(xmm_newton.conf.DATA_ACTION_AIO)
            self.written: Path | None = None
            self.server_filename: str | None = None
            self.stalled: str | None = None  # set by _ProgressReader when it gave up
            adapter = _TimeoutAdapter(self)
            self._session.mount("http://", adapter)
            self._session.mount("https://", adapter)

        def _request_link(self, link, cache):
            params = super()._request_link(link, cache)
            self.server_filename = params.get("filename")
            return params

        def _create_filename(self, filename, observation_id, suffixes):
            suffix = re.sub(r"[^A-Za-z0-9.]", "", "".join(suffixes))[-16:]
            self.written = target_dir / f"download{suffix}"
            return str(self.written)

    return _Client()


def _header_deadline_pools(client) -> dict:
    """urllib3 pool classes (by scheme) whose connections give up on a reply whose status line
    and headers are still incomplete ``STALL_WINDOW_S`` seconds after the request was sent.

    ``http.client`` reads them with the socket's read time-out only, so a server that trickles
    a byte every few minutes would hold the call for ever. A timer shuts the socket down at the
    deadline, which ends the blocked read; the connection then notes why on
    ``client.stalled`` and raises ``TimeoutError`` (requests: ``ReadTimeout``).
    """
    import socket

    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    def with_deadline(base):
        class _Conn(base):
            def getresponse(self, *args, **kwargs):
                lock, state = threading.Lock(), {"waiting": True, "late": False}
                window = STALL_WINDOW_S

                def give_up():
                    with lock:
                        if not state["waiting"]:
                            return
                        state["late"] = True
                    try:
                        self.sock.shutdown(socket.SHUT_RDWR)
                    except (AttributeError, OSError):  # already closed
                        pass

                timer = threading.Timer(window, give_up)
                timer.daemon = True
                timer.start()
                try:
                    resp = super().getresponse(*args, **kwargs)
                except Exception:
                    resp = None
                    if not state["late"]:
                        raise
                finally:
                    with lock:
                        state["waiting"] = False
                    timer.cancel()
                if state["late"]:  # whatever arrived before the shutdown is incomplete
                    if resp is not None:
                        resp.close()
                    client.stalled = (f"the download stalled: the reply's status line and "
                                      f"headers were incomplete after {window:g} s")
                    raise TimeoutError(client.stalled)
                return resp
        return _Conn

    class _Pool(HTTPConnectionPool):
        ConnectionCls = with_deadline(HTTPConnectionPool.ConnectionCls)

    class _SPool(HTTPSConnectionPool):
        ConnectionCls = with_deadline(HTTPSConnectionPool.ConnectionCls)

    return {"http": _Pool, "https": _SPool}


class _ProgressReader:
    """A response body's socket file that gives up on a stalled download: fewer than
    ``STALL_MIN_BYTES`` arrived over ``STALL_WINDOW_S`` (checked whenever bytes arrive, so a
    server that sends nothing at all is left to the read time-out). It then notes why on
    ``client.stalled`` and raises ``TimeoutError`` (urllib3: ``ReadTimeoutError``, requests:
    ``ConnectionError``). ``read(n)`` and ``readinto`` still return ``n`` bytes unless the
    stream ends, as ``http.client`` expects. The status line and headers, read before this
    wrapper exists, have their own deadline (:func:`_header_deadline_pools`). The time the
    consumer spends between reads counts as the server's."""

    def __init__(self, fp, client):
        self._fp = fp
        self._client = client
        self._since = time.monotonic()
        self._bytes = 0      # bytes since self._since

    def _got(self, n: int) -> None:
        if not n:  # the end of the stream: the body is complete, whatever its pace
            return
        now = time.monotonic()
        self._bytes += n
        if self._bytes >= STALL_MIN_BYTES:
            self._since, self._bytes = now, 0
        elif now - self._since >= STALL_WINDOW_S:
            self._client.stalled = (f"the download stalled: {self._bytes} bytes in the last "
                                    f"{now - self._since:.0f} s (less than "
                                    f"{STALL_MIN_BYTES // 1024} KiB in {STALL_WINDOW_S:.0f} s)")
            raise TimeoutError(self._client.stalled)

    def read1(self, n: int = -1) -> bytes:
        data = self._fp.read1(n if n is not None and n >= 0 else 65536)
        self._got(len(data))
        return data

    def read(self, n: int | None = None) -> bytes:
        parts, want = [], (-1 if n is None or n < 0 else n)
        while want != 0:
            data = self.read1(65536 if want < 0 else min(want, 65536))
            if not data:
                break
            parts.append(data)
            if want > 0:
                want -= len(data)
        return b"".join(parts)

    def readinto(self, b) -> int:
        data = self.read(len(b))  # full unless the stream ends, as read(n)
        b[:len(data)] = data
        return len(data)

    def readline(self, limit: int = -1) -> bytes:
        data = self._fp.readline(limit)
        self._got(len(data))
        return data

    def __getattr__(self, name):
        return getattr(self._fp, name)


def _quiet_astroquery():
    """Raise astroquery's logger to ERROR while any thread downloads (its records may show the
    request URL, and below WARNING it draws a progress bar); the last download to end puts
    back the level it found (:func:`procstate.quiet_logger`)."""
    from astroquery import log as aq_log

    return procstate.quiet_logger(aq_log.name, logging.ERROR)


def _classify(exc: BaseException) -> type[Exception]:
    import requests
    from astroquery.exceptions import LoginError

    if isinstance(exc, LoginError):
        return _Permanent
    if isinstance(exc, requests.HTTPError):
        code = exc.response.status_code if exc.response is not None else None
        return _Transient if code is None or code >= 500 or code in (408, 429) else _Permanent
    if isinstance(exc, (requests.ConnectionError, requests.Timeout,
                        requests.exceptions.ChunkedEncodingError,
                        requests.exceptions.ContentDecodingError, ConnectionError, TimeoutError)):
        return _Transient
    return _Permanent


def _fetch_once(obsid: str, product: str, query: dict, raw_dir: Path, secrets) -> tuple[Path, str]:
    """One download attempt; returns (local file, server file name)."""
    import requests
    from astroquery.exceptions import LoginError

    for old in raw_dir.iterdir():  # never let astroquery append to a previous partial file
        old.unlink()
    client = _make_client(raw_dir)
    kwargs = dict(level="PPS", name=product, extension="FTZ", **query)
    what = _what(obsid, product, query)
    url, mirror = _archive_url()
    prop = bool(secrets)
    try:
        with _quiet_astroquery(), _scrub_http_logs(secrets[:2]):
            if prop:
                client.download_data(obsid, filename="download", verbose=False, cache=False,
                                     prop=True, credentials_file=secrets[2], **kwargs)
            else:
                client.download_data(obsid, filename="download", verbose=False, cache=False,
                                     **kwargs)
    except (requests.RequestException, LoginError, ConnectionError, TimeoutError) as exc:
        kind = _classify(exc)
        code = getattr(getattr(exc, "response", None), "status_code", None)
        if code in (401, 403) or (isinstance(exc, LoginError)
                                  and "proprietary" in str(exc).lower()):
            msg = (f"{what}: the archive refused the credentials or the data are proprietary; "
                   "check --credentials_file (section [xmm_newton], username, password)")
        elif isinstance(exc, LoginError):
            # astroquery raises LoginError("Incorrect credentials") for any reply without a
            # Content-Type header: a wrong archive URL or a proxy page as often as a refusal
            msg = (f"{what}: the server's reply was not an archive file (no Content-Type; "
                   "astroquery calls this incorrect credentials); check the archive URL "
                   "(batch's --archive-url, archive.using_archive_url, or astroquery's "
                   "DATA_ACTION_AIO setting) and the network"
                   + (", and --credentials_file" if prop else
                      ", or pass --credentials_file for proprietary data"))
        elif code == 404 and mirror:
            msg = (f"{what}: not found at the archive URL {url} (HTTP 404); check that URL "
                   "(the mirror's data-action-aio servlet: batch's --archive-url, "
                   "archive.using_archive_url, or astroquery's esa.xmm_newton DATA_ACTION_AIO "
                   "setting), the OBS_ID and that "
                   "the observation has EPIC-pn imaging data")
            raise _Permanent(_scrub(msg, secrets[:2]), missing=True) from None
        elif code == 404:
            msg = (f"{what}: not found in the XMM archive (HTTP 404); check the OBS_ID and "
                   "that the observation has EPIC-pn imaging data")
            raise _Permanent(msg, missing=True) from None
        elif code is not None:
            msg = (f"{what}: the archive at {url} answered HTTP {code}" if mirror
                   else f"{what}: the XMM archive answered HTTP {code}")
        elif client.stalled:
            msg = f"{what}: {client.stalled}"
        elif isinstance(exc, (requests.ConnectionError, requests.Timeout, ConnectionError,
                              TimeoutError)):
            msg = f"{what}: {_connection_failure(exc)}"
        else:
            msg = f"{what}: {type(exc).__name__}: {_one_line(_scrub(str(exc), secrets[:2]))}"
        if kind is _Transient:
            raise _Transient(_scrub(msg, secrets[:2]), unanswered=True) from None
        raise kind(_scrub(msg, secrets[:2])) from None
    except (UnboundLocalError, KeyError):
        # astroquery's _request_link leaves `params` unset when the archive answers 200 with a
        # text page (no file) or without a Content-Disposition header.
        if mirror:
            msg = (f"{what}: the archive at {url} sent no file; check that URL "
                   "(the mirror's data-action-aio servlet: batch's --archive-url, "
                   "archive.using_archive_url, or astroquery's esa.xmm_newton DATA_ACTION_AIO "
                   "setting), that the OBS_ID "
                   "exists and is public, or pass --credentials_file")
        else:
            msg = (f"{what}: the XMM archive sent no file; check that the OBS_ID exists and "
                   "is public (or pass --credentials_file)")
        raise _Permanent(_scrub(msg, secrets[:2]), missing=True) from None
    except Exception as exc:  # anything else astroquery raises: report it without credentials
        raise _Permanent(f"{what}: {type(exc).__name__}: "
                         f"{_one_line(_scrub(str(exc), secrets[:2]))}") from None
    finally:
        client._session.close()
    path = client.written
    if path is None or not path.is_file():
        raise _Permanent(f"{what}: astroquery reported success but wrote no file into "
                         f"{raw_dir}; check the installed astroquery version")
    return path, client.server_filename or ""


def _check_gzip_fits(path: Path) -> None:
    """Raise _Transient unless ``path`` is complete FITS (gzipped or not): read it to the end."""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(2)
        if magic == b"\x1f\x8b":
            with gzip.open(path, "rb") as fh:
                head = fh.read(6)
                while fh.read(1 << 22):
                    pass
        else:
            with open(path, "rb") as fh:
                head = fh.read(6)
            if path.stat().st_size % 2880:
                raise OSError("size is not a multiple of 2880 bytes")
    except (OSError, EOFError, zlib.error) as exc:
        raise _Transient(f"{path.name}: corrupt or truncated ({exc})") from None
    if head != b"SIMPLE":
        raise _Transient(f"{path.name}: not a FITS file")


def _member_is_safe(member: tarfile.TarInfo, dest: Path) -> bool:
    """tarfile's ``data`` filter, made strict: a name it would rewrite is refused too."""
    name = member.name
    if name.startswith(("/", "\\")) or os.path.isabs(name) or ".." in Path(name).parts:
        return False
    if member.islnk() or member.issym():
        target = Path(member.linkname)
        if target.is_absolute() or ".." in target.parts:
            return False
    if hasattr(tarfile, "data_filter"):
        try:
            filtered = tarfile.data_filter(member, str(dest))
        except tarfile.FilterError:
            return False
        return filtered is not None and filtered.name == member.name
    return member.isfile() or member.isdir() or member.issym() or member.islnk()


class _ScrubFilter(logging.Filter):
    """Rewrites log records of HTTP libraries so that no credential leaves the process."""

    def __init__(self, secrets):
        super().__init__()
        self.secrets = secrets

    def filter(self, record):
        try:
            text = record.getMessage()
        except Exception:  # a malformed record: drop its arguments rather than fail
            text = str(record.msg)
        clean = _scrub(text, self.secrets)
        if clean != text:
            record.msg, record.args = clean, ()
        return True


@contextlib.contextmanager
def _scrub_http_logs(secrets):
    """While active, scrub credentials from the records of urllib3, requests and astroquery."""
    if not secrets:
        yield
        return
    filt = _ScrubFilter(secrets)
    names = {"urllib3", "urllib3.connectionpool", "urllib3.connection", "urllib3.response",
             "urllib3.util.retry", "requests", "astroquery"}
    names |= {n for n in logging.root.manager.loggerDict
              if n.split(".")[0] in ("urllib3", "requests", "astroquery")}
    loggers = [logging.getLogger(n) for n in sorted(names)]
    for lg in loggers:
        lg.addFilter(filt)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeFilter(filt)


def _extract_flat(archive: Path, dest: Path, obsid: str) -> list[Path]:
    """Extract the regular files of ``archive`` into ``dest`` without their folders.

    Every member is first checked with tarfile's ``data`` filter (no absolute path, no ``..``,
    no link leaving the folder, no device); one unsafe member refuses the whole archive.
    """
    out = []
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()  # reads the whole index: a truncated tar fails here
            bad = [m.name for m in members if not _member_is_safe(m, dest)]
            if bad:
                raise _Permanent(f"OBS_ID {obsid}: the archive's tar holds unsafe member(s) "
                                 f"{bad[:3]} (absolute path, '..' or a link leaving the folder); "
                                 "refused, nothing extracted")
            for m in members:
                if not m.isfile():
                    continue
                name = Path(m.name).name
                if not _SAFE_NAME_RE.match(name):
                    raise _Permanent(f"OBS_ID {obsid}: the archive's tar holds an odd file name "
                                     f"{name!r}; refused")
                target = dest / name
                if target.exists():
                    log.warning("OBS_ID %s: tar member %s repeats the name %s; keeping the last",
                                obsid, m.name, name)
                src = tar.extractfile(m)
                with src, open(target, "wb") as fh:
                    shutil.copyfileobj(src, fh, 1 << 20)
                if m.size != target.stat().st_size:
                    raise _Transient(f"{name}: truncated in the tar")
                if target not in out:
                    out.append(target)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise _Transient(f"corrupt or truncated tar ({exc})") from None
    return out


def _unpack(path: Path, server_name: str, product: str, flat: Path, obsid: str) -> list[Path]:
    """Turn one downloaded file (tar or bare FTZ) into verified PPS files in ``flat``."""
    if tarfile.is_tarfile(path):
        kept = []
        for f in _extract_flat(path, flat, obsid):
            info = parse_pps_filename(f.name)
            if info is None:
                log.debug("OBS_ID %s: ignoring %s (not a PPS product)", obsid, f.name)
                f.unlink()
                continue
            try:
                _check_gzip_fits(f)
            except _Transient as exc:
                if info["product"] == product:
                    raise
                # another product the archive put in the tar (a MOS list...): dropped, never
                # a reason to fetch the asked one again
                log.warning("warning: OBS_ID %s: %s, which was not asked for, is damaged "
                            "(%s); dropped", obsid, f.name, exc)
                f.unlink(missing_ok=True)
                continue
            kept.append(f)
        return kept
    _check_gzip_fits(path)
    name = Path(server_name).name
    if parse_pps_filename(name) is None:
        # The archive did not say which PPS file this is: build the name from the header.
        with fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
            expid = str(hdul[0].header.get("EXPIDSTR", "")).strip()
        if product in ("ATTTSR", "CALIND"):
            name = pps_filename(obsid, product, inst="OB", expid="X000")
        elif re.fullmatch(r"[SUX]\d{3}", expid):
            name = pps_filename(obsid, product, inst="PN", expid=expid)
        else:
            raise _Permanent(f"OBS_ID {obsid} {product}: the archive sent a bare file named "
                             f"{server_name!r} without EXPIDSTR; cannot name it")
    target = flat / name
    os.replace(path, target)
    return [target]


def _what(obsid: str, product: str, query: dict) -> str:
    """``OBS_ID <obsid> [<instname>] <product>``, what opens a download's messages."""
    return f"OBS_ID {obsid} {query.get('instname', '')} {product}".replace("  ", " ")


def _fetch_product(obsid, product, query, stage: Path, secrets, retries, backoff_s) -> list[Path]:
    raw = stage / "raw"
    flat = stage / "flat"
    attempts = retries + 1
    what = _what(obsid, product, query)
    last = ""
    unanswered = True   # every attempt got no answer at all
    for attempt in range(1, attempts + 1):
        raw.mkdir(exist_ok=True)
        outcome = None
        # what this attempt adds to flat (a failed attempt's files are not the next one's)
        before = set(flat.iterdir()) if flat.is_dir() else set()
        try:
            path, server_name = _fetch_once(obsid, product, query, raw, secrets)
            files = _unpack(path, server_name, product, flat, obsid)
            outcome = [f for f in files if (i := parse_pps_filename(f.name)) is not None
                       and i["product"] == product]
        except _Transient as exc:
            unanswered = unanswered and exc.unanswered
            last = str(exc)
            last = last[len(what) + 2:] if last.startswith(f"{what}: ") else last
            for f in (set(flat.iterdir()) if flat.is_dir() else set()) - before:
                with contextlib.suppress(OSError):
                    f.unlink()
        finally:
            shutil.rmtree(raw, ignore_errors=True)
        if outcome is not None:
            if not outcome:
                raise _Permanent(f"OBS_ID {obsid}: the archive's answer holds no {product} file",
                                 missing=True)
            log.info("OBS_ID %s: downloaded %s", obsid, ", ".join(f.name for f in outcome))
            return outcome
        if attempt < attempts:
            delay = backoff_s * 2 ** (attempt - 1)
            log.warning("%s: attempt %d/%d failed (%s); retrying in %.3g s", what,
                        attempt, attempts, last, delay)
            time.sleep(delay)
    err = ArchiveError(f"{what}: download failed after {attempts} "
                       f"attempt{'s' if attempts != 1 else ''} ({last}); try again later or "
                       "check the network")
    err.reason, err.unanswered = last, unanswered
    raise err


def _marker_ok(pps: Path) -> bool:
    try:
        info = json.loads((pps / MARKER_NAME).read_text())
        files = info["files"]
        return bool(files) and all((pps / n).is_file() and (pps / n).stat().st_size == s
                                   for n, s in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


#: Lock file (in ``<save_dir>/<OBS_ID>``) held while :func:`download_pps` downloads.
DOWNLOAD_LOCK_NAME = ".pps-download.lock"


def _remake(obs_dir: Path, made: list | None) -> None:
    if not obs_dir.is_dir():
        obs_dir.mkdir(parents=True, exist_ok=True)
        if made is not None:
            made.append(True)


@contextlib.contextmanager
def _download_lock(obs_dir: Path, obsid: str, *, wait: bool = True, made: list | None = None):
    """Hold an exclusive ``flock`` on ``obs_dir/DOWNLOAD_LOCK_NAME`` while the block runs;
    yields whether it is held.

    A second process that downloads the same OBS_ID into the same folder (two
    make_detxy_pn_image_pps.py runs, or one beside a batch) waits for the first and then
    reuses its folder instead of downloading it again. The kernel drops the lock when its
    holder dies, so a killed download never blocks the next (its file stays, empty, until the
    next download of the OBS_ID removes it). Where the file system does not support
    ``flock`` the block runs unlocked (yields False), as before. ``wait=False``: yields False
    at once when another process holds it. ``made``: gets True appended when the folder had
    to be made again (a failed first download removed it), so the caller may remove it too.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield False
        return
    path = obs_dir / DOWNLOAD_LOCK_NAME
    told = False
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except FileNotFoundError:   # the folder was removed meanwhile (a failed download)
            _remake(obs_dir, made)
            continue
        except OSError as exc:
            log.debug("%s: no download lock (%s)", path, exc)
            yield False
            return
        busy = False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    busy = True
                else:
                    if not told:
                        log.warning("OBS_ID %s: another process is downloading it into %s; "
                                    "waiting for it", obsid, obs_dir)
                        told = True
                    fcntl.flock(fd, fcntl.LOCK_EX)
            if not busy:
                try:  # still the file at path? (a failed first download removes its folder)
                    same = os.path.samestat(os.fstat(fd), os.stat(path))
                except FileNotFoundError:
                    same = False
        except OSError as exc:  # flock not supported here
            os.close(fd)
            log.debug("%s: no download lock (%s)", path, exc)
            yield False
            return
        except BaseException:   # Ctrl-C or SIGTERM while waiting
            os.close(fd)
            raise
        if busy:
            os.close(fd)
            yield False
            return
        if same:
            break
        os.close(fd)
        _remake(obs_dir, made)
    try:
        yield True
    finally:
        # only the holder removes the file (waiters then find theirs unlinked and start
        # over), so no lock file stays behind
        with contextlib.suppress(OSError):
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                os.unlink(path)
        os.close(fd)


def remove_stale_downloads(obs_dir: Path) -> int:
    """Remove the download folders (``.pps-download-*``) that killed runs left in
    ``obs_dir``, unless a download of that OBS_ID is running now (it holds the download
    lock); returns how many. Only those idle for ``STAGE_IDLE_S``; without ``flock``, a
    day."""
    obs_dir = Path(obs_dir)
    if not any(obs_dir.glob(".pps-download-*")):
        return 0
    with _download_lock(obs_dir, obs_dir.name, wait=False) as held:
        return _remove_stale_stages(obs_dir, locked=held)


#: With the download lock held, a download folder that nothing has written to for this long
#: (s) is a killed run's; without a working lock, one a day old. (Where ``flock`` holds only
#: on one node of a shared file system, another node's live download still writes to its
#: folder every few seconds.)
STAGE_IDLE_S = 600.0


def _last_write(folder: Path) -> float:
    """The newest modification time of ``folder`` and everything in it."""
    newest = folder.stat().st_mtime
    for p in folder.rglob("*"):
        with contextlib.suppress(OSError):
            newest = max(newest, p.stat().st_mtime)
    return newest


def _remove_stale_stages(obs_dir: Path, *, locked: bool) -> int:
    """Remove staging folders a killed run left behind: its process (named in the folder's
    name, this host) is gone, or nothing in it was written for ``STAGE_IDLE_S`` when the
    caller holds the download lock (``locked``), a day when it could not take it; returns
    how many."""
    max_age_s = STAGE_IDLE_S if locked else 86400.0
    now = time.time()
    n = 0
    for d in obs_dir.glob(".pps-download-*"):
        with contextlib.suppress(OSError):
            if d.is_dir() and (owner_gone(d.name) or now - _last_write(d) >= max_age_s):
                log.debug("removing the stale download folder %s", d)
                shutil.rmtree(d, ignore_errors=True)
                n += 1
    return n


def pps_folder_is_complete(pps, obsid: str) -> bool:
    """Whether ``pps`` holds what :func:`download_pps` would fetch, so it can be reused.

    True if the download marker lists files that are all present with their recorded sizes,
    or (for folders made otherwise) if :func:`find_pps_files` succeeds and the attitude and
    calibration index files are present.
    """
    pps = Path(pps)
    if not pps.is_dir():
        return False
    if (pps / MARKER_NAME).exists():
        return _marker_ok(pps)
    try:
        found = _find(pps, obsid, report=False)
    except PPSError:
        return False
    return found.attitude is not None and found.calind is not None


#: An archive that stops answering (refused connections, time-outs, 5xx) costs each OBS_ID
#: all its retries (up to 4 x 300 s of read time-out). After one OBS_ID failed that way, this
#: process tries each next one once (no retries); after this many in a row it asks no more,
#: and the rest of a batch fails at once with a message saying so. Any answer resets it.
ARCHIVE_GIVE_UP_AFTER = 3
#: ... for this long (s) after the last such failure; then it is asked again (once), so a
#: long-lived process (a Dask worker serving many batches, a notebook) is not cut off for good.
ARCHIVE_ASK_AGAIN_S = 900.0
#: OBS_IDs in a row the archive at ``url`` gave no answer for (``_UNANSWERED_LOCK``: threads).
_UNANSWERED = {"n": 0, "last": "", "t": 0.0, "url": ""}
_UNANSWERED_LOCK = threading.Lock()


def archive_answers_again() -> None:
    """Forget earlier archive failures of this process, so the next :func:`download_pps` asks
    the archive at once (a new batch run starts afresh; a notebook can call this after a
    network outage instead of waiting ``ARCHIVE_ASK_AGAIN_S``)."""
    with _UNANSWERED_LOCK:
        _UNANSWERED.update(n=0, last="", t=0.0, url="")


def _archive_answered(answered: bool, reason: str = "") -> None:
    """Count an OBS_ID the current archive URL gave no answer for, or reset the count."""
    url = _archive_url()[0]
    with _UNANSWERED_LOCK:
        if answered:
            _UNANSWERED.update(n=0, url=url)
        else:   # another URL than the one counted so far starts a count of its own
            n = _UNANSWERED["n"] + 1 if _UNANSWERED["url"] == url else 1
            _UNANSWERED.update(n=n, t=time.monotonic(), last=reason, url=url)


def _unanswered_in_a_row() -> int:
    """OBS_IDs in a row the current archive URL gave no answer for (another URL: 0)."""
    with _UNANSWERED_LOCK:
        return _UNANSWERED["n"] if _UNANSWERED["url"] == _archive_url()[0] else 0


def download_pps(obsid: str, save_dir, *, credentials_file=None, retries: int = 3,
                 backoff_s: float = 1.0) -> Path:
    """Download the EPIC-pn PPS products of ``obsid`` into ``<save_dir>/<obsid>/pps``.

    Asks the XMM archive (through astroquery's real ``XMMNewton.download_data``) for the pn
    imaging event lists and flaring-background time series (``instname='PN'``), the attitude
    and the calibration index, all as ``FTZ``. An answer may be a tar (members
    ``<OBSID>/pps/<file>``, flattened) or a bare file. Files are collected in a hidden staging
    folder beside ``pps`` and moved into ``pps`` only when the event lists and FBKTSR arrived
    complete; a marker file then records the file sizes so the next call reuses the folder
    without contacting the archive.

    Parameters
    ----------
    obsid : str
        Ten-digit OBS_ID.
    save_dir : str or Path
        Parent folder; created if missing.
    credentials_file : str or Path, optional
        astroquery-style ini file (``[xmm_newton]`` with ``username`` and ``password``) for
        proprietary data; passed to astroquery with ``prop=True``. Its contents are never
        logged nor put into error messages.
    retries : int, optional
        Retries after the first attempt for transient failures (HTTP 5xx, 408, 429, connection
        errors, time-outs, truncated or corrupt downloads).
    backoff_s : float, optional
        First back-off delay in s; doubled after each failed attempt.

    Returns
    -------
    Path
        ``<save_dir>/<obsid>/pps``.

    Raises
    ------
    UsageError
        Malformed OBS_ID, or an unreadable credentials file.
    ArchiveError
        Unknown OBS_ID or missing pn product (HTTP 404, at once), refused credentials, an
        unsafe tar, or transient failures that outlasted the retries. Nothing is left in
        ``pps`` then (an existing folder is untouched).

    Notes
    -----
    The attitude and calibration index are optional: if the archive has none, a warning is
    logged and the download still succeeds. In a process that downloads many OBS_IDs (a
    batch), an archive that has stopped answering is given up on after
    ``ARCHIVE_GIVE_UP_AFTER`` OBS_IDs in a row, for ``ARCHIVE_ASK_AGAIN_S`` or until the
    archive URL changes or :func:`archive_answers_again` is called.
    """
    obsid = validate_obsid(obsid)
    if retries < 0 or backoff_s < 0:
        raise UsageError(f"retries={retries}, backoff_s={backoff_s}: must not be negative")
    secrets: tuple = ()
    if credentials_file is not None:
        user, password = _read_credentials(credentials_file)
        secrets = (user, password, str(credentials_file))
    obs_dir = Path(save_dir) / obsid
    pps = obs_dir / "pps"
    if pps_folder_is_complete(pps, obsid):
        log.info("OBS_ID %s: reusing the complete PPS folder %s", obsid, pps)
        return pps

    if (_unanswered_in_a_row() >= ARCHIVE_GIVE_UP_AFTER
            and time.monotonic() - _UNANSWERED["t"] < ARCHIVE_ASK_AGAIN_S):
        raise ArchiveError(
            f"OBS_ID {obsid}: not asked for: the archive gave no answer for the last "
            f"{_UNANSWERED['n']} OBS_IDs ({_UNANSWERED['last']}); try again later or check "
            "the network")
    created_obs_dir = not obs_dir.exists()
    try:
        obs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ArchiveError(f"{obs_dir}: cannot create the download folder ({exc.strerror}); "
                           "pass a writable --save_dir") from None
    remade: list = []
    with _download_lock(obs_dir, obsid, made=remade) as held:
        if pps_folder_is_complete(pps, obsid):   # another process has just downloaded it
            log.info("OBS_ID %s: reusing the complete PPS folder %s", obsid, pps)
            return pps
        # with the lock held, a download folder nothing writes to is a killed run's
        _remove_stale_stages(obs_dir, locked=held)
        try:
            stage = Path(tempfile.mkdtemp(prefix=f".pps-download-{owner_tag()}-", dir=obs_dir))
        except OSError as exc:
            raise ArchiveError(f"{obs_dir}: cannot create a download folder there "
                               f"({exc.strerror or exc}); pass a writable --save_dir") from None
        (stage / "flat").mkdir()
        failure = None
        try:
            log.info("OBS_ID %s: downloading the pn PPS products into %s", obsid, pps)
            for product, query, required in _PRODUCTS:
                try:
                    _fetch_product(obsid, product, query, stage, secrets,
                                   retries if _unanswered_in_a_row() == 0 else 0, backoff_s)
                    _archive_answered(True)
                except ArchiveError as exc:   # failed after every attempt
                    # no answer counts; an answer, even a damaged one, is no outage
                    _archive_answered(not getattr(exc, "unanswered", False),
                                      getattr(exc, "reason", ""))
                    raise
                except _Permanent as exc:
                    _archive_answered(True)
                    if required or not exc.missing:
                        failure = str(exc)
                        break
                    log.warning("OBS_ID %s: the archive has no %s (%s); continuing without it",
                                obsid, product, exc)
            if failure is None:
                flat = stage / "flat"
                try:
                    _find(flat, obsid, report=False)
                except PPSError as exc:
                    failure = (f"OBS_ID {obsid}: the downloaded products are incomplete "
                               f"({str(exc).split(': ', 1)[-1]})")
            if failure is None:
                pps.mkdir(exist_ok=True)
                (pps / MARKER_NAME).unlink(missing_ok=True)   # the folder is in flux from here on
                sizes = {}
                for f in sorted(flat.iterdir()):
                    sizes[f.name] = f.stat().st_size
                    os.replace(f, pps / f.name)
                tmp = pps / f".{MARKER_NAME}.tmp"
                utc = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                tmp.write_text(json.dumps({"obsid": obsid, "files": sizes, "utc": utc},
                                          indent=1))
                os.replace(tmp, pps / MARKER_NAME)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
            if (created_obs_dir or remade) and (failure is not None or not pps.exists()):
                with contextlib.suppress(OSError):
                    (obs_dir / DOWNLOAD_LOCK_NAME).unlink()   # a waiter sees it gone
                    obs_dir.rmdir()
    if failure is not None:
        raise ArchiveError(_scrub(failure, secrets[:2]))
    log.info("OBS_ID %s: PPS products ready in %s", obsid, pps)
    return pps
