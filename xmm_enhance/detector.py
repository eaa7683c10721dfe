"""EPIC-pn detector geometry on the evselect DETX/DETY grid.

All geometry is stated in DET coordinates (units of 0.05 arcsec), so a mask can be made on any
binning of the grid (``binsize``) and any sub-sampling of it (``scale`` = 2 for the SR grid).
Arrays are indexed ``[y, x]`` (row = DETY, column = DETX), 0-based; FITS pixel numbers are 1-based.

The numbers were measured on the grid of ``design.md`` §4.1 (binsize 80): the union of real
0.5-2 keV images (where photons arrive) gives the live CCD area, and a pn exposure map mask
(``FLAG == 0`` inside the field of view) gives the edge pixels that ``FLAG == 0`` removes inside
the field of view and the field-of-view circle.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DETX_MIN", "DETY_MIN", "DETX_MAX", "DETY_MAX", "PN_BINSIZE", "PN_SHAPE",
    "FOV_CENTRE_DET", "FOV_RADIUS_DET", "OPTICAL_AXIS_DET", "AXIS_PIXEL", "Grid", "pn_grid",
    "live_mask", "fov_mask", "detector_mask", "corner_mask", "pixel_size_arcsec",
    "FOV_EDGE_ARCSEC", "fov_transmission", "PARTIAL_COLUMNS", "PARTIAL_ROWS", "coverage_map",
]

#: Lower edges of the evselect DET image range (DET units, 0.05").
DETX_MIN = -18283.5
DETY_MIN = -17527.5
#: Upper edges (403 and 411 bins of 80).
DETX_MAX = 13956.5
DETY_MAX = 15352.5
PN_BINSIZE = 80
#: (rows, columns) of the default binsize-80 image.
PN_SHAPE = (411, 403)

_B = 80.0  # the binsize the bin numbers below refer to


def _xb(c):  # lower DETX edge of 1-based column c on the 80 grid
    return DETX_MIN + _B * (c - 1)


def _yb(r):
    return DETY_MIN + _B * (r - 1)


def _cols(*spans):
    """DETX intervals [lo, hi) of 1-based column spans (first, last) on the binsize-80 grid."""
    return tuple((_xb(a), _xb(b + 1)) for a, b in spans)


#: The two rows of six CCDs: DETY intervals [lo, hi) (rows 11-204 and 207-400 of the 80 grid;
#: rows 1-10 and 401-411 are off the chips, 205-206 the gap between the two rows).
_HALF_Y = {"lower": (_yb(11), _yb(205)), "upper": (_yb(207), _yb(401))}
#: Columns that never see an event, per row of CCDs: the gaps between CCDs and quadrants and the
#: empty DET bins left where the 4.1" raw pixels fall between the 4" image bins. Identical in
#: five observations taken 2001-2019 (the four in shared/real-pn and the reference mask).
_DEAD_X = {
    "lower": _cols((94, 95), (130, 135), (152, 153), (191, 193), (197, 202), (236, 237),
                   (267, 270)),
    "upper": _cols((133, 135), (181, 182), (201, 202), (268, 270), (273, 274), (290, 291)),
}
#: Columns flagged (FLAG != 0) inside the field of view in every observation seen, but live in the
#: CCD corners outside it (they collect corner events there), per row of CCDs.
_FLAGGED_X = {"lower": (), "upper": _cols((324, 325), (371, 371))}
#: CCD-edge pixels that FLAG==0 removes inside the field of view (CCD boundaries inside a
#: quadrant, the last column, the rows next to the read-out). Outside the field of view (the
#: CCD corners) they still collect particle background.
_EDGE_X = _cols((66, 67), (336, 337), (403, 403))
_EDGE_Y = ((_yb(11), _yb(12)), (_yb(400), _yb(401)))

#: Field-of-view circle (DET units), fitted to a pn FLAG==0 exposure-map mask.
FOV_CENTRE_DET = (-2204.0, -1102.0)
FOV_RADIUS_DET = 224.4 * _B
#: Optical axis (vignetting centre) in DET units.
OPTICAL_AXIS_DET = (1200.0, 430.0)
#: The optical axis on the 1x pn grid (0-based row, column of pixel centres; fractional).
AXIS_PIXEL = ((OPTICAL_AXIS_DET[1] - DETY_MIN) / PN_BINSIZE - 0.5,
              (OPTICAL_AXIS_DET[0] - DETX_MIN) / PN_BINSIZE - 0.5)


@dataclass(frozen=True)
class Grid:
    """A DETX/DETY image grid.

    ``x0``/``y0`` are the DET coordinates of the lower edge of the first pixel, ``step`` the
    pixel size in DET units, ``shape`` = (ny, nx).
    """

    x0: float
    y0: float
    step: float
    shape: tuple

    def centres(self):
        """DET coordinates of pixel centres: (detx[nx], dety[ny])."""
        ny, nx = self.shape
        return (self.x0 + self.step * (np.arange(nx) + 0.5),
                self.y0 + self.step * (np.arange(ny) + 0.5))

    @property
    def crval(self):
        """DET coordinates of the centre of FITS pixel (1, 1)."""
        return (self.x0 + self.step / 2, self.y0 + self.step / 2)


def pn_grid(binsize: float = PN_BINSIZE, scale: int = 1) -> Grid:
    """The evselect DETX/DETY grid for ``binsize`` (DET units), subdivided ``scale`` times.

    evselect starts the first bin at the lower legal edge and covers the whole legal range, so
    the number of bins is ``ceil(range / binsize)``.
    """
    if binsize <= 0:
        raise ValueError(f"binsize must be > 0, got {binsize}")
    if scale < 1 or int(scale) != scale:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    nx = int(math.ceil((DETX_MAX - DETX_MIN) / binsize - 1e-9))
    ny = int(math.ceil((DETY_MAX - DETY_MIN) / binsize - 1e-9))
    return Grid(DETX_MIN, DETY_MIN, binsize / scale, (ny * scale, nx * scale))


def pixel_size_arcsec(binsize: float = PN_BINSIZE, scale: int = 1) -> float:
    """Pixel size in arcsec (DET units are 0.05")."""
    return binsize * 0.05 / scale


def _in_intervals(v, intervals):
    out = np.zeros(v.shape, bool)
    for lo, hi in intervals:
        out |= (v >= lo) & (v < hi)
    return out


def _grid_of(grid):
    return grid if isinstance(grid, Grid) else pn_grid()


def live_mask(grid: Grid | None = None) -> np.ndarray:
    """Pixels on a CCD (photon-collecting anywhere on the chip, corners included), bool [ny, nx]."""
    g = _grid_of(grid)
    x, y = g.centres()
    out = np.zeros(g.shape, bool)
    for half, (lo, hi) in _HALF_Y.items():
        rows = (y >= lo) & (y < hi)
        cols = (x >= DETX_MIN) & (x < DETX_MAX) & ~_in_intervals(x, _DEAD_X[half])
        out |= rows[:, None] & cols[None, :]
    return out


def fov_mask(grid: Grid | None = None) -> np.ndarray:
    """Pixels whose centre is inside the field-of-view circle, bool [ny, nx]."""
    g = _grid_of(grid)
    x, y = g.centres()
    cx, cy = FOV_CENTRE_DET
    return (x[None, :] - cx) ** 2 + (y[:, None] - cy) ** 2 <= FOV_RADIUS_DET ** 2


#: e-folding distance (arcsec) of the sky outside the field-of-view circle: the real corners show
#: sky photons a few pixels beyond it (docs/simulator.md, instrument edges).
FOV_EDGE_ARCSEC = 15.0


def fov_transmission(grid: Grid | None = None, edge_arcsec: float = FOV_EDGE_ARCSEC
                     ) -> np.ndarray:
    """Share of the sky reaching each pixel, float32 [ny, nx]: 1 for pixel centres inside the
    field-of-view circle, ``exp(-d / edge_arcsec)`` at a distance ``d`` (arcsec) outside it.

    Outside the FoV the CCD corners collect particle background but (almost) no sky: this is
    the edge of every background-free sky image (the simulator's SR target, the SR output).
    """
    g = _grid_of(grid)
    x, y = g.centres()
    cx, cy = FOV_CENTRE_DET
    d = (np.hypot(x[None, :] - cx, y[:, None] - cy) - FOV_RADIUS_DET) * 0.05  # DET unit = 0.05"
    return np.exp(-np.clip(d, 0, None) / edge_arcsec).astype(np.float32)


def _edge_mask(g):
    """Pixels FLAG==0 removes inside the field of view: CCD edges and flagged columns."""
    x, y = g.centres()
    out = _in_intervals(y, _EDGE_Y)[:, None] | _in_intervals(x, _EDGE_X)[None, :]
    for half, (lo, hi) in _HALF_Y.items():
        rows = (y >= lo) & (y < hi)
        out |= rows[:, None] & _in_intervals(x, _FLAGGED_X[half])[None, :]
    return out


def detector_mask(grid: Grid | None = None, *, corners: bool = True) -> np.ndarray:
    """Pixels that collect events in a ``FLAG==0`` (inside the FoV) image, bool [ny, nx].

    Parameters
    ----------
    grid : Grid, optional
        Default: the binsize-80 pn grid (411 x 403).
    corners : bool
        Include the CCD corners outside the field-of-view circle. They see particle background
        (and, in images selected with ``FLAG & 0x10000``, events); a pure ``FLAG==0`` image has
        no events there.
    """
    g = _grid_of(grid)
    live = live_mask(g)
    infov = fov_mask(g)
    mask = live & infov & ~_edge_mask(g)
    if corners:
        mask |= live & ~infov
    return mask


def corner_mask(grid: Grid | None = None) -> np.ndarray:
    """Live CCD pixels outside the field of view, bool [ny, nx]."""
    g = _grid_of(grid)
    return live_mask(g) & ~fov_mask(g)


def radius_arcmin(grid: Grid | None = None, centre=OPTICAL_AXIS_DET) -> np.ndarray:
    """Distance of each pixel centre from ``centre`` (DET units) in arcmin, float [ny, nx]."""
    g = _grid_of(grid)
    x, y = g.centres()
    return np.hypot(x[None, :] - centre[0], y[:, None] - centre[1]) * 0.05 / 60.0


#: Fractional coverage of DET columns next to CCD gaps and edges, per row of CCDs ("lower":
#: 0-based rows 10-203, "upper": 206-399), 0-based column -> fraction of a full column's events.
#: The 4.1" raw pixels only partly overlap these 4" DET bins. Measured as the median along each
#: column of the eexpmap exposure map of obs 0723801301 divided by the vignetting (geometric,
#: the same for every observation: the real images show the same dips).
PARTIAL_COLUMNS = {
    "lower": {0: 0.47, 64: 0.48, 67: 0.1, 92: 0.65, 95: 0.23, 128: 0.77, 135: 0.7, 150: 0.74,
              153: 0.14, 193: 0.91, 195: 0.13, 202: 0.2, 234: 0.77, 237: 0.12, 265: 0.73,
              270: 0.81, 334: 0.15, 337: 0.44, 401: 0.53},
    "upper": {0: 0.47, 64: 0.49, 67: 0.1, 131: 0.86, 135: 0.71, 179: 0.64, 182: 0.25, 199: 0.25,
              202: 0.2, 266: 0.76, 270: 0.81, 271: 0.2, 274: 0.68, 288: 0.73, 291: 0.15,
              322: 0.78, 325: 0.1, 334: 0.15, 337: 0.44, 369: 0.52, 372: 0.35, 401: 0.52},
}
#: Same for rows (0-based row -> fraction), measured the same way.
PARTIAL_ROWS = {11: 0.12, 203: 0.8, 206: 0.15, 398: 0.75}


def coverage_map():
    """Fraction of a full pixel's events collected by each 1x pixel, float32 [411, 403].

    1 everywhere except the partially covered DET columns and rows next to CCD gaps and edges
    (``PARTIAL_COLUMNS``, ``PARTIAL_ROWS``).
    """
    g = pn_grid()
    _, yc = g.centres()
    cov = np.ones(g.shape, np.float32)
    for half, (lo, hi) in _HALF_Y.items():
        rows = (yc >= lo) & (yc < hi)
        for c, f in PARTIAL_COLUMNS[half].items():
            cov[rows, c] *= f
    for r, f in PARTIAL_ROWS.items():
        cov[r] *= f
    return cov
