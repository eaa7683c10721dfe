#!/usr/bin/env python3
"""Point-source profiles, real against simulated, by off-axis angle (simulator PSF realism).

    python benchmarks/bench_psf_profiles.py [--frames 30]

Same selection (``evaluation.select_real_point_sources``, >= 40 net counts per 20 ks) and the same
estimators on both: Gaussian FWHM fitted on the 4" counts, and the background-subtracted (60-90"
annulus) aperture sums within 10", 15" and 20" over the one within 40", and the radial and
tangential widths (Gaussian-weighted second moments about the direction to the optical axis,
``evaluation.radial_tangential_widths``, 4" pixels) and their ratio. Real: the full cleaned
exposures in ``../shared/data/real-pn`` (input side only, no model is run). Simulated: 100 ks
frames of the current simulator.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xmm_enhance import detector, evaluation as ev  # noqa: E402
from xmm_enhance.simulate.instrument import SIM_VERSION, simulate_observation  # noqa: E402

BINS = ((0, 4), (4, 8), (8, 11), (11, 14), (14, 20))


def _profile(counts, mask, y, x):
    b = ev._annulus_mean(counts, mask, y, x, 15.0, 22.5)
    e = [ev.aperture_flux(counts, y, x, r, background=b) for r in (2.5, 3.75, 5.0, 10.0)]
    return [v / e[-1] for v in e[:3]]


def _rows(counts, mask, obs, theta, axis):
    out = []
    for y, x in ev.select_real_point_sources(obs, mask, min_counts_20ks=40):
        wr, wt = ev.radial_tangential_widths(counts, mask, y, x, axis)
        out.append((theta[y, x], ev.fit_fwhm(counts, y, x, half_width=6) * 4.0,
                    *_profile(counts, mask, y, x), wr, wt, wt / wr))
    return out


def _table(label, rows):
    rows = np.asarray(rows, float).reshape(-1, 8)
    for lo, hi in BINS:
        sel = (rows[:, 0] >= lo) & (rows[:, 0] < hi)
        if sel.any():
            m = np.median(rows[sel], axis=0)
            print(f"{label:10s} {lo:2d}-{hi:2d}' {sel.sum():4d} {m[1]:7.2f} {m[2]:9.2f} "
                  f"{m[3]:9.2f} {m[4]:9.2f} {m[5]:6.2f} {m[6]:6.2f} {m[7]:5.2f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=30)
    a = ap.parse_args(argv)
    theta = detector.radius_arcmin(detector.pn_grid())
    axis = np.unravel_index(np.argmin(theta), theta.shape)  # optical axis pixel
    mask = detector.detector_mask()
    print(" " * 11 + "theta     n   FWHM\"   10\"/40\"   15\"/40\"   20\"/40\"  w_rad  w_tan   t/r")
    real = []
    for o in ev.load_real_observations():
        real += _rows(np.asarray(o.counts_full, float), mask, o, theta, axis)
    if real:
        _table("real", real)
    sim = []
    for i in range(a.frames):
        s = simulate_observation(np.random.default_rng([999, i]), exposure=100e3, sr=False)
        c = s.counts.astype(float)
        o = ev.RealObservation("0", "sim", c / 5, 20e3, c, 50e3, c, 100e3, s.mask)
        sim += _rows(c, s.mask, o, theta, axis)
    _table(f"sim {SIM_VERSION}", sim)
    return 0


if __name__ == "__main__":
    sys.exit(main())
