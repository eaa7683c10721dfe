"""The bundled ONNX models through the product path (``inference.enhance_image``)."""
from __future__ import annotations

import pathlib
import warnings

import numpy as np
import pytest
from astropy.io import fits

from xmm_enhance import detector, evaluation, inference

META_KEYS = ("task", "scale", "input_exposure_ks", "target_exposure_ks", "input_pixel_arcsec",
             "output_pixel_arcsec", "band_kev", "version", "training_recipe",
             "training_commit", "simulator_version", "metrics")


def bundled(which):
    path = inference.default_model_path(which)
    if not path.exists():
        pytest.skip(f"{path.name} not bundled yet")
    return inference.load_model(which)


def as_input(counts, exposure):
    return inference.InputImage(counts=np.asarray(counts, float), exposure=float(exposure),
                                header=fits.Header(), wcs=None, wcs_note="",
                                path=pathlib.Path("in.fits"))


def crop(res, shape=detector.PN_SHAPE):
    s = res.model.scale
    top, left = res.pad
    return res.prediction[s * top:s * (top + shape[0]), s * left:s * (left + shape[1])]


@pytest.mark.parametrize("which", ["SR", "DN"])
def test_metadata(which):
    m = bundled(which)
    missing = [k for k in META_KEYS if k not in m.meta]
    assert not missing, missing
    assert int(m.meta["scale"]) == (2 if which == "SR" else 1)
    assert 416 % int(m.meta.get("stride", 1)) == 0


def test_dn_beats_classical_peers_on_real_images():
    """Held-out Poisson deviance of the product's DN output (issue 3 bar: < 1.255)."""
    model = bundled("DN")
    obs = evaluation.load_real_observations()
    if not obs:
        pytest.skip("../shared/data/real-pn not present")
    dev, dev_gauss = [], []
    for o in obs:
        res = inference.enhance_image(as_input(o.counts20, o.exposure20), model)
        pred = crop(res)
        dev.append(evaluation.heldout_deviance(pred, o))
        m = inference.input_mask(o.counts20)
        dev_gauss.append(evaluation.heldout_deviance(
            evaluation.gaussian_baseline(o.rate20 * m, m, 1.5), o))
        # a pixel that collects photons in the held-out data is never predicted 0
        assert np.all(pred[o.heldout_counts > 0] > 0), o.obsid
    assert np.mean(dev) < 1.255, dev
    assert np.mean(dev) < np.mean(dev_gauss), (dev, dev_gauss)


def test_sr_conserves_flux_and_removes_background_on_a_simulation():
    from xmm_enhance.simulate.instrument import simulate_observation

    model = bundled("SR")
    rng = np.random.default_rng(987654)
    s = simulate_observation(rng, exposure=20e3, kind="blank")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", inference.InputWarning)
        res = inference.enhance_image(as_input(s.counts, s.exposure), model)
    pred = crop(res)
    assert pred.shape == (822, 806)
    truth = float(s.sr_target.sum())
    # background-free: the summed prediction is close to the sky's source flux, far below the
    # input's total (sources + background)
    total_in = float(s.counts.sum() / s.exposure)
    assert abs(pred.sum() - truth) < 0.25 * truth + 0.1 * (total_in - truth)
    assert pred.sum() < 0.8 * total_in


@pytest.mark.parametrize("which", ["SR", "DN"])
def test_the_aperture_rule_narrows_with_the_apertures_rate(which):
    """The bundled rule (session 28, bench_aperture_rule.py): faint sums get the wide end of
    its clip, bright ones the narrow end, at every exposure the models take."""
    m = bundled(which)
    for T in (5e3, 20e3, 150e3):
        r = m.aperture_rule_at(T)
        assert r.rate_slope < 0 and r.scale_min < r.scale <= r.scale_max
        assert r.scale_for(1e-7) == pytest.approx(r.scale_max)
        assert r.scale_for(10.0) == pytest.approx(r.scale_min)
        assert 0.05 < r.scale_min and r.scale_max < 1.5
