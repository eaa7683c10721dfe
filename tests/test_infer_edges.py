"""run_inference_on_real.py edges: the input's energy band, empty images, --exposure against
the header's EXPOSURE, resumable reruns (--skip-existing) and --outdir left as it was when
nothing is written."""
from __future__ import annotations

import gzip
import math
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

pytest.importorskip("onnx")

from xmm_enhance import detector, events, inference  # noqa: E402
from xmm_enhance.errors import InputError, ModelError, OutputError, UsageError  # noqa: E402
from xmm_enhance.cli.infer import build_parser, main  # noqa: E402

from onnx_graphs import exposure_aware, identity_dn, replicate_sr  # noqa: E402
from test_inference import make_image, wcs_outputs  # noqa: E402

pytestmark = pytest.mark.usefixtures("restore_logging")


@pytest.fixture
def dn_model(tmp_path):
    d = tmp_path / "models"
    d.mkdir()
    return identity_dn(d / "dn.onnx")


def run(args, capsys):
    """Exit code, warning lines and error lines of one command-line run."""
    code = main([str(a) for a in args])
    err = capsys.readouterr().err.strip().splitlines()
    return (code, [e for e in err if e.startswith("warning")],
            [e for e in err if e.startswith("error")], err)


def band_expr(lo, hi):
    """SLCTEXPR as make_detxy_pn_image_pps.py writes it."""
    return events.selection_expression(lo, hi, gti="STDGTI")


def stamps(paths):
    return [Path(p).stat().st_mtime_ns for p in paths]


# ----------------------------------------------------------------------------- 1. band
@pytest.mark.parametrize("extra,shown", [
    ({"SLCTEXPR": band_expr(2000, 10000)}, "PI 2000-10000"),
    ({"SLCTEXPR": "PI > 2000 && FLAG == 0"}, "PI >= 2001"),
    ({"DSTYP1": "PI", "DSVAL1": "200:500", "DSUNI1": "eV"}, "PI 200-500"),
])
def test_other_band_warns_once_naming_the_file(tmp_path, dn_model, capsys, extra, shown):
    img, _ = make_image(tmp_path / "hard.fits", extra=extra)
    code, warns, errors, _ = run([img, "--which", "DN", "--model", dn_model], capsys)
    assert code == 0 and not errors
    band = [w for w in warns if "band" in w]
    assert len(band) == 1, warns
    assert "hard.fits" in band[0] and shown in band[0] and "0.5-2 keV" in band[0]
    with pytest.warns(inference.InputWarning, match="hard.fits: energy band"):
        inference.read_input(img)


@pytest.mark.parametrize("extra", [
    {"SLCTEXPR": band_expr(500, 2000)},
    {"SLCTEXPR": "(PI >= 500) && (PI < 2000)"},  # 1999: within the tolerance
    {"DSTYP1": "PI", "DSVAL1": "500:2000"},
    {"SLCTEXPR": "FLAG == 0 && PATTERN <= 4"},  # no PI term: cannot tell
    {},  # no band information at all: images from elsewhere
])
def test_models_band_or_no_band_information_does_not_warn(tmp_path, extra):
    img, _ = make_image(tmp_path / "img.fits", extra=extra)
    with warnings.catch_warnings():
        warnings.simplefilter("error", inference.InputWarning)
        inference.read_input(img)


def test_input_band_reads_the_image_makers_header():
    h = fits.Header({"SLCTEXPR": band_expr(2000, 10000)})
    assert inference.input_band(h)[:2] == (2000, 10000)
    h = fits.Header({"SLCTEXPR": "PI in (500:2000)"})  # exclusive bounds, integer PI
    assert inference.input_band(h)[:2] == (501, 1999)
    h = fits.Header({"SLCTEXPR": "PI in [500:1000] || PI in [3000:4000]"})
    assert inference.input_band(h) is None  # a union: not judged
    assert inference.input_band(fits.Header({"SLCTEXPR": "PIXEL > 3"})) is None


# ----------------------------------------------------------------------------- 2. no counts
def test_image_without_counts_is_refused_and_nothing_written(tmp_path, dn_model, capsys):
    p = tmp_path / "empty.fits"
    h = fits.Header({"EXPOSURE": 2e4, "SLCTEXPR": band_expr(20000, 30000)})
    fits.PrimaryHDU(np.zeros(detector.PN_SHAPE, np.int32), h).writeto(p)
    out = tmp_path / "newdir"
    code, _, errors, _ = run([p, "--which", "DN", "--model", dn_model, "--outdir", out], capsys)
    assert code == 1 and len(errors) == 1, errors
    e = errors[0]
    assert "empty.fits" in e and "no counts" in e and "energy band" in e
    assert "good-time" in e and "PI 20000-30000" in e
    assert not out.exists() and not wcs_outputs(tmp_path)


# ----------------------------------------------------------------------------- 3. --exposure
def test_exposure_option_differing_from_the_header_warns_and_the_header_is_used(
        tmp_path, dn_model, capsys):
    img, _ = make_image(tmp_path / "img.fits", exposure=20e3)
    code, warns, errors, _ = run([img, "--which", "DN", "--model", dn_model,
                                  "--exposure", "5000"], capsys)
    assert code == 0 and not errors
    assert len(warns) == 1, warns
    w = warns[0]
    assert "img.fits" in w and "20000" in w and "5000" in w and "using the header's" in w
    p_in, p_pred = inference.output_paths(img, "DN")
    counts = fits.getdata(img).astype(float)
    assert fits.getheader(p_pred)["INEXPO"] == 20e3
    assert fits.getdata(p_in).sum() == pytest.approx(counts.sum() / 20e3, rel=1e-5)


def test_exposure_option_within_0p1_percent_or_for_a_bad_header_is_silent(tmp_path, dn_model,
                                                                          capsys):
    img, _ = make_image(tmp_path / "img.fits", exposure=20e3)
    code, warns, _, _ = run([img, "--which", "DN", "--model", dn_model, "--exposure",
                             "20015"], capsys)
    assert code == 0 and warns == []
    assert fits.getheader(inference.output_paths(img, "DN")[1])["INEXPO"] == 20e3
    # ... but 0.5 % off is a different exposure: it warns
    code, warns, _, _ = run([img, "--which", "DN", "--model", dn_model, "--exposure",
                             "20100", "--overwrite"], capsys)
    assert code == 0 and len(warns) == 1 and "20100" in warns[0], warns
    # a header EXPOSURE that is not a positive number: the option stands in for it
    bad, _ = make_image(tmp_path / "bad.fits", exposure=0.0)
    code, warns, _, _ = run([bad, "--which", "DN", "--model", dn_model, "--exposure",
                             "22000"], capsys)
    assert code == 0 and warns == []
    assert fits.getheader(inference.output_paths(bad, "DN")[1])["INEXPO"] == 22e3


def test_exposure_help_says_what_happens():
    text = " ".join(build_parser().format_help().split())
    assert "without a valid EXPOSURE" in text and "0.1 %" in text and "header's" in text


