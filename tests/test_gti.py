"""Good time intervals: tabgtigen semantics, GTI algebra, the --expo_time sub-GTI."""
import warnings

import numpy as np
import pytest
from astropy.io import fits

from xmm_enhance import gti
from xmm_enhance.errors import PPSError


def _curve(rates, t0=1000.0, dt=10.0):
    rates = np.asarray(rates, float)
    return t0 + dt * (np.arange(len(rates)) + 0.5), rates


# ---- tabgtigen semantics -------------------------------------------------------------------

def test_rows_where_true_keep_their_whole_bin():
    t, r = _curve([1] * 10 + [9] * 3 + [1] * 7)
    g = gti.gti_from_rate(t, r, threshold=2.0, timedel=10.0, min_gti_s=0)
    np.testing.assert_array_equal(g, [[1000, 1100], [1130, 1200]])


def test_threshold_is_inclusive():
    t, r = _curve([2.0] * 10)
    g = gti.gti_from_rate(t, r, threshold=2.0, timedel=10.0)
    np.testing.assert_array_equal(g, [[1000, 1100]])


def test_nan_rate_is_bad():
    t, r = _curve([1] * 8 + [np.nan] * 2 + [1] * 8)
    g = gti.gti_from_rate(t, r, threshold=2.0, timedel=10.0)
    np.testing.assert_array_equal(g, [[1000, 1080], [1100, 1180]])


def test_intervals_shorter_than_50s_dropped():
    # 4 good bins (40 s) between flares, then 5 (50 s, kept: the limit is inclusive)
    t, r = _curve([9] + [1] * 4 + [9] + [1] * 5 + [9])
    g = gti.gti_from_rate(t, r, threshold=2.0, timedel=10.0)
    np.testing.assert_array_equal(g, [[1060, 1110]])
    g0 = gti.gti_from_rate(t, r, threshold=2.0, timedel=10.0, min_gti_s=0)
    assert len(g0) == 2


def test_all_bad_gives_empty():
    t, r = _curve([9, 9, np.nan])
    assert gti.gti_from_rate(t, r, 2.0, 10.0).shape == (0, 2)


def test_rate_shape_mismatch_and_bad_timedel():
    with pytest.raises(ValueError):
        gti.gti_from_rate([1, 2], [1], 1.0, 10.0)
    with pytest.raises(ValueError):
        gti.gti_from_rate([1, 2], [1, 1], 1.0, 0.0)


# ---- algebra --------------------------------------------------------------------------------

def test_merge_overlapping_and_touching():
    g = gti.merge([[5, 7], [0, 2], [2, 3], [6, 9], [10, 11], [4, 4]])
    np.testing.assert_array_equal(g, [[0, 3], [5, 9], [10, 11]])


def test_intersect():
    a = [[0, 10], [20, 30]]
    b = [[5, 25], [28, 40]]
    np.testing.assert_array_equal(gti.intersect(a, b), [[5, 10], [20, 25], [28, 30]])
    assert gti.intersect(a, []).shape == (0, 2)
    np.testing.assert_array_equal(gti.intersect_many([a, b, [[0, 100]]]),
                                  gti.intersect(a, b))


def test_in_gti_is_half_open():
    g = gti.as_gti([[10, 20], [30, 40]])
    t = np.array([9.999, 10, 15, 20, 25, 30, 39.999, 40])
    np.testing.assert_array_equal(gti.in_gti(t, g), [0, 1, 1, 0, 0, 1, 1, 0])
    assert not gti.in_gti(t, np.empty((0, 2))).any()


def test_algebra_laws_on_random_sets():
    rng = np.random.default_rng(1)
    for _ in range(200):
        a = gti.as_gti(np.sort(rng.uniform(0, 100, (rng.integers(0, 6), 2)), axis=1))
        b = gti.as_gti(np.sort(rng.uniform(0, 100, (rng.integers(0, 6), 2)), axis=1))
        t = rng.uniform(-5, 105, 500)
        ab = gti.intersect(a, b)
        np.testing.assert_array_equal(gti.in_gti(t, ab), gti.in_gti(t, a) & gti.in_gti(t, b))
        np.testing.assert_allclose(gti.total(ab), gti.total(gti.intersect(b, a)))
        u = gti.merge(np.vstack([a, b]))
        np.testing.assert_array_equal(gti.in_gti(t, u), gti.in_gti(t, a) | gti.in_gti(t, b))
        assert gti.total(ab) <= min(gti.total(a), gti.total(b)) + 1e-9
        # clean: sorted, disjoint, positive length
        for g in (ab, u):
            assert (g[:, 1] > g[:, 0]).all()
            assert (g[1:, 0] > g[:-1, 1]).all()


# ---- sub-GTI of --expo_time -----------------------------------------------------------------

def test_longest_interval_long_enough():
    g = [[0, 5000], [10000, 40000], [50000, 70000]]
    out = gti.sub_gti(g, 20000)
    np.testing.assert_array_equal(out, [[10000, 30000]])


