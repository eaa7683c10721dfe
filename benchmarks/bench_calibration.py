"""Issue 13 on held-out simulations: percentile calibration, point/diffuse split, source list.

    python benchmarks/bench_calibration.py --dn D.onnx --sr S.onnx [--frames 12]
                                           [--exposures 10,20,50,100] [--seed 424242]
                                           [--aperture-scale D,S --aperture-slope D,S]

For exposure-aware models (recipe 2) on simulated frames never used in training or validation
(seeds ``[seed, i]``), at each input exposure:

* **coverage**: share of field-of-view pixels whose truth lies inside [LO68, HI68] (within
  1e-3 counts, as training's validation counts it; 0.68 is calibrated), the same over pixels
  whose truth holds >= 0.01 counts ("pixels>0": a zero truth, common in the background-free SR
  target, is inside any interval that starts at 0), and the same for 20"
  apertures on a grid (every 20" in the FoV), with the aperture interval taken as
  [sum LO68, sum HI68] (pixels' bounds added: an upper limit on the spread, so this coverage is
  an upper bound) and as sum(rate) -+ sqrt(sum of the pixels' half-widths squared) (independent
  pixels: a lower bound); ``c68``: the scale ``c`` for which ``sum(rate) -+ c x (summed
  half-widths)`` covers 68 % of the apertures (the model card's aperture rule: choose ``c`` on
  one seed, check it on another with ``--aperture-scale`` and, for a scale that changes with
  the exposure as the metadata ``aperture_interval_slope`` states, ``--aperture-slope``; one
  scale for every aperture, as before session 28: the bundled rule, which follows the
  aperture's rate, is chosen and checked by ``bench_aperture_rule.py``); the
  "pixels>0" coverage is also printed per simulated field kind (the pooled share is dominated
  by the frames with the most emission pixels, clusters and remnants, so it moves from one
  draw of frames to the next); with ``--pixel-scales s1,s2,..`` also the "pixels>0" and
  all-pixel coverage of the widened intervals ``rate x (lo68 / rate) ** s``,
  ``rate x (hi68 / rate) ** s`` and their apertures' ``c68`` (the network's interval is
  ``rate x exp(-+ width)`` in log space; a model exported with ``interval_scale = s`` writes
  exactly these), to choose ``s`` on one seed and check it on another;
* SR **decomposition**: in 20" apertures around the simulated point sources (down to 5 counts
  at T), the POINTS map's counts and the DIFFUSE map's excess over the diffuse truth, as shares
  of the point sources' true counts (truth minus the simulator's diffuse part); all sources,
  then the "bright" ones: >= 100 true counts within 20" and more than the diffuse truth there
  (a faint source's flux is shared with the background and diffuse posterior, so a posterior
  mean cannot put all of it in POINTS; on a bright cluster core the DIFFUSE excess is mostly
  the error of the core's own estimate), and on a line below those of 20-100 counts (most below
  the list's threshold, so in DIFFUSE since session 14); brightest 20" aperture of the POINTS
  map in source-free frames with the simulator's background (vignetted sky, particles, soft
  protons; "flat max");
* SR **faint-source flux** (``--pipeline``): for simulated sources of 20-200 counts in 20" at
  the input exposure, the median of the SR primary's 20" net counts over the noise-free
  target's (:func:`faint_fluxes`), by counts, for listed and unlisted sources (the issue's
  bar, 0.9-1.1, is on real 20 ks inputs);
* SR **source list** (``xmm_enhance.sources`` at its default threshold): completeness for
  listed sources of >= 20 / >= 50 counts and the share of false entries (no simulated source
  of >= 5 counts within 8"); the share of listed sources whose simulated position lies within
  their ``RADEC_ERR`` (63 % for a calibrated 2-D Gaussian error);
* SR **flat background** (``--flat-levels 1,2,3``, ``--flat-only`` for just this): the
  issue's case, source-free frames of a flat, unvignetted background at multiples of the
  simulator's nominal level; brightest 20" aperture of POINTS per frame, the share of the input
  counts kept in DIFFUSE, and listed sources.

Prints tables; numbers for the model card.
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
from xmm_enhance.detector import detector_mask, fov_mask, pn_grid  # noqa: E402
from xmm_enhance.simulate.instrument import simulate_observation  # noqa: E402
from xmm_enhance.detector import AXIS_PIXEL  # noqa: E402

TOL_COUNTS = 1e-3
#: Truth (counts at the input exposure) from which a pixel counts in the "pixels > 0" column.
POS_COUNTS = 0.01
#: Bins of the predicted counts per pixel (at the input exposure) for the "pixels by drawn
#: counts" line: coverage given what the model drew.
DRAWN_BINS = (0.0, 0.003, 0.01, 0.1, 1.0, 10.0, np.inf)


def _aperture_grid(fov, radius_px, step_px):
    cy = np.arange(radius_px, fov.shape[0] - radius_px, step_px)
    cx = np.arange(radius_px, fov.shape[1] - radius_px, step_px)
    return [(y, x) for y in cy for x in cx if fov[y, x]]


def _disc(radius_px):
    r = int(np.ceil(radius_px))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return yy[(yy ** 2 + xx ** 2) <= radius_px ** 2], xx[(yy ** 2 + xx ** 2) <= radius_px ** 2]


def _aperture_sums(img, centres, disc):
    dy, dx = disc
    return np.array([img[y + dy, x + dx].sum() for y, x in centres])


def coverage(out, truth, fov, exposure, pixel_arcsec):
    """Pixel and 20" aperture coverage of [lo68, hi68] for one frame."""
    lo, hi, rate = out["lo68"], out["hi68"], out["rate"]
    tol = TOL_COUNTS / exposure
    inside = (truth >= lo - tol) & (truth <= hi + tol)
    pix = inside[fov]
    # pixels whose truth is not (nearly) zero: where the truth can be 0 (the SR target far from
    # any source or diffuse emission) the posterior has an atom at 0, the 16th percentile is 0
    # and a zero truth is always inside, so the all-pixel share exceeds 0.68 even when calibrated
    pos = inside[fov & (truth * exposure >= POS_COUNTS)]
    disc = _disc(20.0 / pixel_arcsec)
    centres = _aperture_grid(fov, int(np.ceil(20.0 / pixel_arcsec)), int(20.0 / pixel_arcsec))
    t = _aperture_sums(truth, centres, disc)
    slo, shi = _aperture_sums(lo, centres, disc), _aperture_sums(hi, centres, disc)
    m = _aperture_sums(rate, centres, disc)
    var_lo = _aperture_sums((rate - lo) ** 2, centres, disc)
    var_hi = _aperture_sums((hi - rate) ** 2, centres, disc)
    tol_a = tol * len(disc[0])
    sum_rule = (t >= slo - tol_a) & (t <= shi + tol_a)
    ind_rule = (t >= m - np.sqrt(var_lo) - tol_a) & (t <= m + np.sqrt(var_hi) + tol_a)
    # the scale c of the summed half-widths that this aperture needs: |t - m| / (sum of the
    # pixels' half-widths on t's side)
    need = np.where(t < m, (m - t) / np.maximum(m - slo, 1e-30),
                    (t - m) / np.maximum(shi - m, 1e-30))
    need = np.where(np.abs(t - m) <= tol_a, 0.0, need)
    return pix, sum_rule, ind_rule, need, pos


