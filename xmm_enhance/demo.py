"""``make demo``: the whole product on a simulated observation.

simulated PPS folder (event level) -> ``make_detxy_pn_image_pps`` image (native backend)
-> SR and DN predictions with quick-look PNGs. Nothing is downloaded and no data file is copied:
the example observation is made by :mod:`xmm_enhance.simulate.pps`.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .cli.common import (add_verbosity, add_version, command_prog, ensure_std_streams,
                         report_error, setup_logging,
                         sigterm_as_interrupt)
from .errors import ModelError, XmmEnhanceError

log = logging.getLogger("xmm_enhance.demo")

DEMO_OBSID = "0000000001"


def run(outdir: Path, *, seed: int = 7, overwrite: bool = True) -> dict:
    """Run the demo into ``outdir``; returns the paths made. Raises ModelError if a model is
    missing (after every step before it has run)."""
    from .inference import enhance_file, load_model
    from .pipeline import _check_existing, make_image, output_name
    from .simulate.pps import write_pps

    outdir = Path(outdir)
    # another observation's image of the same name: refused before anything is written
    _check_existing(outdir / output_name(20.0, 500, 2000, 80), DEMO_OBSID, overwrite,
                    folder_option="--outdir")
    pps = outdir / DEMO_OBSID / "pps"
    pps.mkdir(parents=True, exist_ok=True)
    log.info("1/4 simulating an EPIC-pn observation (event list, flare, attitude) in %s", pps)
    write_pps(pps, DEMO_OBSID, seed=seed)
    log.info("2/4 making the 20 ks DETX/DETY image (native backend, no SAS)")
    img = make_image(DEMO_OBSID, pps_dir=pps, save_dir=outdir, expo_time_ks=20.0,
                     backend="native", overwrite=overwrite, gti_plot=True)
    made = {"image": img.path}
    missing = []
    for step, which in ((3, "SR"), (4, "DN")):
        log.info("%d/4 %s prediction", step, which)
        try:
            model = load_model(which)
        except ModelError as exc:
            missing.append(str(exc))
            continue
        out = enhance_file(img.path, which, model=model, overwrite=overwrite, png=True)
        made[which] = out
    if missing:
        raise ModelError("; ".join(missing))
    return made


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=command_prog("python -m xmm_enhance.demo"),
        description="The whole product on a simulated observation, offline: simulate an "
                    "EPIC-pn PPS folder (event list with a flare), make its 20 ks DETX/DETY "
                    "image, run the SR and DN models, write FITS and quick-look PNGs.")
    ap.add_argument("--outdir", type=Path, default=Path("demo_output"),
                    help="folder for everything the demo writes: the simulated PPS in "
                         f"OUTDIR/{DEMO_OBSID}/pps, the image, predictions and PNGs in "
                         "OUTDIR (created if missing; existing demo files are replaced); "
                         "default demo_output")
    ap.add_argument("--seed", type=_seed, default=7,
                    help="random seed of the simulated observation (same seed, same files); "
                         "default 7")
    add_verbosity(ap)
    add_version(ap)
    return ap


def _seed(text: str) -> int:
    """A seed for numpy's generator: an integer >= 0 (argparse makes anything else a usage
    error, exit 2)."""
    import argparse

    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def main(argv=None) -> int:
    ensure_std_streams()
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse: 0 for --help/--version, 2 for usage errors
        return int(exc.code) if isinstance(exc.code, int) else 2
    setup_logging(args)
    with sigterm_as_interrupt():
        try:
            made = run(args.outdir, seed=args.seed)
        except XmmEnhanceError as exc:
            return report_error(exc)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: temporaries are gone, finals whole
            print("interrupted", file=sys.stderr)
            return 130
        except OSError as exc:  # --outdir a file, not writable, disk full
            where = exc.filename or args.outdir
            print(f"error: {where}: {exc.strerror or exc}; pass a writable --outdir",
                  file=sys.stderr)
            return 1
    if args.quiet:
        return 0
    print(f"image: {made['image']}")
    for which in ("SR", "DN"):
        if which in made:
            print(f"{which}: {made[which]['predict']}  (quick-look {made[which]['png']})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
