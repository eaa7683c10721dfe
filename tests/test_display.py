"""Quick-look figures: north up / east left resampling, compass, scale bar, labels, sources.

Expectations come from the synthetic images' known geometry (gnomonic offsets of a marker at a
known RA/Dec, separations of pixel centres), not from the code under test.
"""
from __future__ import annotations

import inspect
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.table import Table
from astropy.wcs import WCS

pytest.importorskip("matplotlib")

from xmm_enhance import display  # noqa: E402
from xmm_enhance.errors import OutputError, UsageError  # noqa: E402

RA0, DEC0 = 150.0, 30.0          # image centre
PIX = 4.0                        # arcsec / pixel of the synthetic input
N = 64
#: marker offsets: 40" east, 48" north of the centre
D_EAST, D_NORTH = 40.0, 48.0


def sky_wcs(n=N, pix=PIX, *, rot_deg=0.0, flip=False):
    """TAN WCS of an n x n image centred on (RA0, DEC0).

    ``rot_deg`` turns the sky anticlockwise on the image (0: north up, east left); ``flip``
    mirrors it (east right). FITS CRPIX is 1-based: the array centre (n-1)/2 is (n+1)/2.
    """
    c = pix / 3600.0
    t = math.radians(rot_deg)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [RA0, DEC0]
    w.wcs.crpix = [(n + 1) / 2, (n + 1) / 2]
    w.wcs.cd = c * rot @ np.diag([1.0 if flip else -1.0, 1.0])
    w.wcs.radesys = "FK5"
    w.wcs.equinox = 2000.0
    return w


def marker_radec():
    """RA/Dec of the point D_EAST" east and D_NORTH" north of the centre (tangent plane)."""
    xi, eta = math.radians(D_EAST / 3600), math.radians(D_NORTH / 3600)
    d0, a0 = math.radians(DEC0), math.radians(RA0)
    den = math.cos(d0) - eta * math.sin(d0)
    ra = a0 + math.atan2(xi, den)
    dec = math.atan2(math.sin(d0) + eta * math.cos(d0), math.hypot(xi, den))
    return math.degrees(ra), math.degrees(dec)


def image_with_marker(wcs, n=N, value=100.0, half=1):
    """Flat 1.0 image with a (2 half + 1)^2 block of ``value`` on the marker."""
    img = np.ones((n, n))
    x, y = (int(round(float(v))) for v in wcs.world_to_pixel(SkyCoord(*marker_radec(),
                                                                          unit="deg",
                                                                          frame="fk5")))
    img[y - half:y + half + 1, x - half:x + half + 1] = value
    return img


def expected_offset(pix):
    """(dx, dy) pixels of the marker from the array centre when north is up and east left."""
    return -D_EAST / pix, D_NORTH / pix


def centroid(a, value=100.0):
    yy, xx = np.nonzero(np.nan_to_num(a) > value / 2)
    assert xx.size, "marker lost"
    return xx.mean(), yy.mean()


CASES = {"rot180": dict(rot_deg=180.0), "pa60": dict(rot_deg=60.0),
         "flipped": dict(flip=True), "rot90_flipped": dict(rot_deg=90.0, flip=True)}


# ----------------------------------------------------------------------------- pure helpers
@pytest.mark.parametrize("case", CASES)
def test_sky_oriented_puts_marker_north_east_up_left(case):
    w = sky_wcs(**CASES[case])
    img = image_with_marker(w)
    sky = display.sky_oriented(img, w)
    ny, nx = sky.data.shape
    cx, cy = centroid(sky.data)
    dx, dy = expected_offset(PIX)
    # the 3x3 marker block was placed at the nearest input pixel: within 0.5 px + rounding
    assert cx - (nx - 1) / 2 == pytest.approx(dx, abs=1.0)
    assert cy - (ny - 1) / 2 == pytest.approx(dy, abs=1.0)
    assert dx < -5 and dy > 5                                    # up and to the left


@pytest.mark.parametrize("case", ["rot180", "flipped", "rot90_flipped"])
def test_right_angle_turns_and_flips_are_exact_permutations(case):
    w = sky_wcs(**CASES[case])
    img = np.random.default_rng(3).poisson(2.0, (N, N)).astype(float)
    sky = display.sky_oriented(img, w)
    assert sky.data.shape == (N, N)
    assert np.all(np.isfinite(sky.data)) and np.all(sky.footprint == 1)
    assert np.sort(sky.data.ravel()) == pytest.approx(np.sort(img.ravel()))
    expect = {"rot180": img[::-1, ::-1], "flipped": img[:, ::-1],
              # sky turned 90 deg anticlockwise and mirrored on the image: a transpose
              "rot90_flipped": img.T}[case]
    np.testing.assert_array_equal(sky.data, expect)