def drawn_line(drawn):
    """Pixel coverage in bins of the predicted counts per pixel: over all pixels of the bin /
    over its pixels with emission (truth >= POS_COUNTS), and that share. Binning by the
    prediction asks what an interval means given what the model drew; the "pixels>0" column
    bins by the truth."""
    c, a, e = (np.concatenate([d[j] for d in drawn]) for j in range(3))
    parts = []
    for lo, hi in zip(DRAWN_BINS[:-1], DRAWN_BINS[1:]):
        k = (c >= lo) & (c < hi)
        if k.sum() >= 100:
            ke = k & e
            emis = f"{a[ke].mean():.2f}" if ke.sum() >= 100 else "-"
            parts.append(f"{lo:g}-{hi:g} {a[k].mean():.2f}/{emis} ({e[k].mean():.2f})")
    return "pixels by drawn counts (all / with emission (share with emission)): " + ", ".join(parts)


def point_fluxes(out, truth, diffuse_truth, meta, exposure):
    """Counts in 20" apertures around each simulated point source: rows of (the points' truth,
    the POINTS map, the DIFFUSE map's excess over the diffuse truth: point flux leaked into it,
    and the diffuse truth)."""
    disc = _disc(10.0)  # 20" radius on the 2" grid
    dif_truth = np.minimum(diffuse_truth, truth)
    pts_truth = truth - dif_truth
    rows = []
    ny, nx = truth.shape
    for s in meta["sources"]:
        y, x = s["y2"], s["x2"]
        if s["piled"] or not (10 <= y < ny - 10 and 10 <= x < nx - 10):
            continue
        ys, xs = y + disc[0], x + disc[1]
        rows.append((pts_truth[ys, xs].sum() * exposure, out["points"][ys, xs].sum() * exposure,
                     (out["diffuse"][ys, xs] - dif_truth[ys, xs]).sum() * exposure,
                     dif_truth[ys, xs].sum() * exposure))
    return rows