def test_accumulate_longest_first_and_cut_the_last_correctly():
    # lengths 8, 6, 5, 3 ks; target 15 ks = 8 + 6 + 1 (the seed's bug would give 4 ks instead)
    g = [[0, 3000], [10000, 18000], [20000, 25000], [30000, 36000]]
    out = gti.sub_gti(g, 15000)
    np.testing.assert_array_equal(out, [[10000, 18000], [20000, 21000], [30000, 36000]])
    assert gti.total(out) == 15000


def test_accumulate_exact_sum_no_empty_piece():
    g = [[0, 4000], [5000, 9000], [10000, 12000]]
    out = gti.sub_gti(g, 8000)
    np.testing.assert_array_equal(out, [[0, 4000], [5000, 9000]])


def test_ties_take_the_earliest():
    g = [[0, 1000], [2000, 3000], [4000, 5000]]
    np.testing.assert_array_equal(gti.sub_gti(g, 1500), [[0, 1000], [2000, 2500]])


def test_expo_le_zero_keeps_all():
    g = gti.as_gti([[0, 10], [20, 30]])
    np.testing.assert_array_equal(gti.sub_gti(g, 0), g)
    np.testing.assert_array_equal(gti.sub_gti(g, -1), g)


@pytest.mark.parametrize("have", [9000, 8600])  # 10 % and 14 % short of 10 ks
def test_short_of_good_time_within_tolerance_is_silent(have):
    g = [[0, have]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = gti.sub_gti(g, 10000)
    np.testing.assert_array_equal(out, g)


def test_short_of_good_time_beyond_tolerance_warns_and_keeps_all():
    g = [[0, 5000], [6000, 8000]]
    with pytest.warns(gti.ExposureWarning, match="keeping all"):
        out = gti.sub_gti(g, 20000)
    np.testing.assert_array_equal(out, g)


@pytest.mark.parametrize("have", [8000, 8400])  # 20 % and 16 % short of 10 ks
def test_short_of_good_time_just_beyond_15_percent_warns(have):
    assert gti.EXPOSURE_TOLERANCE == 0.15
    with pytest.warns(gti.ExposureWarning, match="more than 15% short"):
        out = gti.sub_gti([[0, have]], 10000)
    np.testing.assert_array_equal(out, [[0, have]])


def test_sub_gti_random_totals():
    rng = np.random.default_rng(7)
    for _ in range(200):
        g = gti.as_gti(np.sort(rng.uniform(0, 1e5, (rng.integers(1, 8), 2)), axis=1))
        want = rng.uniform(1, 1.2 * gti.total(g))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", gti.ExposureWarning)
            out = gti.sub_gti(g, want)
        assert gti.total(gti.intersect(out, g)) == pytest.approx(gti.total(out))
        assert gti.total(out) == pytest.approx(min(want, gti.total(g)), abs=1e-6)


# ---- FBKTSR reading -------------------------------------------------------------------------

def _fbktsr(path, thr=3.0, with_thr=True, ext="RATE"):
    t, r = _curve([1.0] * 20 + [8.0] * 5 + [1.0] * 20)
    hdu = fits.BinTableHDU.from_columns(
        [fits.Column(name="TIME", format="D", array=t),
         fits.Column(name="RATE", format="E", array=r)], name=ext)
    hdu.header["TIMEDEL"] = 10.0
    hdu.header["TSTART"] = 1000.0
    hdu.header["TSTOP"] = 1450.0
    if with_thr:
        hdu.header["FLCUTTHR"] = thr
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
    return path


def test_read_fbktsr(tmp_path):
    c = gti.read_fbktsr(_fbktsr(tmp_path / "f.fits"))
    assert c.threshold == 3.0 and c.timedel == 10.0 and len(c.time) == 45
    g = gti.gti_from_rate(c.time, c.rate, c.threshold, c.timedel)
    np.testing.assert_array_equal(g, [[1000, 1200], [1250, 1450]])


def test_read_fbktsr_errors(tmp_path):
    with pytest.raises(PPSError, match="FLCUTTHR"):
        gti.read_fbktsr(_fbktsr(tmp_path / "a.fits", with_thr=False))
    with pytest.raises(PPSError, match="no RATE extension"):
        gti.read_fbktsr(_fbktsr(tmp_path / "b.fits", ext="OTHER"))
    bad = tmp_path / "c.FTZ"
    bad.write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    with pytest.raises(PPSError, match="corrupt"):
        gti.read_fbktsr(bad)


def test_plot_gti(tmp_path):
    pytest.importorskip("matplotlib")
    c = gti.read_fbktsr(_fbktsr(tmp_path / "f.fits"))
    kept = gti.sub_gti(gti.gti_from_rate(c.time, c.rate, c.threshold, c.timedel), 150)
    out = gti.plot_gti(c, kept, tmp_path / "p.png", flare_gti=kept)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
