"""``xmm-enhance aperture``: a prediction's rate in a sky aperture, with its 68 % interval."""
from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

from ..errors import UsageError, XmmEnhanceError
from .common import (add_verbosity, add_version, command_prog, ensure_std_streams,
                     interruptible, report_error, setup_logging)

log = logging.getLogger("xmm_enhance")

#: |significance| beyond this prints as a bound: the binomial tail's float limit is ~37.5.
SIGNIF_PRINT_MAX = 37.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=command_prog("xmm-enhance aperture"),
        description="The rate of an SR or DN prediction (*_predict_wcs_SR/DN.fits.gz) summed "
                    "over a circle on the sky, with its 68 % interval from LO68/HI68 by the "
                    "aperture rule (its scale follows the aperture's rate; calibrated on "
                    "apertures of radius 20\"), in count/s and in counts at the input's "
                    "exposure. SR rates are the sky's, background removed; DN rates include "
                    "the background. A listed source's SOURCES RATE is over its whole PSF, "
                    "and its RATE_ERR holds the PSF model's error (FLUXSYS); a 20\" sum does "
                    "not depend on that model. docs/outputs.md gives the rule's coverage by "
                    "brightness. Give RA and Dec for one circle, or --regions for a table of "
                    "many.")
    p.add_argument("prediction", type=Path, help="a *_predict_wcs_SR/DN.fits.gz file")
    p.add_argument("ra", type=float, nargs="?", help="RA of the centre (deg, the file's frame)")
    p.add_argument("dec", type=float, nargs="?", help="Dec of the centre (deg)")
    p.add_argument("--radius", type=float, default=None, metavar="ARCSEC",
                   help="aperture radius (default 20: the calibrated 20\" aperture; other radii "
                        "get the same rule, uncalibrated)")
    p.add_argument("--regions", type=Path, metavar="FILE",
                   help="a ds9 region file of fk5 circles (drawn in ds9 and saved in fk5, or a "
                        "*_sources_SR.reg): one table row per circle, each with its own radius")
    p.add_argument("--ring", type=float, nargs=2, metavar=("INNER", "OUTER"), default=None,
                   help="also test the input's counts in the circle against this ring around "
                        "it (arcsec; e.g. 30 60 for a knot against its surroundings, 60 120 for "
                        "a source on flat sky): the excess and its Poisson significance, from "
                        "the photons alone (reads the *_input_wcs_* file beside the "
                        "prediction, or --input)")
    p.add_argument("--csv", action="store_true",
                   help="with --regions: the table as CSV (one header line, then one row per "
                        "circle, with a note where a circle has no sum) for other programs")
    p.add_argument("--input", type=Path, metavar="FILE",
                   help="the prediction's *_input_wcs_* file, where it is not beside it under "
                        "its own name (for --ring)")
    add_version(p)
    add_verbosity(p)
    return p


def _sigma(v: float) -> str:
    if v >= SIGNIF_PRINT_MAX:
        return f"> {SIGNIF_PRINT_MAX:g}"
    if v <= -SIGNIF_PRINT_MAX:
        return f"< -{SIGNIF_PRINT_MAX:g}"
    return f"{v:.1f}"


def _wings(name, near, label="", uneven=None):
    if near is not None:
        log.warning("%s:%s a SOURCES entry of %.0f counts lies %.0f\" from the centre: its PSF "
                    "wings fall in the circle or the ring, so the excess is partly its own",
                    name, label, near[1], near[0])
    if uneven is not None:
        chance = f"{uneven[1]:.1g}" if uneven[1] >= 1e-12 else "< 1e-12"
        log.warning("%s:%s the ring is not flat (its brightest sector is %.1fx its faintest; "
                    "chance %s): a gradient or bright emission crosses it, so its level is "
                    "not the circle's; try a ring closer in or farther out",
                    name, label, uneven[0], chance)


