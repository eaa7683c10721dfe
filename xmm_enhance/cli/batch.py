"""``xmm-enhance batch``: many OBS_IDs through image -> SR -> DN (-> PNGs), cron-safe.

Examples::

    xmm-enhance batch obsids.txt --save_dir /data/xmm --png --jobs 2
    xmm-enhance batch 0852030101 0852030201 --which DN --pps_dir /archive/pps
    xmm-enhance batch obsids.txt --save_dir /shared/xmm --dask-scheduler tcp://head:8786

Exit status: 0 when every observation is done (or busy in another batch), and when the list
files (or stdin) hold no OBS_ID at all (nothing to do), 1 when any failed (a malformed line of a
list file counts as a failed observation: it is reported, the other ids still run; a dry run
finding one exits 1 too), 2 on usage errors, 130 when interrupted (the report then lists what
finished, and each observation that did not as ``interrupted``).
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path

from .. import __version__
from ..errors import UsageError, XmmEnhanceError
from ..imageargs import BAND_TOLERANCE_PI, MODEL_BAND_PI, is_model_band  # noqa: F401
from .common import (MIN_SIGNIF_HELP, add_verbosity, add_version, check_min_signif,
                     cwd_gone_is_one_line, ensure_std_streams, file_option_error, report_error,
                     setup_logging)

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    from ..batch import REPORTS_KEPT

    p = argparse.ArgumentParser(
        prog="xmm-enhance batch",
        description="Make images and SR/DN predictions for many OBS_IDs; resumable (finished, "
                    "valid outputs are skipped), locked per observation, parallel.",
        epilog="Per observation everything lands in SAVE_DIR/<OBS_ID>/, with its log in "
               "xmm_enhance_batch.log; the report goes to SAVE_DIR/reports/ unless --report "
               f"(the newest also as latest.csv/.json there; the newest {REPORTS_KEPT} runs' "
               "reports are kept). Exit 0 all done (or the lists hold no OBS_ID), 1 some "
               "failed (a malformed line of a list file counts as failed, in a dry run too), "
               "2 usage error, 130 interrupted (SIGTERM, Ctrl-C: the report lists the "
               "observations not finished as interrupted).")
    p.add_argument("obsids", nargs="+", metavar="OBSID_OR_FILE",
                   help="ten-digit OBS_IDs and/or files with one OBS_ID a line (# comments; "
                        "a malformed line is reported and counted as failed, the others run); "
                        "'-' reads the list from stdin")
    g = p.add_argument_group("image maker (as make_detxy_pn_image_pps.py)")
    g.add_argument("--save_dir", type=Path, default=Path("."),
                   help="output root: SAVE_DIR/<OBS_ID>/ (default: current folder)")
    g.add_argument("--pps_dir", type=Path,
                   help="local PPS trees PPS_DIR/<OBS_ID>/pps or PPS_DIR/<OBS_ID> (no download)")
    g.add_argument("--low_pi", type=int, default=500, help="lowest PI, eV (default 500)")
    g.add_argument("--high_pi", type=int, default=2000, help="highest PI, eV (default 2000)")
    g.add_argument("--expo_time", type=float, default=20.0,
                   help="image exposure, ks (default 20; <= 0 keeps all good time)")
    g.add_argument("--binSize", type=int, default=80,
                   help="bin size in DET units of 0.05\" (default 80 = 4\")")
    g.add_argument("--backend", choices=("auto", "native", "sas"), default="auto",
                   help="native (numpy/astropy), sas (XMM-SAS via pysas) or auto: sas when "
                        "pysas imports and SAS_DIR is set, else native (default auto)")
    g.add_argument("--credentials_file", type=Path, help="XSA credentials (proprietary data)")
    g.add_argument("--overwrite", action="store_true",
                   help="redo every step even when its outputs are complete and valid")
    m = p.add_argument_group("predictions")
    m.add_argument("--which", default="SR,DN",
                   help="comma list of SR, DN (any case), or 'none' for images only "
                        "(default SR,DN)")
    m.add_argument("--png", action="store_true", help="quick-look PNG per prediction")
    m.add_argument("--min-signif", type=float, metavar="SIGMA", help=MIN_SIGNIF_HELP)
    m.add_argument("--sr-model", type=Path, help="SR ONNX model (default: bundled)")
    m.add_argument("--dn-model", type=Path, help="DN ONNX model (default: bundled)")
    m.add_argument("--threads", type=int,
                   help="onnxruntime threads per observation (default: CPUs / --jobs; "
                        "1 with --dask-scheduler)")
    r = p.add_argument_group("running")
    r.add_argument("--jobs", type=int, default=1,
                   help="observations in parallel, in worker processes (default 1)")
    r.add_argument("--dask-scheduler", metavar="ADDRESS",
                   help="submit to a running dask.distributed scheduler (tcp://host:8786); "
                        "SAVE_DIR must be shared with its workers")
    r.add_argument("--report", type=str,
                   help="report path; FILE.csv and FILE.json are written, folders created "
                        "as needed; an existing folder, or a path ending in /, gets "
                        "batch_<UTC>_<pid>.csv/.json "
                        "(default SAVE_DIR/reports/batch_<UTC>_<pid>, copied to "
                        f"latest.csv/.json; only the newest {REPORTS_KEPT} runs' are kept)")
    r.add_argument("--dry-run", action="store_true", help="list what would run, do nothing")
    r.add_argument("--retries", type=int, default=3,
                   help="download retries for transient archive errors (default 3)")
    r.add_argument("--backoff", type=float, default=2.0,
                   help="first retry delay in s, doubled each time (default 2)")
    r.add_argument("--archive-url", help="XSA data-action-aio URL (a mirror; '?' is "
                                         "appended when missing)")
    r.add_argument("--progress", choices=("auto", "bar", "lines"), default="auto",
                   help="progress bar on a terminal, log lines otherwise (default auto)")
    add_version(p)
    add_verbosity(p)
    return p


def _which(text: str) -> tuple:
    if not text.strip():
        raise UsageError("--which '': empty; use SR, DN, SR,DN or none (images only)")
    if text.strip().lower() == "none":
        return ()
    items = [w.strip().upper() for w in text.split(",") if w.strip()]
    bad = [w for w in items if w not in ("SR", "DN")]
    if bad:
        raise UsageError(f"--which {text!r}: unknown {', '.join(bad)}; use SR, DN, SR,DN or "
                         "none")
    return tuple(w for w in ("SR", "DN") if w in items)


def _config(args):
    from ..batch import BatchConfig

    if args.jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {args.jobs}")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    if args.retries < 0 or args.backoff < 0:
        raise UsageError("--retries and --backoff must not be negative")
    # The image maker's own argument checks, here so that they are usage errors (exit 2)
    # before any observation starts, as in `xmm-enhance image` (numpy only: the parent stays
    # light).
    from ..imageargs import check_image_args

    check_image_args(args.low_pi, args.high_pi, args.binSize, args.expo_time)
    check_min_signif(args.min_signif, _which(args.which))
    if args.pps_dir is not None and not args.pps_dir.is_dir():
        raise UsageError(f"--pps_dir {args.pps_dir}: no such folder; pass the folder holding "
                         "<OBS_ID>/pps trees")
    from ..archive import check_archive_url
    check_archive_url(args.archive_url)
    if args.dask_scheduler:
        from ..batch import check_dask_address
        check_dask_address(args.dask_scheduler)
    for opt, path in (("--sr-model", args.sr_model), ("--dn-model", args.dn_model),
                      ("--credentials_file", args.credentials_file)):
        fix = ("pass an .onnx model file, or leave the option out for the bundled model"
               if opt != "--credentials_file" else "pass the credentials file's path")
        problem = None if path is None else file_option_error(opt, path, fix)
        if problem:
            raise UsageError(problem)
    threads = args.threads
    if threads is None:
        # Locally the CPUs are shared by the --jobs workers; on Dask, one core per task
        # (run one single-threaded worker process per core: dask worker --nthreads 1).
        threads = 1 if args.dask_scheduler else max(1, (os.cpu_count() or 1) // args.jobs)
    return BatchConfig(
        save_dir=args.save_dir.resolve(),
        pps_root=args.pps_dir.resolve() if args.pps_dir else None,
        low_pi=args.low_pi, high_pi=args.high_pi, expo_time_ks=args.expo_time,
        binsize=args.binSize, backend=args.backend, which=_which(args.which), png=args.png,
        overwrite=args.overwrite,
        sr_model=args.sr_model.resolve() if args.sr_model else None,
        dn_model=args.dn_model.resolve() if args.dn_model else None,
        threads=threads,
        credentials_file=args.credentials_file.resolve() if args.credentials_file else None,
        retries=args.retries, backoff_s=args.backoff, archive_url=args.archive_url,
        min_signif=args.min_signif)


def _quiet_console(verbose: bool) -> None:
    """Keep per-observation detail (it is in each observation's log) off the console.

    An observation's warnings come back in its result (``ObsResult.warnings``, from worker
    processes too) and are printed once from there (:func:`_warning_lines`, as each
    observation finishes), so they are kept off the console as they happen even with ``-v``.
    """
    from .. import batch

    def keep(record):
        if record.thread not in batch._OBS_THREADS:
            return True
        return verbose and record.levelno != logging.WARNING

    for h in logging.getLogger().handlers + logging.getLogger("xmm_enhance").handlers:
        if getattr(h, "_xmm_enhance_cli", False) or h in logging.getLogger().handlers:
            h.addFilter(keep)


def _dry_run(obsids, cfg, bad=()) -> int:
    from ..batch import LOCK_NAME, ObservationLock, observation_state

    steps = (["download"] if cfg.pps_root is None else []) + ["image", *cfg.which]
    head = f"{'OBS_ID':10s}  " + "  ".join(f"{s:8s}" for s in steps) + "  lock"
    print(head)
    print("-" * len(head))
    todo = errors = 0
    for o in obsids:
        try:
            plan = observation_state(o, cfg)
        except XmmEnhanceError as exc:
            print(f"{o:10s}  error: {exc}")
            errors += 1
            continue
        lk = ObservationLock(cfg.save_dir / o / LOCK_NAME)
        state = "free" if lk.is_free() else f"busy ({lk.holder()})"
        todo += any(a != "skip" for a in plan.values())
        print(f"{o:10s}  " + "  ".join(f"{plan.get(s, '-'):8s}" for s in steps) + f"  {state}")
    for b in bad:                           # already warned about on stderr, as a real run
        print(f"{'(bad line)':10s}  error: {b.message}")
    skipped = f"; {len(bad)} malformed list line(s) skipped" if bad else ""
    failing = f", {errors} that would fail" if errors else ""
    print(f"{len(obsids)} observations, {todo} with work to do{failing}{skipped} (dry run: "
          "nothing was done)")
    return 1 if bad or errors else 0        # as the real run would: fix the list first


def _band_warning(cfg) -> None:
    """Warn once, before anything runs, when SR/DN are asked for on images of another band
    than the models' (each observation's SR/DN step warns again, in its log and result)."""
    lo, hi = MODEL_BAND_PI
    if not cfg.which or is_model_band(cfg.low_pi, cfg.high_pi):
        return
    log.warning("warning: --low_pi %d --high_pi %d: the SR and DN models were trained on "
                "0.5-2 keV images (PI %d-%d); expect unreliable %s predictions (drop "
                "--low_pi/--high_pi, or use --which none for images only)", cfg.low_pi,
                cfg.high_pi, lo, hi, "/".join(cfg.which))


def _warning_lines(r) -> list:
    """The console lines of the warnings of result ``r``, each naming its OBS_ID."""
    return [f"warning: OBS_ID {r.obsid}: {w}" for w in getattr(r, "warnings", ())]


def _check_folder(folder: Path, option: str) -> None:
    """Create ``folder`` like ``mkdir -p`` and check that files can be made in it (no astropy
    import: the parent of a pool or Dask run stays light)."""
    import tempfile

    for p in (folder, *folder.parents):     # the first that exists must be a folder
        if p.exists():
            if not p.is_dir():
                where = "it" if p == folder else str(p)
                fix = "a folder" if option == "--save_dir" else "a report path in a folder"
                raise UsageError(f"{option} {folder}: {where} is a file, not a folder; "
                                 f"pass {fix}")
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".xmm_enhance_probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"{option} {folder}: not a writable folder "
                         f"({exc.strerror or exc}); fix its permissions or pass another "
                         f"{option}") from None


def _on_sigterm(signum, frame):  # cron / batch systems stop jobs with SIGTERM
    raise KeyboardInterrupt


def main(argv=None) -> int:
    ensure_std_streams()
    with cwd_gone_is_one_line("xmm-enhance batch"):
        return _main(argv)


def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args)
    _quiet_console(args.verbose)
    try:
        from ..batch import default_report_path, read_obsid_list
        cfg = _config(args)
        # A malformed line of a list file (a typo in a growing cron list) stops no run: it is
        # warned about, the good ids are processed and it counts as failed in the report.
        bad: list = []
        obsids = read_obsid_list(args.obsids, bad=bad)
        if not obsids and not bad:
            # list files or stdin without an id (argparse refuses a bare command): a nightly
            # cron run over an empty list is not an error
            log.info("batch: nothing to do (the OBS_ID list is empty or all comments)")
            return 0
        _band_warning(cfg)
        if args.dry_run:
            return _dry_run(obsids, cfg, bad)
        _check_folder(cfg.save_dir, "--save_dir")
        t_start = time.time()
        # compact in the report's file name, ISO 8601 (as the rows' times) in its meta
        started = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(t_start))
        asked = None if args.report is None else Path(args.report)
        report = asked or default_report_path(cfg.save_dir, started)
        if asked is not None and (asked.is_dir() or args.report.endswith(("/", os.sep))):
            # a folder (an existing one, or one named with a trailing slash, which Path drops):
            # the run's own report inside it, named as the default ones
            report = asked / default_report_path(asked, started).name
        # the report is written at the end: find out now if it cannot be
        _check_folder(report.parent, "--report" if args.report is not None else "--save_dir")
    except XmmEnhanceError as exc:
        return report_error(exc)

    import socket

    from ..batch import (ObsResult, _utc, interrupted_result, prune_reports, run_batch,
                         summary_table, write_report)

    where = (f"Dask scheduler {args.dask_scheduler}" if args.dask_scheduler
             else f"{args.jobs} worker process(es)" if args.jobs > 1 else "this process")
    log.info("batch: %d observation(s), steps image%s%s, in %s; outputs in %s", len(obsids),
             "".join(f"+{w}" for w in cfg.which), "+PNG" if cfg.png else "", where,
             cfg.save_dir)

    use_bar = args.progress == "bar" or (args.progress == "auto" and sys.stderr.isatty()
                                         and not args.quiet)
    bar = None
    if use_bar:
        from tqdm import tqdm
        bar = tqdm(total=len(obsids), unit="obs", file=sys.stderr, dynamic_ncols=True)
    finished = []

    def on_result(r):
        finished.append(r)
        line = (f"[{len(finished):{len(str(len(obsids)))}d}/{len(obsids)}] {r.obsid} {r.status}"
                f" in {r.total_s:.1f} s ({r.steps or '-'})" + (f": {r.error}" if r.error else ""))
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"last {r.obsid} {r.status}")
            if r.status == "failed":
                bar.write(line, file=sys.stderr)
            for w in _warning_lines(r):
                bar.write(w, file=sys.stderr)
            return
        if r.status == "failed":
            log.error("%s", line)
        else:
            log.info("%s", line)
        for w in _warning_lines(r):        # kept by -q, as every warning
            log.warning("%s", w)

    meta = {"command": "xmm-enhance batch " + " ".join(sys.argv[1:] if argv is None
                                                       else map(str, argv)),
            "version": __version__, "started_utc": _utc(t_start), "jobs": args.jobs,
            "dask_scheduler": args.dask_scheduler, "save_dir": str(cfg.save_dir)}
    previous = signal.getsignal(signal.SIGTERM)
    in_main = _is_main_thread()
    if in_main:
        signal.signal(signal.SIGTERM, _on_sigterm)
    interrupted = False
    run_error = None
    try:
        run_batch(obsids, cfg, jobs=args.jobs, scheduler=args.dask_scheduler,
                  on_result=on_result)
    except KeyboardInterrupt:
        interrupted = True
    except XmmEnhanceError as exc:   # the run could not go on (a Dask scheduler out of reach)
        run_error = exc
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
        if bar is not None:
            bar.close()

    order = {o: i for i, o in enumerate(obsids)}
    done_n = len(finished)
    # An interrupted run lists every observation it was asked for: those that had not
    # finished as "interrupted" rows, so that a reader of latest.csv sees the run incomplete.
    seen = {r.obsid for r in finished}
    unfinished = ([interrupted_result(o) for o in dict.fromkeys(obsids) if o not in seen]
                  if interrupted else [])
    if run_error is not None:
        # the run itself failed: its report lists every observation it did not do as failed,
        # so latest.csv never shows an earlier run as the newest
        why = " ".join(str(run_error).split())[:300]
        unfinished = [ObsResult(obsid=o, error=f"not run: {why}", host=socket.gethostname())
                      for o in dict.fromkeys(obsids) if o not in seen]
    # the malformed list lines follow the observations, as failed rows
    results = (sorted(finished + unfinished, key=lambda r: order.get(r.obsid, 0))
               + [b.result() for b in bad])
    meta["ended_utc"] = _utc()
    # True when SIGTERM or Ctrl-C stopped the run (its unfinished observations: "interrupted")
    meta["interrupted"] = interrupted
    # Without --report the reports go to SAVE_DIR/reports/: the newest is also copied to
    # latest.csv/.json there, and only the newest REPORTS_KEPT runs' reports are kept.
    try:
        p_csv, p_json = write_report(results, report, meta=meta, latest=args.report is None)
        report_failed = None
    except XmmEnhanceError as exc:   # a full disk: the table still tells what happened
        p_csv = p_json = None
        report_failed = exc
    if args.report is None and report_failed is None:
        try:
            prune_reports(report.parent, current=report)
        except OSError as exc:
            log.warning("warning: %s: old reports not pruned (%s)", report.parent, exc)
    if not args.quiet or report_failed is not None:  # the table is the command's output
        print(summary_table(results), flush=True)
    if report_failed is not None:
        if run_error is not None:
            report_error(run_error)
        report_error(report_failed)
        return 130 if interrupted else 1
    log.info("report: %s and %s", p_csv, p_json)
    if run_error is not None:
        return report_error(run_error)
    if interrupted:
        print(f"error: interrupted after {done_n} of {len(obsids)} observations "
              f"({len(unfinished)} not finished, listed as interrupted in {p_csv}); "
              "rerun the same command to finish (finished ones are skipped)", file=sys.stderr)
        return 130
    failed = [r.obsid for r in results if r.status == "failed"]
    if failed:
        total = len(obsids) + len(bad)
        what = (f"; {len(bad)} of them malformed list line(s), fix them in the list"
                if bad else "")
        print(f"error: {len(failed)} of {total} observations failed "
              f"({', '.join(failed[:10])}{'...' if len(failed) > 10 else ''}){what}; "
              f"see {p_csv}", file=sys.stderr)
        return 1
    return 0


def _is_main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
