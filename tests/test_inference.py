"""Inference plumbing with tiny exact ONNX graphs: geometry, flux, files, bad input."""
from __future__ import annotations

import gzip
import hashlib
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

pytest.importorskip("onnx")

from xmm_enhance import detector, inference, skywcs  # noqa: E402
from xmm_enhance.cli.infer import main  # noqa: E402
from xmm_enhance.errors import ModelError  # noqa: E402

from onnx_graphs import identity_dn, replicate_sr  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture
def models(tmp_path):
    d = tmp_path / "models"
    d.mkdir()
    return {"DN": identity_dn(d / "dn.onnx"), "SR": replicate_sr(d / "sr.onnx")}


def make_image(path, *, shape=detector.PN_SHAPE, exposure=20e3, sky=True, seed=1, src=None,
               bkg=0.3):
    """A pn-like counts image with one bright point source; returns (path, (x, y) 0-based)."""
    rng = np.random.default_rng(seed)
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    x0, y0 = src if src is not None else (180.3, 250.7)
    lam = bkg + 400.0 * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * 2.0 ** 2))
    counts = rng.poisson(lam).astype(np.int32)
    if shape == detector.PN_SHAPE:
        counts[~detector.detector_mask(corners=False)] = 0
    h = fits.Header()
    h["OBS_ID"] = "0123456789"
    h["OBJECT"] = "test field"
    h["RA_PNT"], h["DEC_PNT"], h["PA_PNT"] = 150.1, 2.2, 70.0
    if exposure is not None:
        h["EXPOSURE"] = exposure
    if sky:
        h.update(skywcs.wcs_to_header(skywcs.approx_sky_wcs(150.1, 2.2, 70.0)))
    else:
        h["CTYPE1"], h["CRPIX1"], h["CRVAL1"], h["CDELT1"] = "DETX", 1.0, -18243.5, 80.0
        h["CTYPE2"], h["CRPIX2"], h["CRVAL2"], h["CDELT2"] = "DETY", 1.0, -17487.5, 80.0
    fits.PrimaryHDU(counts, h).writeto(path)
    return path, (x0, y0)


def centroid(a, box=None):
    yy, xx = np.indices(a.shape)
    if box is not None:
        (y0, y1), (x0, x1) = box
        w = np.zeros_like(a)
        w[y0:y1, x0:x1] = a[y0:y1, x0:x1]
        a = w
    return (xx * a).sum() / a.sum(), (yy * a).sum() / a.sum()


def digest(p):
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- geometry
def test_pad_to_offsets_and_crop():
    a = np.arange(411 * 403, dtype=np.float32).reshape(411, 403)
    p, (top, left) = inference.pad_to(a)
    assert p.shape == (416, 416) and (top, left) == (2, 6)
    assert np.array_equal(p[2:413, 6:409], a)
    big = np.ones((420, 500))
    c, (t, l) = inference.pad_to(big)
    assert c.shape == (416, 416) and (t, l) == (-2, -42)


@pytest.mark.parametrize("which", ["SR", "DN"])
def test_source_keeps_radec_and_rate_is_conserved(tmp_path, models, which):
    path, (x0, y0) = make_image(tmp_path / "img.fits")
    model = inference.load_model(which, models[which])
    img = inference.read_input(path)
    res = inference.enhance_image(img, model)
    # the source's sky position from the input image and its WCS
    box = ((int(y0) - 8, int(y0) + 9), (int(x0) - 8, int(x0) + 9))
    cx, cy = centroid(img.counts, box)
    ra0, dec0 = img.wcs.pixel_to_world_values(cx, cy)
    s = model.scale
    top, left = res.pad
    pbox = tuple(((lo + off) * s, (hi + off) * s) for (lo, hi), off in zip(box, (top, left)))
    px, py = centroid(res.prediction, pbox)
    ra1, dec1 = res.output_wcs.pixel_to_world_values(px, py)
    sep_pix = np.hypot((ra1 - ra0) * np.cos(np.radians(dec0)), dec1 - dec0) * 3600 / 4.0
    assert sep_pix < 0.1, f"source moved by {sep_pix:.3f} input pixels"
    # (b) the total rate is conserved (SR: up to the sky's edge at the FoV circle, where 2x
    # sub-pixels of a 1x pixel inside the circle may lie outside it)
    want = res.input_rate
    if s > 1:
        want = np.repeat(np.repeat(want, s, 0), s, 1) / s ** 2
        want = want * inference.sky_transmission(s, res.pad, want.shape)
        assert want.sum() > 0.995 * res.input_rate.sum()
    assert res.prediction.sum() == pytest.approx(want.sum(), rel=1e-5)
    # pixel area of the output grid
    assert abs(np.linalg.det(res.output_wcs.wcs.cd)) == pytest.approx(
        abs(np.linalg.det(img.wcs.wcs.cd)) / s ** 2)


