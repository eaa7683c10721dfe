"""Tests of the batch engine (xmm_enhance.batch, ``xmm-enhance batch``).

Every observation is a small simulated PPS folder (``simulate.pps.write_pps``, a few thousand
events) either in a local ``--pps_dir`` tree or served by a local imitation of the XSA on
127.0.0.1. The SR/DN models are the tiny exact ONNX graphs of ``onnx_graphs`` (2x replication,
identity), so what is checked is the engine: skipping, locking, resuming, parallel runs, reports.
"""
from __future__ import annotations

import contextlib
import csv
import gzip
import http.server
import io
import json
import logging
import os
import re
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

from onnx_graphs import exposure_aware, identity_dn, offset_model, replicate_sr
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


def _mentions(obsid: str, line: str) -> int:
    """How often ``line`` names ``obsid`` as a word (not inside a PPS file name or a path)."""
    return len(re.findall(rf"(?<![\w/]){obsid}(?![\w/])", line))


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
    f.write_text("0123456789\n012345\n123456789  # from a spreadsheet\n0123456790\n")
    # Without a place for them, a malformed line is a usage error (the Python API's default).
    with pytest.raises(UsageError, match=r"ids.txt line 2: '012345'"):
        read_obsid_list([str(f)])
    # With one, the good ids come back and each malformed line is warned about and kept.
    caplog.clear()
    bad = []
    assert read_obsid_list([str(f)], bad=bad) == ["0123456789", "0123456790"]
    assert [(b.where, b.line, b.text) for b in bad] == [(str(f), 2, "012345"),
                                                       (str(f), 3, "123456789")]
    assert "not a ten-digit OBS_ID" in bad[0].reason and "comment it out" in bad[0].reason
    assert "leading zero" in bad[1].reason and "0123456789" in bad[1].reason
    assert f"{f} line 2: '012345'" in caplog.text and f"{f} line 3" in caplog.text
    row = bad[0].result()
    assert row.status == "failed" and row.obsid == "012345" and "line 2" in row.error
    # On the command line (not in a file) a malformed id stays a usage error.
    with pytest.raises(UsageError, match="neither a ten-digit OBS_ID nor"):
        read_obsid_list(["12345"], bad=[])
    with pytest.raises(UsageError, match="leading zero.*write it as 0123456789"):
        read_obsid_list(["123456789"], bad=[])


@pytest.fixture(params=["in memory", "streamed"])
def gzip_mode(request, monkeypatch):
    """fits_is_valid checks a .fits.gz from memory up to GZIP_IN_MEMORY_MAX, streamed above:
    both must give the same answers."""
    if request.param == "streamed":
        monkeypatch.setattr(batch, "GZIP_IN_MEMORY_MAX", 0)
    return request.param


def test_fits_and_png_validity(tmp_path, gzip_mode):
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
    # a whole gzip stream of a FITS file cut inside its data
    short = tmp_path / "short.fits.gz"
    short.write_bytes(gzip.compress(gzip.decompress(good.read_bytes())[:2880 + 5000]))
    ok, why = fits_is_valid(short)
    assert not ok and why
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


def _prediction_like(path: Path) -> Path:
    """A gzipped FITS file shaped like an SR prediction: a primary image and the POINTS,
    DIFFUSE, LO68, HI68 images (noise, so that gzip cannot shrink them to nothing)."""
    from xmm_enhance.fitsio import atomic_write_hdul

    rng = np.random.default_rng(7)
    hdus = [fits.PrimaryHDU(rng.poisson(2.0, (96, 96)).astype(np.float32))]
    hdus += [fits.ImageHDU(rng.poisson(2.0, (96, 96)).astype(np.float32), name=n)
             for n in ("POINTS", "DIFFUSE", "LO68", "HI68")]
    return atomic_write_hdul(fits.HDUList(hdus), path)


@pytest.mark.parametrize("share", [0.3, 0.7, 0.99])
def test_truncated_gzip_fits_is_invalid(tmp_path, share, gzip_mode):
    """A .fits.gz cut short anywhere is invalid. astropy alone stops reading at the HDU where
    the cut falls and returns the HDUs before it, without an error: the gzip stream must be
    read to its end-of-stream marker and trailer."""
    good = _prediction_like(tmp_path / "p_predict_wcs_SR.fits.gz")
    assert fits_is_valid(good) == (True, "")
    assert batch.gzip_is_complete(good) == (True, "")
    raw = good.read_bytes()
    cut = tmp_path / "cut.fits.gz"
    cut.write_bytes(raw[: int(len(raw) * share)])
    ok, why = fits_is_valid(cut)
    assert not ok and "truncated gzip" in why
    assert not batch.gzip_is_complete(cut)[0]
    # a whole stream whose trailer does not match (a flipped bit in the CRC-32) is corrupt
    flipped = bytearray(raw)
    flipped[-6] ^= 0x01
    cut.write_bytes(bytes(flipped))
    ok, why = fits_is_valid(cut)
    assert not ok and "corrupt gzip" in why


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
    assert first[ids[0]]["steps"] == "image:ran SR:ran DN:ran png:ran"
    assert first[ids[0]]["png_s"] > 0
    assert first[ids[0]]["exposure_s"] > 15e3 and first[ids[0]]["counts"] > 0
    assert first[ids[0]]["sr_sources"] == ""  # this stand-in SR model lists no sources
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
    # an OBS_ID --pps_dir does not hold: the dry run says it would fail, and exits 1
    assert main(_args(out, models, ids[0], "0000000999", "--dry-run", pps_root=pps_root)) == 1
    table = capsys.readouterr().out
    assert "0000000999  error: OBS_ID 0000000999: no PPS folder" in table
    assert "1 that would fail" in table

    rep2 = tmp_path / "r2"
    assert main(_args(out, models, *ids, "--png", "--report", rep2, pps_root=pps_root)) == 0
    second = _report(rep2)
    assert second[ids[0]]["steps"] == "image:skipped SR:ran DN:skipped png:ran"
    assert second[ids[1]]["steps"] == "image:skipped SR:skipped DN:skipped png:skipped"
    assert second[ids[1]]["png_s"] == 0
    assert fits_is_valid(pred)[0]
    assert _ran_counts(out, ids[0]) == {"download": 0, "image": 1, "SR": 2, "DN": 1}
    assert _leftovers(out) == []

    # Another DN model (a new version): its predictions are redone, nothing else.
    dn2 = identity_dn(tmp_path / "dn2.onnx", version="test-2")
    rep3 = tmp_path / "r3"
    assert main(_args(out, (models[0], dn2), *ids, "--png", "--report", rep3,
                      pps_root=pps_root)) == 0
    third = _report(rep3)
    assert all(third[o]["steps"] == "image:skipped SR:skipped DN:ran png:ran" for o in ids)
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
    assert "DN:skipped png:skipped)" in err                 # progress lines name the PNG step


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


def sleep_long(obsid, cfg):
    time.sleep(30)
    return batch.ObsResult(obsid=obsid, status="done", pid=os.getpid())


def test_losing_the_dask_scheduler_mid_run_fails_the_rest_in_the_report(tmp_path, caplog):
    """The scheduler stopped mid-run: distributed.wait raised FuturesCancelledError, the
    batch ended in a traceback and wrote no report. Closing the client then logged
    distributed's reconnect traceback (an ERROR of distributed.client): the batch says what
    happened in one line, so that is muted."""
    distributed = pytest.importorskip("distributed")
    import logging
    import threading

    caplog.set_level(logging.WARNING)

    ids = OBSIDS[:3]
    cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                       dashboard_address=None, host="127.0.0.1")
    threading.Timer(3.0, cluster.close).start()
    t0 = time.monotonic()
    try:
        res = batch.run_batch(ids, BatchConfig(save_dir=tmp_path),
                              scheduler=cluster.scheduler_address, task=sleep_long)
    finally:
        cluster.close()
    assert time.monotonic() - t0 < 28
    assert [r.obsid for r in res] == ids
    assert all(r.status == "failed" and "lost the Dask scheduler" in r.error for r in res), \
        [r.error for r in res]
    time.sleep(1.0)   # distributed's reconnect logs from its own loop
    assert not [r for r in caplog.records if r.name.startswith("distributed.client")
                and r.levelno >= logging.ERROR], caplog.text


def test_a_frozen_dask_scheduler_ends_the_run_with_its_report(tmp_path, monkeypatch):
    """A scheduler that stops answering (SIGSTOP, or a network split that keeps the connection
    open) blocked the client's scheduler_info() for ever: no report, no exit. Every call to it
    now has a deadline, and no answer counts as no worker."""
    distributed = pytest.importorskip("distributed")

    class Future:
        def __init__(self, key):
            self.key = key

    class Frozen:
        def submit(self, task, o, cfg, key, **kw):
            return Future(key)

        def as_current(self):
            return contextlib.nullcontext()

        def _block(self, *a, **k):
            time.sleep(3600)

        run = scheduler_info = cancel = close = _block

    def wait(pending, timeout=None, return_when=None):
        time.sleep(0.05)
        raise TimeoutError

    monkeypatch.setattr(batch, "_dask_client", lambda Client, address: Frozen())
    monkeypatch.setattr(distributed, "wait", wait)
    monkeypatch.setattr(batch, "DASK_CONNECT_S", 0.2)
    monkeypatch.setattr(batch, "DASK_NO_WORKER_S", 1.0)
    box = {}
    run = threading.Thread(target=lambda: box.update(res=batch.run_batch(
        OBSIDS[:2], BatchConfig(save_dir=tmp_path), scheduler="tcp://127.0.0.1:8786",
        task=sleep_long)), daemon=True)
    run.start()
    run.join(20)   # a regression hangs: fail then, not at the CI's limit
    assert not run.is_alive(), "the batch still waits for the frozen scheduler"
    res = box["res"]
    assert all(r.status == "failed" and "no Dask worker" in r.error for r in res), \
        [r.error for r in res]


def archive_state(obsid, cfg):
    from xmm_enhance import archive
    return batch.ObsResult(obsid=obsid, status="done", pid=os.getpid(),
                           error=str(archive._UNANSWERED["n"]))


def test_a_dask_run_starts_afresh_with_the_archive_on_its_workers(tmp_path):
    """Workers outlive a run: an archive outage an earlier run met there kept later runs from
    asking the archive for ARCHIVE_ASK_AGAIN_S. Each run resets it, on the workers too."""
    distributed = pytest.importorskip("distributed")
    from xmm_enhance import archive

    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=None, host="127.0.0.1") as cluster, \
            distributed.Client(cluster.scheduler_address, set_as_default=False) as client:
        def outage():
            for _ in range(3):
                archive._archive_answered(False, "cannot reach")
            return archive._UNANSWERED["n"]

        assert set(client.run(outage).values()) == {3}
        res = batch.run_batch(OBSIDS[:1], BatchConfig(save_dir=tmp_path),
                              scheduler=cluster.scheduler_address, task=archive_state)
    assert res[0].status == "done" and res[0].error == "0" and res[0].pid != os.getpid()


