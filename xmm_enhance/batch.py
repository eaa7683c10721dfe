"""Batch engine: many OBS_IDs through image -> SR -> DN -> PNGs, resumable and parallel.

One task function, :func:`process_observation`, does everything for one OBS_ID; it is a plain
picklable function of ``(obsid, config)`` returning a plain :class:`ObsResult`, so the same task
runs in-process (``jobs=1``), in a local process pool (``jobs=N``) or on a ``dask.distributed``
cluster (``scheduler=ADDRESS``). :func:`run_batch` drives it and :func:`write_report` writes the
CSV/JSON report (:func:`prune_reports` keeps the newest :data:`REPORTS_KEPT` runs' reports).

What makes it safe to run from cron over and over (design §7):

* **Idempotent.** A step is skipped when its outputs are *complete and valid*: every FITS file
  opens, a gzipped one decompresses to the end of its stream (:func:`gzip_is_complete`),
  every HDU carries CHECKSUM/DATASUM and they verify (:func:`fits_is_valid`), every PNG
  has its signature and final ``IEND`` chunk (:func:`png_is_valid`), no output is older
  than the image it was made from, no PNG or region file is older than its prediction,
  each prediction was made by the model file that would be used now (its ``MODELSHA``)
  and holds every extension that model writes (:func:`required_extensions`), and an SR
  prediction with a ``SOURCES`` table has its whole ``*_sources_SR.reg`` beside it. Anything
  else is redone (``overwrite``), so a file damaged on disk heals on the next run.
* **Locked.** Each observation is worked on under an exclusive ``fcntl.flock`` on
  ``<save_dir>/<OBS_ID>/.xmm_enhance.lock``. The kernel drops the lock when its process dies,
  so a lock left by a killed run (``kill -9``, OOM killer, reboot) is never stale; the file
  itself records who held it last (pid, host, UTC). A batch that finds an observation locked
  reports it as ``busy`` and moves on; it is not a failure. Pool workers end with the batch
  process that started them (:func:`_die_with_parent`), so killing that process alone frees
  their locks too.
* **No partial files.** Every writer of the package writes a temporary and renames it; the
  temporaries a killed run leaves (``.<name>.*.tmp``, ``.pps-download-*``) are removed under the
  lock before the observation is worked on again.
* **Logged.** Each observation appends to ``<save_dir>/<OBS_ID>/xmm_enhance_batch.log``: one
  header line per attempt, what each step did (``step image: ran in 3.1 s``) and any warning
  or error, each line stamped in UTC (``2026-12-05T01:42:12.552Z``, as the lock file and the
  report). The log is capped: past :data:`LOG_MAX_BYTES` it is renamed ``.log.1`` (replacing
  the older one) and a new one is begun, so it never holds more than about twice that. Its
  warnings also travel back in :attr:`ObsResult.warnings` (from pool workers
  and Dask workers alike), for the console and the report.
* **Failure-isolated.** An observation that fails (archive unreachable after the download's
  retries with back-off, corrupt PPS file, model error...) is marked ``failed`` with a one-line
  message; the batch goes on.
"""
from __future__ import annotations

import asyncio
import contextlib
import csv
import errno
import io
import json
import logging
import logging.handlers
import os
import re
import socket
import sys
import threading
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

from . import procstate
from .errors import UsageError, XmmEnhanceError
from .fsmode import file_mode
from .obsid import obsid_problem

__all__ = [
    "STEPS", "LOCK_NAME", "LOG_NAME", "BatchConfig", "ObsResult", "ObservationLock",
    "BadListLine", "read_obsid_list", "fits_is_valid", "gzip_is_complete", "cut_short",
    "png_is_valid",
    "required_extensions", "observation_state", "process_observation", "run_batch",
    "write_report", "default_report_path", "prune_reports", "summary_table", "REPORT_FIELDS",
    "REPORTS_KEPT", "LATEST_REPORT", "MAX_WARNINGS", "LOG_MAX_BYTES", "interrupted_result",
]

log = logging.getLogger(__name__)

#: Steps of one observation, in order. ``download`` only runs without ``pps_root``.
STEPS = ("download", "image", "SR", "DN")
LOCK_NAME = ".xmm_enhance.lock"
LOG_NAME = "xmm_enhance_batch.log"
#: Size (bytes) past which an observation's log is renamed ``<LOG_NAME>.1`` (the one backup
#: kept, replacing the older) and a new log begun: ~150 kB a year of nightly runs otherwise
#: piles up for good.
LOG_MAX_BYTES = 1_000_000
_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_TMP_RE = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp$")
_GZIP_MAGIC = b"\x1f\x8b"
#: Bytes decompressed at a time when a gzip file is checked to its end.
_GZIP_CHUNK = 1 << 20
#: Threads working on an observation right now (the CLI keeps their records off the console).
_OBS_THREADS: set = set()


