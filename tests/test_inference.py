"""Inference plumbing with tiny exact ONNX graphs: geometry, flux, files, bad input."""
from __future__ import annotations

import gzip
import hashlib
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

pytest.importorskip("onnx")

from xmm_enhance import detector, inference, skywcs  # noqa: E402
from xmm_enhance.cli.infer import main  # noqa: E402
from xmm_enhance.errors import ModelError  # noqa: E402

from onnx_graphs import exposure_aware, identity_dn, offset_model, replicate_sr  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture
def models(tmp_path):
    d = tmp_path / "models"
    d.mkdir()
    return {"DN": identity_dn(d / "dn.onnx"), "SR": replicate_sr(d / "sr.onnx")}


def make_image(path, *, shape=detector.PN_SHAPE, exposure=20e3, sky=True, seed=1, src=None,
               bkg=0.3, extra=None):
    """A pn-like counts image with one bright point source; returns (path, (x, y) 0-based).

    ``extra``: header keywords to add (or, with value None, to remove) at the end.
    """
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
    for k, v in (extra or {}).items():
        if v is None:
            h.remove(k, ignore_missing=True)
        else:
            h[k] = v
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
    # the 411 x 403 pn image sits 6 columns and 2 rows into the 416 x 416 grid (docs/outputs.md)
    assert pad == (2, 6) and (hdr["PADTOP"], hdr["PADLEFT"]) == pad
    with fits.open(p_pred) as h:
        assert h[0].header["EXPOSURE"] == 50e3  # the DN target exposure from metadata
        assert h[0].header["MODELSHA"] == digest(models["DN"])
        assert (h[0].header["PADTOP"], h[0].header["PADLEFT"]) == pad


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
    img = inference.read_input(path)
    with pytest.warns(inference.InputWarning, match="trained for 20 ks"):
        inference.enhance_image(img, inference.load_model("DN", models["DN"]))


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
    # 483 of 165 633 pixels differ (session 27): 145 in one column the reference flags (an
    # observation's own), the rest single pixels on the field-of-view circle. A column of the
    # detector tables off by one adds ~190, the CCD edges left out ~2000.
    assert (m != r).sum() <= 600, (m != r).sum()
    r2 = fits.getdata(SHARED / "reference" / "pn_mask_500_2000_detxy_2x.fits.gz").astype(bool)
    m2 = detector.detector_mask(detector.pn_grid(80, 2), corners=False)
    assert (m2 != r2).sum() <= 2400, (m2 != r2).sum()      # 1984: the same pixels, 4 each


def test_mask_drops_the_ccd_edges_flagged_and_dead_columns_inside_the_field():
    # the detector tables (detector.py, measured on five observations), pixel by pixel, for
    # runs without ../shared; 0-based [row, column] on the 411 x 403 pn grid
    m = detector.detector_mask(corners=False)
    assert not m[150, 65] and not m[150, 66] and m[150, 64] and m[150, 67]  # CCD edge 66-67
    assert not m[10, 150] and m[11, 150] and not m[399, 150] and m[398, 150]  # read-out rows
    assert not m[250, 323] and not m[250, 324] and not m[250, 370]          # flagged (upper)
    assert m[150, 323] and m[150, 370]                                      # live below
    assert not m[150, 93] and not m[150, 94] and m[150, 92] and m[150, 95]  # gap 94-95
    cov = detector.coverage_map()
    np.testing.assert_allclose(cov[[11, 203, 206, 398], 201], [0.12, 0.8, 0.15, 0.75])
    assert np.all(cov[[12, 202, 207, 397], 201] == 1.0)
    assert cov[150, 92] == pytest.approx(0.65) and cov[250, 92] == 1.0      # per CCD row


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


def test_all_zero_image_is_refused(tmp_path, models, capsys):
    """No counts: nothing to predict from (an empty band or selection), one error line."""
    p = tmp_path / "zeros.fits"
    fits.PrimaryHDU(np.zeros(detector.PN_SHAPE, np.int32),
                    fits.Header({"EXPOSURE": 2e4})).writeto(p)
    code, err = run_cli([str(p), "--which", "DN", "--model", str(models["DN"])], capsys)
    assert code == 1 and len(err) == 1 and "no counts" in err[0] and "zeros.fits" in err[0]
    assert not list(tmp_path.glob("zeros_*"))   # nothing written


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


