"""DET binning on evselect's grid, the image header, the sky-WCS fit, the event reader."""
import gzip

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from xmm_enhance import detector, events, imaging, skywcs
from xmm_enhance.errors import PPSError
from xmm_enhance.simulate import pps as sim


def _edges(binsize):
    g = detector.pn_grid(binsize)
    ny, nx = g.shape
    return g.x0 + binsize * np.arange(nx + 1), g.y0 + binsize * np.arange(ny + 1)


# ---- binning --------------------------------------------------------------------------------

def test_default_grid_is_evselects():
    h = imaging.det_wcs_header(80)
    assert detector.pn_grid(80).shape == (411, 403)
    assert h["CRVAL1L"] == -18243.5 and h["CRVAL2L"] == -17487.5
    assert h["CDELT1L"] == 80 and h["CRPIX1L"] == 1 and h["CTYPE1L"] == "DETX"
    assert h["LTV1"] == pytest.approx(229.04375) and h["LTV2"] == pytest.approx(219.59375)
    assert h["LTM1_1"] == 0.0125 and h["LTM2_2"] == 0.0125 and h["WCSNAMEL"] == "PHYSICAL"


@pytest.mark.parametrize("binsize", [80, 8, 37, 64, 100, 160, 333, 79.5])
def test_binning_equals_histogram(binsize):
    rng = np.random.default_rng(int(binsize * 2))
    n = 200_000
    detx = rng.integers(-18283, 13957, n).astype(np.int16)
    dety = rng.integers(-17527, 15353, n).astype(np.int16)
    img = imaging.bin_det(detx, dety, binsize)
    ex, ey = _edges(binsize)
    ref, _, _ = np.histogram2d(dety, detx, bins=[ey, ex])
    assert img.dtype == np.int32 and img.shape == detector.pn_grid(binsize).shape
    np.testing.assert_array_equal(img, ref.astype(np.int32))
    # every event on the legal range is binned exactly once
    assert img.sum() == n


def test_binning_drops_events_outside_the_legal_range():
    detx = np.array([-18284, -18283, 13956, 13957, 0], np.int32)
    dety = np.array([0, 0, 0, 0, 15353], np.int32)
    assert imaging.bin_det(detx, dety, 80).sum() == 2


@pytest.mark.parametrize("binsize", [80, 160])
def test_binning_keeps_the_legal_limits_and_drops_one_unit_beyond(binsize):
    # at binsize 160 the grid's last column and row reach past DETX_MAX and DETY_MAX
    # (202 x 206 bins of 160 span 32320 x 32960 > 32240 x 32880): only the legal limits
    # keep DETX 13957 and DETY 15353 out of that bin
    assert detector.DETX_MAX == 13956.5 and detector.DETY_MAX == 15352.5
    assert detector.DETX_MIN == -18283.5 and detector.DETY_MIN == -17527.5
    ny, nx = detector.pn_grid(binsize).shape
    for dtype in (np.int16, np.int32):
        kept = (np.array([-18283, 13956, 0, 0], dtype), np.array([0, 0, -17527, 15352], dtype))
        out = (np.array([-18284, 13957, 0, 0], dtype), np.array([0, 0, -17528, 15353], dtype))
        img = imaging.bin_det(*kept, binsize)
        assert img.sum() == 4
        assert img[:, 0].sum() == 1 and img[:, nx - 1].sum() == 1   # DETX limits
        assert img[0].sum() == 1 and img[ny - 1].sum() == 1         # DETY limits
        assert imaging.bin_det(*out, binsize).sum() == 0
        for i in range(4):   # each one alone, so that no limit hides behind another
            assert imaging.bin_det(out[0][i:i + 1], out[1][i:i + 1], binsize).sum() == 0
            assert imaging.bin_det(kept[0][i:i + 1], kept[1][i:i + 1], binsize).sum() == 1


def test_det_pixel_matches_ltv():
    h = imaging.det_wcs_header(80)
    px, py = imaging.det_pixel(np.array([0.0, -18243.5]), np.array([0.0, -17487.5]), 80)
    np.testing.assert_allclose(px, [h["LTV1"], 1.0])
    np.testing.assert_allclose(py, [h["LTV2"], 1.0])