#: Faint-source flux (issue 13's bar, on simulations): true sources with this many counts in
#: 20" at the input exposure, by bin.
FAINT_BINS = ((20.0, 40.0), (40.0, 100.0), (100.0, 200.0), (20.0, 200.0))


def faint_fluxes(out, obs, exposure):
    """Rows ``(true counts, SR over true, listed)`` for the simulated point sources of 20-200
    counts at ``exposure`` within 20" of the noise-free SR target: the SR primary's 20" net
    counts over the target's, both over their 60-90" annulus (``bench_exposure``'s faint-source
    measure, with the truth in place of the full exposure); listed: a ``SOURCES`` entry within
    8"."""
    m2 = np.repeat(np.repeat(obs.mask, 2, 0), 2, 1)
    p, t = out["rate"] * exposure, obs.sr_target * exposure
    ny, nx = m2.shape
    rows = []
    for d in obs.meta["sources"]:
        y2, x2 = int(d["y2"]), int(d["x2"])
        if d["piled"] or not (20 <= y2 < ny - 20 and 20 <= x2 < nx - 20) or not m2[y2, x2]:
            continue
        ft = ev.aperture_flux(t, y2, x2, 10.0, background=ev._annulus_mean(t, m2, y2, x2, 30, 45))
        if not FAINT_BINS[-1][0] <= ft <= FAINT_BINS[-1][1]:
            continue
        fp = ev.aperture_flux(p, y2, x2, 10.0, background=ev._annulus_mean(p, m2, y2, x2, 30, 45))
        listed = any(np.hypot(y2 - e["y2"], x2 - e["x2"]) <= 4 for e in out.get("sources", []))
        rows.append((ft, fp / ft, listed))
    return rows