def test_north_up_wcs_orientation_scale_centre_and_extent():
    w = sky_wcs(rot_deg=60.0)
    out, shape = display.north_up_wcs(w, (N, N))
    cd = out.wcs.cd
    assert cd[0, 0] < 0 and cd[1, 1] > 0 and cd[0, 1] == 0 and cd[1, 0] == 0
    # pixel scale: separation of neighbouring pixel centres
    c = (shape[1] - 1) / 2, (shape[0] - 1) / 2
    p0 = out.pixel_to_world(*c)
    assert p0.separation(out.pixel_to_world(c[0] + 1, c[1])).arcsec == pytest.approx(PIX, 1e-4)
    assert p0.separation(out.pixel_to_world(c[0], c[1] + 1)).arcsec == pytest.approx(PIX, 1e-4)
    # the output centre is the input centre
    centre = SkyCoord(RA0, DEC0, unit="deg", frame="fk5")
    assert p0.separation(centre).arcsec < 1e-3
    # every input corner (pixel edges) is inside the output grid, and the grid is not wasteful:
    # a 64-pixel square turned by 60 deg spans 64 (cos 60 + sin 60) = 87.4 pixels
    corners = w.pixel_to_world([-0.5, N - 0.5, N - 0.5, -0.5], [-0.5, -0.5, N - 0.5, N - 0.5])
    x, y = out.world_to_pixel(corners)
    assert np.all((x >= -0.5) & (x <= shape[1] - 0.5) & (y >= -0.5) & (y <= shape[0] - 0.5))
    span = N * (math.cos(math.radians(60)) + math.sin(math.radians(60)))
    assert span <= shape[0] <= span + 3 and span <= shape[1] <= span + 3


def pn_like_wcs(n, pix, pa_deg, ra=150.1, dec=62.2):
    """A TAN WCS turned by ``pa_deg`` like an XMM roll, far from the equator (larger
    differences between the two tangent planes than at DEC0)."""
    t = math.radians(pa_deg)
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = [n / 2 + 0.5 + 17.3, n / 2 + 0.5 - 9.1]   # tangent point off the centre
    w.wcs.cd = pix / 3600.0 * np.array([[-math.cos(t), math.sin(t)],
                                        [math.sin(t), math.cos(t)]])
    return w


@pytest.mark.parametrize("n, pix, pa", [(416, 4.0, 70.0), (832, 2.0, 233.0), (403, 4.0, 0.0)])
def test_interpolated_pixel_map_matches_the_exact_transform(n, pix, pa):
    w = pn_like_wcs(n, pix, pa)
    w_out, shape = display.north_up_wcs(w, (n, n))
    x, y = display.input_pixels(w, w_out, shape)
    px, py = np.meshgrid(np.arange(shape[1], dtype=float), np.arange(shape[0], dtype=float))
    ex, ey = w.all_world2pix(*w_out.all_pix2world(px, py, 0), 0)
    assert np.abs(x - ex).max() < 1e-6 and np.abs(y - ey).max() < 1e-6


def test_nearest_resampling_is_reproject_nearest_neighbour():
    reproject = pytest.importorskip("reproject")
    n = 200
    w = pn_like_wcs(n, 4.0, 70.0)
    img = np.random.default_rng(5).poisson(3.0, (n, n)).astype(float)
    img[50, 60] = np.nan
    sky = display.sky_oriented(img, w)
    ref, foot = reproject.reproject_interp((img, w), sky.wcs, shape_out=sky.data.shape,
                                           order="nearest-neighbor", roundtrip_coords=False)
    np.testing.assert_array_equal(sky.data, ref)             # NaN in the same places too
    np.testing.assert_array_equal(sky.footprint, foot)


def test_outside_and_nan_are_nan():
    w = sky_wcs(rot_deg=45.0)
    img = np.ones((N, N))
    img[10, 20] = np.nan
    sky = display.sky_oriented(img, w)
    assert sky.data[0, 0] != sky.data[0, 0]                     # a corner is outside: NaN
    assert sky.footprint[0, 0] == 0
    # the input NaN comes along: NaN where it lands, neighbours 3 pixels away are finite
    x, y = (int(round(float(v))) for v in sky.wcs.world_to_pixel(w.pixel_to_world(20, 10)))
    assert np.isnan(sky.data[y, x])
    assert np.isfinite(sky.data[[y - 3, y + 3, y, y], [x, x, x - 3, x + 3]]).all()


def test_non_celestial_wcs_is_refused():
    w = WCS(naxis=2)
    w.wcs.ctype = ["DETX", "DETY"]
    with pytest.raises(ValueError, match="wcs"):
        display.north_up_wcs(w, (N, N))


# ----------------------------------------------------------------------------- figures
def fake_result(*, rot_deg=180.0, flip=False, obsid="0852030101", wcs=True, note=""):
    """An EnhanceResult-like object: 64^2 input at 4", 128^2 prediction at 2" (scale 2)."""
    w_in = sky_wcs(rot_deg=rot_deg, flip=flip)
    w_out = sky_wcs(2 * N, PIX / 2, rot_deg=rot_deg, flip=flip)
    rate_in = image_with_marker(w_in)
    pred = image_with_marker(w_out, 2 * N, half=2) / 4.0     # same surface brightness
    mask = np.ones((N, N), bool)
    mask[:, :3] = False                                        # a masked strip
    header = {"OBS_ID": obsid, "OBJECT": "M 51"} if obsid else {}
    return SimpleNamespace(
        task="SR", input_rate=rate_in.astype(np.float32), input_mask=mask,
        prediction=pred.astype(np.float32), input_wcs=w_in if wcs else None,
        output_wcs=w_out if wcs else None, pad=(0, 0),
        image=SimpleNamespace(header=header, exposure=20e3, wcs_note=note,
                              path=Path("x/pn_image.fits")),
        model=SimpleNamespace(path=Path("XMM-SuperRes.onnx"), version="1.0", scale=2))


