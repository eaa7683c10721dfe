"""``make_detxy_pn_image_pps.py``: OBS_ID -> cleaned EPIC-pn DETX/DETY image with a sky WCS.

Seed-compatible flags (``obsid --low_pi --high_pi --expo_time --binSize --save_dir --pps_dir``)
plus ``--backend``, ``--gti-plot``, ``--overwrite``, ``--credentials_file``, ``-q/-v``,
``--version``. Runs as ``make_detxy_pn_image_pps.py`` and as ``xmm-enhance image`` (its usage
line says which). Exit codes: 0 success, 1 run-time failure, 2 usage error; failures print one
line on stderr.
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
import warnings

from .common import (add_verbosity, add_version, command_prog, cwd_gone_is_one_line,
                     ensure_std_streams, file_option_error, interruptible, setup_logging)

__all__ = ["main", "build_parser"]

PROG = "make_detxy_pn_image_pps.py"


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; ``prog`` defaults to how the command was invoked."""
    p = argparse.ArgumentParser(
        prog=prog or command_prog(PROG),
        description="Make an EPIC-pn image in DETX,DETY (0.5-2 keV, 4\"/pixel, 20 ks by "
                    "default) from the PPS of an OBS_ID, cleaned of background flares with the "
                    "PPS threshold, with an RA/Dec WCS fitted from the events. No XMM-SAS "
                    "needed.")
    p.add_argument("obsid", help="the 10-digit OBS_ID; its PPS are downloaded unless "
                                 "--pps_dir is given")
    p.add_argument("--low_pi", type=int, default=500,
                   help="lowest PI (eV, integer, inclusive); default 500")
    p.add_argument("--high_pi", type=int, default=2000,
                   help="highest PI (eV, integer, inclusive); default 2000")
    p.add_argument("--expo_time", type=float, default=20.0,
                   help="exposure to keep, ks (longest good intervals first); default 20. "
                        "<= 0 keeps all good time: the deepest image. If the observation has "
                        "less good time than asked for, all of it is kept, with a warning, "
                        "and the file is named as for 0 (pn_cleaned_full_...)")
    p.add_argument("--binSize", type=int, default=80, dest="binsize",
                   help="pixel size in DET units of 0.05\" (integer); default 80 = 4\"")
    p.add_argument("--save_dir", default=None,
                   help="download folder (PPS go to <save_dir>/<obsid>/pps, the image beside "
                        "them; default the current folder); with --pps_dir, where the image "
                        "goes")
    p.add_argument("--pps_dir", default=None,
                   help="folder with the PPS files already downloaded (no download); the "
                        "image is written there unless --save_dir is given (created if "
                        "missing)")
    p.add_argument("--backend", choices=("auto", "native", "sas"), default="auto",
                   help="native (numpy/astropy), sas (XMM-SAS via pysas) or auto: sas when "
                        "pysas imports and SAS_DIR is set, else native; default auto")
    p.add_argument("--gti-plot", "--gti_plot", action="store_true", dest="gti_plot",
                   help="also write <image>_gti.png: light curve, threshold, kept intervals")
    p.add_argument("--overwrite", action="store_true", help="replace an existing image")
    p.add_argument("--skip-existing", action="store_true",
                   help="resume: when the image these options make is already there, complete "
                        "(checksums verify) and of this OBS_ID, print it and exit 0 without "
                        "downloading or binning; an incomplete one is made again")
    p.add_argument("--credentials_file", default=None,
                   help="astroquery credentials file for proprietary data (never printed)")
    p.add_argument("--archive-url", "--archive_url", dest="archive_url", default=None,
                   help="XSA data-action-aio URL to download from (a mirror; '?' is appended "
                        "when missing; default astroquery's)")
    add_verbosity(p)
    add_version(p)
    return p


def main(argv=None) -> int:
    """Run the command; returns the exit code (130 when Ctrl-C or SIGTERM stops it: the
    temporary files are then removed, and no final file is left half-written)."""
    ensure_std_streams()
    prog = build_parser().prog

    def body():
        with cwd_gone_is_one_line(prog):
            return _main(argv)

    return interruptible(body, f"{prog}: interrupted")


