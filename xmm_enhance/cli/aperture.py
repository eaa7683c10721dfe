"""``xmm-enhance aperture``: a prediction's rate in a sky aperture, with its 68 % interval."""
from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

from ..errors import UsageError, XmmEnhanceError
from .common import (add_verbosity, add_version, command_prog, ensure_std_streams,
                     report_error, setup_logging)

log = logging.getLogger("xmm_enhance")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=command_prog("xmm-enhance aperture"),
        description="The rate of an SR or DN prediction (*_predict_wcs_SR/DN.fits.gz) summed "
                    "over a circle on the sky, with its 68 % interval from LO68/HI68 by the "
                    "aperture rule (its scale follows the aperture's rate; calibrated on "
                    "apertures of radius 20\"), in count/s and in counts at the input's "
                    "exposure. SR rates are the sky's, background removed; DN rates include "
                    "the background. For a listed source, SOURCES RATE_ERR is the sharper "
                    "error; docs/outputs.md gives the rule's coverage by brightness.")
    p.add_argument("prediction", type=Path, help="a *_predict_wcs_SR/DN.fits.gz file")
    p.add_argument("ra", type=float, help="RA of the centre (deg, the file's frame)")
    p.add_argument("dec", type=float, help="Dec of the centre (deg)")
    p.add_argument("--radius", type=float, default=20.0, metavar="ARCSEC",
                   help="aperture radius (default 20: the calibrated 20\" aperture; other radii "
                        "get the same rule, uncalibrated)")
    p.add_argument("--ring", type=float, nargs=2, metavar=("INNER", "OUTER"), default=None,
                   help="also test the input's counts in the circle against this ring around "
                        "it (arcsec; e.g. 30 60 for a knot against its surroundings, 60 120 for "
                        "a source on flat sky): the excess and its Poisson significance, from "
                        "the photons alone (reads the *_input_wcs_* file beside the "
                        "prediction)")
    add_version(p)
    add_verbosity(p)
    return p


def main(argv=None) -> int:
    ensure_std_streams()
    args = build_parser().parse_args(argv)
    setup_logging(args)
    try:
        if not (math.isfinite(args.radius) and args.radius > 0):
            raise UsageError(f"--radius must be a number of arcsec > 0, got {args.radius}")
        if not (math.isfinite(args.ra) and math.isfinite(args.dec) and -90 <= args.dec <= 90):
            raise UsageError(f"RA {args.ra}, Dec {args.dec}: give degrees, Dec within ±90")
        from ..apertures import CALIBRATED_RADIUS_ARCSEC, MIN_DATA_SHARE, aperture_interval

        a = aperture_interval(args.prediction, args.ra, args.dec, args.radius)
        ring = None
        if args.ring is not None:
            inner, outer = args.ring
            if not (math.isfinite(inner) and math.isfinite(outer)
                    and args.radius <= inner < outer):
                raise UsageError(f"--ring {inner:g} {outer:g}: give INNER < OUTER in arcsec, "
                                 f"INNER at least the radius ({args.radius:g})")
            from ..apertures import input_excess

            ring = input_excess(args.prediction, args.ra, args.dec, args.ring, args.radius)
    except XmmEnhanceError as exc:
        return report_error(exc)
    note = "" if args.radius == CALIBRATED_RADIUS_ARCSEC else " (radius uncalibrated)"
    print(f"{args.prediction.name}: RA {args.ra:.6f} Dec {args.dec:+.6f}, radius "
          f"{args.radius:g}\"{note}: {a.npix_data} pixels with data, "
          f"{100 * a.data_share:.0f} % of the aperture")
    if a.data_share < MIN_DATA_SHARE:
        log.warning("%s: only %.0f %% of the aperture holds data (a CCD gap, the chips' or the "
                    "image's edge): the sum and its interval cover that part only",
                    args.prediction.name, 100 * a.data_share)
    print(f"rate   {a.rate:.6g} count/s, 68 % interval [{a.lo68:.6g}, {a.hi68:.6g}] "
          f"(rule scale {a.scale:.3g})")
    if math.isfinite(a.counts):
        print(f"counts {a.counts:.6g}, 68 % interval [{a.counts_lo68:.6g}, "
              f"{a.counts_hi68:.6g}] at the input's exposure")
    else:
        print("counts unknown: the file has no INEXPO (input exposure)")
    if ring is not None:
        sig = f"{ring.signif:.1f}" if ring.signif < 37 else "> 37"
        print(f"input  {ring.counts} counts in the circle ({ring.npix} pixels), "
              f"{ring.expected:.4g} at the level of the {args.ring[0]:g}-{args.ring[1]:g}\" ring "
              f"({ring.ring_counts} counts, {ring.npix_ring} pixels): excess "
              f"{ring.excess:.4g}, {sig} sigma (Poisson, one-sided, at this one position)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