def test_image_hdul_header():
    img = np.zeros(detector.pn_grid(80).shape, np.int32)
    img[3, 4] = 7
    ev_hdr = fits.Header({"OBS_ID": "0123456789", "OBJECT": "X", "RA_PNT": 10.0,
                          "DEC_PNT": 20.0, "PA_PNT": 30.0, "EXPIDSTR": "S003",
                          "REFXCRVL": 10.0, "REFXCRPX": 25921, "REFXCDLT": -1.3888e-5})
    w = skywcs.approx_sky_wcs(10.0, 20.0, 30.0)
    h = imaging.image_header(ev_hdr, binsize=80, sky_wcs_header=skywcs.wcs_to_header(w),
                             selection=events.selection_expression(500, 2000),
                             exposure=1234.5, gti=[[0, 1000], [2000, 2234.5]])
    hdul = imaging.make_image_hdul(img, h, [[0, 1000], [2000, 2234.5]])
    p = hdul[0].header
    assert p["BITPIX"] == 32 and p["NAXIS1"] == 403 and p["NAXIS2"] == 411
    assert p["EXPOSURE"] == 1234.5 and p["BUNIT"] == "count" and p["OBS_ID"] == "0123456789"
    assert p["SLCTEXPR"] == "(FLAG == 0) && (PATTERN in [0:4]) && (PI in [500:2000])"
    assert p["CTYPE1"] == "RA---TAN" and p["CTYPE1L"] == "DETX"
    assert "CDELT1" not in p and "CROTA2" not in p
    assert hdul[1].name == "STDGTI" and hdul[1].header["ONTIME"] == 1234.5
    np.testing.assert_array_equal(hdul[1].data["START"], [0, 2000])
    # the DET alternate WCS reads back
    wl = WCS(p, key="L")
    np.testing.assert_allclose(wl.wcs_pix2world([[1, 1]], 1), [[-18243.5, -17487.5]])


def test_copied_cards_fit_without_truncation_warnings():
    """A card that fits in its own file can be too long once astropy re-formats it (here a
    compact ``'value'/comment`` card): its comment is shortened explicitly, the value kept,
    and writing and reading the image raise no warning. HISTORY breaks at spaces."""
    import io
    import warnings

    raw = "OBJECT  = 'NGC 1399 and the Fornax cluster core region'/Name of the observed obj"
    assert len(raw) == 80
    ev_hdr = fits.Header.fromstring(raw.ljust(80) + "END".ljust(80))
    ev_hdr["DATE-OBS"] = ("2019-07-11T10:58:55", "Start Time (UTC) of exposure")
    ev_hdr["DATE-END"] = ("2019-07-12T03:38:55.5", "End Time (UTC) of exposure")
    ev_hdr["MJDREF"] = (50814.0, "[d] 1998-01-01T00:00:00 (TT) expressed in MJD")
    w = skywcs.approx_sky_wcs(10.0, 20.0, 30.0)
    # kept GTI: 10:58:55 to 03:38:55 UTC (TT - UTC = 69.184 s); the dates are rewritten from it
    t0 = (58675 + (10 * 3600 + 58 * 60 + 55 + 69.184) / 86400 - 50814.0) * 86400
    t1 = t0 + 16 * 3600 + 40 * 60
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        h = imaging.image_header(ev_hdr, binsize=80, sky_wcs_header=skywcs.wcs_to_header(w),
                                 selection="x", exposure=1.0, gti=[[t0, t1]])
        imaging.add_history(h, "word " * 40)
        hdul = imaging.make_image_hdul(np.zeros((2, 2), np.int32), h, [[0, 1]])
        hdul.writeto(buf)
        buf.seek(0)
        with fits.open(buf) as back:
            p = back[0].header
            p.tostring()
            WCS(p)
    assert p["OBJECT"] == "NGC 1399 and the Fornax cluster core region"
    assert p.comments["OBJECT"].startswith("Name of the")
    assert all(v.strip() and set(v.split()) == {"word"} for v in p["HISTORY"])
    # time keywords: MJD-OBS / MJD-END are TSTART / TSTOP in TIMESYS (TT), 69.184 s after the
    # UTC dates (MJD 58675 = 2019-07-11)
    assert p["DATEREF"] == "1998-01-01T00:00:00"
    assert p["MJD-OBS"] == pytest.approx(58675 + (10 * 3600 + 58 * 60 + 55 + 69.184) / 86400,
                                         abs=1e-10)
    assert p["MJD-END"] == pytest.approx(58676 + (3 * 3600 + 38 * 60 + 55 + 69.184) / 86400,
                                         abs=1e-10)
    assert p["DATE-OBS"] == "2019-07-11T10:58:55" and p["DATE-END"] == "2019-07-12T03:38:55"


