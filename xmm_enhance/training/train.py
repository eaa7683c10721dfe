"""Train the DN or SR network on the simulator; resumable; exports ONNX at the end.

Usage::

    python -m xmm_enhance.training.train --task DN --out models/ [--minutes 60] [--fresh]

* checkpoints every ``--ckpt-minutes`` (default 3) to ``<ckpt-dir>/<task>_last.pt`` (weights,
  optimiser, EMA weights, step, RNG state of the buffer, best validation score) and, when the EMA
  weights score best so far on the fixed simulated validation set, ``<task>_best.pt`` (EMA weights);
* starts from ``<task>_last.pt`` when it exists (``--fresh`` ignores it);
* logs to ``runs/<task>.log``;
* on the end of ``--minutes``/``--steps`` or on SIGTERM/SIGINT: final checkpoint, then the best EMA
  weights are exported to ``<out>/XMM-DeNoise.onnx`` or ``<out>/XMM-SuperRes.onnx``.

Checkpoints are chosen on simulated validation frames only (never on real data).
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import data as D
from .export import MODEL_NAMES, export_onnx, git_commit
from .losses import decomposition_loss, dn_loss, poisson_kl, quantile_loss, sr_loss
from .net import EnhanceNet, count_parameters

log = logging.getLogger("xmm_enhance.training")

RECIPE_VERSION = "1"
DEFAULTS = {
    "channels": (16, 32, 64, 96), "batch": 8, "crop": 128, "lr": 1e-3, "lr_min": 1e-4,
    "warmup": 200, "total_steps": 30000, "ema": 0.999, "buffer": 48, "refresh": 1,
    "val_frames": 24, "grad_clip": 1.0, "weight_decay": 1e-5, "exposure": 20e3,
    "dn_loss_exposure": 50e3, "source_crop_prob": {"DN": 0.0, "SR": 0.5},
    "sr_shape_weight": 2.0, "empty_frame_prob": {"DN": 0.0, "SR": 0.3}, "sr_refine": 32,
    "sr_position": True, "faint_source_share": {"DN": 0.0, "SR": 0.5}, "sr_align": True,
    # recipe 2 (issues 12 and 13): exposure-aware inputs, percentile maps, SR decomposition
    "expo_range": (5e3, 150e3), "uncertainty": True, "decompose": True,
    "quantile_weight": 1.0, "decompose_weight": 1.0, "decompose_point_weight": 2.0,
    "val_exposures": (10e3, 20e3, 50e3, 100e3),
    # session 8 (issue 12, SR at 50 ks): shape term weighted per crop by max(1, T_in/20 ks) ** p
    "sr_shape_expo_power": 1.0,
    # session 12 (issue 13, flat backgrounds): crops with an extra flat unvignetted background
    "flat_bkg_prob": {"DN": 0.0, "SR": 0.25}, "flat_bkg_range": (0.3, 4.0),
    # session 13: a share of those crops centred beyond 9' off axis, where the clumps stayed
    "flat_bkg_edge": 0.0,
    # session 18 (issue 13, faint sources on halos): extra sources tracing the light of
    # clusters and galaxies, and a share of the source crops centred on such sources
    "halo_points": {"DN": 0.0, "SR": 0.0}, "halo_source_share": {"DN": 0.0, "SR": 0.0},
}
#: Recipe keys that older checkpoints lack, with the value those checkpoints were trained with.
LEGACY = {"sr_refine": 0, "sr_position": False, "faint_source_share": 0.0, "sr_align": False,
          "expo_range": None, "uncertainty": False, "decompose": False, "val_exposures": None,
          "decompose_point_weight": 0.0, "sr_shape_expo_power": 0.0, "flat_bkg_prob": 0.0,
          "flat_bkg_edge": 0.0, "halo_points": 0.0, "halo_source_share": 0.0}


def recipe_version(cfg):
    """``"2"`` for exposure-aware networks, ``"1"`` for the fixed-20 ks ones."""
    return "2" if cfg.get("expo_range") else RECIPE_VERSION


def recipe_string(task, cfg):
    """One-line description of the training recipe (stored in the ONNX metadata)."""
    loss = ("crop-weighted expected Poisson deviance at 50 ks vs noise-free target" if task == "DN"
            else "crop-weighted expected Poisson deviance at 20 ks on the 2x target + 8\" "
                 "block-sum deviance (flux) + per-crop summed KL / (counts + 100) (shape), "
                 f"weight {cfg.get('sr_shape_weight')}"
                 + (f" x max(1, T_in/20 ks)^{cfg.get('sr_shape_expo_power'):g} per crop"
                    if cfg.get("sr_shape_expo_power") and cfg.get("expo_range") else ""))
    refine = int(cfg.get("sr_refine", 0)) if task == "SR" else 0
    net = f"U-Net {cfg['channels']}" + (f" + {refine}-channel sub-pixel refinement branch"
                                         if refine else "")
    pos = (" + position channels (theta^2, theta^2 cos/sin 2phi from the optical axis)"
           if _position(task, cfg) else "")
    faint = _per_task(cfg, "faint_source_share", task)
    align = (" Point sources (40-5000 counts) in the SR target sit at their maximum-likelihood "
             "2x pixel given each crop's counts (aligned targets)."
             if task == "SR" and cfg.get("sr_align") else "")
    extra = ""
    p_flat = _per_task(cfg, "flat_bkg_prob", task)
    f_lo, f_hi = cfg.get("flat_bkg_range", DEFAULTS["flat_bkg_range"])
    flat = (f" A share {p_flat:g} of the crops get an extra flat unvignetted background of "
            f"{f_lo:g}-{f_hi:g}x the nominal particle + cosmic level (background: not in the SR "
            "target)." if p_flat else "")
    if p_flat and cfg.get("flat_bkg_edge"):
        flat += (f" A share {cfg['flat_bkg_edge']:g} of those crops is centred beyond "
                 f"{D.FLAT_EDGE_THETA:g}' off axis.")
    n_halo = _per_task(cfg, "halo_points", task)
    p_halo = _per_task(cfg, "halo_source_share", task)
    if n_halo or p_halo:
        extra += (f" Frames get on average {n_halo:g} extra point sources tracing the light of "
                  f"clusters and galaxies; a share {p_halo:g} of the source crops is centred on "
                  f"a source of {D.HALO_COUNTS[0]:g}-{D.HALO_COUNTS[1]:g} counts whose diffuse "
                  f"surroundings hold >= {D.HALO_RATIO:g}x its counts.")
    if cfg.get("expo_range"):
        lo, hi = cfg["expo_range"]
        extra += (f" Exposure input (log10(T/20 ks) channel, counts = rate x T), crops drawn "
                  f"log-uniformly at {lo / 1e3:g}-{hi / 1e3:g} ks.")
    if cfg.get("uncertainty"):
        extra += (" 16th/84th-percentile head (pinball loss on sqrt counts, weight "
                  f"{cfg.get('quantile_weight')}).")
    if task == "SR" and cfg.get("decompose"):
        extra += (" Point-source fraction head: points/diffuse components trained on the "
                  f"simulator's split (deviance, weight {cfg.get('decompose_weight')}; "
                  "per-crop point-component KL / (point counts + 100), weight "
                  f"{cfg.get('decompose_point_weight', 0.0)}).")
    return (f"recipe v{recipe_version(cfg)}: {net} on sqrt/log-smoothed counts + mask{pos}, "
            f"log-residual on a mask-aware sigma-1.5 smoothing; loss {loss}; AdamW lr "
            f"{cfg['lr']} cosine to {cfg['lr_min']} over {cfg['total_steps']} steps, batch "
            f"{cfg['batch']}x{cfg['crop']}^2 crops, EMA {cfg['ema']}, fresh Poisson noise per crop,"
            f" flip augmentation, source-centred crops {cfg.get('source_crop_prob')} (share on "
            f"faint 40-200 count sources {faint:g}), source-free "
            f"frames {cfg.get('empty_frame_prob')}; checkpoint chosen on {cfg['val_frames']} "
            f"simulated validation frames.{align}{extra}{flat}")


def _position(task, cfg):
    return task == "SR" and bool(cfg.get("sr_position", False))


def _decompose(task, cfg):
    return task == "SR" and bool(cfg.get("decompose", False))


def make_net(task, cfg):
    """The network for ``task`` (DN: scale 1, SR: scale 2)."""
    return EnhanceNet(scale=2 if task == "SR" else 1, exposure=cfg["exposure"],
                      channels=tuple(cfg["channels"]), refine=int(cfg.get("sr_refine", 0)),
                      position=_position(task, cfg), exposure_input=bool(cfg.get("expo_range")),
                      uncertainty=bool(cfg.get("uncertainty")),
                      decompose=task == "SR" and bool(cfg.get("decompose")))


def load_widened(net, state, origin="checkpoint"):
    """Load ``state`` into ``net`` where the net has more input channels in some convolutions.

    Weights of the extra input channels (e.g. the position channels) are zeroed, so the widened
    network computes exactly what the checkpoint's did; layers the checkpoint lacks keep their
    own (zero-output) initialisation. Returns the names of those missing layers.
    """
    own = net.state_dict()
    state = dict(state)
    for k, v in list(state.items()):
        if k in own and own[k].shape != v.shape:
            w = own[k]
            if w.ndim == 4 and v.ndim == 4 and w.shape[0] == v.shape[0] \
                    and w.shape[2:] == v.shape[2:] and w.shape[1] > v.shape[1]:
                grown = torch.zeros_like(w)
                grown[:, :v.shape[1]] = v
                state[k] = grown
            else:
                raise ValueError(f"{origin}: weights {k} {tuple(v.shape)} do not fit this "
                                 f"network's {tuple(w.shape)}")
    missing, unexpected = net.load_state_dict(state, strict=False)
    if unexpected:
        raise ValueError(f"{origin}: weights {unexpected} do not fit this network")
    return missing


def checkpoint_cfg(st):
    """The recipe a checkpoint was trained with (keys it predates get their legacy values)."""
    return {**DEFAULTS, **LEGACY, **st.get("cfg", {})}


def predict_full(net, rate, mask, exposure=None, extra=False):
    """Run ``net`` on full 2-D frames (numpy), padding to its stride; returns the numpy rate, or
    with ``extra`` a dict of all the network's outputs. ``exposure``: input exposure (s)."""
    s = net.stride
    rp, (top, left) = D.pad_to_multiple(rate, s)
    mp, _ = D.pad_to_multiple(mask.astype(np.float32), s)
    expo = None if exposure is None else torch.tensor([float(exposure)])
    with torch.no_grad():
        out = net.outputs(torch.from_numpy(rp[None, None].astype(np.float32)),
                          torch.from_numpy(mp[None, None].astype(np.float32)), exposure=expo,
                          extra=extra)
    k = net.scale
    h, w = rate.shape
    out = {n: v[0, 0].numpy()[k * top:k * (top + h), k * left:k * (left + w)]
           for n, v in out.items()}
    return out if extra else out["rate"]