def _check(args):
    if (args.ra is None) != (args.dec is None):
        raise UsageError("give both RA and Dec, or --regions FILE")
    if args.regions is not None and args.ra is not None:
        raise UsageError("give RA and Dec, or --regions FILE, not both")
    if args.regions is None and args.ra is None:
        raise UsageError("give RA and Dec of the circle, or --regions FILE")
    if args.regions is not None and args.radius is not None:
        raise UsageError("--radius: each circle of --regions has its own radius")
    if args.csv and args.regions is None:
        raise UsageError("--csv is the table of --regions; give --regions FILE too")
    if args.input is not None and args.ring is None:
        raise UsageError("--input is the input file of the --ring test; give --ring too")
    from ..apertures import MAX_RADIUS_ARCSEC

    radius = 20.0 if args.radius is None else args.radius
    if not (math.isfinite(radius) and 0 < radius <= MAX_RADIUS_ARCSEC):
        raise UsageError(f"--radius must be a number of arcsec > 0 and at most "
                         f"{MAX_RADIUS_ARCSEC:g}, got {radius}")
    if args.ra is not None and not (math.isfinite(args.ra) and math.isfinite(args.dec)
                                    and -90 <= args.dec <= 90):
        raise UsageError(f"RA {args.ra}, Dec {args.dec}: give degrees, Dec within ±90")
    if args.ring is not None:
        inner, outer = args.ring
        least = radius if args.regions is None else 0.0
        if not (math.isfinite(inner) and math.isfinite(outer) and least <= inner < outer
                <= MAX_RADIUS_ARCSEC):
            at_least = ("INNER at least each circle's radius" if args.regions is not None
                        else f"INNER at least the radius ({radius:g})")
            raise UsageError(f"--ring {inner:g} {outer:g}: give INNER < OUTER in arcsec "
                             f"(OUTER at most {MAX_RADIUS_ARCSEC:g}), {at_least}")
    return radius


def _one(args, radius) -> int:
    from ..apertures import (CALIBRATED_RADIUS_ARCSEC, MIN_DATA_SHARE, aperture_interval,
                             input_excess, load_prediction)

    try:
        pred = load_prediction(args.prediction)      # read once for the sum and the ring
        a = aperture_interval(pred, args.ra, args.dec, radius)
    except XmmEnhanceError as exc:
        return report_error(exc)
    note = "" if radius == CALIBRATED_RADIUS_ARCSEC else " (radius uncalibrated)"
    print(f"{args.prediction.name}: RA {args.ra:.6f} Dec {args.dec:+.6f}, radius "
          f"{radius:g}\"{note}: {a.npix_data} pixels with data, "
          f"{100 * a.data_share:.0f} % of the aperture's pixels")
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
    if args.ring is None:
        return 0
    try:
        e = input_excess(pred, args.ra, args.dec, args.ring, radius, args.input)
    except XmmEnhanceError as exc:
        return report_error(exc)
    print(f"input  {e.counts} counts in the circle ({e.npix} pixels of 4\"), "
          f"{e.expected:.4g} at the level of the {args.ring[0]:g}-{args.ring[1]:g}\" ring "
          f"({e.ring_counts} counts, {e.npix_ring} pixels): excess {e.excess:.4g}, "
          f"{_sigma(e.signif)} sigma (Poisson, one-sided, at this one position)")
    _wings(args.prediction.name, e.near_source, uneven=e.ring_uneven)
    return 0


def _table(args) -> int:
    from ..apertures import measure_circles, read_circles

    try:
        circles, skipped = read_circles(args.regions)
        rows = measure_circles(args.prediction, circles, args.ring, args.input)
    except XmmEnhanceError as exc:
        return report_error(exc)
    if skipped:
        log.warning("%s: %d regions that are not circles, or excluded ones, were skipped",
                    args.regions.name, skipped)
    (_print_csv if args.csv else _print_table)(args, circles, rows)
    if all(isinstance(a, str) for _, a, _ in rows):
        log.error("%s: no circle of %s lies on the data; check that the regions belong to "
                  "this observation", args.prediction.name, args.regions.name)
        return 1
    return 0


