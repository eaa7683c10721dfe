"""Tests of the image-level simulator (xmm_enhance.simulate)."""
import numpy as np
import pytest

from xmm_enhance import detector
from xmm_enhance.simulate import psf, sky
from xmm_enhance.simulate.instrument import SIM_VERSION, simulate_observation, vignetting


@pytest.fixture(scope="module")
def obs():
    return simulate_observation(np.random.default_rng(3), exposure=20e3)


def test_shapes_and_types(obs):
    assert obs.counts.shape == (411, 403) and obs.counts.dtype == np.float32
    assert obs.dn_target.shape == (411, 403) and obs.dn_target.dtype == np.float32
    assert obs.bkg_rate.shape == (411, 403) and obs.bkg_rate.dtype == np.float32
    assert obs.sr_target.shape == (822, 806) and obs.sr_target.dtype == np.float32
    assert obs.mask.dtype == bool and obs.exposure == 20e3
    assert isinstance(SIM_VERSION, str)


def test_zero_outside_mask(obs):
    m2 = np.repeat(np.repeat(obs.mask, 2, 0), 2, 1)
    assert not obs.counts[~obs.mask].any()
    assert not obs.dn_target[~obs.mask].any()
    assert not obs.sr_target[~m2].any()
    assert (obs.dn_target[obs.mask] > 0).all(), "every live pixel has background"


def test_mask_only_removes_bad_columns(obs):
    full = detector.detector_mask(corners=True)
    assert not (obs.mask & ~full).any()
    removed = full & ~obs.mask & detector.fov_mask()
    # whatever is removed inside the FoV lies in bad columns
    cols = {c + k for _, c, w in obs.meta["bad_columns"] for k in range(w)}
    assert set(np.flatnonzero(removed.any(axis=0))) <= cols


def test_reproducible():
    a = simulate_observation(np.random.default_rng(7), sr=False)
    b = simulate_observation(np.random.default_rng(7), sr=False)
    assert np.array_equal(a.counts, b.counts) and a.sr_target is None


def test_flux_consistency():
    # without bad columns and edges, SR and DN source fluxes agree (same vignetting and sky)
    for seed in range(3):
        o = simulate_observation(np.random.default_rng(seed), kind="cluster")
        src = (o.dn_target - o.bkg_rate).sum()
        assert abs(o.sr_target.sum() / src - 1) < 0.03


def test_counts_are_poisson_of_target():
    o = simulate_observation(np.random.default_rng(11), exposure=50e3, sr=False, kind="blank")
    mu = o.dn_target[o.mask] * o.exposure
    assert abs(o.counts[o.mask].sum() / mu.sum() - 1) < 0.02


@pytest.mark.parametrize("kind", sorted(sky.FIELD_KINDS))
def test_kinds(kind):
    o = simulate_observation(np.random.default_rng(5), kind=kind, sr=False)
    assert o.meta["kind"] == kind and np.isfinite(o.dn_target).all()


def test_background_levels():
    o = simulate_observation(np.random.default_rng(2), kind="blank", sr=False)
    fov = detector.fov_mask() & o.mask
    b = o.bkg_rate[fov]
    assert 3e-6 < np.median(b) < 1e-4


def test_psf_kernel():
    k = psf.king_kernel(2.7, 1.55, 32)
    assert abs(k.sum() - 1) < 1e-9 and k.argmax() == k.size // 2
    assert abs(psf.king_fwhm(5.4, 1.55) - 8.1) < 0.15


def test_psf_kernel_elongated():
    """q stretches the core along phi + 90 deg and squeezes it along phi, keeping unit sum."""
    c = np.arange(-32, 33)
    for phi, radial_is_x in ((0.0, True), (np.pi / 2, False)):
        k = psf.king_kernel(2.7, 1.55, 32, q=2.0, phi=phi)
        assert abs(k.sum() - 1) < 1e-9 and k.argmax() == k.size // 2
        # second moments within the core (|d| <= 4 px) along the array axes
        core = k[28:37, 28:37]
        mx = (core.sum(axis=0) * c[28:37] ** 2).sum() / core.sum()
        my = (core.sum(axis=1) * c[28:37] ** 2).sum() / core.sum()
        radial, tangential = (mx, my) if radial_is_x else (my, mx)
        assert tangential > 1.5 * radial
    np.testing.assert_allclose(psf.king_kernel(2.7, 1.55, 32, q=1.0, phi=0.7),
                               psf.king_kernel(2.7, 1.55, 32))
    assert psf.elongation(0.0) == 1.0 and psf.elongation(12.0) > psf.elongation(6.0) > 1.0


def _one_source_sky(yx2, rate):
    def draw(rng, kind=None, halo_points=0.0):
        return sky.Sky(image=np.zeros(sky.SHAPE2, np.float32),
                       points_yx=np.array([yx2], float), points_rate=np.array([rate], float),
                       kind="blank", meta={"components": [], "agn_norm": 1.0})
    return draw


