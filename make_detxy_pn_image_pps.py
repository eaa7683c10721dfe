#!/usr/bin/env python3
"""OBS_ID -> cleaned EPIC-pn DETX/DETY image with an RA/Dec WCS (no XMM-SAS needed).

Seed-compatible command line; see ``python make_detxy_pn_image_pps.py -h``.
"""
import sys

from xmm_enhance.cli.make_image import main

if __name__ == "__main__":
    sys.exit(main())
