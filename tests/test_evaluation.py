"""Tests of xmm_enhance.evaluation on tiny arrays (and the real images when present)."""
import numpy as np
import pytest

from xmm_enhance import evaluation as ev


def _obs(c20, cfull, e20=20e3, efull=60e3):
    shape = c20.shape
    return ev.RealObservation("0000000000", "toy", c20, e20, c20 * 2.5, 50e3, cfull, efull,
                              np.ones(shape, bool))


def test_poisson_deviance_zero_at_truth_and_zero_counts():
    k = np.array([0.0, 1.0, 5.0])
    assert np.allclose(ev.poisson_deviance(k[1:], k[1:]), 0.0)
    assert ev.poisson_deviance(np.array([0.0]), np.array([0.3]))[0] == pytest.approx(0.6)


def test_heldout_deviance_prefers_the_true_rate():
    rng = np.random.default_rng(1)
    rate = np.full((40, 40), 5e-5)
    c20 = rng.poisson(rate * 20e3).astype(float)
    cfull = c20 + rng.poisson(rate * 40e3)
    obs = _obs(c20, cfull)
    d_true = ev.heldout_deviance(rate, obs)
    d_raw = ev.heldout_deviance(obs.rate20, obs)
    assert d_true < d_raw
    # the expected deviance of Poisson counts at their own mean is about 1 for mean 2 counts
    assert 0.5 < d_true < 1.5


def test_sqrt_psnr_and_gain():
    a = np.zeros((10, 10))
    b = np.full((10, 10), ev.LR_RATE_MAX)  # stretched difference 1 -> 0 dB
    assert ev.sqrt_psnr(a, b) == pytest.approx(0.0)
    assert ev.sqrt_psnr(a, a) == np.inf
    rng = np.random.default_rng(2)
    rate = np.full((30, 30), 1e-4)
    c20 = rng.poisson(rate * 20e3).astype(float)
    obs = _obs(c20, c20 + rng.poisson(rate * 40e3))
    assert ev.psnr_gain(rate, obs) > 0.1
    with pytest.raises(ValueError, match="reference"):
        ev.psnr_gain(rate, obs, reference="bad")


def test_gaussian_baseline_is_unbiased_next_to_gaps():
    rate = np.full((32, 32), 3.0)
    mask = np.ones((32, 32), bool)
    mask[:, 10:13] = False
    out = ev.gaussian_baseline(rate * mask, mask, 1.5)
    assert np.allclose(out, 3.0)  # also inside the gap


def _gauss(shape, y, x, sigma, flux):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return flux * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * sigma ** 2)) / (2 * np.pi * sigma ** 2)


def test_fit_fwhm_and_aperture_flux():
    img = _gauss((41, 41), 20, 20, 2.0, 1000.0) + 0.1
    assert ev.fit_fwhm(img, 20, 20, half_width=10) == pytest.approx(2.3548 * 2.0, rel=0.02)
    assert ev.aperture_flux(img, 20, 20, 10.0, background=0.1) == pytest.approx(1000.0, rel=0.01)


def test_find_point_sources_and_sr_metrics():
    mask = np.ones((64, 64), bool)
    counts = _gauss((64, 64), 30, 34, 1.2, 400.0) + 0.2
    src = ev.find_point_sources(counts, mask, min_counts=100, aperture_px=6, isolation_px=10)
    assert [(y, x) for y, x, _ in src] == [(30, 34)]
    # a perfect SR: same source with half the width on the 2x grid (rate per 2" pixel)
    truth2 = _gauss((128, 128), 60.5, 68.5, 1.2, 400.0) / 20e3
    rows = ev.evaluate_sr_sources(counts / 20e3, mask, truth2, sources=[(30, 34)],
                                  truth_2x=truth2)
    assert rows[0]["fwhm_ratio"] == pytest.approx(0.5, abs=0.08)
    assert rows[0]["flux_ratio"] == pytest.approx(1.0, abs=0.05)
    assert rows[0]["flux_ratio_truth"] == pytest.approx(1.0, abs=1e-6)