# --------------------------------------------------------------------------------------------
# Configuration and results
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchConfig:
    """Everything a task needs besides the OBS_ID; picklable, so it travels to workers.

    Parameters
    ----------
    save_dir : Path
        Root of the outputs: ``<save_dir>/<OBS_ID>/`` holds the PPS download, the image, the
        predictions, the lock and the log. On a Dask cluster it must be a shared file system.
    pps_root : Path, optional
        Local PPS trees instead of downloading: ``<pps_root>/<OBS_ID>/pps`` or
        ``<pps_root>/<OBS_ID>``.
    low_pi, high_pi : int
        PI band in eV, both ends included (as the image maker).
    expo_time_ks : float
        Exposure of the image (ks).
    binsize : int
        Image bin size in DET units (0.05 arcsec).
    backend : str
        Image maker backend (``auto``, ``native``, ``sas``).
    which : tuple of str
        Predictions to make, a subset of ``("SR", "DN")`` in that order.
    png : bool
        Also write a quick-look PNG per prediction.
    overwrite : bool
        Redo every step even when its outputs are complete and valid.
    sr_model, dn_model : Path, optional
        ONNX models (default: the bundled ones).
    threads : int, optional
        onnxruntime threads per task (default: onnxruntime's choice).
    credentials_file : Path, optional
        XSA credentials for proprietary data.
    retries : int
        Download retries after the first attempt for transient archive errors.
    backoff_s : float
        First back-off delay (s), doubled after each failed attempt.
    archive_url : str, optional
        XSA ``data-action-aio`` URL (a mirror; default: astroquery's configuration); ``?``
        is appended when missing (:func:`archive.aio_url`).
    min_signif : float, optional
        SR source list threshold (sigma; default the command line's). An SR prediction made
        with another one (its ``SOURCES`` ``MINSIG``) is redone.
    """

    save_dir: Path
    pps_root: Path | None = None
    low_pi: int = 500
    high_pi: int = 2000
    expo_time_ks: float = 20.0
    binsize: int = 80
    backend: str = "auto"
    which: tuple = ("SR", "DN")
    png: bool = False
    overwrite: bool = False
    sr_model: Path | None = None
    dn_model: Path | None = None
    threads: int | None = None
    credentials_file: Path | None = None
    retries: int = 3
    backoff_s: float = 2.0
    archive_url: str | None = None
    min_signif: float | None = None

    def __post_init__(self):
        """The checks the command line makes before any observation starts, so a bad setting
        is one UsageError here, not a failure of every observation."""
        from .imageargs import (check_archive_url, check_backend, check_image_args,
                                check_min_signif, check_model_binsize, check_threads)

        # which: a tuple of "SR"/"DN" (a bare "SR" string would be read letter by letter)
        which = (self.which,) if isinstance(self.which, str) else tuple(self.which)
        which = tuple(str(w).upper() for w in which)
        bad = [w for w in which if w not in ("SR", "DN")]
        if bad:
            raise UsageError(f"BatchConfig(which={self.which!r}): each must be 'SR' or 'DN'")
        object.__setattr__(self, "which", which)
        # folders: absolute, so workers (and a later os.chdir) see the same ones
        for name in ("save_dir", "pps_root", "sr_model", "dn_model", "credentials_file"):
            v = getattr(self, name)
            if v is None and name == "save_dir":
                raise UsageError("BatchConfig(save_dir=None): give the folder for the outputs")
            if v is not None:
                try:
                    object.__setattr__(self, name, Path(os.path.abspath(v)))
                except TypeError:
                    raise UsageError(f"BatchConfig({name}={v!r}): must be a path") from None
        check_image_args(self.low_pi, self.high_pi, self.binsize, self.expo_time_ks)
        check_model_binsize(self.binsize, self.which)
        check_backend(self.backend)
        check_archive_url(self.archive_url, "BatchConfig(archive_url=)")
        check_min_signif(self.min_signif)
        check_threads(self.threads, "BatchConfig(threads=)")
        for name, v in (("retries", self.retries), ("backoff_s", self.backoff_s)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
                raise UsageError(f"BatchConfig({name}={v!r}): must be a number >= 0")

    def model_path(self, which: str) -> Path | None:
        return self.sr_model if which == "SR" else self.dn_model


#: Runs whose default reports (``SAVE_DIR/reports/batch_<UTC>_<pid>.csv/.json``) are kept:
#: after each run, :func:`prune_reports` deletes the older ones (a nightly cron job would
#: otherwise add ~730 files a year). ``latest.csv``/``latest.json`` copy the newest.
REPORTS_KEPT = 50
#: Name (without suffix) of the copies of the newest report in the default report folder.
LATEST_REPORT = "latest"
#: Names of the default reports, the only files :func:`prune_reports` ever deletes.
_REPORT_RE = re.compile(r"^batch_(\d{8}T\d{6}Z)_(\d+)\.(csv|json)$")

#: Columns of the CSV report, in order.
REPORT_FIELDS = ("obsid", "status", "steps", "download_s", "image_s", "sr_s", "dn_s", "png_s",
                 "total_s", "cpu_s", "exposure_s", "counts", "sr_sources", "image", "error",
                 "log", "host", "pid", "peak_rss_mb", "started_utc", "warnings")
#: Most warnings an :class:`ObsResult` carries; the others are in the observation's log.
MAX_WARNINGS = 20


@dataclass
class ObsResult:
    """The outcome of one observation (one row of the report).

    ``status`` is ``done`` (every requested output is complete and valid), ``failed`` (see
    ``error``), ``busy`` (another batch held its lock; nothing was done) or ``interrupted``
    (the batch was stopped before the observation finished, see :func:`interrupted_result`).
    ``steps`` says what each step did, e.g. ``download:skipped image:ran SR:ran DN:ran
    png:ran`` (``png`` with ``BatchConfig.png`` only: ``ran`` when any PNG was made). Times are
    seconds of wall clock per step (0 when skipped); ``png_s`` is the quick-look PNGs' time
    (not part of ``sr_s``/``dn_s``); ``cpu_s`` is
    the CPU time (all threads) the worker spent on the observation; ``peak_rss_mb`` is the
    worker process's peak resident memory so far; ``sr_sources`` is the number of rows of the
    SR prediction's ``SOURCES`` table (None without one), read from the file, so a resumed run
    reports it too. ``warnings`` holds the one-line text of each distinct warning logged while
    the observation was worked on (without its OBS_ID; at most :data:`MAX_WARNINGS`); the
    CSV report joins them with `` | ``, the JSON report keeps the list.
    """

    obsid: str
    status: str = "failed"
    steps: str = ""
    download_s: float = 0.0
    image_s: float = 0.0
    sr_s: float = 0.0
    dn_s: float = 0.0
    png_s: float = 0.0
    total_s: float = 0.0
    cpu_s: float = 0.0
    exposure_s: float | None = None
    counts: float | None = None
    sr_sources: int | None = None
    image: str = ""
    error: str = ""
    log: str = ""
    host: str = ""
    pid: int = 0
    peak_rss_mb: float | None = None
    started_utc: str = ""
    outputs: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status in ("done", "busy")


# --------------------------------------------------------------------------------------------
# OBS_ID lists
# --------------------------------------------------------------------------------------------
class BadListLine(NamedTuple):
    """A malformed line of an OBS_ID list file (see :func:`read_obsid_list`)."""

    where: str      # the list file, or "stdin"
    line: int       # 1-based line number
    text: str       # the line without its comment and blanks
    reason: str     # what is wrong and how to fix it

    @property
    def message(self) -> str:
        return f"{self.where} line {self.line}: {self.text!r} {self.reason}"

    def result(self) -> ObsResult:
        """The line as a failed row of the report (``obsid`` is the text as written)."""
        return ObsResult(obsid=self.text, status="failed", error=self.message,
                         host=socket.gethostname(), started_utc=_utc())


#: Why a line whose OBS_ID part could not be decoded is refused, with the fix.
_UNDECODABLE = ("holds bytes that are not UTF-8 text (the list was saved in another encoding); "
                "save the list as UTF-8 or retype the line")


def _decode_list(raw) -> str:
    """The text of a list file or of stdin (``raw``: bytes, or str from a text stream).

    UTF-8, with or without a byte-order mark; a UTF-16 file (with its mark) is read as such.
    Bytes that are not UTF-8 become U+FFFD: they only matter on a line whose OBS_ID part
    holds one (a Latin-1 accent in a comment is harmless).
    """
    if isinstance(raw, str):
        return raw.lstrip("\ufeff")
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return raw.decode("utf-16", errors="replace").lstrip("\ufeff")
    return raw.decode("utf-8-sig", errors="replace")


def _list_cell(text: str) -> str:
    """The OBS_ID part of a list line (comment and blanks removed): a lone spreadsheet cell
    as exported to CSV (``"0123456789"``, ``0123456789,`` or ``0123456789;``) is its id."""
    cell = re.sub(r"[\s,;]+$", "", text)
    if len(cell) >= 2 and cell[0] == cell[-1] and cell[0] in "\"'":
        cell = cell[1:-1].strip()
    return cell


#: A list file's first line that is a column name (letters, no digit), as a spreadsheet
#: exports one column with its header: skipped.
_HEADER_ROW = re.compile(r"[A-Za-z][A-Za-z _.-]{0,39}")


def read_obsid_list(items, *, bad: list | None = None) -> list[str]:
    """OBS_IDs from command-line items: ten-digit ids and/or list files (``-`` is stdin).

    A list file has one OBS_ID a line; ``#`` starts a comment; blank lines are ignored.
    It is read as UTF-8 (a byte-order mark is ignored; bytes that are not UTF-8 only matter
    on a line whose OBS_ID part holds them, which is then malformed). A lone CSV cell, as a
    spreadsheet exports one column (``"0123456789"``, ``0123456789,``, ``0123456789;``), is
    read as its id, and a first line that is the column's name (letters only, e.g. ``obsid``)
    is skipped. Duplicates are dropped (first occurrence kept, with a warning).

    Parameters
    ----------
    items : iterable of str
        OBS_IDs and list file names, as on the command line.
    bad : list, optional
        Where malformed lines of list files go. Given, each such line is logged as a warning
        and appended to it as a :class:`BadListLine` (file, line, text, reason and fix), and
        the good ids are still returned, so that one typo in a growing cron list stops no
        run; the caller reports them (``xmm-enhance batch`` counts each as failed). Without
        it, the first malformed line raises :class:`UsageError`.

    Returns
    -------
    list of str
        The OBS_IDs, in order, once each; empty when the list files (or stdin) hold none.

    Raises
    ------
    UsageError
        An item that is neither a ten-digit OBS_ID nor a list file, an unreadable list file,
        or (without ``bad``) a malformed line of a list file.
    """
    if isinstance(items, (str, bytes, os.PathLike)):
        items = [items]   # one id or one list file, not its characters
    items = [os.fspath(it) if isinstance(it, os.PathLike) else it for it in items]
    out: list[str] = []
    for item in items:
        item = str(item)
        if re.fullmatch(r"\s*[0-9]{10}\s*", item):
            out.append(item.strip())
            continue
        if item == "-":
            stream = getattr(sys.stdin, "buffer", sys.stdin)   # bytes where there are some
            text, where = _decode_list(stream.read()), "stdin"
        else:
            path = Path(item)
            if not path.is_file() and re.fullmatch(r"\s*[0-9]{9}\s*", item):
                raise UsageError(f"{item.strip()}: {obsid_problem(item.strip())}")
            if not path.is_file():
                what = ("a folder, not an OBS_ID list file" if path.is_dir() else
                        "neither a ten-digit OBS_ID nor an OBS_ID list file"
                        if re.fullmatch(r"\s*[0-9]+\s*", item) else "no such OBS_ID list file")
                raise UsageError(f"{item}: {what}; pass ids like 0123456789 or a file with one "
                                 "id a line")
            try:
                text = _decode_list(path.read_bytes())
            except OSError as exc:
                raise UsageError(f"{path}: cannot read the OBS_ID list ({exc.strerror or exc});"
                                 " pass a readable text file with one id a line") from None
            where = str(path)
        first = True
        for n, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].replace("\ufeff", "").strip()
            if not line:
                continue
            cell = _list_cell(line)
            if first and _HEADER_ROW.fullmatch(cell):
                # a spreadsheet export's column name ("obsid", "OBS_ID"): not an observation
                log.info("%s line %d: %r taken as the column's name, not an OBS_ID",
                         where, n, cell)
                first = False
                continue
            first = False
            problem = _UNDECODABLE if "\ufffd" in line else obsid_problem(cell)
            if not problem:
                out.append(cell)
                continue
            entry = BadListLine(where, n, line, problem)
            if bad is None:
                raise UsageError(entry.message)
            log.warning("warning: %s (skipped, counted as failed)", entry.message)
            bad.append(entry)
    seen, unique = set(), []
    for o in out:
        if o in seen:
            log.warning("warning: OBS_ID %s is listed more than once; processing it once", o)
            continue
        seen.add(o)
        unique.append(o)
    return unique


# --------------------------------------------------------------------------------------------
# Integrity checks
# --------------------------------------------------------------------------------------------
#: A ``.fits.gz`` up to this size (compressed) is checked from memory by
#: :func:`fits_is_valid`: astropy reads a gzip file with backward seeks, and each one
#: decompresses the stream again from its start (0.95 s for an SR prediction, against 0.06 s
#: from memory). Larger files are streamed, never held whole.
GZIP_IN_MEMORY_MAX = 256 * 1024 * 1024


def _gzip_module():
    try:
        from isal import igzip as gz    # the same format, several times faster than zlib
    except ImportError:  # pragma: no cover - exercised where isal is missing
        import gzip as gz
    return gz


def gzip_is_complete(path, *, keep: bool = False):
    """Whether the gzip file ``path`` decompresses to the end of its stream.

    Reads the whole stream up to the gzip trailer, whose CRC-32 and length must match. This
    is what catches a truncated ``.fits.gz``: astropy stops reading at the HDU where the cut
    falls and returns the HDUs before it, without any error. In chunks, never all of it in
    memory, unless ``keep``.

    Returns
    -------
    (bool, str) or, with ``keep``, (bool, str, bytes or None)
        Completeness and, when incomplete or corrupt, the reason; with ``keep`` also the
        decompressed content (None when incomplete).
    """
    import zlib

    gz = _gzip_module()
    data = None
    try:
        with gz.open(path, "rb") as fh:
            if keep:
                data = fh.read()
            else:
                while fh.read(_GZIP_CHUNK):
                    pass
    except EOFError:
        why = "truncated gzip stream (the file ends before its end-of-stream marker)"
    except FileNotFoundError:
        why = "missing"
    except (OSError, zlib.error) as exc:   # gzip.BadGzipFile (CRC, length, bad header)
        why = f"corrupt gzip stream ({str(exc).strip()[:80] or type(exc).__name__})"
    else:
        return (True, "", data) if keep else (True, "")
    return (False, why, None) if keep else (False, why)