#: Counts (at the input exposure) by which a truth may lie outside [lo68, hi68] and still count
#: as inside: the maps are products of positive numbers, so where the truth is exactly zero (the
#: SR target far from any source) the lower bound can only approach it.
COVER_TOL_COUNTS = 1e-3


def coverage(lo, hi, truth, exposure):
    """Boolean map: ``truth`` inside ``[lo, hi]`` within ``COVER_TOL_COUNTS / exposure``."""
    tol = COVER_TOL_COUNTS / float(exposure)
    return (truth >= lo - tol) & (truth <= hi + tol)


def validate(net, frames, task, cfg):
    """Scores of ``net`` on the fixed simulated validation frames (lower ``val_score`` is better).

    ``val_dev``: mean over frames of the per-frame mean expected deviance ``2 KL(target, pred)``
    (DN: at ``dn_loss_exposure`` over the frame's mask, i.e. the expected held-out deviance minus
    its noise floor; SR: at 20 ks on the 2x grid). SR adds ``val_psnr`` (sqrt stretch) and
    ``val_shape`` (summed KL / (total expected counts + 100), the shape term of the loss), and
    selects on ``val_score = val_dev + sr_shape_weight * 2 val_shape``; DN selects on ``val_dev``.
    Recipe-2 networks also report ``val_cover`` (share of detector pixels whose truth lies in
    [lo68, hi68]; 0.68 is calibrated) and ``val_pin`` (the pinball loss, added to the score with
    ``quantile_weight``), and SR ``val_pt_in_diffuse`` (share of the point sources' flux in the
    diffuse component) and ``val_dec`` (the decomposition deviance, added with
    ``decompose_weight``).
    """
    from ..evaluation import SR_RATE_MAX, sqrt_psnr

    net.eval()
    devs, psnrs, shapes, covers, pins, decs, leak = [], [], [], [], [], [], []
    extra = bool(getattr(net, "uncertainty", False) or getattr(net, "decompose", False))
    for f in frames:
        rate = f.counts / f.exposure
        out = predict_full(net, rate, f.mask, exposure=f.exposure, extra=True)
        pred = out["rate"]
        if task == "DN":
            t, m, T = f.dn_target, f.mask, cfg["dn_loss_exposure"]
        else:
            t, m, T = f.sr_target, np.repeat(np.repeat(f.mask, 2, 0), 2, 1), cfg["exposure"]
            psnrs.append(sqrt_psnr(pred, t, rate_max=SR_RATE_MAX, select=m))
        lam = t.astype(np.float64) * T
        kl = poisson_kl(torch.from_numpy(lam), torch.from_numpy(pred.astype(np.float64) * T)).numpy()
        devs.append(float(2 * kl[m].mean()))
        shapes.append(float(kl[m].sum() / (lam[m].sum() + 100.0)))
        if not extra:
            continue
        mt = torch.from_numpy(m[None, None].astype(np.float32))
        tt = torch.from_numpy(t[None, None].astype(np.float32))
        if "lo68" in out:
            lo, hi = out["lo68"], out["hi68"]
            covers.append(float(coverage(lo, hi, t, f.exposure)[m].mean()))
            pins.append(float(quantile_loss(torch.from_numpy(lo[None, None]),
                                            torch.from_numpy(hi[None, None]), tt, mt,
                                            exposure=cfg["exposure"])))
        if "points" in out and f.sr_diffuse is not None:
            dt = np.minimum(f.sr_diffuse, t)
            pt = t - dt
            decs.append(float(decomposition_loss(
                torch.from_numpy(out["points"][None, None]),
                torch.from_numpy(out["diffuse"][None, None]),
                torch.from_numpy(pt[None, None]), torch.from_numpy(dt[None, None]), mt,
                exposure=cfg["exposure"])))
            if pt[m].sum() > 0:
                # share of the points' target flux the diffuse map carries where points dominate
                where = m & (pt > dt)
                leak.append(float(out["diffuse"][where].sum() / max(pred[where].sum(), 1e-12)))
    net.train()
    out = {"val_dev": float(np.mean(devs))}
    out["val_score"] = out["val_dev"]
    if psnrs:
        out["val_psnr"] = float(np.mean(psnrs))
        out["val_shape"] = float(np.mean(shapes))
        out["val_score"] = out["val_dev"] + cfg.get("sr_shape_weight", 0.0) * 2 * out["val_shape"]
    if covers:
        out["val_cover"] = float(np.mean(covers))
        out["val_pin"] = float(np.mean(pins))
        out["val_score"] += cfg.get("quantile_weight", 0.0) * out["val_pin"]
    if decs:
        out["val_dec"] = float(np.mean(decs))
        out["val_pt_in_diffuse"] = float(np.mean(leak)) if leak else 0.0
        out["val_score"] += cfg.get("decompose_weight", 0.0) * out["val_dec"]
    return out