def test_sr_baselines_conserve_flux():
    rng = np.random.default_rng(3)
    mask = np.ones((48, 48), bool)
    rate = (_gauss((48, 48), 24, 24, 1.5, 500.0) + 1.0) / 20e3
    up = ev.bicubic_upsample(rate, mask)
    assert up.shape == (96, 96)
    assert up.sum() == pytest.approx(500.0 / 20e3, rel=0.05)
    rl = ev.richardson_lucy_2x(rng.poisson(rate * 20e3) / 20e3, mask, iterations=10)
    assert rl.shape == (96, 96) and np.all(rl >= 0)
    # RL keeps the source flux (it also turns background noise into positive flux elsewhere)
    assert ev.aperture_flux(rl * 20e3, 48, 48, 10.0) == pytest.approx(500.0, rel=0.15)
    assert ev.max_aperture_counts(np.zeros((50, 50))) == 0.0


@pytest.mark.skipif(not ev.default_real_dir().is_dir(), reason="shared/data/real-pn not present")
def test_issue_numbers_on_real_images():
    obs = ev.load_real_observations()
    assert len(obs) == 4
    raw = np.mean([ev.heldout_deviance(o.rate20, o) for o in obs])
    assert raw == pytest.approx(22.94, abs=0.01)
    g = ev.evaluate_dn(lambda r, m: ev.gaussian_baseline(r, m, 1.5), obs)
    assert g["deviance"] == pytest.approx(1.418, abs=0.001)


def _real_toy(sources, halo=None, shape=(120, 120), seed=5):
    """A 'real' observation: full (100 ks) and 20 ks counts of point sources on a flat
    background, optionally on a steep galaxy halo."""
    rng = np.random.default_rng(seed)
    lam = np.full(shape, 0.05)  # per 20 ks
    for y, x, n in sources:
        lam = lam + _gauss(shape, y, x, 1.2, n)
    if halo is not None:
        yy, xx = np.mgrid[:shape[0], :shape[1]]
        lam = lam + halo[2] * (1 + ((yy - halo[0]) ** 2 + (xx - halo[1]) ** 2) / 4.0) ** -1.5
    c20 = rng.poisson(lam).astype(float)
    cfull = c20 + rng.poisson(4 * lam)
    return ev.RealObservation("0000000000", "toy", c20, 20e3, c20 * 2.5, 50e3, cfull, 100e3,
                              np.ones(shape, bool))


def test_real_source_selection_keeps_isolated_points_only():
    mask = np.ones((120, 120), bool)
    # an isolated source, a faint one, a close pair (50" apart), and a nucleus on a halo
    obs = _real_toy([(30, 30, 300.0), (30, 90, 20.0), (90, 25, 250.0), (90, 37.5, 250.0),
                     (85, 88, 150.0)], halo=(85, 88, 40.0))
    keep = ev.select_real_point_sources(obs, mask)
    assert keep == [(30, 30)]
    # the first session's selection took the pair and the nucleus too
    legacy = ev.select_real_point_sources(obs, mask, legacy=True)
    assert (30, 30) in legacy and len(legacy) > 1


def test_radial_tangential_widths_follow_the_axis():
    """An elliptical Gaussian stretched perpendicular to the direction to the axis reads wider
    tangentially; rotating the axis by 90 degrees swaps the two widths."""
    yy, xx = np.mgrid[:61, :61].astype(float)
    # source at (30, 30); axis far to the left (radial direction = x), sigma_x 1.0, sigma_y 1.6
    img = 5.0 + 400.0 * np.exp(-((xx - 30) ** 2 / (2 * 1.0 ** 2) + (yy - 30) ** 2 / (2 * 1.6 ** 2)))
    mask = np.ones(img.shape, bool)
    wr, wt = ev.radial_tangential_widths(img, mask, 30, 30, (30.0, -200.0))
    assert wt / wr > 1.3 and wr < wt
    wr2, wt2 = ev.radial_tangential_widths(img, mask, 30, 30, (-200.0, 30.0))
    assert abs(wr2 - wt) < 1e-9 and abs(wt2 - wr) < 1e-9
    # a round source reads round whatever the axis
    rnd = 5.0 + 400.0 * np.exp(-((xx - 30) ** 2 + (yy - 30) ** 2) / (2 * 1.3 ** 2))
    a, b = ev.radial_tangential_widths(rnd, mask, 30, 30, (0.0, 0.0))
    assert abs(a / b - 1) < 1e-6