# ----------------------------------------------------------------------------- 4. reruns
def test_rerun_with_skip_existing_skips_complete_outputs(tmp_path, dn_model, capsys):
    a, _ = make_image(tmp_path / "a.fits")
    args = [a, "--which", "DN", "--model", dn_model]
    assert main([str(x) for x in args] + ["-q"]) == 0
    done = inference.output_paths(a, "DN")
    before = stamps(done)
    # plain rerun: the error names both ways out
    code, _, errors, _ = run(args, capsys)
    assert code == 1 and "--overwrite" in errors[0] and "--skip-existing" in errors[0]
    # one finished input and one new one
    b, _ = make_image(tmp_path / "b.fits", seed=3)
    code, _, errors, err = run([a, b] + args[1:] + ["--skip-existing"], capsys)
    assert code == 0 and not errors, err
    assert any("a.fits" in e and "skipped" in e for e in err), err
    assert stamps(done) == before
    assert wcs_outputs(tmp_path) == ["a_input_wcs_DN.fits.gz", "a_predict_wcs_DN.fits.gz",
                                     "b_input_wcs_DN.fits.gz", "b_predict_wcs_DN.fits.gz"]


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_skip_existing_redoes_incomplete_outputs(tmp_path, dn_model, capsys, damage):
    a, _ = make_image(tmp_path / "a.fits")
    args = [str(a), "--which", "DN", "--model", str(dn_model), "-q"]
    assert main(args) == 0
    p_in, p_pred = inference.output_paths(a, "DN")
    if damage == "truncate":  # a complete gzip stream of a cut FITS file
        raw = gzip.decompress(p_pred.read_bytes())
        p_pred.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    else:
        p_pred.unlink()
    os.utime(p_in, ns=(0, 0))
    assert main(args + ["--skip-existing"]) == 0
    assert p_in.stat().st_mtime_ns > 0  # the whole set was redone
    with fits.open(p_pred, checksum=True) as h:
        assert h[0].data.shape == (416, 416)


def test_skip_existing_redoes_outputs_of_another_model_or_an_older_input(tmp_path, dn_model,
                                                                         capsys):
    a, _ = make_image(tmp_path / "a.fits")
    args = [str(a), "--which", "DN", "--model", str(dn_model), "-q", "--skip-existing"]
    assert main(args) == 0
    p_in, p_pred = inference.output_paths(a, "DN")
    # another model file (the same graph, another version): the outputs are not its own
    other = identity_dn(tmp_path / "models" / "dn2.onnx", version="test-1")
    os.utime(p_in, ns=(1, 1))
    assert main([str(a), "--which", "DN", "--model", str(other), "-q", "--skip-existing"]) == 0
    assert p_in.stat().st_mtime_ns > 1
    sha = fits.getheader(p_pred)["MODELSHA"]
    # the input made again after its outputs: predicted again
    later = p_pred.stat().st_mtime_ns + 10**9
    os.utime(a, ns=(later, later))
    assert main([str(a), "--which", "DN", "--model", str(other), "-q", "--skip-existing"]) == 0
    assert p_pred.stat().st_mtime_ns > later - 10**9 and fits.getheader(p_pred)["MODELSHA"] == sha
    # and with outputs newer than the input and of this model, skipped
    os.utime(a, ns=(1, 1))
    before = stamps([p_in, p_pred])
    assert main([str(a), "--which", "DN", "--model", str(other), "-q", "--skip-existing"]) == 0
    assert stamps([p_in, p_pred]) == before


def test_skip_existing_redoes_outputs_of_another_file_of_the_same_name(tmp_path, dn_model):
    """Every image from the image maker has one file name. Another observation's image copied
    in with an older time (cp -p, rsync -t) kept the first one's outputs, with exit 0."""
    (tmp_path / "a").mkdir()
    a, _ = make_image(tmp_path / "a" / "pn.fits")
    b, _ = make_image(tmp_path / "pn_b.fits", seed=7, src=(200.2, 150.4),
                      extra={"OBS_ID": "0123456790"})
    out = tmp_path / "out"
    args = ["--which", "DN", "--model", str(dn_model), "-q", "--outdir", str(out),
            "--skip-existing"]
    assert main([str(a)] + args) == 0
    p_in, p_pred = inference.output_paths(a, "DN", out)
    assert fits.getheader(p_pred)["INSHA"] == inference._sha256(a)
    # b takes a's place with its own, older time
    old = p_pred.stat().st_mtime_ns - 10**9
    a.write_bytes(b.read_bytes())
    os.utime(a, ns=(old, old))
    assert main([str(a)] + args) == 0
    assert fits.getheader(p_pred)["OBS_ID"] == "0123456790"
    # the same file again: kept
    before = stamps([p_in, p_pred])
    assert main([str(a)] + args) == 0
    assert stamps([p_in, p_pred]) == before


def test_skip_existing_redoes_outputs_made_with_another_exposure(tmp_path, dn_model):
    """An input without EXPOSURE run again with another --exposure kept the first outputs."""
    a, _ = make_image(tmp_path / "a.fits", exposure=None)
    args = [str(a), "--which", "DN", "--model", str(dn_model), "-q", "--skip-existing"]
    assert main(args + ["--exposure", "20000"]) == 0
    p_pred = inference.output_paths(a, "DN")[1]
    assert fits.getheader(p_pred)["INEXPO"] == 20000
    assert main(args + ["--exposure", "20000"]) == 0
    before = stamps([p_pred])
    assert main(args + ["--exposure", "20000"]) == 0
    assert stamps([p_pred]) == before
    assert main(args + ["--exposure", "20010"]) == 0      # within 0.1 %: the same exposure
    assert stamps([p_pred]) == before
    assert main(args + ["--exposure", "20100"]) == 0      # 0.5 % off: made again
    assert fits.getheader(p_pred)["INEXPO"] == 20100
    assert main(args + ["--exposure", "50000"]) == 0
    assert fits.getheader(p_pred)["INEXPO"] == 50000


def test_a_gzipped_input_cut_short_is_refused(tmp_path, dn_model, capsys):
    """A .fits.gz that lost its end (here the GTI extension after the image) was read up to the
    cut without a word."""
    a, _ = make_image(tmp_path / "a.fits")
    with fits.open(a) as h:
        gti = fits.BinTableHDU.from_columns([fits.Column("START", "D", array=[0.0]),
                                             fits.Column("STOP", "D", array=[2e4])],
                                            name="STDGTI")
        fits.HDUList([h[0].copy(), gti]).writeto(tmp_path / "b.fits")
    raw = gzip.compress((tmp_path / "b.fits").read_bytes())
    cut = tmp_path / "b.fits.gz"
    cut.write_bytes(raw[:-100])
    code, _, errors, err = run([cut, "--which", "DN", "--model", dn_model], capsys)
    assert code == 1 and len(err) == 1 and "b.fits.gz" in errors[0], err
    assert "cut short" in errors[0]
    assert not list(tmp_path.glob("b_*"))


