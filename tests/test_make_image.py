"""make_detxy_pn_image_pps.py end to end on simulated PPS folders (xmm_enhance.simulate.pps).

Checked against the simulator's truth: the flare is excluded, the exposure is what was asked
for, the image is the histogram of the selected events, every point source lands at its true
RA/Dec through the image WCS, and bad input gives one line and the right exit code with nothing
left half-written.
"""
import contextlib
import errno
import gzip
import io
import os
import shutil
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from xmm_enhance import gti, sas
from xmm_enhance.cli.make_image import main
from xmm_enhance.pipeline import make_image, output_name
from xmm_enhance.simulate import pps as sim

ROOT = Path(__file__).resolve().parents[1]
OBSID = "0123456789"
DEFAULT_NAME = "pn_cleaned_20.0ks_detxy_500_2000_80.fits"


@pytest.fixture(scope="module")
def sim_default(tmp_path_factory):
    folder = tmp_path_factory.mktemp("default") / OBSID / "pps"
    truth = sim.write_pps(folder, OBSID, n_events=400_000, seed=11)
    return truth


@pytest.fixture(scope="module")
def small_pps(tmp_path_factory):
    folder = tmp_path_factory.mktemp("small") / "pps"
    sim.write_pps(folder, OBSID, n_events=20_000, seed=5)
    return folder


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _selected(events_path, kept, low=500, high=2000):
    d = fits.getdata(events_path, "EVENTS")
    m = ((d["FLAG"] == 0) & (d["PATTERN"] <= 4) & (d["PI"] >= low) & (d["PI"] <= high)
         & gti.in_gti(d["TIME"], kept))
    return d[m]


def _sep_arcsec(ra1, dec1, ra2, dec2):
    r1, d1, r2, d2 = map(np.radians, (ra1, dec1, ra2, dec2))
    c = np.sin(d1) * np.sin(d2) + np.cos(d1) * np.cos(d2) * np.cos(r1 - r2)
    s = np.hypot(np.cos(d2) * np.sin(r1 - r2),
                 np.cos(d1) * np.sin(d2) - np.sin(d1) * np.cos(d2) * np.cos(r1 - r2))
    return np.degrees(np.arctan2(s, c)) * 3600


def _centroid(px, py, x0, y0, radius, iterations=20, weights=None):
    """Background-corrected centroid of points within ``radius`` of an iterated centre."""
    w = np.ones_like(px) if weights is None else weights
    for _ in range(iterations):
        r2 = (px - x0) ** 2 + (py - y0) ** 2
        inner = r2 <= radius ** 2
        ann = (r2 > (3 * radius) ** 2) & (r2 <= (6 * radius) ** 2)
        n_in = w[inner].sum()
        n_bkg = w[ann].sum() / 27.0  # annulus area = 27 x inner area
        if n_in - n_bkg <= 0:
            break
        dx = (w[inner] * (px[inner] - x0)).sum() / (n_in - n_bkg)
        dy = (w[inner] * (py[inner] - y0)).sum() / (n_in - n_bkg)
        x0, y0 = x0 + dx, y0 + dy
        if abs(dx) < 1e-4 and abs(dy) < 1e-4:
            break
    return x0, y0, n_in - n_bkg


def source_errors(image_path, events_path, truth):
    """Offsets (arcsec) of each simulated source, measured through the image's WCS.

    Returns (from events, from image pixels): the events' DET positions are turned into image
    pixels with the header's LTV/LTM, the image pixels are used as they are; the centroids go
    through the header's RA/Dec WCS and are compared with the true positions.
    """
    h = fits.getheader(image_path)
    img = fits.getdata(image_path)
    kept = np.column_stack([fits.getdata(image_path, "STDGTI")[c] for c in ("START", "STOP")])
    w = WCS(h)
    d = _selected(events_path, kept)
    px = h["LTM1_1"] * d["DETX"] + h["LTV1"]
    py = h["LTM2_2"] * d["DETY"] + h["LTV2"]
    iy, ix = np.nonzero(img)
    pw = img[iy, ix].astype(float)
    radius = 15.0 / (0.05 * h["BINSIZE"])  # 15" in pixels
    ev_err, im_err = [], []
    for s in truth.sources:
        x0, y0 = w.wcs_world2pix(s.ra, s.dec, 1)
        xc, yc, n = _centroid(px, py, float(x0), float(y0), radius)
        assert n > 200, f"source {s.name} has only {n:.0f} counts"
        ra, dec = w.wcs_pix2world(xc, yc, 1)
        ev_err.append(float(_sep_arcsec(s.ra, s.dec, ra, dec)))
        xc, yc, _ = _centroid(ix + 1.0, iy + 1.0, float(x0), float(y0), radius, weights=pw)
        ra, dec = w.wcs_pix2world(xc, yc, 1)
        im_err.append(float(_sep_arcsec(s.ra, s.dec, ra, dec)))
    return np.array(ev_err), np.array(im_err)


# ---- the command on the default simulated observation ---------------------------------------

@pytest.fixture(scope="module")
def default_run(sim_default):
    code = main([OBSID, "--pps_dir", str(sim_default.folder), "-q"])
    assert code == 0
    return sim_default.folder / DEFAULT_NAME


def test_default_output_beside_the_pps(default_run, sim_default, capsys):
    assert default_run.is_file()
    h = fits.getheader(default_run)
    assert h["EXPOSURE"] == pytest.approx(20000.0, abs=1e-6)
    assert h["NAXIS1"] == 403 and h["NAXIS2"] == 411 and h["BUNIT"] == "count"
    assert h["OBS_ID"] == OBSID and h["RA_PNT"] == sim_default.ra_pnt
    assert h["CTYPE1"] == "RA---TAN" and h["CTYPE1L"] == "DETX" and h["WCSMETH"] == "EVENTFIT"
    assert "PI in [500:2000]" in h["SLCTEXPR"] and "FLAG == 0" in h["SLCTEXPR"]
    with fits.open(default_run, checksum=True) as hd:
        assert hd[0].data.dtype.kind == "i" and hd[0].header["BITPIX"] == 32


