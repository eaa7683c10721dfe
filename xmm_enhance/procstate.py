"""Process-wide settings that library calls change for a moment, made safe for threads.

Python's warnings filters, ``warnings.showwarning`` and astropy's configuration items belong to
the process. ``warnings.catch_warnings`` saves them on entry and puts them back on exit, so two
threads whose blocks overlap put back each other's copy: a block that silenced warnings could
leave every warning of the session silenced. Every such block of this package runs under
:data:`LOCK` instead, one at a time (a thread may nest them). Warnings that other threads raise
while a :func:`quiet_warnings` block runs are silenced with the block's; such blocks are short
(a time conversion, an astropy WCS), except the benchmarks' predictor
(:func:`xmm_enhance.evaluation.pipeline_predictor`), which holds one over a whole model run:
it is for single-threaded benchmark scripts. Where a warning only needs to be told apart
(a truncated FITS file), the package finds it without catching warnings
(:func:`xmm_enhance.fitsio.fits_truncation`).
"""
from __future__ import annotations

import contextlib
import logging
import threading
import warnings

__all__ = ["LOCK", "quiet_warnings", "quiet_logger"]

#: Held by every block of this package that changes warnings filters or astropy settings.
LOCK = threading.RLock()


@contextlib.contextmanager
def quiet_warnings():
    """No Python warnings inside the block (see the module's note on threads)."""
    with LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


_QUIET: dict[str, list] = {}   # logger name -> [blocks running, level before the first]


@contextlib.contextmanager
def quiet_logger(name: str, level: int = logging.ERROR):
    """Logger ``name`` drops records below ``level`` while any thread runs such a block (its
    level decides more than its records: astroquery shows a progress bar below WARNING). The
    first block to start raises the level, the last to end puts back the one it found, so
    overlapping blocks of several threads leave it as it was."""
    logger = logging.getLogger(name)
    with LOCK:
        state = _QUIET.setdefault(name, [0, logging.NOTSET])
        if state[0] == 0:
            state[1] = logger.level
            logger.setLevel(max(level, logger.level))
        state[0] += 1
    try:
        yield
    finally:
        with LOCK:
            state[0] -= 1
            if state[0] == 0:
                logger.setLevel(state[1])
