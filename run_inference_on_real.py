#!/usr/bin/env python3
"""Super-resolve (SR) or de-noise (DN) an EPIC-pn DETX/DETY image: see --help."""
import sys

from xmm_enhance.cli.infer import main

if __name__ == "__main__":
    sys.exit(main())