def source_list_scores(counts, mask, listed, out, exposure, positions=None, min_signif=None):
    """(found, listed) per count threshold and (false, entries) of the default source list.

    ``listed``: simulated point sources ``(y, x, counts at exposure)`` down to 5 counts (the
    simulator draws each at the centre of its 2" pixel, and ``y``, ``x`` are that centre).
    ``positions``, a list, gets ``(offset, RADEC_ERR)`` (arcsec) of every entry within 2 pixels
    of a simulated source (the nearest one).
    """
    fov1 = fov_mask()
    # the pipeline's own list (--pipeline), else the list made as the CLI makes it
    found = out["sources"] if "sources" in out else S.detect_sources(
        counts, mask, exposure, out["points"], diffuse2=out["diffuse"], axis=AXIS_PIXEL,
        sky=fov1, min_signif=S.DEFAULT_MIN_SIGNIF if min_signif is None else min_signif)
    ny, nx = fov1.shape
    inside = [t for t in listed if 0 <= round(t[0]) < ny and 0 <= round(t[1]) < nx
              and fov1[int(round(t[0])), int(round(t[1]))]]
    res = {}
    for cmin in (20.0, 50.0):
        want = [t for t in inside if t[2] >= cmin]
        hit = sum(any(np.hypot(d["y"] - t[0], d["x"] - t[1]) <= 2.0 for d in found)
                  for t in want)
        res[cmin] = (hit, len(want))
    false = sum(not any(np.hypot(d["y"] - t[0], d["x"] - t[1]) <= 2.0 for t in listed)
                for d in found)
    if positions is not None and listed:
        for d in found:
            r = min(np.hypot(d["y"] - t[0], d["x"] - t[1]) for t in listed)
            if r <= 2.0 and "radec_err" in d:
                positions.append((r * 4.0, d["radec_err"]))
    return res, (false, len(found))


def _scale_at(value, slope, exposure):
    """A calibration scale at ``exposure`` (s): ``value + slope log10(exposure / 20 ks)``, as
    the models' metadata ``*_interval_slope`` define it."""
    return max(0.05, value + slope * np.log10(exposure / 20e3))


def widened(out, s):
    """``out`` with its [lo68, hi68] widened by ``s`` in log space about the rate."""
    rate = np.maximum(out["rate"], 1e-30)
    return {**out, "lo68": rate * (np.clip(out["lo68"] / rate, 1e-30, 1.0) ** s),
            "hi68": rate * (np.maximum(out["hi68"] / rate, 1.0) ** s)}