# --------------------------------------------------------------------------------------------
# A local imitation of the XSA; it can hold requests, so tests act on a state, not a time
# --------------------------------------------------------------------------------------------
class _XSA(http.server.ThreadingHTTPServer):
    """Serves the PPS files of ``folders[obsid]`` as XSA-style tars on 127.0.0.1.

    ``always_503``: OBS_IDs answered with HTTP 503; unknown OBS_IDs get 404. ``hold``: OBS_IDs
    whose requests wait until ``release`` is set; ``held`` is set as the first of them arrives,
    so a test knows a batch is busy with that observation (holding its lock) and cannot end
    before it is released.
    """

    daemon_threads = True

    def __init__(self, folders, always_503=(), hold=()):
        self.folders, self.always_503, self.hold = folders, set(always_503), set(hold)
        self.gets = []
        self.held, self.release = threading.Event(), threading.Event()
        super().__init__(("127.0.0.1", 0), _XSAHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/nxsa-sl/servlet/data-action-aio?"

    def handle_error(self, request, client_address):
        pass  # a client killed in mid-request is what some tests do


class _XSAHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _serve(self, head):
        q = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
        obsid, name, inst = q.get("obsno", ""), q.get("name", ""), q.get("instname", "")
        self.server.gets.append((obsid, name))          # HEAD and GET
        if obsid in self.server.hold:
            self.server.held.set()
            self.server.release.wait()
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


@pytest.fixture
def xsa(monkeypatch):
    """``xsa(folders, always_503=(), hold=())`` starts a :class:`_XSA` (stopped after the
    test); the proxy settings let 127.0.0.1 through, here and in subprocesses."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    servers = []

    def start(folders, **kw):
        server = _XSA(folders, **kw)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.release.set()
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------------------------
# Separate processes: SIGKILL and resume, SIGTERM, orphaned workers, two batches at once
# --------------------------------------------------------------------------------------------
def _cli(save_dir, models, ids, report, *extra, pps_root=None):
    """``xmm-enhance batch ids --png ...`` in a subprocess of its own session."""
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "xmm_enhance.cli.batch", *ids,
           *_args(save_dir, models, "--png", "--report", report, *extra, pps_root=pps_root)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def _wait_until(condition, proc, timeout=240.0) -> bool:
    """Poll ``condition()`` until it holds (True); False if ``proc`` ended first or after
    ``timeout`` s (a bound for a broken run, not a synchronisation)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if condition():
            return True
        time.sleep(0.02)
    return False


def _stderr_of(proc) -> str:
    """What an ended (or now killed) process wrote on stderr."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    try:
        return proc.communicate(timeout=30)[1][-3000:]
    except subprocess.TimeoutExpired:  # pipes held open by surviving children
        return "(stderr unavailable)"


def _descendants(pid: int) -> list[int]:
    """Pids of all processes below ``pid`` (from /proc: the ppid field of each stat)."""
    children: dict = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:                                 # ended meanwhile
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])   # "pid (comm) state ppid ..."
        children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _pidfds(pids) -> dict:
    """``{pid: pidfd}`` for the pids still running (a pidfd never refers to a reused pid)."""
    fds = {}
    for p in pids:
        try:
            fds[p] = os.pidfd_open(p)
        except ProcessLookupError:
            pass
    return fds


def _still_running(fds: dict, timeout: float) -> list[int]:
    """Block until every process of ``fds`` has ended; return those still running after
    ``timeout`` s. A pidfd becomes readable when its process ends (zombies included)."""
    import select

    deadline = time.monotonic() + timeout
    alive = dict(fds)
    while alive and (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select(list(alive.values()), [], [], left)
        alive = {p: fd for p, fd in alive.items() if fd not in ready}
    return sorted(alive)


def _kill_and_close(fds: dict) -> None:
    for fd in fds.values():
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(fd, signal.SIGKILL)
        os.close(fd)


def _reap(proc, fds: dict) -> None:
    """Kill what a test left running (the watched processes, then the group) and close pipes."""
    _kill_and_close(fds)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


needs_pidfd = pytest.mark.skipif(not (sys.platform.startswith("linux")
                                      and hasattr(os, "pidfd_open")),
                                 reason="needs Linux /proc and pidfd_open")


def test_sigkill_mid_run_then_rerun_resumes(tmp_path, pps_root, models, xsa):
    ids = OBSIDS[:4]
    server = xsa({o: pps_root / o / "pps" for o in ids}, hold=[ids[3]])
    out = tmp_path / "out"
    proc = _cli(out, models, ids, tmp_path / "killed", "--archive-url", server.url)
    try:
        # Kill the batch (all its processes) while the second observation is being worked on:
        # its image made, SR, DN and PNGs on the way, files possibly half-written. Wherever the
        # kill lands from there on, the batch cannot have ended: the last observation's
        # download is held by the archive until the rerun.
        second = out / ids[1] / LOG_NAME
        assert _wait_until(lambda: second.exists() and "step image: ran" in second.read_text(),
                           proc), _stderr_of(proc)
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
    from xmm_enhance.fsmode import _HOST
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / ids[2] / f".pn_cleaned_x.fits.{dead.pid}-{_HOST}.k1l2_3x.tmp").write_bytes(b"SIMPLE")
    old = out / ids[2] / ".pn_cleaned_y.fits.k1l2_3y.tmp"   # no writer named: by its age
    old.write_bytes(b"SIMPLE  =   half")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    (out / ids[2] / f".pps-download-{dead.pid}-{_HOST}-abc123").mkdir()   # a killed one's

    server.hold.clear()
    server.release.set()
    rep = tmp_path / "rerun"
    assert main(_args(out, models, *ids, "--png", "--report", rep, "--archive-url",
                      server.url)) == 0
    r = _report(rep)
    assert all(r[o]["status"] == "done" for o in ids)
    assert (r[ids[0]]["steps"]
            == "download:skipped image:skipped SR:skipped DN:skipped png:skipped")
    assert r[ids[3]]["steps"] == "download:ran image:ran SR:ran DN:ran png:ran"
    assert {p: p.stat().st_mtime_ns for p in _products(out, ids[0])} == before
    for o in ids:                                       # no step ran twice
        counts = _ran_counts(out, o)
        assert all(v <= 1 for v in counts.values()), (o, counts)
        for step in ("download", "image", "SR", "DN"):
            # a step whose outputs the killed run completed, but was killed before logging
            # "ran", is skipped by the rerun (not redone): it still ran exactly once
            assert counts[step] == 1 or f"{step}:skipped" in r[o]["steps"], (o, step, counts)
        products = _products(out, o)
        assert len(products) == 7
        assert all((png_is_valid(p) if p.suffix == ".png" else fits_is_valid(p))[0]
                   for p in products)
    assert _leftovers(out) == []


def test_sigterm_stops_cleanly_with_a_partial_report(tmp_path, pps_root, models, xsa):
    ids = OBSIDS[:4]
    server = xsa({o: pps_root / o / "pps" for o in ids}, hold=[ids[1]])
    out = tmp_path / "out"
    proc = _cli(out, models, ids, tmp_path / "partial", "--archive-url", server.url)
    try:
        # One observation at a time, in order: when the batch asks for the second one's
        # products, the first is finished and recorded; that request is held, so the batch is
        # certainly in the middle of the second observation when the signal comes.
        assert _wait_until(server.held.is_set, proc), _stderr_of(proc)
        proc.send_signal(signal.SIGTERM)
        out_text, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted after 1 of 4 observations" in err and "rerun the same command" in err
    doc = json.loads(Path(f"{tmp_path / 'partial'}.json").read_text())
    assert doc["meta"]["interrupted"] is True
    # every observation asked for is listed: the unfinished ones as interrupted
    assert ([(o["obsid"], o["status"]) for o in doc["observations"]]
            == [(ids[0], "done")] + [(o, "interrupted") for o in ids[1:]])
    assert doc["totals"] == {"done": 1, "interrupted": 3}
    assert all("interrupted" in o["error"] for o in doc["observations"][1:])
    assert ids[0] in out_text                                           # summary on stdout
    assert "4 observations: 1 done, 0 failed, 0 busy" in out_text
    assert "3 interrupted" in out_text
    assert all(ObservationLock(out / o / batch.LOCK_NAME).is_free() for o in ids)
    assert _leftovers(out) == []


@needs_pidfd
def test_killed_batch_takes_its_workers_with_it(tmp_path, pps_root, models, xsa):
    """kill -9 of the batch process alone (as cron's `timeout -s KILL` does): its pool workers
    end too, releasing their observations' locks, and a rerun completes everything."""
    ids = OBSIDS[:4]
    held = ids[0]
    server = xsa({o: pps_root / o / "pps" for o in ids}, hold=[held])
    out = tmp_path / "out"
    proc = _cli(out, models, ids, tmp_path / "killed", "--jobs", "2", "--archive-url",
                server.url)
    fds: dict = {}
    try:
        # A worker is busy with `held` (it holds its lock and waits for the archive).
        assert _wait_until(server.held.is_set, proc), _stderr_of(proc)
        lock = ObservationLock(out / held / batch.LOCK_NAME)
        assert not lock.is_free()
        busy = int(lock.holder().split()[0])            # the lock file names its holder
        below = _descendants(proc.pid)                  # workers (and multiprocessing helpers)
        assert busy in below, (busy, below)
        fds = _pidfds(below)
        os.kill(proc.pid, signal.SIGKILL)               # the parent only, not its group
        proc.wait(timeout=30)
        survivors = _still_running(fds, timeout=10)
        assert survivors == [], f"processes of the killed batch still running: {survivors}"
        assert lock.is_free()
    finally:
        _reap(proc, fds)

    server.hold.clear()
    server.release.set()
    rep = tmp_path / "rerun"
    assert main(_args(out, models, *ids, "--report", rep, "--archive-url", server.url)) == 0
    r = _report(rep)
    assert [r[o]["status"] for o in ids] == ["done"] * 4
    assert r[held]["steps"] == "download:ran image:ran SR:ran DN:ran"
    assert _leftovers(out) == []


@needs_pidfd
def test_worker_watchdog_alone_ends_an_orphaned_worker(tmp_path):
    """The portable guard (no PR_SET_PDEATHSIG): a worker whose parent is killed ends."""
    code = ("import multiprocessing, os, sys, time\n"
            f"sys.path.insert(0, {str(REPO)!r})\n"
            "from concurrent.futures import ProcessPoolExecutor\n"
            "from xmm_enhance import batch\n"
            "ex = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context('spawn'),\n"
            "                         initializer=batch._worker_init,\n"
            "                         initargs=(os.getpid(), False))\n"
            "print(ex.submit(os.getpid).result(), flush=True)\n"
            "ex.submit(time.sleep, 600)\n"
            "time.sleep(600)\n")
    env = dict(os.environ, MPLBACKEND="Agg")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    fds: dict = {}
    try:
        worker = int(proc.stdout.readline())            # the worker is up and initialised
        below = _descendants(proc.pid)
        assert worker in below
        fds = _pidfds(below)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert _still_running(fds, timeout=10) == []
    finally:
        _reap(proc, fds)


def test_two_batches_at_once_process_each_observation_once(tmp_path, pps_root, models):
    ids = OBSIDS
    out = tmp_path / "out"
    procs = [_cli(out, models, ids, tmp_path / f"rep{i}", pps_root=pps_root) for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=400)
        assert p.returncode == 0, err[-2000:]
    reps = [_report(tmp_path / f"rep{i}") for i in range(2)]
    for o in ids:
        assert _ran_counts(out, o) == {"download": 0, "image": 1, "SR": 1, "DN": 1}, o
        statuses = sorted(rep[o]["status"] for rep in reps)
        assert statuses in (["busy", "done"], ["done", "done"]), statuses
        ran = [rep[o] for rep in reps if "ran" in rep[o]["steps"]]
        assert len(ran) == 1 and ran[0]["steps"] == "image:ran SR:ran DN:ran png:ran"
    assert _leftovers(out) == []


# --------------------------------------------------------------------------------------------
# Downloads
# --------------------------------------------------------------------------------------------
def test_downloads_from_local_archive_with_unreachable_observation(tmp_path, pps_root, models,
                                                                   xsa, capsys):
    good, down, bogus = OBSIDS[:2], OBSIDS[2], "0000000199"
    server = xsa({o: pps_root / o / "pps" for o in OBSIDS[:3]}, always_503=[down])
    out = tmp_path / "out"
    retries, backoff = 2, 0.1
    common = ("--which", "DN", "--archive-url", server.url, "--retries", str(retries),
              "--backoff", str(backoff))
    code = main(_args(out, models, *good, down, bogus, *common, "--report", tmp_path / "rep"))
    assert code == 1
    std = capsys.readouterr()
    r = _report(tmp_path / "rep")
    assert [r[o]["status"] for o in good] == ["done", "done"]
    assert r[good[0]]["steps"] == "download:ran image:ran DN:ran"
    assert r[down]["status"] == "failed" and r[down]["steps"] == "download:failed"
    assert "503" in r[down]["error"] and "after 3 attempts" in r[down]["error"]
    # first try + 2 retries, each stopped by its first 503
    assert sum(1 for o, n in server.gets if o == down) == retries + 1
    # the download time counts the retries: at least the back-off waits between them
    assert r[down]["download_s"] >= sum(backoff * 2 ** k for k in range(retries))
    assert r[bogus]["status"] == "failed" and "404" in r[bogus]["error"]
    for o in (down, bogus):
        # no image and no folder were made: the row names neither, nothing is left behind
        assert r[o]["image"] == "" and r[o]["log"] == ""
        assert not (out / o).exists()
        # the OBS_ID is said once per line, not "OBS_ID X: failed: OBS_ID X: ..."
        assert not r[o]["error"].startswith("OBS_ID")
        lines = [ln for ln in std.err.splitlines() + std.out.splitlines() if o in ln]
        assert lines and all(_mentions(o, ln) == 1 for ln in lines), lines
    # Rerun: finished observations do not touch the archive again.
    n_before = len(server.gets)
    server.always_503.clear()
    image = Path(r[good[1]]["image"])               # a truncated image is remade from the
    image.write_bytes(image.read_bytes()[:5000])    # PPS already downloaded
    assert main(_args(out, models, *good, down, *common, "--report", tmp_path / "rep2")) == 0
    r2 = _report(tmp_path / "rep2")
    assert r2[good[0]]["steps"] == "download:skipped image:skipped DN:skipped"
    assert r2[good[0]]["download_s"] == 0.0
    assert r2[good[1]]["steps"] == "download:skipped image:ran DN:ran"
    assert r2[down]["steps"] == "download:ran image:ran DN:ran"
    assert {o for o, _ in server.gets[n_before:]} == {down}
    assert _leftovers(out) == []


# --------------------------------------------------------------------------------------------
# Pool failures, predictions made stale by a new image, new folders, usage errors
# --------------------------------------------------------------------------------------------
def crash_on_0000000102(obsid, cfg):
    """A task whose worker process dies (as if OOM-killed) on one observation."""
    if obsid == "0000000102":
        os._exit(9)
    time.sleep(0.2)
    return batch.ObsResult(obsid=obsid, status="done", pid=os.getpid())


def crash_then_hang(obsid, cfg):
    """0000000102 kills its pool's worker; rerun alone (its marker file there), it hangs."""
    mark = Path(cfg.save_dir) / f"ran_{obsid}"
    if obsid == "0000000102":
        if not mark.exists():
            mark.write_text("")
            os._exit(9)
        (Path(cfg.save_dir) / "hanging").write_text(str(os.getpid()))
        time.sleep(60)
    return batch.ObsResult(obsid=obsid, status="done", pid=os.getpid())


def test_an_interrupt_after_a_worker_died_stops_at_once(tmp_path):
    """After a dead worker the pool's observations rerun each in a process of its own; a
    SIGTERM or Ctrl-C then waited for those processes to finish (a long download: until
    cron's timeout killed the batch)."""
    import signal
    import threading

    hanging = tmp_path / "hanging"

    def interrupt_when_hanging():
        t_end = time.monotonic() + 60
        while not hanging.exists() and time.monotonic() < t_end:
            time.sleep(0.05)
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGINT)   # a real signal: it ends the main thread's wait

    threading.Thread(target=interrupt_when_hanging, daemon=True).start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        batch.run_batch(OBSIDS[:3], BatchConfig(save_dir=tmp_path), jobs=2,
                        task=crash_then_hang)
    assert hanging.exists() and time.monotonic() - t0 < 40
    with pytest.raises(ProcessLookupError):
        os.kill(int(hanging.read_text()), 0)


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


def mark_and_sleep(obsid, cfg):
    """A task that says it started (a file in save_dir) and takes a second."""
    # written whole or not at all: a worker terminated between the file's creation and its
    # write left an empty one, which the test then failed to read
    tmp = Path(cfg.save_dir) / f".started_{obsid}.tmp"
    tmp.write_text(str(os.getpid()))
    tmp.replace(Path(cfg.save_dir) / f"started_{obsid}")
    time.sleep(1.0)
    return batch.ObsResult(obsid=obsid, status="done", pid=os.getpid())


def test_an_interrupted_pool_starts_nothing_more(tmp_path):
    """Ctrl-C / SIGTERM (KeyboardInterrupt in the parent) with --jobs 2: the workers are
    stopped. Before, the tasks already queued to them still ran after the report had called
    them unfinished."""
    ids = [f"00000003{i:02d}" for i in range(10)]

    def stop(r):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        batch.run_batch(ids, BatchConfig(save_dir=tmp_path), jobs=2, task=mark_and_sleep,
                        on_result=stop)
    started = lambda: sorted(p.name for p in tmp_path.glob("started_*"))  # noqa: E731
    n = len(started())
    time.sleep(3.0)
    assert len(started()) == n <= 4, started()
    pids = {int(p.read_text()) for p in tmp_path.glob("started_*")}
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_report_that_cannot_be_written_is_one_line_and_leaves_no_stale_latest(
        tmp_path, pps_root, models, capsys, monkeypatch):
    out = tmp_path / "out"
    o = OBSIDS[0]
    assert main(_args(out, models, o, pps_root=pps_root)) == 0
    latest = out / "reports" / "latest.csv"
    assert latest.is_file()
    real = batch._atomic_text

    def full(path, text):
        if str(path).endswith(".json"):
            raise OSError(28, "No space left on device")
        return real(path, text)

    monkeypatch.setattr(batch, "_atomic_text", full)
    capsys.readouterr()
    time.sleep(1.1)                # another report name (UTC second + pid) than the first's
    code = main(_args(out, models, o, pps_root=pps_root))
    cap = capsys.readouterr()
    assert code == 1
    err = [e for e in cap.err.splitlines() if e.startswith("error")]
    assert len(err) == 1 and "cannot write the report (No space left on device)" in err[0]
    assert "latest.csv/.json removed" in err[0]
    assert o in cap.out                       # the summary table is still printed
    assert not latest.exists()
    assert len(list((out / "reports").glob("batch_*.csv"))) == 1   # the first run's only


def test_a_lock_whose_stamp_cannot_be_written_is_still_taken_and_released(tmp_path,
                                                                          monkeypatch):
    """A full disk made the holder's stamp fail after the flock was taken: the lock stayed
    held with its descriptor open, and the observation read 'busy' until the process ended."""
    def full(*a, **k):
        raise OSError(28, "No space left on device")

    lock = ObservationLock(tmp_path / "o" / ".lock")
    monkeypatch.setattr(os, "pwrite", full)
    assert lock.acquire()
    assert not ObservationLock(tmp_path / "o" / ".lock").is_free()
    lock.release()
    assert ObservationLock(tmp_path / "o" / ".lock").is_free()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_an_observation_log_on_a_full_disk_keeps_the_real_outcome(tmp_path, pps_root, capfd):
    """Every write of the observation's log fails (ENOSPC): no '--- Logging error ---'
    tracebacks on the console, and the row keeps the real outcome, not an OSError."""
    obs = tmp_path / "out" / "0000000199"
    obs.mkdir(parents=True)
    (obs / batch.LOG_NAME).symlink_to("/dev/full")
    r = batch.process_observation("0000000199", BatchConfig(save_dir=tmp_path / "out",
                                                            pps_root=pps_root))
    err = capfd.readouterr().err
    assert "Logging error" not in err and "Traceback" not in err, err
    assert r.status == "failed" and "OSError" not in r.error
    assert "PPS" in r.error or "pps" in r.error, r.error


def test_dask_addresses_that_are_no_scheduler_fail_in_one_line(tmp_path, monkeypatch):
    pytest.importorskip("distributed")
    import http.server
    import threading

    from xmm_enhance.errors import XmmEnhanceError
    with pytest.raises(UsageError, match="not a scheduler address"):
        batch.run_batch(["0123456789"], BatchConfig(save_dir=tmp_path), scheduler="garbage")
    # an HTTP server (the dashboard's port, say): a clean error within the deadline
    monkeypatch.setattr(batch, "DASK_CONNECT_S", 2.0)
    srv = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    t0 = time.monotonic()
    try:
        with pytest.raises(XmmEnhanceError, match="cannot connect"):
            batch.run_batch(["0123456789"], BatchConfig(save_dir=tmp_path),
                            scheduler=f"tcp://127.0.0.1:{srv.server_address[1]}")
    finally:
        srv.shutdown()
    assert time.monotonic() - t0 < 15


@pytest.mark.parametrize("extra", [["--dask-scheduler", "foo"], ["--which", ""]])
def test_malformed_dask_address_or_empty_which_is_a_usage_error_before_anything(tmp_path,
                                                                                 extra, capsys):
    """A malformed --dask-scheduler wrote a report with a failed row and replaced latest.csv
    before exiting 2; --which '' quietly meant images only."""
    save = tmp_path / "save"
    assert main(["0123456789", "--save_dir", str(save), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and extra[0] in err[0], err
    assert not save.exists()


def test_a_run_whose_scheduler_is_out_of_reach_still_writes_its_report(tmp_path, monkeypatch,
                                                                       capsys):
    """The run printed one error and wrote no report, so latest.csv kept showing the previous
    run as the newest; now every observation is a failed row saying why."""
    import socket as _socket

    monkeypatch.setattr(batch, "DASK_CONNECT_S", 1.0)
    with _socket.socket() as s:      # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out"
    (out / "reports").mkdir(parents=True)
    (out / "reports" / "latest.csv").write_text("obsid,status\n0000000009,done\n")
    code = main(["--save_dir", str(out), "--which", "none", "--dask-scheduler",
                 f"tcp://127.0.0.1:{port}", OBSIDS[0], OBSIDS[1]])
    err = capsys.readouterr().err
    assert code == 1 and "cannot connect" in err, err
    rows = _report(out / "reports" / "latest")
    assert set(rows) == {OBSIDS[0], OBSIDS[1]}
    assert all(r["status"] == "failed" and "not run: --dask-scheduler" in r["error"]
               for r in rows.values())


def test_predictions_older_than_a_replaced_image_are_redone(tmp_path, pps_root, models):
    o = OBSIDS[0]
    out = tmp_path / "out"
    assert main(_args(out, models, o, "--report", tmp_path / "r1", pps_root=pps_root)) == 0
    image = Path(_report(tmp_path / "r1")[o]["image"])
    stem = image.name[: -len(".fits")]
    preds = {w: out / o / f"{stem}_predict_wcs_{w}.fits.gz" for w in ("SR", "DN")}
    old = {w: fits.getdata(p).astype(np.float64) for w, p in preds.items()}
    assert all(v.sum() > 0 for v in old.values())

    # The image is replaced by a newer, valid one (twice the counts: the identity DN and the
    # flux-conserving replication SR are linear, so new predictions are exactly twice the old)
    # and the predictions made from the old one are older than it.
    from xmm_enhance.fitsio import atomic_write_hdul

    with fits.open(image) as hdul:
        new = fits.HDUList([h.copy() for h in hdul])
    k = next(i for i, h in enumerate(new) if h.is_image and h.data is not None and h.data.size)
    new[k].data = new[k].data * 2
    atomic_write_hdul(new, image, overwrite=True)
    t_image = image.stat().st_mtime_ns
    for w in ("SR", "DN"):
        for p in (out / o).glob(f"{stem}_*_{w}.*"):
            os.utime(p, ns=(t_image - 60 * 10**9, t_image - 60 * 10**9))
    cfg = BatchConfig(save_dir=out, pps_root=pps_root, sr_model=models[0], dn_model=models[1])
    assert batch.observation_state(o, cfg) == {"image": "skip", "SR": "redo", "DN": "redo"}

    assert main(_args(out, models, o, "--report", tmp_path / "r2", pps_root=pps_root)) == 0
    assert _report(tmp_path / "r2")[o]["steps"] == "image:skipped SR:ran DN:ran"
    for w, p in preds.items():
        np.testing.assert_allclose(fits.getdata(p), 2 * old[w], rtol=1e-6, atol=0)
        assert p.stat().st_mtime_ns >= t_image


def test_new_folders_are_made_and_an_unknown_observation_leaves_none(tmp_path, pps_root,
                                                                     models, capsys):
    save = tmp_path / "a" / "b" / "save"                # neither exists yet: made like mkdir -p
    rep = tmp_path / "c" / "d" / "rep"
    bogus = "0000000199"                                # not in pps_root
    code = main(_args(save, models, OBSIDS[0], bogus, "--which", "dn", "--report", rep,
                      pps_root=pps_root))
    assert code == 1
    std = capsys.readouterr()
    r = _report(rep)
    assert r[OBSIDS[0]]["status"] == "done" and r[OBSIDS[0]]["steps"] == "image:ran DN:ran"
    assert r[bogus]["status"] == "failed" and bogus in r[bogus]["error"]  # names the folder
    assert r[bogus]["image"] == "" and r[bogus]["log"] == "" and not (save / bogus).exists()
    assert sorted(p.name for p in save.iterdir()) == [OBSIDS[0]]
    # the summary table is the output (stdout, so `> file` catches it); logs are on stderr
    totals = "2 observations: 1 done, 1 failed, 0 busy"
    assert totals in std.out and totals not in std.err
    assert f"[2/2] {bogus} failed" in std.err and "[2/2]" not in std.out
    # A report that cannot be written is a usage error before any observation starts.
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    assert main(_args(tmp_path / "s2", models, OBSIDS[0], "--report", blocker / "rep",
                      pps_root=pps_root)) == 2
    assert "--report" in capsys.readouterr().err and not (tmp_path / "s2" / OBSIDS[0]).exists()


def test_failed_observation_keeps_its_log_and_names_no_image(tmp_path, pps_root, models):
    root = tmp_path / "pps"
    o = OBSIDS[0]
    (root / o / "pps").mkdir(parents=True)
    for f in (pps_root / o / "pps").iterdir():
        (root / o / "pps" / f.name).write_bytes(f.read_bytes())
    ev = next((root / o / "pps").glob("*PIEVLI*"))      # a truncated event list
    ev.write_bytes(ev.read_bytes()[: ev.stat().st_size // 2])
    out = tmp_path / "out"
    assert main(_args(out, models, o, "--report", tmp_path / "rep", pps_root=root)) == 1
    row = _report(tmp_path / "rep")[o]
    assert row["status"] == "failed" and row["image"] == ""
    assert Path(row["log"]) == out / o / LOG_NAME       # kept, for the diagnosis
    text = Path(row["log"]).read_text()
    failed = [ln for ln in text.splitlines() if " ERROR " in ln]
    assert failed and all(_mentions(o, ln) == 1 for ln in failed), failed


def test_every_batch_option_has_help():
    import argparse

    from xmm_enhance.cli.batch import build_parser

    p = build_parser()
    bare = [a.option_strings or a.dest for a in p._actions
            if not a.help or a.help == argparse.SUPPRESS]
    assert bare == []


def test_which_is_read_alike_by_infer_and_batch(tmp_path, capsys):
    """`--which sr` means SR in both commands; a bad value is a usage error in both."""
    from xmm_enhance.cli.batch import _which
    from xmm_enhance.cli.infer import build_parser as infer_parser

    for text, want in (("sr", "SR"), ("Dn", "DN"), ("SR", "SR")):
        assert infer_parser().parse_args(["x.fits", "--which", text]).which == want
        assert _which(text) == (want,)
    with pytest.raises(SystemExit) as exc:
        infer_parser().parse_args(["x.fits", "--which", "xx"])
    assert exc.value.code == 2
    assert main(["--save_dir", str(tmp_path), "--which", "xx", "0123456789"]) == 2


def test_source_threshold_reaches_the_sr_list_and_a_change_redoes_it(tmp_path, pps_root,
                                                                      models):
    from xmm_enhance.sources import DEFAULT_MIN_SIGNIF

    sr2 = exposure_aware(tmp_path / "sr2.onnx", "SR", point_share=0.9)  # with a points map
    obsid, out = OBSIDS[0], tmp_path / "out"

    def run(tag, *extra):
        rep = tmp_path / tag
        assert main(_args(out, (sr2, models[1]), obsid, "--which", "SR", "--report", rep,
                          *extra, pps_root=pps_root)) == 0
        row = _report(rep)[obsid]
        pred = next((out / obsid).glob("*_predict_wcs_SR.fits.gz"))
        with fits.open(pred) as h:
            assert row["sr_sources"] == len(h["SOURCES"].data)
            return row, h["SOURCES"].header["MINSIG"]

    row, minsig = run("r1")
    assert row["steps"] == "image:ran SR:ran" and minsig == DEFAULT_MIN_SIGNIF
    n_default = row["sr_sources"]
    row, minsig = run("r2", "--min-signif", "3.5")   # another threshold: SR is redone
    assert row["steps"] == "image:skipped SR:ran" and minsig == 3.5
    assert row["sr_sources"] >= n_default
    assert "source list made at 4.5 sigma, 3.5 asked" in (out / obsid / LOG_NAME).read_text()
    row, _ = run("r3", "--min-signif", "3.5")        # the same one: nothing to do
    assert row["steps"] == "image:skipped SR:skipped"
    # DN lists no sources; below 3 sigma a list is mostly noise
    assert main(_args(out, models, obsid, "--which", "DN", "--min-signif", "4")) == 2
    assert main(_args(out, models, obsid, "--min-signif", "2")) == 2


def test_usage_errors(tmp_path, models, capsys):
    assert main(["--save_dir", str(tmp_path), "--which", "XX", "0123456789"]) == 2
    assert "--which 'XX'" in capsys.readouterr().err
    assert main(["--save_dir", str(tmp_path), "--jobs", "0", "0123456789"]) == 2
    # the image maker's argument errors are usage errors here too, before anything runs
    for opt, bad in (("--binSize", "0"), ("--binSize", "-80"), ("--low_pi", "-1"),
                     ("--expo_time", "nan"), ("--binSize", "1"), ("--expo_time", "0.0005")):
        assert main(["--save_dir", str(tmp_path / "s"), opt, bad, "0123456789"]) == 2, opt
        # the option, its Python name where that differs (binsize=), and the value
        assert re.search(rf"{opt}( \(\w+=\))? {re.escape(bad)}", capsys.readouterr().err)
        assert not (tmp_path / "s").exists()
    assert main(["--save_dir", str(tmp_path), "--archive-url", "nxsa.esac.esa.int/x",
                 "0123456789"]) == 2
    assert "--archive-url 'nxsa.esac.esa.int/x': not an http(s) URL" in capsys.readouterr().err
    with pytest.raises(UsageError):
        batch.run_batch(["0123456789"], BatchConfig(save_dir=tmp_path), jobs=0)
    r = batch.process_observation("../../etc", BatchConfig(save_dir=tmp_path / "s"))
    assert r.status == "failed" and "10 digits" in r.error and not (tmp_path / "s").exists()


def test_prediction_missing_an_extension_or_cut_short_is_redone(tmp_path, pps_root):
    """A prediction file that lacks an extension its model writes, or is a truncated gzip
    (astropy then reads the HDUs before the cut without an error), is redone by a rerun."""
    from xmm_enhance.fitsio import atomic_write_hdul

    sr = exposure_aware(tmp_path / "sr.onnx", "SR", point_share=0.9)   # every extension
    dn = exposure_aware(tmp_path / "dn.onnx", "DN")                      # LO68, HI68
    cfg = BatchConfig(save_dir=tmp_path / "out", sr_model=sr, dn_model=dn)
    assert batch.required_extensions(batch._model("SR", cfg)) == (
        "POINTS", "DIFFUSE", "LO68", "HI68", "SOURCES")
    assert batch.required_extensions(batch._model("DN", cfg)) == ("LO68", "HI68")
    obsid, out = OBSIDS[0], tmp_path / "out"

    def run(tag):
        rep = tmp_path / tag
        assert main(_args(out, (sr, dn), obsid, "--report", rep, pps_root=pps_root)) == 0
        return _report(rep)[obsid]

    first = run("r1")
    assert first["steps"] == "image:ran SR:ran DN:ran"
    n_sources = first["sr_sources"]
    assert isinstance(n_sources, int)
    preds = {w: next((out / obsid).glob(f"*_predict_wcs_{w}.fits.gz")) for w in ("SR", "DN")}

    # Rewritten without one extension: complete, checksums verify, same model, newer than
    # the image; only the extension is missing.
    for w, drop in (("SR", "HI68"), ("DN", "LO68")):
        with fits.open(preds[w]) as hdul:
            kept = fits.HDUList([h.copy() for h in hdul if h.name != drop])
        atomic_write_hdul(kept, preds[w], overwrite=True)
        assert fits_is_valid(preds[w]) == (True, "")
    cfg = BatchConfig(save_dir=out, pps_root=pps_root, sr_model=sr, dn_model=dn)
    assert batch.observation_state(obsid, cfg) == {"image": "skip", "SR": "redo", "DN": "redo"}
    second = run("r2")
    assert second["steps"] == "image:skipped SR:ran DN:ran"
    text = (out / obsid / LOG_NAME).read_text()
    assert "no HI68 extension" in text and "no LO68 extension" in text
    for w in ("SR", "DN"):
        with fits.open(preds[w]) as hdul:
            assert {"LO68", "HI68"} <= {h.name for h in hdul}

    # Cut short: the report's source count comes from the remade file, never blank.
    raw = preds["SR"].read_bytes()
    preds["SR"].write_bytes(raw[: int(len(raw) * 0.7)])
    third = run("r3")
    assert third["steps"] == "image:skipped SR:ran DN:skipped"
    assert third["sr_sources"] == n_sources
    assert fits_is_valid(preds["SR"])[0]
    assert run("r4")["steps"] == "image:skipped SR:skipped DN:skipped"


def test_malformed_list_lines_are_reported_and_the_good_ids_run(tmp_path, pps_root, models,
                                                                capsys):
    ids = tmp_path / "obsids.txt"
    nine = OBSIDS[1][1:]                                # its leading zero lost
    ids.write_text(f"# nightly list\n{OBSIDS[0]}\nabc\n{nine}\n")
    rep = tmp_path / "rep"
    code = main(_args(tmp_path / "out", models, ids, "--which", "none", "--report", rep,
                      pps_root=pps_root))
    assert code == 1                                    # like any failed observation
    std = capsys.readouterr()
    # as every other console warning (cron logs are grepped for "warning:")
    assert f"warning: {ids} line 3: 'abc' is not a ten-digit OBS_ID" in std.err
    assert f"{ids} line 4: '{nine}' has 9 digits" in std.err and OBSIDS[1] in std.err
    assert "2 of 3 observations failed" in std.err
    assert "3 observations: 1 done, 2 failed, 0 busy" in std.out
    r = _report(rep)
    assert r[OBSIDS[0]]["status"] == "done" and r[OBSIDS[0]]["steps"] == "image:ran"
    assert r["abc"]["status"] == "failed" and "line 3" in r["abc"]["error"]
    assert r[nine]["status"] == "failed" and f"write it as {OBSIDS[1]}" in r[nine]["error"]
    assert json.loads(Path(f"{rep}.json").read_text())["totals"] == {"done": 1, "failed": 2}
    assert not (tmp_path / "out" / nine).exists() and not (tmp_path / "out" / "abc").exists()
    # --dry-run lists them too, and exits 1 as the real run would; a malformed id on the
    # command line is still a usage error
    assert main(_args(tmp_path / "out", models, ids, "--which", "none", "--dry-run",
                      pps_root=pps_root)) == 1
    out = capsys.readouterr().out
    assert f"{OBSIDS[0]}  skip" in out and "line 3: 'abc'" in out and "2 malformed" in out
    assert main(_args(tmp_path / "out", models, nine, pps_root=pps_root)) == 2
    assert f"write it as {OBSIDS[1]}" in capsys.readouterr().err


def test_prune_reports_keeps_the_newest_runs_and_nothing_else(tmp_path):
    folder = tmp_path / "reports"
    folder.mkdir()
    runs = [f"batch_202601{d:02d}T021500Z_{100 + d}" for d in range(1, 8)]   # oldest first
    for base in runs:
        for ext in ("csv", "json"):
            (folder / f"{base}.{ext}").write_text(base)
    others = ["latest.csv", "latest.json", "notes.txt", "batch_manual.csv", "my_batch.csv",
              f"{runs[0]}.csv.bak", f".{runs[0]}.csv.abc123.tmp"]
    for name in others:
        (folder / name).write_text("keep me")
    (folder / "batch_20250101T000000Z_1.csv").mkdir()   # a folder by that name: left alone
    deleted = batch.prune_reports(folder, keep=3, current=folder / runs[1])
    # the newest 3 runs and the current one (started earlier, ended later) stay
    assert sorted(p.name for p in deleted) == sorted(f"{b}.{e}" for b in (runs[0], *runs[2:4])
                                                     for e in ("csv", "json"))
    left = sorted(p.name for p in folder.iterdir())
    assert left == sorted([*others, "batch_20250101T000000Z_1.csv",
                           *(f"{b}.{e}" for b in (runs[1], *runs[4:]) for e in ("csv", "json"))])
    # the next run's pruning (without that current run) deletes it
    deleted = batch.prune_reports(folder, keep=3)
    assert sorted(p.name for p in deleted) == [f"{runs[1]}.csv", f"{runs[1]}.json"]
    assert batch.REPORTS_KEPT >= 10
    with pytest.raises(ValueError):
        batch.prune_reports(folder, keep=0)


def test_default_reports_are_rotated_and_the_newest_copied_to_latest(tmp_path, pps_root,
                                                                      models, monkeypatch):
    out = tmp_path / "out"
    reports = out / "reports"
    reports.mkdir(parents=True)
    old = [reports / f"batch_202601{d:02d}T021500Z_{d}.{e}" for d in range(1, 4)
           for e in ("csv", "json")]
    for p in old:
        p.write_text("old")
    mine = reports / "notes.txt"
    mine.write_text("mine")
    monkeypatch.setattr(batch, "REPORTS_KEPT", 2)
    assert main(_args(out, models, OBSIDS[0], "--which", "none", pps_root=pps_root)) == 0
    new = sorted(reports.glob(f"batch_*_{os.getpid()}.csv"))
    assert len(new) == 1
    # this run and the newest old one are kept; the two oldest runs are gone; nothing else
    assert sorted(p.name for p in reports.iterdir()) == sorted(
        [new[0].name, new[0].with_suffix(".json").name, old[4].name, old[5].name,
         "latest.csv", "latest.json", "notes.txt"])
    assert (reports / "latest.csv").read_text() == new[0].read_text()
    assert (reports / "latest.json").read_text() == new[0].with_suffix(".json").read_text()
    assert mine.read_text() == "mine"
    # with --report the user's names are left alone: no rotation, no latest copies
    rep = tmp_path / "mine" / "rep"
    assert main(_args(out, models, OBSIDS[0], "--which", "none", "--report", rep,
                      pps_root=pps_root)) == 0
    assert sorted(p.name for p in rep.parent.iterdir()) == ["rep.csv", "rep.json"]
    assert _report(rep)[OBSIDS[0]]["status"] == "done"


# --------------------------------------------------------------------------------------------
# Audit edges: list encodings, empty lists, stale PNG/region files, warnings on the console
# --------------------------------------------------------------------------------------------
def test_list_files_in_other_encodings_and_lone_csv_cells(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="xmm_enhance.batch")
    ids = OBSIDS[:4]
    f = tmp_path / "ids.txt"
    # a UTF-8 byte-order mark (Windows editors) opens line 1; a Latin-1 byte in a comment
    f.write_bytes(b"\xef\xbb\xbf" + f"{ids[0]}\n# r\xe9sum\xe9 of tonight\n".encode("latin-1")
                  + f"{ids[1]}  # caf\xe9\n".encode("latin-1"))
    assert read_obsid_list([str(f)]) == ids[:2]
    # a spreadsheet's one-column export: quoted cells, trailing separators, CRLF
    f.write_bytes(f'"{ids[0]}"\r\n{ids[1]},\r\n{ids[2]};\r\n"{ids[3]}",;\r\n'
                  f"'{ids[0]}'\r\n".encode())
    assert read_obsid_list([str(f)]) == ids
    # UTF-16 with its mark (Notepad's "Unicode")
    f.write_text(f"{ids[0]}\n{ids[1]}\n", encoding="utf-16")
    assert read_obsid_list([str(f)]) == ids[:2]
    # a byte that is not UTF-8 in the id part is a bad line of its own, not an unreadable list
    f.write_bytes(f"{ids[0]}\n{ids[1]}\xe9\n{ids[2]},{ids[3]}\n".encode("latin-1"))
    bad = []
    assert read_obsid_list([str(f)], bad=bad) == [ids[0]]
    assert [(b.line, b.reason.split(";")[0]) for b in bad] == [
        (2, "holds bytes that are not UTF-8 text (the list was saved in another encoding)"),
        (3, "is not a ten-digit OBS_ID")]
    assert "save the list as UTF-8" in bad[0].reason
    assert json.dumps(bad[0].result().error)            # reportable (no lone surrogates)
    # stdin: bytes with a byte-order mark, and a text stream (no buffer) alike
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(
        b"\xef\xbb\xbf" + f'"{ids[2]}"\n'.encode())))
    assert read_obsid_list(["-"]) == [ids[2]]
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"\ufeff{ids[3]};\n"))
    assert read_obsid_list(["-"]) == [ids[3]]


def test_an_empty_list_is_nothing_to_do_and_save_dir_must_be_a_folder(tmp_path, models,
                                                                       monkeypatch, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing tonight\n\n")
    out = tmp_path / "out"
    assert main(_args(out, models, empty)) == 0           # cron must not mail every night
    assert "nothing to do" in capsys.readouterr().err
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
    assert main(_args(out, models, "-")) == 0             # batch - < /dev/null
    assert main(_args(out, models, empty, "-q")) == 0
    assert capsys.readouterr().err.count("nothing to do") == 1
    assert not out.exists()                               # no report, no folder
    with pytest.raises(SystemExit) as exc:                # no item at all: a usage error
        main(_args(out, models))
    assert exc.value.code == 2
    capsys.readouterr()
    # --save_dir naming a regular file: say so (not "fix its permissions")
    assert main(_args(empty, models, OBSIDS[0])) == 2
    err = capsys.readouterr().err
    assert f"--save_dir {empty}: it is a file, not a folder; pass a folder" in err
    assert "permissions" not in err
    assert main(_args(empty / "sub", models, OBSIDS[0])) == 2
    assert f"{empty} is a file, not a folder" in capsys.readouterr().err


def test_stale_png_or_missing_region_file_redoes_sr(tmp_path, pps_root):
    sr = exposure_aware(tmp_path / "sr.onnx", "SR", point_share=0.9)   # SOURCES + region
    obsid, out = OBSIDS[0], tmp_path / "out"

    def run(tag, *extra):
        rep = tmp_path / tag
        assert main(_args(out, (sr, sr), obsid, "--which", "SR", "--report", rep, *extra,
                          pps_root=pps_root)) == 0
        return _report(rep)[obsid]

    first = run("r1", "--png")
    assert first["steps"] == "image:ran SR:ran png:ran"
    reg = next((out / obsid).glob("*_sources_SR.reg"))
    png = next((out / obsid).glob("*_predict_wcs_SR.png"))
    pred = next((out / obsid).glob("*_predict_wcs_SR.fits.gz"))
    assert str(reg) in first["outputs"]["SR"]
    # as if made yesterday: everything one minute older, in the same order
    for p in (out / obsid).iterdir():
        if p.is_file():
            t = p.stat().st_mtime_ns - 60 * 10**9
            os.utime(p, ns=(t, t))
    # another threshold without --png: SR redone, the PNG left as it was (now stale)
    assert run("r2", "--min-signif", "6")["steps"] == "image:skipped SR:ran"
    assert png.stat().st_mtime < pred.stat().st_mtime - 30
    cfg = BatchConfig(save_dir=out, pps_root=pps_root, sr_model=sr, which=("SR",), png=True,
                      min_signif=6.0)
    assert batch.observation_state(obsid, cfg) == {"image": "skip", "SR": "redo"}
    assert (run("r3", "--min-signif", "6", "--png")["steps"]
            == "image:skipped SR:ran png:ran")
    assert f"{png.name}: older than {pred.name}" in (out / obsid / LOG_NAME).read_text()
    assert png.stat().st_mtime >= pred.stat().st_mtime
    # a fresh set (region and PNG written within the same second as the prediction) is valid
    assert (run("r4", "--min-signif", "6", "--png")["steps"]
            == "image:skipped SR:skipped png:skipped")
    # the region file is part of the SR outputs of a model that lists sources
    reg.unlink()
    assert batch.observation_state(obsid, cfg) == {"image": "skip", "SR": "redo"}
    assert (run("r5", "--min-signif", "6", "--png")["steps"]
            == "image:skipped SR:ran png:ran")
    assert reg.is_file()
    reg.write_text(reg.read_text()[:30])                     # cut short
    assert (run("r6", "--min-signif", "6", "--png")["steps"]
            == "image:skipped SR:ran png:ran")
    assert f"{reg.name}: not a complete region file" in (out / obsid / LOG_NAME).read_text()
    assert (run("r7", "--min-signif", "6", "--png")["steps"]
            == "image:skipped SR:skipped png:skipped")


def test_observation_warnings_reach_the_console_and_the_report(tmp_path, pps_root, models,
                                                               capsys):
    from xmm_enhance import inference
    from xmm_enhance.cli import batch as cli_batch

    assert cli_batch.MODEL_BAND_PI == inference.MODEL_BAND_PI
    assert cli_batch.BAND_TOLERANCE_PI == inference.BAND_TOLERANCE_PI
    ids = OBSIDS[:2]
    rep = tmp_path / "rep"
    # -q keeps warnings (docs/batch.md); the warnings come back from the worker processes
    assert main(_args(tmp_path / "out", models, *ids, "--which", "DN", "--low_pi", "2000",
                      "--high_pi", "10000", "--expo_time", "30", "--jobs", "2", "-q",
                      "--report", rep, pps_root=pps_root)) == 0
    std = capsys.readouterr()
    assert std.out == ""                                  # -q: no table
    band = [ln for ln in std.err.splitlines() if "trained on 0.5-2 keV" in ln
            and ln.startswith("warning: --low_pi 2000 --high_pi 10000")]
    assert len(band) == 1                                  # said once, before anything runs
    r = _report(rep)
    for o in ids:
        assert r[o]["status"] == "done" and r[o]["pid"] != os.getpid()
        short = [w for w in r[o]["warnings"] if "requested 30 ks but only" in w]
        assert len(short) == 1 and not short[0].startswith((o, "OBS_ID"))
        assert f"warning: OBS_ID {o}: {short[0]}" in std.err
        assert all(_mentions(o, ln) == 1 for ln in std.err.splitlines() if o in ln)
    rows = {row["obsid"]: row for row in csv.DictReader(open(f"{rep}.csv"))}
    assert "requested 30 ks but only" in rows[ids[0]]["warnings"]
    # a rerun that skips every step has nothing to say
    assert main(_args(tmp_path / "out", models, *ids, "--which", "DN", "--low_pi", "2000",
                      "--high_pi", "10000", "--expo_time", "30", "--report", tmp_path / "r2",
                      pps_root=pps_root)) == 0
    assert all(row["warnings"] == [] for row in _report(tmp_path / "r2").values())
    # in this process (--jobs 1), -v: each warning once (not live and again at the end)
    assert main(_args(tmp_path / "out2", models, ids[0], "--which", "none", "--expo_time",
                      "30", "-v", "--report", tmp_path / "r3", pps_root=pps_root)) == 0
    err = capsys.readouterr().err
    assert err.count("requested 30 ks but only") == 1
    assert f"warning: OBS_ID {ids[0]}: requested 30 ks" in err


# --------------------------------------------------------------------------------------------
# Cron hygiene: UTC log stamps, capped logs, interrupted rows, the PNG step, ISO meta times
# --------------------------------------------------------------------------------------------
_ISO_Z = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


@contextlib.contextmanager
def _time_zone(tz: str):
    old = os.environ.get("TZ")
    os.environ["TZ"] = tz
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = old
        time.tzset()


def _iso_seconds(stamp: str) -> float:
    """Seconds since the epoch of an ISO 8601 UTC stamp ``...T..:..:...mmmZ``."""
    import calendar

    return calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) + float(stamp[19:-1])


def test_observation_log_is_stamped_in_utc(tmp_path, pps_root, models):
    """The log's stamps are UTC with a Z, as the lock file's and the report's, whatever TZ."""
    obsid, out = OBSIDS[0], tmp_path / "out"
    with _time_zone("America/Los_Angeles"):
        before = time.time()
        assert main(_args(out, models, obsid, "--which", "none", "--report", tmp_path / "r",
                          pps_root=pps_root)) == 0
        after = time.time()
    lines = (out / obsid / LOG_NAME).read_text().splitlines()
    assert lines and all(re.match(rf"{_ISO_Z} (INFO|WARNING|ERROR) ", ln) for ln in lines)
    stamps = [_iso_seconds(ln.split(" ", 1)[0]) for ln in lines]
    assert before - 1 <= stamps[0] and stamps[-1] <= after + 1, (before, lines, after)
    assert stamps == sorted(stamps)
    row = _report(tmp_path / "r")[obsid]                  # the report's stamp: the same clock
    assert abs(_iso_seconds(row["started_utc"]) - stamps[0]) < 2
    holder = ObservationLock(out / obsid / batch.LOCK_NAME).holder()
    assert re.search(_ISO_Z, holder), holder


@pytest.mark.parametrize("cap", [1900, 2000, 2150, 2300, 2450])  # a few attempts' worth
def test_observation_log_is_capped_with_one_backup(tmp_path, pps_root, models, monkeypatch,
                                                   cap):
    """Whatever the lines' lengths (paths, pid, host name), the log rotates between attempts:
    the rotation used to split an attempt where its lines happened to pass the cap."""
    obsid, out = OBSIDS[0], tmp_path / "out"
    monkeypatch.setattr(batch, "LOG_MAX_BYTES", cap)
    log_path, backup = out / obsid / LOG_NAME, out / obsid / f"{LOG_NAME}.1"

    def run(tag):
        assert main(_args(out, models, obsid, "--which", "none", "--report", tmp_path / tag,
                          pps_root=pps_root)) == 0

    run("r1")
    assert log_path.stat().st_size < cap and not backup.exists()
    with open(log_path, "a") as fh:                       # a year of nightly attempts
        fh.write("2026-01-01T00:00:00.000Z INFO old attempt\n" * 200)
    old = log_path.read_text()
    run("r2")
    assert backup.read_text() == old                      # the old log, whole, as .log.1
    text = log_path.read_text()
    assert len(text.encode()) < cap and "old attempt" not in text
    assert text.count("=== OBS_ID") == 1                  # this attempt, from its header on
    attempts = 1
    while "old attempt" in backup.read_text():            # until the log rotates again
        attempts += 1
        assert attempts < 50, "the log was never rotated again"
        run(f"r{attempts + 1}")
        assert log_path.stat().st_size < cap
    # one backup only, replaced: the two files hold the last attempts, each whole
    assert sorted(p.name for p in (out / obsid).glob(f"{LOG_NAME}*")) == [LOG_NAME,
                                                                          f"{LOG_NAME}.1"]
    kept = backup.read_text()
    assert len(kept.encode()) < cap and kept.startswith(text)
    assert kept.count("=== OBS_ID") == attempts - 1
    assert log_path.read_text().count("=== OBS_ID") == 1


def _interrupted_run_batch(n_done: int):
    """A stand-in for run_batch that finishes ``n_done`` observations, then is interrupted."""
    def run_batch(obsids, cfg, *, jobs=1, scheduler=None, on_result=None, task=None):
        for o in list(obsids)[:n_done]:
            on_result(batch.ObsResult(obsid=o, status="done", steps="image:skipped",
                                      started_utc=batch._utc()))
        raise KeyboardInterrupt

    return run_batch


def test_interrupted_run_reports_every_unfinished_observation(tmp_path, pps_root, models,
                                                              monkeypatch, capsys):
    """latest.csv/.json of an interrupted run list the unfinished observations, so that a
    script reading them does not see a stopped run as one where nothing failed."""
    ids = OBSIDS[:4]
    lst = tmp_path / "obsids.txt"
    lst.write_text(f"{ids[0]}\n{ids[1]}\n12345\n{ids[2]}\n{ids[3]}\n")
    monkeypatch.setattr(batch, "run_batch", _interrupted_run_batch(1))
    out = tmp_path / "out"
    assert main(_args(out, models, lst, pps_root=pps_root)) == 130
    std = capsys.readouterr()
    assert "interrupted after 1 of 4 observations (3 not finished" in std.err
    rows = list(csv.DictReader(open(out / "reports" / "latest.csv")))
    assert ([(r["obsid"], r["status"]) for r in rows]
            == [(ids[0], "done")] + [(o, "interrupted") for o in ids[1:]] + [("12345", "failed")])
    for r in rows[1:4]:
        assert "interrupted" in r["error"] and "rerun" in r["error"] and r["host"]
    doc = json.loads((out / "reports" / "latest.json").read_text())
    assert doc["meta"]["interrupted"] is True
    assert doc["totals"] == {"done": 1, "interrupted": 3, "failed": 1}
    assert [o["status"] for o in doc["observations"]] == [r["status"] for r in rows]
    assert ("5 observations: 1 done, 1 failed, 0 busy (locked by another batch), "
            "3 interrupted (not finished)") in std.out
    # a run that finishes lists no interrupted row, and its summary line does not mention it
    monkeypatch.setattr(batch, "run_batch", _interrupted_run_batch(0))
    assert main(_args(out, models, ids[0], pps_root=pps_root)) == 130
    assert [r["status"] for r in csv.DictReader(open(out / "reports" / "latest.csv"))] == [
        "interrupted"]
    capsys.readouterr()
    monkeypatch.undo()
    assert main(_args(out, models, ids[0], "--which", "none", pps_root=pps_root)) == 0
    assert "interrupted" not in capsys.readouterr().out
    assert [r["status"] for r in csv.DictReader(open(out / "reports" / "latest.csv"))] == [
        "done"]


def test_png_step_is_reported(tmp_path, pps_root, models, capsys):
    obsid, out = OBSIDS[0], tmp_path / "out"

    def run(tag, *extra):
        assert main(_args(out, models, obsid, "--which", "DN", "--report", tmp_path / tag,
                          *extra, pps_root=pps_root)) == 0
        return _report(tmp_path / tag)[obsid]

    first = run("r1", "--png")
    assert first["steps"] == "image:ran DN:ran png:ran" and first["png_s"] > 0
    err = capsys.readouterr().err
    assert f"{obsid} done in" in err and "(image:ran DN:ran png:ran)" in err
    assert "step png: ran in" in (out / obsid / LOG_NAME).read_text()
    second = run("r2", "--png")
    assert second["steps"] == "image:skipped DN:skipped png:skipped" and second["png_s"] == 0
    assert run("r3")["steps"] == "image:skipped DN:skipped"           # no --png, no PNG step


def test_summary_table_shows_the_png_time():
    r = batch.ObsResult(obsid=OBSIDS[0], status="done", image_s=1.0, sr_s=2.0, dn_s=3.0,
                        png_s=4.0, total_s=10.5)
    lines = batch.summary_table([r]).splitlines()
    assert lines[0].index("image") == lines[2].index("1.0") + 3 - len("image")
    assert lines[0].split()[:8] == ["OBS_ID", "status", "image", "SR", "DN", "PNG", "total",
                                    "expo"]
    assert lines[2].split()[:7] == [OBSIDS[0], "done", "1.0", "2.0", "3.0", "4.0", "10.5"]
    unfinished = batch.interrupted_result(OBSIDS[1])
    assert unfinished.status == "interrupted" and not unfinished.ok
    both = batch.summary_table([r, unfinished]).splitlines()
    assert both[2].index("1.0") == both[3].index("0.0")          # the columns stay aligned
    assert both[-1] == (
        "2 observations: 1 done, 0 failed, 0 busy (locked by another batch), "
        "1 interrupted (not finished)")


def test_report_meta_times_are_iso_utc(tmp_path, pps_root, models):
    out = tmp_path / "out"
    assert main(_args(out, models, OBSIDS[0], "--which", "none", pps_root=pps_root)) == 0
    doc = json.loads((out / "reports" / "latest.json").read_text())
    meta, row = doc["meta"], doc["observations"][0]
    for key in ("started_utc", "ended_utc"):
        assert re.fullmatch(_ISO_Z, meta[key]), meta
    assert re.fullmatch(_ISO_Z, row["started_utc"])
    assert meta["started_utc"] <= row["started_utc"] <= meta["ended_utc"]
    # the file name keeps the compact form, the same second as the meta's start
    (name,) = [p.name for p in (out / "reports").glob("batch_*.json")]
    compact = re.fullmatch(r"batch_(\d{8}T\d{6}Z)_\d+\.json", name).group(1)
    assert compact == time.strftime("%Y%m%dT%H%M%SZ", time.strptime(meta["started_utc"][:19],
                                                                    "%Y-%m-%dT%H:%M:%S"))


def test_a_report_folder_gets_the_report_inside_it(tmp_path, pps_root, models):
    """--report DIR with an existing folder wrote DIR.csv and DIR.json beside it."""
    out, rep = tmp_path / "out", tmp_path / "reps"
    rep.mkdir()
    assert main(_args(out, models, OBSIDS[0], "--which", "none", "--report", rep,
                      pps_root=pps_root)) == 0
    names = sorted(p.name for p in rep.iterdir())
    assert len(names) == 2 and all(re.fullmatch(r"batch_\d{8}T\d{6}Z_\d+\.(csv|json)", n)
                                   for n in names), names
    assert not (tmp_path / "reps.csv").exists()
    # a folder that does not exist yet, named with a trailing slash (which Path drops): made,
    # and the report inside it, not new.csv beside it
    assert main(_args(out, models, OBSIDS[0], "--which", "none", "--report",
                      f"{tmp_path / 'new'}/", pps_root=pps_root)) == 0
    assert (tmp_path / "new").is_dir() and not (tmp_path / "new.csv").exists()
    assert len(list((tmp_path / "new").glob("batch_*.csv"))) == 1


def test_an_empty_report_path_that_cannot_be_written_names_report(tmp_path, pps_root, models,
                                                                   monkeypatch, capsys):
    """--report '' is the current folder: where that cannot be written, the error names
    --report, not the (writable) --save_dir."""
    if not Path("/proc").is_dir():
        pytest.skip("needs a folder that cannot be written, /proc")
    monkeypatch.chdir("/proc")
    code = main(_args(tmp_path / "out", models, OBSIDS[0], "--which", "none", "--report", "",
                      pps_root=pps_root))
    err = capsys.readouterr().err
    assert code == 2 and "--report" in err and "--save_dir" not in err.split("pass")[0]


def test_library_use_keeps_the_users_logging_and_checks_its_arguments(tmp_path, pps_root,
                                                                      models):
    """run_batch from a notebook: the observation's INFO lines go to its log file only, not
    to the user's WARNING-level console; a bare string, an int id or which='SR' are refused
    before anything runs."""
    import logging

    class Keep(logging.Handler):
        def __init__(self):
            super().__init__()
            self.records = []

        def emit(self, record):
            self.records.append(record)

    root, pkg = logging.getLogger(), logging.getLogger("xmm_enhance")
    keep = Keep()
    saved = root.level, pkg.level, pkg.propagate
    root.addHandler(keep)
    root.setLevel(logging.WARNING)
    pkg.setLevel(logging.NOTSET)      # as a fresh notebook has it (earlier tests may not)
    pkg.propagate = True
    try:
        cfg = BatchConfig(save_dir=tmp_path / "out", pps_root=pps_root, sr_model=models[0],
                          dn_model=models[1])
        res = batch.run_batch([OBSIDS[0], "0000000999"], cfg)
        after = pkg.level, pkg.propagate
    finally:
        root.removeHandler(keep)
        root.setLevel(saved[0])
        pkg.setLevel(saved[1])
        pkg.propagate = saved[2]
    assert [r.status for r in res] == ["done", "failed"]
    assert not [r for r in keep.records if r.levelno < logging.WARNING], \
        [r.getMessage() for r in keep.records][:3]
    assert "step SR: ran" in (tmp_path / "out" / OBSIDS[0] / LOG_NAME).read_text()
    assert after == (logging.NOTSET, True)     # put back as they were
    with pytest.raises(UsageError, match="not the one string"):
        batch.run_batch(OBSIDS[0], cfg)
    with pytest.raises(UsageError, match="not a string"):
        batch.run_batch([123456789], cfg)
    with pytest.raises(UsageError, match="'SR' or 'DN'"):
        BatchConfig(save_dir=tmp_path, which=("SR", "XX"))
    assert BatchConfig(save_dir=tmp_path, which="sr").which == ("SR",)
    assert batch.read_obsid_list(OBSIDS[0]) == [OBSIDS[0]]


def test_failed_steps_are_named_in_the_row(tmp_path, pps_root, models, monkeypatch):
    """A PNG that cannot be written left the SR step out of the row although its FITS files
    were written; a failed image showed no step at all."""
    from xmm_enhance import display, pipeline
    from xmm_enhance.errors import OutputError, PPSError

    def no_png(res, path, **kw):
        raise OutputError(f"{path}: cannot write (No space left on device)")

    monkeypatch.setattr(display, "quicklook_png", no_png)
    cfg = BatchConfig(save_dir=tmp_path / "out", pps_root=pps_root, sr_model=models[0],
                      which=("SR",), png=True)
    r = batch.process_observation(OBSIDS[0], cfg)
    assert r.status == "failed" and r.steps == "image:ran SR:ran png:failed", r.steps

    def no_image(*a, **k):
        raise PPSError("P...PIEVLI0000.FTZ: corrupt or truncated FITS file")

    monkeypatch.setattr(pipeline, "make_image", no_image)
    r = batch.process_observation(OBSIDS[1], cfg)
    assert r.status == "failed" and r.steps == "image:failed", r.steps


def test_another_image_copied_in_with_an_older_time_is_predicted_again(tmp_path, pps_root,
                                                                       models):
    """The batch kept predictions newer than the image file; an image replaced with cp -p
    (another observation's, or one made again elsewhere) kept the old predictions."""
    cfg = BatchConfig(save_dir=tmp_path / "out", pps_root=pps_root, sr_model=models[0],
                      dn_model=models[1])
    r = batch.process_observation(OBSIDS[0], cfg)
    assert r.status == "done", r.error
    image = Path(r.image)
    pred = Path(r.outputs["DN"][1])
    old = pred.stat().st_mtime_ns - 10**9
    with fits.open(image) as h:
        h[0].data[200, 200] += 5
        h.writeto(image, overwrite=True, checksum=True)
    os.utime(image, ns=(old, old))
    r = batch.process_observation(OBSIDS[0], cfg)
    assert r.status == "done" and "SR:ran" in r.steps and "DN:ran" in r.steps, r.steps
    from xmm_enhance.inference import _sha256
    assert fits.getheader(pred)["INSHA"] == _sha256(image)


def test_a_broken_sr_model_does_not_keep_dn_from_running(tmp_path, pps_root, models):
    """A junk --sr-model failed the SR step, and the observation stopped there: DN, whose
    model was fine, never ran."""
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    cfg = BatchConfig(save_dir=tmp_path / "out", pps_root=pps_root, sr_model=junk,
                      dn_model=models[1])
    r = batch.process_observation(OBSIDS[0], cfg)
    assert r.status == "failed" and r.steps == "image:ran SR:failed DN:ran", r.steps
    assert "junk.onnx" in r.error and "DN" in r.outputs
    assert all(Path(p).is_file() for p in r.outputs["DN"])


def test_a_mistyped_list_or_model_path_says_what_is_wrong_and_the_fix(tmp_path, capsys):
    """A list file that does not exist reads 'no such OBS_ID list file', a folder 'a folder',
    and a missing --sr-model names the fix; all usage errors (exit 2) before anything runs."""
    with pytest.raises(UsageError, match=r"obsids\.txtt: no such OBS_ID list file; pass ids"):
        read_obsid_list([str(tmp_path / "obsids.txtt")], bad=[])
    with pytest.raises(UsageError, match=r": a folder, not an OBS_ID list file"):
        read_obsid_list([str(tmp_path)], bad=[])
    assert main(["0123456789", "--save_dir", str(tmp_path), "--sr-model",
                 str(tmp_path / "nope.onnx")]) == 2
    err = capsys.readouterr().err
    assert "nope.onnx: no such file; pass an .onnx model file, or leave the option out" in err
    assert not list(tmp_path.iterdir())


def test_batch_with_stderr_closed_still_runs_and_reports(tmp_path, pps_root, models):
    """Under cron with ``2>&-``: Python gives sys.stderr = None. The batch ran nothing and
    said nothing (isatty on None); now it runs, writes its report and exits 0, and no file
    it opens takes descriptor 2."""
    save = tmp_path / "save"
    a = _args(save, models, OBSIDS[0], "--which", "DN", pps_root=pps_root)
    a = [x for x in a if x not in ("--progress", "lines")]   # the default 'auto' asks isatty
    code = ("import os, sys; os.close(2); sys.stderr = None; "
            f"sys.path.insert(0, {str(REPO)!r}); "
            "from xmm_enhance.cli.batch import main; "
            f"rc = main({a!r}); "
            "print('rc', rc, os.readlink('/proc/self/fd/2'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.stdout.strip().splitlines()[-1] == "rc 0 /dev/null", out.stdout + out.stderr
    assert _report(save / "reports" / "latest")[OBSIDS[0]]["status"] == "done"


def test_a_save_dir_whose_name_is_not_utf8_gets_its_report(tmp_path, pps_root, models):
    """A --save_dir with a Latin-1 byte in its name: the batch crashed writing its report
    (UnicodeEncodeError) after doing the work, on every rerun."""
    save = Path(os.fsdecode(os.fsencode(str(tmp_path)) + b"/lat\xe9in"))
    assert main(_args(save, models, OBSIDS[0], "--which", "DN", "-q", pps_root=pps_root)) == 0
    rows = _report(save / "reports" / "latest")
    assert rows[OBSIDS[0]]["status"] == "done"
    csv_bytes = (save / "reports" / "latest.csv").read_bytes()
    assert b"lat\xe9in" in csv_bytes                   # the path as the file system has it
    assert "step DN: ran" in (save / OBSIDS[0] / LOG_NAME).read_text(errors="replace")


def test_batch_from_a_deleted_folder_is_one_line(tmp_path, pps_root):
    """Run from a folder deleted meanwhile (default --save_dir .): one line and exit 2, not a
    FileNotFoundError traceback."""
    gone = tmp_path / "gone"
    gone.mkdir()
    code = f"cd {str(gone)!r} && rmdir {str(gone)!r} && exec {sys.executable!r} -c " + repr(
        f"import sys; sys.path.insert(0, {str(REPO)!r}); from xmm_enhance.cli.batch import main;"
        f" sys.exit(main([{OBSIDS[0]!r}, '--pps_dir', {str(pps_root)!r}]))")
    out = subprocess.run(["sh", "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        "xmm-enhance batch: error: the current folder no longer exists (deleted while the shell "
        "was in it); cd to an existing folder, or give absolute paths"]


def test_a_model_file_replaced_on_disk_is_loaded_again(tmp_path, models):
    """A worker keeps its loaded models between observations; a model file replaced meanwhile
    (a new version copied over it) used to be ignored: the outputs named the old model."""
    dn = tmp_path / "dn.onnx"
    dn.write_bytes(Path(models[1]).read_bytes())
    cfg = BatchConfig(save_dir=tmp_path, dn_model=dn)
    first = batch._model("DN", cfg)
    assert batch._model("DN", cfg) is first            # kept while the file is the same
    offset_model(tmp_path / "other.onnx", "DN", 0.0)
    os.replace(tmp_path / "other.onnx", dn)
    again = batch._model("DN", cfg)
    assert again is not first and again.sha256 != first.sha256


def test_a_callback_that_raises_stops_the_pool_once(tmp_path):
    """run_batch(jobs=2) with an on_result that raises: the error propagates, as with one job;
    the callback was called a second time with a made-up 'failed' row for the same OBS_ID."""
    ids = [f"00000004{i:02d}" for i in range(3)]
    calls = []

    def boom(r):
        calls.append((r.obsid, r.status))
        raise RuntimeError("callback failed")

    with pytest.raises(RuntimeError, match="callback failed"):
        batch.run_batch(ids, BatchConfig(save_dir=tmp_path), jobs=2, task=mark_and_sleep,
                        on_result=boom)
    assert len(calls) == 1 and calls[0][1] == "done"


@pytest.mark.parametrize("bad", [float("nan"), -5, 0, 200])
def test_batch_config_checks_min_signif(tmp_path, bad):
    with pytest.raises(UsageError, match="min_signif"):
        BatchConfig(save_dir=tmp_path, min_signif=bad)


def test_two_threads_running_batches_leave_logging_and_warnings_as_they_were(
        tmp_path, pps_root, models):
    """Observations worked on at once in threads (two run_batch calls, a Dask worker with
    several threads) left the package logger at INFO without propagation and an 'always'
    warnings filter behind: each saved and restored the process-wide state in turn."""
    pkg = logging.getLogger("xmm_enhance")
    before = (pkg.level, pkg.propagate, list(pkg.handlers), list(warnings.filters),
              warnings.showwarning)
    cfgs = [BatchConfig(save_dir=tmp_path / f"s{k}", pps_root=pps_root, which=("DN",),
                        dn_model=models[1], backend="native", threads=1) for k in range(2)]
    out = {}

    def run(k):
        out[k] = batch.run_batch(OBSIDS[3 * k:3 * k + 3], cfgs[k])

    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert all(r.status == "done" for k in range(2) for r in out[k]), out
    assert (pkg.level, pkg.propagate, list(pkg.handlers), list(warnings.filters),
            warnings.showwarning) == before
    assert batch._LOG_STATE["users"] == 0 and batch._WARN_STATE["users"] == 0


@pytest.mark.parametrize("bad, match", [
    (dict(low_pi=2000, high_pi=500), "--low_pi 2000 must be below --high_pi 500"),
    (dict(binsize=0), "--binSize"),
    (dict(expo_time_ks=float("nan")), "--expo_time"),
    (dict(backend="bogus"), "--backend 'bogus'"),
    (dict(archive_url="ftp://x"), "archive_url"),
    (dict(threads=0), "threads"),
    (dict(retries=-1), "retries"),
    (dict(save_dir=None), "save_dir"),
    (dict(binsize=40), r'--binSize \(binsize=\) 40 makes 2"/pixel images.*--which none'),
])
def test_a_bad_batch_config_is_refused_when_made(tmp_path, bad, match):
    """A Python BatchConfig took any band, bin size, backend or URL; run_batch then made every
    observation's folder and log and failed each with the same message."""
    kwargs = dict(save_dir=tmp_path / "out")
    kwargs.update(bad)
    with pytest.raises(UsageError, match=match):
        BatchConfig(**kwargs)
    assert not (tmp_path / "out").exists()


def test_batch_config_paths_are_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = BatchConfig(save_dir="out", pps_root="pps")
    assert cfg.save_dir == tmp_path / "out" and cfg.pps_root == tmp_path / "pps"


def test_a_list_files_column_name_is_skipped_and_only_ascii_digits_count(tmp_path):
    """A spreadsheet's one-column export starts with the column's name: counted as a failed
    observation every night (exit 1, cron mail). Fullwidth or Arabic-Indic digits matched
    \\d and went to the archive as an OBS_ID."""
    lst = tmp_path / "l.csv"
    lst.write_text('"obsid"\n0123456789\nOBS_ID\n\uff10\uff11\uff12\uff13\uff14\uff15\uff16'
                   '\uff17\uff18\uff19\n\u0660\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668'
                   '\u0669\n', encoding="utf-8")
    bad = []
    assert batch.read_obsid_list([str(lst)], bad=bad) == ["0123456789"]
    assert [b.line for b in bad] == [3, 4, 5]       # a name later on is a malformed line
    with pytest.raises(UsageError, match="pass ids like 0123456789"):
        batch.read_obsid_list(["\uff10\uff11\uff12\uff13\uff14\uff15\uff16\uff17\uff18\uff19"])
    from xmm_enhance.archive import validate_obsid
    with pytest.raises(UsageError):
        validate_obsid("\u0660\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669")


def test_another_bin_size_is_fine_for_images_only(tmp_path):
    assert BatchConfig(save_dir=tmp_path, binsize=40, which=()).binsize == 40


def test_a_report_that_cannot_be_written_says_truly_what_became_of_latest(tmp_path,
                                                                         monkeypatch):
    """The message said latest.csv/.json were removed even when removing them failed too (a
    folder made read-only), and advised freeing disk space for a permission error."""
    import errno

    rep = tmp_path / "reports"
    rep.mkdir()
    for e in (".csv", ".json"):
        (rep / f"latest{e}").write_text("old run")

    def refuse(*a, **k):
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(batch, "_write_report", refuse)
    real_unlink = Path.unlink
    monkeypatch.setattr(Path, "unlink", lambda self, *a, **k: refuse()
                        if self.name.startswith("latest") else real_unlink(self, *a, **k))
    with pytest.raises(batch.XmmEnhanceError) as err:
        batch.write_report([], rep / "batch_x", latest=True)
    msg = str(err.value)
    assert "could not be removed either" in msg and "latest.csv" in msg
    assert "make the folder writable" in msg and "free disk space" not in msg
