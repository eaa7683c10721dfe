#!/usr/bin/env python3
"""Batch throughput: observations per hour with 1 and 2 workers, peak memory per worker.

Simulates ``--n-obs`` EPIC-pn PPS folders (``simulate.pps.write_pps``, default size: 60 ks,
~570k events, a flare), then runs ``xmm-enhance batch`` on them as a fresh subprocess per
configuration (image -> SR -> DN -> PNGs, ``--pps_dir``, native backend), each into an empty
output folder, and times it from start to exit (process and worker start-up included). Peak RSS
per worker comes from the report (``peak_rss_mb``: each worker's own ``ru_maxrss``).

Models: the bundled ``models/XMM-*.onnx`` when present, else the tiny exact plumbing graphs of
``tests/onnx_graphs.py`` (then the table measures the engine, image making, I/O and PNGs, not
the networks; ``--sr-model/--dn-model`` choose others).

Usage: python benchmarks/bench_batch.py [--n-obs 64] [--workers 1 2] [--no-png]
Target (issue 5): 2 workers >= 1.7x the throughput of 1 on a 2-core machine.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def _models(args, tmp: Path) -> tuple[Path, Path, str]:
    from xmm_enhance.inference import default_model_path

    sr = args.sr_model or default_model_path("SR")
    dn = args.dn_model or default_model_path("DN")
    if sr.is_file() and dn.is_file():
        return sr, dn, f"{sr.name}, {dn.name}"
    from onnx_graphs import identity_dn, replicate_sr

    return (replicate_sr(tmp / "sr.onnx"), identity_dn(tmp / "dn.onnx"),
            "tiny plumbing graphs (bundled models absent)")


def _simulate(root: Path, n: int, events: int | None) -> list[str]:
    from xmm_enhance.simulate.pps import write_pps

    ids = [f"09000000{i:02d}" for i in range(1, n + 1)]
    for i, o in enumerate(ids):
        write_pps(root / o / "pps", o, seed=1000 + i, n_events=events)
    return ids


def _run(ids, pps_root: Path, out: Path, models, workers: int, png: bool) -> dict:
    report = out / "report"
    cmd = [sys.executable, "-m", "xmm_enhance.cli.batch", *ids, "--pps_dir", str(pps_root),
           "--save_dir", str(out), "--backend", "native", "--sr-model", str(models[0]),
           "--dn-model", str(models[1]), "--jobs", str(workers), "--report", str(report),
           "--progress", "lines", "-q"] + (["--png"] if png else [])
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=str(ROOT))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    load = os.getloadavg()[0]
    if proc.returncode != 0:
        raise SystemExit(f"batch with {workers} worker(s) failed:\n{proc.stderr[-3000:]}")
    obs = json.loads(Path(f"{report}.json").read_text())["observations"]
    rss: dict = {}
    for o in obs:
        rss[o["pid"]] = max(rss.get(o["pid"], 0.0), float(o["peak_rss_mb"] or 0.0))
    return {"workers": workers, "wall": wall, "per_obs": statistics.median(
        float(o["total_s"]) for o in obs), "rss": max(rss.values()), "n_pids": len(rss),
        "cpu": statistics.median(float(o["cpu_s"]) for o in obs), "load": load,
        "steps": {k: statistics.median(float(o[k]) for o in obs)
                  for k in ("image_s", "sr_s", "dn_s", "png_s")}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-obs", type=int, default=64,
                    help="observations (default 64: start-up, ~2 s a run, weighs on short lists)")
    ap.add_argument("--events", type=int, default=None,
                    help="events per simulated observation (default: write_pps's, ~570k)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--no-png", action="store_true")
    ap.add_argument("--sr-model", type=Path)
    ap.add_argument("--dn-model", type=Path)
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench_batch_") as tmp:
        tmp = Path(tmp)
        models = _models(args, tmp)
        t = time.perf_counter()
        ids = _simulate(tmp / "pps", args.n_obs, args.events)
        t_sim = time.perf_counter() - t
        rows = [_run(ids, tmp / "pps", tmp / f"out{w}", models, w, not args.no_png)
                for w in args.workers]

    base = rows[0]["wall"]
    print(f"xmm-enhance batch: {args.n_obs} simulated observations "
          f"(simulated in {t_sim:.1f} s, not counted), image -> SR -> DN"
          f"{'' if args.no_png else ' -> PNGs'}; models: {models[2]}")
    print(f"machine: {os.cpu_count()} CPUs, load average before: "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    head = (f"{'workers':>7s}  {'wall s':>7s}  {'obs/hour':>8s}  {'speed-up':>8s}  "
            f"{'s/obs':>6s}  {'image':>6s}  {'SR':>5s}  {'DN':>5s}  {'PNGs':>5s}  "
            f"{'CPU s/obs':>9s}  {'peak RSS/worker MB':>18s}  {'load 1m':>7s}")
    print(head)
    print("-" * len(head))
    for r in rows:
        s = r["steps"]
        print(f"{r['workers']:7d}  {r['wall']:7.1f}  {args.n_obs / r['wall'] * 3600:8.0f}  "
              f"{base / r['wall']:7.2f}x  {r['per_obs']:6.2f}  {s['image_s']:6.2f}  "
              f"{s['sr_s']:5.2f}  {s['dn_s']:5.2f}  {s['png_s']:5.2f}  {r['cpu']:9.2f}  "
              f"{r['rss']:18.0f}  {r['load']:7.1f}")
    print("s/obs, the step columns and CPU s/obs are medians per observation inside a worker; "
          "wall (hence obs/hour) includes process and worker start-up; load 1m is the load "
          "average at the end "
          "(other processes on the machine inflate wall times).")
    if len(rows) > 1 and rows[0]["workers"] == 1 and rows[1]["workers"] == 2:
        ratio = base / rows[1]["wall"]
        print(f"target 2 workers >= 1.70x of 1: {ratio:.2f}x "
              f"({'met' if ratio >= 1.7 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
