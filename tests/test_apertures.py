"""The aperture rule on a prediction file (xmm_enhance.apertures, ``xmm-enhance aperture``).

Expectations are counted by hand: on 2" pixels, centred on a pixel corner (so that no pixel
centre lies on the circle), a radius of 20" (the calibrated aperture, the default) holds 316
pixels, 20 of them in each column next to the centre; a radius of 10" holds 80, 10 per column.
"""
from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from xmm_enhance import apertures
from xmm_enhance.cli.main import main
from xmm_enhance.errors import InputError

N, PIX, RATE, T, SCALE = 100, 2.0, 1e-4, 20e3, 0.87


def sky_wcs():
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [50.5, 50.5]                    # 0-based pixel (49.5, 49.5)
    w.wcs.cd = np.diag([-PIX / 3600, PIX / 3600])
    w.wcs.radesys, w.wcs.equinox = "FK5", 2000.0
    return w


def prediction(path, *, gap_col=None, percentiles=True, aperscal=True):
    """Flat RATE per pixel, LO68 = RATE / 2, HI68 = 2 RATE; a column of no data (all 0)."""
    rate = np.full((N, N), RATE, np.float32)
    if gap_col is not None:
        rate[:, gap_col] = 0.0
    h = sky_wcs().to_header()
    h["BUNIT"], h["EXPOSURE"], h["INEXPO"] = "count/s/pixel", 50e3, T
    hdus = [fits.PrimaryHDU(rate, h)]
    if percentiles:
        lo = fits.ImageHDU(rate / 2, h, name="LO68")
        if aperscal:
            lo.header["APERSCAL"] = SCALE if aperscal is True else aperscal
        hdus += [lo, fits.ImageHDU(rate * 2, h, name="HI68")]
    fits.HDUList(hdus).writeto(path)
    return path


def radec(x, y):
    return (float(v) for v in sky_wcs().all_pix2world([[x, y]], 0)[0])


def test_the_rule_on_a_calibrated_aperture(tmp_path):
    p = prediction(tmp_path / "obs_predict_wcs_SR.fits.gz")
    assert apertures.CALIBRATED_RADIUS_ARCSEC == 20.0   # bench_calibration's 20" apertures
    a = apertures.aperture_interval(p, *radec(39.5, 59.5))
    assert a.npix == a.npix_data == 316
    s = 316 * RATE
    assert a.rate == pytest.approx(s, rel=1e-6)
    assert a.lo68 == pytest.approx(s - SCALE * 316 * RATE / 2, rel=1e-6)
    assert a.hi68 == pytest.approx(s + SCALE * 316 * RATE, rel=1e-6)
    assert (a.counts, a.counts_lo68, a.counts_hi68) == pytest.approx(
        (a.rate * T, a.lo68 * T, a.hi68 * T))            # at INEXPO, not the emulated EXPOSURE


def test_pixels_without_data_are_counted_apart_and_add_nothing(tmp_path):
    p = prediction(tmp_path / "gap_predict_wcs_SR.fits.gz", gap_col=40)
    a = apertures.aperture_interval(p, *radec(39.5, 59.5), radius_arcsec=10.0)
    assert a.npix == 80 and a.npix_data == 80 - 10    # a column next to the centre: 10
    assert a.rate == pytest.approx(70 * RATE, rel=1e-6)
    b = apertures.aperture_interval(p, *radec(39.5, 59.5))
    assert b.npix == 316 and b.npix_data == 316 - 20


def test_the_low_end_is_never_below_zero(tmp_path):
    p = prediction(tmp_path / "wide_predict_wcs_SR.fits.gz", aperscal=3.0)
    a = apertures.aperture_interval(p, *radec(39.5, 59.5))
    assert a.lo68 == 0.0 and a.hi68 == pytest.approx(316 * RATE * 4, rel=1e-6)


def test_bad_files_and_positions_are_one_line_errors(tmp_path, capsys):
    p = prediction(tmp_path / "a_predict_wcs_SR.fits.gz")
    with pytest.raises(InputError, match="off the image"):
        apertures.aperture_interval(p, 10.0, 2.0)
    with pytest.raises(InputError, match="no LO68/HI68"):
        apertures.aperture_interval(prediction(tmp_path / "b.fits", percentiles=False),
                                    *radec(50, 50))
    with pytest.raises(InputError, match="APERSCAL"):
        apertures.aperture_interval(prediction(tmp_path / "c.fits", aperscal=False),
                                    *radec(50, 50))
    with pytest.raises(ValueError, match="radius"):
        apertures.aperture_interval(p, *radec(50, 50), radius_arcsec=0.0)
    assert main(["aperture", str(p), "10", "2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a_predict_wcs_SR.fits.gz" in err[0] and "off the image" in err[0]
    assert main(["aperture", str(p), "150", "2", "--radius", "-1"]) == 2
    assert main(["aperture", str(tmp_path / "none.fits"), "150", "2"]) == 1


def test_command_prints_the_rate_and_counts_with_their_intervals(tmp_path, capsys):
    p = prediction(tmp_path / "obs_predict_wcs_SR.fits.gz")
    ra, dec = radec(39.5, 59.5)
    assert main(["aperture", str(p), f"{ra:.9f}", f"{dec:.9f}"]) == 0
    out = capsys.readouterr().out
    s = 316 * RATE
    assert "316 pixels, 316 with data" in out and "uncalibrated" not in out
    assert f"rate   {s:.6g} count/s, 68 % interval [{s - SCALE * s / 2:.6g}, " \
           f"{s + SCALE * s:.6g}]" in out
    assert main(["aperture", str(p), f"{ra:.9f}", f"{dec:.9f}", "--radius", "10"]) == 0
    assert "(radius uncalibrated)" in capsys.readouterr().out


def test_help_reads_as_written(capsys):
    assert main(["aperture", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "68 % interval" in out and "%%" not in out and "radius 20" in out
    assert main(["--help"]) == 0 and "aperture" in capsys.readouterr().out
