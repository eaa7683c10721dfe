"""Issue 13: DN's and SR's 20" aperture intervals against photons they never saw.

    python benchmarks/bench_real_apertures.py [--task DN,SR] [--real DIR]
    python benchmarks/bench_real_apertures.py --sim 2718,424242 [--frames 8] [--exposure 20]
                                              [--independent 30]

Each model runs on the 20 ks and 50 ks splits of the real dev images (``--real``, default
``../shared/data/real-pn``; skipped when absent), and its 20" apertures (radius 20", a grid every
20" on the 4" grid, every aperture wholly on scored detector pixels) are tested against the
independent photons, full - split, of ``T_ind`` = EXPOSURE(full) - EXPOSURE(split) seconds:

- DN predicts ``mu = T_ind x`` its summed rate, with the half-width ``c x`` its summed pixel
  half-widths ``x T_ind`` (``c``: the model's aperture rule at the summed rate);
- SR is background-free, on a 2" grid and with the PSF halved. Its primary and both half-width
  maps go through ``evaluation.forward_map`` (the halved PSF made full, 2 x 2 binned, times the
  pn coverage), and ``mu`` adds the background: DN's rate minus SR's forward map,
  median-filtered over 15 x 15 pixels (60") and clipped at 0. ``c`` is SR's rule at the summed
  forward rate.

An aperture with >= 20 expected counts is covered at n sigma when ``|k - mu| <= n sqrt(h^2 + mu)``,
``h`` the half-width on the side of ``k`` (the interval and the independent photons' Poisson
noise in quadrature, as the issue's pixel test). A calibrated interval covers 68 / 95 %, Poisson
noise alone less. SR's rows also give the apertures where SR's own counts are at least the
background's ("source"): there the background estimate matters least.

``--sim SEEDS`` runs the same test on simulated frames (input of ``--exposure`` ks, independent
photons a fresh Poisson draw of the same expected counts over ``--independent`` ks), SR once
with the background estimated as above and once with the simulator's true background. This
calibrates the method itself: the DN-based background takes up part of SR's error, so the real
numbers are to be read against these, not against 0.68 / 0.95 alone.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_calibration as bc  # noqa: E402
from xmm_enhance import evaluation as ev  # noqa: E402
from xmm_enhance import inference  # noqa: E402
from xmm_enhance.detector import coverage_map, detector_mask, fov_mask  # noqa: E402

RADIUS_PX = 5.0  # 20" on the 4" grid
MIN_COUNTS = 20.0
BKG_FILTER = 15


class Models:
    def __init__(self, sr_path, dn_path):
        self.dn = ev.pipeline_predictor(dn_path, "DN", all_outputs=True)
        self.sr = ev.pipeline_predictor(sr_path, "SR", all_outputs=True)
        self.rule = {"DN": inference.load_model("DN", dn_path),
                     "SR": inference.load_model("SR", sr_path)}


def aperture_rows(models, task, counts, T, k_ind, T_ind, ok, mask, true_bkg=None, dn=None):
    """Per aperture: expected independent counts, observed ones, half-widths below and above,
    the model's own share of ``mu`` and the background's (counts at ``T_ind``); and DN's
    output (to reuse for SR's background)."""
    rate = np.asarray(counts, np.float64) / T * mask
    dn = dn if dn is not None else models.dn(rate, mask, T)
    disc = bc._disc(RADIUS_PX)
    r = int(np.ceil(RADIUS_PX))
    centres = [(y, x) for (y, x) in bc._aperture_grid(ok, r, r) if ok[y + disc[0], x + disc[1]].all()]
    if task == "DN":
        rate_map, lo_w, hi_w = dn["rate"], dn["rate"] - dn["lo68"], dn["hi68"] - dn["rate"]
        bkg = np.zeros_like(rate_map)
    else:
        sr = models.sr(rate, mask, T)
        cov = coverage_map() * mask
        rate_map = ev.forward_map(sr["rate"], 1.0, cov)
        lo_w = ev.forward_map(sr["rate"] - sr["lo68"], 1.0, cov)
        hi_w = ev.forward_map(sr["hi68"] - sr["rate"], 1.0, cov)
        if true_bkg is None:
            bkg = ndimage.median_filter(np.where(mask, dn["rate"] - rate_map, 0.0), BKG_FILTER)
            bkg = np.clip(bkg, 0.0, None) * mask
        else:
            bkg = np.asarray(true_bkg, np.float64) * mask
    s = bc._aperture_sums(rate_map, centres, disc)
    rule = models.rule[task].aperture_rule_at(T)
    c = np.array([rule.scale_for(v) for v in s])
    src = s * T_ind
    b = bc._aperture_sums(bkg, centres, disc) * T_ind
    rows = np.c_[src + b, bc._aperture_sums(k_ind, centres, disc),
                 c * bc._aperture_sums(lo_w, centres, disc) * T_ind,
                 c * bc._aperture_sums(hi_w, centres, disc) * T_ind, src, b]
    return rows, dn


def coverage(rows, source_only=False):
    """(1 sigma, 2 sigma, Poisson alone at 1 and 2 sigma, n, median k / mu)."""
    mu, k, hlo, hhi, src, b = rows.T
    sel = mu >= MIN_COUNTS
    if source_only:
        sel &= src >= b
    if not sel.any():
        return None
    d = np.abs(k - mu)[sel]
    sig = np.sqrt(np.where(k < mu, hlo, hhi) ** 2 + mu)[sel]
    p = np.sqrt(mu[sel])
    return ((d <= sig).mean(), (d <= 2 * sig).mean(), (d <= p).mean(), (d <= 2 * p).mean(),
            int(sel.sum()), float(np.median((k / mu)[sel])))


def fmt(c):
    if c is None:
        return f"{'-':>30}"
    return f"{c[0]:6.3f} {c[1]:6.3f}  ({c[2]:.2f} {c[3]:.2f}) {c[4]:6d} {c[5]:6.3f}"


HEAD = f"{'1 sigma':>7} {'2 sigma':>6}  (Poisson)   {'n':>5} {'k/mu':>6}"


def print_rows(label, rows_by_task):
    for task, rows in rows_by_task.items():
        print(f"  {label:<28} {task}  all: {fmt(coverage(rows))}"
              + (f" | source: {fmt(coverage(rows, True))}" if task.startswith("SR") else ""))


def real(models, tasks, root):
    root = root if root is not None else ev.default_real_dir()
    obs = ev.load_real_observations(root)
    if not obs:
        print(f"no real images under {root}: skipped")
        return
    mask = detector_mask()
    print(f"\nReal dev images ({len(obs)}): 20\" apertures with >= {MIN_COUNTS:g} expected "
          f"independent counts; columns {HEAD}")
    for split in ("20ks", "50ks"):
        pooled = {t: [] for t in tasks}
        for o in obs:
            c, e = (o.counts20, o.exposure20) if split == "20ks" else (o.counts50, o.exposure50)
            k_ind, t_ind = o.counts_full - c, o.exposure_full - e
            dn, per = None, {}
            for t in tasks:
                per[t], dn = aperture_rows(models, t, c, e, k_ind, t_ind, o.scored & mask, mask, dn=dn)
                pooled[t].append(per[t])
            print_rows(f"{split} {o.obsid} {o.target}", per)
        print_rows(f"{split} all", {t: np.vstack(v) for t, v in pooled.items()})


def sim(models, tasks, seeds, frames, T, T_ind):
    from xmm_enhance.simulate.instrument import simulate_observation

    print(f"\nSimulations: {frames} frames per seed, {T / 1e3:g} ks inputs, {T_ind / 1e3:g} ks of "
          f"independent photons; columns {HEAD}")
    for seed in seeds:
        t0 = time.time()
        out = {t: [] for t in tasks}
        if "SR" in tasks:
            out["SR, true background"] = []
        for i in range(frames):
            rng = np.random.default_rng([seed, int(T), i])
            obs = simulate_observation(rng, exposure=8 * T, sr="SR" in tasks)
            counts = rng.poisson(obs.dn_target.astype(np.float64) * T)
            k_ind = rng.poisson(obs.dn_target.astype(np.float64) * T_ind).astype(np.float64)
            ok = obs.mask & fov_mask()
            dn = None
            for t in tasks:
                rows, dn = aperture_rows(models, t, counts, T, k_ind, T_ind, ok, obs.mask, dn=dn)
                out[t].append(rows)
            if "SR" in tasks:
                rows, _ = aperture_rows(models, "SR", counts, T, k_ind, T_ind, ok, obs.mask,
                                        true_bkg=obs.bkg_rate, dn=dn)
                out["SR, true background"].append(rows)
        print_rows(f"seed {seed} ({time.time() - t0:.0f} s)", {t: np.vstack(v) for t, v in out.items()})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="DN,SR")
    ap.add_argument("--sr", default=str(inference.default_model_path("SR")))
    ap.add_argument("--dn", default=str(inference.default_model_path("DN")))
    ap.add_argument("--real", default=None, help="folder of the real images (20ks/, 50ks/, full/)")
    ap.add_argument("--sim", default="", help="seeds: run the test on simulated frames instead")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--exposure", type=float, default=20.0, help="input exposure, ks (--sim)")
    ap.add_argument("--independent", type=float, default=30.0,
                    help="ks of independent photons (--sim)")
    a = ap.parse_args(argv)
    tasks = [t.strip().upper() for t in a.task.split(",") if t.strip()]
    if not set(tasks) <= {"DN", "SR"} or not tasks:
        ap.error("--task takes DN, SR or both")
    models = Models(a.sr, a.dn)
    for t in tasks:
        m = models.rule[t]
        print(f"{t}: {Path(a.sr if t == 'SR' else a.dn).name} (version {m.version})")
    if a.sim:
        sim(models, tasks, [int(s) for s in a.sim.split(",")], a.frames, a.exposure * 1e3,
            a.independent * 1e3)
    else:
        real(models, tasks, a.real)


if __name__ == "__main__":
    main()