def cut_short(path) -> tuple[bool, str]:
    """(gzipped, why) of a FITS file that may have been cut short: a gzip stream must reach
    its trailer (:func:`gzip_is_complete`), an uncompressed file's data its headers' length
    (:func:`fitsio.fits_truncation`); ``why`` is "" for a whole file. OSError when the file
    cannot be opened."""
    from .fitsio import fits_truncation

    path = Path(path)
    with open(path, "rb") as fh:
        if fh.read(2) != _GZIP_MAGIC:
            return False, fits_truncation(fh, path.stat().st_size)
    ok, why = gzip_is_complete(path)
    return True, "" if ok else why


def _is_gzip(path: Path) -> bool:
    """Whether ``path`` starts with the gzip magic bytes (as astropy decides, not the name)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(2) == _GZIP_MAGIC
    except OSError:
        return False


def fits_is_valid(path) -> tuple[bool, str]:
    """Whether ``path`` is a complete FITS file whose checksums verify.

    A gzip file must decompress to the end of its stream with a matching trailer
    (:func:`gzip_is_complete`); no HDU's data may run past the end of the file
    (:func:`fitsio.fits_truncation`); every HDU must carry ``CHECKSUM`` and ``DATASUM``, and
    both must verify. Which HDUs a product must contain is checked by the batch's prediction
    check, not here. No Python warning is caught (that would take every thread's).

    Returns
    -------
    (bool, str)
        Validity and, when invalid, the reason.
    """
    from astropy.io import fits

    from .fitsio import fits_truncation

    path = Path(path)
    if not path.is_file():
        return False, "missing"
    source = path
    cut = ""
    if _is_gzip(path):
        if path.stat().st_size <= GZIP_IN_MEMORY_MAX:
            ok, why, data = gzip_is_complete(path, keep=True)
            if ok:
                source = io.BytesIO(data)
                cut = fits_truncation(source, len(data))
                source.seek(0)
        else:   # streamed: the gzip trailer is checked, the FITS structure by astropy
            ok, why = gzip_is_complete(path)
        if not ok:
            return False, why
    else:
        try:
            with open(path, "rb") as fh:
                cut = fits_truncation(fh, path.stat().st_size)
        except OSError as exc:
            return False, f"unreadable ({type(exc).__name__}: {str(exc).strip()[:80]})"
    if cut:
        return False, f"truncated ({cut})"
    try:
        with fits.open(source, checksum=False, memmap=False) as hdul:
            for i, hdu in enumerate(hdul):
                if "CHECKSUM" not in hdu.header or "DATASUM" not in hdu.header:
                    return False, f"HDU {i} has no CHECKSUM/DATASUM"
                if hdu.verify_datasum() != 1:
                    return False, f"HDU {i}: DATASUM verification failed"
                if hdu.verify_checksum() != 1:
                    return False, f"HDU {i}: CHECKSUM verification failed"
    except Exception as exc:  # astropy raises OSError, EOFError, ValueError, zlib.error...
        return False, f"unreadable ({type(exc).__name__}: {str(exc).strip()[:80]})"
    return True, ""


def png_is_valid(path) -> tuple[bool, str]:
    """Whether ``path`` is a complete PNG (signature at the start, ``IEND`` chunk at the end)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            fh.seek(max(0, size - 12))
            tail = fh.read(12)
    except OSError:
        return False, "missing"
    if head != _PNG_SIG or tail != _PNG_END:
        return False, "not a complete PNG"
    return True, ""


def _valid(path: Path) -> tuple[bool, str]:
    return png_is_valid(path) if path.suffix.lower() == ".png" else fits_is_valid(path)


# --------------------------------------------------------------------------------------------
# Locks
# --------------------------------------------------------------------------------------------
class ObservationLock:
    """Exclusive, non-blocking lock on one observation (``fcntl.flock`` on a lock file).

    The lock belongs to the open file, so the kernel releases it when the holding process
    exits or is killed: a killed batch never leaves a stale lock. The file stays in place
    (deleting it would race with a second locker) and holds ``pid host utc`` of the last
    holder, for humans. Works across hosts on file systems where ``flock`` is honoured by all
    clients (local disks, NFSv4 on Linux; not every network file system).
    """

    def __init__(self, path):
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock if free; return whether it was taken (never waits)."""
        import fcntl

        for attempt in range(3):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)  # less the umask
                break
            except FileNotFoundError:   # the folder was just removed by a failed run: redo
                if attempt == 2:
                    raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        stamp = f"{os.getpid()} {socket.gethostname()} {_utc()}\n".encode()
        try:   # the holder's stamp is for humans: the flock is the lock (a full disk: none)
            os.ftruncate(fd, 0)
            os.pwrite(fd, stamp, 0)
        except OSError:
            pass
        return True

    def is_free(self) -> bool:
        """Whether nobody holds the lock now (probes without taking it or writing)."""
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        finally:
            os.close(fd)  # closing drops the probe's shared lock

    def holder(self) -> str:
        """``pid host utc`` of the current or last holder ("" if unknown)."""
        try:
            return self.path.read_text().strip()
        except OSError:
            return ""

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


# --------------------------------------------------------------------------------------------
# One observation
# --------------------------------------------------------------------------------------------
def _utc(t: float | None = None) -> str:
    """ISO 8601 UTC time with milliseconds."""
    t = time.time() if t is None else t
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


def _peak_rss_mb() -> float | None:
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(rss / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, XmmEnhanceError):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


_MODELS: dict = {}
_MODELS_LOCK = threading.Lock()


def _model(which: str, cfg: BatchConfig):
    """The model for ``which``, loaded once per worker process and kept."""
    from .inference import load_model

    from .inference import default_model_path

    path = cfg.model_path(which)
    try:  # a model file replaced on disk (a new version) is loaded again
        st = os.stat(path or default_model_path(which))
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
    except OSError:
        stamp = None
    key = (which, str(path) if path else None, cfg.threads)
    with _MODELS_LOCK:
        if key not in _MODELS or _MODELS[key][0] != stamp:
            _MODELS[key] = (stamp, load_model(which, path, threads=cfg.threads))
        return _MODELS[key][1]


def _obs_dir(cfg: BatchConfig, obsid: str) -> Path:
    return Path(cfg.save_dir) / obsid


def _local_pps(cfg: BatchConfig, obsid: str) -> Path:
    """The PPS folder of ``obsid`` under ``cfg.pps_root``."""
    from .errors import PPSError

    root = Path(cfg.pps_root)
    for cand in (root / obsid / "pps", root / obsid):
        if cand.is_dir():
            return cand
    raise PPSError(f"OBS_ID {obsid}: no PPS folder {root / obsid}/pps or {root / obsid}; "
                   "put the PPS files there or drop --pps_dir to download them")


def _image_path(cfg: BatchConfig, obsid: str) -> Path:
    """Where the image maker writes (or wrote) the image of ``obsid`` with ``cfg``'s options:
    the all-good-time file when the observation has less good time than ``--expo_time``."""
    from .pipeline import find_image

    return find_image(_obs_dir(cfg, obsid), cfg.expo_time_ks, cfg.low_pi, cfg.high_pi,
                      cfg.binsize)


def _pred_outputs(image: Path, which: str, png: bool) -> list[Path]:
    """``[input, prediction(, PNG)]`` of ``which`` made from ``image`` (the region file of an
    SR prediction with a source list is checked apart: :func:`_region_ok`)."""
    from .inference import output_paths, png_path

    p_in, p_pred = output_paths(image, which)
    out = [p_in, p_pred]
    if png:
        out.append(png_path(p_pred))
    return out


def _region_path(image: Path) -> Path:
    from .inference import region_path

    return region_path(image)


#: A PNG or region file whose mtime is more than this (s) before its prediction file's is stale.
#: ``inference.write_outputs`` writes the region right after the prediction and the PNG comes
#: later still, so a fresh set is never flagged, whatever the file system's mtime granularity
#: (up to 2 s on FAT) or a small clock step between the writes.
MTIME_SLACK_S = 2.0


def _older(path: Path, than: Path, slack_s: float = 0.0) -> bool:
    """Whether ``path`` was modified more than ``slack_s`` before ``than`` (False if ``than``
    is missing)."""
    try:
        ref = than.stat().st_mtime
    except OSError:
        return False
    return path.stat().st_mtime < ref - slack_s


def _outputs_ok(paths, *, newer_than: Path | None = None, prediction: Path | None = None
                ) -> tuple[bool, str]:
    """All ``paths`` complete and valid, not older than ``newer_than`` (the image) and, for a
    PNG, not older than ``prediction`` (beyond :data:`MTIME_SLACK_S`): a PNG left from an
    earlier prediction is stale."""
    for p in paths:
        ok, why = _valid(p)
        if not ok:
            return False, f"{p.name}: {why}"
        if newer_than is not None and _older(p, newer_than):
            return False, f"{p.name}: older than the image"
        if (prediction is not None and p.suffix.lower() == ".png"
                and _older(p, prediction, MTIME_SLACK_S)):
            return False, f"{p.name}: older than {prediction.name} (made from an earlier " \
                          "prediction)"
    return True, ""


def _region_ok(image: Path, pred: Path, n_sources: int) -> tuple[bool, str]:
    """Whether the ds9 region file of the SR prediction ``pred`` (``n_sources`` rows in its
    ``SOURCES`` table) is whole: its header, one circle per source, the final newline, and
    not older than ``pred`` (beyond :data:`MTIME_SLACK_S`)."""
    from .inference import region_problem

    reg = _region_path(image)
    why = region_problem(reg, n_sources)
    if why:
        return False, f"{reg.name}: {why}"
    if _older(reg, pred, MTIME_SLACK_S):
        return False, f"{reg.name}: older than {pred.name} (made from an earlier prediction)"
    return True, ""


_SHA_CACHE: dict = {}


def _model_sha(which: str, cfg: BatchConfig) -> str | None:
    """sha256 of the model file ``which`` would use (cached by path, size and mtime)."""
    import hashlib

    from .inference import default_model_path

    path = Path(cfg.model_path(which) or default_model_path(which))
    try:
        st = path.stat()
    except OSError:
        return None
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def required_extensions(model) -> tuple[str, ...]:
    """Extensions every prediction file of ``model`` (an :class:`inference.Model`) holds.

    One image extension per optional graph output (``POINTS``, ``DIFFUSE``, ``LO68``,
    ``HI68``; see ``inference.EXTRA_OUTPUTS``) and, for an SR model with a ``points`` map,
    the ``SOURCES`` table, as ``inference.write_outputs`` writes them. A model without these
    outputs (recipe 1: the prediction alone) requires none.
    """
    from .inference import EXTRA_OUTPUTS

    names = model.output_names[1:]   # the first is the rate
    need = [ext for key, ext in EXTRA_OUTPUTS.items() if key in names]
    if model.task == "SR" and model.scale == 2 and "points" in names:
        need.append("SOURCES")
    return tuple(need)


def _prediction_ok(image: Path, which: str, cfg: BatchConfig) -> tuple[bool, str]:
    """Outputs of ``which`` complete, valid, newer than ``image`` (the PNG not older than the
    prediction), made by the model that would be used now (``MODELSHA`` in the prediction's
    header) from this very image (``INSHA``, where the prediction has it), holding every
    extension that model writes (:func:`required_extensions`) and,
    for an SR prediction with a ``SOURCES`` table (the model writes one), with its whole
    region file (:func:`_region_ok`) and the asked source threshold."""
    paths = _pred_outputs(image, which, cfg.png)
    ok, why = _outputs_ok(paths, newer_than=image, prediction=paths[1])
    if not ok:
        return ok, why
    from .inference import made_from_another_file, prediction_headers

    primary, names, h = prediction_headers(paths[1])
    why = made_from_another_file(primary, image)   # not one copied in over it
    if why:
        return False, f"{paths[1].name}: {why}"
    sha = _model_sha(which, cfg)
    if sha is not None:
        if primary.get("MODELSHA") != sha:
            return False, f"{paths[1].name}: made by another {which} model"
        # The same model file made it, so it loads; its outputs say what the file must hold.
        lacking = [ext for ext in required_extensions(_model(which, cfg)) if ext not in names]
        if lacking:
            return False, (f"{paths[1].name}: no {', '.join(lacking)} extension"
                           f"{'s' if len(lacking) > 1 else ''}, which this {which} model "
                           "writes")
    if which == "SR":
        from .sources import DEFAULT_MIN_SIGNIF

        want = DEFAULT_MIN_SIGNIF if cfg.min_signif is None else float(cfg.min_signif)
        made = None if h is None or h.get("MINSIG") is None else float(h["MINSIG"])
        if made is not None and made != want:
            return False, (f"{paths[1].name}: source list made at {made:g} sigma, "
                           f"{want:g} asked")
        if h is not None:       # written with its region file, in one set
            return _region_ok(image, paths[1], int(h.get("NAXIS2", 0)))
    return True, ""


def observation_state(obsid: str, cfg: BatchConfig) -> dict:
    """What a run would do for ``obsid``, without locking or writing: ``{step: action}``.

    Actions are ``skip`` (outputs complete and valid), ``run`` or ``redo`` (outputs present
    but incomplete, invalid or stale). Used by ``--dry-run``. Raises ``PPSError`` when the
    image is to be made from ``--pps_dir`` and that holds no folder for ``obsid``.
    """
    plan: dict = {}
    image = _image_path(cfg, obsid)
    if cfg.pps_root is None:
        from .archive import pps_folder_is_complete
        done = pps_folder_is_complete(_obs_dir(cfg, obsid) / "pps", obsid)
        plan["download"] = "skip" if done and not cfg.overwrite else "run"
    ok, _ = fits_is_valid(image)
    plan["image"] = "skip" if ok and not cfg.overwrite else ("redo" if image.exists() else "run")
    upstream_runs = plan["image"] != "skip"
    if upstream_runs and cfg.pps_root is not None:
        _local_pps(cfg, obsid)   # a PPSError, as the real run would fail
    for which in cfg.which:
        paths = _pred_outputs(image, which, cfg.png)
        ok, _ = _prediction_ok(image, which, cfg)
        if ok and not upstream_runs and not cfg.overwrite:
            plan[which] = "skip"
        else:
            plan[which] = "redo" if any(p.exists() for p in paths) else "run"
    return plan


def _clean_temporaries(obs_dir: Path) -> int:
    """Remove what killed writers left under ``obs_dir``; returns the count. We hold the
    observation's lock, but a make_detxy_pn_image_pps.py or run_inference_on_real.py run
    beside the batch does not take it: its download folder stays while it holds the download
    lock (:func:`archive.remove_stale_downloads`), and its temporaries while it runs
    (:func:`fsmode.temporary_is_stale`)."""
    from .archive import remove_stale_downloads
    from .fsmode import temporary_is_stale

    if not obs_dir.is_dir():
        return 0
    n = remove_stale_downloads(obs_dir)
    for p in sorted(obs_dir.rglob(".*")):
        try:
            if p.is_file() and _TMP_RE.match(p.name) and temporary_is_stale(p):
                p.unlink()
                n += 1
        except OSError:
            pass
    return n


def _utc_formatter() -> logging.Formatter:
    """Log lines stamped in UTC with milliseconds and a ``Z`` (``2026-12-05T01:42:12.552Z``),
    as :func:`_utc` stamps the lock file and the report, whatever the local time zone."""
    fmt = logging.Formatter("%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: %(message)s",
                            "%Y-%m-%dT%H:%M:%S")
    fmt.converter = time.gmtime
    return fmt


class _ObsLogHandler(logging.handlers.RotatingFileHandler):
    """Per-observation log file; only records from the thread that works on it.

    Past :data:`LOG_MAX_BYTES` the file is renamed ``<name>.1`` and a new one begun. Attempts
    stay whole: the lines this attempt has written so far move to the new file with it (only
    an attempt that alone passes the limit is split). Only one process writes an
    observation's log at a time (it holds the observation's lock), so the renaming races with
    no other writer.
    """

    def __init__(self, path: Path):
        super().__init__(path, mode="a", maxBytes=LOG_MAX_BYTES, backupCount=1,
                         encoding="utf-8", errors="backslashreplace", delay=False)
        self.thread = threading.get_ident()
        self.setFormatter(_utc_formatter())
        self.addFilter(lambda r: r.thread == self.thread)
        self.failed = False
        self._start = self.stream.tell()   # where this attempt's lines begin

    def doRollover(self):
        if self.stream is None or self._start <= 0:
            super().doRollover()   # this attempt alone passes the limit: it is split
            self._start = 0
            return
        self.stream.flush()
        with open(self.baseFilename, "rb") as fh:
            fh.seek(self._start)
            current = fh.read()
        os.truncate(self.baseFilename, self._start)   # earlier attempts only, whole
        super().doRollover()
        self._start = 0
        if current:
            self.stream.write(current.decode("utf-8", "replace"))
            self.stream.flush()

    def handleError(self, record):
        """A log line that cannot be written (a full disk) is dropped, not printed with a
        traceback: the observation's outcome is in the report either way."""
        self.failed = True

    def close(self):
        try:
            super().close()
        except OSError:   # the last flush of a full disk
            self.failed = True