# ----------------------------------------------------------------------------- hardening (issue 14)
def error_lines(capsys):
    return [e for e in capsys.readouterr().err.strip().splitlines() if e.startswith("error")]


def wcs_outputs(folder):
    return sorted(p.name for p in Path(folder).glob("*_wcs_*"))


#: header keys of make_image's WCS, to remove (extra={...: None}) for images without one
NO_WCS = {k: None for k in ("WCSAXES", "CTYPE1", "CTYPE2", "CUNIT1", "CUNIT2", "CRPIX1",
                            "CRPIX2", "CRVAL1", "CRVAL2", "CDELT1", "CDELT2", "CD1_1", "CD1_2",
                            "CD2_1", "CD2_2", "RADESYS", "EQUINOX")}


def tan_keys(pixel_arcsec, pa_deg=70.0, crpix=(200.0, 210.0)):
    """RA---TAN/DEC--TAN keywords with a CD matrix: square pixels of ``pixel_arcsec``."""
    c = pixel_arcsec / 3600.0
    s, k = np.sin(np.radians(pa_deg)), np.cos(np.radians(pa_deg))
    return {**NO_WCS, "CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRPIX1": crpix[0],
            "CRPIX2": crpix[1], "CRVAL1": 150.1, "CRVAL2": 2.2, "CD1_1": c * s, "CD1_2": -c * k,
            "CD2_1": c * k, "CD2_2": c * s}


def test_own_outputs_are_refused_by_their_header_not_only_their_name(tmp_path, models, capsys):
    img, _ = make_image(tmp_path / "img.fits")
    assert main([str(img), "--which", "SR", "--model", str(models["SR"]), "-q"]) == 0
    p_in, p_pred = inference.output_paths(img, "SR")
    renamed = tmp_path / "renamed.fits.gz"  # provenance in the header, an innocent name
    renamed.write_bytes(p_pred.read_bytes())
    before = sorted(tmp_path.iterdir())
    for f in (p_pred, p_in, renamed):
        code, err = run_cli([str(f), "--which", "DN", "--model", str(models["DN"])], capsys)
        assert code == 1 and len(err) == 1, (f.name, err)
        assert str(f) in err[0] and "not a counts image" in err[0], err
        assert "made from (img.fits)" in err[0], err  # the fix: the image it came from
    assert sorted(tmp_path.iterdir()) == before  # nothing written


def test_glob_over_a_folder_with_outputs_refuses_them_per_file(tmp_path, models, capsys):
    a, _ = make_image(tmp_path / "a.fits")
    assert main([str(a), "--which", "DN", "--model", str(models["DN"]), "-q"]) == 0
    b, _ = make_image(tmp_path / "b.fits", seed=2)
    files = sorted(str(p) for p in tmp_path.glob("*.fits*"))  # what `dir/*.fits*` gives
    assert len(files) == 4
    code, err = run_cli(files + ["--which", "DN", "--model", str(models["DN"]), "--overwrite"],
                        capsys)
    assert code == 1  # never 0 when an input was refused
    assert wcs_outputs(tmp_path) == ["a_input_wcs_DN.fits.gz", "a_predict_wcs_DN.fits.gz",
                                     "b_input_wcs_DN.fits.gz", "b_predict_wcs_DN.fits.gz"]
    refused = [e for e in err if "not a counts image" in e]
    assert len(refused) == 2 and any("2 of 4 inputs failed" in e for e in err), err


@pytest.mark.parametrize("bunit,ok", [
    ("count", True), ("counts", True), ("ct", True), ("counts/pixel", True),
    ("count/s/pixel", False), ("counts/s", False), ("ct s-1", False), ("erg/cm2/s", False),
    ("adu", False)])
def test_bunit_must_be_counts(tmp_path, models, capsys, bunit, ok):
    img, _ = make_image(tmp_path / "img.fits", extra={"BUNIT": bunit})
    code, err = run_cli([str(img), "--which", "DN", "--model", str(models["DN"]), "-q"], capsys)
    if ok:
        assert code == 0 and not err
    else:
        assert code == 1 and len(err) == 1, err
        assert str(img) in err[0] and f"BUNIT = '{bunit}'" in err[0] and "counts image" in err[0]
        assert not wcs_outputs(tmp_path)


