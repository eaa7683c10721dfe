"""Issue 13's decomposition bar as a counterfactual: where the point sources' photons go.

    python benchmarks/bench_decomposition.py --sr models/XMM-SuperRes.onnx [--seed 515151]
        [--frames 12] [--exposures 20,50] [--bare]

``bench_calibration.py`` scores ``POINTS`` and ``DIFFUSE`` against the simulator's truth, so its
``DIFFUSE`` share mixes two things: point flux put into ``DIFFUSE`` and the diffuse estimate's
own error under the source (large on a bright cluster core). This benchmark separates them.
Each simulated field is drawn twice from the same random numbers, with and without its point
sources (``simulate_observation(points=False)``: the same diffuse sky, background, PSF and
mask). The input is the sum of two Poisson draws: the field without its point sources, and the
point sources' own part (their out-of-time events included). The pipeline (or, with
``--bare``, the network alone) runs on the sum and on the first draw alone.

In a 20" aperture around every simulated point source (as ``bench_calibration``, piled-up
sources left out), ``POINTS(with) - POINTS(without)`` and ``DIFFUSE(with) - DIFFUSE(without)``
are what the point sources' photons added to each map, as shares of the sources' true counts
on the SR grid. The issue's bars: ``POINTS`` >= 95 %, ``DIFFUSE`` <= 5 %. Rows: all sources,
by true counts within 20", sources under brighter diffuse emission (the diffuse truth in the
aperture above the source's), and per field kind.

The run without point sources also shows the other direction, what ``POINTS`` takes of a
field that has none: its total as a share of the diffuse truth, and its brightest 20"
aperture (counts at the input exposure), per field kind. The issue asks that knots of diffuse
emission stay in ``DIFFUSE`` unless the counts demand a point source.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.signal import fftconvolve

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xmm_enhance import evaluation as ev  # noqa: E402
from xmm_enhance.simulate.instrument import simulate_observation  # noqa: E402

#: 20" radius on the 2" grid.
RADIUS_2X = 10


def frame_rows(predict, seed, T, i, halo_points=0.0):
    """Rows ``(truth, POINTS gain, DIFFUSE gain, diffuse truth)`` (counts at ``T`` in 20")
    of one frame's point sources, the frame's field kind and, for the field without its point
    sources, ``(POINTS total, diffuse truth total, brightest 20" POINTS aperture)`` (counts at
    ``T``). ``halo_points``: the simulator's extra sources on the halos of clusters and
    galaxies (0: the default fields)."""
    # 8 T: the source list reaches 5 counts at T
    args = dict(exposure=8 * T, sr=True, halo_points=halo_points)
    with_pts = simulate_observation(np.random.default_rng([seed, int(T), i]), **args)
    without = simulate_observation(np.random.default_rng([seed, int(T), i]), points=False,
                                   **args)
    rng = np.random.default_rng([seed, int(T), i, 99])
    c0 = rng.poisson(without.dn_target.astype(np.float64) * T)
    cp = rng.poisson(np.maximum(with_pts.dn_target - without.dn_target, 0.0) * T)
    out = predict((c0 + cp) / T, with_pts.mask, T)
    out0 = predict(c0 / T, with_pts.mask, T)
    pts_truth = np.maximum(with_pts.sr_target - without.sr_target, 0.0)
    d_pts = out["points"] - out0["points"]
    d_dif = out["diffuse"] - out0["diffuse"]
    yy, xx = np.mgrid[-RADIUS_2X:RADIUS_2X + 1, -RADIUS_2X:RADIUS_2X + 1]
    disc = yy * yy + xx * xx <= RADIUS_2X ** 2
    dy, dx = yy[disc], xx[disc]
    ny, nx = pts_truth.shape
    rows = []
    for s in with_pts.meta["sources"]:
        y, x = s["y2"], s["x2"]
        if s["piled"] or not (RADIUS_2X <= y < ny - RADIUS_2X and RADIUS_2X <= x < nx - RADIUS_2X):
            continue
        ys, xs = y + dy, x + dx
        rows.append((pts_truth[ys, xs].sum() * T, d_pts[ys, xs].sum() * T,
                     d_dif[ys, xs].sum() * T, without.sr_target[ys, xs].sum() * T))
    leak = (float(out0["points"].sum()) * T, float(without.sr_target.sum()) * T,
            float(fftconvolve(out0["points"], disc.astype(np.float64), mode="same").max()) * T)
    return rows, with_pts.meta["kind"], leak


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sr", default=str(ROOT / "models" / "XMM-SuperRes.onnx"))
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--exposures", default="20,50", help="ks, comma-separated")
    ap.add_argument("--seed", type=int, default=515151)
    ap.add_argument("--bare", action="store_true",
                    help="the network alone (default: the whole command-line pipeline)")
    ap.add_argument("--halo-points", type=float, default=0.0,
                    help="fields with this mean number of extra sources tracing the light of "
                         "clusters and galaxies (simulate_observation(halo_points=); default 0)")
    a = ap.parse_args(argv)
    predict = (ev.onnx_predictor(a.sr, all_outputs=True) if a.bare
               else ev.pipeline_predictor(a.sr, "SR", all_outputs=True))
    print(f"SR {Path(a.sr).name} ({'network alone' if a.bare else 'pipeline'}): what the point "
          f"sources' photons add in 20\" around them, seed {a.seed}, {a.frames} frames"
          + (f", {a.halo_points:g} halo sources per field" if a.halo_points else ""))
    print(f"{'exposure':>8}  {'sources':28s} {'n':>5} {'true counts':>12} {'POINTS %':>9} "
          f"{'DIFFUSE %':>9}")
    for T in (float(v) * 1e3 for v in a.exposures.split(",")):
        rows, kinds, leaks = [], [], []
        for i in range(a.frames):
            r, kind, leak = frame_rows(predict, a.seed, T, i, a.halo_points)
            rows += r
            kinds += [kind] * len(r)
            leaks.append((kind,) + leak)
        if not rows:
            continue
        t = np.array(rows)
        kinds = np.array(kinds)
        groups = [("all", t[:, 0] > 0),
                  (">= 100 counts", t[:, 0] >= 100),
                  ("20-100 counts", (t[:, 0] >= 20) & (t[:, 0] < 100)),
                  ("< 20 counts", (t[:, 0] > 0) & (t[:, 0] < 20)),
                  ("under brighter diffuse", (t[:, 0] > 0) & (t[:, 3] > t[:, 0])),
                  ("not under brighter diffuse", (t[:, 0] > 0) & (t[:, 3] <= t[:, 0]))]
        groups += [(f"field kind {k}", (t[:, 0] > 0) & (kinds == k)) for k in sorted(set(kinds))]
        for name, sel in groups:
            if not sel.any():
                continue
            tp, pp, dd, _ = t[sel].sum(0)
            print(f"{T / 1e3:6.0f}ks  {name:28s} {int(sel.sum()):5d} {tp:12.0f} "
                  f"{100 * pp / tp:9.1f} {100 * dd / tp:9.1f}", flush=True)
        print(f"{T / 1e3:6.0f}ks  the fields without their point sources: POINTS total as a "
              f"share of the diffuse truth; brightest 20\" POINTS aperture (counts)")
        for k in ["all"] + sorted({v[0] for v in leaks}):
            sel = [v for v in leaks if k in ("all", v[0])]
            pts, dif = sum(v[1] for v in sel), sum(v[2] for v in sel)
            share = f"{100 * pts / dif:9.2f} %" if dif > 0 else f"{'-':>9}  "
            print(f"{T / 1e3:6.0f}ks  {'leak ' + k:28s} {len(sel):5d} {dif:12.0f} {share} "
                  f"max {max(v[3] for v in sel):6.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