class _ToRootAtLevel(logging.Handler):
    """While the package logger is lowered to INFO for an observation's log file, passes on
    to the root logger's handlers only the records the user's level let through before, so
    that a library user (``logging.basicConfig(level=WARNING)``, a notebook) does not get the
    observation's INFO lines on the console."""

    def emit(self, record):
        root = logging.getLogger()
        if root.handlers:   # none: a command's own console handler is on the package logger
            root.callHandlers(record)


#: The package logger's level and propagation, and the warnings machinery, are process-wide:
#: observations worked on at once in threads (a Dask worker with several threads, a library
#: user's threads) share one setting, made by the first and undone by the last to finish.
_SHARED_LOCK = threading.Lock()
_LOG_STATE: dict = {"users": 0}
_WARN_STATE: dict = {"users": 0, "lists": {}}


@contextlib.contextmanager
def _observation_log(path: Path):
    """Send the package's log records (INFO and up) to ``path`` while the block runs."""
    pkg = logging.getLogger("xmm_enhance")
    handler = _ObsLogHandler(path)
    handler.setLevel(logging.INFO)
    with _SHARED_LOCK:
        if _LOG_STATE["users"] == 0:
            level, propagate, to_root = pkg.level, pkg.propagate, None
            effective = pkg.getEffectiveLevel()
            if effective > logging.INFO:
                pkg.setLevel(logging.INFO)
                if propagate:
                    to_root = _ToRootAtLevel(effective)
                    pkg.addHandler(to_root)
                    pkg.propagate = False
            _LOG_STATE["saved"] = (level, propagate, to_root)
        _LOG_STATE["users"] += 1
        pkg.addHandler(handler)
        _OBS_THREADS.add(handler.thread)
    try:
        yield
    finally:
        with _SHARED_LOCK:
            _OBS_THREADS.discard(handler.thread)
            pkg.removeHandler(handler)
            _LOG_STATE["users"] -= 1
            if _LOG_STATE["users"] == 0:
                level, propagate, to_root = _LOG_STATE.pop("saved")
                if to_root is not None:
                    pkg.removeHandler(to_root)
                pkg.propagate = propagate
                pkg.setLevel(level)
        handler.close()


#: Python warnings about the code rather than the data: logged at INFO, not relayed.
_CODE_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, ImportWarning)