def test_written_input_equals_masked_padded_input(tmp_path, models):
    path, _ = make_image(tmp_path / "img.fits")
    assert main([str(path), "--which", "DN", "--model", str(models["DN"]), "-q"]) == 0
    p_in, p_pred = inference.output_paths(path, "DN")
    with fits.open(p_in, checksum=True) as h:
        written = h[0].data
        hdr = h[0].header
    counts = fits.getdata(path).astype(float)
    mask = inference.input_mask(counts)
    expected, pad = inference.pad_to(np.where(mask, counts / 20e3, 0).astype(np.float32))
    assert written.dtype.kind == "f" and written.dtype.itemsize == 4 and written.shape == (416, 416)
    np.testing.assert_array_equal(written, expected)
    assert hdr["BUNIT"] == "count/s/pixel" and hdr["EXPOSURE"] == 20e3
    assert hdr["CRPIX1"] == pytest.approx(skywcs.approx_sky_wcs(150.1, 2.2, 70).wcs.crpix[0] + 6)
    for k in ("MODEL", "MODELVER", "MODELSHA", "SOFTVER", "INFILE", "CD1_1", "CD2_2"):
        assert k in hdr
    for stray in ("CDELT1", "CROTA2", "PC1_1"):
        assert stray not in hdr
    with fits.open(p_pred) as h:
        assert h[0].header["EXPOSURE"] == 50e3  # the DN target exposure from metadata
        assert h[0].header["MODELSHA"] == digest(models["DN"])


def test_sr_output_grid_and_wcs(tmp_path, models):
    path, _ = make_image(tmp_path / "img.fits.gz")
    assert main([str(path), "--which", "SR", "--model", str(models["SR"]), "-q", "--png"]) == 0
    p_in, p_pred = inference.output_paths(path, "SR")
    assert p_in.name == "img_input_wcs_SR.fits.gz"
    h = fits.getheader(p_pred)
    assert (h["NAXIS1"], h["NAXIS2"]) == (832, 832)
    w_in, w_out = WCS(fits.getheader(p_in)), WCS(h)
    # the 1x pixel x maps to 2x - 0.5 (FITS 1-based): corners of the grids coincide
    for x, y in [(1, 1), (100.5, 37.25), (416, 416)]:
        a = w_in.pixel_to_world_values(x - 1, y - 1)
        b = w_out.pixel_to_world_values(2 * x - 0.5 - 1, 2 * y - 0.5 - 1)
        assert np.allclose(a, b, atol=1e-9)
    assert p_pred.with_name("img_predict_wcs_SR.png").stat().st_size > 10_000


def test_det_image_gets_approximate_wcs_with_note(tmp_path, models):
    path, _ = make_image(tmp_path / "det.fits", sky=False)
    with pytest.warns(inference.InputWarning, match="approximate"):
        img = inference.read_input(path)
    res = inference.enhance_image(img, inference.load_model("DN", models["DN"]))
    p_in, p_pred = inference.write_outputs(res)
    h = fits.getheader(p_pred)
    assert "RA_PNT" in h["WCSNOTE"] and h["CTYPE1"] == "RA---TAN"
    # det(CD) > 0: the DET frame is a mirror image of the sky
    assert h["CD1_1"] * h["CD2_2"] - h["CD1_2"] * h["CD2_1"] > 0