def image_axes(fig):
    return [ax for ax in fig.axes if ax.images and ax.get_title()]


def test_enhance_result_has_what_display_reads():
    from xmm_enhance.inference import EnhanceResult

    given = set(inspect.signature(EnhanceResult).parameters)
    for name in ("task", "input_rate", "input_mask", "prediction", "input_wcs", "output_wcs",
                 "image", "model"):
        assert name in given or hasattr(EnhanceResult, name), name


@pytest.mark.parametrize("case", ["rot180", "flipped", "pa60"])
def test_figure_draws_north_up_east_left_with_compass(case):
    fig = display.quicklook_figure(fake_result(**CASES[case]))
    axes = image_axes(fig)
    assert len(axes) == 2
    for ax, pix in zip(axes, (PIX, PIX / 2)):
        a = np.ma.filled(ax.images[0].get_array().astype(float), np.nan)
        cx, cy = centroid(a, value=np.nanmax(a))
        dx, dy = expected_offset(pix)
        assert cx - (a.shape[1] - 1) / 2 == pytest.approx(dx, abs=1.5)
        assert cy - (a.shape[0] - 1) / 2 == pytest.approx(dy, abs=1.5)
        arrows = {t.get_gid(): t for t in ax.texts if (t.get_gid() or "").startswith("compass")}
        for name, want in (("N", (0.0, 1.0)), ("E", (-1.0, 0.0))):
            a_ = arrows[f"compass-{name}"]
            d = np.subtract(a_.xy, a_.xyann)
            assert d / np.hypot(*d) == pytest.approx(want, abs=1e-3)
            assert arrows[f"compass-{name}-label"].get_text() == name


def test_masked_input_pixels_are_nan_and_drawn_in_background_colour():
    res = fake_result(rot_deg=0.0)
    fig = display.quicklook_figure(res)
    a = image_axes(fig)[0].images[0]
    data = np.ma.filled(a.get_array().astype(float), np.nan)
    assert np.isnan(data[:, :3]).all() and np.isfinite(data[:, 3:]).all()
    bad = a.get_cmap().get_bad()
    assert bad[3] > 0 and tuple(bad[:3]) != tuple(a.get_cmap()(0.0)[:3])


def test_prediction_off_the_chips_is_nan_like_the_masked_input():
    """Where no photon can land (``output_keep`` False: gaps, off-chip, padding) the
    prediction panels show no data, as the input's masked pixels; elsewhere its values."""
    res = fake_result(rot_deg=0.0)
    keep = np.ones(res.prediction.shape, bool)
    keep[:, :6] = False
    res.output_keep = keep
    pred = display.quicklook_panels(res)[1].rate
    assert np.isnan(pred[:, :6]).all()
    np.testing.assert_array_equal(pred[:, 6:], res.prediction[:, 6:])
    del res.output_keep   # a result without it (older callers): the maps as they are
    np.testing.assert_array_equal(display.quicklook_panels(res)[1].rate, res.prediction)


def test_title_has_obs_id_and_colour_bar_names_stretch():
    fig = display.quicklook_figure(fake_result(obsid="0852030101"))
    assert "OBS_ID 0852030101" in fig._suptitle.get_text()
    label = fig.axes[-1].get_ylabel()
    assert "asinh stretch" in label and "arcmin" in label
    fig = display.quicklook_figure(fake_result(obsid=""), stretch="sqrt")
    assert "pn_image.fits" in fig._suptitle.get_text()
    assert "sqrt stretch" in fig.axes[-1].get_ylabel()
    with pytest.raises(ValueError, match="stretch"):
        display.quicklook_figure(fake_result(), stretch="hist")


def _label_arcsec(text):
    m = re.fullmatch(r"(\d+)(['\"])", text)
    assert m, text
    return float(m.group(1)) * (60.0 if m.group(2) == "'" else 1.0)


@pytest.mark.parametrize("wcs", [True, False])
def test_scale_bar_length_matches_pixel_scale(wcs):
    fig = display.quicklook_figure(fake_result(rot_deg=60.0, wcs=wcs))
    for ax, pix_known in zip(image_axes(fig), (PIX, PIX / 2)):
        (line,) = [ln for ln in ax.lines if ln.get_gid() == "scalebar"]
        (label,) = [t for t in ax.texts if t.get_gid() == "scalebar-label"]
        length_px = abs(np.diff(line.get_xdata())[0])
        assert np.diff(line.get_ydata())[0] == 0
        if wcs:   # pixel scale measured on the drawn WCS: separation of two pixel centres
            w = ax.wcs
            pix = w.pixel_to_world(10, 10).separation(w.pixel_to_world(11, 10)).arcsec
            assert pix == pytest.approx(pix_known, rel=1e-4)
        else:
            pix = pix_known
        assert length_px * pix == pytest.approx(_label_arcsec(label.get_text()), rel=1e-6)