@contextlib.contextmanager
def _warnings_to_log(obsid: str):
    """Log the Python warnings raised in the block by this thread (one line each, WARNING;
    those about the code, such as deprecations, at INFO) once it ends. Threads working on
    observations at once share one ``catch_warnings`` (see ``_SHARED_LOCK``); each gets its
    own warnings, and other threads' go where they went before."""
    tid = threading.get_ident()
    caught: list = []
    # procstate.LOCK: the library's own warnings blocks (in other threads) are not half-way
    with _SHARED_LOCK, procstate.LOCK:
        if _WARN_STATE["users"] == 0:
            cm = warnings.catch_warnings()
            cm.__enter__()
            warnings.simplefilter("always")
            before = warnings.showwarning
            lists = _WARN_STATE["lists"]

            def dispatch(message, category, filename, lineno, file=None, line=None):
                mine = lists.get(threading.get_ident())
                if mine is None:
                    before(message, category, filename, lineno, file, line)
                else:
                    mine.append(warnings.WarningMessage(message, category, filename, lineno,
                                                        file, line))

            warnings.showwarning = dispatch
            _WARN_STATE["cm"] = cm
        _WARN_STATE["users"] += 1
        _WARN_STATE["lists"][tid] = caught
    try:
        yield
    finally:
        with _SHARED_LOCK, procstate.LOCK:
            _WARN_STATE["lists"].pop(tid, None)
            _WARN_STATE["users"] -= 1
            if _WARN_STATE["users"] == 0:
                _WARN_STATE.pop("cm").__exit__(None, None, None)
        for w in caught:
            text = str(w.message).strip()
            level = (logging.INFO if issubclass(w.category, _CODE_WARNINGS)
                     else logging.WARNING)
            log.log(level, "OBS_ID %s: %s", obsid,
                    text.splitlines()[0] if text else w.category.__name__)


def _without_obsid(obsid: str, text: str) -> str:
    """``text`` without the ``OBS_ID <obsid>:`` / ``<obsid>:`` it may open with (the console
    line and the report row name the observation already)."""
    for _ in range(2):      # "OBS_ID 0123456789: 0123456789: requested 20 ks but..."
        text = re.sub(rf"^(OBS_ID )?{re.escape(obsid)}(:\s*|\s+(?=\S))", "", text)
    return text


class _WarningCollector(logging.Handler):
    """Keeps the one-line text of each distinct WARNING record of the thread working on an
    observation (at most :data:`MAX_WARNINGS`); errors are the result's ``error``."""

    def __init__(self, obsid: str, into: list):
        super().__init__(logging.WARNING)
        self.obsid, self.into, self.more = obsid, into, 0
        self.thread = threading.get_ident()

    def emit(self, record) -> None:
        if record.thread != self.thread or record.levelno != logging.WARNING:
            return
        try:
            text = record.getMessage().strip()
        except Exception:  # a malformed record: its format string alone
            text = str(record.msg).strip()
        text = _without_obsid(self.obsid, text.splitlines()[0] if text else "")
        if not text or text in self.into:
            return
        if len(self.into) < MAX_WARNINGS:
            self.into.append(text)
        else:
            self.more += 1


@contextlib.contextmanager
def _collect_warnings(obsid: str, into: list, log_path: Path):
    """Append the warnings logged by this thread in the block to ``into`` (see
    :class:`_WarningCollector`); needs the package logger at WARNING or below, as
    :func:`_observation_log` leaves it."""
    pkg = logging.getLogger("xmm_enhance")
    handler = _WarningCollector(obsid, into)
    pkg.addHandler(handler)
    try:
        yield
    finally:
        pkg.removeHandler(handler)
        if handler.more:
            into.append(f"{handler.more} more warning(s) in {log_path}")


def _archive_url(url: str | None):
    """:func:`xmm_enhance.archive.using_archive_url`, imported when used (the archive module
    brings astropy.io.fits, which importing the batch module does not need)."""
    from .archive import using_archive_url

    return using_archive_url(url)


def process_observation(obsid: str, cfg: BatchConfig) -> ObsResult:
    """Run image -> SR -> DN (-> PNGs) for one observation; never raises for its failures.

    Takes the observation's lock (returns status ``busy`` at once if another batch holds it),
    removes temporaries left by killed runs, skips every step whose outputs are complete and
    valid, and appends what it did to ``<save_dir>/<OBS_ID>/xmm_enhance_batch.log``.

    Parameters
    ----------
    obsid : str
        Ten-digit OBS_ID.
    cfg : BatchConfig

    Returns
    -------
    ObsResult
    """
    t0, c0 = time.perf_counter(), time.process_time()
    res = ObsResult(obsid=str(obsid), host=socket.gethostname(), pid=os.getpid(),
                    started_utc=_utc())
    if not re.fullmatch(r"[0-9]{10}", res.obsid):
        res.error = f"OBS_ID {obsid!r}: must be exactly 10 digits; fix the list"
        return res
    obs_dir = _obs_dir(cfg, obsid)
    created = not obs_dir.exists()
    try:
        obs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        res.error = (f"{obs_dir}: cannot create the observation folder ({exc.strerror}); "
                     "pass a writable --save_dir")
        return res
    log_path = obs_dir / LOG_NAME
    res.log = str(log_path)
    lock = ObservationLock(obs_dir / LOCK_NAME)
    try:
        taken = lock.acquire()
    except OSError as exc:
        res.error = f"{lock.path}: cannot take the lock ({exc}); check --save_dir"
        return res
    if not taken:
        res.status = "busy"
        res.error = f"locked by another batch ({lock.holder() or 'unknown holder'})"
        res.total_s = round(time.perf_counter() - t0, 3)
        return res
    try:
        with _observation_log(log_path), _collect_warnings(res.obsid, res.warnings, log_path):
            log.info("=== OBS_ID %s: batch attempt by pid %d on %s", obsid, res.pid, res.host)
            try:
                removed = _clean_temporaries(obs_dir)
                if removed:
                    log.info("OBS_ID %s: removed %d temporary file(s) left by a killed run",
                             obsid, removed)
                # astropy replaces warnings.showwarning when first imported: import it before
                # the warnings are caught, or the first observation's warnings escape.
                import astropy.io.fits  # noqa: F401
                with _warnings_to_log(obsid), _archive_url(cfg.archive_url):
                    _run_steps(obsid, cfg, res)
                res.status = "done"
                log.info("OBS_ID %s: done (%s) in %.1f s", obsid, res.steps,
                         time.perf_counter() - t0)
            except XmmEnhanceError as exc:
                res.error = _short_error(obsid, _one_line(exc))
                log.error("OBS_ID %s: failed: %s", obsid, res.error)
            except Exception as exc:  # a bug or an unexpected library error: keep the batch
                res.error = _short_error(obsid, _one_line(exc))
                log.error("OBS_ID %s: failed: %s\n%s", obsid, res.error,
                          traceback.format_exc().rstrip())
        if res.status == "failed":
            if res.image and not Path(res.image).is_file():
                res.image = ""                  # never point at an image that was not made
            # No PPS to be had (an OBS_ID unknown to the archive or to --pps_dir, the archive
            # unreachable): leave no folder behind that this run made only for its lock and
            # log. Later failures keep their log, for the diagnosis.
            if created and "pps" not in res.outputs and _remove_if_bookkeeping_only(obs_dir):
                res.log = ""                    # the error is in the report
    finally:
        lock.release()
        res.total_s = round(time.perf_counter() - t0, 3)
        res.cpu_s = round(time.process_time() - c0, 3)
        res.peak_rss_mb = _peak_rss_mb()
    return res


def _short_error(obsid: str, text: str) -> str:
    """``text`` without ``OBS_ID <obsid>`` where it opens the message or a bracketed cause
    (the report row and every line that shows the error already name the observation)."""
    return re.sub(rf"(^|\()OBS_ID {re.escape(str(obsid))}(?::\s*|\s+)", r"\1", text) or text


def _remove_if_bookkeeping_only(obs_dir: Path) -> bool:
    """Remove ``obs_dir`` if it holds nothing but this run's lock and log (a failed
    observation whose folder this run created, e.g. an OBS_ID unknown to the archive).

    Called under the observation's lock; returns whether the folder is gone.
    """
    try:
        if not set(os.listdir(obs_dir)) <= {LOCK_NAME, LOG_NAME}:
            return False
        for name in (LOG_NAME, LOCK_NAME):
            (obs_dir / name).unlink(missing_ok=True)
        obs_dir.rmdir()
    except OSError:                         # something appeared meanwhile: keep it
        return False
    return True


def _step(res: ObsResult, name: str, action: str, seconds: float = 0.0) -> None:
    res.steps = (res.steps + f" {name}:{action}").strip()
    if action == "ran":
        log.info("step %s: ran in %.2f s", name, seconds)
    else:
        log.info("step %s: %s", name, action)


def _run_steps(obsid: str, cfg: BatchConfig, res: ObsResult) -> None:
    from .pipeline import make_image

    image = _image_path(cfg, obsid)
    res.image = str(image)
    image_ok, why = fits_is_valid(image)
    if image_ok and not cfg.overwrite:
        if cfg.pps_root is None:
            _step(res, "download", "skipped")
        _step(res, "image", "skipped")
        image_ran = False
    else:
        if image.exists():
            log.info("OBS_ID %s: image %s will be remade (%s)", obsid, image.name,
                     why or "--overwrite")
        if cfg.pps_root is None:
            from .archive import download_pps, pps_folder_is_complete

            had = pps_folder_is_complete(_obs_dir(cfg, obsid) / "pps", obsid)
            t = time.perf_counter()
            try:
                pps = download_pps(obsid, cfg.save_dir, credentials_file=cfg.credentials_file,
                                   retries=cfg.retries, backoff_s=cfg.backoff_s)
            except Exception:
                # the time spent (retries and back-off waits included) is still reported
                res.download_s = round(time.perf_counter() - t, 3)
                _step(res, "download", "failed", res.download_s)
                raise
            res.download_s = round(time.perf_counter() - t, 3)
            if had:
                res.download_s = 0.0
                _step(res, "download", "skipped")
            else:
                _step(res, "download", "ran", res.download_s)
        else:
            pps = _local_pps(cfg, obsid)
        res.outputs["pps"] = str(pps)
        t = time.perf_counter()
        try:
            made = make_image(obsid, low_pi=cfg.low_pi, high_pi=cfg.high_pi,
                              expo_time_ks=cfg.expo_time_ks, binsize=cfg.binsize,
                              save_dir=_obs_dir(cfg, obsid), pps_dir=pps, backend=cfg.backend,
                              overwrite=True, credentials_file=cfg.credentials_file)
        except Exception:
            res.image_s = round(time.perf_counter() - t, 3)
            _step(res, "image", "failed", res.image_s)
            raise
        res.image_s = round(time.perf_counter() - t, 3)
        if Path(made.path) != image:  # less good time than --expo_time: the all-good-time name
            image = Path(made.path)
            res.image = str(image)
        ok, why = fits_is_valid(image)
        if not ok:
            from .errors import OutputError
            raise OutputError(f"OBS_ID {obsid}: the image {image} just written is not valid "
                              f"({why}); check the disk and rerun")
        _step(res, "image", "ran", res.image_s)
        image_ran = True
    res.exposure_s, res.counts = _image_summary(image)
    res.outputs["image"] = str(image)

    png_ran, first_error = False, None
    for which in cfg.which:
        # SR and DN are independent: one that fails (a broken model file, a PNG that cannot
        # be written) does not keep the other from running; the first error is raised after
        try:
            png_ran |= _prediction_step(obsid, cfg, res, image, which, image_ran)
        except XmmEnhanceError as exc:
            if f"{which}:" not in res.steps:
                _step(res, which, "failed")
            first_error = first_error or exc
    # one PNG per prediction, made (or not) with it; none to speak of when a prediction failed
    # before its PNG and no other made one (a PNG that failed has its own step already)
    if (cfg.png and cfg.which and "png:failed" not in res.steps
            and (png_ran or first_error is None)):
        _step(res, "png", "ran" if png_ran else "skipped", res.png_s)
    if first_error is not None:
        raise first_error