# ---- sky WCS fit ----------------------------------------------------------------------------

def _fake_events(pa, ra0, dec0, n=50_000, seed=0, outliers=0):
    rng = np.random.default_rng(seed)
    detx = rng.uniform(-15000, 12000, n)
    dety = rng.uniform(-15000, 12000, n)
    x0, y0 = sim._origin(pa, skywcs.BORESIGHT_DET)
    x, y = sim.det_to_sky_pix(detx, dety, pa, x0, y0)
    x, y = np.rint(x).astype(np.int32), np.rint(y).astype(np.int32)
    if outliers:
        k = rng.choice(n, outliers, replace=False)
        x[k] += rng.integers(2000, 20000, outliers)
    hdr = {"REFXCRVL": ra0, "REFXCRPX": 25921, "REFXCDLT": -sim.DEG_PER_PIX,
           "REFYCRVL": dec0, "REFYCRPX": 25921, "REFYCDLT": sim.DEG_PER_PIX,
           "RA_PNT": ra0, "DEC_PNT": dec0, "PA_PNT": pa}
    return np.rint(detx).astype(np.int16), np.rint(dety).astype(np.int16), x, y, hdr


@pytest.mark.parametrize("pa,ra0,dec0", [(0, 150.1, 2.2), (90, 0.01, -30), (250, 359.99, 85),
                                         (123.4, 200.0, -85)])
def test_fit_recovers_the_det_to_sky_map(pa, ra0, dec0):
    detx, dety, x, y, hdr = _fake_events(pa, ra0, dec0, outliers=500)
    fit = skywcs.fit_sky_wcs_from_events(detx, dety, x, y, hdr)
    assert fit.method == "EVENTFIT" and fit.n_clipped >= 500
    assert fit.rms_arcsec < 0.1
    # exact map: any DET point -> sky pixel -> RA/Dec (numpy TAN) vs image pixel -> WCS
    tx = np.array([-12000.0, 0.0, 5000.0, 11000.0])
    ty = np.array([9000.0, 0.0, -14000.0, 3000.0])
    x0, y0 = sim._origin(pa, skywcs.BORESIGHT_DET)
    ra, dec = sim.pix_to_sky(*sim.det_to_sky_pix(tx, ty, pa, x0, y0), ra0, dec0)
    px, py = imaging.det_pixel(tx, ty, 80)
    wra, wdec = fit.wcs.wcs_pix2world(px, py, 1)
    sep = _sep_arcsec(ra, dec, wra, wdec)
    assert sep.max() < 0.05
    # CD: det > 0 (the DET frame is a mirror image of the sky) and matches cd_from_pa
    np.testing.assert_allclose(fit.wcs.wcs.cd, skywcs.cd_from_pa(pa, 4.0), atol=2e-8)
    h = fit.header()
    assert h["WCSMETH"] == "EVENTFIT" and "CDELT1" not in h


def test_fit_on_the_2x_grid():
    detx, dety, x, y, hdr = _fake_events(70, 150.1, 2.2)
    f1 = skywcs.fit_sky_wcs_from_events(detx, dety, x, y, hdr)
    f2 = skywcs.fit_sky_wcs_from_events(detx, dety, x, y, hdr, scale=2)
    up = skywcs.upscale_wcs(f1.wcs, 2)
    np.testing.assert_allclose(f2.wcs.wcs.crpix, up.wcs.crpix, atol=1e-6)
    np.testing.assert_allclose(f2.wcs.wcs.cd, up.wcs.cd, rtol=1e-9)


def test_fit_falls_back_with_too_few_events():
    detx, dety, x, y, hdr = _fake_events(70, 150.1, 2.2, n=5)
    fit = skywcs.fit_sky_wcs_from_events(detx, dety, x, y, hdr)
    assert fit.method == "PNT" and fit.header()["WCSMETH"] == "PNT"