def test_cli_prints_path_exposure_counts(sim_default, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    assert main([OBSID, "--pps_dir", str(sim_default.folder), "--save_dir", str(out),
                 "--expo_time", "5", "--binSize", "160"]) == 0
    text = capsys.readouterr().out
    path = out / "pn_cleaned_5.0ks_detxy_500_2000_160.fits"
    assert f"image: {path}" in text
    assert "exposure: 5000.0 s" in text
    counts = int(fits.getdata(path).sum())
    assert f"counts: {counts}" in text


def test_flare_excluded_and_exposure(default_run, sim_default):
    kept = np.column_stack([fits.getdata(default_run, "STDGTI")[c] for c in ("START", "STOP")])
    f0, f1, _ = sim_default.flare
    assert gti.total(gti.intersect(kept, [[f0, f1]])) == 0
    # kept time is good time (the simulator's event-list GTIs minus the flare)
    assert gti.total(gti.intersect(kept, sim_default.good_gti)) == pytest.approx(gti.total(kept))
    assert gti.total(kept) == pytest.approx(20000.0, abs=1e-6)


def test_image_equals_histogram_of_selected_events(default_run, sim_default):
    h = fits.getheader(default_run)
    img = fits.getdata(default_run)
    kept = np.column_stack([fits.getdata(default_run, "STDGTI")[c] for c in ("START", "STOP")])
    d = _selected(sim_default.events, kept)
    f0, f1, _ = sim_default.flare
    assert not ((d["TIME"] >= f0) & (d["TIME"] < f1)).any()
    nx, ny = h["NAXIS1"], h["NAXIS2"]
    ex = h["CRVAL1L"] - h["CDELT1L"] / 2 + h["CDELT1L"] * np.arange(nx + 1)
    ey = h["CRVAL2L"] - h["CDELT2L"] / 2 + h["CDELT2L"] * np.arange(ny + 1)
    ref, _, _ = np.histogram2d(d["DETY"], d["DETX"], bins=[ey, ex])
    np.testing.assert_array_equal(img, ref.astype(np.int32))
    assert img.sum() == len(d) > 1000


def test_all_good_time_with_expo_le_zero(sim_default, tmp_path):
    res = make_image(OBSID, pps_dir=sim_default.folder, save_dir=tmp_path, expo_time_ks=0,
                     backend="native")
    assert res.path.name == "pn_cleaned_full_detxy_500_2000_80.fits"
    want = gti.total(sim_default.good_gti)
    # spurious threshold crossings of the noisy FBKTSR curve may cost a few 10 s bins
    assert want - 300 <= res.exposure <= want + 1e-6
    assert fits.getheader(res.path)["EXPOSURE"] == pytest.approx(res.exposure)
    f0, f1, _ = sim_default.flare
    assert gti.total(gti.intersect(res.gti, [[f0, f1]])) == 0


@pytest.mark.parametrize("request_ks", [100.0, 55.0])  # far beyond, and within 15 % of it
def test_expo_longer_than_good_time_keeps_all_under_the_full_name(sim_default, tmp_path,
                                                                   capsys, request_ks):
    """The file never claims more exposure than it holds (issue 14 item 7): all good time is
    kept, the name is the all-good-time one, the header says what was asked and kept, and one
    warning line gives both numbers."""
    code = main([OBSID, "--pps_dir", str(sim_default.folder), "--save_dir", str(tmp_path),
                 "--expo_time", f"{request_ks:g}", "-q"])
    assert code == 0
    captured = capsys.readouterr()
    assert captured.out == ""  # -q: warnings and errors only
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "pn_cleaned_full_detxy_500_2000_80.fits"]
    path = tmp_path / "pn_cleaned_full_detxy_500_2000_80.fits"
    h = fits.getheader(path)
    kept = np.column_stack([fits.getdata(path, "STDGTI")[c] for c in ("START", "STOP")])
    have = float(np.sum(kept[:, 1] - kept[:, 0]))
    want = float(np.sum(sim_default.good_gti[:, 1] - sim_default.good_gti[:, 0]))
    # all the simulator's good time (less a few 10 s FBKTSR bins the noisy curve may lose)
    assert want - 300 <= have <= want + 1e-6 < request_ks * 1e3
    assert h["EXPOSURE"] == pytest.approx(have, abs=1e-6)
    assert h["EXPREQ"] == request_ks * 1e3 and h["GOODTIME"] == pytest.approx(have, abs=1e-6)
    assert any("requested" in str(v) for v in h["HISTORY"])
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "warning" in err[0], err
    assert f"requested {request_ks:g} ks" in err[0] and f"{have / 1e3:.2f} ks" in err[0]
    assert path.name in err[0]


def test_expo_within_the_good_time_keeps_its_name(sim_default, tmp_path, capsys):
    res = make_image(OBSID, pps_dir=sim_default.folder, save_dir=tmp_path, expo_time_ks=50,
                     backend="native")
    assert res.path.name == "pn_cleaned_50.0ks_detxy_500_2000_80.fits"
    h = fits.getheader(res.path)
    assert h["EXPOSURE"] == pytest.approx(50e3, abs=1e-6) and h["EXPREQ"] == 50e3


def test_binsize_160_is_2x2_sum_of_80(sim_default, tmp_path):
    a = make_image(OBSID, pps_dir=sim_default.folder, save_dir=tmp_path, binsize=80,
                   expo_time_ks=10, backend="native")
    b = make_image(OBSID, pps_dir=sim_default.folder, save_dir=tmp_path, binsize=160,
                   expo_time_ks=10, backend="native")
    i80 = fits.getdata(a.path)
    i160 = fits.getdata(b.path)
    assert i160.shape == (206, 202)
    pad = np.zeros((412, 404), np.int64)
    pad[:411, :403] = i80
    np.testing.assert_array_equal(i160, pad.reshape(206, 2, 202, 2).sum(axis=(1, 3)))
    h = fits.getheader(b.path)
    assert h["CRVAL1L"] == -18203.5 and h["CDELT1L"] == 160


def test_gti_plot(sim_default, tmp_path):
    pytest.importorskip("matplotlib")
    res = make_image(OBSID, pps_dir=sim_default.folder, save_dir=tmp_path, gti_plot=True,
                     backend="native")
    assert res.gti_plot == tmp_path / "pn_cleaned_20.0ks_detxy_500_2000_80_gti.png"
    assert res.gti_plot.read_bytes()[:4] == b"\x89PNG"