def test_a_plain_fits_input_cut_short_is_one_line(tmp_path, dn_model, capsys):
    """astropy's "File may have been truncated" came as a line of its own before the error."""
    a, _ = make_image(tmp_path / "a.fits")
    raw = a.read_bytes()
    cut = tmp_path / "cut.fits"
    cut.write_bytes(raw[: len(raw) // 2])
    code, _, errors, err = run([cut, "--which", "DN", "--model", dn_model], capsys)
    assert code == 1 and len(err) == 1 and "cut.fits: truncated" in errors[0], err
    # every data byte there, only the final padding left out (some writers do): accepted
    with fits.open(a) as h:
        hdr_len = len(h[0].header.tostring())
        nbytes = h[0].data.dtype.itemsize * h[0].data.size
    unpadded = tmp_path / "unpadded.fits"
    unpadded.write_bytes(raw[: hdr_len + nbytes])
    assert len(raw) > hdr_len + nbytes
    code, _, errors, err = run([unpadded, "--which", "DN", "--model", dn_model], capsys)
    assert code == 0 and not errors, err


def test_skip_existing_needs_the_sr_region_file(tmp_path, capsys):
    model = exposure_aware(tmp_path / "sr.onnx", "SR")
    a, _ = make_image(tmp_path / "a.fits")
    args = [str(a), "--which", "SR", "--model", str(model), "--skip-existing"]
    assert main(args + ["-q"]) == 0
    reg = inference.region_path(a)
    assert reg.is_file()
    paths = list(inference.output_paths(a, "SR")) + [reg]
    before = stamps(paths)
    code, _, errors, err = run(args, capsys)
    assert code == 0 and not errors and stamps(paths) == before
    assert any("skipped" in e for e in err), err
    reg.unlink()
    code, _, errors, err = run(args, capsys)
    assert code == 0 and not errors and reg.is_file()
    assert any("redo" in e and reg.name in e for e in err), err


def test_skip_existing_needs_the_png_with_png(tmp_path, dn_model, capsys):
    pytest.importorskip("matplotlib")
    a, _ = make_image(tmp_path / "a.fits")
    args = [str(a), "--which", "DN", "--model", str(dn_model), "-q"]
    assert main(args) == 0  # no PNG yet
    p_pred = inference.output_paths(a, "DN")[1]
    png = inference.png_path(p_pred)
    assert main(args + ["--skip-existing", "--png"]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    stamp = png.stat().st_mtime_ns
    assert main(args + ["--skip-existing", "--png"]) == 0
    assert png.stat().st_mtime_ns == stamp
    png.write_bytes(png.read_bytes()[:100])  # cut short
    assert main(args + ["--skip-existing", "--png"]) == 0
    assert png.stat().st_mtime_ns != stamp and png.read_bytes()[-8:-4] == b"IEND"


def test_skip_existing_redoes_sr_outputs_made_with_other_source_settings(tmp_path, capsys):
    model = exposure_aware(tmp_path / "sr.onnx", "SR")
    a, _ = make_image(tmp_path / "a.fits")
    args = [a, "--which", "SR", "--model", model, "--skip-existing"]
    assert main([str(x) for x in args] + ["-q"]) == 0
    p_pred = inference.output_paths(a, "SR")[1]
    paths = list(inference.output_paths(a, "SR")) + [inference.region_path(a)]

    def sources_minsig():
        with fits.open(p_pred) as h:
            return h["SOURCES"].header["MINSIG"]

    assert sources_minsig() == 4.5 and "PTMOVED" in fits.getheader(p_pred)
    for extra, why in [(["--min-signif", "3"], "made with --min-signif 4.5, not 3"),
                       (["--min-signif", "3", "--no-redraw"], "made without --no-redraw"),
                       (["--no-redraw"], "made with --min-signif 3, not 4.5 (the default)"),
                       ([], "made with --no-redraw")]:
        before = stamps(paths)
        code, _, errors, err = run(args + extra, capsys)
        assert code == 0 and not errors, err
        assert any("redo" in e and p_pred.name in e and why in e for e in err), (extra, err)
        assert all(t1 > t0 for t0, t1 in zip(before, stamps(paths))), extra
        assert sources_minsig() == (3 if "3" in extra else 4.5)
        assert ("PTMOVED" in fits.getheader(p_pred)) == ("--no-redraw" not in extra)
        # the same settings again: skipped
        before = stamps(paths)
        code, _, errors, err = run(args + extra, capsys)
        assert code == 0 and any("skipped" in e for e in err), (extra, err)
        assert stamps(paths) == before
    assert inference.source_settings_differ(p_pred) == ""
    assert inference.source_settings_differ(p_pred, min_signif=4.5, redraw=False) == (
        "made without --no-redraw")
    # DN lists no sources: nothing to compare
    dn = identity_dn(tmp_path / "dn.onnx")
    assert main([str(a), "--which", "DN", "--model", str(dn), "-q"]) == 0
    p_dn = inference.output_paths(a, "DN")[1]
    assert inference.source_settings_differ(p_dn, min_signif=3, redraw=False) == ""


def test_skip_existing_redoes_a_region_file_older_than_its_prediction(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    model = exposure_aware(tmp_path / "sr.onnx", "SR")
    a, _ = make_image(tmp_path / "a.fits")
    args = [a, "--which", "SR", "--model", model, "--skip-existing", "--png"]
    assert main([str(x) for x in args] + ["-q"]) == 0
    p_in, p_pred = inference.output_paths(a, "SR")
    reg, png = inference.region_path(a), inference.png_path(p_pred)
    # the files of one run: the region file and the PNG are never older than the prediction
    made = p_pred.stat().st_mtime_ns
    assert reg.stat().st_mtime_ns >= made and png.stat().st_mtime_ns >= made
    before = stamps([p_in, p_pred, reg, png])
    code, _, errors, err = run(args, capsys)
    assert code == 0 and not errors and stamps([p_in, p_pred, reg, png]) == before, err
    # a region file left by an earlier prediction (but newer than the input): redone
    os.utime(a, ns=(1, 1))
    os.utime(reg, ns=(made - 10**9, made - 10**9))
    code, _, errors, err = run(args, capsys)
    assert code == 0 and not errors, err
    assert any("redo" in e and f"{reg.name}: older than {p_pred.name}" in e for e in err), err
    assert reg.stat().st_mtime_ns >= p_pred.stat().st_mtime_ns > made


def test_skip_existing_redoes_a_png_older_than_its_prediction(tmp_path, dn_model, capsys):
    pytest.importorskip("matplotlib")
    a, _ = make_image(tmp_path / "a.fits")
    args = [a, "--which", "DN", "--model", dn_model]
    assert main([str(x) for x in args] + ["-q", "--png"]) == 0
    p_pred = inference.output_paths(a, "DN")[1]
    png = inference.png_path(p_pred)
    # the prediction made again without --png: the PNG shows the one before
    assert main([str(x) for x in args] + ["-q", "--overwrite"]) == 0
    made = p_pred.stat().st_mtime_ns
    os.utime(png, ns=(made - 10**9, made - 10**9))
    os.utime(a, ns=(1, 1))  # the PNG is still newer than the input
    code, _, errors, err = run(args + ["--skip-existing", "--png"], capsys)
    assert code == 0 and not errors, err
    assert any("redo" in e and f"{png.name}: older than {p_pred.name}" in e for e in err), err
    assert png.stat().st_mtime_ns >= p_pred.stat().st_mtime_ns > made
    stamp = png.stat().st_mtime_ns
    code, _, errors, err = run(args + ["--skip-existing", "--png"], capsys)
    assert code == 0 and any("skipped" in e for e in err) and png.stat().st_mtime_ns == stamp


def test_skip_existing_with_overwrite_is_a_usage_error(tmp_path, dn_model, capsys):
    a, _ = make_image(tmp_path / "a.fits")
    code, _, errors, _ = run([a, "--which", "DN", "--model", dn_model, "--skip-existing",
                              "--overwrite"], capsys)
    assert code == 2 and len(errors) == 1 and "--skip-existing" in errors[0]
    assert not wcs_outputs(tmp_path)


def test_existing_png_is_refused_before_anything_is_written(tmp_path, dn_model, capsys):
    a, _ = make_image(tmp_path / "a.fits")
    png = inference.png_path(inference.output_paths(a, "DN")[1])
    png.write_bytes(b"not ours")
    code, _, errors, _ = run([a, "--which", "DN", "--model", dn_model, "--png"], capsys)
    assert code == 1 and png.name in errors[0] and "--skip-existing" in errors[0]
    assert wcs_outputs(tmp_path) == [png.name] and png.read_bytes() == b"not ours"


# ----------------------------------------------------------------------------- 5. --outdir
@pytest.mark.parametrize("kind", ["nan", "negative"])
def test_refused_input_leaves_no_outdir(tmp_path, dn_model, capsys, kind):
    img, _ = make_image(tmp_path / "img.fits")
    with fits.open(img, mode="update") as h:
        h[0].data = h[0].data.astype(np.float32)
        h[0].data[100, 100] = np.nan if kind == "nan" else -1
    out = tmp_path / "newdir" / "deeper"
    code, _, errors, _ = run([img, "--which", "DN", "--model", dn_model, "--outdir", out],
                             capsys)
    assert code == 1 and len(errors) == 1 and "img.fits" in errors[0]
    assert not (tmp_path / "newdir").exists()


def test_outdir_under_a_file_is_refused_before_any_work(tmp_path, dn_model, capsys):
    img, _ = make_image(tmp_path / "img.fits")
    f = tmp_path / "afile"
    f.write_text("x")
    code, _, errors, _ = run([img, "--which", "DN", "--model", dn_model, "--outdir",
                              f / "sub"], capsys)
    assert code == 1 and len(errors) == 1 and "afile" in errors[0]
    assert "cannot create the output folder" in errors[0]
    assert f.read_text() == "x"


def test_outdir_that_is_a_file_names_the_option(tmp_path, dn_model, capsys):
    img, _ = make_image(tmp_path / "img.fits")
    f = tmp_path / "afile"
    f.write_text("x")
    code, _, errors, _ = run([img, "--which", "DN", "--model", dn_model, "--outdir", f],
                             capsys)
    assert code == 1 and len(errors) == 1, errors
    assert "afile" in errors[0] and "not a folder" in errors[0] and "--outdir" in errors[0]
    assert f.read_text() == "x" and not wcs_outputs(tmp_path)


# ----------------------------------------------------------------------------- 6. file names
def test_non_ascii_file_and_model_names_are_written_escaped(tmp_path, capsys):
    """A file or folder name with a non-ASCII character (or a tab) ran into astropy's "FITS
    header values must contain standard printable ASCII characters" after the model had run:
    a traceback and no output. INFILE, MODEL and the HISTORY now hold the name escaped."""
    from xmm_enhance.fitsio import header_text

    folder = tmp_path / "données é"
    folder.mkdir()
    img, _ = make_image(folder / "imagé\t1.fits")
    models = tmp_path / "modèles"
    models.mkdir()
    dn = identity_dn(models / "dé.onnx")
    code, _, errors, _ = run([img, "--which", "DN", "--model", dn, "--png"], capsys)
    assert code == 0 and not errors
    _, pred = inference.output_paths(img, "DN")
    h = fits.getheader(pred)
    assert h["INFILE"] == "imag\\xe9\\t1.fits" and h["MODEL"] == "d\\xe9.onnx"
    history = " ".join(str(v) for v in h["HISTORY"])
    assert "input imag\\xe9\\t1.fits:" in history and "model d\\xe9.onnx" in history
    # the escape is Python's own: the name comes back from it
    assert h["INFILE"].encode().decode("unicode_escape") == img.name
    assert header_text("plain name.fits") == "plain name.fits"
    # a rerun finds them complete
    code, _, errors, err = run([img, "--which", "DN", "--model", dn, "--png",
                                "--skip-existing"], capsys)
    assert code == 0 and not errors and any("skipped" in e for e in err)


# ----------------------------------------------------------------------------- 7. odd headers
def test_unreadable_wcs_number_is_one_line_and_the_other_inputs_go_on(tmp_path, dn_model,
                                                                      capsys):
    """A WCS keyword that is not a number was a ValueError traceback, and every input after it
    was dropped. EQUINOX = 'J2000' (a common non-standard form) is read as 2000."""
    bad, _ = make_image(tmp_path / "bad.fits", extra={"CRPIX1": "abc"})
    j2000, _ = make_image(tmp_path / "j2000.fits", extra={"EQUINOX": "J2000"})
    good, _ = make_image(tmp_path / "good.fits", seed=3)
    code, _, errors, err = run([bad, j2000, good, "--which", "DN", "--model", dn_model], capsys)
    assert code == 1 and not any("Traceback" in e for e in err), err
    assert errors[0] == (f"error: {bad}: its sky WCS has CRPIX1 = 'abc' is not a number; "
                         "correct that keyword (e.g. astropy.io.fits.setval) or delete the WCS "
                         "keywords, and rerun")
    assert "1 of 3 inputs failed" in errors[-1]
    assert fits.getheader(inference.output_paths(j2000, "DN")[1])["EQUINOX"] == 2000.0
    assert inference.output_paths(good, "DN")[1].is_file()
    assert not inference.output_paths(bad, "DN")[1].exists()


def test_pointing_that_is_not_a_number_gives_pixel_coordinates(tmp_path, dn_model, capsys):
    img, _ = make_image(tmp_path / "det.fits", sky=False, extra={"RA_PNT": "N/A"})
    code, warns, errors, _ = run([img, "--which", "DN", "--model", dn_model], capsys)
    assert code == 0 and not errors
    assert any("RA_PNT = 'N/A'" in w and "pixel coordinates only" in w for w in warns), warns
    assert "CTYPE1" not in fits.getheader(inference.output_paths(img, "DN")[1])


def test_an_unexpected_error_is_one_line_and_the_other_inputs_go_on(tmp_path, dn_model, capsys,
                                                                     monkeypatch):
    a, _ = make_image(tmp_path / "a.fits")
    b, _ = make_image(tmp_path / "b.fits", seed=3)
    real = inference.enhance_image

    def flaky(img, model, **kw):
        if img.path.name == "a.fits":
            raise ValueError("something no test foresaw\nsecond line")
        return real(img, model, **kw)

    monkeypatch.setattr(inference, "enhance_image", flaky)
    code, _, errors, err = run([a, b, "--which", "DN", "--model", dn_model], capsys)
    assert code == 1 and not any("Traceback" in e for e in err), err
    assert errors[0].startswith(f"error: {a}: unexpected ValueError: something no test foresaw;")
    assert inference.output_paths(b, "DN")[1].is_file()


def test_too_long_a_name_is_refused_before_any_work(tmp_path, dn_model, capsys):
    """A stem of ~220-235 characters made output (or temporary) names over the file system's
    255 bytes: an OSError traceback, or 'free disk space' advice after the model had run."""
    long_in, _ = make_image(tmp_path / ("p" * 228 + ".fits"))
    good, _ = make_image(tmp_path / "ok.fits", seed=3)
    code, _, errors, err = run([long_in, good, "--which", "DN", "--model", dn_model], capsys)
    assert code == 1 and not any("Traceback" in e for e in err), err
    assert "output file name too long" in errors[0] and "shorter name" in errors[0]
    assert inference.output_paths(good, "DN")[1].is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith((".", "ppp"))) == [
        long_in.name]


@pytest.mark.parametrize("binsize", [40, 160])
def test_pn_grid_of_another_binsize_without_scale_keywords_is_refused(tmp_path, dn_model,
                                                                      capsys, binsize):
    shape = (math.ceil((detector.DETY_MAX - detector.DETY_MIN) / binsize),
             math.ceil((detector.DETX_MAX - detector.DETX_MIN) / binsize))
    assert inference.pn_grid_binsize(shape) == binsize
    assert inference.pn_grid_binsize(detector.PN_SHAPE) == 80
    img = tmp_path / "noscale.fits"
    h = fits.Header()
    h["EXPOSURE"], h["BUNIT"] = 20e3, "count"
    fits.PrimaryHDU(np.random.default_rng(1).poisson(0.5, shape).astype(np.int32),
                    h).writeto(img)
    code, _, errors, _ = run([img, "--which", "DN", "--model", dn_model], capsys)
    assert code == 1 and f"grid at binSize {binsize}" in errors[0] and "--binSize 80" in errors[0]


def test_near_integer_float_pixels_are_rounded(tmp_path, dn_model):
    """Values within 1e-3 of integers pass as counts; unrounded, every 1e-5 pixel counted as
    having counts and opened the detector mask on the chip gaps and the corners."""
    ints, _ = make_image(tmp_path / "ints.fits")
    with fits.open(ints) as hdul:
        fits.PrimaryHDU((hdul[0].data + 1e-5).astype(np.float32),
                        hdul[0].header).writeto(tmp_path / "floats.fits")
    a = inference.read_input(ints)
    b = inference.read_input(tmp_path / "floats.fits")
    np.testing.assert_array_equal(a.counts, b.counts)
    assert np.array_equal(inference.input_mask(a.counts), inference.input_mask(b.counts))


def test_logical_exposure_is_not_one_second(tmp_path, dn_model, capsys):
    img, _ = make_image(tmp_path / "t.fits", extra={"EXPOSURE": True})
    code, _, errors, _ = run([img, "--which", "DN", "--model", dn_model], capsys)
    assert code == 1 and "EXPOSURE = True is not a positive number" in errors[0]
    code, _, errors, _ = run([img, "--which", "DN", "--model", dn_model, "--exposure", "20000"],
                             capsys)
    assert code == 0 and not errors


@pytest.mark.parametrize("name", ["x.fits.bz2", "x.fits.fz", "x.fit.fz", "x.fits.gz", "x.fits"])
def test_compressed_input_names_give_the_plain_stem(tmp_path, name):
    assert inference.output_paths(tmp_path / name, "SR")[1].name == "x_predict_wcs_SR.fits.gz"


def test_blank_pixels_are_named_as_blank(tmp_path, dn_model, capsys):
    img, _ = make_image(tmp_path / "b.fits")
    with fits.open(img) as hdul:
        data = hdul[0].data.astype(np.int16)
        data[:3, :3] = -32768
        h = hdul[0].header
        h["BLANK"] = -32768
        fits.PrimaryHDU(data, h).writeto(tmp_path / "blank.fits")
    code, _, errors, _ = run([tmp_path / "blank.fits", "--which", "DN", "--model", dn_model],
                             capsys)
    assert code == 1 and "9 pixels equal to its BLANK value (-32768)" in errors[0], errors


def test_sigterm_exits_130_and_leaves_no_temporary(tmp_path, dn_model, sigterm_when_ready):
    """kill (SIGTERM) of run_inference_on_real.py: as Ctrl-C, exit 130, temporaries removed."""
    img, _ = make_image(tmp_path / "k.fits")
    code = f"""
import sys, time
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from xmm_enhance import fitsio
from xmm_enhance.cli.infer import main
def slow(items, **kw):
    import tempfile, os
    fd, tmp = tempfile.mkstemp(prefix=".k.", suffix=".tmp", dir={str(tmp_path)!r})
    os.close(fd)
    print("writing", flush=True)
    try:
        time.sleep(60)
    finally:
        os.unlink(tmp)
fitsio.atomic_write_hduls = slow
import xmm_enhance.inference as inf
inf.atomic_write_hduls = slow
sys.exit(main([{str(img)!r}, "--which", "DN", "--model", {str(dn_model)!r}, "-q"]))
"""
    returncode, err = sigterm_when_ready(code, "writing", pause=0.2)
    assert returncode == 130 and "interrupted" in err, err
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_galactic_wcs_is_named_and_the_pointing_used(tmp_path, dn_model, capsys):
    img, _ = make_image(tmp_path / "gal.fits", extra={"CTYPE1": "GLON-TAN",
                                                     "CTYPE2": "GLAT-TAN"})
    code, warns, errors, _ = run([img, "--which", "DN", "--model", dn_model], capsys)
    assert code == 0 and not errors
    assert any("GLON-TAN/GLAT-TAN, not RA/Dec" in w for w in warns), warns
    assert any("approximate one from RA_PNT" in w for w in warns), warns
    assert fits.getheader(inference.output_paths(img, "DN")[1])["CTYPE1"] == "RA---TAN"


def test_lossy_fpack_float_image_gets_its_own_hint(tmp_path, dn_model, capsys):
    img, _ = make_image(tmp_path / "c.fits")
    with fits.open(img) as hdul:
        data = hdul[0].data.astype(np.float32) * 1.0037     # what lossy quantisation leaves
        fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, hdul[0].header)]).writeto(
            tmp_path / "c2.fits.fz")
    code, _, errors, _ = run([tmp_path / "c2.fits.fz", "--which", "DN", "--model", dn_model],
                             capsys)
    assert code == 1 and "fpack -q 0" in errors[0]