def test_fit_uses_column_keywords_without_refx():
    detx, dety, x, y, hdr = _fake_events(10, 150.1, 2.2)
    h = {"TTYPE1": "DETX", "TTYPE2": "X", "TCRVL2": hdr["REFXCRVL"], "TCRPX2": 25921,
         "TCDLT2": hdr["REFXCDLT"], "TTYPE3": "Y", "TCRVL3": hdr["REFYCRVL"],
         "TCRPX3": 25921, "TCDLT3": hdr["REFYCDLT"]}
    a = skywcs.fit_sky_wcs_from_events(detx, dety, x, y, hdr).wcs
    b = skywcs.fit_sky_wcs_from_events(detx, dety, x, y, h).wcs
    np.testing.assert_allclose(a.wcs.crpix, b.wcs.crpix)


def _tan_deproject(x, y, crpx, crvl, cdlt):
    """RA/Dec (deg) of sky pixels for a TAN projection with per-axis reference pixel, value and
    increment: the simulator's numpy TAN (``pix_to_sky``, 0.05" pixels at 25921) after mapping
    each axis onto its grid -- independent of the code under test."""
    u = sim.REF_PIX + (np.asarray(x, float) - crpx[0]) * cdlt[0] / -sim.DEG_PER_PIX
    v = sim.REF_PIX + (np.asarray(y, float) - crpx[1]) * cdlt[1] / sim.DEG_PER_PIX
    return sim.pix_to_sky(u, v, crvl[0], crvl[1])


def test_fit_from_column_keywords_reads_each_axis_own_values():
    """TCRVL/TCRPX/TCDLT of the X and Y columns all differ, so reading one column's keywords
    for the other axis moves every pixel; check RA/Dec of known DET points, not only CRPIX."""
    pa, ra0, dec0 = 33.0, 150.1, 2.2
    crpx = (25000.5, 26800.0)
    cdlt = (-1.2e-5, 1.5e-5)  # deg per sky pixel: different sizes on purpose
    rng = np.random.default_rng(3)
    n = 20_000
    detx = rng.uniform(-15000, 12000, n)
    dety = rng.uniform(-15000, 12000, n)
    x0, y0 = sim._origin(pa, skywcs.BORESIGHT_DET)
    x, y = sim.det_to_sky_pix(detx, dety, pa, x0 - 921.0, y0 + 879.0)
    h = fits.Header()
    for i, name in enumerate(("TIME", "DETX", "DETY", "X", "Y"), start=1):
        h[f"TTYPE{i}"] = name
    for i, crp, crv, cdl in ((4, crpx[0], ra0, cdlt[0]), (5, crpx[1], dec0, cdlt[1])):
        h[f"TCRPX{i}"], h[f"TCRVL{i}"], h[f"TCDLT{i}"] = crp, crv, cdl
    fit = skywcs.fit_sky_wcs_from_events(detx, dety, x, y, h)
    assert fit.method == "EVENTFIT"
    np.testing.assert_allclose(fit.wcs.wcs.crval, [ra0, dec0])
    tx = np.array([-12000.0, 0.0, 5000.0, 11000.0])
    ty = np.array([9000.0, 0.0, -14000.0, 3000.0])
    ra, dec = _tan_deproject(*sim.det_to_sky_pix(tx, ty, pa, x0 - 921.0, y0 + 879.0), crpx,
                             (ra0, dec0), cdlt)
    px, py = imaging.det_pixel(tx, ty, 80)
    wra, wdec = fit.wcs.wcs_pix2world(px, py, 1)
    assert _sep_arcsec(ra, dec, wra, wdec).max() < 0.01


def _sep_arcsec(ra1, dec1, ra2, dec2):
    r1, d1, r2, d2 = map(np.radians, (ra1, dec1, ra2, dec2))
    c = np.sin(d1) * np.sin(d2) + np.cos(d1) * np.cos(d2) * np.cos(r1 - r2)
    s = np.hypot(np.cos(d2) * np.sin(r1 - r2),
                 np.cos(d1) * np.sin(d2) - np.sin(d1) * np.cos(d2) * np.cos(r1 - r2))
    return np.degrees(np.arctan2(s, c)) * 3600