def test_without_sky_wcs_still_plots_in_detector_orientation(tmp_path):
    res = fake_result(rot_deg=180.0, wcs=False)
    fig = display.quicklook_figure(res)
    axes = image_axes(fig)
    assert len(axes) == 2 and not hasattr(axes[0], "wcs")
    assert "no sky WCS" in fig._suptitle.get_text()
    assert not [t for t in axes[0].texts if (t.get_gid() or "").startswith("compass")]
    # drawn as stored: the marker stays where the 180-deg WCS put it (down and right)
    a = np.ma.filled(axes[0].images[0].get_array().astype(float), np.nan)
    cx, cy = centroid(a, value=np.nanmax(a))
    assert cx > (N - 1) / 2 + 5 and cy < (N - 1) / 2 - 5
    assert display.quicklook_png(res, tmp_path / "q.png").stat().st_size > 5000


def test_approximate_wcs_is_said_in_the_title():
    fig = display.quicklook_figure(fake_result(note="approximate: from RA_PNT"))
    assert "approximate" in fig._suptitle.get_text()


def test_without_reproject_the_figure_is_still_north_up(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "reproject", None)      # import reproject -> ImportError
    fig = display.quicklook_figure(fake_result(rot_deg=180.0))
    assert "reproject" not in caplog.text
    assert all(s is not None for s in fig.sky_images)
    with pytest.raises(ImportError):                          # only other orders need it
        display.sky_oriented(np.ones((N, N)), sky_wcs(), order="bilinear")


def test_unresampled_panels_get_a_true_compass():
    from xmm_enhance.display import Panel

    res = fake_result(rot_deg=180.0)
    panel = Panel(res.input_rate, res.input_wcs, "input")
    fig = display.panels_figure([panel], sky_orient=False)
    assert fig.sky_images == [None]
    ax = image_axes(fig)[0]
    arrows = {t.get_gid(): t for t in ax.texts if (t.get_gid() or "").startswith("compass")}
    # sky turned by 180 deg: north points down and east right on the stored grid
    for name, want in (("N", (0.0, -1.0)), ("E", (1.0, 0.0))):
        d = np.subtract(arrows[f"compass-{name}"].xy, arrows[f"compass-{name}"].xyann)
        assert d / np.hypot(*d) == pytest.approx(want, abs=1e-3)


@pytest.mark.parametrize("kind", ["table", "skycoord", "array", "dict"])
def test_sources_are_circled_at_their_sky_position(kind):
    ra, dec = marker_radec()
    ras, decs = [ra, RA0], [dec, DEC0]
    sources = {"table": Table({"RA": ras, "DEC": decs}),
               "skycoord": SkyCoord(ras, decs, unit="deg", frame="fk5"),
               "array": np.column_stack([ras, decs]),
               "dict": {"ra_deg": ras, "dec_deg": decs}}[kind]
    fig = display.quicklook_figure(fake_result(rot_deg=60.0), sources=sources,
                                   source_radius_arcsec=20.0)
    for ax, pix in zip(image_axes(fig), (PIX, PIX / 2)):
        circles = [p for p in ax.patches if p.get_gid() == "source"]
        assert len(circles) == 2
        ny, nx = ax.images[0].get_array().shape
        dx, dy = expected_offset(pix)
        want = [((nx - 1) / 2 + dx, (ny - 1) / 2 + dy), ((nx - 1) / 2, (ny - 1) / 2)]
        for c, (x, y) in zip(circles, want):
            assert c.center == pytest.approx((x, y), abs=0.02)
            assert c.radius == pytest.approx(20.0 / pix)


def test_bad_sources_name_the_argument():
    with pytest.raises(ValueError, match="sources"):
        display.quicklook_figure(fake_result(), sources=Table({"x": [1.0], "y": [2.0]}))
    with pytest.raises(ValueError, match="sources"):
        display.quicklook_figure(fake_result(), sources=np.zeros((2, 3)))


def test_extra_panel_on_the_same_stretch_and_its_own_source_switch():
    res = fake_result(rot_deg=60.0)
    extra = display.Panel(res.prediction * 0.5, res.output_wcs, "diffuse", show_sources=False)
    fig = display.quicklook_figure(res, extra_panels=[extra],
                                   sources=np.array([marker_radec()]))
    axes = image_axes(fig)
    assert [ax.get_title() for ax in axes][-1] == "diffuse"
    assert len(axes) == 3 and len(fig.sky_images) == 3
    assert axes[2].images[0].norm is axes[1].images[0].norm
    assert [sum(p.get_gid() == "source" for p in ax.patches) for ax in axes] == [1, 1, 0]


