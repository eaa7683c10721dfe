"""Speed and realism of the image-level simulator against the real pn images.

Run: ``.venv/bin/python benchmarks/bench_simulator.py [--n 60] [--real ../shared/data/real-pn]``

Prints
1. speed: simulated pairs per second on one core (full frame, 1x input + both targets);
2. background counts per pixel in source-free areas (annuli about the optical axis, corners) of
   20 ks images, real vs simulated (same estimator);
3. point-source FWHM and encircled energy of bright isolated sources (the same detection and
   King fit on real full-exposure images and on simulated 100 ks images);
4. total counts and zero-pixel fraction of 20 ks images;
5. the dip of the partially covered DET columns next to CCD gaps (real stack vs model).
Only summary statistics of the real images are computed; nothing is fitted to their pixels.
"""
from __future__ import annotations

import argparse
import glob
import os
import time

import numpy as np
from astropy.io import fits
from scipy import ndimage, optimize

from xmm_enhance import detector
from xmm_enhance.simulate import psf as _psf
from xmm_enhance.simulate.instrument import PARTIAL_COLUMNS, simulate_observation

ANNULI = ((0, 5), (5, 10), (10, 15))
THETA = detector.radius_arcmin()
FOV = detector.fov_mask()
CORNER = detector.corner_mask()
LIVE = detector.live_mask()


def load_real(root, which):
    out = []
    for p in sorted(glob.glob(os.path.join(root, which, "*.fits*"))):
        with fits.open(p) as h:
            out.append((os.path.basename(p)[:10], h[0].header.get("OBJECT", "?"),
                        h[0].data.astype(np.float64), float(h[0].header["EXPOSURE"])))
    return out


# ---------------------------------------------------------------------------------------------
# background


def background_stats(counts, mask, exposure):
    """Source-free background (counts/s/pixel) in annuli and corners, plus diagnostics."""
    m = mask & (counts >= 0)
    w = ndimage.gaussian_filter(m.astype(float), 3)
    s = ndimage.gaussian_filter(np.where(m, counts, 0.0), 3) / np.maximum(w, 1e-3)
    res = {}
    inf = m & FOV
    for lo, hi in ANNULI:
        a = inf & (THETA >= lo) & (THETA < hi)
        med = np.median(s[a])
        free = a & ~ndimage.binary_dilation(s > 1.5 * med + 1.0 / 28, iterations=3)
        res[f"{lo}-{hi}'"] = counts[free].mean() / exposure if free.sum() > 200 else np.nan
        res[f"free{lo}"] = free.sum() / a.sum()
    c = m & CORNER
    res["corner"] = counts[c].mean() / exposure if c.sum() else np.nan
    res["corner/10-15"] = res["corner"] / res["10-15'"]
    res["zero_frac"] = float((counts[inf] == 0).mean())
    res["total"] = float(counts[m].sum())
    return res


# ---------------------------------------------------------------------------------------------
# point sources


def _king_image(p, yy, xx, o=3):
    y0, x0, rc, alpha, amp, b = p
    sub = (np.arange(o) + 0.5) / o - 0.5
    acc = 0.0
    for dy in sub:
        for dx in sub:
            r2 = (yy + dy - y0) ** 2 + (xx + dx - x0) ** 2
            acc = acc + (1 + r2 / rc ** 2) ** (-alpha)
    return amp * acc / (o * o) + b


