"""Tests of the batch engine (xmm_enhance.batch, ``xmm-enhance batch``).

Every observation is a small simulated PPS folder (``simulate.pps.write_pps``, a few thousand
events) either in a local ``--pps_dir`` tree or served by a local imitation of the XSA on
127.0.0.1. The SR/DN models are the tiny exact ONNX graphs of ``onnx_graphs`` (2x replication,
identity), so what is checked is the engine: skipping, locking, resuming, parallel runs, reports.
"""
from __future__ import annotations

import csv
import gzip
import http.server
import io
import json
import logging
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
import warnings
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import astroquery  # noqa: F401  (before any CLI's setup_logging names its logger)
import numpy as np
import pytest
from astropy.io import fits

from onnx_graphs import identity_dn, replicate_sr
from xmm_enhance import batch
from xmm_enhance.batch import (LOG_NAME, BatchConfig, ObservationLock, fits_is_valid,
                               png_is_valid, read_obsid_list)
from xmm_enhance.cli.batch import main
from xmm_enhance.errors import UsageError

pytest.importorskip("onnx")

OBSIDS = [f"00000001{i:02d}" for i in range(1, 7)]
REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# Fixtures: simulated PPS trees, tiny models
# --------------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _restore_logging():
    """main() configures logging (root handlers on this test's captured stderr, levels,
    warnings.showwarning); undo it so that later tests see the logging they expect."""
    root = logging.getLogger()
    handlers, level, show = root.handlers[:], root.level, warnings.showwarning
    levels = {n: logging.getLogger(n).level for n in ("xmm_enhance", "astroquery")}
    # Start from a clean package logger, whatever other test modules' CLIs left on it.
    pkg = logging.getLogger("xmm_enhance")
    pkg_state = pkg.handlers[:], pkg.propagate
    for h in pkg_state[0]:
        pkg.removeHandler(h)
    pkg.propagate = True
    pkg.setLevel(logging.NOTSET)
    yield
    for h in pkg.handlers[:]:
        pkg.removeHandler(h)
    for h in pkg_state[0]:
        pkg.addHandler(h)
    pkg.propagate = pkg_state[1]
    for h in root.handlers[:]:
        if h not in handlers:
            root.removeHandler(h)
    for h in handlers:
        if h not in root.handlers:
            root.addHandler(h)
    root.setLevel(level)
    warnings.showwarning = show
    for n, lv in levels.items():
        logging.getLogger(n).setLevel(lv)


def _simulate(folder: Path, obsid: str, seed: int) -> Path:
    from xmm_enhance.simulate.pps import write_pps

    write_pps(folder, obsid, seed=seed, duration=24e3, n_events=3000, n_sources=3, flare=None,
              gaps=(), compresslevel=1)
    return folder


@pytest.fixture(scope="session")
def pps_root(tmp_path_factory):
    """``<root>/<obsid>/pps`` for the six OBSIDS (written once per session)."""
    root = tmp_path_factory.mktemp("pps_root")
    for i, o in enumerate(OBSIDS):
        _simulate(root / o / "pps", o, seed=100 + i)
    return root


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return replicate_sr(d / "sr.onnx"), identity_dn(d / "dn.onnx")


def _args(save_dir, models, *extra, pps_root=None):
    a = ["--save_dir", str(save_dir), "--sr-model", str(models[0]), "--dn-model",
         str(models[1]), "--backend", "native", "--threads", "1", "--progress", "lines"]
    if pps_root is not None:
        a += ["--pps_dir", str(pps_root)]
    return a + [str(e) for e in extra]


def _report(path: Path) -> dict:
    doc = json.loads(Path(f"{path}.json").read_text())
    return {o["obsid"]: o for o in doc["observations"]}


def _ran_counts(save_dir: Path, obsid: str) -> dict:
    """How many times each step ran for ``obsid``, from its log (all attempts)."""
    text = (save_dir / obsid / LOG_NAME).read_text()
    return {s: text.count(f"step {s}: ran in") for s in ("download", "image", "SR", "DN")}