def test_simulator_tan_matches_astropy():
    for ra0, dec0 in ((150.1, 2.2), (359.99, 85.0), (0.0, -89.0)):
        w = WCS(naxis=2)
        w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        w.wcs.crpix = [25921, 25921]
        w.wcs.crval = [ra0, dec0]
        w.wcs.cdelt = [-sim.DEG_PER_PIX, sim.DEG_PER_PIX]
        rng = np.random.default_rng(0)
        x = rng.uniform(1, 51840, 100)
        y = rng.uniform(1, 51840, 100)
        ra, dec = sim.pix_to_sky(x, y, ra0, dec0)
        wra, wdec = w.wcs_pix2world(x, y, 1)
        assert _sep_arcsec(ra, dec, wra, wdec).max() < 1e-6
        bx, by = sim.sky_to_pix(ra, dec, ra0, dec0)
        np.testing.assert_allclose([bx, by], [x, y], atol=1e-6)


# ---- event reader ---------------------------------------------------------------------------

def _table(path, n=5000, seed=0, gz=True, pattern_signed=False):
    rng = np.random.default_rng(seed)
    cols = [fits.Column(name="TIME", format="D", array=np.sort(rng.uniform(0, 1e4, n))),
            fits.Column(name="DETX", format="I", array=rng.integers(-18000, 13000, n)),
            fits.Column(name="DETY", format="I", array=rng.integers(-17000, 15000, n)),
            fits.Column(name="X", format="J", array=rng.integers(1, 51840, n)),
            fits.Column(name="Y", format="J", array=rng.integers(1, 51840, n)),
            fits.Column(name="PI", format="I", array=rng.integers(100, 12000, n)),
            fits.Column(name="FLAG", format="J",
                        array=rng.choice([0, 0, 0, 4, 0x10000], n)),
            fits.Column(name="CCDNR", format="B", array=rng.integers(1, 13, n))]
    pat = rng.integers(0, 13, n)
    if pattern_signed:  # signed byte convention: 'B' with TZERO = -128
        cols.append(fits.Column(name="PATTERN", format="B", bzero=-128,
                                array=pat.astype(np.int8)))
    else:
        cols.append(fits.Column(name="PATTERN", format="B", array=pat.astype(np.uint8)))
    ev = fits.BinTableHDU.from_columns(cols, name="EVENTS")
    ev.header["OBS_ID"] = "0123456789"
    gti = fits.BinTableHDU.from_columns(
        [fits.Column(name="START", format="D", array=[0.0, 6000.0]),
         fits.Column(name="STOP", format="D", array=[5000.0, 1e4])], name="STDGTI04")
    hdul = fits.HDUList([fits.PrimaryHDU(), ev, gti])
    if gz:
        with gzip.open(path, "wb") as fh:
            hdul.writeto(fh)
    else:
        hdul.writeto(path)
    return path, pat


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("chunk", [1, 777, 1 << 20])
def test_reader_matches_astropy(tmp_path, gz, chunk):
    path, pat = _table(tmp_path / ("e.FTZ" if gz else "e.fits"), gz=gz)
    ev = events.read_events(path, low_pi=500, high_pi=2000, chunk_rows=chunk)
    d = fits.getdata(path, "EVENTS")
    m = (d["FLAG"] == 0) & (pat <= 4) & (d["PI"] >= 500) & (d["PI"] <= 2000)
    assert ev.n_rows == len(d) and ev.n_selected == m.sum() > 0
    for c in ("TIME", "DETX", "DETY", "X", "Y"):
        np.testing.assert_array_equal(ev.columns[c], d[c][m])
    assert ev.DETX.dtype == np.int32 and ev.TIME.dtype == np.float64
    np.testing.assert_array_equal(ev.ccd_gtis[4], [[0, 5000], [6000, 1e4]])
    np.testing.assert_array_equal(ev.own_gti(), [[0, 5000], [6000, 1e4]])
    assert ev.header["OBS_ID"] == "0123456789"


def test_reader_handles_tzero_columns(tmp_path):
    path, pat = _table(tmp_path / "e.FTZ", pattern_signed=True)
    ev = events.read_events(path, low_pi=0, high_pi=20000)
    d = fits.getdata(path, "EVENTS")
    m = (d["FLAG"] == 0) & (pat <= 4)
    np.testing.assert_array_equal(ev.TIME, d["TIME"][m])


