"""The aperture rule on a prediction file (xmm_enhance.apertures, ``xmm-enhance aperture``).

Expectations are counted by hand: on 2" pixels, centred on a pixel corner (so that no pixel
centre lies on the circle), a radius of 20" (the calibrated aperture, the default) holds 316
pixels, 20 of them in each column next to the centre; a radius of 10" holds 80, 10 per column.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from xmm_enhance import apertures
from xmm_enhance.cli.main import main
from xmm_enhance.errors import InputError

N, PIX, RATE, T, SCALE = 100, 2.0, 1e-4, 20e3, 0.87


def sky_wcs(pix=(PIX, PIX)):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [50.5, 50.5]                    # 0-based pixel (49.5, 49.5)
    w.wcs.cd = np.diag([-pix[0] / 3600, pix[1] / 3600])
    w.wcs.radesys, w.wcs.equinox = "FK5", 2000.0
    return w


def prediction(path, *, gap_col=None, percentiles=True, aperscal=True, pix=(PIX, PIX),
               rate=None, inexpo=True):
    """Flat RATE per pixel (or ``rate``), LO68 = rate / 2, HI68 = 2 rate; a column of no data
    (all 0)."""
    rate = np.full((N, N), RATE, np.float32) if rate is None else rate.astype(np.float32)
    if gap_col is not None:
        rate[:, gap_col] = 0.0
    h = sky_wcs(pix).to_header()
    h["BUNIT"], h["EXPOSURE"] = "count/s/pixel", 50e3
    if inexpo:
        h["INEXPO"] = T
    hdus = [fits.PrimaryHDU(rate, h)]
    if percentiles:
        lo = fits.ImageHDU(rate / 2, h, name="LO68")
        if aperscal:
            lo.header["APERSCAL"] = SCALE if aperscal is True else aperscal
        hdus += [lo, fits.ImageHDU(rate * 2, h, name="HI68")]
    fits.HDUList(hdus).writeto(path)
    return path


def radec(x, y, pix=(PIX, PIX)):
    return (float(v) for v in sky_wcs(pix).all_pix2world([[x, y]], 0)[0])


def test_the_rule_on_a_calibrated_aperture(tmp_path):
    p = prediction(tmp_path / "obs_predict_wcs_SR.fits.gz")
    assert apertures.CALIBRATED_RADIUS_ARCSEC == 20.0   # bench_calibration's 20" apertures
    a = apertures.aperture_interval(p, *radec(39.5, 59.5))
    assert a.npix == a.npix_data == 316
    assert a.npix_expected == 316 and a.data_share == 1.0   # the circle's own pixel centres
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
    assert "316 pixels with data, 100 % of the aperture" in out and "uncalibrated" not in out
    assert f"rate   {s:.6g} count/s, 68 % interval [{s - SCALE * s / 2:.6g}, " \
           f"{s + SCALE * s:.6g}]" in out
    assert main(["aperture", str(p), f"{ra:.9f}", f"{dec:.9f}", "--radius", "10"]) == 0
    assert "(radius uncalibrated)" in capsys.readouterr().out


def test_help_reads_as_written(capsys):
    assert main(["aperture", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "68 % interval" in out and "%%" not in out and "radius 20" in out
    assert main(["--help"]) == 0 and "aperture" in capsys.readouterr().out


def test_the_aperture_sits_where_its_centre_is_to_the_pixel(tmp_path):
    # on a flat field a shift of one pixel changes nothing: three marked pixels in row 60 tell
    rate = np.full((N, N), RATE)
    rate[60, 50], rate[60, 31], rate[60, 51] = 1.0, 2.0, 4.0
    p = prediction(tmp_path / "marks_predict_wcs_SR.fits.gz", rate=rate)
    # centre x = 40.5: x 50 and 31 are 19" away (in), x 51 21" (out)
    a = apertures.aperture_interval(p, *radec(40.5, 60), radius_arcsec=20.0)
    assert 3.0 < a.rate < 3.1
    # centre x = 39.5: x 31 is 17" away (in), x 50 and 51 21" and 23" (out)
    b = apertures.aperture_interval(p, *radec(39.5, 60), radius_arcsec=20.0)
    assert 2.0 < b.rate < 2.1


def test_non_square_pixels_make_a_circle_on_the_sky(tmp_path):
    # 1" x 2" pixels: 20" is 20 pixels east-west and 10 north-south
    rate = np.full((N, N), RATE)
    rate[50, 50 + 17] = 1.0                      # 17" east: inside
    rate[50 + 9, 50] = 2.0                       # 18" north: inside
    rate[50, 50 + 22] = 4.0                      # 22" east: outside
    rate[50 + 11, 50] = 8.0                      # 22" north: outside
    p = prediction(tmp_path / "rect_predict_wcs_SR.fits.gz", rate=rate, pix=(1.0, 2.0))
    a = apertures.aperture_interval(p, *radec(50, 50, (1.0, 2.0)))
    assert 3.0 < a.rate < 3.1
    assert a.npix_expected == a.npix and a.npix == pytest.approx(np.pi * 400 / 2, rel=0.01)


def test_pixels_that_are_not_finite_hold_no_data(tmp_path):
    rate = np.full((N, N), RATE)
    rate[60, 35:45] = np.nan
    p = prediction(tmp_path / "nan_predict_wcs_SR.fits.gz", rate=rate)
    a = apertures.aperture_interval(p, *radec(39.5, 59.5))
    assert np.isfinite([a.rate, a.lo68, a.hi68]).all() and a.npix_data == 316 - 10
    assert a.rate == pytest.approx(306 * RATE, rel=1e-6)


def test_an_aperture_partly_or_wholly_off_the_data(tmp_path, capsys):
    p = prediction(tmp_path / "edge_predict_wcs_SR.fits.gz")
    a = apertures.aperture_interval(p, *radec(1.5, 50))          # 2 pixels from the edge
    assert 0.5 < a.data_share < 0.7
    assert main(["aperture", str(p), *(f"{v:.9f}" for v in radec(1.5, 50))]) == 0
    cap = capsys.readouterr()
    assert "only" in cap.err and "of the aperture holds data" in cap.err
    rate = np.full((N, N), RATE)
    rate[:, :30] = 0.0                                           # a gap 60" wide
    q = prediction(tmp_path / "gap_predict_wcs_SR.fits.gz", rate=rate)
    with pytest.raises(InputError, match="no data within 20"):
        apertures.aperture_interval(q, *radec(10, 50))
    assert main(["aperture", str(q), *(f"{v:.9f}" for v in radec(10, 50))]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gap_predict_wcs_SR.fits.gz" in err[0] and "CCD" in err[0]


def test_cut_missing_and_exposure_less_files(tmp_path, capsys):
    import gzip

    p = prediction(tmp_path / "a_predict_wcs_SR.fits")
    cut = tmp_path / "cut_predict_wcs_SR.fits.gz"
    cut.write_bytes(gzip.compress(p.read_bytes())[:-200])
    with pytest.raises(InputError, match="cut short.*run_inference_on_real.py"):
        apertures.aperture_interval(cut, *radec(50, 50))
    plain = tmp_path / "plain_predict_wcs_SR.fits"
    plain.write_bytes(p.read_bytes()[:-3000])
    with pytest.raises(InputError, match="cut short"):
        apertures.aperture_interval(plain, *radec(50, 50))
    with pytest.raises(InputError, match="no such file"):
        apertures.aperture_interval(tmp_path / "none.fits.gz", *radec(50, 50))
    q = prediction(tmp_path / "noexp_predict_wcs_SR.fits.gz", inexpo=False)
    assert np.isnan(apertures.aperture_interval(q, *radec(50, 50)).counts)
    assert main(["aperture", str(q), *(f"{v:.9f}" for v in radec(50, 50))]) == 0
    assert "counts unknown: the file has no INEXPO" in capsys.readouterr().out


def test_a_wcs_with_dec_first_is_read_in_its_order(tmp_path):
    # the same sky as sky_wcs(), the header's axes given Dec first
    rate = np.full((N, N), RATE)
    rate[60, 31] = 2.0                                       # 17" from (39.5, 60)
    h = fits.Header()
    h["CTYPE1"], h["CTYPE2"] = "DEC--TAN", "RA---TAN"
    h["CRVAL1"], h["CRVAL2"] = 2.0, 150.0
    h["CRPIX1"], h["CRPIX2"] = 50.5, 50.5
    # x runs west (RA falls), y north: Dec changes along y, RA along x
    h["CD1_1"], h["CD1_2"], h["CD2_1"], h["CD2_2"] = 0.0, PIX / 3600, -PIX / 3600, 0.0
    h["INEXPO"] = T
    lo = fits.ImageHDU((rate / 2).astype(np.float32), h, name="LO68")
    lo.header["APERSCAL"] = SCALE
    path = tmp_path / "swapped_predict_wcs_SR.fits.gz"
    fits.HDUList([fits.PrimaryHDU(rate.astype(np.float32), h), lo,
                  fits.ImageHDU((2 * rate).astype(np.float32), h, name="HI68")]).writeto(path)
    a = apertures.aperture_interval(path, *radec(39.5, 60))
    b = apertures.aperture_interval(prediction(tmp_path / "plain_predict_wcs_SR.fits.gz",
                                               rate=rate), *radec(39.5, 60))
    assert a.npix_data == b.npix_data and a.rate == pytest.approx(b.rate, rel=1e-6)
    assert 2.0 < a.rate < 2.1


def test_a_non_finite_percentile_takes_its_pixel_out(tmp_path):
    p = prediction(tmp_path / "nanlo_predict_wcs_SR.fits.gz")
    with fits.open(p, mode="readonly") as h:
        hdus = [x.copy() for x in h]
    hdus[1].data = hdus[1].data.copy()
    hdus[1].data[60, 40] = np.nan                               # LO68 only
    hdus[2].data = hdus[2].data.copy()
    hdus[2].data[60, 38] = np.inf                               # HI68 only
    q = tmp_path / "nanlo2_predict_wcs_SR.fits.gz"
    fits.HDUList([fits.PrimaryHDU(hdus[0].data, hdus[0].header)] + hdus[1:]).writeto(q)
    a = apertures.aperture_interval(q, *radec(39.5, 59.5))
    assert a.npix_data == 314
    assert a.lo68 == pytest.approx(314 * RATE * (1 - SCALE / 2), rel=1e-6)
    assert a.hi68 == pytest.approx(314 * RATE * (1 + SCALE), rel=1e-6)


def test_a_centre_beyond_the_edge_is_off_the_image(tmp_path, capsys):
    p = prediction(tmp_path / "a_predict_wcs_SR.fits.gz")
    for x in (-5, N - 0.4):
        with pytest.raises(InputError, match="off the image"):
            apertures.aperture_interval(p, *radec(x, 50))
    assert main(["aperture", str(p), "150", "95"]) == 2          # a usage error
    assert "Dec within ±90" in capsys.readouterr().err


# the brightness term (session 28): c = clip(APERSCAL + APERRSLP log10(s / APERRREF),
# APERCMIN, APERCMAX), s the aperture's summed rate
RULE = {"APERSCAL": 0.6, "APERRSLP": -0.3, "APERRREF": 1e-3, "APERCMIN": 0.4, "APERCMAX": 0.9}


def test_the_rule_follows_the_aperture_rate_within_its_clip():
    r = apertures.ApertureRule(0.6, -0.3, 1e-3, 0.4, 0.9)
    assert r.scale_for(1e-3) == pytest.approx(0.6)
    assert r.scale_for(1e-4) == pytest.approx(0.9)          # 0.6 + 0.3, at the top of the clip
    assert r.scale_for(10 ** -3.5) == pytest.approx(0.75)
    assert r.scale_for(10 ** -2.5) == pytest.approx(0.45)
    assert r.scale_for(1.0) == pytest.approx(0.4) and r.scale_for(1e-9) == pytest.approx(0.9)
    assert r.scale_for(0.0) == pytest.approx(0.9)            # an empty sum: the faint end
    flat = apertures.ApertureRule(0.87)                      # APERSCAL alone: one scale
    assert flat.scale_for(1e-6) == flat.scale_for(10.0) == 0.87
    assert apertures.ApertureRule(0.01).scale_for(1.0) == apertures.MIN_SCALE
    assert [k for k, _, _ in flat.cards()] == ["APERSCAL"]
    assert [k for k, _, _ in r.cards()] == list(RULE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")        # a card too long would lose its comment
        h = fits.Header([(k, v, c) for k, v, c in r.cards()])
        h.tostring()
    assert apertures.ApertureRule.from_header(h) == r        # what the writer states is read
    assert apertures.ApertureRule.from_header(fits.Header()) is None


@pytest.mark.parametrize("total,scale", [(1e-5, 0.9), (10 ** -3.5, 0.75), (10 ** -2.5, 0.45),
                                         (1.0, 0.4)])
def test_the_interval_uses_the_scale_of_its_own_sum(tmp_path, total, scale):
    """A flat map whose 316 aperture pixels sum to ``total`` count/s: the rule's scale there."""
    p = prediction(tmp_path / "r_predict_wcs_SR.fits.gz", rate=np.full((N, N), total / 316),
                   aperscal=False)
    with fits.open(p, mode="update") as h:
        for k, v in RULE.items():
            h["LO68"].header[k] = v
    a = apertures.aperture_interval(p, *radec(39.5, 59.5))
    assert a.rate == pytest.approx(total, rel=1e-6) and a.scale == pytest.approx(scale)
    assert a.lo68 == pytest.approx(total * (1 - scale / 2), rel=1e-5)
    assert a.hi68 == pytest.approx(total * (1 + scale), rel=1e-5)