def run(dn, sr, frames, exposures, seed, aperture_scale=None, pixel_scales=(), pipeline=False,
        aperture_slope=None, min_signif=None):
    """Print the tables; returns {task: the aperture scale c covering 68 % over all exposures}.

    ``aperture_scale``: {task: c} to check (coverage of m -+ c x summed half-widths), with
    ``aperture_slope`` {task: its change per decade of exposure about 20 ks} as the model's
    metadata ``aperture_interval_slope`` states it (coverage per exposure and over all);
    ``pixel_scales``: log-space widenings whose pixel coverage is printed too; ``min_signif``:
    the SR source list's threshold (default the command line's)."""
    fov1, fov2 = fov_mask(), fov_mask(pn_grid(scale=2))
    all_needs, all_cover = {}, {}
    for task, path in (("DN", dn), ("SR", sr)):
        if not path:
            continue
        predict = (ev.pipeline_predictor(path, task, all_outputs=True, min_signif=min_signif)
                   if pipeline else ev.onnx_predictor(path, all_outputs=True))
        print(f"\n{task} {Path(path).name}: held-out simulations, seeds [{seed}, i], "
              f"{frames} frames per exposure")
        print("exposure    pixels  pixels>0  20in sum  20in ind"
              + ("   points%  diffuse%  bright: points% diffuse%  flat max  compl>=20  compl>=50"
                 "  false" if task == "SR"
                 else ""))
        for T in exposures:
            pix, srule, irule, needs, pos = [], [], [], [], []
            by_kind = {}  # field kind: [pixels > 0 inside, their number, frames]
            drawn = []  # (predicted counts, inside, truth has emission) of the fov pixels
            wide = {w: ([], [], []) for w in pixel_scales}
            prow = []
            flat_max = 0.0
            comp = {20.0: [0, 0], 50.0: [0, 0]}
            fal = [0, 0]
            posr = []  # (offset, RADEC_ERR) of the listed sources, arcsec
            faint = []  # faint_fluxes rows (pipeline only)
            for i in range(frames):
                rng = np.random.default_rng([seed, int(T), i])
                # simulated at 8 T so that its source list reaches 5 counts at T; the input
                # counts are drawn at T
                obs = simulate_observation(rng, exposure=8 * T, sr=task == "SR",
                                           decompose=task == "SR")
                counts = rng.poisson(obs.dn_target.astype(np.float64) * T).astype(np.float32)
                listed = [(d["y"], d["x"], d["counts"] / 8.0) for d in obs.meta["sources"]
                          if not d["piled"]]
                out = predict(counts / T, obs.mask, T)
                if task == "DN":
                    truth, fov, px = obs.dn_target, fov1 & obs.mask, 4.0
                else:
                    truth, fov, px = obs.sr_target, fov2 & np.repeat(np.repeat(obs.mask, 2, 0),
                                                                     2, 1), 2.0
                a, b, c, nd, ap = coverage(out, truth, fov, T, px)
                drawn.append((out["rate"][fov] * T, a, truth[fov] * T >= POS_COUNTS))
                k_ = by_kind.setdefault(obs.meta.get("kind", "?"), [0, 0, 0])
                k_[0] += int(ap.sum())
                k_[1] += ap.size
                k_[2] += 1
                for w in pixel_scales:
                    wa, _, _, wn, wp = coverage(widened(out, w), truth, fov, T, px)
                    wide[w][0].append(wa)
                    wide[w][1].append(wp)
                    wide[w][2].append(wn)
                if task == "SR":
                    prow += point_fluxes(out, obs.sr_target, obs.sr_diffuse, obs.meta, T)
                    r, f = source_list_scores(counts, obs.mask, listed, out, T, posr,
                                              min_signif)
                    for k in comp:
                        comp[k][0] += r[k][0]
                        comp[k][1] += r[k][1]
                    fal[0] += f[0]
                    fal[1] += f[1]
                    if "sources" in out:
                        faint += faint_fluxes(out, obs, T)
                    if i < max(2, frames // 4):  # source-free frames: the POINTS map's peak
                        e = simulate_observation(np.random.default_rng([seed, int(T), i, 7]),
                                                 exposure=T, sr=True, sources=False)
                        oe = predict(e.counts / T, e.mask, T)
                        flat_max = max(flat_max, ev.max_aperture_counts(
                            oe["points"] * fov2, exposure=T))
                needs.append(nd)
                pix.append(a)
                pos.append(ap)
                srule.append(b)
                irule.append(c)
            nd = np.concatenate(needs)
            c68 = float(np.quantile(nd, 0.68))
            all_needs.setdefault(task, []).append(nd)
            if aperture_scale and task in aperture_scale:
                c_t = _scale_at(aperture_scale[task], (aperture_slope or {}).get(task, 0.0), T)
                all_cover.setdefault(task, []).append(nd <= c_t)
            line = (f"{T / 1e3:7.0f}ks {np.concatenate(pix).mean():8.3f} "
                    f"{np.concatenate(pos).mean():8.3f} "
                    f"{np.concatenate(srule).mean():8.3f} {np.concatenate(irule).mean():8.3f}"
                    f"  c68 {c68:5.2f}")
            if aperture_scale and task in aperture_scale:
                line += f" (c {c_t:.3f}: {np.mean(nd <= c_t):.3f})"
            if task == "SR":
                pr = np.array(prow).reshape(-1, 4)
                # sources of >= 100 counts within 20" at T that outshine the diffuse emission
                # there (on a bright cluster core the DIFFUSE excess is mostly the error of the
                # core's own estimate, not flux taken from the source)
                b = (pr[:, 0] >= 100.0) & (pr[:, 3] < pr[:, 0])
                tp, pp, dd, _ = pr.sum(0)
                tb, pb, db, _ = pr[b].sum(0)
                line += (f"   {100 * pp / max(tp, 1e-9):6.1f}   {100 * dd / max(tp, 1e-9):7.1f}"
                         f"   {100 * pb / max(tb, 1e-9):13.1f} {100 * db / max(tb, 1e-9):8.1f}"
                         f"  {flat_max:8.1f}"
                         f"  {comp[20.0][0]:4d}/{comp[20.0][1]:<4d} {comp[50.0][0]:4d}/"
                         f"{comp[50.0][1]:<4d} {fal[0]:3d}/{fal[1]}")
            print(line, flush=True)
            if task == "SR":
                # sources of 20-100 counts within 20" (most below the list's threshold): the
                # share POINTS keeps, which the release of unsupported points trades for the
                # flat-background case
                fa = (pr[:, 0] >= 20.0) & (pr[:, 0] < 100.0) & (pr[:, 3] < pr[:, 0])
                tf, pf, df, _ = pr[fa].sum(0)
                if posr:
                    pe = np.array(posr)
                    print(f"   SOURCES positions ({len(pe)} on a simulated source): within "
                          f"RADEC_ERR {np.mean(pe[:, 0] < pe[:, 1]):.3f} (a 2-D Gaussian: 0.632), "
                          f"median offset {np.median(pe[:, 0]):.2f}\" and RADEC_ERR "
                          f"{np.median(pe[:, 1]):.2f}\"", flush=True)
                if faint:
                    fr = np.array(faint, float)
                    parts = []
                    for lo, hi in FAINT_BINS:
                        b_ = (fr[:, 0] >= lo) & (fr[:, 0] < hi)
                        li, un = b_ & (fr[:, 2] > 0), b_ & (fr[:, 2] == 0)
                        med = [f"{np.median(fr[m, 1]):.3f}" if m.any() else "-"
                               for m in (b_, li, un)]
                        parts.append(f"{lo:g}-{hi:g} {med[0]} ({med[1]} / {med[2]}, "
                                     f"{int(li.sum())} / {int(un.sum())})")
                    print("   faint-source flux, SR primary over truth (20\" net), median by "
                          "true counts (listed / not listed, n): " + "; ".join(parts),
                          flush=True)
                print(f"   sources of 20-100 counts ({int(fa.sum())}): POINTS "
                      f"{100 * pf / max(tf, 1e-9):.1f} %, DIFFUSE {100 * df / max(tf, 1e-9):.1f} %",
                      flush=True)
            print("   " + drawn_line(drawn), flush=True)
            print("   pixels>0 by field kind: " + ", ".join(
                f"{k} {v[0] / max(v[1], 1):.3f} ({v[2]} fr, {v[1]} px)"
                for k, v in sorted(by_kind.items())), flush=True)
            for w in pixel_scales:
                print(f"   widened x{w:<4g} pixels {np.concatenate(wide[w][0]).mean():6.3f} "
                      f"pixels>0 {np.concatenate(wide[w][1]).mean():6.3f} "
                      f"20in c68 {np.quantile(np.concatenate(wide[w][2]), 0.68):5.2f}",
                      flush=True)
        nd = np.concatenate(all_needs[task])
        msg = f"  20\" apertures: c68 over all exposures {np.quantile(nd, 0.68):.3f}"
        if aperture_scale and task in aperture_scale:
            msg += (f"; coverage with c = {aperture_scale[task]:.3f} (slope "
                    f"{(aperture_slope or {}).get(task, 0.0):g}): "
                    f"{np.concatenate(all_cover[task]).mean():.3f}")
        print(msg)
    return {t: float(np.quantile(np.concatenate(v), 0.68)) for t, v in all_needs.items()}


def flat_background(sr, exposures, levels, frames, seed, pipeline=False, min_signif=None):
    """The issue-13 flat case: source-free frames of a flat, unvignetted background (``level``
    times the simulator's nominal particle + cosmic rate on every live detector pixel, Poisson
    counts at T). Prints, per exposure and level, the brightest 20" aperture of ``POINTS``
    in the FoV for each frame (bar: none above 10 counts), the share of the input's FoV counts
    that SR keeps in ``DIFFUSE`` (all of it is background) and the number of listed sources."""
    from xmm_enhance.simulate.instrument import COSMIC_RATE, PARTICLE_RATE

    predict = (ev.pipeline_predictor(sr, "SR", all_outputs=True, min_signif=min_signif)
               if pipeline else ev.onnx_predictor(sr, all_outputs=True))
    fov1 = fov_mask()
    fov2 = np.repeat(np.repeat(fov1, 2, 0), 2, 1)
    mask = detector_mask()
    unit = PARTICLE_RATE + COSMIC_RATE
    print(f"\nSR {Path(sr).name}: flat unvignetted background, {frames} source-free frames per "
          f"row (seeds [{seed}, T, level, i]); unit {unit:.3g} count/s per 4\" pixel")
    print("exposure  level  counts/px  POINTS max 20\" per frame         max   DIFFUSE/input  listed")
    for T in exposures:
        for lev in levels:
            rows = []
            for i in range(frames):
                rng = np.random.default_rng([seed, int(T), int(round(100 * lev)), i])
                counts = rng.poisson(unit * lev * T * mask).astype(np.float32)
                out = predict(counts / T, mask, T)
                pmax = ev.max_aperture_counts(out["points"] * fov2, exposure=T)
                kept = float((out["diffuse"] * fov2).sum() * T / max((counts * fov1).sum(), 1))
                rows.append((pmax, kept, len(out.get("sources", []))))
            r = np.array(rows)
            per = " ".join(f"{v:5.1f}" for v in r[:, 0])
            print(f"{T / 1e3:7.0f}ks {lev:6.2f} {unit * lev * T:9.2f}  {per:<30s} {r[:, 0].max():6.1f}"
                  f"   {r[:, 1].mean():12.3f}  {int(r[:, 2].sum()):6d}", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dn", default=None)
    ap.add_argument("--sr", default=None)
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--exposures", default="10,20,50,100", help="ks, comma-separated")
    ap.add_argument("--seed", type=int, default=424242)
    ap.add_argument("--aperture-scale", default=None,
                    help="DN,SR scales c of the summed half-widths to check (e.g. 0.4,0.3)")
    ap.add_argument("--aperture-slope", default=None,
                    help="DN,SR change of those scales per decade of exposure about 20 ks "
                         "(metadata aperture_interval_slope; default 0,0)")
    ap.add_argument("--pixel-scales", default="",
                    help="log-space interval widenings to print pixel coverage for (e.g. 1.2,1.4)")
    ap.add_argument("--pipeline", action="store_true",
                    help="the whole command-line pipeline (its masking; SR: its source list and "
                         "the listed sources redrawn) instead of the bare network")
    ap.add_argument("--flat-levels", default="",
                    help="SR: also the flat unvignetted background case at these multiples of "
                         "the nominal background (e.g. 1,2,3)")
    ap.add_argument("--flat-frames", type=int, default=4)
    ap.add_argument("--flat-only", action="store_true", help="only the flat case")
    ap.add_argument("--min-signif", type=float, default=None,
                    help="SR source list threshold, sigma (default: the command line's)")
    a = ap.parse_args(argv)
    exposures = [float(v) * 1e3 for v in a.exposures.split(",")]
    levels = [float(v) for v in a.flat_levels.split(",") if v.strip()]
    if not (a.dn or a.sr):
        ap.error("give --dn and/or --sr (the models to check)")
    if a.flat_only and not (levels and a.sr):
        ap.error("--flat-only needs --sr and --flat-levels")
    scale = None
    if a.aperture_scale:
        d, s_ = (float(v) for v in a.aperture_scale.split(","))
        scale = {"DN": d, "SR": s_}
    slope = None
    if a.aperture_slope:
        d, s_ = (float(v) for v in a.aperture_slope.split(","))
        slope = {"DN": d, "SR": s_}
    if not a.flat_only:
        run(a.dn, a.sr, a.frames, exposures, a.seed, scale,
            [float(v) for v in a.pixel_scales.split(",") if v.strip()], a.pipeline, slope,
            a.min_signif)
    if levels and a.sr:
        flat_background(a.sr, exposures, levels, a.flat_frames, a.seed, a.pipeline,
                        a.min_signif)
    return 0


if __name__ == "__main__":
    sys.exit(main())
