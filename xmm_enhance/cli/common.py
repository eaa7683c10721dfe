"""Pieces shared by the command-line entry points: names, versions, logging, error mapping.

Every command (``make_detxy_pn_image_pps.py``, ``run_inference_on_real.py``, ``xmm-enhance
image|infer|batch|demo``) uses these, so that the same option means the same thing:

- ``-q/--quiet``: warnings and errors only (no progress or result lines);
- ``-v/--verbose``: debug messages as well;
- ``--version``: ``xmm_enhance <version>``;
- usage errors exit 2, run-time failures 1, each with one line on stderr.

A command's ``prog`` (shown in its usage and error lines) is how it was invoked:
:func:`command_prog` gives ``xmm-enhance <command>`` when the ``xmm-enhance`` dispatcher runs
it (inside :func:`invoked_as`), else the command's own script name.
"""
from __future__ import annotations

import contextlib
import logging
import math
import sys
import warnings

from ..errors import UsageError, XmmEnhanceError

__all__ = ["setup_logging", "add_verbosity", "add_version", "report_error", "command_prog",
           "invoked_as", "QUIET_HELP", "VERBOSE_HELP", "version_text", "MIN_SIGNIF_HELP",
           "check_min_signif", "ensure_std_streams", "cwd_gone_is_one_line"]

MIN_SIGNIF_HELP = ("SR: list point sources of at least this significance (PSF-fit likelihood "
                   "ratio on the input counts, 3 degrees of freedom; default 4.5: false "
                   "entries rare; lower finds more faint sources and more noise peaks; 3-100)")


def ensure_std_streams() -> None:
    """Give a command started with stdin, stdout or stderr closed (``2>&-`` in a crontab, a
    daemon) a /dev/null in their place, at the file-descriptor level too.

    Python then sets ``sys.stderr`` to None, and code that asks it ``isatty()`` fails before
    anything is done. Worse, the first file the command opens would get descriptor 2, and
    anything a library writes to "stderr" would land in that file. Called first by every
    command's ``main``.
    """
    import os

    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            new = os.open(os.devnull, os.O_RDWR)  # the lowest free descriptor: this one
            if new != fd:
                os.dup2(new, fd)
                os.close(new)
    for name, fd, mode in (("stdin", 0, "r"), ("stdout", 1, "w"), ("stderr", 2, "w")):
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, mode, closefd=False, errors="backslashreplace"))


@contextlib.contextmanager
def cwd_gone_is_one_line(prog: str):
    """A command run from a folder that was deleted meanwhile fails with a traceback where it
    resolves a relative path (the default ``--save_dir .``). Inside: that becomes one line
    and exit 2 (raised as SystemExit), naming the fix."""
    import os

    try:
        yield
    except FileNotFoundError:
        try:
            os.getcwd()
        except FileNotFoundError:
            print(f"{prog}: error: the current folder no longer exists (deleted while the "
                  "shell was in it); cd to an existing folder, or give absolute paths",
                  file=sys.stderr)
            raise SystemExit(2) from None
        raise


def check_min_signif(value, which) -> None:
    """Raise UsageError unless ``value`` (``--min-signif``, None when not given) is a valid SR
    list threshold for the predictions ``which``."""
    if value is None:
        return
    if "SR" not in which:
        raise UsageError("--min-signif applies to SR predictions (DN lists no sources)")
    from ..imageargs import MIN_SIGNIF_RANGE

    lo, hi = MIN_SIGNIF_RANGE
    if not (math.isfinite(value) and lo <= value <= hi):
        raise UsageError(f"--min-signif must be between {lo:g} and {hi:g} sigma, got {value}")

QUIET_HELP = "quiet: print only warnings and errors"
VERBOSE_HELP = "verbose: print debug messages too"

_INVOKED_AS: list = []


@contextlib.contextmanager
def invoked_as(prog: str):
    """Within this block :func:`command_prog` returns ``prog`` (used by ``xmm-enhance``)."""
    _INVOKED_AS.append(prog)
    try:
        yield
    finally:
        _INVOKED_AS.pop()