def _leftovers(root: Path) -> list:
    """Temporaries anywhere under root (what a killed writer could leave)."""
    return sorted(str(p) for p in root.rglob("*")
                  if p.name.endswith(".tmp") or p.name.startswith(".pps-download-"))


def _products(save_dir: Path, obsid: str) -> list[Path]:
    d = save_dir / obsid
    return sorted(p for p in d.glob("*") if p.name.endswith((".fits", ".fits.gz", ".png")))


# --------------------------------------------------------------------------------------------
# Units: OBS_ID lists, integrity checks, locks
# --------------------------------------------------------------------------------------------
def test_read_obsid_list(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="xmm_enhance.batch")
    f = tmp_path / "ids.txt"
    f.write_text("# cron list\n0123456789\n\n  0123456790  # trailing comment\n0123456789\n")
    assert read_obsid_list([str(f), "0000000001"]) == ["0123456789", "0123456790",
                                                        "0000000001"]
    assert "more than once" in caplog.text
    f.write_text("0123456789\n012345\n")
    with pytest.raises(UsageError, match=r"ids.txt line 2: '012345'"):
        read_obsid_list([str(f)])
    with pytest.raises(UsageError, match="neither a ten-digit OBS_ID nor"):
        read_obsid_list(["12345"])


def test_fits_and_png_validity(tmp_path):
    from xmm_enhance.fitsio import atomic_write_hdul

    data = np.arange(64 * 64, dtype=np.float32).reshape(64, 64)
    good = atomic_write_hdul(fits.HDUList([fits.PrimaryHDU(data)]), tmp_path / "a.fits.gz")
    assert fits_is_valid(good) == (True, "")
    raw = bytearray(gzip.decompress(good.read_bytes()))
    raw[4000] ^= 0x01                                   # one flipped bit in the data
    bad = tmp_path / "flip.fits.gz"
    bad.write_bytes(gzip.compress(bytes(raw)))
    ok, why = fits_is_valid(bad)
    assert not ok and "verification failed" in why
    cut = tmp_path / "cut.fits.gz"
    cut.write_bytes(good.read_bytes()[:300])
    assert not fits_is_valid(cut)[0]
    plain = tmp_path / "nosum.fits"
    fits.PrimaryHDU(data).writeto(plain)               # complete, but no CHECKSUM to verify
    assert fits_is_valid(plain) == (False, "HDU 0 has no CHECKSUM/DATASUM")
    assert fits_is_valid(tmp_path / "none.fits") == (False, "missing")

    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    png = tmp_path / "a.png"
    Figure(figsize=(1, 1)).savefig(png)
    assert png_is_valid(png) == (True, "")
    png.write_bytes(png.read_bytes()[:-5])
    assert not png_is_valid(png)[0]


