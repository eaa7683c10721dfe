"""``run_inference_on_real.py``: SR or DN prediction for pn DETX/DETY images.

Imports only what a run needs: the library (numpy, astropy.io.fits, onnxruntime) is imported
after the arguments are parsed, matplotlib only for ``--png``/``--display``.
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

from ..errors import OutputError, UsageError, XmmEnhanceError
from .common import (MIN_SIGNIF_HELP, add_verbosity, add_version, check_min_signif,
                     command_prog, cwd_gone_is_one_line, ensure_std_streams, report_error,
                     interruptible, setup_logging)

log = logging.getLogger("xmm_enhance")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=command_prog("run_inference_on_real.py"),  # or "xmm-enhance infer"
        description="Super-resolve (SR) or de-noise (DN) XMM-Newton EPIC-pn DETX/DETY images "
                    "with the bundled ONNX models on the CPU. Writes "
                    "<stem>_input_wcs_<W>.fits.gz and <stem>_predict_wcs_<W>.fits.gz beside "
                    "each input (or in --outdir).")
    p.add_argument("filein", nargs="+", type=Path, help="input image(s) (FITS, .gz allowed)")
    p.add_argument("--which", required=True, choices=("SR", "DN"), type=str.upper,
                   help="SR: 2x super-resolution; DN: de-noising (the expected rate a much "
                        "deeper exposure would show); any case")
    p.add_argument("--display", action="store_true", help="show input and prediction")
    p.add_argument("--png", action="store_true", help="write a quick-look PNG per input")
    p.add_argument("--outdir", type=Path,
                   help="output folder, created with its parents when the first output is "
                        "written (default: beside each input)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--skip-existing", action="store_true",
                   help="resume a run: skip an input whose outputs (input and prediction "
                        "files, SR region file, PNG with --png) all exist, are complete, are "
                        "newer than the input (region file and PNG: than the prediction) and "
                        "were made by this model file with this --min-signif and --no-redraw; "
                        "redo the others (not with --overwrite)")
    p.add_argument("--model", type=Path, help="ONNX model (default: the bundled one)")
    p.add_argument("--threads", type=int, help="CPU threads for onnxruntime (default: all)")
    p.add_argument("--exposure", type=float, metavar="SECONDS",
                   help="exposure in s for inputs without a valid EXPOSURE keyword; an input "
                        "with one uses the header's, and an --exposure differing from it by "
                        "more than 0.1 %% is ignored with a warning")
    p.add_argument("--no-redraw", action="store_true",
                   help="SR: keep the network's own drawing and point/diffuse split (default: "
                   "each SOURCES entry redrawn as the halved PSF with the POINTS map's counts; "
                   "POINTS keeps the candidates of >= PTSIGMIN sigma and at most PTFREE = 8 "
                   "counts per 20\" of other points, the rest goes to DIFFUSE)")
    p.add_argument("--min-signif", type=float, metavar="SIGMA", help=MIN_SIGNIF_HELP)
    add_version(p)
    add_verbosity(p)
    return p


def main(argv=None) -> int:
    ensure_std_streams()

    def body():
        with cwd_gone_is_one_line(command_prog("run_inference_on_real.py")):
            return _main(argv)

    return interruptible(body)


def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args)
    try:
        if args.threads is not None and args.threads < 1:
            raise UsageError(f"--threads must be >= 1, got {args.threads}")
        if args.exposure is not None and not (math.isfinite(args.exposure)
                                              and args.exposure > 0):
            raise UsageError(f"--exposure must be a number of seconds > 0, got {args.exposure}")
        if args.skip_existing and args.overwrite:
            raise UsageError("--skip-existing keeps complete outputs and --overwrite replaces "
                             "them: pass one of the two")
        check_min_signif(args.min_signif, (args.which,))
        from ..fitsio import check_creatable_dir
        from ..inference import (check_output_collisions, enhance_file, load_model,
                                 outputs_complete, run_outputs)
        # two inputs with one stem would write the same outputs: refuse before any writing
        inputs = check_output_collisions(args.filein, args.which, args.outdir)
        if args.outdir is not None:
            # made when the first output is written: a run that writes nothing leaves none
            check_creatable_dir(args.outdir, "choose another --outdir")
        model = load_model(args.which, args.model, threads=args.threads)
    except XmmEnhanceError as exc:
        return report_error(exc)
    failed = []
    for f in inputs:
        overwrite = args.overwrite
        try:
            if args.skip_existing and Path(f).is_file():
                paths = run_outputs(f, model, args.outdir, png=args.png)
                done, why = outputs_complete(paths, model=model, infile=f,
                                             min_signif=args.min_signif,
                                             redraw=not args.no_redraw,
                                             exposure=args.exposure)
                if done:
                    log.info("%s: skipped, its outputs are complete (--skip-existing)", f)
                    continue
                if any(p.exists() for p in paths):  # a partial set: redo all of it
                    log.info("%s: redoing its outputs (%s)", f, why)
                    overwrite = True
            out = enhance_file(f, args.which, model=model, outdir=args.outdir,
                               overwrite=overwrite, exposure=args.exposure, png=args.png,
                               redraw=not args.no_redraw, min_signif=args.min_signif)
        except XmmEnhanceError as exc:
            if args.skip_existing and isinstance(exc, OutputError) and _made_meanwhile(
                    f, model, args):
                log.info("%s: skipped, another run has just made its outputs "
                         "(--skip-existing)", f)
                continue
            report_error(exc)
            failed.append(f)
            continue
        except Exception as exc:  # a bug, or a file unlike any tested: one line, go on
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            print(f"error: {f}: unexpected {type(exc).__name__}: {first}; the other inputs "
                  "go on; please report it with the file's header (-v prints the "
                  "traceback)", file=sys.stderr)
            log.debug("traceback of %s", f, exc_info=True)
            failed.append(f)
            continue
        res = out["result"]
        log.info("%s -> %s (%.4g count/s in, %.4g count/s predicted)", f, out["predict"],
                 float(res.input_rate.sum()), float(res.prediction.sum()))
        if "png" in out:
            log.info("quick-look: %s", out["png"])
        if args.display:
            from ..display import show
            show(res)
    if failed and len(inputs) > 1:
        print(f"error: {len(failed)} of {len(inputs)} inputs failed: "
              + ", ".join(str(f) for f in failed), file=sys.stderr)
    return 1 if failed else 0


def _made_meanwhile(f, model, args) -> bool:
    """With --skip-existing: whether ``f``'s outputs, which were not complete when this run
    looked, are complete now (a run beside this one made them: this one then skips it)."""
    from ..inference import outputs_complete, run_outputs

    try:
        paths = run_outputs(f, model, args.outdir, png=args.png)
        return outputs_complete(paths, model=model, infile=f, min_signif=args.min_signif,
                                redraw=not args.no_redraw, exposure=args.exposure)[0]
    except XmmEnhanceError:
        return False


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
