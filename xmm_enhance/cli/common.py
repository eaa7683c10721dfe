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


def setup_logging(args) -> None:
    """Configure the root logger from -q/-v (only the CLI does this); warnings one line each."""
    level = logging.ERROR if getattr(args, "quiet", False) else (
        logging.DEBUG if getattr(args, "verbose", False) else logging.INFO)
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr, force=True)
    for noisy in ("matplotlib", "PIL", "urllib3", "astroquery", "distributed", "fsspec"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
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