def _prediction_step(obsid: str, cfg: BatchConfig, res: ObsResult, image: Path, which: str,
                     image_ran: bool) -> bool:
    """The ``which`` prediction of ``image``, skipped when its outputs are complete; returns
    whether it made a quick-look PNG. A PNG that cannot be written marks the prediction as
    ran and the PNG as failed, and raises."""
    from .inference import enhance_file

    n = None   # rows of the SR prediction's SOURCES table, once read
    made_png = False
    paths = _pred_outputs(image, which, cfg.png)
    ok, why = _prediction_ok(image, which, cfg)
    if ok and not image_ran and not cfg.overwrite:
        _step(res, which, "skipped")
    else:
        if why and why.split(": ", 1)[-1] != "missing":
            log.info("OBS_ID %s: %s outputs will be remade (%s)", obsid, which, why)
        model = _model(which, cfg)
        t = time.perf_counter()
        out = enhance_file(image, which, model=model, overwrite=True, png=False,
                           min_signif=cfg.min_signif if which == "SR" else None)
        dt = time.perf_counter() - t
        if cfg.png:
            from .display import quicklook_png

            t = time.perf_counter()
            try:
                quicklook_png(out["result"], paths[-1], overwrite=True)
            except Exception:
                res.png_s = round(res.png_s + time.perf_counter() - t, 3)
                # the prediction itself was written: its step says so
                setattr(res, "sr_s" if which == "SR" else "dn_s", round(dt, 3))
                _step(res, which, "ran", dt)
                _step(res, "png", "failed", res.png_s)
                raise
            res.png_s = round(res.png_s + time.perf_counter() - t, 3)
            made_png = True
        del out
        ok, why = _outputs_ok(paths, newer_than=image, prediction=paths[1])
        n = source_count(paths[1]) if ok and which == "SR" else None
        if n is not None:
            ok, why = _region_ok(image, paths[1], n)
        if not ok:
            from .errors import OutputError
            raise OutputError(f"OBS_ID {obsid}: {which} output not valid after writing "
                              f"({why}); check the disk and rerun")
        setattr(res, "sr_s" if which == "SR" else "dn_s", round(dt, 3))
        _step(res, which, "ran", dt)
    res.outputs[which] = [str(p) for p in paths]
    if which == "SR":
        res.sr_sources = n if n is not None else source_count(paths[1])
        if res.sr_sources is not None:
            res.outputs[which].append(str(_region_path(image)))
    return made_png


def source_count(pred: Path) -> int | None:
    """Rows of the ``SOURCES`` table of an SR prediction file; None when it has none (a model
    without a source list)."""
    from .inference import prediction_headers

    h = prediction_headers(pred)[2]
    return None if h is None else int(h.get("NAXIS2", 0))


def _image_summary(image: Path) -> tuple[float | None, float | None]:
    """(EXPOSURE in s, total counts) of an image file."""
    import numpy as np
    from astropy.io import fits

    with fits.open(image, memmap=False) as hdul:
        for hdu in hdul:
            if hdu.is_image and hdu.data is not None and hdu.data.size:
                expo = hdu.header.get("EXPOSURE", hdul[0].header.get("EXPOSURE"))
                return (float(expo) if expo is not None else None,
                        float(np.asarray(hdu.data, dtype=np.float64).sum()))
    return None, None


# --------------------------------------------------------------------------------------------
# Many observations
# --------------------------------------------------------------------------------------------
def _failed(obsid: str, message: str) -> ObsResult:
    return ObsResult(obsid=obsid, status="failed", error=_short_error(obsid, message),
                     host=socket.gethostname(), started_utc=_utc())


def interrupted_result(obsid: str) -> ObsResult:
    """The report row of an observation that was asked for but had not finished when the
    batch was interrupted (SIGTERM, Ctrl-C): status ``interrupted``, so that a reader of the
    report does not take a stopped run for a complete one. Whatever it had begun is left
    consistent (no partial files, its lock dropped) and the next run takes it up again."""
    return ObsResult(obsid=str(obsid), status="interrupted",
                     error="not finished: the batch was interrupted (SIGTERM or Ctrl-C); "
                           "rerun it", host=socket.gethostname())


#: prctl(2) option: the signal this process gets when its parent ends (Linux).
_PR_SET_PDEATHSIG = 1
#: Exit status of a worker that stops because the batch process that started it died.
_ORPHAN_EXIT = 70


def _die_with_parent(parent_pid: int, *, pdeathsig: bool = True) -> None:
    """End this process as soon as ``parent_pid`` (the process that started it) ends.

    A worker that outlives its batch process (``kill -9`` of the parent alone, as a cron
    ``timeout -s KILL`` does) would hold its observation's lock, so that the next run finds
    it ``busy``, and then idle for good. Two guards, both cheap:

    * on Linux, ``prctl(PR_SET_PDEATHSIG, SIGKILL)``: the kernel kills this process when its
      parent dies (``pdeathsig=False`` leaves it out, to test the other guard alone);
    * everywhere, a daemon thread that blocks on the multiprocessing parent sentinel (a pipe
      whose write end only the parent holds, so it reads EOF when the parent is gone; without
      one, it checks ``os.getppid()`` every 0.5 s) and then calls ``os._exit``.

    Either way the kernel then drops the process's ``flock``; the temporaries it leaves are
    removed by the next run that takes the observation's lock.
    """
    import multiprocessing

    if pdeathsig and sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # no usable libc: the watchdog alone guards
            pass
    # The parent may have died before the guards were in place (the kernel does not signal
    # for a death that already happened).
    if os.getppid() != parent_pid:
        os._exit(_ORPHAN_EXIT)
    parent = multiprocessing.parent_process()

    def watch() -> None:
        if parent is not None and parent.pid == parent_pid:
            parent.join()                   # returns when the parent's end of the pipe closes
        else:
            while os.getppid() == parent_pid:
                time.sleep(0.5)
        os._exit(_ORPHAN_EXIT)

    threading.Thread(target=watch, name="xmm-enhance-parent-watchdog", daemon=True).start()


def _worker_init(parent_pid: int | None = None, pdeathsig: bool = True) -> None:
    """Initializer of pool workers: die with ``parent_pid``, quiet console, heavy imports."""
    if parent_pid is not None:
        _die_with_parent(parent_pid, pdeathsig=pdeathsig)
    # Worker processes only report through their results and observation logs; keep the
    # console quiet from them (the parent prints progress).
    logging.getLogger().setLevel(logging.WARNING)
    # Import the heavy modules now, so that the first observation's step times do not
    # include them.
    from .fsmode import prepare_matplotlib

    prepare_matplotlib()
    with contextlib.suppress(ImportError):
        import astropy.io.fits  # noqa: F401
        import matplotlib.figure  # noqa: F401
        import onnxruntime  # noqa: F401

        from . import display, inference, pipeline  # noqa: F401


def run_batch(obsids, cfg: BatchConfig, *, jobs: int = 1, scheduler: str | None = None,
              on_result=None, task=None) -> list[ObsResult]:
    """Process ``obsids``; return one :class:`ObsResult` each, in the order of ``obsids``.

    Parameters
    ----------
    obsids : sequence of str
    cfg : BatchConfig
    jobs : int
        Observations in parallel: 1 runs them in this process, N > 1 in a pool of N worker
        processes. Ignored with ``scheduler``.
    scheduler : str, optional
        Address of a running ``dask.distributed`` scheduler (``tcp://host:8786``): the tasks
        go to its workers instead (which must see ``save_dir`` at the same path).
    on_result : callable, optional
        Called as ``on_result(result)`` in this process as each observation finishes.
    task : callable, optional
        ``task(obsid, cfg) -> ObsResult`` run per observation (default
        :func:`process_observation`); must be importable by the workers.

    Notes
    -----
    In a local pool, a worker process that dies (killed, out of memory) breaks the pool; the
    observations the pool still held are run again, each in a process of its own, so only the
    one that kills its process is marked failed.

    Raises
    ------
    UsageError
        ``jobs < 1``, dask.distributed missing or a malformed scheduler address.
    XmmEnhanceError
        The scheduler cannot be reached (exit code 1).
    KeyboardInterrupt
        Passed on after pending tasks are cancelled; ``on_result`` has seen the finished ones.
    """
    if isinstance(obsids, (str, bytes, os.PathLike)):
        raise UsageError(f"obsids: pass a list of OBS_IDs, not the one string {obsids!r} "
                         "(read a list file with read_obsid_list([path]))")
    obsids = list(obsids)
    odd = [o for o in obsids if not isinstance(o, str)]
    if odd:
        raise UsageError(f"obsids: {odd[0]!r} is not a string; pass OBS_IDs as ten-digit "
                         "strings (an int loses its leading zeros)")
    if not isinstance(jobs, int) or jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {jobs}")
    task = task or process_observation
    archive = sys.modules.get("xmm_enhance.archive")   # not imported just for this
    if archive is not None:
        archive.archive_answers_again()   # an outage of an earlier run is not this run's
    results: dict[str, ObsResult] = {}

    def record(r: ObsResult) -> None:
        results[r.obsid] = r
        if on_result is not None:
            on_result(r)

    if scheduler:
        _run_dask(obsids, cfg, scheduler, record, task)
    elif jobs == 1 or len(obsids) <= 1:
        for o in obsids:
            try:
                r = task(o, cfg)
            except Exception as exc:  # e.g. its log file cannot be opened (disk full)
                r = _failed(o, _one_line(exc))
            record(r)
    else:
        _run_pool(obsids, cfg, jobs, record, task)
    return [results[o] for o in obsids if o in results]


