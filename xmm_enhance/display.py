"""Quick-look figures: input and prediction side by side (PNG files or a window).

Each panel with a sky WCS is resampled to north up, east left (:func:`sky_oriented`,
nearest-neighbour) for the figure only; the FITS outputs keep their detector-oriented grid. Panels
carry RA/Dec axes, a N/E compass, a scale bar in arcsec and optional source circles; the colour
bar names its stretch and the title the OBS_ID.

matplotlib (and reproject, for resampling orders other than nearest-neighbour) is imported
inside the functions that draw, so the commands import it only when a figure is asked for;
PNGs are written with the Agg backend so they work headless (cron, CI).

Pixel conventions: arrays are ``[y, x]`` with 0-based pixel centres; FITS ``CRPIX`` is 1-based.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import OutputError, UsageError

__all__ = ["STRETCHES", "SkyImage", "Panel", "OwnScale", "north_up_wcs", "sky_oriented",
           "pixel_scale_arcsec", "panels_figure", "quicklook_panels", "uncertainty_panel",
           "relative_uncertainty", "quicklook_figure",
           "quicklook_png", "release_figure", "show"]

log = logging.getLogger(__name__)

#: Colour stretches by the name shown on the colour bar.
STRETCHES = ("linear", "sqrt", "asinh", "log")
DEFAULT_STRETCH = "asinh"
#: Scale-bar lengths to choose from (arcsec); the one nearest 1/7 of the panel width is used.
_SCALE_BARS = (10, 20, 30, 60, 120, 180, 300, 600, 900, 1200, 1800, 3600)
_NAN_COLOUR = "0.35"  # axes background: outside the image or masked (no data)


# --------------------------------------------------------------------------- geometry (no plots)
@dataclass
class SkyImage:
    """An image resampled to north up, east left.

    Attributes
    ----------
    data : ndarray, float64 [ny, nx]
        Resampled values, NaN outside the input image (and where the input was NaN).
    wcs : astropy.wcs.WCS
        TAN WCS of ``data``: ``CD1_1 < 0``, ``CD2_2 > 0``, no rotation, the input's pixel
        scale, the input's centre at the centre of ``data``.
    footprint : ndarray, float64 [ny, nx]
        1 where ``data`` comes from the input grid, 0 outside it.
    """

    data: np.ndarray
    wcs: object
    footprint: np.ndarray


def pixel_scale_arcsec(wcs) -> float:
    """Pixel size (arcsec) of a celestial WCS: the square root of the pixel area."""
    from astropy.wcs.utils import proj_plane_pixel_area

    return math.sqrt(proj_plane_pixel_area(wcs.celestial)) * 3600.0


def _tan_ctype(ctype: str) -> str:
    name = ctype.split("-")[0]            # RA, DEC, GLON, ELAT, ...
    return name.ljust(4, "-") + "-TAN"


def north_up_wcs(wcs, shape):
    """TAN WCS (north up, east left) holding the whole of an image of ``shape`` under ``wcs``.

    Parameters
    ----------
    wcs : astropy.wcs.WCS
        Celestial WCS of the input image (any rotation or flip).
    shape : tuple of int
        ``(ny, nx)`` of the input image.

    Returns
    -------
    wcs_out : astropy.wcs.WCS
        ``CD = diag(-s, s)`` with ``s`` the input pixel size, the same frame (``RADESYS``,
        ``EQUINOX``) as ``wcs``, ``CRVAL`` = sky position of the input centre, at the centre of
        the output grid.
    shape_out : tuple of int
        ``(ny, nx)`` large enough for the rotated input. Each side has the parity of the input
        side it is most aligned with, so that rotations by multiples of 90 deg and flips map
        pixel centres onto pixel centres (exact for nearest-neighbour resampling).
    """
    from astropy.wcs import WCS

    w = wcs.celestial
    if not w.has_celestial or w.naxis != 2:
        raise ValueError(f"wcs: not a 2-d celestial WCS ({w.wcs.ctype}); pass an RA/Dec WCS")
    ny, nx = (int(n) for n in shape)
    s = pixel_scale_arcsec(w) / 3600.0
    centre = w.all_pix2world([[(nx - 1) / 2.0, (ny - 1) / 2.0]], 0)[0]

    out = WCS(naxis=2)
    out.wcs.ctype = [_tan_ctype(c) for c in w.wcs.ctype]
    out.wcs.cunit = ["deg", "deg"]
    out.wcs.crval = [float(centre[0]), float(centre[1])]
    out.wcs.cd = np.array([[-s, 0.0], [0.0, s]])
    out.wcs.crpix = [1.0, 1.0]            # provisional: 0-based pixel (0, 0) at the centre
    if w.wcs.radesys:
        out.wcs.radesys = w.wcs.radesys
    if np.isfinite(w.wcs.equinox):
        out.wcs.equinox = w.wcs.equinox

    # The input's outline (pixel edges, 9 points a side) in provisional output pixels.
    u = np.linspace(0.0, 1.0, 9)
    ex, ey = nx - 0.5, ny - 0.5
    xs = np.concatenate([-0.5 + u * nx, np.full(9, ex), ex - u * nx, np.full(9, -0.5)])
    ys = np.concatenate([np.full(9, -0.5), -0.5 + u * ny, np.full(9, ey), ey - u * ny])
    lon, lat = w.all_pix2world(xs, ys, 0)
    ox, oy = out.all_world2pix(lon, lat, 0)
    half = (np.max(np.abs(oy)), np.max(np.abs(ox)))

    # d(input pixel)/d(output pixel) at the centre: which input axis each output axis follows.
    lon1, lat1 = out.all_pix2world([0.0, 1.0, 0.0], [0.0, 0.0, 1.0], 0)
    ix, iy = w.all_world2pix(lon1, lat1, 0)
    jac = np.array([[ix[1] - ix[0], ix[2] - ix[0]], [iy[1] - iy[0], iy[2] - iy[0]]])
    n_in = (nx, ny)                        # input sizes by input axis (x, y)
    shape_out = []
    for k in (1, 0):                        # output y (column 1 of jac), then output x
        n = max(1, math.ceil(2.0 * half[1 - k] - 1e-6))
        aligned = n_in[int(np.argmax(np.abs(jac[:, k])))]
        if (n - aligned) % 2:
            n += 1
        shape_out.append(n)
    ny_out, nx_out = shape_out
    out.wcs.crpix = [(nx_out + 1) / 2.0, (ny_out + 1) / 2.0]
    out.pixel_shape = (nx_out, ny_out)
    return out, (ny_out, nx_out)


#: Step (output pixels) of the grid on which :func:`sky_oriented` evaluates the exact WCS
#: transform; between its nodes the input pixel coordinates are interpolated bilinearly.
#: Two TAN projections of a pn field differ from an affine map by far less than a pixel over
#: 16 pixels: the interpolation error is < 1e-6 pixel (test_display checks it).
MAP_STEP = 16


def _axis_weights(n: int, nodes: np.ndarray):
    """For pixels 0..n-1: the index of the node at or below each and the weight of the next."""
    x = np.arange(n, dtype=np.float64)
    i = np.clip(np.searchsorted(nodes, x, side="right") - 1, 0, len(nodes) - 2)
    return i, (x - nodes[i]) / (nodes[i + 1] - nodes[i])


def _interp_grid(values: np.ndarray, iy, wy, ix, wx) -> np.ndarray:
    """Bilinear interpolation of ``values`` [node y, node x] to every pixel (separable)."""
    col = values[iy] * (1.0 - wy)[:, None] + values[iy + 1] * wy[:, None]   # [ny, node x]
    return col[:, ix] * (1.0 - wx) + col[:, ix + 1] * wx


def input_pixels(wcs_in, wcs_out, shape_out, step: int = MAP_STEP):
    """Input pixel coordinates (x, y), 0-based, of every pixel of a ``shape_out`` grid on
    ``wcs_out``: the exact transform (pixel -> world -> pixel) on a grid of nodes ``step``
    pixels apart (and the last row and column), bilinear in between.

    Returns
    -------
    x, y : ndarray, float64 [ny_out, nx_out]
    """
    ny, nx = (int(n) for n in shape_out)
    ny_nodes = np.unique(np.r_[np.arange(0, ny, step), ny - 1]).astype(np.float64)
    nx_nodes = np.unique(np.r_[np.arange(0, nx, step), nx - 1]).astype(np.float64)
    gx, gy = np.meshgrid(nx_nodes, ny_nodes)
    lon, lat = wcs_out.celestial.all_pix2world(gx, gy, 0)
    x_in, y_in = wcs_in.celestial.all_world2pix(lon, lat, 0)
    if len(ny_nodes) == 1 or len(nx_nodes) == 1:  # a one-pixel-wide grid: evaluate it all
        px, py = np.meshgrid(np.arange(nx, dtype=float), np.arange(ny, dtype=float))
        return wcs_in.celestial.all_world2pix(*wcs_out.celestial.all_pix2world(px, py, 0), 0)
    iy, wy = _axis_weights(ny, ny_nodes)
    ix, wx = _axis_weights(nx, nx_nodes)
    return _interp_grid(x_in, iy, wy, ix, wx), _interp_grid(y_in, iy, wy, ix, wx)


def sky_oriented(data, wcs, *, order: str = "nearest-neighbor") -> SkyImage:
    """Resample ``data`` (on ``wcs``) to north up, east left, at the same pixel scale.

    Parameters
    ----------
    data : array_like [ny, nx]
        Image values (counts, rates or surface brightness); NaN marks no data.
    wcs : astropy.wcs.WCS
        Celestial WCS of ``data``.
    order : str
        Interpolation. The default, ``"nearest-neighbor"``, shows the values that are in the
        image (no smoothing of Poisson counts; a rotation by a multiple of 90 deg or a flip is
        an exact permutation) and keeps surface brightness, as the pixel size is unchanged. It
        is done here (:func:`input_pixels`; ~15 ms for an 832 x 832 SR panel, against ~0.33 s
        with ``reproject_interp``, which transforms every pixel exactly). Any other order
        (``"bilinear"``, ...) is passed to ``reproject_interp`` and needs ``reproject``.

    Returns
    -------
    SkyImage
        Pixels whose centre falls outside the input grid are NaN (footprint 0), as with
        ``reproject_interp``.
    """
    data = np.asarray(data, dtype=np.float64)
    if data.ndim != 2:
        raise ValueError(f"data: expected a 2-d image, got shape {data.shape}")
    wcs_out, shape_out = north_up_wcs(wcs, data.shape)
    if order not in ("nearest-neighbor", 0):
        from reproject import reproject_interp

        # roundtrip_coords=False: a 20' field has no pixel on the far side of the sky, and the
        # round-trip check doubles the time of the resampling.
        out, foot = reproject_interp((data, wcs.celestial), wcs_out, shape_out=shape_out,
                                     order=order, roundtrip_coords=False)
        return SkyImage(data=out, wcs=wcs_out, footprint=foot)
    x, y = input_pixels(wcs, wcs_out, shape_out)
    ny, nx = data.shape
    inside = (x >= -0.5) & (x <= nx - 0.5) & (y >= -0.5) & (y <= ny - 0.5)
    ix = np.clip(np.floor(x + 0.5), 0, nx - 1).astype(np.intp)
    iy = np.clip(np.floor(y + 0.5), 0, ny - 1).astype(np.intp)
    out = np.where(inside, data[iy, ix], np.nan)
    return SkyImage(data=out, wcs=wcs_out, footprint=np.isfinite(out).astype(np.float64))


def _source_pixels(sources, wcs):
    """(x, y) 0-based pixel positions on ``wcs`` of ``sources`` (see :func:`panels_figure`)."""
    from astropy.coordinates import SkyCoord

    if isinstance(sources, SkyCoord):
        x, y = wcs.world_to_pixel(sources)
        return np.atleast_1d(x), np.atleast_1d(y)
    names = (getattr(sources, "colnames", None)
             or getattr(getattr(sources, "dtype", None), "names", None)
             or (list(sources.keys()) if hasattr(sources, "keys") else None))
    if names is not None:
        lower = {n.lower(): n for n in names}
        cols = []
        for want in (("ra", "ra_deg", "raj2000"), ("dec", "dec_deg", "dej2000")):
            hit = next((lower[n] for n in want if n in lower), None)
            if hit is None:
                raise ValueError(f"sources: no {want[0].upper()} column among {names}; "
                                 "pass columns named 'ra' and 'dec' (deg)")
            col = sources[hit]
            cols.append(np.asarray(col.to_value("deg") if hasattr(col, "to_value") else col,
                                   dtype=np.float64))
        ra, dec = cols
    else:
        arr = np.asarray(sources, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != 2:
            raise ValueError(f"sources: expected a table with ra/dec columns, a SkyCoord or an "
                             f"(N, 2) array of (RA, Dec) in deg; got shape {arr.shape}")
        ra, dec = arr[:, 0], arr[:, 1]
    x, y = wcs.celestial.all_world2pix(ra, dec, 0)
    return np.atleast_1d(x), np.atleast_1d(y)


# --------------------------------------------------------------------------- figures
@dataclass
class Panel:
    """One image of a quick-look figure.

    Attributes
    ----------
    rate : ndarray [ny, nx]
        count/s/pixel; NaN where there is no data (drawn in the background colour).
    wcs : astropy.wcs.WCS or None
        Celestial WCS of ``rate``; None draws it in pixel coordinates, detector orientation.
    label : str
        Panel title.
    pixel_arcsec : float or None
        Pixel size; taken from ``wcs`` when None (needed when ``wcs`` is None).
    show_sources : bool
        Draw the figure's ``sources`` circles on this panel.
    sets_scale : bool
        Whether its pixels set the shared colour scale (:func:`_norm`); the quick look's input
        does not: its single counts would set the scale of a faint field.
    own_scale : OwnScale or None
        A colour scale of its own (``rate`` is then drawn as it is, not as surface
        brightness): the panel goes right of the shared colour bar, with its own bar.
    """

    rate: np.ndarray
    wcs: object
    label: str
    pixel_arcsec: float | None = None
    show_sources: bool = True
    sets_scale: bool = True
    own_scale: "OwnScale | None" = None

    def pixel_size(self) -> float:
        if self.pixel_arcsec is not None:
            return float(self.pixel_arcsec)
        if self.wcs is None:
            raise ValueError(f"panel {self.label!r}: pixel_arcsec is needed without a WCS")
        return pixel_scale_arcsec(self.wcs)


@dataclass
class OwnScale:
    """The colour scale of a :class:`Panel` that does not share the figure's.

    Attributes
    ----------
    norm : matplotlib.colors.Normalize
    label : str
        Colour-bar label.
    cmap : str
        matplotlib colour map (one other than the shared scale's, so the two do not read alike).
    ticks, ticklabels : sequence, optional
        Colour-bar ticks and their labels.
    extend : {'neither', 'min', 'max', 'both'}
        Arrows on the colour bar for pixels beyond its ends.
    under : str or None
        Colour of the pixels below the scale (default: the colour map's own).
    """

    norm: object
    label: str
    cmap: str = "viridis"
    ticks: tuple | None = None
    ticklabels: tuple | None = None
    extend: str = "both"
    under: str | None = None


def _surface_brightness(rate, pixel_arcsec):
    """count/s/pixel -> count/s/arcmin^2, so grids of different pixel size share one stretch."""
    return np.asarray(rate, dtype=np.float64) * (3600.0 / pixel_arcsec ** 2)


#: Percentile of the scale panels' positive pixels that tops the colour scale (brighter
#: pixels are drawn at the top colour; the colour bar's arrow says so).
VMAX_PERCENTILE = 99.9


def _norm(images, stretch):
    """The shared colour scale: 0 to the :data:`VMAX_PERCENTILE` of the positive pixels of
    ``images`` (the panels that set the scale: a figure's predictions, whose pixels are
    the image's own, not the input's Poisson noise)."""
    from astropy.visualization import (AsinhStretch, ImageNormalize, LinearStretch, LogStretch,
                                       SqrtStretch)

    kinds = {"linear": LinearStretch, "sqrt": SqrtStretch, "asinh": lambda: AsinhStretch(0.05),
             "log": lambda: LogStretch(1000.0)}
    if stretch not in kinds:
        raise ValueError(f"stretch: {stretch!r} is not one of {', '.join(STRETCHES)}")
    pos = np.concatenate([im[np.isfinite(im) & (im > 0)].ravel() for im in images])
    vmax = float(np.percentile(pos, VMAX_PERCENTILE)) if pos.size else 1.0
    return ImageNormalize(vmin=0.0, vmax=max(vmax, 1e-12), stretch=kinds[stretch]())


def _colour_ticks(norm, n=6):
    """Ticks evenly spaced in the stretched scale, rounded to two significant digits (the top
    one down, so that it stays on the bar: the bar is labelled up to its top)."""
    vals = np.atleast_1d(norm.inverse(np.linspace(0.0, 1.0, n)))
    out = [0.0]
    for v in vals[1:]:
        r = float(f"{v:.2g}")
        if r > norm.vmax * 1.0001:      # rounded up past the top: the next value down
            e = math.floor(math.log10(v)) - 1
            r = math.floor(v / 10 ** e) * 10 ** e
        if r > out[-1]:
            out.append(r)
    return out


def _nice_bar_arcsec(width_arcsec: float) -> float:
    want = width_arcsec / 7.0
    return float(min(_SCALE_BARS, key=lambda v: abs(math.log(v / want))))


def _arcsec_label(arcsec: float) -> str:
    if arcsec >= 60 and arcsec % 60 == 0:
        return f"{arcsec / 60:.0f}'"
    return f'{arcsec:.0f}"'


def _scale_bar(ax, pixel_arcsec, shape, arcsec=None):
    """Bar of ``arcsec`` (default: a round value near 1/7 of the width) at the bottom right."""
    ny, nx = shape
    arcsec = arcsec or _nice_bar_arcsec(nx * pixel_arcsec)
    n = arcsec / pixel_arcsec
    y = 0.06 * ny
    x0 = nx - 0.06 * nx - n
    (line,) = ax.plot([x0, x0 + n], [y, y], color="white", lw=2.5, solid_capstyle="butt")
    line.set_gid("scalebar")
    txt = ax.text(x0 + n / 2, y + 0.02 * ny, _arcsec_label(arcsec), color="white",
                  ha="center", va="bottom", fontsize=9)
    txt.set_gid("scalebar-label")
    return line, txt


def _compass(ax, wcs, shape):
    """N and E arrows at the bottom left, directions from ``wcs`` at that point."""
    ny, nx = shape
    length = 0.12 * min(nx, ny)
    x0, y0 = 0.06 * nx + length, 0.06 * ny
    w = wcs.celestial
    lon, lat = w.all_pix2world([[x0, y0]], 0)[0]
    step = pixel_scale_arcsec(w) / 3600.0
    ends = w.all_world2pix([[lon, lat + step],
                            [lon + step / max(math.cos(math.radians(lat)), 1e-6), lat]], 0)
    for (x1, y1), name in zip(ends, "NE"):
        d = np.array([x1 - x0, y1 - y0])
        d *= length / np.hypot(*d)
        arrow = ax.annotate("", xy=(x0 + d[0], y0 + d[1]), xytext=(x0, y0),
                            xycoords="data", textcoords="data",
                            arrowprops=dict(arrowstyle="->", color="white", lw=1.5,
                                            shrinkA=0, shrinkB=0))
        arrow.set_gid(f"compass-{name}")
        ax.text(x0 + 1.25 * d[0], y0 + 1.25 * d[1], name, color="white", ha="center",
                va="center", fontsize=9, gid=f"compass-{name}-label")


def _source_circles(ax, sources, wcs, pixel_arcsec, radius_arcsec, *, candidates=False):
    """Cyan circles of ``radius_arcsec`` round the sources; candidates as yellow crosses (a
    dashed circle a few pixels wide shows no dashes, and hides the emission it marks)."""
    from matplotlib.patches import Circle

    x, y = _source_pixels(sources, wcs)
    if candidates:
        if len(x):
            ax.plot(x, y, linestyle="none", marker="x", markersize=7, markeredgewidth=1.5,
                    color="yellow", gid="candidate")
        return
    r = radius_arcsec / pixel_arcsec
    for xi, yi in zip(x, y):
        ax.add_patch(Circle((xi, yi), r, fill=False, lw=1.2, edgecolor="cyan", gid="source"))


def panels_figure(panels, *, title: str = "", stretch: str = DEFAULT_STRETCH, sources=None,
                  source_radius_arcsec: float = 12.0, sky_orient: bool = True,
                  panel_inches: float = 4.2, figsize=None, candidates=None, dpi=None):
    """Figure of ``panels`` side by side on one colour scale, sky panels north up/east left.

    Parameters
    ----------
    panels : sequence of Panel
        Drawn left to right in surface brightness (count/s/arcmin^2), one shared stretch;
        then those with a scale of their own (``Panel.own_scale``), each with its colour bar.
    title : str
        Figure title.
    stretch : {'asinh', 'sqrt', 'log', 'linear'}
        Colour stretch from 0 to the :data:`VMAX_PERCENTILE` of the positive pixels of the
        panels that set the scale (``Panel.sets_scale``); named on the colour bar, whose arrow
        marks the brighter pixels drawn at its top colour.
    sources : astropy Table, dict of arrays, SkyCoord or (N, 2) array, optional
        Sources to circle: columns ``ra``/``dec`` (deg; also ``ra_deg``, ``RAJ2000``, ...), a
        SkyCoord, or rows of (RA, Dec) in deg, in the frame of the panels' WCS. Drawn on the
        panels that have a WCS and ``show_sources``.
    source_radius_arcsec : float
        Circle radius.
    candidates : same types as ``sources``, optional
        Drawn as yellow crosses on the same panels (the SR result's unlisted candidates whose
        points ``POINTS`` keeps).
    sky_orient : bool
        Resample panels with a WCS to north up, east left (:func:`sky_oriented`); False draws
        them as they are stored, and the compass then shows their orientation.
    panel_inches : float
        Side of each (square) panel.
    figsize : (float, float), optional
        Figure size in inches; the panels are sized to fit it (overrides ``panel_inches``).
    dpi : float, optional
        The figure's dpi (default matplotlib's): a window shows it at this many pixels per inch.

    Returns
    -------
    matplotlib.figure.Figure
        ``fig.sky_images`` lists, per panel in the order drawn (left to right), the
        :class:`SkyImage` drawn (None for panels drawn unresampled).
    """
    from .fsmode import prepare_matplotlib

    prepare_matplotlib()
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    if not panels:
        raise ValueError("panels: nothing to draw")
    # the panels on the shared scale first, then those with their own, each with its bar
    panels = ([p for p in panels if p.own_scale is None]
              + [p for p in panels if p.own_scale is not None])
    drawn = []                              # (image, wcs or None, pixel, SkyImage)
    for p in panels:
        pix = p.pixel_size()
        img = (_surface_brightness(p.rate, pix) if p.own_scale is None
               else np.asarray(p.rate, dtype=np.float64))
        sky = None
        if p.wcs is not None and sky_orient:
            sky = sky_oriented(img, p.wcs)
        if sky is not None:
            drawn.append((sky.data, sky.wcs, pixel_scale_arcsec(sky.wcs), sky))
        else:
            drawn.append((img, p.wcs.celestial if p.wcs is not None else None, pix, None))
    shared = [d[0] for d, p in zip(drawn, panels) if p.own_scale is None]
    n_shared = len(shared)
    norm = None
    if n_shared:
        scale = [d[0] for d, p in zip(drawn, panels)
                 if p.own_scale is None and p.sets_scale] or shared
        norm = _norm(scale, stretch)

    # Fixed axes positions (inches -> figure fractions): a constrained layout costs a second
    # full draw (~0.4 s per PNG). Each colour bar (the shared one after the shared panels,
    # then one after each panel with its own scale) takes cb_gap + cb_w + bar_room.
    n = len(panels)
    n_bars = (n_shared > 0) + (n - n_shared)
    # the top margin holds the figure title's lines and two lines of panel titles
    n_title = title.count("\n") + 1 if title else 0
    left, gap, cb_gap, cb_w, bar_room, bottom = 0.95, 0.3, 0.2, 0.14, 1.05, 0.65
    top = 0.5 + 0.2 * n_title
    fixed_w = left + max(n_shared - 1, 0) * gap + n_bars * (cb_gap + cb_w + bar_room)
    if figsize is not None:
        panel_inches = max(0.5, min((figsize[0] - fixed_w) / n, figsize[1] - bottom - top))
    width = fixed_w + n * panel_inches
    height = bottom + panel_inches + top
    if figsize is not None:             # spare room goes evenly to the margins
        left += (figsize[0] - width) / 2
        bottom += (figsize[1] - height) / 2
        width, height = figsize
    fig = Figure(figsize=(width, height), dpi=dpi)
    fig.suptitle(title, fontsize=11)

    def bar(x, image, label, ticks, extend, ticklabels=None):
        cax = fig.add_axes([x / width, (bottom + 0.3) / height, cb_w / width,
                            (panel_inches - 0.6) / height])
        cb = fig.colorbar(image, cax=cax, ticks=ticks, extend=extend)
        if ticklabels is not None:
            cb.set_ticklabels(list(ticklabels))
        cb.set_label(label)
        return cb

    x = left
    for k, ((img, wcs, pix, _), p) in enumerate(zip(drawn, panels)):
        box = [x / width, bottom / height, panel_inches / width, panel_inches / height]
        if wcs is not None:
            ax = fig.add_axes(box, projection=wcs)
            ax.coords[0].set_axislabel("RA")
            ax.coords[1].set_axislabel("Dec" if k == 0 else " ")
            ax.coords[1].set_ticklabel_visible(k == 0)
        else:
            ax = fig.add_axes(box)
            ax.set_xlabel("x [pixel]")
            if k == 0:
                ax.set_ylabel("y [pixel]")
        ax.set_facecolor(_NAN_COLOUR)
        own = p.own_scale
        cmap = colormaps["magma" if own is None else own.cmap].with_extremes(bad=_NAN_COLOUR)
        if own is not None and own.under is not None:
            cmap = cmap.with_extremes(under=own.under)
        im = ax.imshow(img, origin="lower", cmap=cmap, norm=norm if own is None else own.norm,
                       interpolation="nearest")
        ax.set_title(p.label, fontsize=10)
        _scale_bar(ax, pix, img.shape)
        if wcs is not None:
            _compass(ax, wcs, img.shape)
            if sources is not None and p.show_sources:
                _source_circles(ax, sources, wcs, pix, source_radius_arcsec)
            if candidates is not None and len(candidates) and p.show_sources:
                _source_circles(ax, candidates, wcs, pix, source_radius_arcsec,
                                candidates=True)
        ax.set_xlim(-0.5, img.shape[1] - 0.5)
        ax.set_ylim(-0.5, img.shape[0] - 0.5)
        x += panel_inches
        if own is not None:
            bar(x + cb_gap, im, own.label, own.ticks, own.extend, own.ticklabels)
            x += cb_gap + cb_w + bar_room
        elif k == n_shared - 1:
            bar(x + cb_gap, im, "surface brightness [count s$^{-1}$ arcmin$^{-2}$], "
                f"{stretch} stretch", _colour_ticks(norm), "max")
            x += cb_gap + cb_w + bar_room
        else:
            x += gap
    fig.sky_images = [d[3] for d in drawn]
    return fig


def _title(res) -> str:
    h = res.image.header
    obsid = str(h.get("OBS_ID", "") or "").strip()
    parts = [f"OBS_ID {obsid}" if obsid else res.image.path.name]
    obj = str(h.get("OBJECT", "") or "").strip()
    if obj:
        parts.append(obj)
    line = (f"{' · '.join(parts)}  —  {res.task} with {res.model.path.name} "
            f"v{res.model.version}")
    if res.input_wcs is None:
        line += "\nno sky WCS: detector orientation, pixel axes"
    elif res.image.wcs_note:
        line += "\nsky WCS approximate (RA_PNT/DEC_PNT/PA_PNT, good to a few arcsec)"
    from .inference import ccd_ontime_note

    ontime = ccd_ontime_note(h, res.image.exposure, brief=True)
    if ontime:
        line += "\n" + ontime
    return line


def quicklook_panels(res) -> list:
    """The input, prediction (SR: and diffuse component) and relative-uncertainty
    (:func:`uncertainty_panel`) :class:`Panel` s of an enhancement result.

    The input's masked pixels (outside the detector mask, bad columns, padding) are NaN, drawn
    in the background colour; so are the output pixels where no photon can land (gaps,
    off-chip, padding: ``res.output_keep``), which the maps hold as 0. Append panels to the list and pass it to :func:`panels_figure`
    for a wider figure.
    """
    from .detector import pixel_size_arcsec

    pix_in = pixel_size_arcsec()
    rate_in = np.where(np.asarray(res.input_mask, bool), res.input_rate, np.nan)
    keep = getattr(res, "output_keep", None)

    def shown(a):  # no data where no photon can land
        return a if keep is None else np.where(keep, a, np.nan)

    pix_out = pix_in / res.model.scale
    what = ("sky only: background removed, PSF halved" if res.task == "SR"
            else "expected rate, background included")
    panels = [Panel(rate_in, res.input_wcs,
                    f'input {res.image.exposure / 1e3:.1f} ks, background included, '
                    f'{pix_in:g}" pixels', pix_in, sets_scale=False),
              Panel(shown(res.prediction), res.output_wcs,
                    f'{res.task}, {what}, {pix_out:g}" pixels', pix_out)]
    diffuse = getattr(res, "extras", {}).get("diffuse")
    if diffuse is not None:
        n = len(res.sources or [])
        sig = getattr(res, "list_signif", None)
        label = (f"diffuse component\n{n} point source{'s' * (n != 1)}"
                 + (f" (≥ {sig:g}σ)" if sig is not None and res.sources is not None else "")
                 + " circled")
        m = len(_result_candidates(res) if res.output_wcs is not None else [])
        if m:
            label += f", {m} candidate{'s' * (m != 1)} ×"
        panels.append(Panel(shown(diffuse), res.output_wcs, label, pix_out))
    unc = uncertainty_panel(res)
    if unc is not None:
        panels.append(unc)
    return panels


#: The relative-uncertainty panel's colour scale (logarithmic): its ends and labelled ticks.
UNCERTAINTY_RANGE = (0.01, 3.0)
_UNCERTAINTY_TICKS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
#: The SR uncertainty panel draws black where a pixel's surface brightness is below this many
#: counts per disc of UNCERTAINTY_DISC_ARCSEC radius (10", not the 20" radius of the aperture
#: rule) at the input's exposure: there the sky is empty and its relative uncertainty, a ratio
#: to almost nothing, says nothing.
UNCERTAINTY_MIN_COUNTS = 1.0
UNCERTAINTY_DISC_ARCSEC = 10.0
_EMPTY_SKY = -99.0         # below the panel's scale: drawn in its "under" colour (black)


def relative_uncertainty(prediction, lo68, hi68, keep=None) -> np.ndarray:
    """Half the 68 % interval over the prediction, per pixel: ``(HI68 - LO68) / 2 / rate``.

    Pixels whose rate is 0 get +inf when their interval is open (``HI68 > 0``: nothing
    measured) and 0 when it is closed; NaN outside ``keep`` (no data).
    """
    pred = np.asarray(prediction, np.float64)
    half = 0.5 * (np.asarray(hi68, np.float64) - np.asarray(lo68, np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(pred > 0, half / pred, np.where(np.asarray(hi68) > 0, np.inf, 0.0))
    if keep is not None:
        rel = np.where(keep, rel, np.nan)
    return rel


def uncertainty_panel(res):
    """The :class:`Panel` of an enhancement result's relative uncertainty per pixel
    (:func:`relative_uncertainty` of its ``LO68``/``HI68``), on a logarithmic scale of its own
    from 1 % (values below drawn at 1 %) to 300 % (an arrow for more). For SR (sky only) it is
    black where the pixel's surface brightness is below :data:`UNCERTAINTY_MIN_COUNTS` counts
    per disc of :data:`UNCERTAINTY_DISC_ARCSEC` radius at the input's exposure; DN's rate holds
    the background, so none of its sky is empty. The panel's values are ``log10`` of the
    relative uncertainty. None when the result has no percentile maps."""
    from .fsmode import prepare_matplotlib

    prepare_matplotlib()  # before matplotlib's first import (a bad MPLBACKEND, cron's HOME)
    from matplotlib.colors import Normalize

    from .detector import pixel_size_arcsec

    extras = getattr(res, "extras", None) or {}
    if extras.get("lo68") is None or extras.get("hi68") is None:
        return None
    pix_out = pixel_size_arcsec() / res.model.scale
    rel = relative_uncertainty(res.prediction, extras["lo68"], extras["hi68"],
                               getattr(res, "output_keep", None))
    lo, hi = UNCERTAINTY_RANGE
    with np.errstate(invalid="ignore"):
        shown = np.log10(np.clip(rel, lo, 10 * hi))
    sky_only = res.task == "SR"   # DN's rate holds the background: no sky is empty there
    if sky_only:
        disc = math.pi * (UNCERTAINTY_DISC_ARCSEC / pix_out) ** 2
        counts = np.asarray(res.prediction, np.float64) * res.image.exposure * disc
        shown = np.where(np.isfinite(shown) & (counts < UNCERTAINTY_MIN_COUNTS), _EMPTY_SKY,
                         shown)
    ticks = tuple(math.log10(t) for t in _UNCERTAINTY_TICKS)
    labels = tuple(("≤ " if t == lo else "") + f"{100 * t:g} %" for t in _UNCERTAINTY_TICKS)
    scale = OwnScale(Normalize(vmin=math.log10(lo), vmax=math.log10(hi)),
                     "relative uncertainty per pixel: (HI68 − LO68) / 2 / rate",
                     ticks=ticks, ticklabels=labels, extend="max", under="black")
    label = (f"{res.task} uncertainty, half the 68 % interval over the rate,\n"
             f'{pix_out:g}" pixels')
    if sky_only:
        label += (f"; black: fainter than {UNCERTAINTY_MIN_COUNTS:g} count per "
                  f'{UNCERTAINTY_DISC_ARCSEC:g}"-radius disc')
    return Panel(shown, res.output_wcs, label, pix_out, show_sources=False, sets_scale=False,
                 own_scale=scale)


def _result_candidates(res):
    """(N, 2) RA/Dec of an SR result's unlisted candidates whose points ``POINTS`` keeps
    (:func:`xmm_enhance.inference.candidates_of`; none before the release of unsupported
    points, e.g. with ``--no-redraw``)."""
    if getattr(res, "released", None) is None or not getattr(res, "support", None):
        return np.zeros((0, 2))
    from .inference import candidates_of

    return np.array([[d["ra"], d["dec"]] for d in candidates_of(res)], float).reshape(-1, 2)


def _result_sources(res):
    """(N, 2) RA/Dec of an SR result's source list, or None."""
    found = getattr(res, "sources", None)
    if not found or res.output_wcs is None:
        return None
    return np.array([[d["ra"], d["dec"]] for d in found], float)


def quicklook_figure(res, *, stretch: str = DEFAULT_STRETCH, sources=None,
                     source_radius_arcsec: float = 12.0, extra_panels=(), figsize=None,
                     dpi=None):
    """Figure with the masked input and the prediction on one stretch, north up / east left.

    Parameters
    ----------
    res : xmm_enhance.inference.EnhanceResult
    stretch : {'asinh', 'sqrt', 'log', 'linear'}
    sources : table of RA/Dec, SkyCoord or (N, 2) array, optional
        Circled on the panels that show sources (see :func:`panels_figure`); default: the SR
        result's point-source list, circled on its diffuse-component panel, with the unlisted
        candidates whose points ``POINTS`` keeps dashed.
    source_radius_arcsec : float
    extra_panels : sequence of Panel
        Drawn right of the prediction, on the same stretch.
    figsize : (float, float), optional
        Figure size in inches (default: 4.2-inch panels plus margins).
    dpi : float, optional
        The figure's dpi (default matplotlib's).

    Returns
    -------
    matplotlib.figure.Figure
    """
    panels = quicklook_panels(res)
    candidates = None
    if sources is None and _result_sources(res) is not None:
        # the SR source list: circled on the diffuse panel only, the sharp image stays clean;
        # the unlisted candidates whose points POINTS keeps, dashed
        sources = _result_sources(res)
        candidates = _result_candidates(res)
        for p in panels[:2]:
            p.show_sources = False
    return panels_figure(panels + list(extra_panels), title=_title(res),
                         stretch=stretch, sources=sources,
                         source_radius_arcsec=source_radius_arcsec, figsize=figsize,
                         candidates=candidates, dpi=dpi)


#: PNG resolution (dots per inch of the 4.2-inch panels): an SR panel, ~1000 2" pixels
#: across once north up, gets about one PNG pixel per image pixel (at 110 dpi, half the
#: detail the super-resolution adds was dropped); DN's 4" pixels need half that.
PNG_DPI = {1: 110, 2: 220}


def quicklook_png(res, path, *, overwrite=False, dpi=None, **kwargs) -> Path:
    """Write the quick-look figure to ``path`` (atomically); return the path.

    ``dpi``: default :data:`PNG_DPI` for the model's scale. ``kwargs`` go to
    :func:`quicklook_figure` (``stretch``, ``sources``, ...).
    """
    if dpi is None:
        dpi = PNG_DPI.get(res.model.scale, PNG_DPI[1])
    from .fitsio import atomic_savefig, ensure_output_dir

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise UsageError(f"{path}: the quick look is a PNG; give the file name a .png suffix")
    if path.exists() and not overwrite:
        raise OutputError(f"{path}: exists; pass --overwrite to replace it")
    ensure_output_dir(path.parent)   # made like mkdir -p, as write_outputs does
    fig = quicklook_figure(res, **kwargs)
    try:
        return atomic_savefig(fig, path, dpi=dpi)
    finally:
        release_figure(fig)


def release_figure(fig) -> None:
    """Let go of a drawn figure's image data now.

    A matplotlib figure is a web of reference cycles (artists, axes, the colour bar) that only
    Python's cyclic collector frees, and by the time it runs the figure has reached its oldest,
    rarely collected generation. A batch worker making PNGs then held several figures' images
    at once: 0.86 GB at its peak over 10 observations, 0.71 GB when each figure's images are
    dropped here (session 23). The figure is empty afterwards.
    """
    for ax in fig.axes:
        for im in ax.get_images():
            im.set_data(np.zeros((1, 1)))
    fig.sky_images = None
    fig.clear()


#: Share of the screen's width that the ``--display`` window may take.
SCREEN_SHARE = 0.95


def _screen_width_px(manager):
    """Width of the screen that holds ``manager``'s window in pixels (Tk and Qt), or None."""
    window = getattr(manager, "window", None)
    for ask in (lambda w: w.winfo_screenwidth(),                       # Tk
                lambda w: w.screen().availableGeometry().width()):     # Qt
        try:
            width = int(ask(window))
        except Exception:  # noqa: BLE001 - another toolkit, or no window: keep the size
            continue
        if width > 0:
            return width
    return None


def show(res, **kwargs) -> None:
    """Open a window with the quick-look figure (``--display``); needs a GUI backend.

    The window holds the figure as drawn for the PNG, at its own size in inches; a figure wider
    than :data:`SCREEN_SHARE` of the screen is shown at a lower dpi, so it shrinks as a whole
    (its text with it) instead of being cut at the screen's edge.
    """
    from .fsmode import prepare_matplotlib

    prepare_matplotlib()
    import matplotlib
    import matplotlib.pyplot as plt

    if matplotlib.get_backend().lower() in ("agg", "pdf", "svg", "ps", "cairo", "template"):
        log.warning("--display (show): no GUI backend (%s); use --png (quicklook_png) for a file "
                    "instead",
                    matplotlib.get_backend())
        return
    fig = quicklook_figure(res, **kwargs)
    # the screen's width, asked of a window of pyplot's (closed again)
    probe = plt.figure()
    screen = _screen_width_px(probe.canvas.manager)
    plt.close(probe)
    if screen is not None and fig.get_figwidth() * fig.dpi > SCREEN_SHARE * screen:
        # drawn again at a lower dpi, which stays the figure's own: a HiDPI canvas sets the
        # dpi to its pixel ratio times the dpi the figure was made with
        dpi = SCREEN_SHARE * screen / fig.get_figwidth()
        release_figure(fig)
        fig = quicklook_figure(res, dpi=dpi, **kwargs)
    # a pyplot-managed window to host the figure, made at the figure's own size and dpi: the
    # window sets its figure's size from its own whenever it is drawn, so a window of
    # pyplot's default size squashed the figure into 6.4 x 4.8 inches
    host = plt.figure(figsize=fig.get_size_inches(), dpi=fig.dpi)
    manager = host.canvas.manager
    manager.canvas.figure = fig
    fig.set_canvas(manager.canvas)
    plt.show()