def _main(argv=None) -> int:
    parser = build_parser()
    prog = parser.prog
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: 0 for --help/--version, 2 for usage errors
        return int(exc.code) if isinstance(exc.code, int) else 2
    if not math.isfinite(args.expo_time):
        parser.print_usage(sys.stderr)
        print(f"{prog}: error: --expo_time must be a finite number of ks", file=sys.stderr)
        return 2
    if args.skip_existing and args.overwrite:
        parser.print_usage(sys.stderr)
        print(f"{prog}: error: --skip-existing keeps a complete image and --overwrite replaces "
              "it: pass one of the two", file=sys.stderr)
        return 2
    setup_logging(args)

    from ..archive import check_archive_url, using_archive_url
    from ..errors import OutputError, UsageError, XmmEnhanceError
    from ..pipeline import make_image

    try:
        check_archive_url(args.archive_url)
    except UsageError as err:
        parser.print_usage(sys.stderr)
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    # checked up front as batch does, also with --pps_dir
    problem = None if args.credentials_file is None else file_option_error(
        "--credentials_file", args.credentials_file, "pass the credentials file's path")
    if problem:
        print(f"{prog}: error: {problem}", file=sys.stderr)
        return 2

    overwrite = args.overwrite
    if args.skip_existing:
        done, overwrite = _existing_image(args)
        if done is not None:
            if not args.quiet:
                print(f"image: {done[0]} (already made, --skip-existing)")
                print(f"exposure: {done[1]:.1f} s")
                print(f"counts: {done[2]}")
            return 0

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with using_archive_url(args.archive_url):
                res = make_image(args.obsid, low_pi=args.low_pi, high_pi=args.high_pi,
                                 expo_time_ks=args.expo_time, binsize=args.binsize,
                                 save_dir=args.save_dir, pps_dir=args.pps_dir,
                                 backend=args.backend, overwrite=overwrite,
                                 gti_plot=args.gti_plot,
                                 credentials_file=args.credentials_file)
        except XmmEnhanceError as err:
            if args.skip_existing and isinstance(err, OutputError):
                done, _ = _existing_image(args)   # made by a run beside this one meanwhile?
                if done is not None:
                    if not args.quiet:
                        print(f"image: {done[0]} (made by another run meanwhile, "
                              "--skip-existing)")
                        print(f"exposure: {done[1]:.1f} s")
                        print(f"counts: {done[2]}")
                    return 0
            _print_warnings(caught, prog)
            msg = str(err).splitlines()[0] if str(err) else type(err).__name__
            print(f"{prog}: error: {msg}", file=sys.stderr)
            return err.exit_code
        except KeyboardInterrupt:
            print(f"{prog}: interrupted", file=sys.stderr)
            return 130
    _print_warnings(caught, prog)
    if not args.quiet:
        print(f"image: {res.path}")
        print(f"exposure: {res.exposure:.1f} s ({res.exposure / 1e3:.2f} ks kept of "
              f"{res.good_time / 1e3:.2f} ks good time)")
        print(f"counts: {res.counts}")
        if res.gti_plot is not None:
            print(f"gti plot: {res.gti_plot}")
    return 0


def _existing_image(args):
    """With --skip-existing: ``((path, exposure, counts), False)`` when the image these options
    make exists, is complete and holds this OBS_ID; else ``(None, overwrite)``, where
    ``overwrite`` says whether an incomplete file of this OBS_ID is to be replaced. A malformed
    OBS_ID or a file of another observation is left to :func:`make_image`'s own errors."""
    from ..batch import fits_is_valid
    from ..pipeline import find_image, image_folder

    obsid = args.obsid.strip()
    path = find_image(image_folder(obsid, args.save_dir, args.pps_dir), args.expo_time,
                      args.low_pi, args.high_pi, args.binsize)
    if not path.exists():
        return None, False
    ok, why = fits_is_valid(path)
    try:
        from astropy.io import fits

        with warnings.catch_warnings():   # a cut file's "may have been truncated": said below
            warnings.simplefilter("ignore")
            header = fits.getheader(path)
        mine = str(header.get("OBS_ID", "")).strip() == obsid
    except (OSError, ValueError):
        header, mine = None, False
    if ok and mine and args.gti_plot:
        from ..batch import png_is_valid
        from ..pipeline import gti_plot_path

        plot = gti_plot_path(path)
        if not png_is_valid(plot)[0]:
            # asked for with the image, and missing or cut (a run killed between the two):
            # made again with the image
            logging.getLogger("xmm_enhance").info("%s: missing or incomplete; making the "
                                                  "image and its GTI plot again", plot)
            return None, True
    if ok and mine:
        counts = int(fits.getdata(path).sum(dtype="int64"))
        return (path, float(header.get("EXPOSURE", float("nan"))), counts), False
    if not ok and (mine or header is None):
        logging.getLogger("xmm_enhance").info("%s: incomplete (%s); making it again", path, why)
        return None, True
    return None, False


def _print_warnings(caught, prog=PROG):
    """Our warnings as one line each on stderr; other libraries' warnings to the debug log."""
    import os

    pkg = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    log = logging.getLogger("xmm_enhance")
    seen = set()
    for w in caught:
        ours = str(w.filename).startswith(pkg) and issubclass(w.category, UserWarning)
        if not ours:
            log.debug("%s: %s", w.category.__name__, w.message)
            continue
        msg = str(w.message).splitlines()[0]
        if msg in seen:
            continue
        seen.add(msg)
        print(f"{prog}: warning: {msg}", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
