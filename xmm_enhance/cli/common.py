"""Pieces shared by the command-line entry points: logging set-up and error mapping."""
from __future__ import annotations

import logging
import sys
import warnings

from ..errors import XmmEnhanceError

__all__ = ["setup_logging", "add_verbosity", "report_error"]


def add_verbosity(parser) -> None:
    g = parser.add_mutually_exclusive_group()
    g.add_argument("-q", "--quiet", action="store_true", help="only errors")
    g.add_argument("-v", "--verbose", action="store_true", help="debug messages")


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    text = str(message).splitlines()[0] if str(message) else category.__name__
    print(f"warning: {text}", file=sys.stderr)


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

    One handler on the package logger (replaced, not added, on repeated calls); the root logger
    and other libraries' loggers are left alone, and records still propagate (so pytest's caplog
    sees them). Warnings are printed as one line each.
    """
    level = logging.ERROR if getattr(args, "quiet", False) else (
        logging.DEBUG if getattr(args, "verbose", False) else logging.INFO)
    logger = logging.getLogger("xmm_enhance")
    for h in [h for h in logger.handlers if getattr(h, "_xmm_enhance_cli", False)]:
        logger.removeHandler(h)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    if getattr(args, "quiet", False):
        warnings.simplefilter("ignore")
    warnings.showwarning = _one_line_warning


def report_error(exc: BaseException) -> int:
    """Print ``exc`` as one line on stderr; return the exit code it maps to."""
    if isinstance(exc, XmmEnhanceError):
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    text = str(exc).splitlines()[0] if str(exc) else ""
    print(f"error: {type(exc).__name__}: {text}", file=sys.stderr)
    return 1