def find_point_sources(counts, mask, min_net=600, r_ap=15, isolation=30):
    """Bright isolated point-like sources: list of dicts with fitted King parameters (arcsec).

    Peaks of a difference-of-Gaussians image (point-like excess over the local level); local
    background = clipped mean in a 25-38 px annulus, at most 3x the field's median level; the
    source must be compact (>= 30 % of its 60" net counts within 12"), isolated, and fit by a
    King profile with rc < 16", alpha < 4.
    """
    m = mask.copy()
    mf = m.astype(float)
    img = np.where(m, counts, 0.0)
    s1 = ndimage.gaussian_filter(img, 1.0) / np.maximum(ndimage.gaussian_filter(mf, 1.0), 0.2)
    s4 = ndimage.gaussian_filter(img, 5.0) / np.maximum(ndimage.gaussian_filter(mf, 5.0), 0.2)
    dog = np.where(m, s1 - s4, 0.0)
    bref = max(float(np.median(s4[m & FOV])), 0.5)  # typical local level of the field
    peaks = (dog == ndimage.maximum_filter(dog, 9)) & (dog > 0)
    ys, xs = np.nonzero(peaks)
    order = np.argsort(-dog[ys, xs])[:300]
    ys, xs = ys[order], xs[order]
    ny, nx = counts.shape
    yy, xx = np.mgrid[:ny, :nx]
    cands = []
    for y, x in zip(ys, xs):
        if y < 40 or x < 40 or y >= ny - 40 or x >= nx - 40:
            continue
        sl = (slice(y - 40, y + 41), slice(x - 40, x + 41))
        r = np.hypot(yy[sl] - y, xx[sl] - x)
        mk = m[sl]
        if not mk[r <= 2].all() or mk[r <= r_ap].mean() < 0.85 or not FOV[y, x]:
            continue
        ann = mk & (r >= 25) & (r < 38)
        if ann.sum() < 200:
            continue
        av = counts[sl][ann]
        b = av.mean()
        for _ in range(3):  # clipped mean (a median would be biased low for Poisson counts)
            b = av[av <= b + 4 * np.sqrt(b + 1)].mean()
        if b > 3 * bref:  # on bright extended emission (galaxy / cluster core)
            continue
        ap = (r <= r_ap) & mk
        net = counts[sl][ap].sum() - b * ap.sum()
        if net < min_net:
            continue
        core = counts[sl][r <= 3].sum() - b * (r <= 3).sum()
        if core < 0.3 * net:
            continue
        cands.append((y, x, net, b))
    out = []
    for i, (y, x, net, b) in enumerate(cands):
        # isolated: no other candidate / bright peak within `isolation` px holding >10 %
        near = [c for c in cands if c is not cands[i] and np.hypot(c[0] - y, c[1] - x) < isolation]
        if any(c[2] > 0.1 * net for c in near):
            continue
        sl = (slice(y - 12, y + 13), slice(x - 12, x + 13))
        d = counts[sl]
        w = m[sl]
        py, px = np.mgrid[-12:13, -12:13].astype(float)
        p0 = [0.0, 0.0, 1.4, 1.6, max(d.max() - b, 1.0), max(b, 1e-3)]

        def nll(p):
            if p[2] <= 0.2 or p[3] <= 0.6 or p[4] <= 0 or p[5] < 0:
                return 1e30
            mu = np.maximum(_king_image(p, py, px), 1e-9)
            return float((mu - d * np.log(mu))[w].sum())

        f = optimize.minimize(nll, p0, method="Nelder-Mead",
                              options={"maxiter": 3000, "xatol": 1e-3, "fatol": 1e-3})
        y0, x0, rc, alpha, amp, bf = f.x
        if not (0.3 < rc < 4.0 and 0.8 < alpha < 4.0 and abs(y0) < 2 and abs(x0) < 2):
            continue  # not point-like
        # empirical EEF(15")/EEF(60") with the fitted background and centre
        rr = np.hypot(yy - (y + y0), xx - (x + x0))
        fine = lambda rad: counts[(rr <= rad) & m].sum() - b * ((rr <= rad) & m).sum()
        n60 = fine(15.0)
        out.append({"y": y + y0, "x": x + x0, "net": net, "rc": rc * 4, "alpha": alpha,
                    "fwhm": _psf.king_fwhm(rc * 4, alpha), "eef15": fine(3.75) / n60,
                    "eef30": fine(7.5) / n60, "theta": float(THETA[y, x]), "bkg": b})
    return out


def psf_table(srcs):
    if not srcs:
        return "none"
    a = {k: np.array([s[k] for s in srcs]) for k in ("fwhm", "rc", "alpha", "eef15", "eef30",
                                                     "theta", "net")}
    lo, hi = np.percentile(a["fwhm"], [16, 84])
    return (f"n={len(srcs):3d}  FWHM {np.median(a['fwhm']):5.2f}\" [{lo:.1f}-{hi:.1f}]  "
            f"rc {np.median(a['rc']):4.2f}\"  "
            f"alpha {np.median(a['alpha']):4.2f}  EEF15/60 {np.median(a['eef15']):.3f}  "
            f"EEF30/60 {np.median(a['eef30']):.3f}  theta {np.median(a['theta']):4.1f}'  "
            f"net {np.median(a['net']):6.0f}")


# ---------------------------------------------------------------------------------------------