def _print_table(args, circles, rows):
    from ..apertures import MIN_DATA_SHARE

    print(f"# {args.prediction.name}: {len(circles)} circles of {args.regions.name}; rate and "
          "its 68 % interval in count/s, counts at the input's exposure"
          + (f"; input counts against the {args.ring[0]:g}-{args.ring[1]:g}\" ring"
             if args.ring else "")
          + ("; counts nan: the file has no INEXPO (input exposure)"
             if rows and not isinstance(rows[0][1], str) and math.isnan(rows[0][1].counts)
             else ""))
    head = (f"{'line':>5} {'ra':>11} {'dec':>11} {'r':>5} {'share':>5} {'rate':>11} "
            f"{'rate_lo68':>11} {'rate_hi68':>11} {'counts':>9} {'cts_lo68':>9} "
            f"{'cts_hi68':>9}")
    if args.ring:
        head += f" {'in':>7} {'expected':>9} {'sigma':>6}"
    print(head + "  text")
    for c, a, e in rows:
        lead = f"{c.line:5d} {c.ra:11.6f} {c.dec:+11.6f} {c.radius_arcsec:5.1f}"
        if isinstance(a, str):
            print(f"{lead}  {a}")
            continue
        row = (f"{lead} {a.data_share:5.2f} {a.rate:11.5g} {a.lo68:11.5g} {a.hi68:11.5g} "
               f"{a.counts:9.5g} {a.counts_lo68:9.5g} {a.counts_hi68:9.5g}")
        if a.data_share < MIN_DATA_SHARE:
            log.warning("%s: line %d: only %.0f %% of the circle holds data",
                        args.regions.name, c.line, 100 * a.data_share)
        if isinstance(e, str):
            row += f"  ring: {e}"
        elif e is not None:
            row += f" {e.counts:7d} {e.expected:9.4g} {_sigma(e.signif):>6}"
            _wings(args.regions.name, e.near_source, f" line {c.line}:", e.ring_uneven)
        print(row + (f"  {c.text}" if c.text else ""))


def _print_csv(args, circles, rows):
    import csv

    cols = ["line", "ra", "dec", "radius_arcsec", "data_share", "rate", "rate_lo68",
            "rate_hi68", "counts", "counts_lo68", "counts_hi68", "scale"]
    if args.ring:
        cols += ["input_counts", "ring_counts", "expected", "signif"]
    w = csv.writer(sys.stdout, lineterminator="\n")
    w.writerow(cols + ["text", "note"])
    for c, a, e in rows:
        row = [c.line, f"{c.ra:.7f}", f"{c.dec:.7f}", f"{c.radius_arcsec:g}"]
        note = ""
        if isinstance(a, str):
            row += [""] * (len(cols) - 4)
            note = a
        else:
            row += [f"{a.data_share:.4f}"] + [f"{v:.7g}" for v in
                                               (a.rate, a.lo68, a.hi68, a.counts, a.counts_lo68,
                                                a.counts_hi68, a.scale)]
            if args.ring:
                if isinstance(e, str):
                    row += [""] * 4
                    note = f"ring: {e}"
                else:
                    row += [e.counts, e.ring_counts, f"{e.expected:.6g}", f"{e.signif:.3f}"]
                    _wings(args.regions.name, e.near_source, f" line {c.line}:", e.ring_uneven)
                    if e.near_source is not None:
                        note = (f"wings of a SOURCES entry of {e.near_source[1]:.0f} counts "
                                f"{e.near_source[0]:.0f}\" away")
                    if e.ring_uneven is not None:
                        note = "; ".join(x for x in (note, f"ring not flat (sectors "
                                                     f"{e.ring_uneven[0]:.1f}x)") if x)
        w.writerow(row + [c.text, note])


def main(argv=None) -> int:
    ensure_std_streams()
    return interruptible(lambda: _main(argv))


def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args)
    try:
        radius = _check(args)
    except XmmEnhanceError as exc:
        return report_error(exc)
    return _one(args, radius) if args.regions is None else _table(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
