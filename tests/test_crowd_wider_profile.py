"""The crowd refit's wider-profile check (``sources._refit_crowds``): a crowded candidate is
refitted with its neighbours' PSFs only where the group's PSFs fit at least as well as the
group drawn with the King profile ``EXTENT_RC_FACTOR`` times wider in its core.

The field: a faint blob with four bright ones around it, 5.5 1x pixels (22") out, every one
genuinely extended (drawn with that wider profile), and a points map with one peak on each
blob (a network that takes every knot for a point). Each blob looks extended and has likely
neighbours in its window, so each is a crowded candidate, and the blobs are far enough apart
that one elliptical Gaussian does not explain them: the blob test does not stop the faint
one. The wider-profile check does (the wider group fits better by ~100 or more), so the crowd
step refits none of them and nothing is listed; without the check the crowd step refits the
faint one with its neighbours' PSFs (the final extent test then happens to reject it here, so
the spy on the crowd step's refits is what sees the difference). The same group drawn with
the PSF is refitted by the crowd step and listed source by source: the check does not block
points, and the spy sees the crowd step's refits."""
import numpy as np

from xmm_enhance import sources

from test_sources import king_image  # noqa: E402

T = 20e3
#: (y, x, counts): a faint blob and four bright ones around it, 5.5 1x pixels out
GROUP = [(48.125, 48.125, 200.0)] + [
    (48.125 + 5.5 * np.sin(0.5 * np.pi * a + 0.3), 48.125 + 5.5 * np.cos(0.5 * np.pi * a + 0.3),
     800.0) for a in range(4)]


def _knots_map(src, shape):
    """A points map (count/s per 2" pixel) with one compact peak on each of ``src``."""
    yy, xx = np.mgrid[:2 * shape[0], :2 * shape[1]]
    pts = np.full(yy.shape, 1e-6)
    for y, x, n in src:
        pts += n / T * np.exp(-((yy - (2 * y + 0.5)) ** 2 + (xx - (2 * x + 0.5)) ** 2)
                              / (2 * 0.8 ** 2)) / (2 * np.pi * 0.8 ** 2)
    return pts


def _spy_crowd_refits(monkeypatch):
    """The 1x positions of the candidates that ``_refit_crowds`` hands to ``_refit`` (its
    refit with the neighbours' PSFs in the background), collected while the call runs."""
    seen, inside = [], [False]
    real_refit, real_crowds = sources._refit, sources._refit_crowds

    def refit(st, idx, b_new, **kw):
        if inside[0]:
            seen.extend((float(st.pos_y[i]), float(st.pos_x[i])) for i in idx)
        return real_refit(st, idx, b_new, **kw)

    def crowds(*args, **kw):
        inside[0] = True
        try:
            return real_crowds(*args, **kw)
        finally:
            inside[0] = False

    monkeypatch.setattr(sources, "_refit", refit)
    monkeypatch.setattr(sources, "_refit_crowds", crowds)
    return seen


def _detect(seed, rc_scale):
    counts = king_image((96, 96), GROUP, 0.3, np.random.default_rng(seed), rc_scale=rc_scale)[0]
    return sources.detect_sources(counts, np.ones(counts.shape, bool), T,
                                  _knots_map(GROUP, counts.shape))


def test_a_group_of_extended_blobs_is_not_refitted_as_points(monkeypatch):
    refits = _spy_crowd_refits(monkeypatch)
    for seed in range(4):
        found = _detect(seed, sources.EXTENT_RC_FACTOR)
        assert refits == [], f"seed {seed}: the crowd step refitted {refits} with PSFs"
        assert found == []


def test_the_same_group_of_points_is_refitted_and_listed(monkeypatch):
    refits = _spy_crowd_refits(monkeypatch)
    for seed in range(4):
        del refits[:]
        found = _detect(seed, 1.0)
        assert refits, f"seed {seed}: the crowd step refitted nothing"
        assert all(any(np.hypot(d["y"] - y, d["x"] - x) <= 1.5 for d in found)
                   for y, x, _ in GROUP)
        assert len(found) == len(GROUP)