@pytest.mark.parametrize("key,value", [("APERRSLP", "steep"), ("APERRREF", 0.0),
                                       ("APERCMIN", 0.95)])
def test_a_damaged_rule_is_a_one_line_error(tmp_path, key, value):
    p = prediction(tmp_path / "d_predict_wcs_SR.fits.gz", aperscal=False)
    with fits.open(p, mode="update") as h:
        for k, v in RULE.items():
            h["LO68"].header[k] = v
        h["LO68"].header[key] = value
    with pytest.raises(InputError, match="aperture rule.*--overwrite"):
        apertures.aperture_interval(p, *radec(39.5, 59.5))


def test_the_data_share_counts_the_circles_own_pixels(tmp_path, capsys):
    """A 3" circle about a pixel corner holds 4 centres of 2" pixels (1.41 px away; the next
    ones are 1.58 px away), while its area is 7.07 pixels: fully on data it is 100 %, with a
    gap column through it 50 %, and the command warns."""
    p = prediction(tmp_path / "small_predict_wcs_SR.fits.gz")
    a = apertures.aperture_interval(p, *radec(39.5, 59.5), radius_arcsec=3.0)
    assert (a.npix, a.npix_data, a.npix_expected, a.data_share) == (4, 4, 4, 1.0)
    assert main(["aperture", str(p), *(f"{v:.9f}" for v in radec(39.5, 59.5)),
                 "--radius", "3"]) == 0
    assert "100 % of the aperture" in capsys.readouterr().out
    q = prediction(tmp_path / "gap_predict_wcs_SR.fits.gz", gap_col=40)
    b = apertures.aperture_interval(q, *radec(39.5, 59.5), radius_arcsec=3.0)
    assert (b.npix_data, b.data_share) == (2, 0.5)
    assert main(["aperture", str(q), *(f"{v:.9f}" for v in radec(39.5, 59.5)),
                 "--radius", "3"]) == 0
    assert "only 50 % of the aperture holds data" in capsys.readouterr().err