def command_prog(default: str) -> str:
    """The name to show in usage lines: the dispatcher's (``xmm-enhance image``) or
    ``default`` (the root script's name, e.g. ``make_detxy_pn_image_pps.py``)."""
    return _INVOKED_AS[-1] if _INVOKED_AS else default


def version_text() -> str:
    from .. import __version__

    return f"xmm_enhance {__version__}"


def add_version(parser) -> None:
    """``--version``: print ``xmm_enhance <version>`` and exit 0."""
    parser.add_argument("--version", action="version", version=version_text(),
                        help="print the xmm_enhance version and exit")


def add_verbosity(parser) -> None:
    """``-q`` (warnings and errors only) and ``-v`` (debug too), mutually exclusive."""
    g = parser.add_mutually_exclusive_group()
    g.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)
    g.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    text = str(message).splitlines()[0] if str(message) else category.__name__
    print(f"warning: {text}", file=sys.stderr)


class _LevelPrefixFormatter(logging.Formatter):
    """Warnings and errors logged by the library read as the commands' own ``warning:`` /
    ``error:`` lines (a cron log is grepped for them); info and debug lines stay bare."""

    def format(self, record):
        text = super().format(record)
        if record.levelno >= logging.WARNING:
            word = "error" if record.levelno >= logging.ERROR else "warning"
            if not text.lower().startswith(("warning", "error")):
                text = f"{word}: {text}"
        return text


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the message (tests swap it)."""

    _xmm_enhance_cli = True

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ assigns it; ignore
        pass


def setup_logging(args) -> None:
    """Configure the ``xmm_enhance`` logger from -q/-v (only the CLIs do this).

    ``-q``: WARNING (warnings and errors only); default INFO; ``-v``: DEBUG. Python warnings
    are printed as one line each at every level (``-q`` keeps them: a cron job must still hear
    that an image is shorter than asked for).

    One handler on the package logger (replaced, not added, on repeated calls); the root logger
    and other libraries' loggers are left alone, and records still propagate (so pytest's caplog
    sees them).
    """
    level = logging.WARNING if getattr(args, "quiet", False) else (
        logging.DEBUG if getattr(args, "verbose", False) else logging.INFO)
    logger = logging.getLogger("xmm_enhance")
    for h in [h for h in logger.handlers if getattr(h, "_xmm_enhance_cli", False)]:
        logger.removeHandler(h)
    handler = _StderrHandler()
    handler.setFormatter(_LevelPrefixFormatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    warnings.showwarning = _one_line_warning


def report_error(exc: BaseException) -> int:
    """Print ``exc`` as one line on stderr; return the exit code it maps to."""
    if isinstance(exc, XmmEnhanceError):
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    text = str(exc).splitlines()[0] if str(exc) else ""
    print(f"error: {type(exc).__name__}: {text}", file=sys.stderr)
    return 1


def file_option_error(opt: str, path, fix: str) -> str | None:
    """The one-line problem of a command-line option that should name a file (``{opt} {path}:
    a folder|no such file; {fix}``), or None when it does."""
    from pathlib import Path

    p = Path(path)
    if p.is_file():
        return None
    return f"{opt} {p}: {'a folder' if p.is_dir() else 'no such file'}; {fix}"


def interruptible(call, message: str = "interrupted") -> int:
    """``call()`` (a command's body, returning its exit code) under :func:`sigterm_as_interrupt`:
    Ctrl-C or SIGTERM prints ``message`` on stderr and gives 130 (the temporaries are gone by
    then, and no final file is half-written)."""
    with sigterm_as_interrupt():
        try:
            return call()
        except KeyboardInterrupt:
            print(message, file=sys.stderr)
            return 130


@contextlib.contextmanager
def sigterm_as_interrupt():
    """While inside: SIGTERM (``kill``, cron and batch systems stopping a job) raises
    KeyboardInterrupt in the main thread, as Ctrl-C does, so that the command cleans up its
    temporary files and exits 130 instead of dying with them on disk. The previous handler
    is put back on exit (nothing is changed outside the main thread)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigterm(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