def partial_column_ratio(images):
    """Mean rate of partially covered columns relative to their full neighbours (stack)."""
    tot = None
    for counts, mask in images:
        sm = ndimage.gaussian_filter(np.where(mask, counts, 0.0), 3)
        med = np.median(sm[mask & FOV])
        src = ndimage.binary_dilation(sm > 2.5 * med, iterations=4)
        c = np.where(mask & ~src, counts, np.nan)
        tot = c if tot is None else np.where(np.isnan(tot) | np.isnan(c), np.nan, tot + c)
    g = detector.pn_grid()
    _, yc = g.centres()
    model, meas = [], []
    for half, (lo, hi) in detector._HALF_Y.items():
        rows = (yc >= lo) & (yc < hi)
        prof = np.nanmean(tot[rows], axis=0)
        for col, f in PARTIAL_COLUMNS[half].items():
            nb = [prof[j] for j in (col - 3, col - 2, col + 2, col + 3)
                  if 0 <= j < prof.size and np.isfinite(prof[j]) and j not in PARTIAL_COLUMNS[half]]
            if np.isfinite(prof[col]) and nb:
                model.append(f)
                meas.append(prof[col] / np.mean(nb))
    return np.array(model), np.array(meas)


def count_sources(counts, mask, thresholds=(30, 100, 300)):
    """Number of compact sources with net counts (r <= 30") above each threshold, FoV < 12'."""
    mf = mask.astype(float)
    img = np.where(mask, counts, 0.0)
    s1 = ndimage.gaussian_filter(img, 1.0) / np.maximum(ndimage.gaussian_filter(mf, 1.0), 0.2)
    s5 = ndimage.gaussian_filter(img, 5.0) / np.maximum(ndimage.gaussian_filter(mf, 5.0), 0.2)
    dog = np.where(mask & FOV & (THETA < 12), s1 - s5, 0.0)
    peaks = (dog == ndimage.maximum_filter(dog, 7)) & (dog > 0.3)
    ys, xs = np.nonzero(peaks)
    ny, nx = counts.shape
    nets = []
    for y, x in zip(ys, xs):
        sl = (slice(max(y - 20, 0), min(y + 21, ny)), slice(max(x - 20, 0), min(x + 21, nx)))
        yy, xx = np.mgrid[sl]
        r = np.hypot(yy - y, xx - x)
        mk = mask[sl]
        ann = mk & (r >= 12) & (r < 20)
        if ann.sum() < 50:
            continue
        b = counts[sl][ann].mean()
        ap = mk & (r <= 7.5)
        net = counts[sl][ap].sum() - b * ap.sum()
        core = counts[sl][mk & (r <= 2.5)].sum() - b * (mk & (r <= 2.5)).sum()
        if net > 0 and core > 0.35 * net and net > 3 * np.sqrt(b * ap.sum() + 1):
            nets.append(net)
    nets = np.array(nets)
    return [int((nets >= t).sum()) for t in thresholds]


def _fov_distance():
    g = detector.pn_grid()
    x, y = g.centres()
    cx, cy = detector.FOV_CENTRE_DET
    return (detector.FOV_RADIUS_DET - np.hypot(x[None, :] - cx, y[:, None] - cy)) / g.step


FOV_DIST = _fov_distance()  # pixels, positive inside the field-of-view circle


def fov_edge_profile(counts, mask):
    """Source-free rate in 1-px bins of distance to the FoV circle (-6..+5 px, negative =
    corners), relative to the corners more than 8 px outside."""
    w = ndimage.gaussian_filter(mask.astype(float), 3)
    sm = ndimage.gaussian_filter(np.where(mask, counts, 0.0), 3) / np.maximum(w, 1e-3)
    med = np.median(sm[mask & FOV])
    free = mask & ~ndimage.binary_dilation(sm > 1.5 * med + 1.0 / 28, iterations=3)
    free[:13] = False  # the outer CCD edge rows have their own levels (corner_row_ratios)
    free[397:] = False
    far = counts[free & (FOV_DIST < -8)].mean()
    return np.array([counts[free & (FOV_DIST >= lo) & (FOV_DIST < lo + 1)].mean() / far
                     for lo in range(-6, 6)])


CORNER_ROWS = (10, 11, 12, 397, 398, 399)


def corner_row_ratios(counts, mask):
    """Mean counts of the corner pixels in the outer CCD rows / corners in rows 14-39 (372-397)."""
    c = CORNER & mask
    lo = counts[14:40][c[14:40]].mean()
    hi = counts[372:398][c[372:398]].mean()
    return np.array([counts[r][c[r]].mean() / (lo if r < 200 else hi) for r in CORNER_ROWS])