def test_other_shape_is_padded_with_warning(tmp_path, models):
    path, (x0, y0) = make_image(tmp_path / "small.fits", shape=(300, 320), src=(150.2, 140.6))
    with pytest.warns(inference.InputWarning, match="not the pn 411x403"):
        res = inference.enhance_image(inference.read_input(path),
                                      inference.load_model("DN", models["DN"]))
    assert res.pad == (58, 48)
    assert res.input_mask.sum() == 300 * 320


def test_exposure_outside_training_range_warns(tmp_path, models):
    path, _ = make_image(tmp_path / "long.fits", exposure=60e3)
    with pytest.warns(inference.InputWarning, match="trained for 20 ks"):
        inference.read_input(path)


def test_mask_never_zeroes_counted_pixels_and_keeps_corners():
    counts = np.zeros(detector.PN_SHAPE)
    m0 = inference.input_mask(counts)
    corners = detector.corner_mask()
    assert not (m0 & corners).any()          # no corner events: corners masked
    counts[corners] = 1
    counts[0, 0] = 3                          # off-chip pixel that nevertheless has counts
    m1 = inference.input_mask(counts)
    assert m1[corners].all() and m1[0, 0]


def test_sr_sky_ends_at_the_fov_edge(tmp_path, models):
    path, _ = make_image(tmp_path / "img.fits")
    with fits.open(path) as h:
        counts = h[0].data.copy()
        hdr = h[0].header.copy()
    corners = detector.corner_mask()
    counts[corners] = 2  # particle background in the CCD corners outside the FoV
    fits.PrimaryHDU(counts, hdr).writeto(tmp_path / "c.fits")
    img = inference.read_input(tmp_path / "c.fits")
    sr = inference.enhance_image(img, inference.load_model("SR", models["SR"]))
    dn = inference.enhance_image(img, inference.load_model("DN", models["DN"]))
    top, left = sr.pad
    g2 = detector.pn_grid(scale=2)
    fov2 = np.zeros((832, 832), bool)
    fov2[2 * top:2 * top + g2.shape[0], 2 * left:2 * left + g2.shape[1]] = detector.fov_mask(g2)
    rep = np.repeat(np.repeat(sr.input_rate, 2, 0), 2, 1) / 4
    assert np.allclose(sr.prediction[fov2], rep[fov2], rtol=1e-5)  # untouched inside
    # the corners: DN keeps their background, SR has (almost) no sky there
    c1 = np.zeros((416, 416), bool)
    c1[top:top + 411, left:left + 403] = corners
    assert np.allclose(dn.prediction[c1], 2 / img.exposure)
    c2 = np.repeat(np.repeat(c1, 2, 0), 2, 1)
    assert sr.prediction[c2].sum() < 0.25 * rep[c2].sum()
    far = np.zeros((832, 832), bool)  # more than 60" (4 e-folds) outside the circle
    x, y = g2.centres()
    cx, cy = detector.FOV_CENTRE_DET
    d = np.hypot(x[None, :] - cx, y[:, None] - cy) - detector.FOV_RADIUS_DET  # DET units
    far[2 * top:2 * top + g2.shape[0], 2 * left:2 * left + g2.shape[1]] = d * 0.05 > 60
    assert (far & c2).sum() > 1000
    assert np.all(sr.prediction[far & c2] <= 0.02 * rep[far & c2])


def test_mask_agrees_with_reference():
    ref = SHARED / "reference" / "pn_mask_500_2000_detxy_1x.fits.gz"
    if not ref.exists():
        pytest.skip("../shared/data not present")
    r = fits.getdata(ref).astype(bool)
    m = detector.detector_mask(corners=False)
    agree = (m == r).mean()
    assert agree >= 0.99, agree
    r2 = fits.getdata(SHARED / "reference" / "pn_mask_500_2000_detxy_2x.fits.gz").astype(bool)
    assert (detector.detector_mask(detector.pn_grid(80, 2), corners=False) == r2).mean() >= 0.99


def test_real_images_keep_every_counted_pixel(models):
    files = sorted((SHARED / "real-pn" / "20ks").glob("*.fits.gz"))
    if not files:
        pytest.skip("../shared/data/real-pn not present")
    for f in files:
        counts = fits.getdata(f).astype(float)
        m = inference.input_mask(counts)
        assert m[counts > 0].all()