def test_rate_image_without_bunit_is_refused(tmp_path, models, capsys):
    img, _ = make_image(tmp_path / "img.fits")
    with fits.open(img) as h:
        counts, hdr = h[0].data.copy(), h[0].header.copy()
    fits.PrimaryHDU((counts / 20e3).astype(np.float32), hdr).writeto(tmp_path / "rate.fits")
    code, err = run_cli([str(tmp_path / "rate.fits"), "--which", "DN", "--model",
                         str(models["DN"])], capsys)
    assert code == 1 and len(err) == 1 and "rate.fits" in err[0] and "non-integer" in err[0]
    assert not wcs_outputs(tmp_path)
    # float pixels holding whole numbers are counts (evselect can write Real64 images)
    fits.PrimaryHDU(counts.astype(np.float64), hdr).writeto(tmp_path / "real64.fits")
    assert main([str(tmp_path / "real64.fits"), "--which", "DN", "--model", str(models["DN"]),
                 "-q"]) == 0


@pytest.mark.parametrize("case,found", [
    ("binsize40", 2.0),     # make_detxy_pn_image_pps.py --binSize 40: sky WCS and BINSIZE
    ("pps_sky", 4.35),      # a PPS sky image: CDELT + CROTA2 at 4.35"
    ("det_cdelt40", 2.0),   # a SAS DET image binned 40, no sky WCS
    ("binsize_only", 8.0),  # BINSIZE 160 and no WCS at all
])
def test_wrong_pixel_scale_is_refused(tmp_path, models, capsys, case, found):
    if case == "binsize40":
        extra = {**tan_keys(2.0), "BINSIZE": 40.0}
    elif case == "pps_sky":
        extra = {**NO_WCS, "CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRPIX1": 150.5,
                 "CRPIX2": 160.5, "CRVAL1": 150.1, "CRVAL2": 2.2, "CDELT1": -4.35 / 3600,
                 "CDELT2": 4.35 / 3600, "CROTA2": 20.0}
    elif case == "det_cdelt40":
        extra = {"CDELT1": 40.0, "CDELT2": 40.0}
    else:
        extra = {**NO_WCS, "BINSIZE": 160.0}
    img, _ = make_image(tmp_path / "img.fits", shape=(300, 320), src=(150.2, 140.6),
                        sky=case != "det_cdelt40", extra=extra)
    code, err = run_cli([str(img), "--which", "SR", "--model", str(models["SR"])], capsys)
    assert code == 1 and len(err) == 1, err
    assert str(img) in err[0] and f'{found:g}"/pixel' in err[0] and '4"/pixel' in err[0], err
    assert "--binSize 80" in err[0]
    assert not wcs_outputs(tmp_path)


@pytest.mark.parametrize("case", ["cd4", "cd4.1", "binsize80", "cdelt_crota4", "seed_det"])
def test_four_arcsec_images_are_accepted(tmp_path, models, case):
    shape, extra, sky = (300, 320), {}, True
    if case == "cd4":
        extra = {**tan_keys(4.0), "BINSIZE": 80.0}
    elif case == "cd4.1":  # 2.5 % off, within the tolerance of a fitted WCS
        extra = tan_keys(4.1)
    elif case == "binsize80":
        extra = {**NO_WCS, "BINSIZE": 80.0}
    elif case == "cdelt_crota4":
        # the DETX/DETY frame at PA_PNT 70 deg written as CDELT and CROTA2 (90 - 70 deg); the
        # DET frame is mirrored against the sky's usual east-left, so CDELT1 > 0
        extra = {**NO_WCS, "CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRPIX1": 150.5,
                 "CRPIX2": 160.5, "CRVAL1": 150.1, "CRVAL2": 2.2, "CDELT1": 4.0 / 3600,
                 "CDELT2": 4.0 / 3600, "CROTA2": 20.0}
    else:  # the seed's DET image: 411x403, DETX/DETY axes at 80, no sky WCS
        shape, sky = detector.PN_SHAPE, False
    img, _ = make_image(tmp_path / "img.fits", shape=shape, sky=sky, extra=extra,
                        src=(150.2, 140.6))
    assert main([str(img), "--which", "SR", "--model", str(models["SR"]), "-q"]) == 0
    assert inference.output_paths(img, "SR")[1].exists()