def test_selection_is_inclusive_like_sas():
    pi = np.array([499, 500, 1200, 2000, 2001, 1000, 1000, 1000])
    pattern = np.array([0, 0, 4, 0, 0, 5, 0, 0])
    flag = np.array([0, 0, 0, 0, 0, 0, 0x10000, 0])
    np.testing.assert_array_equal(events.selection_mask(flag, pattern, pi, 500, 2000),
                                  [0, 1, 1, 1, 0, 0, 0, 1])


@pytest.mark.parametrize("cut", [0.5, 0.97])
def test_truncated_gzip_is_a_one_line_pps_error(tmp_path, cut):
    path, _ = _table(tmp_path / "e.FTZ", n=20000)
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * cut)])
    with pytest.raises(PPSError, match="corrupt or truncated") as ei:
        events.read_events(path)
    assert "\n" not in str(ei.value)


def test_corrupt_gzip_and_plain(tmp_path):
    path, _ = _table(tmp_path / "e.FTZ", n=20000)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2: len(raw) // 2 + 64] = b"\xff" * 64
    path.write_bytes(bytes(raw))
    with pytest.raises(PPSError, match="corrupt"):
        events.read_events(path)
    plain, _ = _table(tmp_path / "p.fits", n=20000, gz=False)
    plain.write_bytes(plain.read_bytes()[:50000])
    with pytest.raises(PPSError, match="corrupt"):
        events.read_events(plain)
    junk = tmp_path / "j.FTZ"
    junk.write_bytes(b"not a fits file at all" * 200)
    with pytest.raises(PPSError, match="corrupt"):
        events.read_events(junk)


def test_missing_column_and_extension(tmp_path):
    p = tmp_path / "x.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(
        [fits.Column(name="TIME", format="D", array=[1.0])], name="EVENTS")]).writeto(p)
    with pytest.raises(PPSError, match="no column"):
        events.read_events(p)
    q = tmp_path / "y.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(
        [fits.Column(name="TIME", format="D", array=[1.0])], name="RATE")]).writeto(q)
    with pytest.raises(PPSError, match="no EVENTS"):
        events.read_events(q)
    with pytest.raises(PPSError, match="not found"):
        events.read_events(tmp_path / "missing.FTZ")


def test_read_header_stops_early(tmp_path):
    path, _ = _table(tmp_path / "e.FTZ", n=2000)
    prim, h = events.read_header(path)
    assert h["EXTNAME"] == "EVENTS" and h["OBS_ID"] == "0123456789"
    _, g = events.read_header(path, "STDGTI04")
    assert g["NAXIS2"] == 2
    with pytest.raises(PPSError, match="no RATE"):
        events.read_header(path, "RATE")


@pytest.mark.parametrize("date, scale", [("2001-01-30T15:44:46", "TT"),
                                         ("2019-07-11T11:42:31.5", "TT"),
                                         ("2019-07-11T11:42:31.5", "TAI")])
def test_mjd_obs_of_a_utc_date_obs_is_in_timesys(date, scale):
    """An image without TSTART whose DATE-OBS says UTC (as XMM's do, under TIMESYS = 'TT'):
    MJD-OBS is that instant in TIMESYS (TT - UTC was 64.184 s in 2001, 69.184 s in 2019);
    without the UTC note it is the date as written."""
    from astropy.time import Time

    h = fits.Header()
    h["TIMESYS"] = scale
    h["MJDREF"] = 50814.0
    h["DATE-OBS"] = (date, "Start Time (UTC) of exposure")
    h["DATE-END"] = date
    got = skywcs.time_keywords(h)
    want = getattr(Time(date, scale="utc"), scale.lower()).mjd
    assert got["MJD-OBS"] == pytest.approx(want, abs=1e-9)
    assert got["MJD-END"] == pytest.approx(Time(date, scale="tt").mjd, abs=1e-9)


def test_a_date_past_the_leap_second_table_gives_no_warning():
    """erfa.dat warns 'dubious year' past its table's horizon; a batch would log it for
    every observation (and -W error would fail it)."""
    import warnings

    h = fits.Header()
    h["TIMESYS"] = "TT"
    h["DATE-OBS"] = ("2031-05-01T00:00:00", "Start Time (UTC) of exposure")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = skywcs.time_keywords(h)
    assert got["MJD-OBS"] == pytest.approx(62987 + 69.184 / 86400, abs=1e-9)
