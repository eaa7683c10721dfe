"""The ``xmm-enhance`` console entry point: ``xmm-enhance image|infer|demo ...``."""
from __future__ import annotations

import sys

from .. import __version__

COMMANDS = {
    "image": ("xmm_enhance.cli.make_image", "OBS_ID -> DETX/DETY image (make_detxy_pn_image_pps.py)"),
    "infer": ("xmm_enhance.cli.infer", "SR / DN prediction (run_inference_on_real.py)"),
    "batch": ("xmm_enhance.cli.batch", "many OBS_IDs: image -> SR -> DN, resumable"),
    "demo": ("xmm_enhance.demo", "simulated observation -> image -> SR and DN"),
}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: xmm-enhance {" + ",".join(COMMANDS) + "} ...\n")
        for name, (_, text) in COMMANDS.items():
            print(f"  {name:6s} {text}")
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"xmm_enhance {__version__}")
        return 0
    if argv[0] not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    import importlib
    try:
        mod = importlib.import_module(COMMANDS[argv[0]][0])
    except ModuleNotFoundError:
        print(f"error: command {argv[0]!r} is not available in this version", file=sys.stderr)
        return 2
    return mod.main(argv[1:])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