def test_sr_result_circles_sources_and_crosses_candidates_on_the_diffuse_panel():
    res = fake_result(rot_deg=60.0)
    ra, dec = marker_radec()
    res.extras = {"diffuse": res.prediction * 0.5}
    res.sources = [{"ra": ra, "dec": dec, "y": 10.0, "x": 10.0, "signif": 9.0}]
    # two candidates: one kept, one within MERGE_PX of the listed source (left out)
    res.support = [{"ra": RA0, "dec": DEC0, "y": 40.0, "x": 40.0, "signif": 4.8},
                   {"ra": ra, "dec": dec, "y": 11.0, "x": 10.0, "signif": 4.6}]
    res.released = 0.0
    axes = image_axes(display.quicklook_figure(res))
    assert [sum(p.get_gid() == "source" for p in ax.patches) for ax in axes] == [0, 0, 1]
    # candidates: yellow crosses (a dashed circle a few pixels wide showed no dashes)
    (cross,) = [ln for ln in axes[2].lines if ln.get_gid() == "candidate"]
    assert cross.get_marker() == "x" and cross.get_linestyle() == "None"
    ny, nx = axes[2].images[0].get_array().shape
    assert (cross.get_xdata()[0], cross.get_ydata()[0]) == pytest.approx(
        ((nx - 1) / 2, (ny - 1) / 2), abs=0.02)
    assert axes[2].get_title().endswith("1 point source circled, 1 candidate ×")
    res.released = None  # --no-redraw: POINTS was not trimmed, no candidates drawn
    axes = image_axes(display.quicklook_figure(res))
    assert not [ln for ln in axes[2].lines if ln.get_gid() == "candidate"]
    res.list_signif = 4.0  # the list's threshold (an EnhanceResult has it) is in the title
    axes = image_axes(display.quicklook_figure(res))
    assert axes[2].get_title() == "diffuse component\n1 point source (≥ 4σ) circled"


def test_png_refuses_to_overwrite(tmp_path):
    p = tmp_path / "q.png"
    p.write_bytes(b"x")
    with pytest.raises(OutputError, match="overwrite"):
        display.quicklook_png(fake_result(), p)


def test_png_makes_its_folder_and_refuses_another_suffix(tmp_path):
    """Library use: the folder is made as write_outputs makes it (the error blamed disk
    space or permissions), and 'x.pdf' is refused (PNG bytes were written under it)."""
    out = display.quicklook_png(fake_result(), tmp_path / "a" / "b" / "q.png")
    assert out.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(UsageError, match="x.pdf: the quick look is a PNG"):
        display.quicklook_png(fake_result(), tmp_path / "x.pdf")
    assert not (tmp_path / "x.pdf").exists()