# the ring test on the input's counts (``--ring``): the input file beside the prediction is
# on the 4" grid, each input pixel under 2 x 2 output pixels (input pixel i at output 2 i + 0.5)
def input_beside(pred, counts, *, exposure=T, insha=None):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [25.5, 25.5]                    # 0-based (24.5, 24.5) = output (49.5, 49.5)
    w.wcs.cd = np.diag([-2 * PIX / 3600, 2 * PIX / 3600])
    w.wcs.radesys, w.wcs.equinox = "FK5", 2000.0
    h = w.to_header()
    h["INEXPO"] = exposure
    if insha:
        h["INSHA"] = insha
    path = apertures.input_path_of(pred)
    fits.writeto(path, (np.asarray(counts, np.float64) / exposure).astype(np.float32), h,
                 overwrite=True)
    return path


def test_the_input_file_is_found_beside_the_prediction(tmp_path):
    p = tmp_path / "obs_x_predict_wcs_DN.fits.gz"
    assert apertures.input_path_of(p) == tmp_path / "obs_x_input_wcs_DN.fits.gz"
    with pytest.raises(InputError, match="not named"):
        apertures.input_path_of(tmp_path / "renamed.fits.gz")


def test_the_ring_test_counts_the_inputs_photons(tmp_path, capsys):
    """A flat 2 counts per input pixel: no excess. 60 more counts on the centre's pixel: an
    excess of exactly 60, whose significance is the binomial tail of the circle's share."""
    from scipy import stats

    p = prediction(tmp_path / "obs_predict_wcs_SR.fits.gz")
    flat = np.full((N // 2, N // 2), 2.0)
    input_beside(p, flat)
    ra, dec = radec(49.5, 49.5)                   # input (24.5, 24.5): a pixel corner
    e = apertures.input_excess(p, ra, dec, (30.0, 60.0))
    assert e.counts == 2 * e.npix and e.ring_counts == 2 * e.npix_ring
    assert e.excess == pytest.approx(0.0, abs=1e-9) and abs(e.signif) < 0.2
    # 20" circle on 4" pixels: the centres within 5 pixels; ring 30-60": 7.5-15 pixels
    yy, xx = np.mgrid[:N // 2, :N // 2]
    r = np.hypot(yy - 24.5, xx - 24.5)
    assert e.npix == int((r <= 5).sum()) and e.npix_ring == int(((r > 7.5) & (r <= 15)).sum())
    knot = flat.copy()
    knot[24, 24] += 60
    input_beside(p, knot)
    k = apertures.input_excess(p, ra, dec, (30.0, 60.0))
    assert k.counts == e.counts + 60 and k.excess == pytest.approx(60.0)
    share = k.npix / (k.npix + k.npix_ring)
    tail = stats.binom.sf(k.counts - 1, k.counts + k.ring_counts, share)
    assert k.signif == pytest.approx(stats.norm.isf(tail)) and 3 < k.signif < 6
    dip = flat.copy()
    dip[22:27, 22:27] = 0.0
    input_beside(p, dip)
    assert apertures.input_excess(p, ra, dec, (30.0, 60.0)).signif < -3
    input_beside(p, knot)
    assert main(["aperture", str(p), f"{ra:.9f}", f"{dec:.9f}", "--ring", "30", "60"]) == 0
    out = capsys.readouterr().out
    assert f"input  {k.counts} counts in the circle ({k.npix} pixels of 4\")" in out
    assert f"excess 60, {k.signif:.1f} sigma" in out


def test_a_ring_crossed_by_bright_emission_draws_a_warning(tmp_path, caplog):
    """A bright blob in one side of the ring (a cluster core beside a source) makes its mean no
    level for the circle: the sectors' chi-square says so, and the command warns. A flat ring
    does not."""
    import logging

    p = prediction(tmp_path / "obs_predict_wcs_SR.fits.gz")
    ra, dec = radec(49.5, 49.5)
    flat = np.full((N // 2, N // 2), 2.0)
    input_beside(p, flat)
    assert apertures.input_excess(p, ra, dec, (30.0, 60.0)).ring_uneven is None
    core = flat.copy()
    core[22:28, 35:39] += 40.0                  # 40-50" east of the centre, in the ring
    input_beside(p, core)
    e = apertures.input_excess(p, ra, dec, (30.0, 60.0))
    assert e.ring_uneven is not None and e.ring_uneven[0] > 3 and e.ring_uneven[1] < 1e-3
    assert e.signif < -3                         # the misleading deficit it explains
    with caplog.at_level(logging.WARNING):
        assert main(["aperture", str(p), f"{ra:.9f}", f"{dec:.9f}", "--ring", "30", "60"]) == 0
    assert "the ring is not flat" in caplog.text


def test_an_interrupted_aperture_exits_130_in_one_line(tmp_path, monkeypatch, capsys):
    """Ctrl-C or SIGTERM: 'interrupted' and exit 130, as every other command (it printed a
    traceback, or died with 143)."""
    p = prediction(tmp_path / "obs_predict_wcs_SR.fits.gz")

    def stop(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(apertures, "aperture_interval", stop)
    assert main(["aperture", str(p), *(f"{v:.9f}" for v in radec(49.5, 49.5))]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "interrupted"


def test_the_ring_test_skips_pixels_without_data(tmp_path):
    """A CCD gap (0 in the prediction's maps) takes its input pixels out of the circle and the
    ring, whatever the input file holds there."""
    p = prediction(tmp_path / "gap_predict_wcs_SR.fits.gz", gap_col=48)   # input column 24
    counts = np.full((N // 2, N // 2), 2.0)
    counts[:, 24] = 500.0
    input_beside(p, counts)
    e = apertures.input_excess(p, *radec(49.5, 49.5), (30.0, 60.0))
    assert e.counts == 2 * e.npix and e.ring_counts == 2 * e.npix_ring


def test_the_ring_test_on_the_pn_grid_counts_only_the_pixels_the_model_was_given(tmp_path):
    """The maps fill the CCD-edge and flagged columns that FLAG == 0 empties in the input
    (photons land there in other exposures), but the input holds no photon there: the ring
    test's circle and ring leave them out (``inference.input_mask``), as the file beside a real
    prediction says through its PADTOP/PADLEFT."""
    from onnx_graphs import exposure_aware
    from test_inference import make_image

    from xmm_enhance import detector, inference

    img, _ = make_image(tmp_path / "obs.fits", bkg=30.0)
    model = exposure_aware(tmp_path / "sr2.onnx", "SR", point_share=0.9,
                           aperture_interval_scale="0.6")
    res = inference.enhance_file(img, "SR", model=inference.load_model("SR", model))
    counts = fits.getdata(img).astype(np.float64)
    given = inference.input_mask(counts)
    live = inference.output_mask(counts, given)
    top, left = res["result"].pad
    # a network's maps are positive on every live pixel (the stand-in copies its input, which
    # is 0 on the emptied columns): HI68 as a real prediction has it
    on = inference._place(live, (416, 416), top, left)
    with fits.open(res["predict"]) as h:
        h["HI68"].data = np.repeat(np.repeat(on, 2, 0), 2, 1).astype(np.float32) * 1e-3
        h.writeto(res["predict"], overwrite=True, checksum=True)
    pred = apertures.load_prediction(res["predict"])
    empty = live & ~given                   # the columns the maps fill and the input lacks
    ys, xs = np.nonzero(empty & detector.fov_mask())
    assert len(ys) > 100
    y, x = ys[len(ys) // 2], xs[len(xs) // 2]    # a position on such a column
    ra, dec = pred.wcs.all_pix2world([[2 * (x + left) + 0.5, 2 * (y + top) + 0.5]], 0)[0]
    e = apertures.input_excess(pred, ra, dec, (30.0, 60.0))
    # the expected areas: input pixels with centres in the circle / ring that the model got
    inp = fits.getheader(apertures.input_path_of(res["predict"]))
    w = WCS(inp).celestial
    yy, xx = np.mgrid[:416, :416]
    a, d = w.all_pix2world(xx.ravel(), yy.ravel(), 0)
    sep = apertures._angle_arcsec(ra, dec, a, d).reshape(416, 416)
    got = inference._place(given, (416, 416), top, left)
    assert e.npix == int(((sep <= 20.0) & got).sum())
    assert e.npix_ring == int(((sep > 30.0) & (sep <= 60.0) & got).sum())
    assert int(((sep <= 20.0) & on).sum()) > e.npix   # HI68 alone would count more
    assert e.counts == int(counts[given][(sep <= 20.0)[top:top + 411, left:left + 403][given]].sum())


def test_the_ring_test_refuses_what_it_cannot_trust(tmp_path, capsys):
    p = prediction(tmp_path / "obs_predict_wcs_SR.fits.gz")
    ra, dec = radec(49.5, 49.5)
    with pytest.raises(InputError, match="obs_input_wcs_SR.fits.gz: no such file"):
        apertures.input_excess(p, ra, dec, (30.0, 60.0))
    with fits.open(p, mode="update") as h:
        h[0].header["INSHA"] = "a" * 64
    input_beside(p, np.ones((N // 2, N // 2)), insha="b" * 64)
    with pytest.raises(InputError, match="not the input of obs_predict_wcs_SR.fits.gz .INSHA differs"):
        apertures.input_excess(p, ra, dec, (30.0, 60.0))
    for ring in ((10.0, 60.0), (60.0, 30.0), (30.0, float("nan"))):
        with pytest.raises(ValueError, match="ring"):
            apertures.input_excess(p, ra, dec, ring)
    assert main(["aperture", str(p), f"{ra:.9f}", f"{dec:.9f}", "--ring", "10", "60"]) == 2
    assert main(["aperture", str(p), f"{ra:.9f}", f"{dec:.9f}", "--ring", "30", "60"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "--ring 10 60" in err[0] and "obs_input_wcs_SR.fits.gz" in err[-1]


@pytest.mark.parametrize("origin", [(-3, -2), (-3, 5), (7, -4), (95, 96), (96, 5), (2, 3)])
def test_a_box_is_placed_on_the_image_to_the_pixel(origin):
    """``_on_image`` puts a box's pixels where its origin says, cut at every edge."""
    box = np.arange(1, 8 * 9 + 1).reshape(8, 9)
    got = apertures._on_image(box, origin, (N, N))
    want = np.zeros((N + 40, N + 40), box.dtype)            # a canvas 20 pixels wider per side
    want[origin[0] + 20:origin[0] + 28, origin[1] + 20:origin[1] + 29] = box
    assert np.array_equal(got, want[20:N + 20, 20:N + 20])


# session 28, after a review: a partly stated rule, large circles, the input without INSHA,
# a gunzipped prediction, --input, a listed source's wings, and region files
def _with_rule(p, drop=(), **over):
    with fits.open(p, mode="update") as h:
        for k, v in {**RULE, **over}.items():
            if k not in drop:
                h["LO68"].header[k] = v
    return p


@pytest.mark.parametrize("drop,over", [(("APERRREF",), {}), ((), {"APERCMAX": -0.5}),
                                       ((), {"APERSCAL": -2.0}), ((), {"APERSCAL": 0.0})])
def test_a_partly_stated_rule_is_refused(tmp_path, drop, over):
    p = _with_rule(prediction(tmp_path / "p_predict_wcs_SR.fits.gz", aperscal=False), drop,
                   **over)
    with pytest.raises(InputError, match="aperture rule.*--overwrite"):
        apertures.aperture_interval(p, *radec(39.5, 59.5))


def test_a_circle_far_larger_than_the_image_is_summed_without_a_huge_grid(tmp_path):
    p = prediction(tmp_path / "big_predict_wcs_SR.fits.gz")
    a = apertures.aperture_interval(p, *radec(39.5, 59.5), radius_arcsec=3e4)
    assert a.npix_data == N * N and a.rate == pytest.approx(N * N * RATE, rel=1e-6)
    # the circle's pixel centres, counted row by row: pi r^2 / 4 (2" pixels)
    assert a.npix_expected == pytest.approx(np.pi * 9e8 / 4, rel=1e-3)
    with pytest.raises(ValueError, match="at most 36000"):     # 10 degrees: no pn field
        apertures.aperture_interval(p, *radec(39.5, 59.5), radius_arcsec=1e7)
    ra, dec = radec(39.5, 59.5)
    assert main(["aperture", str(p), f"{ra}", f"{dec}", "--radius", "1e8"]) == 2
    assert main(["aperture", str(p), f"{ra}", f"{dec}", "--ring", "30", "1e8"]) == 2


@pytest.mark.parametrize("centre,radius", [((1.5, 50), 20.0), ((0.2, 98.7), 33.0),
                                           ((97.5, 3.25), 7.0)])
def test_the_count_of_a_circle_cut_by_the_edge_is_exact(tmp_path, centre, radius):
    """Cut at the image's edge, the circle's centres are counted from the WCS's local scale:
    the same count as every centre of a grid wide enough to hold the circle."""
    p = prediction(tmp_path / "cut_predict_wcs_SR.fits.gz")
    a = apertures.aperture_interval(p, *radec(*centre), radius_arcsec=radius)
    w = sky_wcs()
    yy, xx = np.mgrid[-40:N + 40, -40:N + 40]
    sky = w.all_pix2world(xx.ravel(), yy.ravel(), 0)
    ra, dec = radec(*centre)
    d0, d1 = np.radians(dec), np.radians(sky[1])
    h = np.sin((d1 - d0) / 2) ** 2 + np.cos(d0) * np.cos(d1) * np.sin(
        np.radians(sky[0] - ra) / 2) ** 2
    sep = np.degrees(2 * np.arcsin(np.sqrt(h))) * 3600
    assert a.npix_expected == int((sep <= radius).sum())
    assert a.npix < a.npix_expected


def test_without_insha_the_input_must_lie_under_the_prediction(tmp_path):
    p = prediction(tmp_path / "obs_predict_wcs_SR.fits.gz")
    counts = np.full((N // 2, N // 2), 2.0)
    input_beside(p, counts)                           # neither file has INSHA
    ra, dec = radec(49.5, 49.5)
    assert apertures.input_excess(p, ra, dec, (30.0, 60.0)).counts > 0
    i = apertures.input_path_of(p)
    with fits.open(i, mode="update") as h:
        h[0].header["CRVAL1"] += 0.05                 # another field
    with pytest.raises(InputError, match="grid is not under the prediction's"):
        apertures.input_excess(p, ra, dec, (30.0, 60.0))
    input_beside(p, counts, exposure=2 * T)            # same grid, another exposure
    with pytest.raises(InputError, match="INEXPO differs"):
        apertures.input_excess(p, ra, dec, (30.0, 60.0))


def test_a_gunzipped_prediction_or_one_renamed_still_finds_its_input(tmp_path, capsys):
    p = prediction(tmp_path / "obs_predict_wcs_DN.fits")    # the user gunzipped both
    counts = np.full((N // 2, N // 2), 2.0)
    gz = input_beside(p, counts)
    plain = gz.with_name("obs_input_wcs_DN.fits")
    gz.rename(plain)
    assert apertures.input_path_of(p) == plain
    ra, dec = radec(49.5, 49.5)
    assert apertures.input_excess(p, ra, dec, (30.0, 60.0)).counts > 0
    renamed = p.rename(tmp_path / "mine.fits")
    with pytest.raises(InputError, match="--input"):
        apertures.input_excess(renamed, ra, dec, (30.0, 60.0))
    e = apertures.input_excess(renamed, ra, dec, (30.0, 60.0), input_path=plain)
    assert e.counts == 2 * e.npix
    assert main(["aperture", str(renamed), f"{ra:.9f}", f"{dec:.9f}", "--ring", "30", "60",
                 "--input", str(plain)]) == 0
    assert "input  " in capsys.readouterr().out
    # a ring test that cannot run still prints the aperture's sum first
    assert main(["aperture", str(renamed), f"{ra:.9f}", f"{dec:.9f}", "--ring", "30", "60"]) == 1
    cap = capsys.readouterr()
    assert "rate   " in cap.out and "--input" in cap.err
    assert main(["aperture", str(renamed), f"{ra:.9f}", f"{dec:.9f}", "--input", str(plain)]) == 2


def test_a_listed_sources_wings_are_reported_but_not_its_own_circle(tmp_path, caplog):
    p = prediction(tmp_path / "src_predict_wcs_SR.fits.gz")
    input_beside(p, np.full((N // 2, N // 2), 2.0))
    ra0, dec0 = radec(49.5, 49.5)
    ra1, dec1 = radec(49.5, 69.5)                     # 20 pixels = 40" north
    cols = [fits.Column(name="RA", format="D", array=[ra1, ra0]),
            fits.Column(name="DEC", format="D", array=[dec1, dec0]),
            fits.Column(name="COUNTS", format="D", array=[2900.0, 50.0])]
    with fits.open(p, mode="update") as h:
        h.append(fits.BinTableHDU.from_columns(cols, name="SOURCES"))
    e = apertures.input_excess(p, ra0, dec0, (60.0, 120.0))
    assert e.near_source == pytest.approx((40.0, 2900.0), rel=1e-3)
    assert apertures.input_excess(p, ra1, dec1, (60.0, 120.0)).near_source is None  # its own
    assert main(["aperture", str(p), f"{ra0:.9f}", f"{dec0:.9f}", "--ring", "60", "120"]) == 0
    assert "PSF wings" in caplog.text and "2900 counts lies 40\"" in caplog.text
    reg = tmp_path / "one.reg"
    reg.write_text(f"fk5\ncircle({ra0:.8f},{dec0:.8f},20\")\n")
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["aperture", str(p), "--regions", str(reg), "--ring", "60", "120",
                     "--csv"]) == 0
    import csv
    row = next(csv.DictReader(io.StringIO(buf.getvalue())))
    assert row["note"] == 'wings of a SOURCES entry of 2900 counts 40" away'
    assert float(row["signif"]) == pytest.approx(e.signif, abs=1e-3)


REG = """# Region file format: DS9 version 4.1
global color=green dashlist=8 3 width=1
fk5
circle({ra:.7f},{dec:.7f},20") # text={{knot A}}
circle({sra},{sdec},0.3')
box({ra:.7f},{dec:.7f},10",10",0)
-circle({ra:.7f},{dec:.7f},5")
icrs;circle(10.0,-80.0,0.005555556)
"""


def test_a_region_file_gives_a_table_row_per_circle(tmp_path, capsys):
    from astropy.coordinates import Angle

    p = prediction(tmp_path / "obs_predict_wcs_SR.fits.gz")
    ra, dec = radec(39.5, 59.5)
    reg = tmp_path / "knots.reg"
    reg.write_text(REG.format(ra=ra, dec=dec, sra=Angle(ra, "deg").to_string("hourangle", sep=":",
                                                                            precision=4),
                              sdec=Angle(dec, "deg").to_string(sep=":", precision=3,
                                                               alwayssign=True)))
    circles, skipped = apertures.read_circles(reg)
    assert skipped == 2 and [c.line for c in circles] == [4, 5, 8]
    assert circles[0].text == "knot A" and circles[0].radius_arcsec == 20.0
    assert circles[1].radius_arcsec == pytest.approx(18.0)
    assert (circles[1].ra, circles[1].dec) == pytest.approx((ra, dec), abs=1e-6)
    assert circles[2].radius_arcsec == pytest.approx(20.0, rel=1e-6)   # degrees, ds9's default
    rows = apertures.measure_circles(p, circles)
    assert rows[0][1].rate == pytest.approx(316 * RATE, rel=1e-6) and rows[0][2] is None
    assert "off the image" in rows[2][1]                   # the others go on
    assert main(["aperture", str(p), "--regions", str(reg)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("# obs_predict_wcs_SR.fits.gz: 3 circles of knots.reg")
    assert out[2].split()[0] == "4" and out[2].endswith("knot A")
    assert "off the image" in out[4]
    import csv
    import io

    assert main(["aperture", str(p), "--regions", str(reg), "--csv"]) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["line"] for r in table] == ["4", "5", "8"] and table[0]["text"] == "knot A"
    assert float(table[0]["rate"]) == pytest.approx(316 * RATE, rel=1e-6)
    assert float(table[0]["scale"]) == SCALE and table[0]["note"] == ""
    assert table[2]["rate"] == "" and "off the image" in table[2]["note"]
    assert main(["aperture", str(p), f"{ra}", f"{dec}", "--csv"]) == 2
    far = tmp_path / "far.reg"
    far.write_text("fk5\ncircle(10.0,-80.0,20\")\ncircle(11.0,-80.0,20\")\n")
    assert main(["aperture", str(p), "--regions", str(far)]) == 1   # none on this image
    assert "no circle of far.reg lies on the data" in capsys.readouterr().err
    assert main(["aperture", str(p), "--regions", str(reg), "--radius", "10"]) == 2
    assert main(["aperture", str(p), f"{ra}", f"{dec}", "--regions", str(reg)]) == 2
    assert main(["aperture", str(p)]) == 2


@pytest.mark.parametrize("text,match", [
    ("image\ncircle(50,50,10)\n", "line 2: a circle in image coordinates"),
    ("circle(150,2,10\")\n", "line 1: a circle in no coordinates"),
    ("fk5\ncircle(150,2)\n", r"line 2: circle\(150,2\) cannot be read"),
    ("fk5\ncircle(150,95,10\")\n", "line 2"),
    ("fk5\nbox(150,2,1,1,0)\n", "no fk5 circle"),
    ("fk5\nthis is not a region (really)\n", "line 2 is not a ds9 region"),
])
def test_a_region_file_it_cannot_use_is_a_one_line_error(tmp_path, capsys, text, match):
    reg = tmp_path / "bad.reg"
    reg.write_text(text)
    with pytest.raises(InputError, match=match):
        apertures.read_circles(reg)
    p = prediction(tmp_path / "obs_predict_wcs_SR.fits.gz")
    assert main(["aperture", str(p), "--regions", str(reg)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.reg" in err[0]
    with pytest.raises(InputError, match="no such file"):
        apertures.read_circles(tmp_path / "none.reg")


def test_a_bound_of_the_clip_left_out_is_no_bound():
    """A model without aperture_interval_max gives an infinite top, which no card states: read
    back, the missing APERCMAX (or APERCMIN) is no bound, not damage."""
    r = apertures.ApertureRule(0.8, -0.2, 1e-3, 0.3, np.inf)
    h = fits.Header(r.cards())
    assert "APERCMAX" not in h and apertures.ApertureRule.from_header(h) == r
    del h["APERCMIN"]
    assert apertures.ApertureRule.from_header(h).scale_min == apertures.MIN_SCALE


def test_a_prediction_given_as_the_input_is_refused(tmp_path):
    """A prediction carries its input's INSHA, and DN's is on the input's grid: only what it
    holds tells it from an input file."""
    p = prediction(tmp_path / "obs_predict_wcs_DN.fits.gz")
    ra, dec = radec(49.5, 49.5)
    for other in (p, prediction(tmp_path / "other_predict_wcs_DN.fits.gz")):
        with pytest.raises(InputError, match="not an input file.*--input"):
            apertures.input_excess(p, ra, dec, (30.0, 60.0), input_path=other)
    with pytest.raises(InputError, match="is a folder.*--input"):
        apertures.input_excess(p, ra, dec, (30.0, 60.0), input_path=tmp_path)
    junk = tmp_path / "junk.reg"
    junk.write_text("fk5\n")
    with pytest.raises(InputError, match="not a readable input file.*\\*_input_wcs_"):
        apertures.input_excess(p, ra, dec, (30.0, 60.0), input_path=junk)


def test_ds9_composites_and_a_byte_order_mark_are_read(tmp_path):
    reg = tmp_path / "comp.reg"
    reg.write_bytes(("\ufeff# Region file format: DS9 version 4.1\r\nfk5\r\n"
                     "# composite(150.03,2.18,0) || composite=1\r\n"
                     "circle(150.034947,2.182890,20.000\") ||\r\n"
                     "box(150.03,2.18,10\",10\",0)\r\n").encode("utf-8"))
    circles, skipped = apertures.read_circles(reg)
    assert [(c.ra, c.dec, c.radius_arcsec, c.line) for c in circles] == [
        (pytest.approx(150.034947), pytest.approx(2.18289), 20.0, 4)] and skipped == 1


def test_the_count_of_a_cut_circle_at_ra_zero(tmp_path):
    """Centred on RA 0 (the WCS's RA steps from 359.999 to 0.001 there), cut at the edge."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval, w.wcs.crpix = [0.0, 2.0], [2.0, 50.5]          # RA 0 at 0-based x = 1
    w.wcs.cd = np.diag([-PIX / 3600, PIX / 3600])
    n = apertures._lattice_count(w, 1.0, 49.5, 20.0)
    yy, xx = np.mgrid[0:100, -20:20]                  # the centres within 10 pixels, by hand
    assert n == int((np.hypot(xx - 1.0, yy - 49.5) <= 10.0).sum()) == 312