def test_lock_is_exclusive_and_dies_with_its_process(tmp_path):
    path = tmp_path / "obs" / ".lock"
    a, b = ObservationLock(path), ObservationLock(path)
    assert a.acquire()
    assert not b.acquire()
    assert str(os.getpid()) in b.holder()
    a.release()
    assert b.acquire()
    b.release()
    # A process that dies holding the lock (SIGKILL: no clean-up runs) leaves no stale lock.
    code = (f"import sys, time; sys.path.insert(0, {str(REPO)!r})\n"
            "from xmm_enhance.batch import ObservationLock\n"
            f"assert ObservationLock({str(path)!r}).acquire(); print('held', flush=True)\n"
            "time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        assert not ObservationLock(path).acquire()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        c = ObservationLock(path)
        assert c.acquire(), "lock of a killed process must be free"
        c.release()
    finally:
        if proc.poll() is None:
            proc.kill()


# --------------------------------------------------------------------------------------------
# End to end on local PPS trees
# --------------------------------------------------------------------------------------------
def test_skip_valid_outputs_redo_damaged_ones_and_dry_run(tmp_path, pps_root, models, capsys):
    ids = OBSIDS[:2]
    rep = tmp_path / "r1"
    assert main(_args(tmp_path / "out", models, *ids, "--png", "--report", rep,
                      pps_root=pps_root)) == 0
    first = _report(rep)
    assert [first[o]["status"] for o in ids] == ["done", "done"]
    assert first[ids[0]]["steps"] == "image:ran SR:ran DN:ran"
    assert first[ids[0]]["exposure_s"] > 15e3 and first[ids[0]]["counts"] > 0
    rows = list(csv.DictReader(open(f"{rep}.csv")))
    assert [r["obsid"] for r in rows] == ids and float(rows[0]["sr_s"]) > 0
    out = tmp_path / "out"
    products = _products(out, ids[0])
    assert len(products) == 1 + 2 * 3                  # image, (input, predict, png) x SR, DN
    assert all((fits_is_valid(p) if p.suffix != ".png" else png_is_valid(p))[0]
               for p in products)

    # Damage one SR prediction in place (same size, one bit): present but not valid.
    pred = next(p for p in products if p.name.endswith("_predict_wcs_SR.fits.gz"))
    raw = bytearray(gzip.decompress(pred.read_bytes()))
    raw[-100] ^= 0x01
    pred.write_bytes(gzip.compress(bytes(raw)))
    capsys.readouterr()
    assert main(_args(out, models, *ids, "--png", "--dry-run", pps_root=pps_root)) == 0
    table = capsys.readouterr().out
    assert f"{ids[0]}  skip      redo      skip" in table
    assert f"{ids[1]}  skip      skip      skip" in table
    assert not (out / "reports").exists()               # a dry run writes no report

    rep2 = tmp_path / "r2"
    assert main(_args(out, models, *ids, "--png", "--report", rep2, pps_root=pps_root)) == 0
    second = _report(rep2)
    assert second[ids[0]]["steps"] == "image:skipped SR:ran DN:skipped"
    assert second[ids[1]]["steps"] == "image:skipped SR:skipped DN:skipped"
    assert fits_is_valid(pred)[0]
    assert _ran_counts(out, ids[0]) == {"download": 0, "image": 1, "SR": 2, "DN": 1}
    assert _leftovers(out) == []

    # Another DN model (a new version): its predictions are redone, nothing else.
    dn2 = identity_dn(tmp_path / "dn2.onnx", version="test-2")
    rep3 = tmp_path / "r3"
    assert main(_args(out, (models[0], dn2), *ids, "--png", "--report", rep3,
                      pps_root=pps_root)) == 0
    third = _report(rep3)
    assert all(third[o]["steps"] == "image:skipped SR:skipped DN:ran" for o in ids)
    assert "made by another DN model" in (out / ids[0] / LOG_NAME).read_text()

    # Progress: a bar when asked (a terminal), one plain line per observation otherwise (cron).
    capsys.readouterr()
    assert main(_args(out, (models[0], dn2), *ids, "--png", "--progress", "bar",
                      "--report", tmp_path / "r4", pps_root=pps_root)) == 0
    err = capsys.readouterr().err
    assert "2/2 [" in err and "[1/2]" not in err
    assert main(_args(out, (models[0], dn2), *ids, "--png", "--report", tmp_path / "r5",
                      pps_root=pps_root)) == 0
    err = capsys.readouterr().err
    assert f"[1/2] {ids[0]} done" in err and f"[2/2] {ids[1]} done" in err and "2/2 [" not in err


def test_corrupt_observation_fails_alone(tmp_path, pps_root, models, capsys):
    root = tmp_path / "pps"
    ids = OBSIDS[:3]
    for o in ids:                                       # copies; one gets a truncated event list
        (root / o / "pps").mkdir(parents=True)
        for f in (pps_root / o / "pps").iterdir():
            (root / o / "pps" / f.name).write_bytes(f.read_bytes())
    ev = next((root / ids[1] / "pps").glob("*PIEVLI*"))
    ev.write_bytes(ev.read_bytes()[: ev.stat().st_size // 2])
    rep = tmp_path / "rep.csv"
    code = main(_args(tmp_path / "out", models, *ids, "--report", rep, "--jobs", "2",
                      pps_root=root))
    assert code == 1
    err = capsys.readouterr().err
    assert f"1 of 3 observations failed ({ids[1]})" in err
    r = _report(tmp_path / "rep")
    assert [r[o]["status"] for o in ids] == ["done", "failed", "done"]
    assert json.loads((tmp_path / "rep.json").read_text())["totals"] == {"done": 2, "failed": 1}
    assert os.getpid() not in {r[o]["pid"] for o in ids}      # ran in the worker processes
    assert ev.name in r[ids[1]]["error"]
    assert "\n" not in r[ids[1]]["error"]
    rows = {row["obsid"]: row for row in csv.DictReader(open(rep))}
    assert rows[ids[1]]["status"] == "failed" and ev.name in rows[ids[1]]["error"]
    log_text = (tmp_path / "out" / ids[1] / LOG_NAME).read_text()
    assert "failed" in log_text and ev.name in log_text
    assert _leftovers(tmp_path / "out") == []


def test_dask_local_cluster_matches_sequential(tmp_path, pps_root, models):
    distributed = pytest.importorskip("distributed")
    seq, dsk = tmp_path / "seq", tmp_path / "dask"
    assert main(_args(seq, models, *OBSIDS, "--report", tmp_path / "seq_rep",
                      pps_root=pps_root)) == 0
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None, host="127.0.0.1") as cluster:
        assert main(_args(dsk, models, *OBSIDS, "--report", tmp_path / "dask_rep",
                          "--dask-scheduler", cluster.scheduler_address,
                          pps_root=pps_root)) == 0
    rs, rd = _report(tmp_path / "seq_rep"), _report(tmp_path / "dask_rep")
    assert all(rd[o]["status"] == "done" for o in OBSIDS)
    assert len({rd[o]["pid"] for o in OBSIDS}) == 2     # both workers took observations
    assert os.getpid() not in {rd[o]["pid"] for o in OBSIDS}
    for o in OBSIDS:
        assert rs[o]["counts"] == rd[o]["counts"] and rs[o]["exposure_s"] == rd[o]["exposure_s"]
        a, b = _products(seq, o), _products(dsk, o)
        assert [p.name for p in a] == [p.name for p in b] and len(a) == 5
        for pa, pb in zip(a, b):
            np.testing.assert_array_equal(fits.getdata(pa), fits.getdata(pb))


# --------------------------------------------------------------------------------------------
# Separate processes: SIGKILL and resume, two batches at once
# --------------------------------------------------------------------------------------------
def _cli(save_dir, models, ids, pps_root, report):
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "xmm_enhance.cli.batch", *ids,
           *_args(save_dir, models, "--png", "--report", report, pps_root=pps_root)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def test_sigkill_mid_run_then_rerun_resumes(tmp_path, pps_root, models):
    ids = OBSIDS[:4]
    out = tmp_path / "out"
    proc = _cli(out, models, ids, pps_root, tmp_path / "killed")
    try:
        # Kill as soon as the first observation is finished: the second is then being worked
        # on, with files possibly half-written.
        deadline = time.time() + 240
        first_log = out / ids[0] / LOG_NAME
        while time.time() < deadline and proc.poll() is None:
            if first_log.exists() and ": done (" in first_log.read_text():
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the batch ended before it could be killed"
        time.sleep(0.3)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert not Path(f"{tmp_path / 'killed'}.json").exists()
    before = {p: p.stat().st_mtime_ns for p in _products(out, ids[0])}
    assert len(before) == 7
    # Besides whatever the kill left, plant what a writer killed at another moment leaves.
    (out / ids[2]).mkdir(exist_ok=True)
    (out / ids[2] / ".pn_cleaned_x.fits.k1l2_3x.tmp").write_bytes(b"SIMPLE  =   half")
    (out / ids[2] / ".pps-download-abc123").mkdir()

    rep = tmp_path / "rerun"
    assert main(_args(out, models, *ids, "--png", "--report", rep, pps_root=pps_root)) == 0
    r = _report(rep)
    assert all(r[o]["status"] == "done" for o in ids)
    assert r[ids[0]]["steps"] == "image:skipped SR:skipped DN:skipped"
    assert any("ran" in r[o]["steps"] for o in ids[1:]), "the kill came too late to test"
    assert {p: p.stat().st_mtime_ns for p in _products(out, ids[0])} == before
    for o in ids:                                       # no step ran twice
        counts = _ran_counts(out, o)
        assert counts["download"] == 0 and all(v <= 1 for v in counts.values()), (o, counts)
        for step in ("image", "SR", "DN"):
            # a step whose outputs the killed run completed, but was killed before logging
            # "ran", is skipped by the rerun (not redone): it still ran exactly once
            assert counts[step] == 1 or f"{step}:skipped" in r[o]["steps"], (o, step, counts)
        products = _products(out, o)
        assert len(products) == 7
        assert all((png_is_valid(p) if p.suffix == ".png" else fits_is_valid(p))[0]
                   for p in products)
    assert _leftovers(out) == []


def test_sigterm_stops_cleanly_with_a_partial_report(tmp_path, pps_root, models):
    ids = OBSIDS[:4]
    out = tmp_path / "out"
    proc = _cli(out, models, ids, pps_root, tmp_path / "partial")
    try:
        first_log = out / ids[0] / LOG_NAME
        first_lock = ObservationLock(out / ids[0] / batch.LOCK_NAME)
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            # "done" is logged before the observation's lock is released and its result
            # recorded: wait for the release too, or the signal can land in between
            if first_log.exists() and ": done (" in first_log.read_text() \
                    and first_lock.is_free():
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted after" in err and "rerun the same command" in err
    doc = json.loads(Path(f"{tmp_path / 'partial'}.json").read_text())
    assert doc["meta"]["interrupted"] is True
    done = [o["obsid"] for o in doc["observations"]]
    assert ids[0] in done and len(done) < len(ids)
    assert all(ObservationLock(out / o / batch.LOCK_NAME).is_free() for o in ids)
    assert _leftovers(out) == []


def test_two_batches_at_once_process_each_observation_once(tmp_path, pps_root, models):
    ids = OBSIDS
    out = tmp_path / "out"
    procs = [_cli(out, models, ids, pps_root, tmp_path / f"rep{i}") for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=400)
        assert p.returncode == 0, err[-2000:]
    reps = [_report(tmp_path / f"rep{i}") for i in range(2)]
    for o in ids:
        assert _ran_counts(out, o) == {"download": 0, "image": 1, "SR": 1, "DN": 1}, o
        statuses = sorted(rep[o]["status"] for rep in reps)
        assert statuses in (["busy", "done"], ["done", "done"]), statuses
        ran = [rep[o] for rep in reps if "ran" in rep[o]["steps"]]
        assert len(ran) == 1 and ran[0]["steps"] == "image:ran SR:ran DN:ran"
    assert _leftovers(out) == []


# --------------------------------------------------------------------------------------------
# Downloads from a local imitation of the XSA
# --------------------------------------------------------------------------------------------
class _XSA(http.server.ThreadingHTTPServer):
    """Serves the PPS files of ``folders[obsid]`` as XSA-style tars; ``always_503`` fails."""

    daemon_threads = True

    def __init__(self, folders, always_503=()):
        self.folders, self.always_503, self.gets = folders, set(always_503), []
        super().__init__(("127.0.0.1", 0), _XSAHandler)


class _XSAHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _serve(self, head):
        q = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
        obsid, name, inst = q.get("obsno", ""), q.get("name", ""), q.get("instname", "")
        self.server.gets.append((obsid, name))          # HEAD and GET
        if obsid in self.server.always_503:
            self.send_error(503)
            return
        folder = self.server.folders.get(obsid)
        files = sorted(p for p in folder.iterdir() if name.upper() in p.name.upper()
                       and (not inst or p.name.upper()[11:13] == inst.upper())) if folder else []
        if not files:
            self.send_error(404)
            return
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for f in files:
                tar.add(f, arcname=f"{obsid}/pps/{f.name}")
        body = buf.getvalue()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-tar")
        self.send_header("Content-Disposition", f'attachment; filename="GUEST{obsid}.tar"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def do_HEAD(self):
        self._serve(True)

    def do_GET(self):
        self._serve(False)


def test_downloads_from_local_archive_with_unreachable_observation(tmp_path, pps_root, models,
                                                                   monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    good, down = OBSIDS[:2], OBSIDS[2]
    server = _XSA({o: pps_root / o / "pps" for o in OBSIDS[:3]}, always_503=[down])
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/nxsa-sl/servlet/data-action-aio?"
    out = tmp_path / "out"
    try:
        common = ("--which", "DN", "--archive-url", url, "--retries", "2", "--backoff", "0.01")
        code = main(_args(out, models, *good, down, *common, "--report", tmp_path / "rep"))
        assert code == 1
        r = _report(tmp_path / "rep")
        assert [r[o]["status"] for o in good] == ["done", "done"]
        assert r[good[0]]["steps"] == "download:ran image:ran DN:ran"
        assert r[down]["status"] == "failed"
        assert "503" in r[down]["error"] and "after 3 attempts" in r[down]["error"]
        # first try + 2 retries, each stopped by its first 503
        assert sum(1 for o, n in server.gets if o == down) == 3
        text = (out / down / LOG_NAME).read_text()
        assert "attempt 1/3 failed" in text and "attempt 2/3 failed" in text
        # Rerun: finished observations do not touch the archive again.
        n_before = len(server.gets)
        server.always_503.clear()
        image = Path(r[good[1]]["image"])               # a truncated image is remade from the
        image.write_bytes(image.read_bytes()[:5000])    # PPS already downloaded
        assert main(_args(out, models, *good, down, *common, "--report", tmp_path / "rep2")) == 0
        r2 = _report(tmp_path / "rep2")
        assert r2[good[0]]["steps"] == "download:skipped image:skipped DN:skipped"
        assert r2[good[1]]["steps"] == "download:skipped image:ran DN:ran"
        assert r2[down]["steps"] == "download:ran image:ran DN:ran"
        assert {o for o, _ in server.gets[n_before:]} == {down}
    finally:
        server.shutdown()
        server.server_close()
    assert _leftovers(out) == []


def crash_on_0000000102(obsid, cfg):
    """A task whose worker process dies (as if OOM-killed) on one observation."""
    if obsid == "0000000102":
        os._exit(9)
    time.sleep(0.2)
    return batch.ObsResult(obsid=obsid, status="done", pid=os.getpid())


def test_pool_survives_a_dying_worker(tmp_path):
    ids = OBSIDS[:5]
    seen = []
    res = batch.run_batch(ids, BatchConfig(save_dir=tmp_path), jobs=2,
                          task=crash_on_0000000102, on_result=seen.append)
    assert [r.obsid for r in res] == ids and len(seen) == 5
    by = {r.obsid: r for r in res}
    assert by["0000000102"].status == "failed"
    assert "worker process died" in by["0000000102"].error
    assert all(by[o].status == "done" for o in ids if o != "0000000102")
    assert os.getpid() not in {by[o].pid for o in ids if o != "0000000102"}


def test_usage_errors(tmp_path, models, capsys):
    assert main(["--save_dir", str(tmp_path), "--which", "XX", "0123456789"]) == 2
    assert "--which 'XX'" in capsys.readouterr().err
    assert main(["--save_dir", str(tmp_path), "--jobs", "0", "0123456789"]) == 2
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    assert main(["--save_dir", str(tmp_path), str(empty)]) == 2
    assert "no OBS_IDs" in capsys.readouterr().err
    with pytest.raises(UsageError):
        batch.run_batch(["0123456789"], BatchConfig(save_dir=tmp_path), jobs=0)
    r = batch.process_observation("../../etc", BatchConfig(save_dir=tmp_path / "s"))
    assert r.status == "failed" and "10 digits" in r.error and not (tmp_path / "s").exists()