def test_library_enhance_file_refuses_a_model_of_the_other_task(tmp_path, dn_model):
    from xmm_enhance.errors import UsageError

    img, _ = make_image(tmp_path / "a.fits")
    dn = inference.load_model("DN", dn_model)
    with pytest.raises(UsageError, match="is a DN model"):
        inference.enhance_file(img, "SR", model=dn)
    assert not list(tmp_path.glob("a_*"))


def test_in_memory_input_takes_the_headers_sky_wcs(tmp_path):
    img, _ = make_image(tmp_path / "a.fits")
    from_file = inference.read_input(img)
    in_memory = inference.InputImage(fits.getdata(img), 20e3, fits.getheader(img))
    assert in_memory.sky is not None
    assert in_memory.sky.header() == from_file.sky.header()


def test_sr_region_file_without_a_sky_wcs_is_in_image_pixels(tmp_path):
    from xmm_enhance.sources import region_text

    text = region_text([float("nan")] * 2, [float("nan")] * 2, labels=["5.0sig", "9.1sig"],
                       xy=([10.0, 400.25], [20.5, 30.0]), pixel_arcsec=2.0)
    lines = text.splitlines()
    assert lines[3] == "image" and "nan" not in text
    assert lines[4] == "circle(11.000,21.500,5) # text={5.0sig}"
    assert inference.region_problem(tmp_path / "missing.reg") == "missing"
    (tmp_path / "r.reg").write_text(text)
    assert inference.region_problem(tmp_path / "r.reg", 2) == ""