def test_real_seed_image_is_accepted(tmp_path, models):
    files = sorted((SHARED / "real-pn" / "20ks").glob("*.fits.gz"))
    if not files:
        pytest.skip("../shared/data/real-pn not present")
    assert main([str(files[0]), "--which", "DN", "--model", str(models["DN"]), "--outdir",
                 str(tmp_path), "-q"]) == 0


@pytest.mark.parametrize("overwrite", [False, True])
def test_same_stem_from_two_folders_is_refused_before_writing(tmp_path, models, capsys,
                                                              overwrite):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, _ = make_image(tmp_path / "a" / "img.fits")
    b, _ = make_image(tmp_path / "b" / "img.fits.gz", seed=2)
    out = tmp_path / "out"
    args = [str(a), str(b), "--which", "SR", "--model", str(models["SR"]), "--outdir", str(out)]
    code, err = run_cli(args + (["--overwrite"] if overwrite else []), capsys)
    assert code == 2 and len(err) == 1, err  # a usage error
    assert str(a) in err[0] and str(b) in err[0] and "img_predict_wcs_SR.fits.gz" in err[0]
    assert not out.exists()  # nothing written, not even the folder


def test_same_stem_in_one_folder_is_refused_and_a_repeated_file_runs_once(tmp_path, models,
                                                                         capsys):
    a, _ = make_image(tmp_path / "img.fits")
    b, _ = make_image(tmp_path / "img.fits.gz", seed=2)
    code, err = run_cli([str(a), str(b), "--which", "DN", "--model", str(models["DN"])],
                        capsys)
    assert code == 2 and len(err) == 1 and not wcs_outputs(tmp_path)
    assert main([str(a), str(a), "--which", "DN", "--model", str(models["DN"]), "-q"]) == 0
    assert wcs_outputs(tmp_path) == ["img_input_wcs_DN.fits.gz", "img_predict_wcs_DN.fits.gz"]