def edge_ratios(counts, mask):
    """Mean counts of source-free pixels 1-4 px (taxicab) from the mask edge / those 5-8 px away."""
    w = ndimage.gaussian_filter(mask.astype(float), 3)
    sm = ndimage.gaussian_filter(np.where(mask, counts, 0.0), 3) / np.maximum(w, 1e-3)
    fov = mask & FOV
    med = np.median(sm[fov])
    free = fov & ~ndimage.binary_dilation(sm > 1.5 * med + 1.0 / 28, iterations=3)
    dist = ndimage.distance_transform_cdt(mask, metric="taxicab")
    ref = counts[free & (dist >= 5) & (dist <= 8)].mean()
    return np.array([counts[free & (dist == d)].mean() / ref for d in (1, 2, 3, 4)])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=60, help="simulated 20 ks observations")
    ap.add_argument("--npsf", type=int, default=12, help="simulated 100 ks fields for the PSF")
    ap.add_argument("--real", default=os.path.join(os.path.dirname(__file__), "..", "..",
                                                   "shared", "data", "real-pn"))
    ap.add_argument("--seed", type=int, default=2024)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)

    # 1. speed
    simulate_observation(rng)  # warm caches
    for sr in (True, False):
        t, c = time.perf_counter(), time.process_time()
        k = 15
        for _ in range(k):
            simulate_observation(rng, sr=sr)
        dt, dc = (time.perf_counter() - t) / k, (time.process_time() - c) / k
        print(f"speed (sr={sr}): {dc * 1e3:.0f} ms CPU ({dt * 1e3:.0f} ms wall) per observation "
              f"= {1 / dc:.1f} pairs/s/core")

    # 2./4. background and totals, 20 ks
    real20 = load_real(args.real, "20ks")
    print("\nbackground (counts/s/pixel x1e-6) in source-free areas of 20 ks images, "
          "annuli about the optical axis")
    hdr = f"{'image':24s} " + " ".join(f"{lo}-{hi}'".rjust(8) for lo, hi in ANNULI) + \
        "   corner  corn/out   zero%   total"
    print(hdr)
    for obs, obj, img, exp in real20:
        st = background_stats(img, LIVE & (img >= 0) & detector.detector_mask(), exp)
        print(f"{obs + ' ' + obj:24s} " + " ".join(f"{st[f'{lo}-{hi}' + chr(39)] * 1e6:8.2f}"
                                                     for lo, hi in ANNULI)
              + f" {st['corner'] * 1e6:8.2f} {st['corner/10-15']:8.2f} {st['zero_frac'] * 100:7.1f}"
              f" {st['total']:8.0f}")
    sims = []
    t = time.perf_counter()
    for i in range(args.n):
        s = simulate_observation(rng, sr=False)
        st = background_stats(s.counts, s.mask, s.exposure)
        st["kind"] = s.meta["kind"]
        sims.append(st)
    keys = [f"{lo}-{hi}'" for lo, hi in ANNULI] + ["corner", "corner/10-15", "zero_frac", "total"]
    scale = {"corner/10-15": 1, "zero_frac": 100, "total": 1}
    for q, name in ((16, "sim 16th pct"), (50, "sim median"), (84, "sim 84th pct")):
        vals = [np.nanpercentile([s[k] for s in sims], q) * scale.get(k, 1e6) for k in keys]
        print(f"{name:24s} " + " ".join(f"{v:8.2f}" for v in vals[:5]) +
              f" {vals[5]:7.1f} {vals[6]:8.0f}")
    blank = [s for s in sims if s["kind"] == "blank"]
    if blank:
        vals = [np.nanmedian([s[k] for s in blank]) * scale.get(k, 1e6) for k in keys]
        print(f"{'sim median, blank':24s} " + " ".join(f"{v:8.2f}" for v in vals[:5]) +
              f" {vals[5]:7.1f} {vals[6]:8.0f}")
    print("\ncompact sources within 12' of the optical axis with net counts (30\") >= 30 / 100 / "
          "300 in 20 ks:")
    for obs, obj, img, exp in real20:
        print(f"  real {obj:10s} " + " ".join(f"{v:4d}" for v in
                                             count_sources(img, detector.detector_mask())))
    nsrc = np.array([count_sources(s.counts, s.mask) for s in
                     (simulate_observation(rng, sr=False, kind="blank") for _ in range(8))])
    print("  sim blank (8) median " + " ".join(f"{v:4.0f}" for v in np.median(nsrc, 0)) +
          "   16-84 %: " + ", ".join(f"{a:.0f}-{b:.0f}" for a, b in
                                     zip(np.percentile(nsrc, 16, 0), np.percentile(nsrc, 84, 0))))
    tot = np.array([s["total"] for s in sims])
    print("\ntotal counts in 20 ks: real " + ", ".join(f"{r[1]} {r[2].sum():.0f}" for r in real20))
    print("sim percentiles 5/25/50/75/95/max: " +
          " ".join(f"{v:.0f}" for v in np.percentile(tot, [5, 25, 50, 75, 95, 100])))
    for kind in sorted({s["kind"] for s in sims}):
        tk = [s["total"] for s in sims if s["kind"] == kind]
        print(f"  {kind:13s} n={len(tk):3d} median {np.median(tk):9.0f}  max {np.max(tk):9.0f}")

    # 3. PSF
    print("\nbright isolated point sources: pixel-integrated King fit (Poisson), 4\" pixels")
    realfull = load_real(args.real, "full")
    allreal = []
    for obs, obj, img, exp in realfull:
        src = find_point_sources(img, detector.detector_mask() & (img >= 0))
        allreal += src
        print(f"real {obs} {obj:10s} ({exp / 1e3:.0f} ks): {psf_table(src)}")
    print(f"real all:                     {psf_table(allreal)}")
    simsrc = []
    for i in range(args.npsf):
        s = simulate_observation(rng, exposure=100e3, sr=False,
                                 kind="blank" if i % 2 else "bright_point")
        simsrc += find_point_sources(s.counts, s.mask)
    print(f"sim 100 ks blank/bright:      {psf_table(simsrc)}")
    print(f"model King on axis: rc {_psf.RC0:.2f}\" alpha {_psf.ALPHA0:.2f} "
          f"FWHM {_psf.king_fwhm(*_psf.king_params(0)):.2f}\", at 10': "
          f"FWHM {_psf.king_fwhm(*_psf.king_params(10)):.2f}\"")

    # 5. partial columns
    model, meas = partial_column_ratio([(img, detector.detector_mask() & (img >= 0))
                                        for _, _, img, _ in realfull[1:]])
    print(f"\npartial DET columns next to gaps: {model.size} columns, real/model rate ratio "
          f"median {np.median(meas / model):.2f}, |real - model| median "
          f"{np.median(np.abs(meas - model)):.2f} (model coverage median {np.median(model):.2f})")
    print("source-free rate of pixels 1/2/3/4 px from a gap or edge relative to 5-8 px away:")
    for obs, obj, img, exp in realfull[1:]:
        r = edge_ratios(img, detector.detector_mask() & (img >= 0))
        print(f"  real {obj:10s} " + " ".join(f"{v:.3f}" for v in r))
    r = np.mean([edge_ratios(s.counts, s.mask) for s in
                 (simulate_observation(rng, exposure=100e3, sr=False, kind="blank")
                  for _ in range(6))], axis=0)
    print("  sim blank 100 ks (6) " + " ".join(f"{v:.3f}" for v in r))
    print("source-free rate vs distance to the FoV circle (px, <0 = corners) / far corners:")
    print("  distance          " + " ".join(f"{d:5d}" for d in range(-6, 6)))
    for obs, obj, img, exp in realfull[1:]:
        r = fov_edge_profile(img, detector.detector_mask() & (img >= 0))
        print(f"  real {obj:12s} " + " ".join(f"{v:5.2f}" for v in r))
    sims_c = [s for s in (simulate_observation(rng, exposure=100e3, sr=False, kind="blank")
                          for _ in range(8)) if s.meta["corners"]]
    r = np.mean([fov_edge_profile(s.counts, s.mask) for s in sims_c], axis=0)
    print(f"  sim blank ({len(sims_c)})    " + " ".join(f"{v:5.2f}" for v in r))
    print("corner pixels in the outer CCD rows / corners further in, rows " +
          " ".join(str(r) for r in CORNER_ROWS))
    for obs, obj, img, exp in realfull:
        r = corner_row_ratios(img, detector.detector_mask() & (img >= 0))
        print(f"  real {obj:12s} " + " ".join(f"{v:5.2f}" for v in r))
    r = np.array([corner_row_ratios(s.counts, s.mask) for s in sims_c])
    print(f"  sim blank ({len(sims_c)}) median " + " ".join(f"{v:5.2f}" for v in np.median(r, 0)) +
          "   range of rows 11/399: " + f"{r[:, 1].min():.1f}-{r[:, 1].max():.1f}")
    print(f"simulation loop for the tables took {time.perf_counter() - t:.0f} s")


if __name__ == "__main__":
    main()