def test_result_wcs_know_their_image_shape(tmp_path, dn_model):
    img, _ = make_image(tmp_path / "a.fits")
    res = inference.enhance_file(img, "DN", model=inference.load_model("DN", dn_model))["result"]
    assert res.output_wcs.pixel_shape == res.prediction.shape[::-1] == (416, 416)
    assert res.input_wcs.pixel_shape == res.input_rate.shape[::-1]


@pytest.mark.parametrize("change, match", [
    (lambda c: c / 20e3, "non-integer values"),
    (lambda c: np.where(c > 0, np.nan, c), "NaN/inf pixels"),
    (lambda c: c - 1, "negative pixels"),
    (lambda c: c * 0, "no counts in the image"),
    (lambda c: c.astype(str), "2-D numeric"),
    (lambda c: c[0], "1-D"),
])
def test_in_memory_input_is_checked_as_a_file_is(tmp_path, dn_model, change, match):
    img, _ = make_image(tmp_path / "a.fits")
    counts = fits.getdata(img).astype(np.float64)
    model = inference.load_model("DN", dn_model)
    bad = inference.InputImage(change(counts), 20e3, fits.getheader(img), path="mem.fits")
    with pytest.raises(InputError, match=f"mem.fits: .*{match}"):
        inference.enhance_image(bad, model)


