#!/usr/bin/env python3
"""Benchmark the image maker on a simulated gzipped pn event list (default 10 million events).

Prints seconds and peak resident memory per stage and end to end, and checks the targets of
issue 4: at most 1 s per million events end to end on one core, peak RSS at most 2 GB for 10 M
events. The measurement runs in a fresh child process (so the simulator's memory does not count)
with one thread for numpy/BLAS; a sampler thread reads the child's RSS every few milliseconds
to attribute peaks to stages.

    python benchmarks/bench_image.py                      # 10 M events, temporary folder
    python benchmarks/bench_image.py --events 3e6 --workdir /tmp/bench --keep
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OBSID = "0123456789"
TARGET_S_PER_M = 1.0
TARGET_RSS_MB = 2048.0
_ONE_THREAD = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _hwm_mb() -> float:
    """Peak RSS of this process image (VmHWM). Unlike ``ru_maxrss``, which after fork + exec
    still holds the parent's peak, VmHWM starts afresh with the new program."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def child(pps_dir: str, out: str, binsize: int, expo: float) -> None:
    """Run make_image once, sampling RSS; write stage stamps and samples as JSON."""
    samples = []
    stop = threading.Event()

    def sampler():
        while not stop.is_set():
            samples.append((time.perf_counter(), _rss_mb()))
            time.sleep(0.003)

    t_import = time.perf_counter()
    from xmm_enhance.pipeline import make_image
    t_import = time.perf_counter() - t_import
    th = threading.Thread(target=sampler, daemon=True)
    th.start()
    cpu0 = time.process_time()
    res = make_image(OBSID, pps_dir=pps_dir, save_dir=tempfile.mkdtemp(prefix="bench_out_"),
                     binsize=binsize, expo_time_ks=expo, backend="native")
    cpu = time.process_time() - cpu0
    stop.set()
    th.join()
    peak = _hwm_mb()
    shutil.rmtree(res.path.parent, ignore_errors=True)
    Path(out).write_text(json.dumps({
        "stages": res.stages, "samples": samples, "peak_mb": peak, "cpu_s": cpu,
        "import_s": t_import, "n_rows": res.n_rows, "counts": res.counts,
        "exposure": res.exposure}))


def simulate(folder: Path, n_events: int, seed: int) -> float:
    from xmm_enhance.simulate.pps import write_pps

    marker = folder / ".complete"
    if marker.exists() and marker.read_text().strip() == str(n_events):
        return 0.0
    t = time.perf_counter()
    write_pps(folder, OBSID, n_events=n_events, seed=seed)
    marker.write_text(str(n_events))
    return time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=float, default=10e6, help="events in the list (10e6)")
    ap.add_argument("--workdir", default=None, help="where the simulated PPS go (reused)")
    ap.add_argument("--keep", action="store_true", help="keep the simulated PPS")
    ap.add_argument("--binsize", type=int, default=80)
    ap.add_argument("--expo", type=float, default=20.0, help="--expo_time in ks")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", nargs=2, metavar=("PPS_DIR", "JSON"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        child(a.child[0], a.child[1], a.binsize, a.expo)
        return 0

    n = int(a.events)
    work = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="bench_image_"))
    pps = work / f"{n}" / "pps"
    try:
        print(f"simulating {n:,} events (gzipped PIEVLI) in {pps} ...", flush=True)
        t_sim = simulate(pps, n, a.seed)
        evl = next(pps.glob("*PIEVLI*"))
        print(f"  simulator: {t_sim:.1f} s (0 = reused); {evl.name}: "
              f"{evl.stat().st_size / 2**20:.0f} MB", flush=True)
        js = work / "bench.json"
        env = dict(os.environ, **_ONE_THREAD)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--binsize", str(a.binsize), "--expo",
                        str(a.expo), "--child", str(pps), str(js)], check=True, env=env,
                       cwd=ROOT)
        wall_process = time.perf_counter() - t0
        r = json.loads(js.read_text())
    finally:
        if not a.keep and not a.workdir:
            shutil.rmtree(work, ignore_errors=True)

    rows = r["n_rows"] / 1e6
    samples = r["samples"]
    print()
    print(f"image maker on {r['n_rows']:,} events ({rows:.2f} M), binSize {a.binsize}, "
          f"--expo_time {a.expo:g}: {r['counts']:,} counts, EXPOSURE {r['exposure']:.0f} s")
    print()
    print(f"{'stage':<14}{'seconds':>9}{'s per M ev':>12}{'peak RSS MB':>13}")
    print("-" * 48)
    for name, s0, s1 in r["stages"]:
        sel = [m for t, m in samples if s0 <= t <= s1]
        peak = max(sel) if sel else float("nan")
        if name == "total":
            print("-" * 48)
            peak = r["peak_mb"]
            label = "end to end"
        else:
            label = name
        print(f"{label:<14}{s1 - s0:>9.3f}{(s1 - s0) / rows:>12.3f}{peak:>13.0f}")
    total = [s1 - s0 for name, s0, s1 in r["stages"] if name == "total"][0]
    print(f"{'+ imports':<14}{r['import_s']:>9.3f}")
    print(f"{'process wall':<14}{wall_process:>9.3f}{wall_process / rows:>12.3f}"
          f"{'':>13}  (python start + imports + run)")
    print(f"{'CPU time':<14}{r['cpu_s']:>9.3f}{r['cpu_s'] / rows:>12.3f}")
    load = os.getloadavg()[0]
    if load > (os.cpu_count() or 1):
        print(f"note: load average {load:.1f} on {os.cpu_count()} cores: wall times include "
              "waiting for a CPU; CPU time is what one core spent")
    print()
    ok_t = total / rows <= TARGET_S_PER_M
    ok_m = r["peak_mb"] <= TARGET_RSS_MB
    print(f"target <= {TARGET_S_PER_M:g} s per million events end to end: "
          f"{total / rows:.3f} -> {'OK' if ok_t else 'MISSED'}")
    print(f"target peak RSS <= {TARGET_RSS_MB:.0f} MB for 10 M events: {r['peak_mb']:.0f} MB"
          f"{' (at ' + format(rows, '.2f') + ' M)' if rows < 10 else ''} -> "
          f"{'OK' if ok_m else 'MISSED'}")
    return 0 if (ok_t and ok_m) else 1


if __name__ == "__main__":
    sys.exit(main())
