"""Shared test fixtures: small, generic, fast. Add new ones at the end."""
from __future__ import annotations

import gzip
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits


def _ftz_bytes(hdul: fits.HDUList, compress: bool = True) -> bytes:
    buf = io.BytesIO()
    hdul.writeto(buf)
    raw = buf.getvalue()
    return gzip.compress(raw, compresslevel=1, mtime=0) if compress else raw


def make_fake_pps(folder, obsid="0123456789", exposures=(("S003", 40000.0),), *,
                  submode="PrimeFullWindow", with_fbktsr=True, with_attitude=True,
                  with_calind=True, ontime_keyword=True, ext="FTZ", seed=0):
    """Write a tiny PPS folder (a few kB per file) and return the folder.

    Parameters
    ----------
    folder : path
        Created if missing.
    obsid : str
        OBS_ID used in names and headers.
    exposures : sequence of (expid, ontime_s) or (expid, ontime_s, submode)
        One pn imaging event list (``PIEVLI``) and, if ``with_fbktsr``, one ``FBKTSR`` each.
        The EVENTS header carries ``ONTIME`` (unless ``ontime_keyword`` is False) and a
        ``STDGTI01`` table whose intervals add up to ``ontime_s``.
    submode : str
        Default ``SUBMODE`` for exposures given as pairs.
    with_fbktsr, with_attitude, with_calind : bool or container of expid
        Which companion files to write; for ``with_fbktsr`` a container of expids restricts it.
    ext : {'FTZ', 'FIT', 'fits', ...}
        File extension; ``FTZ`` (any case) is gzipped, others are plain FITS.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    compress = ext.upper() == "FTZ"
    tstart = 6.0e8
    for exp in exposures:
        expid, ontime = exp[0], float(exp[1])
        mode = exp[2] if len(exp) > 2 else submode
        n = 50
        events = fits.BinTableHDU.from_columns([
            fits.Column("TIME", "D", array=np.sort(rng.uniform(tstart, tstart + ontime, n))),
            fits.Column("DETX", "I", array=rng.integers(-15000, 13000, n)),
            fits.Column("DETY", "I", array=rng.integers(-15000, 13000, n)),
            fits.Column("X", "J", array=rng.integers(20000, 30000, n)),
            fits.Column("Y", "J", array=rng.integers(20000, 30000, n)),
            fits.Column("PI", "I", array=rng.integers(200, 3000, n)),
            fits.Column("FLAG", "J", array=np.zeros(n, np.int32)),
            fits.Column("PATTERN", "B", array=rng.integers(0, 5, n).astype(np.uint8)),
        ], name="EVENTS")
        h = events.header
        h["OBS_ID"] = obsid
        h["EXPIDSTR"] = expid
        h["INSTRUME"] = "EPN"
        h["DATAMODE"] = "IMAGING"
        h["SUBMODE"] = mode
        h["TSTART"] = tstart
        h["TSTOP"] = tstart + ontime + 100.0
        if ontime_keyword:
            h["ONTIME"] = ontime
        half = ontime / 2
        gti = fits.BinTableHDU.from_columns([
            fits.Column("START", "D", array=[tstart, tstart + half + 50.0]),
            fits.Column("STOP", "D", array=[tstart + half, tstart + ontime + 50.0]),
        ], name="STDGTI01")
        primary = fits.PrimaryHDU()
        primary.header["OBS_ID"] = obsid
        primary.header["EXPIDSTR"] = expid
        name = f"P{obsid}PN{expid}PIEVLI0000.{ext}"
        (folder / name).write_bytes(_ftz_bytes(fits.HDUList([primary, events, gti]), compress))

        if with_fbktsr is True or (with_fbktsr and expid in with_fbktsr):
            t = tstart + 5.0 + 10.0 * np.arange(int(ontime // 10))
            rate = fits.BinTableHDU.from_columns([
                fits.Column("TIME", "D", array=t),
                fits.Column("RATE", "E", array=rng.gamma(4.0, 0.5, t.size)),
            ], name="RATE")
            rate.header["FLCUTTHR"] = 3.4
            rate.header["TIMEDEL"] = 10.0
            rate.header["TSTART"] = tstart
            rate.header["TSTOP"] = tstart + ontime
            p = fits.PrimaryHDU()
            p.header["EXPIDSTR"] = expid
            fname = f"P{obsid}PN{expid}FBKTSR0000.{ext}"
            (folder / fname).write_bytes(_ftz_bytes(fits.HDUList([p, rate]), compress))

    for flag, product, extname in ((with_attitude, "ATTTSR", "ATTHK"),
                                   (with_calind, "CALIND", "CALINDEX")):
        if not flag:
            continue
        tab = fits.BinTableHDU.from_columns([fits.Column("VALUE", "D", array=[0.0, 1.0])],
                                            name=extname)
        fname = f"P{obsid}OBX000{product}0000.{ext}"
        (folder / fname).write_bytes(_ftz_bytes(fits.HDUList([fits.PrimaryHDU(), tab]),
                                                compress))
    return folder


@pytest.fixture
def fake_pps():
    """The :func:`make_fake_pps` function, for tests that need a small PPS folder."""
    return make_fake_pps


@pytest.fixture(autouse=True)
def restore_logging():
    """Commands configure the package logger and warnings.showwarning; put them back for the
    tests that follow (every test: a command run by one test file left the package logger
    printing to stderr for the next, e.g. test_sources.py then test_archive.py)."""
    pkg, root = logging.getLogger("xmm_enhance"), logging.getLogger()
    saved = (pkg.handlers[:], pkg.level, pkg.propagate, root.handlers[:], root.level,
             warnings.showwarning)
    yield
    for lg, handlers in ((pkg, saved[0]), (root, saved[3])):
        for h in lg.handlers[:]:
            if h not in handlers:
                lg.removeHandler(h)
        for h in handlers:
            if h not in lg.handlers:
                lg.addHandler(h)
    pkg.setLevel(saved[1])
    pkg.propagate = saved[2]
    root.setLevel(saved[4])
    warnings.showwarning = saved[5]


def _sigterm_when_ready(code: str, ready: str, pause: float = 0.0) -> tuple[int, str]:
    """Run ``python -c code``; when it prints the line ``ready``, wait ``pause`` s and send it
    SIGTERM. Returns (exit code, stderr)."""
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == ready
        time.sleep(pause)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, err


@pytest.fixture
def sigterm_when_ready():
    """:func:`_sigterm_when_ready`, for the commands' SIGTERM tests."""
    return _sigterm_when_ready


@pytest.fixture(autouse=True)
def _archive_answers_again():
    """Each test starts with an archive that has not failed yet in this process
    (``archive._UNANSWERED``: a batch gives up on an archive that stops answering)."""
    from xmm_enhance import archive

    archive.archive_answers_again()
    yield
    archive.archive_answers_again()