@pytest.mark.parametrize("exposure", [0.0, -5.0, float("nan"), None, True, "20ks"])
def test_in_memory_input_needs_a_positive_exposure(tmp_path, dn_model, exposure):
    img, _ = make_image(tmp_path / "a.fits")
    bad = inference.InputImage(fits.getdata(img), exposure, fits.getheader(img))
    with pytest.raises(InputError, match="not a positive number of seconds"):
        inference.enhance_image(bad, inference.load_model("DN", dn_model))


def test_in_memory_near_integer_counts_are_rounded_not_modified(tmp_path, dn_model):
    img, _ = make_image(tmp_path / "a.fits")
    counts = fits.getdata(img).astype(np.float64)
    model = inference.load_model("DN", dn_model)
    ref = inference.enhance_image(inference.InputImage(counts, 20e3, fits.getheader(img)), model)
    noisy = counts + np.where(counts == 0, 1e-5, -1e-5)  # opens the mask if taken as counts
    given = noisy.copy()
    res = inference.enhance_image(inference.InputImage(given, 20e3, fits.getheader(img)), model)
    np.testing.assert_array_equal(given, noisy)
    np.testing.assert_array_equal(res.prediction, ref.prediction)
    np.testing.assert_array_equal(res.input_rate, ref.input_rate)


def test_per_ccd_good_time_that_differs_is_reported_and_kept(tmp_path, dn_model, capsys):
    """An evselect image whose quadrants lost different time (counting mode, as in a real
    Perseus split: EXPOSURE = the largest ONTIMEnn): one warning naming the CCDs, the ONTIMEnn
    in the outputs and a HISTORY line saying the rates are counts / EXPOSURE."""
    times = {f"ONTIME{n:02d}": t for n, t in zip(range(1, 13), [20e3] * 3 + [10812.2] * 3
                                                  + [12592.0] * 3 + [19900.0] * 3)}
    img, _ = make_image(tmp_path / "a.fits", extra=times)
    with pytest.warns(inference.InputWarning, match=r"per-CCD good time differs from "
                      r"EXPOSURE 20000 s \(CCD 4-6 10812 s; CCD 7-9 12592 s\): rates are "
                      r"counts / EXPOSURE on every CCD, so low by up to 46 %"):
        got = inference.read_input(img)
    assert len(got.notes) == 1
    assert main([str(img), "--which", "DN", "--model", str(dn_model)]) == 0
    err = capsys.readouterr().err
    assert err.count("per-CCD good time differs") == 1
    for name in ("a_predict_wcs_DN.fits.gz", "a_input_wcs_DN.fits.gz"):
        h = fits.getheader(tmp_path / name)
        assert h["ONTIME05"] == pytest.approx(10812.2) and h["ONTIME12"] == 19900.0
        assert "rates are counts / EXPOSURE on every CCD" in " ".join(h["HISTORY"])


def test_equal_per_ccd_good_times_say_nothing(tmp_path):
    times = {f"ONTIME{n:02d}": 20e3 * (1 + 0.005 * (n % 2)) for n in range(1, 13)}
    img, _ = make_image(tmp_path / "a.fits", extra=times)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert inference.read_input(img).notes == []


def test_skip_existing_run_that_loses_a_race_skips(tmp_path, dn_model, monkeypatch, capsys):
    """Two --skip-existing runs on one input at once: the one that finds the outputs made by
    the other when it comes to write them skips (exit 0); it reported 'exists; pass
    --overwrite ..., or --skip-existing' before."""
    img, _ = make_image(tmp_path / "a.fits")
    real = inference.enhance_file

    def other_run_first(*args, **kwargs):
        real(*args, **{**kwargs, "overwrite": True})   # the other run finishes first
        return real(*args, **kwargs)

    monkeypatch.setattr(inference, "enhance_file", other_run_first)
    assert main([str(img), "--which", "DN", "--model", str(dn_model), "--skip-existing"]) == 0
    assert "error" not in capsys.readouterr().err
    # without --skip-existing the same race is still an error
    for p in tmp_path.glob("a_*"):
        p.unlink()
    assert main([str(img), "--which", "DN", "--model", str(dn_model)]) == 1
    assert "exists" in capsys.readouterr().err


