"""README figures on the real images (a look at ``../shared/data/real-pn``; report it).

    python benchmarks/figures_real.py --sr models/XMM-SuperRes.onnx --dn models/XMM-DeNoise.onnx
        [--deep 0400620101] [--cluster 0085110101] [--outdir docs/figures]

* ``real_deep_vs_20ks.png``: one observation's 20 ks split and its full exposure, each with its
  SR and DN prediction (issue 12: a deeper input should keep the faint sources it shows);
* ``real_decomposition.png``: a cluster field's SR prediction split into POINTS and DIFFUSE, the
  source list circled on the diffuse map (issue 13).

Panels are drawn in detector orientation (the real images carry no sky WCS), on one asinh
stretch per row, in surface brightness.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xmm_enhance import evaluation as ev  # noqa: E402
from xmm_enhance import sources as S  # noqa: E402
from xmm_enhance.detector import detector_mask, fov_mask  # noqa: E402
from xmm_enhance.detector import AXIS_PIXEL  # noqa: E402


def _show(ax, img, pix, vmax, title):
    from matplotlib.colors import AsinhNorm

    sb = np.asarray(img, float) * 3600.0 / pix ** 2
    ax.imshow(sb, origin="lower", cmap="magma", norm=AsinhNorm(linear_width=vmax / 30, vmin=0,
                                                               vmax=vmax))
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def deep_figure(obs, sr, dn, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mask = detector_mask()
    fig, axes = plt.subplots(2, 3, figsize=(12, 8.4))
    rows = [(obs.counts20, obs.exposure20), (obs.counts_full, obs.exposure_full)]
    vmax = None
    for r, (c, e) in enumerate(rows):
        rate = c / e * mask
        p_sr = sr(rate, mask, e)["rate"]
        p_dn = dn(rate, mask, e)["rate"]
        if vmax is None:
            vmax = float(np.quantile(p_dn[mask] * 3600 / 16, 0.997))
        _show(axes[r, 0], rate, 4.0, vmax, f"input {e / 1e3:.0f} ks")
        _show(axes[r, 1], p_dn, 4.0, vmax, f"DN from {e / 1e3:.0f} ks")
        _show(axes[r, 2], p_sr, 2.0, vmax, f"SR from {e / 1e3:.0f} ks")
    fig.suptitle(f"{obs.obsid} {obs.target}: 20 ks split (top) and the full exposure (bottom); "
                 "detector orientation, asinh stretch", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def decomposition_figure(obs, sr, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mask = detector_mask()
    c, e = obs.counts20, obs.exposure20
    rate = c / e * mask
    out = sr(rate, mask, e)
    found = out["sources"] if "sources" in out else S.detect_sources(
        c, mask, e, out["points"], diffuse2=out["diffuse"], axis=AXIS_PIXEL, sky=fov_mask())
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.6))
    vmax = float(np.quantile(out["rate"][np.repeat(np.repeat(mask, 2, 0), 2, 1)] * 900, 0.997))
    _show(axes[0], rate, 4.0, vmax, f"input {e / 1e3:.0f} ks")
    _show(axes[1], out["rate"], 2.0, vmax, "SR")
    _show(axes[2], out["points"], 2.0, vmax, "POINTS")
    _show(axes[3], out["diffuse"], 2.0, vmax, f"DIFFUSE, {len(found)} sources circled")
    for d in found:
        axes[3].add_patch(plt.Circle((d["x2"], d["y2"]), 10, fill=False, color="cyan", lw=0.8))
    fig.suptitle(f"{obs.obsid} {obs.target}: SR point/diffuse decomposition of the 20 ks split; "
                 "detector orientation, asinh stretch", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sr", default=str(ROOT / "models" / "XMM-SuperRes.onnx"))
    ap.add_argument("--dn", default=str(ROOT / "models" / "XMM-DeNoise.onnx"))
    ap.add_argument("--deep", default="0400620101")
    ap.add_argument("--cluster", default="0085110101")
    ap.add_argument("--outdir", default=str(ROOT / "docs" / "figures"))
    a = ap.parse_args(argv)
    obs = {o.obsid: o for o in ev.load_real_observations()}
    if not obs:
        print("no real images found (../shared/data/real-pn); nothing to do")
        return 0
    # SR as the command line makes it: its source list, listed sources redrawn
    sr = ev.pipeline_predictor(a.sr, all_outputs=True)
    dn = ev.onnx_predictor(a.dn, all_outputs=True)
    out = Path(a.outdir)
    out.mkdir(parents=True, exist_ok=True)
    if a.deep in obs:
        deep_figure(obs[a.deep], sr, dn, out / "real_deep_vs_20ks.png")
        print(out / "real_deep_vs_20ks.png")
    if a.cluster in obs:
        decomposition_figure(obs[a.cluster], sr, out / "real_decomposition.png")
        print(out / "real_decomposition.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