def test_forward_test_passes_true_sources_and_fails_invented_knots():
    """The forward test of SR features (bench_exposure's like-for-like test): the PSF-matching
    kernel turns the halved King PSF into the full one, a source the SR image draws as the
    truth holds it passes against independent photons, a knot the truth lacks fails."""
    from scipy.signal import fftconvolve
    from xmm_enhance.simulate.psf import king_kernel, king_params

    for theta in (1.0, 7.5, 13.0):
        k = ev.psf_matching_kernel(theta, radius=40)
        rc, al = king_params(theta)
        full, half = king_kernel(rc / 2.0, al, 40), king_kernel(rc / 4.0, al, 40)
        assert abs(k.sum() - 1.0) < 1e-9
        assert np.abs(fftconvolve(half, k, mode="same") - full).max() < 1e-3 * full.max()
    assert [ev.forward_ring(t) for t in (0.0, 4.0, 11.9, 20.0)] == [0, 1, 3, 4]

    rc, al = king_params(1.0)
    n2, expo = 140, 30e3
    flat = 2e-5  # count/s per 2" pixel
    sky_half = np.full((n2, n2), flat)
    sky_full = np.full((n2, n2), flat)
    rate = 0.02  # count/s: 600 counts in 30 ks
    for img, kern in ((sky_half, king_kernel(rc / 4.0, al, 40)),
                      (sky_full, king_kernel(rc / 2.0, al, 40))):
        img[40 - 40:40 + 41, 40 - 40:40 + 41] += rate * kern
    truth4 = sky_full.reshape(70, 2, 70, 2).sum((1, 3)) * expo
    counts = np.random.default_rng(5).poisson(truth4).astype(float)
    mask = np.ones((70, 70), bool)
    knot = sky_half.copy()
    knot[90 - 40:90 + 41, 90 - 40:90 + 41] += 0.01 * king_kernel(rc / 4.0, al, 40)
    maps = ev.forward_counts(knot, expo, np.ones((70, 70)))
    assert len(maps) == len(ev.FORWARD_RINGS)
    pred = maps[ev.forward_ring(1.0)]
    # the forward model of the drawn source predicts the truth's counts
    assert np.allclose(pred[10:30, 10:30], truth4[10:30, 10:30], rtol=0.02)
    pnet, onet, limit = ev.forward_test(pred, counts, mask, 20, 20)
    assert limit > 0 and onet >= limit
    assert abs(pnet / ev.forward_test(truth4, counts, mask, 20, 20)[0] - 1) < 0.02
    pnet, onet, limit = ev.forward_test(pred, counts, mask, 45, 45)
    assert limit > 0 and onet < limit  # 300 predicted counts the independent photons lack
    assert ev.forward_test(pred, counts, mask, 3, 30) is None  # off the edge


def test_forward_map_takes_each_pixel_from_its_own_ring():
    """forward_map is forward_counts' ring map of each 4" pixel's off-axis angle, and linear."""
    from xmm_enhance.detector import AXIS_PIXEL

    rng = np.random.default_rng(3)
    rate2 = rng.gamma(0.5, 1e-5, (822, 806))
    cov = np.ones((411, 403))
    maps = ev.forward_counts(rate2, 1e4, cov)
    one = ev.forward_map(rate2, 1e4, cov)
    assert one.shape == (411, 403)
    for y, x in ((205, 201), (150, 300), (30, 200), (400, 10), (205, 380)):
        theta = np.hypot(y - AXIS_PIXEL[0], x - AXIS_PIXEL[1]) * 4.0 / 60
        assert one[y, x] == maps[ev.forward_ring(theta)][y, x]
    # rings differ, so the choice matters: at least two rings' maps disagree on a pixel
    assert not np.allclose(maps[0], maps[-1])
    assert np.allclose(ev.forward_map(2.5 * rate2, 1e4, cov), 2.5 * one)
    # another axis moves the rings
    assert not np.array_equal(ev.forward_map(rate2, 1e4, cov, axis=(0.0, 0.0)), one)