@pytest.mark.parametrize("theta_arcmin", [0.3, 12.0])
def test_off_axis_sources_are_elongated_tangentially(monkeypatch, theta_arcmin):
    """Simulator >= 0.14.0: off-axis point sources are wider tangentially than radially, the
    same in the 1x image and in the half-width SR target; on axis they are round."""
    from xmm_enhance import evaluation as ev
    from xmm_enhance.simulate import instrument

    # a source at theta_arcmin from the optical axis, towards the FoV centre's side (upper left)
    ang = np.deg2rad(200.0)
    d = theta_arcmin * 60.0 / sky.PIX2_ARCSEC
    y2 = float(np.rint(sky.AXIS_C2[0] + d * np.sin(ang)))
    x2 = float(np.rint(sky.AXIS_C2[1] + d * np.cos(ang)))
    monkeypatch.setattr(instrument, "draw_sky", _one_source_sky((y2, x2), 0.01))
    o = simulate_observation(np.random.default_rng(5), exposure=20e3)
    src1 = (o.dn_target - o.bkg_rate).astype(np.float64)
    y1, x1 = np.unravel_index(np.argmax(src1), src1.shape)
    axis1 = ((sky.AXIS_C2[0] + 0.5) / 2 - 0.5, (sky.AXIS_C2[1] + 0.5) / 2 - 0.5)
    m1 = np.ones(src1.shape, bool)
    wr1, wt1 = ev.radial_tangential_widths(src1, m1, y1, x1, axis1)
    t2 = o.sr_target.astype(np.float64)
    y2i, x2i = np.unravel_index(np.argmax(t2), t2.shape)
    wr2, wt2 = ev.radial_tangential_widths(t2, np.ones(t2.shape, bool), y2i, x2i, sky.AXIS_C2)
    if theta_arcmin < 1:
        assert 0.95 < wt1 / wr1 < 1.05 and 0.95 < wt2 / wr2 < 1.05
    else:
        assert o.meta["n_stamped"] == 1
        assert wt1 / wr1 > 1.2 and wt2 / wr2 > 1.2, (wr1, wt1, wr2, wt2)
    # the SR target is the same shape at half the size: equal widths in its own pixels
    assert 0.85 < wr2 / wr1 < 1.15 and 0.85 < wt2 / wt1 < 1.15, (wr1, wt1, wr2, wt2)


def test_vignetting_monotone():
    v = vignetting(np.linspace(0, 18, 50))
    assert v[0] == 1 and (np.diff(v) <= 0).all()


def test_logn_logs():
    n = sky.moretti_n_above(np.array([1e-15, 1e-14, 1e-13]))
    assert np.allclose(n, [782, 126, 4.5], rtol=0.05)


def test_partial_columns_have_fewer_counts():
    from xmm_enhance.simulate.instrument import PARTIAL_COLUMNS, coverage_map
    cov = coverage_map()
    assert cov.shape == (411, 403) and cov.max() == 1.0
    o = simulate_observation(np.random.default_rng(4), exposure=1e6, sr=False, kind="blank")
    col = 67  # 10 % coverage in both rows of CCDs
    assert PARTIAL_COLUMNS["lower"][col] == 0.1
    b = o.bkg_rate
    r = b[:, col][o.mask[:, col]].mean() / b[:, col + 3][o.mask[:, col + 3]].mean()
    assert 0.05 < r < 0.2


def test_oot_streak_along_column():
    # a bright source puts 6.3 % of its counts along its CCD column (194 rows)
    for seed in range(20):
        o = simulate_observation(np.random.default_rng(seed), kind="bright_point", sr=False)
        assert all(s["counts"] > 40 for s in o.meta["sources"])
        src = max(o.meta["sources"], key=lambda s: s["rate"])
        y, x = int(round(src["y"])), int(round(src["x"]))
        if src["rate"] > 1 and o.mask[y, x] and o.mask[:, x + 30].sum() > 300:
            break
    rows = np.arange(207, 399) if y > 205 else np.arange(12, 203)
    far = rows[(np.abs(rows - y) > 40) & o.mask[rows, x] & o.mask[rows, x + 30]]
    excess = o.bkg_rate[far, x].mean() - o.bkg_rate[far, x + 30].mean()
    col_rate = (o.dn_target - o.bkg_rate)[rows, x].sum()  # source counts in this CCD column
    expected = 0.063 * col_rate / 194
    assert 0.5 * expected < excess < 1.5 * expected


def test_pileup_keeps_flux_consistency():
    for seed in range(40):
        o = simulate_observation(np.random.default_rng(seed), kind="bright_point")
        if o.meta["piled_up"]:
            p = o.meta["piled_up"][0]
            assert 0 < p["flux_kept"] < 1
            src = (o.dn_target - o.bkg_rate).sum()
            assert abs(o.sr_target.sum() / src - 1) < 0.15
            return
    pytest.skip("no piled-up source drawn")