def _run_pool(obsids, cfg, jobs, record, task) -> None:
    """Run ``task`` over ``obsids`` in a pool of ``jobs`` spawned worker processes.

    A worker that dies (OOM killer, segfault) breaks the whole pool and every observation that
    was still queued in it. Those are then run again each in a process of its own (``jobs`` at
    a time), so that only the observation that kills its process is marked failed.
    """
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    ctx = multiprocessing.get_context("spawn")  # no fork of a threaded parent
    ex = ProcessPoolExecutor(max_workers=min(jobs, len(obsids)), mp_context=ctx,
                             initializer=_worker_init, initargs=(os.getpid(),))
    futures = {}
    broken = []
    try:
        futures = {ex.submit(task, o, cfg): o for o in obsids}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                o = futures[f]
                try:
                    r = f.result()
                except BrokenProcessPool:
                    broken.append(o)
                    continue
                except Exception as exc:  # pickling trouble and the like
                    r = _failed(o, _one_line(exc))
                record(r)   # an on_result that raises stops the run, as with one job
    except BaseException:
        # Interrupted (SIGTERM, Ctrl-C): stop the workers now. Tasks already handed to them
        # cannot be cancelled, and the pool would otherwise start them after the report
        # called them unfinished. What a killed worker leaves (temporaries, no lock: flock
        # dies with its process) the next run cleans up. The futures are not cancelled: the
        # pool marks them broken itself (cancelled ones make its manager thread fail with
        # InvalidStateError on Python 3.11).
        _stop_pool(ex)
        raise
    ex.shutdown(wait=True)
    if not broken:
        return
    broken = [o for o in obsids if o in set(broken)]
    log.warning("warning: a worker process died; running the %d observation(s) its pool "
                "still held each in a process of its own", len(broken))

    from concurrent.futures import ThreadPoolExecutor

    live, live_lock = set(), threading.Lock()   # the one-process pools at work now

    def isolated(o):
        with ProcessPoolExecutor(max_workers=1, mp_context=ctx, initializer=_worker_init,
                                 initargs=(os.getpid(),)) as one:
            with live_lock:
                live.add(one)
            try:
                return one.submit(task, o, cfg).result()
            except BrokenProcessPool:
                return _failed(o, "its worker process died (killed, or out of memory); see "
                                  "its log, rerun it alone or with a lower --jobs")
            except Exception as exc:
                return _failed(o, _one_line(exc))
            finally:
                with live_lock:
                    live.discard(one)

    threads = ThreadPoolExecutor(max_workers=min(jobs, len(broken)))
    try:
        for r in threads.map(isolated, broken):
            record(r)
    except BaseException:
        # interrupted here too: stop the one-process pools at once, as the main pool above
        threads.shutdown(wait=False, cancel_futures=True)
        with live_lock:
            pools = list(live)
        for one in pools:
            _stop_pool(one)
        raise
    threads.shutdown(wait=True)


def _stop_pool(ex) -> None:
    """Stop a ProcessPoolExecutor's workers now (terminate, then kill after 5 s) and shut it
    down without waiting. Tasks handed to them cannot be cancelled otherwise, and the pool
    would start them after the report called them unfinished."""
    procs = list((getattr(ex, "_processes", None) or {}).values())
    for proc in procs:
        with contextlib.suppress(Exception):
            proc.terminate()
    for proc in procs:
        with contextlib.suppress(Exception):
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
    ex.shutdown(wait=False)


#: Seconds to connect to a Dask scheduler (handshake included) before giving up.
DASK_CONNECT_S = 30.0
#: Seconds a Dask run waits with no worker at all before it fails the unfinished observations.
DASK_NO_WORKER_S = 600.0

#: A scheduler address: optional protocol, a host name, IPv4 or [IPv6] address, and a port.
_DASK_ADDRESS = re.compile(r"^(?:(?:tcp|tls|ws|wss|ucx)://)?(?:[^\s/:\[\]]+|\[[0-9A-Fa-f:.]+\])"
                           r":\d+$")


async def _dask_identity(address: str, timeout: float) -> dict:
    """The reply of whatever listens at ``address`` to the scheduler's ``identity`` call."""
    from distributed.comm import connect

    comm = await connect(address, timeout=timeout)
    try:
        await comm.write({"op": "identity", "reply": True})
        return await comm.read()
    finally:
        await comm.close()


def check_dask_address(address: str) -> str:
    """The scheduler address, stripped; UsageError when it is not one (``tcp://host:port``):
    the command line checks it before any observation starts."""
    address = str(address).strip().rstrip("/")
    if not _DASK_ADDRESS.match(address):
        raise UsageError(f"--dask-scheduler (scheduler=) {address}: not a scheduler address; "
                         "pass one like tcp://host:8786")
    return address


def _dask_client(Client, address: str):
    """A ``distributed.Client`` of the scheduler at ``address``, or a one-line error within
    about ``DASK_CONNECT_S``.

    The address is first asked who it is, in a daemon thread with a deadline: an address
    that answers but is no scheduler (the dashboard's port, an HTTP server) stalls Client's
    handshake past its own timeout, and a Client that fails half-built blocks the exit for a
    minute in its ``__del__``. Only a scheduler gets a Client.
    """
    address = check_dask_address(address)
    box: dict = {}

    def probe():
        try:
            box["reply"] = asyncio.run(asyncio.wait_for(_dask_identity(address, DASK_CONNECT_S),
                                                        DASK_CONNECT_S + 2.0))
        except BaseException as exc:   # OSError, TimeoutError, a junk reply's MemoryError...
            box["error"] = exc

    t = threading.Thread(target=probe, name="xmm-enhance-dask-probe", daemon=True)
    t.start()
    t.join(DASK_CONNECT_S + 5.0)
    reply, exc = box.get("reply"), box.get("error")
    if isinstance(reply, dict) and reply.get("type") == "Scheduler":
        try:
            return Client(address, timeout=f"{DASK_CONNECT_S:g}s", set_as_default=False)
        except Exception as err:
            exc = err
    if exc is not None:
        why = _one_line(exc)
    elif reply is not None:
        why = f"it answers, but is not a Dask scheduler ({repr(reply)[:80]})"
    else:
        why = f"no answer within {DASK_CONNECT_S + 5:g} s"
    raise XmmEnhanceError(f"--dask-scheduler (scheduler=) {address}: cannot connect ({why}); "
                          "check the address (the scheduler's port, usually 8786, not the "
                          "dashboard's) and that the scheduler runs") from None


def _bounded(fn, timeout: float, default=None):
    """``fn()`` in a daemon thread: its result, or ``default`` when it raises or does not return
    within ``timeout`` s. A frozen scheduler (stopped, or a network split that keeps the
    connection open) never answers the client's synchronous calls, and the batch must still
    end with its report."""
    box: dict = {}

    def run():
        try:
            box["v"] = fn()
        except Exception:  # noqa: BLE001 - any failure is "no answer"
            pass

    t = threading.Thread(target=run, name="xmm-enhance-dask-call", daemon=True)
    t.start()
    t.join(timeout)
    return box.get("v", default)


def _close_client(client, lost: bool) -> None:
    """Close a Dask client within a bounded time. When the scheduler is gone (``lost``),
    closing cancels distributed's reconnect, which logs a traceback through
    ``distributed.client``: a batch has said what happened in one line, so that logger is
    muted for the close."""
    lg = logging.getLogger("distributed.client")
    level = lg.level
    if lost:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        _bounded(lambda: client.close(timeout=DASK_CONNECT_S), DASK_CONNECT_S + 5.0)
    finally:
        lg.setLevel(level)