def test_outdir_is_created_like_mkdir_p(tmp_path, models):
    img, _ = make_image(tmp_path / "img.fits")
    out = tmp_path / "new" / "deeper"
    assert main([str(img), "--which", "DN", "--model", str(models["DN"]), "--outdir",
                 f"{out}/", "-q"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["img_input_wcs_DN.fits.gz",
                                                    "img_predict_wcs_DN.fits.gz"]


def test_outdir_that_is_a_file(tmp_path, models, capsys):
    img, _ = make_image(tmp_path / "img.fits")
    f = tmp_path / "afile"
    f.write_text("x")
    code, err = run_cli([str(img), "--which", "DN", "--model", str(models["DN"]), "--outdir",
                         str(f)], capsys)
    assert code == 1 and len(err) == 1 and "afile" in err[0] and "folder" in err[0]


@pytest.mark.parametrize("which", ["sr", "Sr", "dn"])
def test_which_is_case_insensitive(tmp_path, models, which):
    img, _ = make_image(tmp_path / "img.fits")
    w = which.upper()
    assert main([str(img), "--which", which, "--model", str(models[w]), "-q"]) == 0
    assert wcs_outputs(tmp_path) == [f"img_input_wcs_{w}.fits.gz", f"img_predict_wcs_{w}.fits.gz"]


@pytest.mark.parametrize("bad", [["--exposure", "0"], ["--exposure", "-5"], ["--exposure", "nan"],
                                 ["--threads", "0"]])
def test_bad_option_values_exit_2_with_one_line(tmp_path, models, capsys, bad):
    img, _ = make_image(tmp_path / "img.fits")
    code, err = run_cli([str(img), "--which", "DN", "--model", str(models["DN"])] + bad, capsys)
    assert code == 2 and len(err) == 1 and bad[0] in err[0]
    assert not wcs_outputs(tmp_path)


@pytest.mark.parametrize("how", ["header", "option"])
def test_rate_uses_the_inputs_exposure_not_20ks(tmp_path, models, how):
    t = 37_000.0  # not the 20 ks the models are trained for
    img, _ = make_image(tmp_path / "img.fits", exposure=t if how == "header" else None)
    counts = fits.getdata(img).astype(float)
    args = [str(img), "--which", "DN", "--model", str(models["DN"]), "-q"]
    assert main(args + (["--exposure", "37000"] if how == "option" else [])) == 0
    p_in, p_pred = inference.output_paths(img, "DN")
    written, pred = fits.getdata(p_in), fits.getdata(p_pred)
    # by hand: every counted pixel lies on the detector, so the total rate is counts / 37 ks
    assert written.sum() == pytest.approx(counts.sum() / t, rel=1e-5)
    assert pred.sum() == pytest.approx(counts.sum() / t, rel=1e-5)  # identity model
    # the brightest pixel, padded by 2 rows and 6 columns (411x403 -> 416x416)
    iy, ix = np.unravel_index(np.argmax(counts), counts.shape)
    assert counts[iy, ix] > 50
    assert written[iy + 2, ix + 6] == pytest.approx(counts[iy, ix] / t, rel=1e-6)
    assert fits.getheader(p_in)["EXPOSURE"] == t and fits.getheader(p_pred)["INEXPO"] == t


@pytest.mark.parametrize("which", ["DN", "SR"])
def test_negative_model_output_is_clipped_to_zero(tmp_path, which):
    c = 1e-3  # count/s per output pixel: above the background, below the source's peak
    model = offset_model(tmp_path / "neg.onnx", which, c)
    img, _ = make_image(tmp_path / "img.fits")
    assert main([str(img), "--which", which, "--model", str(model), "-q"]) == 0
    pred = fits.getdata(inference.output_paths(img, which)[1])
    assert pred.min() >= 0
    # by hand: an output pixel is max(rate / s^2 - c, 0) with s^2 output pixels per input pixel
    # (the source is well inside the field of view, where SR's sky taper is 1)
    s2 = 4 if which == "SR" else 1
    kept = np.clip(fits.getdata(img).astype(float) / 20e3 / s2 - c, 0, None)
    assert (kept > 0).sum() >= 5
    assert (pred > 0).sum() == s2 * (kept > 0).sum()
    assert pred.sum() == pytest.approx(s2 * kept.sum(), rel=1e-4)


@pytest.mark.parametrize("where", ["serialise", "rename"])
def test_write_error_one_line_and_no_partial_files(tmp_path, models, capsys, monkeypatch, where):
    import errno
    import os

    img, _ = make_image(tmp_path / "img.fits")
    out = tmp_path / "out"
    calls = []

    def second_call_fails(real):
        def f(*a, **k):
            calls.append(1)
            if len(calls) == 2:  # the prediction, after the input file went well
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(*a, **k)
        return f

    if where == "serialise":
        monkeypatch.setattr(fits.HDUList, "writeto", second_call_fails(fits.HDUList.writeto))
    else:
        monkeypatch.setattr(os, "replace", second_call_fails(os.replace))
    args = [str(img), "--which", "DN", "--model", str(models["DN"]), "--outdir", str(out)]
    code, err = run_cli(args, capsys)
    assert code == 1 and len(err) == 1, err
    assert "img_predict_wcs_DN.fits.gz" in err[0] and "No space left on device" in err[0]
    assert sorted(p.name for p in out.iterdir()) == []  # no output, no hidden temporary
    monkeypatch.undo()
    assert main(args + ["-q"]) == 0
    assert wcs_outputs(out) == ["img_input_wcs_DN.fits.gz", "img_predict_wcs_DN.fits.gz"]


@pytest.mark.parametrize("name_length,recipe", [(55, 1), (90, 1), (55, 2)])
def test_outputs_open_without_any_warning(tmp_path, models, name_length, recipe):
    # a name whose INFILE card cannot hold its comment (55) or needs CONTINUE cards (90);
    # recipe 2: the POINTS, DIFFUSE, LO68, HI68 and SOURCES extensions as well
    name = ("pn_cleaned_" + "x" * name_length)[:name_length] + ".fits"
    img, _ = make_image(tmp_path / name, extra={
        "DATE-OBS": "2019-07-11T11:42:31", "DATE-END": "2019-07-12T07:09:25",
        "MJDREF": 50814.0, "TIMESYS": "TT", "BUNIT": "count", "BINSIZE": 80.0,
        "TIMEUNIT": "s", "TIMEREF": "LOCAL", "TASSIGN": "SATELLITE", "TIMEZERO": 0.0,
        "CLOCKAPP": True, "OBS_MODE": "POINTING"})
    sr = models["SR"] if recipe == 1 else exposure_aware(tmp_path / "sr2.onnx", "SR",
                                                          point_share=0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main([str(img), "--which", "SR", "--model", str(sr)]) == 0
        for p in inference.output_paths(img, "SR"):
            with fits.open(p, checksum=True) as h:
                h.verify("exception")
                hdr = h[0].header
                # every image's WCS too (POINTS, DIFFUSE, LO68, HI68): astropy.wcs has nothing
                # to fix (a DATEREF without its MJDREF gets a 'datfix' warning)
                for e in h:
                    if e.is_image and e.header.get("NAXIS") == 2:
                        WCS(e.header)
    from astropy.time import Time
    assert hdr["MJD-OBS"] == pytest.approx(Time("2019-07-11T11:42:31", scale="tt").mjd,
                                           abs=1e-8)
    assert hdr["DATEREF"].startswith("1998-01-01")
    assert hdr["INFILE"] == name
    # TSTART/TSTOP's time convention and the observation mode come along
    assert (hdr["TIMEUNIT"], hdr["TIMEREF"], hdr["TASSIGN"], hdr["TIMEZERO"], hdr["CLOCKAPP"],
            hdr["OBS_MODE"]) == ("s", "LOCAL", "SATELLITE", 0.0, True, "POINTING")


def test_det_image_outputs_open_without_warning(tmp_path, models):
    img, _ = make_image(tmp_path / "det.fits", sky=False,
                        extra={"DATE-OBS": "2019-07-11T11:42:31", "MJDREF": 50814.0})
    with pytest.warns(inference.InputWarning, match="approximate"):
        res = inference.enhance_image(inference.read_input(img),
                                      inference.load_model("SR", models["SR"]))
    paths = inference.write_outputs(res)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for p in paths:
            WCS(fits.getheader(p))


@pytest.mark.parametrize("kind", ["cd", "cdelt_crota2", "cdelt_pc", "cdelt"])
def test_sky_wcs_is_read_as_astropy_reads_it(kind):
    h = fits.Header()
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
    h["CRPIX1"], h["CRPIX2"], h["CRVAL1"], h["CRVAL2"] = 210.3, 190.7, 202.5, 47.2
    if kind == "cd":
        h["CD1_1"], h["CD1_2"], h["CD2_1"], h["CD2_2"] = -1.0e-3, 4.0e-4, 3.9e-4, 1.05e-3
    else:
        h["CDELT1"], h["CDELT2"] = -1.1e-3, 1.2e-3
        if kind == "cdelt_crota2":
            h["CROTA2"] = 27.0
        elif kind == "cdelt_pc":
            h["PC1_1"], h["PC1_2"], h["PC2_1"], h["PC2_2"] = 0.9, -0.3, 0.35, 0.95
    sky = inference.SkyTan.from_header(h)
    ref = WCS(h)
    px, py = np.array([0.0, 100.5, 415.0, -20.0]), np.array([3.0, 200.25, 415.0, 500.0])
    np.testing.assert_allclose(sky.to_wcs().pixel_to_world_values(px, py),
                               ref.pixel_to_world_values(px, py), rtol=0, atol=1e-10)
    # design §4.3 by hand: padding adds to CRPIX; the 2x grid maps x to 2x - 0.5 (1-based)
    up = sky.padded(6, 2).upscaled(2).to_wcs()
    np.testing.assert_allclose(up.pixel_to_world_values(2 * (px + 2) + 0.5, 2 * (py + 6) + 0.5),
                               ref.pixel_to_world_values(px, py), rtol=0, atol=1e-10)


def test_approximate_sky_is_skywcs_approx_sky_wcs():
    a = inference.approx_sky(150.1, 2.2, 70.0).to_wcs()
    b = skywcs.approx_sky_wcs(150.1, 2.2, 70.0)
    np.testing.assert_allclose(a.wcs.crpix, b.wcs.crpix, rtol=0, atol=1e-12)
    np.testing.assert_allclose(a.wcs.crval, b.wcs.crval, rtol=0, atol=1e-12)
    np.testing.assert_allclose(a.wcs.cd, b.wcs.cd, rtol=1e-15, atol=0)


HEAVY_PROBE = r"""
import sys
from xmm_enhance.cli.infer import main
code = main(sys.argv[1:])
heavy = sorted(m for m in sys.modules
               if m.split(".")[0] in ("matplotlib", "scipy", "astroquery", "dask", "torch")
               or m in ("astropy.wcs", "astropy.table", "astropy.coordinates"))
print("HEAVY", heavy)
sys.exit(code)
"""


@pytest.mark.parametrize("sky", [True, False])
def test_a_run_imports_no_heavy_module(tmp_path, models, sky):
    """Speed (issue 14.12) without timing: a run without --png imports none of these."""
    img, _ = make_image(tmp_path / "img.fits", sky=sky)
    proc = subprocess.run([sys.executable, "-c", HEAVY_PROBE, str(img), "--which", "SR",
                           "--model", str(models["SR"]), "-q"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout, proc.stdout


@pytest.mark.parametrize("backend", ["default", "zlib"])
def test_threaded_gzip_is_one_standard_member(backend, monkeypatch):
    import gzip
    import shutil
    import subprocess
    import zlib

    from xmm_enhance import fitsio
    from xmm_enhance.fitsio import GZIP_CHUNK, gzip_member

    if backend == "zlib":  # the fallback where python-isal is not installed
        monkeypatch.setattr(fitsio, "_isal", None)
    rng = np.random.default_rng(0)
    for n in (0, 7, GZIP_CHUNK, 3 * GZIP_CHUNK + 5):
        raw = rng.integers(0, 3, n, dtype=np.uint8).tobytes()
        g = gzip_member(raw)
        assert g[:2] == b"\x1f\x8b" and gzip.decompress(g) == raw
        # exactly one member: a raw inflate of the body stops at the trailer
        d = zlib.decompressobj(-15)
        assert d.decompress(g[10:]) == raw and d.unused_data == g[-8:]
        if shutil.which("gzip"):
            assert subprocess.run(["gzip", "-t"], input=g).returncode == 0


def test_onnxruntime_writes_nothing_under_home(tmp_path):
    """Importing the package before onnxruntime turns its telemetry off: no device id or upload
    queue under $HOME (the control, a bare import, writes them)."""
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    for name, code in (("bare", "import onnxruntime"),
                       ("ours", "import xmm_enhance.inference as I, onnxruntime; "
                                "I.load_model('DN')")):
        home = tmp_path / name
        home.mkdir()
        subprocess.run([sys.executable, "-c", code], env={**env, "HOME": str(home)},
                       check=True, cwd=ROOT)
        written = sorted(p.name for p in home.rglob("*"))
        if name == "bare":
            if not written:
                pytest.skip("this onnxruntime build has no telemetry")
            assert ".onnxruntime" in written
        else:
            assert written == [], written


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_follow_the_umask(tmp_path, umask):
    """FITS files and PNGs are written through 0600 temporaries, then given 0666 less the
    umask, as open() would make them: proprietary data stay private under umask 077."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from xmm_enhance.fitsio import atomic_savefig, atomic_write_hdul

    old = os.umask(umask)
    try:
        f = atomic_write_hdul(fits.HDUList([fits.PrimaryHDU(np.zeros((2, 2)))]),
                              tmp_path / "a.fits.gz")
        fig = plt.figure(figsize=(1, 1))
        p = atomic_savefig(fig, tmp_path / "a.png")
        plt.close(fig)
    finally:
        os.umask(old)
    for path in (f, p):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, (path, oct(path.stat().st_mode))


def test_a_live_writers_temporary_is_kept_and_a_dead_ones_removed(tmp_path):
    """Two runs writing one output at once: neither deletes the other's temporary (it failed
    one of them with 'cannot write'); a killed writer's is removed by the next write."""
    import time

    from xmm_enhance.fitsio import atomic_write_hdul, temp_file, temporary_is_stale
    from xmm_enhance.fsmode import _HOST

    out = tmp_path / "x.fits"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = tmp_path / f".x.fits.{os.getppid()}-{_HOST}.abcdefgh.tmp"   # our parent: alive
    gone = tmp_path / f".x.fits.{dead.pid}-{_HOST}.abcdefgh.tmp"
    other_host = tmp_path / f".x.fits.{dead.pid}-0badf00d.abcdefgh.tmp"  # not ours to judge
    old = tmp_path / ".x.fits.abcdefgh.tmp"
    for p in (live, gone, other_host, old):
        p.write_bytes(b"half")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    fd, mine = temp_file(out)
    os.close(fd)
    assert Path(mine).name.startswith(f".x.fits.{os.getpid()}-{_HOST}.")
    assert [temporary_is_stale(p) for p in (live, gone, other_host, old, Path(mine))] == [
        False, True, False, True, False]
    atomic_write_hdul(fits.HDUList([fits.PrimaryHDU()]), out)
    assert sorted(p.name for p in tmp_path.glob(".*.tmp")) == sorted(
        [live.name, other_host.name, Path(mine).name])


def test_a_killed_writer_not_yet_reaped_counts_as_gone():
    """A writer killed with kill -9 whose parent has not reaped it yet (a zombie) is gone:
    its temporaries and download folders are a killed run's."""
    import time

    from xmm_enhance.fsmode import _HOST, owner_gone

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert owner_gone(f".x.{proc.pid}-{_HOST}.abc.tmp") is False
        proc.kill()
        for _ in range(100):                             # killed, not waited for: a zombie
            with open(f"/proc/{proc.pid}/stat", "rb") as fh:
                if fh.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    break
            time.sleep(0.02)
        assert owner_gone(f".pps-download-{proc.pid}-{_HOST}-abc") is True
        assert owner_gone(f".x.{proc.pid}-0badf00d.abc.tmp") is None   # another host's
    finally:
        proc.wait()


@pytest.mark.parametrize("threads", [-1, 2.7, True, "2"])
def test_load_model_refuses_a_bad_thread_count(threads):
    """threads=-1 went to onnxruntime as is and 2.7 became 2."""
    from xmm_enhance.errors import UsageError
    with pytest.raises(UsageError, match="threads"):
        inference.load_model("DN", threads=threads)


def test_load_model_takes_zero_threads_as_onnxruntimes_choice():
    assert inference.load_model("DN", threads=0).task == "DN"


@pytest.mark.parametrize("extra, outcome", [
    ({"BINSIZE": 40.0}, 'pixel scale 2"/pixel'),
    ({"BUNIT": "count/s"}, "InputError"),
    ({"MODELSHA": "0" * 64, "CONTENT": "DN prediction"}, "InputError"),
    ({"SLCTEXPR": "(PI in [2000:10000])"}, "warns"),
    ({"SUBMODE": "PrimeSmallWindow"}, "warns"),
])
def test_an_image_made_in_memory_gets_the_header_checks_of_a_file(tmp_path, models, extra,
                                                                 outcome):
    """checked_image said it checks an InputImage as read_input checks a file, but looked at
    the counts and the exposure only: a 2"/pixel image, a rate image or one of this tool's
    outputs ran without a word."""
    from xmm_enhance.errors import InputError
    from xmm_enhance.inference import InputWarning

    path, _ = make_image(tmp_path / "a.fits", extra=extra)
    with fits.open(path) as h:
        counts, header = h[0].data.astype(np.float64), h[0].header.copy()
    img = inference.InputImage(counts, 2e4, header)
    model = inference.load_model("DN", models["DN"])
    if outcome == "warns":
        with pytest.warns(InputWarning, match="PI 2000-10000|SUBMODE"):
            inference.enhance_image(img, model)
    else:
        with pytest.raises(InputError, match=outcome if outcome != "InputError" else None):
            inference.enhance_image(img, model)
    # a file read by read_input is not checked twice (one warning, not two)
    if outcome == "warns":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            inference.enhance_image(inference.read_input(path), model)
        assert len([w for w in caught if issubclass(w.category, InputWarning)]) == 1


@pytest.mark.parametrize("shape, mask, match", [
    ((100, 100), "same", "multiples of 8"),
    ((416, 416), None, "mask"),
    ((416, 416), (400, 416), "mask: shape"),
    ((416,), "same", "2-D"),
])
def test_predict_all_names_bad_feeds(models, shape, mask, match):
    """onnxruntime's own error named a Concat node of the graph (and printed a line of its
    own); mask=None gave a TypeError."""
    from xmm_enhance.errors import UsageError

    model = inference.load_model("DN", models["DN"])
    m = np.ones(shape, bool) if mask == "same" else (None if mask is None else np.ones(mask, bool))
    with pytest.raises(UsageError, match=match):
        model.predict_all(np.zeros(shape, np.float32), m, 2e4)