def test_soft_fov_edge_and_corners():
    o = simulate_observation(np.random.default_rng(12), sr=False, kind="blank")
    if not o.meta["corners"]:
        o = simulate_observation(np.random.default_rng(13), sr=False, kind="blank")
    corner = detector.corner_mask() & o.mask
    assert corner.any()
    g = detector.pn_grid()
    x, y = g.centres()
    cx, cy = detector.FOV_CENTRE_DET
    d = (np.hypot(x[None, :] - cx, y[:, None] - cy) - detector.FOV_RADIUS_DET) / g.step
    inner_rows = np.zeros_like(corner)
    inner_rows[13:397] = True  # away from the outer CCD edge rows (see CORNER_EDGE_ROWS)
    far = o.bkg_rate[corner & (d > 10) & inner_rows].mean()
    assert abs(far / o.meta["corner_rate"] - 1) < 0.05  # flat far from the edge (no OOT: blank)
    ratio = far / o.meta["infield_bkg_mean"]
    assert 0.55 < ratio < 1.05
    src = o.dn_target - o.bkg_rate
    assert src[corner & (d > 12)].max() < 1e-3 * max(src.max(), 1e-12) + 1e-9


def test_psf_variants_recorded():
    o = simulate_observation(np.random.default_rng(1), sr=False)
    from xmm_enhance.simulate.instrument import PSF_VARIANTS
    assert tuple(o.meta["psf_variant"]) in PSF_VARIANTS


def test_corner_edge_rows():
    from xmm_enhance.simulate.instrument import CORNER_EDGE_ROWS
    for seed in range(10):
        o = simulate_observation(np.random.default_rng(seed), sr=False, kind="blank")
        if o.meta["corners"] and o.meta["corner_edge_excess"] > 0:
            break
    c = detector.corner_mask() & o.mask
    for r in CORNER_EDGE_ROWS:
        assert o.bkg_rate[r][c[r]].mean() > o.bkg_rate[r - 2 if r > 200 else r + 2][c[r]].mean()


def test_source_free_field_is_background_only():
    a = simulate_observation(np.random.default_rng(11), exposure=20e3)
    b = simulate_observation(np.random.default_rng(11), exposure=20e3, sources=False)
    assert b.meta["kind"] == "empty" and b.meta["sources"] == []
    assert not b.sr_target.any()
    # the target is the background alone (no out-of-time events without sources) ...
    assert np.array_equal(b.dn_target, b.bkg_rate)
    # ... and the same random background, mask and PSF as the field with sources
    assert np.array_equal(a.mask, b.mask)
    assert a.meta["particle_rate"] == b.meta["particle_rate"]
    assert a.meta["psf_variant"] == b.meta["psf_variant"]
    assert (a.dn_target - b.dn_target).sum() > 0


def test_halo_points_trace_the_light_of_clusters_and_galaxies():
    # off by default: the same random stream, hence the same field
    a = simulate_observation(np.random.default_rng(12), exposure=20e3, kind="cluster")
    b = simulate_observation(np.random.default_rng(12), exposure=20e3, kind="cluster",
                             halo_points=0.0)
    assert np.array_equal(a.counts, b.counts)
    rng = np.random.default_rng(4)
    base = sky.draw_sky(np.random.default_rng(4), "cluster")
    s = sky.draw_sky(rng, "cluster", halo_points=40)
    n0 = len(base.points_rate)
    extra_yx, extra_rate = s.points_yx[n0:], s.points_rate[n0:]
    assert np.array_equal(s.points_rate[:n0], base.points_rate)
    assert 20 <= len(extra_rate) <= 65
    lo, hi = sky.HALO_POINT_RATES
    assert extra_rate.min() >= lo and extra_rate.max() <= hi
    # they sit on the emission: the light under them is well above the lit pixels' median
    iy = np.clip(np.rint(extra_yx[:, 0]).astype(int), 0, s.image.shape[0] - 1)
    ix = np.clip(np.rint(extra_yx[:, 1]).astype(int), 0, s.image.shape[1] - 1)
    lit = s.image[s.image > 0]
    assert np.median(s.image[iy, ix]) > 5 * np.median(lit)  # ~1x if placed at random
    # a remnant's light is not traced; only the galaxies and groups any field may hold are
    for seed in range(6):
        r0 = sky.draw_sky(np.random.default_rng(seed), "snr")
        r = sky.draw_sky(np.random.default_rng(seed), "snr", halo_points=40)
        others = [c for c in r.meta["components"] if c["type"] != "snr"]
        if not others:
            assert len(r.points_rate) == len(r0.points_rate)
    # a source-free sky gets none
    e = sky.draw_sky(np.random.default_rng(1), "blank", halo_points=40)
    if not e.image.any():
        assert len(e.points_rate) == len(sky.draw_sky(np.random.default_rng(1), "blank").points_rate)
