"""Process-wide settings (warnings filters, astropy configuration, astroquery's log) that the
library changes for a moment must come back as they were when threads call it at once."""
from __future__ import annotations

import logging
import sys
import threading
import warnings

import pytest
from astropy.utils import iers

from xmm_enhance import procstate, skywcs
from xmm_enhance.inference import _sky_from_astropy


@pytest.fixture
def fast_switching():
    """Switch threads every 10 microseconds, so overlapping blocks overlap often."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(before)


def _in_threads(fn, n=6, repeats=40):
    errors = []

    def work():
        try:
            for _ in range(repeats):
                fn()
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=work) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []


def test_threads_converting_times_leave_warnings_and_iers_settings_as_they_were(fast_switching):
    """mission_time_utc silences warnings and astropy's IERS download for a moment. With
    catch_warnings and set_temp unguarded, overlapping calls put back each other's copies and
    could leave every warning of the session silenced and auto_download off."""
    from astropy.io import fits

    header = fits.Header({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRPIX1": 1.0,
                          "CRPIX2": 1.0, "CRVAL1": 10.0, "CRVAL2": 20.0, "CDELT1": -1e-3,
                          "CDELT2": 1e-3, "RADECSYS": "FK5", "EQUINOX": 2000.0})
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        filters = list(warnings.filters)
        auto = iers.conf.auto_download
        date = skywcs.mission_time_utc(6.7923e8)
        assert date == "2019-07-11T10:58:51"

        def call():
            assert skywcs.mission_time_utc(6.7923e8) == date
            assert _sky_from_astropy(header) is not None

        _in_threads(call)
        assert warnings.filters == filters
        assert iers.conf.auto_download == auto
        with pytest.warns(UserWarning, match="still shown"):
            warnings.warn("still shown", UserWarning)


def test_overlapping_quiet_logger_blocks_put_the_level_back():
    """Downloads quiet astroquery's log (its records may show the request URL) by raising its
    level. Each download saved and restored the level itself, so two overlapping downloads
    (A starts, B starts, A ends, B ends) left it at ERROR for good."""
    name = "xmm_enhance_test_quiet"
    logger = logging.getLogger(name)
    logger.setLevel(logging.DEBUG)
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    levels = []

    def a():
        with procstate.quiet_logger(name):
            a_in.set()
            b_in.wait(10)
            levels.append(logger.level)
        a_out.set()

    def b():
        a_in.wait(10)
        with procstate.quiet_logger(name):
            b_in.set()
            a_out.wait(10)
            levels.append(logger.level)

    threads = [threading.Thread(target=f) for f in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert levels == [logging.ERROR, logging.ERROR]
    assert logger.level == logging.DEBUG


def test_checking_and_reading_files_takes_no_other_threads_warnings(tmp_path):
    """fits_is_valid and read_input caught warnings with catch_warnings(record=True), which is
    process-wide: another thread's warnings raised meanwhile were swallowed, or re-raised by
    the reading thread under its observation (257 of 784 in a review's run)."""
    import numpy as np
    from astropy.io import fits

    from xmm_enhance import batch, inference

    path = tmp_path / "img.fits"
    h = fits.Header({"EXPOSURE": 2e4})
    fits.PrimaryHDU(np.ones((64, 64), np.int32), h).writeto(path, checksum=True)
    done = []

    def reader():
        for _ in range(30):
            assert batch.fits_is_valid(path)[0]
            inference.read_input(path)
            done.append(1)

    t = threading.Thread(target=reader)
    sent = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t.start()
        while t.is_alive():          # warn all the time the other thread reads
            warnings.warn(f"mine {sent}", UserWarning)
            sent += 1
        t.join(60)
    mine = [w for w in caught if str(w.message).startswith("mine")]
    assert len(done) == 30 and sent > 100
    assert len(mine) == sent