# ----------------------------------------------------------------------------- bad input
def run_cli(args, capsys):
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    return code, [e for e in err if e.startswith("error")]


def test_missing_file(tmp_path, models, capsys):
    code, err = run_cli([str(tmp_path / "nope.fits"), "--which", "DN", "--model",
                         str(models["DN"])], capsys)
    assert code == 1 and len(err) == 1 and "nope.fits" in err[0] and "no such file" in err[0]


@pytest.mark.parametrize("kind", ["not_fits", "truncated_gz", "no_image", "1d", "3d", "nan",
                                  "negative", "no_exposure"])
def test_bad_inputs_one_line_exit_1_untouched(tmp_path, models, capsys, kind):
    p = tmp_path / ("bad.fits.gz" if kind == "truncated_gz" else "bad.fits")
    if kind == "not_fits":
        p.write_text("hello, I am not a FITS file\n" * 100)
    elif kind == "truncated_gz":
        good, _ = make_image(tmp_path / "good.fits")
        blob = gzip.compress(good.read_bytes())
        p.write_bytes(blob[: len(blob) // 2])
    elif kind == "no_image":
        fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(
            [fits.Column("A", "E", array=np.ones(3))])]).writeto(p)
    elif kind in ("1d", "3d"):
        shape = (100,) if kind == "1d" else (2, 30, 30)
        fits.PrimaryHDU(np.ones(shape, np.float32), fits.Header({"EXPOSURE": 2e4})).writeto(p)
    else:
        make_image(p, exposure=None if kind == "no_exposure" else 20e3)
        if kind in ("nan", "negative"):
            with fits.open(p, mode="update") as h:
                h[0].data = h[0].data.astype(np.float32)
                h[0].data[100, 100] = np.nan if kind == "nan" else -1
    before = digest(p)
    code, err = run_cli([str(p), "--which", "DN", "--model", str(models["DN"])], capsys)
    assert code == 1, kind
    assert len(err) == 1 and p.name in err[0], err
    assert digest(p) == before
    assert not list(tmp_path.glob("*_wcs_DN*")), "nothing may be written for a bad input"
    if kind == "no_exposure":  # ... unless the exposure is given
        assert main([str(p), "--which", "DN", "--model", str(models["DN"]), "--exposure",
                     "20000", "-q"]) == 0


def test_all_zero_image_runs_with_warning(tmp_path, models, capsys):
    p = tmp_path / "zeros.fits"
    fits.PrimaryHDU(np.zeros(detector.PN_SHAPE, np.int32),
                    fits.Header({"EXPOSURE": 2e4})).writeto(p)
    assert main([str(p), "--which", "DN", "--model", str(models["DN"])]) == 0
    assert "all zeros" in capsys.readouterr().err


def test_model_missing_corrupt_wrong_meta(tmp_path, models, capsys):
    img, _ = make_image(tmp_path / "img.fits")
    code, err = run_cli([str(img), "--which", "DN", "--model", str(tmp_path / "none.onnx")],
                        capsys)
    assert code == 1 and "model file missing" in err[0] and "make models" in err[0]
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(models["DN"].read_bytes()[:100])
    code, err = run_cli([str(img), "--which", "DN", "--model", str(bad)], capsys)
    assert code == 1 and "corrupt.onnx" in err[0] and len(err) == 1
    code, err = run_cli([str(img), "--which", "DN", "--model", str(models["SR"])], capsys)
    assert code == 1 and "task=SR" in err[0]
    nometa = identity_dn(tmp_path / "nometa.onnx")
    import onnx
    m = onnx.load(nometa)
    del m.metadata_props[:]
    onnx.save(m, nometa)
    code, err = run_cli([str(img), "--which", "DN", "--model", str(nometa)], capsys)
    assert code == 1 and "metadata lacks" in err[0]


def test_default_model_missing_message(tmp_path, monkeypatch):
    monkeypatch.setenv("XMM_ENHANCE_MODELS", str(tmp_path))
    with pytest.raises(ModelError, match="XMM-SuperRes.onnx: model file missing"):
        inference.load_model("SR")