def test_library_calls_check_their_arguments(tmp_path, dn_model):
    """Scripted use: min_signif outside 3-100 (nan ran the model, then failed writing the
    header), a file name or a model name instead of objects, and an InputImage made from an
    array without a header (AttributeError before)."""
    img, _ = make_image(tmp_path / "a.fits")
    model = inference.load_model("DN", dn_model)
    good = inference.read_input(img)
    for bad in (float("nan"), float("inf"), -5, 0, "x", 101):
        with pytest.raises(UsageError, match="min_signif=.* from 3 to 100"):
            inference.enhance_image(good, model, min_signif=bad)
    with pytest.raises(UsageError, match="takes an InputImage"):
        inference.enhance_image(str(img), model)
    with pytest.raises(UsageError, match="takes a Model"):
        inference.enhance_image(good, "DN")
    bare = inference.InputImage(fits.getdata(img), 20e3, None)
    res = inference.enhance_image(bare, model)
    np.testing.assert_array_equal(res.prediction, inference.enhance_image(good, model).prediction)
    assert bare.header is None                          # the caller's object is not changed
    with pytest.raises(UsageError, match="which="):
        inference.default_model_path("xx")
    assert inference.default_model_path("sr") == inference.default_model_path("SR")


def test_enhance_file_takes_which_in_any_case(tmp_path, dn_model):
    img, _ = make_image(tmp_path / "a.fits")
    out = inference.enhance_file(img, "dn", model=inference.load_model("dn", dn_model))
    assert out["predict"].name == "a_predict_wcs_DN.fits.gz"
    with pytest.raises(OutputError, match="exists"):    # refused before the model runs
        inference.enhance_file(img, "dn", model=inference.load_model("DN", dn_model))


def test_writing_a_result_leaves_its_arrays_alone(tmp_path, dn_model, monkeypatch):
    """astropy byte-swaps an array in place while it writes it: the result's own arrays were
    garbage for a thread reading or writing the same result meanwhile. What is written is a
    big-endian copy."""
    from xmm_enhance import fitsio

    img, _ = make_image(tmp_path / "a.fits")
    res = inference.enhance_image(inference.read_input(img), inference.load_model("DN", dn_model))
    seen = []
    real = fitsio._fits_bytes

    def check(hdul, gzipped):
        for hdu in hdul:
            if getattr(hdu, "data", None) is not None and hdu.is_image:
                seen.append(any(np.shares_memory(hdu.data, a)
                                for a in (res.prediction, res.input_rate)))
        return real(hdul, gzipped)

    monkeypatch.setattr(fitsio, "_fits_bytes", check)
    inference.write_outputs(res, outdir=tmp_path / "o")
    assert seen and not any(seen)


def test_counts_the_pn_cannot_record_are_refused(tmp_path, dn_model):
    """A pixel with more counts than one event per frame allows (2**31 - 1, 1e40) made the
    networks give absurd or NaN predictions with no message; a piled-up core of 1e5 counts
    in 20 ks is recordable and runs."""
    for value, ok in ((2 ** 31 - 1, False), (1e5, True)):
        img, _ = make_image(tmp_path / f"p{ok}.fits", extra={"FRMTIME": 73})
        with fits.open(img, mode="update") as h:
            h[0].data[150, 150] = value
        if ok:
            inference.read_input(img)
        else:
            with pytest.raises(InputError, match=r"1 pixel\(s\) hold more counts \(up to "
                               r"2.15e\+09\) than the pn can record in EXPOSURE 20000 s "
                               r"\(1.1e\+06: one event per raw pixel and frame, 4 raw "
                               r"pixels per 4\" pixel\)"):
                inference.read_input(img)
    counts = fits.getdata(img).astype(float)
    counts[150, 150] = 1e40
    with pytest.raises(InputError, match="than the pn can record"):
        inference.enhance_image(inference.InputImage(counts, 20e3, None),
                                inference.load_model("DN", dn_model))


def test_non_finite_network_output_is_a_model_error(tmp_path, dn_model, monkeypatch):
    img, _ = make_image(tmp_path / "a.fits")
    model = inference.load_model("DN", dn_model)
    real = model.session.run

    def nan_run(names, feeds):
        out = real(names, feeds)
        out[0][0, 0, 5, 5] = np.nan
        return out

    monkeypatch.setattr(model.session, "run", nan_run)
    with pytest.raises(ModelError, match="the network gave non-finite values"):
        inference.enhance_image(inference.read_input(img), model)


def test_a_prediction_far_above_the_input_warns(tmp_path, dn_model, monkeypatch):
    img, _ = make_image(tmp_path / "a.fits")
    model = inference.load_model("DN", dn_model)
    real = model.session.run
    monkeypatch.setattr(model.session, "run",
                        lambda names, feeds: [o * 3 for o in real(names, feeds)])
    with pytest.warns(inference.InputWarning, match=r"the DN prediction holds 3x the input's "
                      "count rate; this input is outside what the network learned"):
        inference.enhance_image(inference.read_input(img), model)


def test_library_entry_points_name_a_wrong_argument_type(tmp_path):
    """read_input(None) or an array, make_image(binsize='80'): TypeError tracebacks before."""
    from xmm_enhance.pipeline import make_image

    for bad in (None, np.zeros((4, 4))):
        with pytest.raises(UsageError, match="read_input takes a file path"):
            inference.read_input(bad)
    with pytest.raises(UsageError, match=r"--binSize \(binsize=\) '80': must be a number"):
        make_image("0123456789", binsize="80", pps_dir=tmp_path)
    with pytest.raises(UsageError, match=r"--expo_time \(expo_time_ks=\) '20'"):
        make_image("0123456789", expo_time_ks="20", pps_dir=tmp_path)


def test_a_sky_xy_image_is_refused_and_a_det_crop_is_not(tmp_path, dn_model, capsys):
    """evselect's default image is binned on sky X/Y: north up, turned by PA_PNT against the
    detector frame the models know. It ran with only a shape warning."""
    c = 4.0 / 3600
    north_up = {"CD1_1": -c, "CD1_2": 0.0, "CD2_1": 0.0, "CD2_2": c}
    sky, _ = make_image(tmp_path / "sky.fits", shape=(648, 648), src=(300.2, 310.7),
                        extra=north_up)
    code, _, errors, err = run([sky, "--which", "DN", "--model", dn_model], capsys)
    assert code == 1 and len(err) == 1, err
    assert "mirrored, as on a sky (X/Y) image" in errors[0]
    assert "make_detxy_pn_image_pps.py" in errors[0]
    # the DET frame turned by 30 deg (another PA_PNT): turned, not mirrored
    turned, _ = make_image(tmp_path / "turned.fits", shape=(648, 648), src=(300.2, 310.7),
                           extra={"PA_PNT": 100.0})
    code, _, errors, err = run([turned, "--which", "DN", "--model", dn_model], capsys)
    assert code == 1 and "but turned 30 deg" in errors[0], err
    det, _ = make_image(tmp_path / "det.fits", shape=(300, 300), src=(150.2, 140.7))
    code, warns, errors, err = run([det, "--which", "DN", "--model", dn_model], capsys)
    assert code == 0 and not errors and any("not the pn 411x403" in w for w in warns), err