def test_importing_display_imports_no_plotting_or_reproject():
    code = ("import sys, xmm_enhance.display; "
            "bad = [m for m in ('matplotlib', 'reproject') if m in sys.modules]; "
            "sys.exit(1 if bad else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_figsize_is_kept():
    fig = display.quicklook_figure(fake_result(), figsize=(11, 5.2))
    assert tuple(fig.get_size_inches()) == pytest.approx((11, 5.2))


def test_quicklook_png_lets_go_of_the_figures_images(tmp_path, monkeypatch):
    """The figure's images are dropped once the PNG is written (or failed): only Python's
    cyclic collector frees a matplotlib figure, late, and a batch worker held several."""
    drawn = []
    real = display.quicklook_figure

    def spy(res, **kw):
        fig = real(res, **kw)
        drawn.append((fig, [im for ax in fig.axes for im in ax.get_images()]))
        return fig

    monkeypatch.setattr(display, "quicklook_figure", spy)
    out = display.quicklook_png(fake_result(), tmp_path / "q.png")
    from xmm_enhance.batch import png_is_valid
    assert png_is_valid(out) == (True, "")
    fig, images = drawn[-1]
    assert images and all(im.get_array().size == 1 for im in images)
    assert fig.axes == [] and fig.sky_images is None
    # a failed write releases it too
    def full_disk(fig, path, dpi=None):
        raise OutputError(f"{path}: cannot write (No space left on device)")

    monkeypatch.setattr("xmm_enhance.fitsio.atomic_savefig", full_disk)
    with pytest.raises(OutputError):
        display.quicklook_png(fake_result(), tmp_path / "q2.png")
    fig, images = drawn[-1]
    assert fig.axes == [] and all(im.get_array().size == 1 for im in images)


@pytest.mark.parametrize("home, private", [("/dev/null/x", True), ("HOMEDIR", False)])
def test_an_unwritable_home_gives_no_matplotlib_lines(tmp_path, home, private):
    """Under cron HOME may be unset or unwritable: matplotlib then printed two lines to
    stderr in every process that draws (even with -q) and rebuilt its font cache each run.
    The package points MPLCONFIGDIR at a private folder in TMPDIR, kept between runs; a
    working home is left alone."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items()
           if k not in ("MPLCONFIGDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "HOME")}
    env["TMPDIR"] = str(tmp_path / "tmp")
    (tmp_path / "tmp").mkdir()
    if home == "HOMEDIR":
        (tmp_path / "home").mkdir()
        env["HOME"] = str(tmp_path / "home")
    elif home is not None:
        env["HOME"] = home
    code = ("import os; from xmm_enhance.fsmode import prepare_matplotlib; prepare_matplotlib(); "
            "import matplotlib.figure as f; fig = f.Figure(); fig.add_subplot().plot([1, 2]); "
            f"fig.savefig({str(tmp_path / 'x.png')!r}); print(os.environ.get('MPLCONFIGDIR'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=str(Path(__file__).resolve().parents[1]), timeout=120)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    got = out.stdout.strip()
    if private:
        assert got == str(tmp_path / "tmp" / f"xmm_enhance-matplotlib-{os.getuid()}")
    else:
        assert got == "None"


def test_an_unknown_mplbackend_is_dropped_with_a_warning(tmp_path):
    """MPLBACKEND=bogus made matplotlib fail at import: a traceback after the image was
    written. Now one warning, and the figure is drawn."""
    env = dict(os.environ, MPLBACKEND="bogus")
    code = ("import warnings, sys; warnings.simplefilter('always'); "
            "from xmm_enhance.fsmode import prepare_matplotlib; prepare_matplotlib(); "
            "import matplotlib.figure as f; fig = f.Figure(); fig.add_subplot().plot([1, 2]); "
            f"fig.savefig({str(tmp_path / 'x.png')!r})")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "MPLBACKEND='bogus' is not a matplotlib backend; ignored" in out.stderr
    assert (tmp_path / "x.png").read_bytes()[:4] == b"\x89PNG"


def test_the_input_does_not_set_the_colour_scale_and_the_bar_is_labelled_to_its_top():
    """The scale top was the 99.7th percentile of all panels' pixels pooled: on a faint field
    one input count sat at 0.81 of the bar (the input looked like static), and the ticks,
    rounded to one digit, left up to 60 % of the bar unlabelled."""
    res = fake_result()
    res.input_rate = res.input_rate * 0 + res.input_rate.max() * 100   # a far brighter input
    fig = display.quicklook_figure(res)
    axes = image_axes(fig)
    norm = axes[0].images[0].norm
    pred = axes[1].images[0].get_array()
    pred = np.asarray(pred[np.isfinite(pred) & (pred > 0)])
    assert norm.vmax == pytest.approx(np.percentile(pred, display.VMAX_PERCENTILE))
    ticks = display._colour_ticks(norm)
    assert ticks[-1] <= norm.vmax and ticks[-1] >= 0.9 * norm.vmax
    cbar = fig.axes[-1]
    assert cbar.get_ylabel().endswith("asinh stretch")


def png_size(path):
    """(width, height) in pixels, from a PNG's IHDR chunk."""
    raw = Path(path).read_bytes()[:24]
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and raw[12:16] == b"IHDR"
    return int.from_bytes(raw[16:20], "big"), int.from_bytes(raw[20:24], "big")


@pytest.mark.parametrize("scale, dpi", [(2, 220), (1, 110)])
def test_written_png_has_the_dpi_of_its_models_scale(tmp_path, scale, dpi):
    res = fake_result()
    res.model.scale = scale
    fig = display.quicklook_figure(res)
    width_in, height_in = fig.get_size_inches()
    display.release_figure(fig)
    w, h = png_size(display.quicklook_png(res, tmp_path / "q.png"))
    assert abs(w - round(width_in * dpi)) <= 2 and abs(h - round(height_in * dpi)) <= 2, (
        (w, h), (width_in, height_in))


def test_shared_colour_scale_tops_out_at_the_99p9_percentile_of_surface_brightness():
    from xmm_enhance.display import Panel

    assert display.VMAX_PERCENTILE == 99.9
    rate = np.arange(1, 10001, dtype=float).reshape(100, 100)
    rate[0, :5] = [0.0, -3.0, np.nan, np.inf, 0.0]       # not positive and finite: left out
    pix = 4.0
    fig = display.panels_figure([Panel(rate, None, "pred", pixel_arcsec=pix)])
    try:
        norm = image_axes(fig)[0].images[0].norm
        kept = rate[np.isfinite(rate) & (rate > 0)]
        assert kept.size == 9995
        want = np.percentile(kept * (3600.0 / pix ** 2), 99.9)
        assert norm.vmax == pytest.approx(want, rel=1e-12)
        assert norm.vmin == 0.0
    finally:
        display.release_figure(fig)


# ------------------------------------------------------------------ the uncertainty panel
def with_percentiles(res, lo_factor=0.5, hi_factor=2.0):
    """``res`` with LO68 = lo_factor x rate and HI68 = hi_factor x rate (relative half-width
    (hi_factor - lo_factor) / 2), and one pixel of rate 0 with an open interval."""
    pred = res.prediction.astype(np.float64)
    lo, hi = lo_factor * pred, hi_factor * pred
    pred[5, 70] = 0.0
    lo[5, 70], hi[5, 70] = 0.0, 1.0
    res.prediction = pred.astype(np.float32)
    res.extras = {"lo68": lo.astype(np.float32), "hi68": hi.astype(np.float32)}
    return res


def test_relative_uncertainty_is_half_the_interval_over_the_rate():
    pred = np.array([[2.0, 0.0, 0.0, 4.0]])
    lo = np.array([[1.0, 0.0, 0.0, 3.0]])
    hi = np.array([[5.0, 3.0, 0.0, 5.0]])
    keep = np.array([[True, True, True, False]])
    rel = display.relative_uncertainty(pred, lo, hi, keep)
    assert rel[0, 0] == pytest.approx(1.0)          # (5 - 1) / 2 / 2
    assert rel[0, 1] == np.inf                      # nothing predicted, interval open
    assert rel[0, 2] == 0.0                         # nothing predicted, interval closed
    assert np.isnan(rel[0, 3])                      # no data


def test_uncertainty_panel_has_its_own_log_scale_and_blackens_empty_sky():
    res = with_percentiles(fake_result(rot_deg=60.0))
    # 1 count within 10" at 20 ks on 2" pixels: rate 1 / (20e3 * pi * 25) per pixel
    floor = 1.0 / (20e3 * math.pi * 25.0)
    res.prediction[:, :10] = 0.5 * floor                   # empty sky: black
    res.extras["lo68"][:, :10] = 0.25 * floor
    res.extras["hi68"][:, :10] = floor
    res.prediction[:, 10:20] = 2.0 * floor                 # just measurable: shown
    res.extras["lo68"][:, 10:20] = 1.0 * floor
    res.extras["hi68"][:, 10:20] = 4.0 * floor
    panel = display.quicklook_panels(res)[-1]
    assert panel.own_scale is not None and not panel.sets_scale and not panel.show_sources
    v = panel.rate
    assert np.all(v[:, :10] < panel.own_scale.norm.vmin)   # drawn in the "under" colour
    assert panel.own_scale.under == "black"
    assert v[30, 15] == pytest.approx(math.log10(0.75), abs=1e-6)   # (4 - 1) / 2 / 2
    assert v[60, 60] == pytest.approx(math.log10(0.75), abs=1e-6)   # (2 - 0.5) / 2
    # a rate of 0 predicts no counts: empty sky, whatever its interval
    assert v[5, 70] < panel.own_scale.norm.vmin
    # more than 300 % sits above the top, marked by the bar's arrow
    res.extras["hi68"][40:50, 40:50] = 20.0 * res.prediction[40:50, 40:50]
    assert np.all(display.quicklook_panels(res)[-1].rate[40:50, 40:50]
                  > panel.own_scale.norm.vmax)
    assert panel.own_scale.extend == "max"
    # the scale's ends: 0.5 % is drawn at 1 % (not black), 200 % as it is
    res.prediction[30:40, 30:40] = 1.0
    res.extras["lo68"][30:40, 30:40], res.extras["hi68"][30:40, 30:40] = 0.995, 1.005
    res.extras["lo68"][50:55, 50:55], res.extras["hi68"][50:55, 50:55] = 0.0, 4.0
    res.prediction[50:55, 50:55] = 1.0
    v = display.uncertainty_panel(res).rate
    assert v[35, 35] == pytest.approx(math.log10(0.01))
    assert v[52, 52] == pytest.approx(math.log10(2.0))
    assert 10 ** panel.own_scale.norm.vmin == pytest.approx(0.01)
    assert 10 ** panel.own_scale.norm.vmax == pytest.approx(3.0)
    assert 10 ** panel.own_scale.norm.vmin == pytest.approx(display.UNCERTAINTY_RANGE[0])
    assert 10 ** panel.own_scale.norm.vmax == pytest.approx(display.UNCERTAINTY_RANGE[1])
    assert "black" in panel.label
    # DN's rate holds the background: no sky of its is empty, nothing is black
    res.task = "DN"
    dn = display.uncertainty_panel(res)
    assert np.nanmin(dn.rate) >= dn.own_scale.norm.vmin and "black" not in dn.label
    res.task = "SR"
    res.output_keep = np.zeros(res.prediction.shape, bool)
    assert np.all(np.isnan(display.quicklook_panels(res)[-1].rate))   # no data: grey


def test_uncertainty_panel_sits_right_of_the_shared_bar_with_its_own():
    res = with_percentiles(fake_result(rot_deg=60.0))
    extra = display.Panel(res.prediction * 0.5, res.output_wcs, "extra", show_sources=False)
    fig = display.quicklook_figure(res, extra_panels=[extra])
    axes = image_axes(fig)
    assert [ax.get_title().split(",")[0] for ax in axes][-2:] == ["extra", "SR uncertainty"]
    shared = axes[1].images[0].norm
    assert axes[2].images[0].norm is shared                  # extra panels share the scale
    assert axes[3].images[0].norm is not shared
    bars = [ax for ax in fig.axes if ax not in axes]
    assert len(bars) == 2
    boxes = sorted((ax.get_position().x0, ax.get_position().x1) for ax in fig.axes)
    for (a0, a1), (b0, b1) in zip(boxes, boxes[1:]):        # left to right, no overlap
        assert a1 <= b0 + 1e-9
    # order: shared panels, their bar, the uncertainty panel, its bar
    x0 = {id(ax): ax.get_position().x0 for ax in fig.axes}
    assert x0[id(axes[2])] < min(x0[id(b)] for b in bars) < x0[id(axes[3])] < max(
        x0[id(b)] for b in bars)
    assert len(fig.sky_images) == 4
    # the uncertainty panel as drawn: log10 values on its own bar, labelled in per cent, black
    # below, nothing cut at the figure's edge
    right_bar = max(bars, key=lambda b: b.get_position().x0)
    assert [t.get_text() for t in right_bar.get_yticklabels()] == [
        "≤ 1 %", "3 %", "10 %", "30 %", "100 %", "300 %"]
    assert tuple(axes[3].images[0].get_cmap().get_under()) == (0.0, 0.0, 0.0, 1.0)
    assert np.nanmax(axes[3].images[0].get_array()) <= math.log10(30.0)
    assert max(ax.get_position().x1 for ax in fig.axes) <= 1.0
    display.release_figure(fig)


def test_no_percentile_maps_no_uncertainty_panel():
    res = fake_result()
    res.extras = {"lo68": None, "hi68": None}
    assert display.uncertainty_panel(res) is None
    assert len(image_axes(display.quicklook_figure(res))) == 2


# ------------------------------------------------------------------ --display (a GUI window)
FAKE_GUI_BACKEND = '''
from matplotlib.backend_bases import FigureCanvasBase, FigureManagerBase

SHOWN = []


class Window:
    def winfo_screenwidth(self):          # as Tk answers
        return 1366


class FigureManagerFake(FigureManagerBase):
    def __init__(self, canvas, num):
        super().__init__(canvas, num)
        self.window = Window()
        # the window is made at its first figure's size, as a GUI toolkit does
        self.window_px = tuple(canvas.get_width_height())
        self.resized = []

    def resize(self, w, h):
        self.window_px = (w, h)

    @classmethod
    def pyplot_show(cls, *, block=None):
        from matplotlib._pylab_helpers import Gcf
        for m in Gcf.get_all_fig_managers():
            SHOWN.append((m.canvas.figure, m.window_px))


class FigureCanvasFake(FigureCanvasBase):
    manager_class = FigureManagerFake


FigureCanvas = FigureCanvasFake
FigureManager = FigureManagerFake
'''

SHOW_SCRIPT = '''
import sys
sys.path.insert(0, sys.argv[1])
import fakegui
from test_display import fake_result, image_axes, with_percentiles
from xmm_enhance import display

res = with_percentiles(fake_result(rot_deg=60.0))
built = display.quicklook_figure(res)
width_in, height_in = built.get_size_inches()
display.show(res)
assert len(fakegui.SHOWN) == 1, fakegui.SHOWN
fig, (wpx, hpx) = fakegui.SHOWN[0]
assert fig is not built and len(image_axes(fig)) == 3      # input, SR, uncertainty
# the figure keeps its size in inches; it is shown at a lower dpi that fits the screen
assert tuple(fig.get_size_inches()) == (width_in, height_in), fig.get_size_inches()
assert width_in * 100 > 1366 and fig.dpi < 100
assert abs(fig.dpi - 0.95 * 1366 / width_in) < 1e-9
# ... in a window of its size in pixels
assert abs(wpx - width_in * fig.dpi) <= 1 and abs(hpx - height_in * fig.dpi) <= 1, (wpx, hpx)
# a HiDPI canvas (Qt sets its pixel ratio when it shows) keeps the shrink: dpi = ratio x own
fit = fig.dpi
fig.canvas._set_device_pixel_ratio(2)
assert abs(fig.dpi - 2 * fit) < 1e-9, fig.dpi
print("ok")
'''


def test_display_window_holds_the_figure_at_its_size_shrunk_to_the_screen(tmp_path):
    (tmp_path / "fakegui.py").write_text(FAKE_GUI_BACKEND)
    script = tmp_path / "show.py"
    script.write_text(SHOW_SCRIPT)
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, MPLBACKEND="module://fakegui",
               PYTHONPATH=os.pathsep.join([str(tmp_path), str(repo)]))
    run = subprocess.run([sys.executable, str(script), str(Path(__file__).parent)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-3000:]


def test_screen_width_from_tk_or_qt_and_none_without_one():
    tk = SimpleNamespace(window=SimpleNamespace(winfo_screenwidth=lambda: 1366))
    geometry = SimpleNamespace(width=lambda: 1920, height=lambda: 1080)
    qt = SimpleNamespace(window=SimpleNamespace(
        screen=lambda: SimpleNamespace(availableGeometry=lambda: geometry)))
    assert display._screen_width_px(tk) == 1366
    assert display._screen_width_px(qt) == 1920
    no_display = SimpleNamespace(window=SimpleNamespace(winfo_screenwidth=lambda: 0))
    assert display._screen_width_px(no_display) is None
    assert display._screen_width_px(SimpleNamespace(window=None)) is None