def test_usage_errors_exit_2(tmp_path, models):
    img, _ = make_image(tmp_path / "img.fits")
    with pytest.raises(SystemExit) as e:
        main([str(img), "--which", "XX"])
    assert e.value.code == 2
    assert main([str(img), "--which", "DN", "--model", str(models["DN"]), "--threads",
                 "0"]) == 2


def test_unwritable_outdir(tmp_path, models, capsys):
    img, _ = make_image(tmp_path / "img.fits")
    code, err = run_cli([str(img), "--which", "DN", "--model", str(models["DN"]),
                         "--outdir", "/proc"], capsys)
    assert code == 1 and "not writable" in err[0]


def test_existing_outputs_kept_unless_overwrite(tmp_path, models, capsys):
    img, _ = make_image(tmp_path / "img.fits")
    args = [str(img), "--which", "DN", "--model", str(models["DN"]), "-q"]
    assert main(args) == 0
    p_in, p_pred = inference.output_paths(img, "DN")
    stamp = p_pred.stat().st_mtime_ns
    code, err = run_cli(args, capsys)
    assert code == 1 and "--overwrite" in err[0] and p_pred.stat().st_mtime_ns == stamp
    assert main(args + ["--overwrite"]) == 0


def test_batch_of_files_goes_on_past_a_bad_one(tmp_path, models, capsys):
    good1, _ = make_image(tmp_path / "a.fits")
    bad = tmp_path / "b.fits"
    bad.write_text("junk")
    good2, _ = make_image(tmp_path / "c.fits", seed=3)
    code, err = run_cli([str(good1), str(bad), str(good2), "--which", "SR", "--model",
                         str(models["SR"]), "--outdir", str(tmp_path)], capsys)
    assert code == 1
    assert (tmp_path / "a_predict_wcs_SR.fits.gz").exists()
    assert (tmp_path / "c_predict_wcs_SR.fits.gz").exists()
    assert any("b.fits" in e for e in err)


KILLER = r"""
import os, signal, sys
from astropy.io import fits
real = fits.HDUList.writeto
def dying(self, fileobj, *a, **k):
    if hasattr(fileobj, "write"):
        fileobj.write(b"SIMPLE  =                    T" + b" " * 4000)
        fileobj.flush()
    os.kill(os.getpid(), signal.SIGKILL)
fits.HDUList.writeto = dying
from xmm_enhance.cli.infer import main
sys.exit(main(sys.argv[1:]))
"""


def test_killed_mid_write_leaves_no_partial_output(tmp_path, models):
    img, _ = make_image(tmp_path / "img.fits")
    args = [str(img), "--which", "DN", "--model", str(models["DN"]), "-q"]
    proc = subprocess.run([sys.executable, "-c", KILLER, *args], cwd=ROOT,
                          capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    p_in, p_pred = inference.output_paths(img, "DN")
    assert not p_in.exists() and not p_pred.exists()
    # a rerun completes and clears the killed run's temporary file
    assert main(args) == 0
    assert p_in.exists() and p_pred.exists()
    assert not list(tmp_path.glob(".*.tmp"))
    with fits.open(p_pred, checksum=True) as h:
        assert h[0].data.shape == (416, 416)


def test_root_script_help():
    proc = subprocess.run([sys.executable, str(ROOT / "run_inference_on_real.py"), "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--which" in proc.stdout


def test_real_events_only_on_live_ccd_pixels():
    files = sorted((SHARED / "real-pn" / "full").glob("*.fits.gz"))
    if not files:
        pytest.skip("../shared/data/real-pn not present")
    live = detector.live_mask()
    for f in files:
        counts = fits.getdata(f)
        assert counts[~live].sum() == 0, f.name


def test_preview_model_warns_and_is_marked_in_headers(tmp_path):
    p = replicate_sr(tmp_path / "sr.onnx", status="preview: below its quality bars")
    with pytest.warns(inference.ModelWarning, match="preview"):
        model = inference.load_model("SR", p)
    img, _ = make_image(tmp_path / "img.fits")
    res = inference.enhance_image(inference.read_input(img), model)
    _, p_pred = inference.write_outputs(res)
    assert fits.getheader(p_pred)["MODELSTA"] == "preview"