def _run_dask(obsids, cfg, address, record, task) -> None:
    try:
        from distributed import Client, wait
    except ImportError:
        raise UsageError("--dask-scheduler (scheduler=) needs dask.distributed; install it with "
                         "pip install 'xmm-enhance[batch]'") from None
    client = _dask_client(Client, address)
    futures = []
    lost = False
    try:
        # workers live longer than one run: a new run starts afresh with the archive on them
        # too (archive.archive_answers_again, as run_batch does here), not with an outage an
        # earlier run met there
        from . import archive as _archive

        _bounded(lambda: client.run(_archive.archive_answers_again), DASK_CONNECT_S)
        token = f"{os.getpid()}-{time.time_ns()}"
        futures = [client.submit(task, o, cfg, key=f"xmm-enhance-{o}-{token}",
                                 pure=False, retries=0) for o in obsids]
        by_key = {f.key: o for f, o in zip(futures, obsids)}
        pending = set(futures)
        no_worker_since = None
        while pending:
            # distributed raises asyncio's TimeoutError (not the builtin one before 3.11)
            done = set()
            try:
                with client.as_current(), contextlib.suppress(TimeoutError,
                                                              asyncio.TimeoutError):
                    done, pending = wait(pending, timeout=min(60.0, DASK_NO_WORKER_S),
                                         return_when="FIRST_COMPLETED")
            except Exception as exc:  # the scheduler is gone: FuturesCancelledError, ...
                lost = True
                why = _one_line(exc)
                log.warning("warning: lost the Dask scheduler %s (%s); the %d unfinished "
                            "observation(s) are marked failed", address, why, len(pending))
                for f in pending:
                    record(_failed(by_key[f.key], f"lost the Dask scheduler before this "
                                   f"observation's result came back ({why}); rerun the batch "
                                   "(finished steps are skipped)"))
                pending = set()
                break
            for f in done:
                o = by_key[f.key]
                try:
                    record(f.result())
                except Exception as exc:  # KilledWorker, CommClosedError, ...
                    record(_failed(o, f"the Dask task failed ({_one_line(exc)}); rerun the "
                                      "batch"))
                f.release()   # a lost worker's finished tasks are not computed again
            if not pending or done:
                no_worker_since = None
                continue
            # a scheduler that does not answer (gone, or frozen) has no worker for this run
            info = _bounded(client.scheduler_info, DASK_CONNECT_S, default={})
            n_workers = len(info.get("workers", {})) if isinstance(info, dict) else 0
            if n_workers:
                no_worker_since = None
                continue
            no_worker_since = no_worker_since or time.monotonic()
            if time.monotonic() - no_worker_since >= DASK_NO_WORKER_S:
                log.warning("warning: the Dask scheduler %s has had no worker for %.0f s; "
                            "the %d unfinished observation(s) are marked failed", address,
                            DASK_NO_WORKER_S, len(pending))
                for f in pending:
                    record(_failed(by_key[f.key], f"no Dask worker for {DASK_NO_WORKER_S:.0f}"
                                   " s; start workers (dask worker ADDRESS) and rerun"))
                _bounded(lambda: client.cancel(list(pending)), DASK_CONNECT_S)
                pending = set()
    except BaseException:
        _bounded(lambda: client.cancel(futures), DASK_CONNECT_S)
        raise
    finally:
        _close_client(client, lost)


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------
def _row(r: ObsResult) -> dict:
    """The CSV row of ``r`` (None as "", the warnings joined with `` | ``)."""
    d = asdict(r)
    d["warnings"] = " | ".join(d["warnings"])
    return {k: ("" if d[k] is None else d[k]) for k in REPORT_FIELDS}


def _atomic_text(path: Path, text: str) -> None:
    from .fsmode import temp_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file(path)
    try:
        # surrogateescape: a path with bytes that are not UTF-8 (a Latin-1 folder name) is
        # written as the file system has it, instead of failing the report
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape", newline="") as fh:
            fh.write(text)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):   # must not hide the first error
            Path(tmp).unlink()
        raise


def default_report_path(save_dir, started_utc: str, pid: int | None = None) -> Path:
    """``<save_dir>/reports/batch_<started_utc>_<pid>`` (no suffix), where a run's report goes
    without ``--report``; ``started_utc`` as ``20261128T021500Z``, ``pid`` this process's by
    default."""
    pid = os.getpid() if pid is None else pid
    return Path(save_dir) / "reports" / f"batch_{started_utc}_{pid}"


def write_report(results, path, *, meta: dict | None = None, latest: bool = False
                 ) -> tuple[Path, Path]:
    """Write the report as ``<path>.csv`` and ``<path>.json`` (atomically); return both paths.

    ``path`` may end in ``.csv`` or ``.json`` (the other is written beside it) or have no such
    suffix. The JSON holds ``meta`` (command, start, end...), ``totals`` (observations per
    status) and one object per observation with the CSV's columns plus ``outputs``, and its
    ``warnings`` as a list. ``latest``: also write the same two files as ``latest.csv`` and
    ``latest.json`` in the same folder, a stable name for the newest report (copies, each
    replaced atomically, so they are safe on network file systems where symlinks are not).
    """
    path = Path(path)
    base = path.with_suffix("") if path.suffix.lower() in (".csv", ".json") else path
    p_csv, p_json = Path(f"{base}.csv"), Path(f"{base}.json")
    try:
        return _write_report(results, p_csv, p_json, meta, latest)
    except OSError as exc:
        # no half report: neither this run's pair nor a latest.* that a reader would take for
        # the newest run
        stale = [p_csv.with_name(f"{LATEST_REPORT}{e}") for e in (".csv", ".json")]
        for p in [p_csv, p_json] + (stale if latest else []):
            with contextlib.suppress(OSError):
                p.unlink()
        from .errors import OutputError
        if latest:
            left = [p.name for p in stale if p.exists()]
            what = (f"; {' and '.join(left)} could not be removed either: they are an older "
                    "run's" if left else "; latest.csv/.json removed, so that no older run "
                    "passes for this one")
        else:
            what = ""
        fix = ("free disk space" if exc.errno in (errno.ENOSPC, errno.EDQUOT)
               else "make the folder writable" if exc.errno in (errno.EACCES, errno.EPERM,
                                                                errno.EROFS)
               else "fix that")
        raise OutputError(f"{p_csv}: cannot write the report ({exc.strerror or exc}){what}; "
                          f"{fix} and rerun (finished observations are skipped)") from None


def _write_report(results, p_csv: Path, p_json: Path, meta, latest) -> tuple[Path, Path]:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=REPORT_FIELDS, lineterminator="\n")
    w.writeheader()
    for r in results:
        w.writerow(_row(r))
    _atomic_text(p_csv, buf.getvalue())
    counts: dict = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    doc = {"meta": meta or {}, "totals": counts,
           "observations": [dict(_row(r), outputs=r.outputs, warnings=list(r.warnings))
                            for r in results]}
    text_json = json.dumps(doc, indent=1, default=str) + "\n"
    _atomic_text(p_json, text_json)
    if latest:
        _atomic_text(p_csv.with_name(f"{LATEST_REPORT}.csv"), buf.getvalue())
        _atomic_text(p_csv.with_name(f"{LATEST_REPORT}.json"), text_json)
    return p_csv, p_json


def prune_reports(folder, keep: int | None = None, *, current=None) -> list[Path]:
    """Delete all but the newest ``keep`` (default :data:`REPORTS_KEPT`) runs' default reports
    in ``folder``.

    Only files named like the default reports (``batch_<UTC>_<pid>.csv`` / ``.json``, see
    :func:`default_report_path`) are considered; anything else in the folder (``latest.*``,
    reports written with ``--report``, the user's own files) is never touched. A run is one
    ``batch_<UTC>_<pid>`` name (its CSV and JSON go together); runs are ordered by the UTC
    time in the name. ``current`` (a report path of this run) is kept whatever its time (a
    long run may end after newer ones started). A file that cannot be deleted is left with a
    warning: pruning never fails a batch.

    Returns
    -------
    list of Path
        The files deleted.
    """
    keep = REPORTS_KEPT if keep is None else int(keep)
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    folder = Path(folder)
    keep_base = None
    if current is not None:
        current = Path(current)
        keep_base = (current.with_suffix("") if current.suffix.lower() in (".csv", ".json")
                     else current).name
    runs: dict = {}
    try:
        entries = list(os.scandir(folder))
    except OSError as exc:
        log.warning("warning: %s: cannot list the reports to prune them (%s)", folder,
                    exc.strerror)
        return []
    for e in entries:
        m = _REPORT_RE.match(e.name)
        if m is None or e.is_dir(follow_symlinks=False):
            continue
        base = e.name.rsplit(".", 1)[0]
        runs.setdefault(base, (m.group(1), int(m.group(2)), []))[2].append(Path(e.path))
    newest_first = sorted(runs, key=lambda b: runs[b][:2], reverse=True)
    kept = set(newest_first[:keep]) | ({keep_base} if keep_base else set())
    deleted = []
    for base in newest_first:
        if base in kept:
            continue
        for path in runs[base][2]:
            try:
                path.unlink()
                deleted.append(path)
            except FileNotFoundError:       # another run pruned it meanwhile
                pass
            except OSError as exc:
                log.warning("warning: %s: cannot delete this old report (%s); delete it by "
                            "hand", path, exc.strerror)
    if deleted:
        log.info("reports: deleted %d file(s) of runs older than the newest %d in %s",
                 len(deleted), keep, folder)
    return deleted


def summary_table(results, *, max_rows: int = 40) -> str:
    """A plain-text table of the results: one row per observation (failures first when the
    list is long), then the totals.

    The time columns are seconds: ``image`` (the download's included), ``SR``, ``DN``,
    ``PNG`` (the quick-look PNGs of both) and ``total``, the observation's whole wall clock
    (all of those, plus checks and bookkeeping)."""
    results = list(results)
    width = max([6] + [len(r.status) for r in results])     # "interrupted" too
    head = (f"{'OBS_ID':10s}  {'status':{width}s}  {'image':>7s}  {'SR':>7s}  {'DN':>7s}  "
            f"{'PNG':>7s}  {'total':>7s}  {'expo ks':>7s}  {'counts':>8s}  error")
    lines = [head, "-" * len(head)]
    ordered = sorted(results, key=lambda r: (r.status == "done", r.status == "busy"))
    for r in (results if len(results) <= max_rows else ordered[:max_rows]):
        # a malformed line of a list file is a row too (its text, shortened, as the OBS_ID)
        obsid = r.obsid if len(r.obsid) <= 10 else r.obsid[:9] + "~"
        expo = f"{r.exposure_s / 1e3:.1f}" if r.exposure_s else "-"
        cnt = f"{r.counts:.0f}" if r.counts is not None else "-"
        err = r.error if len(r.error) <= 90 else r.error[:87] + "..."
        lines.append(f"{obsid:10s}  {r.status:{width}s}  {r.download_s + r.image_s:7.1f}  "
                     f"{r.sr_s:7.1f}  {r.dn_s:7.1f}  {r.png_s:7.1f}  {r.total_s:7.1f}  "
                     f"{expo:>7s}  {cnt:>8s}  {err}")
    if len(results) > max_rows:
        lines.append(f"... {len(results) - max_rows} more rows in the report")
    n = {s: sum(r.status == s for r in results)
         for s in ("done", "failed", "busy", "interrupted")}
    lines.append("-" * len(head))
    lines.append(f"{len(results)} observations: {n['done']} done, {n['failed']} failed, "
                 f"{n['busy']} busy (locked by another batch)"
                 + (f", {n['interrupted']} interrupted (not finished)"
                    if n["interrupted"] else ""))
    return "\n".join(lines)