def test_a_small_window_image_warns(tmp_path, dn_model, capsys):
    """The README promises a warning for modes other than full frame; inference gave none."""
    a, _ = make_image(tmp_path / "sw.fits", extra={"SUBMODE": "PrimeSmallWindow"})
    code, warns, errors, err = run([a, "--which", "DN", "--model", dn_model], capsys)
    assert code == 0 and len(warns) == 1 and "SUBMODE 'PrimeSmallWindow'" in warns[0], err
    b, _ = make_image(tmp_path / "ff.fits", extra={"SUBMODE": "PrimeFullWindowExtended"})
    code, warns, errors, err = run([b, "--which", "DN", "--model", dn_model], capsys)
    assert code == 0 and warns == [], err


def test_enhance_file_returns_absolute_paths_and_refuses_an_old_region_file_early(
        tmp_path, monkeypatch):
    """enhance_file returned relative paths (wrong after os.chdir), left the SR region file out
    of its answer, and refused an existing region file only after reading the input and
    running the model."""
    sr = inference.load_model("SR", exposure_aware(tmp_path / "sr.onnx", "SR"))
    a, _ = make_image(tmp_path / "a.fits")
    monkeypatch.chdir(tmp_path)
    out = inference.enhance_file("a.fits", "SR", model=sr, outdir="o")
    for k in ("input", "predict"):
        assert out[k].is_absolute() and out[k].parent == tmp_path / "o"
    assert out["result"].sources is not None
    assert out["region"] == tmp_path / "o" / "a_sources_SR.reg" and out["region"].is_file()
    for k in ("input", "predict"):
        out[k].unlink()
    (tmp_path / "o" / "a_sources_SR.reg").write_text("old")
    calls = []
    monkeypatch.setattr(inference, "read_input", lambda *a, **k: calls.append(a))
    with pytest.raises(OutputError, match="a_sources_SR.reg"):
        inference.enhance_file("a.fits", "SR", model=sr, outdir="o")
    assert calls == []


# ----------------------------------------------------------------------------- 8. audit gaps
def test_a_model_whose_scale_does_not_fit_its_task_is_refused(tmp_path, capsys):
    """The metadata's task alone is not enough: an SR model must scale by 2, a DN model by 1
    (a model exported with the wrong scale would be cropped and placed wrongly)."""
    sr1 = replicate_sr(tmp_path / "sr1.onnx", scale="1")
    dn2 = identity_dn(tmp_path / "dn2.onnx", scale="2")
    with pytest.raises(ModelError, match=r"task=SR scale=1, but --which SR needs task=SR "
                       r"scale=2"):
        inference.load_model("SR", sr1)
    with pytest.raises(ModelError, match=r"task=DN scale=2, but --which DN needs task=DN "
                       r"scale=1"):
        inference.load_model("DN", dn2)
    # on the command line: one error line, exit 1, nothing written
    img, _ = make_image(tmp_path / "a.fits")
    code, _, errors, err = run([img, "--which", "SR", "--model", sr1], capsys)
    assert code == 1 and len(err) == 1 and "scale=1" in errors[0], err
    assert not wcs_outputs(tmp_path)


def test_exposure_is_taken_from_the_primary_header_of_an_extension_image(tmp_path, dn_model,
                                                                         capsys):
    """An image in extension 1 without EXPOSURE, the primary HDU (no data) holding it."""
    made, _ = make_image(tmp_path / "made.fits", exposure=None)
    with fits.open(made) as h:
        data, header = h[0].data.copy(), h[0].header.copy()
    assert "EXPOSURE" not in header
    img = tmp_path / "ext.fits"
    fits.HDUList([fits.PrimaryHDU(header=fits.Header({"EXPOSURE": 20000.0})),
                  fits.ImageHDU(data, header)]).writeto(img)
    assert "EXPOSURE" not in fits.getheader(img, 1)
    got = inference.read_input(img)
    assert got.exposure == 20000.0 and got.header["EXPOSURE"] == 20000.0
    code, _, errors, err = run([img, "--which", "DN", "--model", dn_model], capsys)
    assert code == 0 and not errors, err
    assert fits.getheader(inference.output_paths(img, "DN")[1])["INEXPO"] == 20000.0


def test_ccd_ontime_note_covers_ccd_12():
    times = {f"ONTIME{n:02d}": 20e3 for n in range(1, 12)}
    times["ONTIME12"] = 15e3
    note = inference.ccd_ontime_note(fits.Header(times), 20e3)
    assert "(CCD 12 15000 s)" in note and "low by up to 25 %" in note, note
    assert inference.ccd_ontime_note(fits.Header(times), 20e3, brief=True) == (
        "per-CCD good time differs from EXPOSURE 20000 s (CCD 12 15000 s): rates low there")


def test_submode_in_the_primary_header_of_an_extension_image_warns(tmp_path):
    """SUBMODE only in the primary header (as an event list's image maker may leave it), the
    image in extension 1: the small-window warning is still given."""
    made, _ = make_image(tmp_path / "made.fits")
    with fits.open(made) as h:
        data, header = h[0].data.copy(), h[0].header.copy()
    img = tmp_path / "sw_ext.fits"
    fits.HDUList([fits.PrimaryHDU(header=fits.Header({"SUBMODE": "PrimeSmallWindow"})),
                  fits.ImageHDU(data, header)]).writeto(img)
    assert "SUBMODE" not in fits.getheader(img, 1)
    with pytest.warns(inference.InputWarning, match="sw_ext.fits: SUBMODE 'PrimeSmallWindow'"):
        inference.read_input(img)


def test_an_unknown_mplbackend_does_not_fail_the_png(tmp_path):
    """MPLBACKEND=bogus with --png: the uncertainty panel imported matplotlib before
    prepare_matplotlib() could drop the backend, so the PNG failed ("unexpected ValueError",
    exit 1) after the FITS outputs were written. Now one warning and the PNG is drawn. A fresh
    process: pytest's own has matplotlib loaded already."""
    import subprocess
    import sys

    pytest.importorskip("matplotlib")
    model = exposure_aware(tmp_path / "sr.onnx", "SR")
    a, _ = make_image(tmp_path / "a.fits")
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, MPLBACKEND="bogus", PYTHONPATH=str(repo))
    out = subprocess.run([sys.executable, str(repo / "run_inference_on_real.py"), str(a),
                          "--which", "SR", "--model", str(model), "--png"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "MPLBACKEND='bogus' is not a matplotlib backend; ignored" in out.stderr
    png = inference.png_path(inference.output_paths(a, "SR")[1])
    assert png.read_bytes()[:4] == b"\x89PNG"
