"""Quick-look figures: input and prediction side by side (PNG files or a window).

matplotlib is imported inside the functions; PNGs are written with the Agg backend so they
work headless (cron, CI).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .errors import OutputError

__all__ = ["quicklook_figure", "quicklook_png", "show"]

log = logging.getLogger(__name__)


def _surface_brightness(rate, pixel_arcsec):
    """count/s/pixel -> count/s/arcmin^2, so grids of different pixel size share one stretch."""
    return rate * (3600.0 / pixel_arcsec ** 2)


def quicklook_figure(res, *, figsize=(11, 5.2)):
    """Figure with the masked input and the prediction on the same sqrt stretch.

    Parameters
    ----------
    res : xmm_enhance.inference.EnhanceResult

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure
    from astropy.visualization import ImageNormalize, SqrtStretch

    from .detector import pixel_size_arcsec

    pix_in = pixel_size_arcsec()
    pix_out = pix_in / res.model.scale
    a = _surface_brightness(res.input_rate, pix_in)
    b = _surface_brightness(res.prediction, pix_out)
    pos = np.concatenate([a[a > 0].ravel(), b[b > 0].ravel()])
    vmax = float(np.percentile(pos, 99.7)) if pos.size else 1.0
    norm = ImageNormalize(vmin=0.0, vmax=max(vmax, 1e-12), stretch=SqrtStretch())

    # Fixed axes positions: a constrained layout costs a second full draw (~0.4 s per PNG).
    fig = Figure(figsize=figsize)
    title = res.image.header.get("OBJECT", "") or res.image.path.name
    fig.suptitle(f"{title}  —  {res.task} with {res.model.path.name} "
                 f"v{res.model.version}", fontsize=11)
    panels = [(a, res.input_wcs, pix_in,
               f"input {res.image.exposure / 1e3:.1f} ks (masked, padded)"),
              (b, res.output_wcs, pix_out, f"{res.task} prediction")]
    im = None
    boxes = ([0.08, 0.11, 0.38, 0.78], [0.49, 0.11, 0.38, 0.78])
    for k, (img, wcs, pix, label) in enumerate(panels):
        if wcs is not None:
            ax = fig.add_axes(boxes[k], projection=wcs)
            ax.coords[0].set_axislabel("RA")
            ax.coords[1].set_axislabel("Dec")
            ax.coords[1].set_ticklabel_visible(k == 0)
        else:
            ax = fig.add_axes(boxes[k])
            ax.set_xlabel("x [pixel]")
        im = ax.imshow(img, origin="lower", cmap="magma", norm=norm, interpolation="nearest")
        ax.set_title(label, fontsize=10)
        _scale_bar(ax, pix, img.shape)
    cb = fig.colorbar(im, cax=fig.add_axes([0.895, 0.17, 0.014, 0.66]))
    cb.set_label("count s$^{-1}$ arcmin$^{-2}$")
    return fig


def _scale_bar(ax, pixel_arcsec, shape, arcsec=120.0):
    n = arcsec / pixel_arcsec
    y = 0.06 * shape[0]
    x0 = shape[1] - 0.06 * shape[1] - n
    ax.plot([x0, x0 + n], [y, y], color="white", lw=2.5)
    ax.text(x0 + n / 2, y + 0.02 * shape[0], f"{arcsec:.0f}\"", color="white", ha="center",
            va="bottom", fontsize=9)


def quicklook_png(res, path, *, overwrite=False, dpi=110) -> Path:
    """Write the quick-look figure to ``path`` (atomically); return the path."""
    from .fitsio import atomic_savefig

    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputError(f"{path}: exists; pass --overwrite to replace it")
    fig = quicklook_figure(res)
    return atomic_savefig(fig, path, dpi=dpi)


def show(res) -> None:
    """Open a window with the quick-look figure (``--display``); needs a GUI backend."""
    import matplotlib
    import matplotlib.pyplot as plt

    if matplotlib.get_backend().lower() in ("agg", "pdf", "svg", "ps", "cairo", "template"):
        log.warning("--display: no GUI backend (%s); use --png for a file instead",
                    matplotlib.get_backend())
        return
    fig = quicklook_figure(res)
    manager = plt.figure().canvas.manager  # a pyplot-managed canvas to host the figure
    manager.canvas.figure = fig
    fig.set_canvas(manager.canvas)
    plt.show()
