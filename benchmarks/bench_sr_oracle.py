"""How sharp can a posterior-mean SR network be? An oracle against the truth and a model.

For the bright isolated point sources that the real-data procedure selects in simulated frames
(``find_point_sources`` on a 100 ks draw, input FWHM 6-16"), three 2x images are scored with the
same FWHM-ratio estimator as the real SR bar:

* the truth (half PSF at the true position);
* the oracle: each source replaced by the exact posterior mean of its image given the 20 ks
  counts, knowing its PSF stamp, the background and every other source; only its flux (1/F prior
  on a log grid, 0.3-3x the truth) and its 2x-pixel position (flat, +-4 pixels) are unknown;
* the model's prediction.

A network trained on the expected deviance predicts a posterior mean, so the oracle is the best
such a network can do; the gap between oracle and truth is what the "aligned targets" of
``training.data.align_point_sources`` remove. Prints the medians per source brightness (counts
in a 40" aperture of the 20 ks input).

Usage: ``python benchmarks/bench_sr_oracle.py [--model models/XMM-SuperRes.onnx] [--frames 40]``
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from xmm_enhance import evaluation as ev
from xmm_enhance.simulate import instrument as inst
from xmm_enhance.training.data import unit_source_window

BINS = ((0, 150), (150, 300), (300, 600), (600, np.inf), (0, np.inf))


def oracle_source(counts, dn_target, mask, src, kf, kh, exposure, *, window=8, reach=4):
    """Posterior-mean half-PSF image (2x, rate) of one source, as (y2, x2, rate) stamps."""
    y0, x0 = int(round(src["y"])) - window, int(round(src["x"])) - window
    n1 = 2 * window + 1
    if y0 < 0 or x0 < 0 or y0 + n1 > counts.shape[0] or x0 + n1 > counts.shape[1]:
        return None
    y2, x2 = src["y2"], src["x2"]
    m = mask[y0:y0 + n1, x0:x0 + n1]
    c = counts[y0:y0 + n1, x0:x0 + n1].astype(np.float64)

    def k1(dy, dx):  # 1x image of a unit source at 2x pixel (y2 + dy, x2 + dx)
        return unit_source_window(kf, y2 + dy, x2 + dx, y0, x0, n1) * m

    f_true = src["rate"] * src["vignetting"] * exposure
    rest = np.maximum(dn_target[y0:y0 + n1, x0:x0 + n1] * exposure - f_true * k1(0, 0), 1e-3)
    fs = f_true * np.geomspace(0.3, 3, 41)
    shifts = [(dy, dx) for dy in range(-reach, reach + 1) for dx in range(-reach, reach + 1)]
    ll = []
    for dy, dx in shifts:
        k = k1(dy, dx)
        lam = rest[None] + fs[:, None, None] * k[None]
        ll.append((c[None] * np.log(lam) - lam)[:, m].sum(axis=1))
    ll = np.array(ll)
    w = np.exp(ll - ll.max())
    w /= w.sum()
    return [(y2 + dy, x2 + dx, float((wp * fs).sum() / exposure)) for (dy, dx), wp in zip(shifts, w)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/XMM-SuperRes.onnx")
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--seed", type=int, default=777)
    a = ap.parse_args(argv)
    pred = ev.onnx_predictor(a.model, threads=1)
    T = 20e3
    rows, t0 = [], time.time()
    for i in range(a.frames):
        rng = np.random.default_rng([a.seed, i])
        s = inst.simulate_observation(rng, exposure=T, sr=True)
        full = rng.poisson(s.dn_target.astype(float) * 100e3)
        c20 = s.counts
        found = ev.find_point_sources(full, s.mask, min_counts=300, aperture_px=10,
                                      isolation_px=15, edge_px=10)
        keep = [(y, x) for y, x, _ in found
                if 6.0 <= ev.fit_fwhm(c20, y, x, half_width=6) * 4.0 <= 16.0]
        srcs = [d for d in s.meta["sources"] if not d["piled"]]
        if not keep or not srcs:
            continue
        orc = s.sr_target.astype(np.float64)
        delta = np.zeros_like(orc)
        used = []
        for y, x in keep:
            d = [np.hypot(q["y"] - y, q["x"] - x) for q in srcs]
            j = int(np.argmin(d))
            if d[j] > 1.5:
                continue
            q = srcs[j]
            kf, kh = inst.source_kernels(s.meta, q)
            post = oracle_source(c20, s.dn_target, s.mask, q, kf, kh, T)
            if post is None:
                continue
            for py, px, rate in post:
                inst._add_stamp(delta, py, px, rate * kh)
            inst._add_stamp(delta, q["y2"], q["x2"], -q["rate"] * q["vignetting"] * kh)
            used.append((y, x))
        if not used:
            continue
        mask2 = np.repeat(np.repeat(s.mask, 2, 0), 2, 1)
        orc = (orc + delta * mask2).astype(np.float32)
        p = pred(c20 / T, s.mask)
        r_t, r_o, r_n = (ev.evaluate_sr_sources(c20 / T, s.mask, img, sources=used,
                                                truth_2x=s.sr_target)
                         for img in (s.sr_target, orc, p))
        for (y, x), t, o, n in zip(used, r_t, r_o, r_n):
            rows.append((float(ev.aperture_flux(c20, y, x, 10.0)), t["fwhm_ratio"],
                         o["fwhm_ratio"], n["fwhm_ratio"]))
    rows = np.array(rows)
    print(f"SR FWHM ratio, real-data procedure on {a.frames} simulated frames (seed {a.seed}); "
          f"{len(rows)} sources; {time.time() - t0:.0f} s")
    head = 'counts in 40" (20 ks)'
    print(f"{head:>22} {'n':>4} {'truth':>7} {'oracle':>7} {'model':>7}")
    for lo, hi in BINS:
        sel = (rows[:, 0] >= lo) & (rows[:, 0] < hi)
        if sel.any():
            med = np.nanmedian(rows[sel, 1:], axis=0)
            label = f"{lo:g}-{hi:g}" if np.isfinite(hi) else (f">= {lo:g}" if lo else "all")
            print(f"{label:>22} {int(sel.sum()):>4} {med[0]:7.3f} {med[1]:7.3f} {med[2]:7.3f}")
    print("oracle: exact posterior mean with known PSF, background and neighbours (unknown flux "
          "and 2x-pixel position); a deviance-trained network cannot be sharper on average")


if __name__ == "__main__":
    main()