def test_gti_plot_that_cannot_be_written_is_one_line(sim_default, tmp_path, capsys):
    """The image is written first; a plot that cannot be (disk full, a folder of its name)
    was a traceback. Now one line that says the image is there and how to get the plot."""
    pytest.importorskip("matplotlib")
    (tmp_path / "pn_cleaned_20.0ks_detxy_500_2000_80_gti.png").mkdir()
    code = main([OBSID, "--pps_dir", str(sim_default.folder), "--save_dir", str(tmp_path),
                 "--gti-plot", "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "error:" in err[0], err
    assert "_gti.png: cannot write" in err[0] and "--overwrite --gti-plot" in err[0]
    assert (tmp_path / DEFAULT_NAME).is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_all_flare_exposure_gives_way_to_the_next_one(tmp_path, capsys):
    """Two pn exposures, the longer one all flare: the other one is imaged, with a warning
    (before, the run stopped with 'choose another observation')."""
    folder = tmp_path / OBSID
    sim.write_pps(folder, OBSID, n_events=30_000, flcutthr=0.01, seed=4, expidstr="S003")
    clean = sim.write_pps(folder, OBSID, n_events=30_000, duration=30e3, flare=None, seed=5,
                          expidstr="U002")
    with pytest.warns(gti.ExposureWarning, match="S003 has no good time.*U002"):
        res = make_image(OBSID, pps_dir=folder, save_dir=tmp_path / "out", backend="native")
    h = fits.getheader(res.path)
    assert h["PPSEVLI"] == clean.events.name and "U002" in h["PPSFBK"]
    assert res.exposure == pytest.approx(20e3)
    # every exposure all flare: the error names them all
    sim.write_pps(folder, OBSID, n_events=30_000, duration=30e3, flcutthr=0.01, seed=5,
                  expidstr="U002")
    code = main([OBSID, "--pps_dir", str(folder), "--save_dir", str(tmp_path / "o2"), "-q"])
    lines = capsys.readouterr().err.strip().splitlines()
    err = [e for e in lines if "error:" in e]
    assert code == 1 and len(err) == 1 and "no good time" in err[0], lines
    assert "U002PIEVLI" in err[0] and "exposure S003 has none either" in err[0]
    assert any("warning:" in e and "using exposure U002" in e for e in lines)


def test_overwrite(sim_default, tmp_path, capsys):
    args = [OBSID, "--pps_dir", str(sim_default.folder), "--save_dir", str(tmp_path), "-q",
            "--expo_time", "2"]
    assert main(args) == 0
    p = tmp_path / "pn_cleaned_2.0ks_detxy_500_2000_80.fits"
    before = p.read_bytes()
    capsys.readouterr()
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0]
    assert p.read_bytes() == before
    assert main(args + ["--overwrite"]) == 0


# ---- WCS: sources at their true RA/Dec --------------------------------------------------------

POINTINGS = [  # (ra_pnt, dec_pnt, pa_pnt)
    (150.1, 2.2, 0.0),
    (10.0, -30.0, 90.0),
    (250.0, 60.0, 250.0),
    (359.95, 85.0, 123.0),    # RA 0/360 inside the field, |Dec| = 85
    (0.05, -85.0, 300.0),
    (0.01, 0.5, 200.0),       # RA 0/360 at the equator
]
WCS_ERRORS = {}


@pytest.mark.parametrize("ra,dec,pa", POINTINGS)
def test_sources_land_at_true_positions(tmp_path, ra, dec, pa):
    rng = np.random.default_rng(abs(int(ra * 10 + dec * 100 + pa)))
    bore = (sim.BORESIGHT_DET[0] + 60.0, sim.BORESIGHT_DET[1] - 45.0)
    srcs = sim.default_sources(rng, ra_pnt=ra, dec_pnt=dec, pa_pnt=pa, n=8, rate=(0.15, 0.4),
                               boresight_det=bore)
    truth = sim.write_pps(tmp_path / "pps", OBSID, ra_pnt=ra, dec_pnt=dec, pa_pnt=pa,
                          sources=srcs, bkg_rate=1.5, boresight_offset=(60.0, -45.0),
                          seed=rng)
    if ra < 1 or ra > 359:
        ras = np.array([s.ra for s in srcs])
        if abs(dec) > 80:
            assert (ras > 180).any() and (ras < 180).any(), "sources on both sides of RA 0"
    res = make_image(OBSID, pps_dir=truth.folder, expo_time_ks=0, backend="native")
    ev_err, im_err = source_errors(res.path, truth.events, truth)
    WCS_ERRORS[(ra, dec, pa)] = (ev_err.max(), im_err.max(), res.wcs_rms_arcsec)
    print(f"\nRA {ra} Dec {dec} PA {pa}: worst source offset {ev_err.max():.3f}\" (events), "
          f"{im_err.max():.3f}\" (image pixels); WCS fit rms {res.wcs_rms_arcsec:.2f}\"")
    assert ev_err.max() < 1.0, ev_err
    assert im_err.max() < 1.0, im_err


# ---- bad input: one line, exit 1 (2 for usage), nothing half-written ---------------------------

def _run_bad(args, folder, capsys):
    before = sorted(p.name for p in folder.rglob("*")) if folder.exists() else None
    code = main(args + ["-q"])
    err = capsys.readouterr().err.strip().splitlines()
    after = sorted(p.name for p in folder.rglob("*")) if folder.exists() else None
    assert before == after, "the command left files behind"
    return code, err


@pytest.mark.parametrize("obsid", ["12345", "01234567890", "abcdefghij", "0123 45678"])
def test_malformed_obsid(small_pps, obsid, capsys):
    code, err = _run_bad([obsid, "--pps_dir", str(small_pps)], small_pps, capsys)
    assert code == 2 and len(err) == 1 and "error" in err[0]


@pytest.mark.parametrize("extra,word", [
    (["--binSize", "0"], "--binSize"), (["--binSize", "-80"], "--binSize"),
    (["--low_pi", "2000", "--high_pi", "500"], "--low_pi"),
    (["--low_pi", "1000", "--high_pi", "1000"], "--low_pi"),
    (["--binSize", "2"], "--binSize"),
    (["--expo_time", "1e-5"], "in ks"),
    # checked up front with --pps_dir too (it imaged with exit 0; batch refused it)
    (["--credentials_file", "/nonexistent/xsa.ini"], "--credentials_file"),
])
def test_usage_errors(small_pps, extra, word, capsys):
    code, err = _run_bad([OBSID, "--pps_dir", str(small_pps)] + extra, small_pps, capsys)
    assert code == 2 and len(err) == 1 and word in err[0]


def test_argparse_usage_errors_exit_2(capsys):
    assert main([]) == 2
    assert main([OBSID, "--binSize", "four"]) == 2
    assert main([OBSID, "--backend", "gpu"]) == 2
    capsys.readouterr()


def test_missing_and_empty_pps_dir(tmp_path, capsys):
    code, err = _run_bad([OBSID, "--pps_dir", str(tmp_path / "nope")], tmp_path, capsys)
    assert code == 1 and len(err) == 1 and "nope" in err[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = _run_bad([OBSID, "--pps_dir", str(empty)], empty, capsys)
    assert code == 1 and len(err) == 1


@pytest.mark.parametrize("remove", ["PIEVLI", "FBKTSR"])
def test_pps_without_a_product(small_pps, tmp_path, remove, capsys):
    folder = _copy(small_pps, tmp_path / "pps")
    for p in folder.glob(f"*{remove}*"):
        p.unlink()
    code, err = _run_bad([OBSID, "--pps_dir", str(folder)], folder, capsys)
    assert code == 1 and len(err) == 1
    assert ("event list" in err[0]) if remove == "PIEVLI" else ("FBKTSR" in err[0])


def test_pps_without_flcutthr(tmp_path, capsys):
    truth = sim.write_pps(tmp_path / "pps", OBSID, n_events=20_000, write_flcutthr=False,
                          seed=2)
    code, err = _run_bad([OBSID, "--pps_dir", str(truth.folder)], truth.folder, capsys)
    assert code == 1 and len(err) == 1 and "FLCUTTHR" in err[0]


@pytest.mark.parametrize("how", ["truncate", "garble"])
def test_corrupt_event_list(small_pps, tmp_path, how, capsys):
    folder = _copy(small_pps, tmp_path / "pps")
    ev = next(folder.glob("*PIEVLI*"))
    raw = bytearray(ev.read_bytes())
    if how == "truncate":
        raw = raw[: int(len(raw) * 0.6)]
    else:
        mid = len(raw) // 2
        raw[mid:mid + 256] = bytes(256)
    ev.write_bytes(bytes(raw))
    code, err = _run_bad([OBSID, "--pps_dir", str(folder)], folder, capsys)
    assert code == 1 and len(err) == 1 and "corrupt" in err[0]


@pytest.mark.parametrize("how", ["empty", "mos", "timing"])
def test_an_event_list_this_tool_cannot_image_is_refused(small_pps, tmp_path, how, capsys):
    """No events at all, or a header that says another instrument or mode (the file name alone
    said pn imaging): one line naming the file, exit 1, nothing written."""
    folder = _copy(small_pps, tmp_path / "pps")
    ev = next(folder.glob("*PIEVLI*"))

    def edit(h):
        if how == "empty":
            h["EVENTS"] = fits.BinTableHDU(h["EVENTS"].data[:0], h["EVENTS"].header,
                                           name="EVENTS")
        for x in h:
            if how == "mos":
                x.header["INSTRUME"] = "EMOS1"
            elif how == "timing":
                x.header["DATAMODE"] = "TIMING"
        return h

    _rewrite_events(ev, edit)
    code, err = _run_bad([OBSID, "--pps_dir", str(folder)], folder, capsys)
    assert code == 1 and len(err) == 1 and ev.name in err[0], err
    assert {"empty": "no events at all", "mos": "EMOS1", "timing": "TIMING"}[how] in err[0]


def test_an_event_list_of_another_obsid_is_imaged_with_a_warning(small_pps, tmp_path, capsys):
    folder = _copy(small_pps, tmp_path / "pps")
    ev = next(folder.glob("*PIEVLI*"))

    def edit(h):
        for x in h:
            x.header["OBS_ID"] = "0999999999"
        return h

    _rewrite_events(ev, edit)
    with pytest.warns(UserWarning, match="OBS_ID 0999999999"):
        make_image(OBSID, pps_dir=folder, save_dir=tmp_path / "out")


def test_a_failed_write_leaves_no_folder_behind(small_pps, tmp_path, monkeypatch, capsys):
    """The image's folder is made when the image is written: a write that fails (a full disk)
    removes the folders it made."""
    import xmm_enhance.pipeline as pl

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pl, "atomic_write_hdul", full)
    out = tmp_path / "new" / "deeper"
    code = main([OBSID, "--pps_dir", str(small_pps), "--save_dir", str(out), "-q"])
    err = capsys.readouterr().err
    assert code == 1 and "No space left" in err
    assert not (tmp_path / "new").exists()


def test_sas_backend_without_sas_is_a_clear_error(small_pps, monkeypatch, capsys):
    monkeypatch.delenv("SAS_DIR", raising=False)
    code, err = _run_bad([OBSID, "--pps_dir", str(small_pps), "--backend", "sas"], small_pps,
                         capsys)
    assert code == 1 and len(err) == 1 and "SAS" in err[0] and "--backend native" in err[0]


def test_output_name():
    assert output_name(20, 500, 2000, 80) == DEFAULT_NAME
    assert output_name(-1, 200, 12000, 40) == "pn_cleaned_full_detxy_200_12000_40.fits"
    # a name never hides a second of difference: 20.04 ks is not the 20 ks image
    assert output_name(20.04, 500, 2000, 80) == "pn_cleaned_20.04ks_detxy_500_2000_80.fits"
    assert output_name(2.5, 500, 2000, 80) == "pn_cleaned_2.5ks_detxy_500_2000_80.fits"
    assert output_name(20.0001, 500, 2000, 80) == DEFAULT_NAME   # 0.1 s: the same image
    # ... and to the second: 4 s more is another image
    assert output_name(20.004, 500, 2000, 80) == "pn_cleaned_20.004ks_detxy_500_2000_80.fits"


def test_image_of_another_observation_is_never_replaced(small_pps, tmp_path, capsys):
    """Two observations with one --save_dir make the same file name: the second one stops,
    even with --overwrite, and says to use a folder per observation."""
    args = [OBSID, "--pps_dir", str(small_pps), "--save_dir", str(tmp_path), "-q",
            "--expo_time", "0"]
    assert main(args) == 0
    (p,) = tmp_path.glob("pn_cleaned_*.fits")
    with fits.open(p, mode="update") as hdul:   # as if another observation had made it
        hdul[0].header["OBS_ID"] = "0999999999"
    before = p.read_bytes()
    capsys.readouterr()
    for extra in ([], ["--overwrite"]):
        assert main(args + extra) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "holds OBS_ID 0999999999" in err[0], err
        assert str(tmp_path / OBSID) in err[0]
        assert p.read_bytes() == before
    # ... nor by a run asking for more good time than there is, which takes the "full" name
    # only once it has found that out
    short = args[:-1] + ["1000"]
    for extra in ([], ["--overwrite"]):
        assert main(short + extra) == 1
        err = capsys.readouterr().err.strip().splitlines()
        err = [e for e in err if ": warning: " not in e]
        assert len(err) == 1 and "holds OBS_ID 0999999999" in err[0], err
        assert p.read_bytes() == before
    assert sorted(q.name for q in tmp_path.glob("pn_cleaned_*")) == [p.name]


def test_skip_existing_keeps_a_complete_image_and_remakes_a_cut_one(small_pps, tmp_path,
                                                                    capsys):
    args = [OBSID, "--pps_dir", str(small_pps), "--save_dir", str(tmp_path), "--expo_time", "0"]
    assert main(args + ["-q"]) == 0
    (p,) = tmp_path.glob("pn_cleaned_*.fits")
    os.utime(p, ns=(1, 1))
    capsys.readouterr()
    assert main(args + ["--skip-existing"]) == 0
    out = capsys.readouterr().out
    assert "already made" in out and str(p) in out and p.stat().st_mtime_ns == 1
    assert f"counts: {int(fits.getdata(p).sum())}" in out
    # a cut file (a killed copy, a full disk) is made again
    p.write_bytes(p.read_bytes()[:20000])
    capsys.readouterr()
    assert main(args + ["--skip-existing", "-q"]) == 0
    assert capsys.readouterr().err == ""   # no astropy "may have been truncated" on the console
    with fits.open(p, checksum=True) as h:
        assert h[0].data.shape == (411, 403) and p.stat().st_mtime_ns > 1
    # with --overwrite: a usage error
    capsys.readouterr()
    assert main(args + ["--skip-existing", "--overwrite"]) == 2
    assert "--skip-existing" in capsys.readouterr().err
    # another observation's image is never taken for this one's
    with fits.open(p, mode="update") as hdul:
        hdul[0].header["OBS_ID"] = "0999999999"
    assert main(args + ["--skip-existing", "-q"]) == 1
    assert "holds OBS_ID 0999999999" in capsys.readouterr().err


def test_skip_existing_looks_where_a_download_puts_the_image(small_pps, tmp_path, capsys):
    """Without --pps_dir the image is beside the downloaded PPS, <save_dir>/<obsid>/pps: a
    rerun finds it there and does not go to the archive."""
    folder = _copy(small_pps, tmp_path / OBSID / "pps")
    assert main([OBSID, "--pps_dir", str(folder), "-q"]) == 0
    capsys.readouterr()
    assert main([OBSID, "--save_dir", str(tmp_path), "--skip-existing"]) == 0
    assert f"image: {folder / DEFAULT_NAME} (already made" in capsys.readouterr().out


def test_pps_dir_that_is_a_file(small_pps, tmp_path, capsys):
    f = next(small_pps.glob("*PIEVLI*"))
    code, err = _run_bad([OBSID, "--pps_dir", str(f), "--save_dir", str(tmp_path)], tmp_path,
                         capsys)
    assert code == 1 and len(err) == 1 and "is a file, not a folder" in err[0]


def test_empty_band_warns(small_pps, tmp_path, capsys):
    """A band with no events (above the pn's PI range) still writes the (empty) image, with one
    warning naming the band, and says where the WCS came from instead of an rms of nan."""
    assert main([OBSID, "--pps_dir", str(small_pps), "--save_dir", str(tmp_path),
                 "--low_pi", "20000", "--high_pi", "30000", "--expo_time", "0", "-q"]) == 0
    err = capsys.readouterr().err
    assert "no events selected (PI 20000-30000 eV" in err and "the image is empty" in err
    assert fits.getdata(tmp_path / "pn_cleaned_full_detxy_20000_30000_80.fits").sum() == 0


def test_root_script_runs(small_pps, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    r = subprocess.run([sys.executable, str(ROOT / "make_detxy_pn_image_pps.py"), OBSID,
                        "--pps_dir", str(small_pps), "--save_dir", str(out), "--expo_time", "5"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "image:" in r.stdout and (out / "pn_cleaned_5.0ks_detxy_500_2000_80.fits").is_file()
    h = subprocess.run([sys.executable, str(ROOT / "make_detxy_pn_image_pps.py"), "-h"],
                       capture_output=True, text=True, timeout=120)
    for flag in ("--low_pi", "--high_pi", "--expo_time", "--binSize", "--save_dir",
                 "--pps_dir", "--backend", "--gti-plot", "--overwrite"):
        assert flag in h.stdout


@pytest.mark.sas
@pytest.mark.skipif(not sas.available(), reason="XMM-SAS (pysas, SAS_DIR) is not installed")
def test_sas_backend_gives_the_same_image(sim_default, tmp_path):
    a = make_image(OBSID, pps_dir=sim_default.folder, save_dir=tmp_path / "n", backend="native")
    b = make_image(OBSID, pps_dir=sim_default.folder, save_dir=tmp_path / "s", backend="sas")
    np.testing.assert_array_equal(fits.getdata(a.path), fits.getdata(b.path))
    ha, hb = fits.getheader(a.path), fits.getheader(b.path)
    for k in ("EXPOSURE", "CRPIX1", "CRPIX2", "CD1_1", "CD2_2", "CRVAL1L", "LTV1"):
        assert ha[k] == pytest.approx(hb[k])


# ---- the sub-GTI choice end to end, on an observation whose good time is known -------------

# write_pps defaults: TSTART, a 60 ks exposure, a telemetry gap at 12.0-12.3 ks (absent from the
# event list's GTIs, NaN in FBKTSR) and a flare at 30-36 ks. Each CCD's GTIs are the exposure's
# narrowed by (ccd - 1) x 0.5 ms at both ends, so their intersection is narrowed by 5.5 ms.
T0 = 6.7923e8
EDGE = 11 * 0.0005
FLCUT = 10.0  # count/s: far above the quiescent 2 count/s, far below the flare's 30 count/s
GOOD = [(EDGE, 12000 - EDGE), (12300 + EDGE, 30000.0), (36000.0, 60000 - EDGE)]


@pytest.fixture(scope="module")
def known(tmp_path_factory):
    folder = tmp_path_factory.mktemp("known") / OBSID / "pps"
    truth = sim.write_pps(folder, OBSID, n_events=60_000, flcutthr=FLCUT, seed=21)
    # the threshold splits the light curve cleanly: flare bins above, all others below
    d = fits.getdata(truth.fbktsr, "RATE")
    rel = d["TIME"] - T0
    flare = (rel >= 30000) & (rel < 36000)
    finite = np.isfinite(d["RATE"])
    assert (d["RATE"][flare] > FLCUT).all() and (d["RATE"][~flare & finite] <= FLCUT).all()
    assert truth.tstart == T0
    np.testing.assert_allclose(truth.good_gti - T0, GOOD, atol=1e-6)
    return truth


def _events_in(path, ranges, low=500, high=2000):
    """Selected events of the list inside the given [start, stop) ranges (s from T0)."""
    d = fits.getdata(path, "EVENTS")
    t = d["TIME"] - T0
    inside = np.zeros(len(d), bool)
    for a, b in ranges:
        inside |= (t >= a) & (t < b)
    m = (d["FLAG"] == 0) & (d["PATTERN"] <= 4) & (d["PI"] >= low) & (d["PI"] <= high) & inside
    return d[m]


@pytest.mark.parametrize("expo_ks,name,ranges", [
    # the longest interval (36-60 ks) holds 20 ks: its first 20 ks
    (20, "20.0ks", [(36000.0, 56000.0)]),
    # it does not hold 30 ks: all of it, then the next longest cut to the rest
    (30, "30.0ks", [(12300 + EDGE, 18300 + 2 * EDGE), (36000.0, 60000 - EDGE)]),
    (0, "full", GOOD),
    (60, "full", GOOD),  # more than there is: all good time
])
def test_sub_gti_choice_end_to_end(known, tmp_path, expo_ks, name, ranges):
    short = expo_ks * 1e3 > sum(b - a for a, b in GOOD)
    with pytest.warns(gti.ExposureWarning) if short else contextlib.nullcontext():
        res = make_image(OBSID, pps_dir=known.folder, save_dir=tmp_path,
                         expo_time_ks=expo_ks, backend="native")
    assert res.path == tmp_path / f"pn_cleaned_{name}_detxy_500_2000_80.fits"
    h = fits.getheader(res.path)
    st = fits.getdata(res.path, "STDGTI")
    np.testing.assert_allclose(np.column_stack([st["START"], st["STOP"]]) - T0, ranges,
                               atol=1e-5)
    length = sum(b - a for a, b in ranges)
    assert h["EXPOSURE"] == pytest.approx(length, abs=1e-5)
    assert h["EXPREQ"] == expo_ks * 1e3
    assert h["GOODTIME"] == pytest.approx(sum(b - a for a, b in GOOD), abs=1e-5)
    # the dates are those of the kept time, in UTC as XMM writes them (TT - UTC = 69.184 s
    # from 2017 on), not the event list's whole exposure
    from astropy.time import Time
    for key, t in (("DATE-OBS", ranges[0][0]), ("DATE-END", ranges[-1][1])):
        tt = Time(50814.0, (T0 + t) / 86400.0, format="mjd", scale="tt")
        want = Time(tt.mjd - 69.184 / 86400.0, format="mjd", scale="utc")
        assert abs((Time(h[key], scale="utc") - want).sec) < 1.0, (key, h[key], want.isot)
        # MJD-OBS / MJD-END: the same instants in TIMESYS (TT), exactly, as FITS readers
        # take them (not the UTC date read as TT: 69 s early)
        assert h[key.replace("DATE", "MJD")] == pytest.approx(50814.0 + (T0 + t) / 86400.0,
                                                              abs=1e-9)
    if ranges[0][0] >= 1:   # a later start than the exposure's is seen in DATE-OBS
        assert h["DATE-OBS"] != fits.getheader(known.events, "EVENTS")["DATE-OBS"]
    # exactly the events of those time ranges were binned, on the DET grid of the header
    d = _events_in(known.events, ranges)
    ex = h["CRVAL1L"] - h["CDELT1L"] / 2 + h["CDELT1L"] * np.arange(h["NAXIS1"] + 1)
    ey = h["CRVAL2L"] - h["CDELT2L"] / 2 + h["CDELT2L"] * np.arange(h["NAXIS2"] + 1)
    ref, _, _ = np.histogram2d(d["DETY"], d["DETX"], bins=[ey, ex])
    np.testing.assert_array_equal(fits.getdata(res.path), ref.astype(np.int32))
    assert len(d) > 1000


def test_image_header_opens_without_warnings(default_run):
    """WCS readers find DATEREF/MJD-OBS/MJD-END written (no astropy 'datfix' note) and every
    card formats within 80 characters."""
    from astropy.time import Time

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with fits.open(default_run, checksum=True) as hdul:
            h = hdul[0].header
            hdul[0].data, hdul[1].data
            WCS(h)
            WCS(h, key="L")
            h.tostring()
            hdul[1].header.tostring()
    assert h["DATEREF"] == "1998-01-01T00:00:00"  # MJDREF 50814 = 1998-01-01
    assert h["MJDREF"] == 50814.0
    for date, mjd, met in (("DATE-OBS", "MJD-OBS", "TSTART"), ("DATE-END", "MJD-END", "TSTOP")):
        assert h["TIMESYS"] == "TT"
        assert h[mjd] == pytest.approx(h["MJDREF"] + h[met] / 86400.0, abs=1e-9)
        # the UTC date (as XMM writes it) is the same instant to its 1 s rounding
        utc_as_tt = Time(h[date], format="isot", scale="utc").tt.mjd
        assert abs(h[mjd] - utc_as_tt) * 86400.0 < 0.6
    assert all(len(str(v)) <= 72 for v in h["HISTORY"])
    # the GTI table read on its own (OGIP readers) has its times' zero point and scale
    g = fits.getheader(default_run, "STDGTI")
    assert g["MJDREF"] == h["MJDREF"] and g["TIMESYS"] == "TT" and g["TIMEUNIT"] == "s"


# ---- run-time failures and fall-backs on broken PPS folders ---------------------------------

def _rewrite_events(path, edit):
    """Rewrite a gzipped event list after ``edit(hdul) -> hdul``."""
    with fits.open(path) as hdul:
        new = edit(fits.HDUList([h.copy() for h in hdul]))
        buf = io.BytesIO()
        new.writeto(buf)
    path.write_bytes(gzip.compress(buf.getvalue(), compresslevel=1))


def test_no_good_time_after_the_flare_filter(tmp_path, capsys):
    truth = sim.write_pps(tmp_path / "pps", OBSID, n_events=20_000, flcutthr=0.01, seed=4)
    code, err = _run_bad([OBSID, "--pps_dir", str(truth.folder)], truth.folder, capsys)
    assert code == 1 and len(err) == 1, err
    assert truth.events.name in err[0] and "no good time" in err[0]
    assert "choose another observation" in err[0]


def test_event_list_without_sky_keywords(known, tmp_path, capsys):
    folder = _copy(known.folder, tmp_path / "pps")
    ev = folder / known.events.name
    # blank the sky cards in the file's bytes (astropy would write the columns' TC* back)
    raw = bytearray(gzip.decompress(ev.read_bytes()))
    sky = (b"REFX", b"REFY", b"TCRVL", b"TCRPX", b"TCDLT", b"TCTYP", b"TCUNI")
    end_of_events = raw.index(b"EXTNAME = 'EVENTS")
    end_of_events = raw.index(b"END" + b" " * 77, end_of_events)
    for i in range(0, end_of_events, 80):
        if raw[i:i + 8].startswith(sky):
            raw[i:i + 80] = b" " * 80
    ev.write_bytes(gzip.compress(bytes(raw), compresslevel=1))
    h = fits.getheader(ev, "EVENTS")
    assert "REFXCRVL" not in h and not any(k.startswith("TCRVL") for k in h)
    code, err = _run_bad([OBSID, "--pps_dir", str(folder)], folder, capsys)
    assert code == 1 and len(err) == 1, err
    assert ev.name in err[0] and "sky" in err[0] and "download the PPS again" in err[0]


def test_event_list_without_ccd_gti_tables_uses_tstart_tstop(known, tmp_path, capsys):
    folder = _copy(known.folder, tmp_path / "pps")
    ev = folder / known.events.name
    _rewrite_events(ev, lambda hdul: fits.HDUList([hdul[0], hdul["EVENTS"]]))
    assert [h.name for h in fits.open(ev)] == ["PRIMARY", "EVENTS"]
    assert main([OBSID, "--pps_dir", str(folder), "--expo_time", "0", "-q"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no STDGTInn" in err[0] and ev.name in err[0], err
    # good time = FBKTSR bins at or below the threshold within TSTART-TSTOP: the gap and the
    # flare are out, the CCDs' 5.5 ms edges are not
    h = fits.getheader(folder / "pn_cleaned_full_detxy_500_2000_80.fits")
    assert h["EXPOSURE"] == pytest.approx(12000 + 17700 + 24000, abs=1e-5)


def test_too_few_events_for_the_wcs_fit_falls_back_to_the_pointing(known, tmp_path, capsys):
    """A band with a handful of events: the DET->sky fit needs >= 10, so the approximate
    pointing WCS is used, with one warning line and WCSMETH = 'PNT' in the header."""
    lo, hi = 11990, 11999  # particle events, log-uniform in PI; 12000 is a clipping pile
    d = fits.getdata(known.events, "EVENTS")
    n = int(((d["FLAG"] == 0) & (d["PATTERN"] <= 4) & (d["PI"] >= lo) & (d["PI"] <= hi)).sum())
    assert 0 < n < 10
    code = main([OBSID, "--pps_dir", str(known.folder), "--save_dir", str(tmp_path),
                 "--low_pi", str(lo), "--high_pi", str(hi), "--expo_time", "0", "-q"])
    assert code == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "too few events" in err[0] and "RA_PNT" in err[0], err
    h = fits.getheader(tmp_path / f"pn_cleaned_full_detxy_{lo}_{hi}_80.fits")
    assert h["WCSMETH"] == "PNT" and "approximate" in h.comments["WCSMETH"]
    assert (h["CRVAL1"], h["CRVAL2"]) == (known.ra_pnt, known.dec_pnt)
    cd = np.array([[h["CD1_1"], h["CD1_2"]], [h["CD2_1"], h["CD2_2"]]])
    assert np.sqrt(abs(np.linalg.det(cd))) * 3600 == pytest.approx(4.0)


def test_write_error_is_one_line_and_leaves_nothing(known, tmp_path, capsys, monkeypatch):
    def full_disk(self, fileobj, *args, **kwargs):  # part of a file, then the disk is full
        part = b"SIMPLE  =                    T" + b" " * 2000
        if hasattr(fileobj, "write"):
            fileobj.write(part)
        else:
            with open(fileobj, "wb") as fh:
                fh.write(part)
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(fits.HDUList, "writeto", full_disk)
    out = tmp_path / "out"
    out.mkdir()
    code = main([OBSID, "--pps_dir", str(known.folder), "--save_dir", str(out), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    assert str(out / DEFAULT_NAME) in err[0] and "No space left" in err[0]
    assert "free disk space" in err[0]
    assert list(out.iterdir()) == []


def test_save_dir_is_made_on_success_only(known, tmp_path, capsys):
    out = tmp_path / "a" / "b"
    assert main([OBSID, "--pps_dir", str(known.folder), "--save_dir", str(out), "-q",
                 "--expo_time", "5"]) == 0
    assert (out / "pn_cleaned_5.0ks_detxy_500_2000_80.fits").is_file()
    broken = _copy(known.folder, tmp_path / "pps")
    next(broken.glob("*FBKTSR*")).unlink()
    assert main([OBSID, "--pps_dir", str(broken), "--save_dir", str(tmp_path / "c" / "d"),
                 "-q"]) == 1
    assert not (tmp_path / "c").exists()
    capsys.readouterr()


# ---- the batch engine finds an all-good-time image again -------------------------------------

def test_batch_rerun_skips_an_all_good_time_image(known, tmp_path):
    from xmm_enhance import batch

    root = known.folder.parent.parent  # <root>/<OBS_ID>/pps
    cfg = batch.BatchConfig(save_dir=tmp_path, pps_root=root, expo_time_ks=100, which=(),
                            backend="native")
    full = tmp_path / OBSID / "pn_cleaned_full_detxy_500_2000_80.fits"
    first = batch.process_observation(OBSID, cfg)
    assert first.status == "done" and "image:ran" in first.steps, first
    assert Path(first.image) == full and full.is_file()
    assert not (tmp_path / OBSID / "pn_cleaned_100.0ks_detxy_500_2000_80.fits").exists()
    assert first.exposure_s == pytest.approx(sum(b - a for a, b in GOOD), abs=1e-5)
    stamp = full.stat().st_mtime_ns
    for expo in (100, 0, 54):  # any request the good time cannot fill is this file
        again = batch.process_observation(OBSID, replace(cfg, expo_time_ks=expo))
        assert again.status == "done" and "image:skipped" in again.steps, (expo, again)
        assert Path(again.image) == full
        assert batch.observation_state(OBSID, replace(cfg, expo_time_ks=expo))["image"] \
            == "skip"
    assert full.stat().st_mtime_ns == stamp
    # a request the good time can fill is another image
    cut = batch.process_observation(OBSID, replace(cfg, expo_time_ks=20))
    assert "image:ran" in cut.steps
    assert Path(cut.image).name == "pn_cleaned_20.0ks_detxy_500_2000_80.fits"


def test_batch_cli_passes_expo_time_0_through(known, tmp_path, restore_logging, capsys):
    from xmm_enhance.cli.main import main as xmm_enhance

    root = known.folder.parent.parent
    code = xmm_enhance(["batch", OBSID, "--pps_dir", str(root), "--save_dir", str(tmp_path),
                        "--which", "none", "--expo_time", "0", "--backend", "native", "-q"])
    assert code == 0, capsys.readouterr().err
    h = fits.getheader(tmp_path / OBSID / "pn_cleaned_full_detxy_500_2000_80.fits")
    assert h["EXPREQ"] == 0
    assert h["EXPOSURE"] == pytest.approx(sum(b - a for a, b in GOOD), abs=1e-5)
    assert not list((tmp_path / OBSID).glob("pn_cleaned_20.0ks*"))


def test_gti_plot_leaves_the_users_matplotlib_backend(sim_default, tmp_path):
    """make_image(gti_plot=True) from a notebook switched the user's backend to Agg."""
    mpl = pytest.importorskip("matplotlib")
    before = mpl.get_backend()
    mpl.use("svg")
    try:
        make_image(OBSID, pps_dir=sim_default.folder, save_dir=tmp_path, gti_plot=True,
                   backend="native")
        assert mpl.get_backend() == "svg"
    finally:
        mpl.use(before)


def test_skip_existing_run_that_loses_a_race_skips(small_pps, tmp_path, monkeypatch, capsys):
    """Two --skip-existing runs of one OBS_ID at once (the second waited for the first's
    download): the one that finds the image made by the other when it comes to write it
    prints it and exits 0; it reported 'exists; pass --overwrite' before."""
    from xmm_enhance import pipeline

    args = [OBSID, "--pps_dir", str(small_pps), "--save_dir", str(tmp_path), "--expo_time",
            "0", "--skip-existing"]
    real = pipeline.make_image

    def other_run_first(*a, **k):
        real(*a, **{**k, "overwrite": True})           # the other run finishes first
        return real(*a, **k)

    monkeypatch.setattr(pipeline, "make_image", other_run_first)
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "made by another run meanwhile" in captured.out and "error" not in captured.err


def test_skip_existing_with_gti_plot_remakes_a_missing_plot(small_pps, tmp_path, capsys):
    """A run killed between the image and its GTI plot: a rerun with --skip-existing
    --gti-plot made nothing and said nothing (exit 0, no plot); now it makes both again."""
    args = [OBSID, "--pps_dir", str(small_pps), "--save_dir", str(tmp_path), "--expo_time", "0",
            "--gti-plot", "-q"]
    assert main(args) == 0
    (img,) = tmp_path.glob("pn_cleaned_*.fits")
    plot = img.with_name(img.stem + "_gti.png")
    assert plot.is_file()
    plot.unlink()
    assert main(args + ["--skip-existing"]) == 0
    assert plot.read_bytes()[:4] == b"\x89PNG"
    mtime = img.stat().st_mtime_ns
    assert main(args + ["--skip-existing"]) == 0       # both there: nothing is redone
    assert img.stat().st_mtime_ns == mtime


def test_the_sas_route_leaves_sas_ccf_as_it_found_it(monkeypatch, tmp_path):
    """image_with_sas set SAS_CCF to the first observation's calibration index for good: the
    next observation of a batch worker ran with the wrong one."""
    import types

    monkeypatch.delenv("SAS_CCF", raising=False)
    seen = []
    monkeypatch.setattr(sas, "require", lambda: None)
    monkeypatch.setattr(sas, "tabgtigen", lambda *a, **k: seen.append(os.environ.get("SAS_CCF"))
                        or [(0.0, 10.0)])
    monkeypatch.setattr(sas, "write_gti_file", lambda kept, path: path)
    monkeypatch.setattr(sas, "evselect_image", lambda *a, **k: np.zeros((2, 2), np.int32))
    for name in ("a.CCF", "b.CCF"):
        files = types.SimpleNamespace(calind=tmp_path / name, fbktsr=tmp_path / "f",
                                      events=tmp_path / "e")
        sas.image_with_sas(files, 1.0, [(0.0, 10.0)], low_pi=500, high_pi=2000, binsize=80,
                           expo_time_s=0)
        assert "SAS_CCF" not in os.environ
    assert seen == [str(tmp_path / "a.CCF"), str(tmp_path / "b.CCF")]


# ---- the SAS route's plumbing, with a stand-in for XMM's pysas --------------------------------

def _stand_in_pysas(monkeypatch, seen):
    """Install a ``pysas.wrapper.Wrapper`` that runs tabgtigen and evselect the simple way
    (every time good; the selection and binning of the expression) and records, per task, the
    folder it ran in, whether its input file was there from that folder, and ``SAS_CCF`` at its
    start and end (it sleeps in between, so tasks of two threads would overlap)."""
    import re
    import threading
    import time
    import types

    from xmm_enhance import imaging
    from xmm_enhance.imaging import gti_hdu

    class Wrapper:
        def __init__(self, task, args):
            self.task = task
            self.args = dict(a.split("=", 1) for a in args)

        def run(self):
            table = self.args["table"].rsplit(":", 1)[0]
            ccf = os.environ.get("SAS_CCF")
            time.sleep(0.05)
            seen.append(dict(task=self.task, cwd=os.getcwd(), table=os.path.isfile(table),
                             ccf=ccf, ccf_after=os.environ.get("SAS_CCF"),
                             thread=threading.current_thread().name))
            if not os.path.isfile(table):
                raise RuntimeError(f"{table}: no such file")
            if self.task == "tabgtigen":
                gti_hdu_ = gti_hdu([(0.0, 1e10)])
                fits.HDUList([fits.PrimaryHDU(), gti_hdu_]).writeto(self.args["gtiset"])
                return
            d = fits.getdata(table, "EVENTS")
            low, high = map(int, re.search(r"PI in \[(\d+):(\d+)\]",
                                           self.args["expression"]).groups())
            ok = (d["FLAG"] == 0) & (d["PATTERN"] <= 4) & (d["PI"] >= low) & (d["PI"] <= high)
            img = imaging.bin_det(d["DETX"][ok], d["DETY"][ok],
                                  float(self.args["ximagebinsize"]))
            fits.PrimaryHDU(img).writeto(self.args["imageset"])

    wrapper = types.ModuleType("pysas.wrapper")
    wrapper.Wrapper = Wrapper
    monkeypatch.setitem(sys.modules, "pysas", types.ModuleType("pysas"))
    monkeypatch.setitem(sys.modules, "pysas.wrapper", wrapper)
    monkeypatch.setenv("SAS_DIR", "/nowhere/sas")
    monkeypatch.delenv("SAS_CCF", raising=False)


def test_the_sas_route_works_from_a_relative_pps_dir(small_pps, tmp_path, monkeypatch):
    """The SAS tasks run in a temporary folder, so a relative --pps_dir gave them event and
    light-curve paths that did not exist there."""
    seen = []
    _stand_in_pysas(monkeypatch, seen)
    monkeypatch.chdir(small_pps.parent)
    res = make_image(OBSID, pps_dir=small_pps.name, save_dir=tmp_path, backend="sas",
                     expo_time_ks=0)
    assert [s["task"] for s in seen] == ["tabgtigen", "evselect"]
    assert all(s["table"] for s in seen)
    assert all(s["cwd"] != str(small_pps.parent) for s in seen)   # they ran elsewhere
    assert os.getcwd() == str(small_pps.parent)                    # and the folder is back
    assert all(s["ccf"] and os.path.isabs(s["ccf"]) for s in seen)
    assert "SAS_CCF" not in os.environ
    assert fits.getdata(res.path).sum() > 0


def test_sas_observations_of_two_threads_take_turns(tmp_path, monkeypatch):
    """SAS_CCF and the current folder are process-wide: two threads' SAS observations overlapped,
    and one's tasks ran with the other's calibration index or folder."""
    import threading
    import types

    seen = []
    _stand_in_pysas(monkeypatch, seen)
    folders = {}
    for i in range(2):
        pps = tmp_path / f"obs{i}"
        sim.write_pps(pps, OBSID, n_events=2000, seed=40 + i)
        folders[f"t{i}"] = sas_files = types.SimpleNamespace(
            calind=pps / f"cal{i}.CCF", fbktsr=next(pps.glob("*FBKTSR*")),
            events=next(pps.glob("*PIEVLI*")))
        sas_files.calind.write_text("")
    errors = []

    def work(name):
        try:
            sas.image_with_sas(folders[name], 1.0, [(0.0, 1e10)], low_pi=500, high_pi=2000,
                               binsize=80, expo_time_s=0)
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(n,), name=n) for n in folders]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and len(seen) == 4
    for s in seen:
        assert s["ccf"] == s["ccf_after"] == str(folders[s["thread"]].calind)
    # each thread's two tasks ran back to back, in one temporary folder of its own
    assert seen[0]["thread"] == seen[1]["thread"] != seen[2]["thread"] == seen[3]["thread"]
    assert seen[0]["cwd"] == seen[1]["cwd"] != seen[2]["cwd"] == seen[3]["cwd"]
    assert "SAS_CCF" not in os.environ


def test_returned_paths_are_absolute(small_pps, tmp_path, monkeypatch):
    """make_image with relative folders returned relative paths: wrong after an os.chdir."""
    monkeypatch.chdir(small_pps.parent)
    res = make_image(OBSID, pps_dir=small_pps.name, save_dir=os.path.relpath(tmp_path),
                     expo_time_ks=0)
    assert res.path.is_absolute() and res.path.parent == tmp_path
    monkeypatch.chdir("/")
    assert res.path.is_file()


def test_find_image_reads_a_cut_full_image_without_astropys_warning(tmp_path):
    """--skip-existing on an observation shorter than asked: find_image read the header of a
    cut all-good-time image, and astropy printed "File may have been truncated" to stderr,
    even with -q (the caller redoes the cut image)."""
    from xmm_enhance.pipeline import find_image

    h = fits.Header()
    h["EXPOSURE"] = 15e3
    h["GOODTIME"] = 15e3
    full = tmp_path / output_name(0, 500, 2000, 80)
    fits.PrimaryHDU(np.zeros((411, 403), np.int32), h).writeto(full)
    full.write_bytes(full.read_bytes()[:300000])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert find_image(tmp_path, 20.0, 500, 2000, 80) == full
    assert not caught, [str(w.message) for w in caught]