def _lr(step, cfg):
    if step < cfg["warmup"]:
        return cfg["lr"] * (step + 1) / cfg["warmup"]
    p = min(1.0, (step - cfg["warmup"]) / max(1, cfg["total_steps"] - cfg["warmup"]))
    return cfg["lr_min"] + 0.5 * (cfg["lr"] - cfg["lr_min"]) * (1 + math.cos(math.pi * p))


def _per_task(cfg, key, task):
    """``cfg[key]``: a number, or a {task: number} dict (0 for a task it does not name)."""
    v = cfg.get(key, 0.0)
    return float(v.get(task, 0.0) if isinstance(v, dict) else v)


def _save(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or of another network (one line)."""


def load_checkpoint(path, what: str = "checkpoint") -> dict:
    """``torch.load`` of a training checkpoint, or :class:`CheckpointError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such {what}")
    try:
        st = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises RuntimeError, ValueError, UnpicklingError...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise CheckpointError(f"{path}: not a readable {what} ({first}); restore it from git "
                              "(git checkout models/checkpoints) or pass another one") from None
    if not isinstance(st, dict) or "ema" not in st:
        raise CheckpointError(f"{path}: not a training {what} of this project (no EMA weights)")
    return st


def _load_weights(module, state, path, key) -> None:
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise CheckpointError(f"{path}: its {key} weights do not fit this network ({first}); "
                              "is it the other task's checkpoint?") from None


def export_task(task, cfg, ckpt_dir, out_dir, *, extra_metrics=None, which="best",
                interval_scale=1.0, interval_slope=0.0):
    """Export the ``best`` (or ``last`` EMA) weights of ``task`` to ``out_dir``; returns the path.

    ``interval_scale``: widen the percentile maps about the rate by this factor in log space
    (a calibration chosen on simulations, ``bench_calibration.py --pixel-scales``); stored as
    the metadata ``pixel_interval_scale``; ``interval_slope``: its change per decade of input
    exposure about 20 ks (metadata ``pixel_interval_slope``)."""
    ckpt_dir = Path(ckpt_dir)
    src = ckpt_dir / f"{task}_{which}.pt"
    st = load_checkpoint(src)
    cfg = {**cfg, **LEGACY, **st.get("cfg", {})}
    net = make_net(task, cfg)
    _load_weights(net, st["ema"], src, "EMA")
    net.interval_scale = float(interval_scale)
    net.interval_slope = float(interval_slope)
    from ..simulate.instrument import SIM_VERSION

    metrics = {"simulated_validation": st.get("val", {}), "step": st.get("step")}
    if extra_metrics:
        metrics.update(extra_metrics)
    scale = net.scale
    if cfg.get("expo_range"):
        lo, hi = cfg["expo_range"]
        in_expo = f"{lo / 1e3:g}-{hi / 1e3:g}"
        dn_target = "inf (noise-free expected rate incl. background)"
    else:
        in_expo, dn_target = f"{cfg['exposure'] / 1e3:g}", "50"
    meta = {
        "task": task, "scale": str(scale), "input_exposure_ks": in_expo,
        "target_exposure_ks": dn_target if task == "DN" else "inf (noise-free, background-free)",
        "input_pixel_arcsec": "4", "output_pixel_arcsec": "4" if scale == 1 else "2",
        "band_kev": "0.5-2", "version": f"{recipe_version(cfg)}.{st.get('step', 0)}",
        "training_recipe": recipe_string(task, cfg), "training_commit": st.get("commit", "unknown"),
        "simulator_version": st.get("sim_version", SIM_VERSION), "metrics": metrics,
        "stride": str(net.stride),
    }
    if getattr(net, "uncertainty", False):
        meta["pixel_interval_scale"] = f"{float(interval_scale):g}"
        meta["pixel_interval_slope"] = f"{float(interval_slope):g}"
    return export_onnx(net, Path(out_dir) / MODEL_NAMES[task], metadata=meta)


def train(task, *, out="models", ckpt_dir="models/checkpoints", minutes=None, steps=None,
          fresh=False, ckpt_minutes=3.0, sim="instrument", cfg_overrides=None, seed=None,
          export=True, log_dir="runs", snapshots=False, init_from=None):
    """Train ``task`` (``"DN"`` or ``"SR"``); see the module docstring. Returns the last val dict.

    ``init_from``: a checkpoint whose EMA weights start a run that has no ``<task>_last.pt`` yet
    (or ``fresh``); layers that checkpoint lacks (e.g. the SR refinement branch) keep their
    zero-output initialisation, and the optimiser and schedule start anew.
    """
    if task not in ("DN", "SR"):
        raise ValueError(f"task must be 'DN' or 'SR', got {task!r}")
    cfg = {**DEFAULTS, **(cfg_overrides or {})}
    ckpt_dir = Path(ckpt_dir)
    last_path, best_path = ckpt_dir / f"{task}_last.pt", ckpt_dir / f"{task}_best.pt"
    simulate = D.simulator(sim)
    sim_version = "toy"
    if sim == "instrument":
        from ..simulate.instrument import SIM_VERSION as sim_version

    st = None
    if last_path.exists() and not fresh:
        st = load_checkpoint(last_path)
        if not all(k in st for k in ("model", "opt", "step")):
            raise CheckpointError(f"{last_path}: holds EMA weights only (a *_best.pt or "
                                  "*_ema<step>.pt), no model and optimiser state to resume; to "
                                  "start a run from it, pass --fresh --init-from FILE")
        # the checkpoint's recipe wins, except what the caller overrides explicitly
        was = checkpoint_cfg(st)
        cfg = {**was, **(cfg_overrides or {})}
        # recipe changes after the checkpoint was written: today's defaults unless overridden
        for k in ("source_crop_prob", "sr_shape_weight", "empty_frame_prob",
                  "faint_source_share", "decompose_point_weight", "sr_shape_expo_power",
                  "flat_bkg_prob", "flat_bkg_edge"):
            new = DEFAULTS[k] if k not in (cfg_overrides or {}) else cfg[k]
            if k in was and was[k] != new:
                log.warning("resume: %s is %s (the checkpoint's run had %s); repeat its flag "
                            "to keep the run's recipe", k, new, was[k])
            cfg[k] = new
    net = make_net(task, cfg)
    ema = copy.deepcopy(net)
    for p in ema.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    step, best, commit = 0, float("inf"), git_commit()
    rng_state = None
    if st is not None:
        _load_weights(net, st["model"], last_path, "model")
        _load_weights(ema, st["ema"], last_path, "EMA")
        opt.load_state_dict(st["opt"])
        step, best = int(st["step"]), float(st.get("best", float("inf")))
        rng_state = st.get("rng")
        commit = st.get("commit", commit)
        log.info("resumed %s at step %d (best val %.4f)", last_path, step, best)
        if st.get("sim_version") != sim_version or "val_score" not in st.get("val", {}):
            # a new simulator (or score) means old scores are not comparable
            log.info("simulator %s -> %s / new validation score: best score reset",
                     st.get("sim_version"), sim_version)
            best = float("inf")
    elif init_from:
        # warm start: another run's EMA weights; layers it lacks keep their (zero-output) init
        src = load_checkpoint(init_from, "checkpoint (--init-from)")
        try:
            missing = load_widened(net, src["ema"], init_from)
        except ValueError as exc:
            raise CheckpointError(f"{exc}; is it the other task's checkpoint? pass one of "
                                  f"--task {task}") from None
        ema.load_state_dict(net.state_dict())
        log.info("warm start from %s (step %d); new layers: %s", init_from,
                 int(src.get("step", 0)), sorted({k.split(".")[0] for k in missing}))
    else:
        log.info("fresh start: %s, %d parameters, simulator %s", task, count_parameters(net),
                 sim_version)
    rng = np.random.default_rng(seed if seed is not None else [20261128, step])
    if rng_state is not None:
        rng.bit_generator.state = rng_state
    buf = D.FrameBuffer(simulate, rng, task=task, size=cfg["buffer"], exposure=cfg["exposure"],
                        source_crop_prob=_per_task(cfg, "source_crop_prob", task),
                        empty_frame_prob=_per_task(cfg, "empty_frame_prob", task),
                        faint_source_share=_per_task(cfg, "faint_source_share", task),
                        position=_position(task, cfg), align=bool(cfg.get("sr_align")),
                        expo_range=cfg.get("expo_range"), decompose=_decompose(task, cfg),
                        flat_bkg_prob=_per_task(cfg, "flat_bkg_prob", task),
                        flat_bkg_range=cfg["flat_bkg_range"],
                        flat_bkg_edge=cfg.get("flat_bkg_edge", 0.0),
                        halo_points=_per_task(cfg, "halo_points", task),
                        halo_source_share=_per_task(cfg, "halo_source_share", task))
    val_frames = D.validation_frames(simulate, n=cfg["val_frames"], task=task,
                                     exposure=cfg["exposure"], align=bool(cfg.get("sr_align")),
                                     exposures=cfg.get("val_exposures") if cfg.get("expo_range")
                                     else None, decompose=_decompose(task, cfg))
    if step == 0:
        v0 = validate(ema, val_frames, task, cfg)
        log.info("step 0 (%s) val %s", "warm start" if init_from else "sigma-1.5 smoothing baseline",
                 json.dumps(v0))

    stop = {"flag": False}

    def _handler(signum, _frame):
        log.info("signal %d: stopping after this step", signum)
        stop["flag"] = True

    old = {s: signal.signal(s, _handler) for s in (signal.SIGTERM, signal.SIGINT)}
    t_start = time.time()
    t_ckpt = time.time()
    losses, t_log = [], time.time()
    last_val = {}

    def checkpoint():
        nonlocal best, last_val
        last_val = validate(ema, val_frames, task, cfg)
        improved = last_val["val_score"] < best
        ema_ckpt = {"ema": ema.state_dict(), "step": step, "val": last_val, "cfg": cfg,
                    "commit": commit, "sim_version": sim_version}
        if improved:
            best = last_val["val_score"]
            _save(best_path, ema_ckpt)
        _save(last_path, {**ema_ckpt, "model": net.state_dict(), "opt": opt.state_dict(),
                          "best": best, "rng": rng.bit_generator.state})
        if snapshots:  # EMA weights of every checkpoint, to compare on simulations later
            _save(ckpt_dir / f"{task}_ema{step}.pt", ema_ckpt)
        log.info("checkpoint step %d val %s%s", step, json.dumps(last_val),
                 " (best)" if improved else "")

    lossf = dn_loss if task == "DN" else sr_loss
    try:
        while not stop["flag"]:
            if minutes is not None and time.time() - t_start > 60 * minutes:
                break
            if steps is not None and step >= steps:
                break
            for g in opt.param_groups:
                g["lr"] = _lr(step, cfg)
            buf.refresh(cfg["refresh"])
            b = {k: torch.from_numpy(a) for k, a in buf.sample_dict(cfg["batch"],
                                                                    cfg["crop"]).items()}
            target, tmask = b["target"], b["tmask"]
            outs = net.outputs(b["rate"], b["mask"], pos=b.get("pos"), exposure=b["exposure"])
            pred = outs["rate"]
            if task == "DN":
                loss = lossf(pred, target, tmask, exposure=cfg["dn_loss_exposure"])
            else:
                p = cfg.get("sr_shape_expo_power", 0.0)
                scale = (torch.clamp(b["exposure"] / cfg["exposure"], min=1.0) ** p
                         if p and "exposure" in b else None)
                loss = lossf(pred, target, tmask, exposure=cfg["exposure"],
                             shape_weight=cfg.get("sr_shape_weight", 0.0), shape_scale=scale)
            if "lo68" in outs:
                loss = loss + cfg.get("quantile_weight", 1.0) * quantile_loss(
                    outs["lo68"], outs["hi68"], target, tmask, exposure=cfg["exposure"])
            if "points" in outs:
                loss = loss + cfg.get("decompose_weight", 1.0) * decomposition_loss(
                    outs["points"], outs["diffuse"], target - b["diffuse"], b["diffuse"], tmask,
                    exposure=cfg["exposure"],
                    point_weight=cfg.get("decompose_point_weight", 0.0))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg["grad_clip"])
            opt.step()
            step += 1
            with torch.no_grad():
                d = min(cfg["ema"], (1 + step) / (10 + step))
                for pe, p in zip(ema.parameters(), net.parameters()):
                    pe.mul_(d).add_(p.detach(), alpha=1 - d)
            losses.append(float(loss.detach()))
            if step % 50 == 0:
                dt = time.time() - t_log
                log.info("step %d loss %.4f lr %.2e %.2f s/step", step, float(np.mean(losses)),
                         _lr(step, cfg), dt / len(losses))
                losses, t_log = [], time.time()
            if time.time() - t_ckpt > 60 * ckpt_minutes:
                checkpoint()
                t_ckpt = time.time()
        checkpoint()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if export:
        path = export_task(task, cfg, ckpt_dir, out)
        log.info("exported %s", path)
    return last_val


def main(argv=None):
    """Command line entry point; returns the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=("DN", "SR"), required=True)
    ap.add_argument("--out", default="runs/export",
                    help="folder of the exported ONNX file (default runs/export; the bundled "
                         "models in models/ are replaced only when it is given)")
    ap.add_argument("--ckpt-dir", default="models/checkpoints")
    ap.add_argument("--log-dir", default="runs")
    ap.add_argument("--resume", action="store_true", default=True,
                    help="resume from <ckpt-dir>/<task>_last.pt if present (default)")
    ap.add_argument("--fresh", action="store_true", help="ignore existing checkpoints")
    ap.add_argument("--minutes", type=float, default=None, help="wall-clock budget")
    ap.add_argument("--steps", type=int, default=None, help="stop at this global step")
    ap.add_argument("--ckpt-minutes", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--total-steps", type=int, default=None,
                    help="length of the cosine learning-rate schedule (default %d)"
                    % DEFAULTS["total_steps"])
    ap.add_argument("--shape-weight", type=float, default=None,
                    help="SR shape-term weight (default %g)" % DEFAULTS["sr_shape_weight"])
    ap.add_argument("--empty-frames", type=float, default=None,
                    help="probability of a source-free training frame (default %s)"
                    % DEFAULTS["empty_frame_prob"])
    ap.add_argument("--source-crops", type=float, default=None,
                    help="probability of a crop centred on a bright point source (default %s)"
                    % DEFAULTS["source_crop_prob"])
    ap.add_argument("--refine", type=int, default=None,
                    help="SR sub-pixel refinement-branch channels (default %d; 0: none)"
                    % DEFAULTS["sr_refine"])
    ap.add_argument("--position", type=int, choices=(0, 1), default=None,
                    help="SR position channels (default %d)" % DEFAULTS["sr_position"])
    ap.add_argument("--align", type=int, choices=(0, 1), default=None,
                    help="SR targets with point sources at their most likely position given the "
                         "counts (default %d)" % DEFAULTS["sr_align"])
    ap.add_argument("--faint-share", type=float, default=None,
                    help="share of source-centred crops on faint (40-200 count) sources "
                         "(default %s)" % DEFAULTS["faint_source_share"])
    ap.add_argument("--expo-range", default=None,
                    help="input exposures of the training crops, LO,HI in ks, drawn "
                         "log-uniformly; 0: the fixed 20 ks of recipe 1 (default %s)"
                         % ",".join(f"{v / 1e3:g}" for v in DEFAULTS["expo_range"]))
    ap.add_argument("--uncertainty", type=int, choices=(0, 1), default=None,
                    help="16th/84th-percentile head (default %d)" % DEFAULTS["uncertainty"])
    ap.add_argument("--shape-expo-power", type=float, default=None,
                    help="SR shape term weighted per crop by max(1, T_in / 20 ks) ** P "
                    "(default %g)"
                    % DEFAULTS["sr_shape_expo_power"])
    ap.add_argument("--decompose-point-weight", type=float, default=None,
                    help="SR per-crop point-component term weight (default %g)"
                         % DEFAULTS["decompose_point_weight"])
    ap.add_argument("--decompose", type=int, choices=(0, 1), default=None,
                    help="SR point/diffuse head (default %d)" % DEFAULTS["decompose"])
    ap.add_argument("--flat-bkg", type=float, default=None,
                    help="share of SR crops with an extra flat unvignetted background (default "
                         "%g)" % DEFAULTS["flat_bkg_prob"]["SR"])
    ap.add_argument("--flat-bkg-range", default=None,
                    help="LO,HI: that extra background's level in units of the nominal "
                         "particle + cosmic rate (default %g,%g)" % DEFAULTS["flat_bkg_range"])
    ap.add_argument("--flat-bkg-edge", type=float, default=None,
                    help="share of those crops centred beyond %g' off axis (default %g)"
                         % (D.FLAT_EDGE_THETA, DEFAULTS["flat_bkg_edge"]))
    ap.add_argument("--halo-points", type=float, default=None,
                    help="SR: mean number of extra sources per frame tracing the light of "
                         "clusters and galaxies (default 0)")
    ap.add_argument("--halo-share", type=float, default=None,
                    help="SR: share of the source crops centred on a faint source on a halo "
                         "(default 0)")
    ap.add_argument("--lr", type=float, default=None, help="peak learning rate (default %g)"
                    % DEFAULTS["lr"])
    ap.add_argument("--lr-min", type=float, default=None,
                    help="final learning rate of the cosine (default %g)" % DEFAULTS["lr_min"])
    ap.add_argument("--init-from", default=None,
                    help="warm start from this checkpoint's EMA weights (new run only)")
    ap.add_argument("--sim", choices=("instrument", "toy"), default="instrument")
    ap.add_argument("--no-export", action="store_true")
    ap.add_argument("--snapshots", action="store_true",
                    help="also keep the EMA weights of every checkpoint as <task>_ema<step>.pt "
                         "(export one with --export-only --which ema<step>)")
    ap.add_argument("--which", default="best",
                    help="checkpoint exported by --export-only: best, last or ema<step>")
    ap.add_argument("--interval-scale", type=float, default=1.0,
                    help="with --export-only: widen LO68/HI68 about the rate by this factor in "
                    "log space (calibration chosen on simulations; default 1)")
    ap.add_argument("--interval-slope", type=float, default=0.0,
                    help="with --export-only: change of --interval-scale per decade of input "
                    "exposure about 20 ks (default 0: the same at every exposure)")
    ap.add_argument("--export-only", action="store_true",
                    help="export the checkpoint --which names and exit")
    ap.add_argument("--overwrite-checkpoints", action="store_true",
                    help="let a run (--fresh or a resume) write the committed checkpoints "
                         "in models/checkpoints")
    a = ap.parse_args(argv)
    if a.threads < 1:
        ap.error(f"--threads {a.threads}: must be >= 1")
    ckpt, last = Path(a.ckpt_dir), Path(a.ckpt_dir) / f"{a.task}_last.pt"
    if a.export_only:
        if not (ckpt / f"{a.task}_{a.which}.pt").is_file():
            ap.error(f"--which {a.which}: no {ckpt / f'{a.task}_{a.which}.pt'}; pass best, last "
                     "or ema<step> of a checkpoint that --ckpt-dir holds")
    elif a.fresh:
        committed = ckpt.resolve() == (Path(__file__).resolve().parents[2] / "models"
                                       / "checkpoints")
        if committed and not a.overwrite_checkpoints and any(
                (ckpt / f"{a.task}_{w}.pt").exists() for w in ("last", "best")):
            ap.error(f"--fresh would replace the committed {a.task} checkpoints in {ckpt}; pass "
                     "another --ckpt-dir (e.g. runs/checkpoints), or --overwrite-checkpoints")
    elif ckpt.resolve() == (Path(__file__).resolve().parents[2] / "models" / "checkpoints") \
            and not a.overwrite_checkpoints:
        ap.error(f"resuming in {ckpt} would rewrite the committed {a.task} checkpoints (its "
                 f"{a.task}_best.pt is the bundled model's weights); copy the folder "
                 "(cp -r models/checkpoints runs/checkpoints) and pass --ckpt-dir "
                 "runs/checkpoints, or --overwrite-checkpoints")
    elif not last.is_file() and a.init_from is None:
        ap.error(f"--ckpt-dir {ckpt}: no {a.task}_last.pt to resume; pass --fresh to start a "
                 "new run there, or --init-from CHECKPOINT")
    if a.init_from is not None and not Path(a.init_from).is_file():
        ap.error(f"--init-from {a.init_from}: no such file")
    torch.set_num_threads(a.threads)
    Path(a.log_dir).mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        handlers=[logging.FileHandler(Path(a.log_dir) / f"{a.task}.log"),
                                  logging.StreamHandler(sys.stderr)])
    try:
        return _run(a, ap)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _run(a, ap) -> int:
    """The command line's work once its arguments are checked (see :func:`main`)."""
    last = Path(a.ckpt_dir) / f"{a.task}_last.pt"
    if a.export_only:
        print(export_task(a.task, DEFAULTS, a.ckpt_dir, a.out, which=a.which,
                          interval_scale=a.interval_scale, interval_slope=a.interval_slope))
        return 0
    if last.is_file() and not a.fresh:
        if a.init_from is not None:
            log.warning("--init-from %s ignored: resuming %s (pass --fresh with --init-from "
                        "for a warm start)", a.init_from, last)
        if a.steps is not None:
            done = int(load_checkpoint(last).get("step", 0))
            if a.steps <= done:
                ap.error(f"--steps {a.steps}: {last} is at step {done} already; --steps is the "
                         "global step to stop at")
    over = {}
    if a.total_steps:
        over["total_steps"] = a.total_steps
    if a.expo_range is not None:
        if a.expo_range.strip() in ("0", ""):
            over["expo_range"] = None
        else:
            try:
                lo, hi = (float(v) * 1e3 for v in a.expo_range.split(","))
            except ValueError:
                ap.error(f"--expo-range {a.expo_range!r}: give LO,HI in ks (e.g. 5,150) or 0")
            if not 0 < lo < hi:
                ap.error(f"--expo-range {a.expo_range!r}: need 0 < LO < HI")
            over["expo_range"] = (lo, hi)
    if a.flat_bkg_range is not None:
        try:
            lo, hi = (float(v) for v in a.flat_bkg_range.split(","))
        except ValueError:
            ap.error(f"--flat-bkg-range {a.flat_bkg_range!r}: give LO,HI (e.g. 1,4)")
        if not 0 < lo <= hi:
            ap.error(f"--flat-bkg-range {a.flat_bkg_range!r}: need 0 < LO <= HI")
        over["flat_bkg_range"] = (lo, hi)
    for key, val in (("uncertainty", a.uncertainty), ("decompose", a.decompose)):
        if val is not None:
            over[key] = bool(val)
    for key, val in (("sr_shape_weight", a.shape_weight), ("empty_frame_prob", a.empty_frames),
                     ("source_crop_prob", a.source_crops), ("sr_refine", a.refine),
                     ("lr", a.lr), ("lr_min", a.lr_min),
                     ("decompose_point_weight", a.decompose_point_weight),
                     ("sr_shape_expo_power", a.shape_expo_power),
                     ("faint_source_share", a.faint_share), ("flat_bkg_prob", a.flat_bkg),
                     ("flat_bkg_edge", a.flat_bkg_edge), ("halo_points", a.halo_points),
                     ("halo_source_share", a.halo_share),
                     ("sr_position", None if a.position is None else bool(a.position)),
                     ("sr_align", None if a.align is None else bool(a.align))):
        if val is not None:
            over[key] = val
    train(a.task, out=a.out, ckpt_dir=a.ckpt_dir, minutes=a.minutes, steps=a.steps,
          fresh=a.fresh, ckpt_minutes=a.ckpt_minutes, sim=a.sim, export=not a.no_export,
          log_dir=a.log_dir, cfg_overrides=over or None, snapshots=a.snapshots,
          init_from=a.init_from)
    return 0


if __name__ == "__main__":
    sys.exit(main())
