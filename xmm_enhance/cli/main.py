"""The ``xmm-enhance`` console entry point: ``xmm-enhance image|infer|batch|demo|aperture ...``.

Each command is the same program as its root script (``image`` is
``make_detxy_pn_image_pps.py``, ``infer`` is ``run_inference_on_real.py``) and shows
``xmm-enhance <command>`` in its usage line. Exit codes: 0 success, 1 run-time failure,
2 usage error (an unknown command included).
"""
from __future__ import annotations

import sys

from .common import ensure_std_streams, invoked_as, version_text

COMMANDS = {
    "image": ("xmm_enhance.cli.make_image",
              "OBS_ID -> DETX/DETY image (make_detxy_pn_image_pps.py)"),
    "infer": ("xmm_enhance.cli.infer", "SR / DN prediction (run_inference_on_real.py)"),
    "batch": ("xmm_enhance.cli.batch", "many OBS_IDs: image -> SR -> DN, resumable"),
    "demo": ("xmm_enhance.demo", "simulated observation -> image -> SR and DN"),
    "aperture": ("xmm_enhance.cli.aperture",
                 "a prediction's rate in a sky aperture, with its 68 % interval"),
}


#: Options every command takes, accepted before the command too.
_LEVEL_FLAGS = ("-q", "--quiet", "-v", "--verbose")


def _usage() -> str:
    lines = ["usage: xmm-enhance [-h] [--version] [-q | -v] {" + ",".join(COMMANDS) + "} ...", "",
             "commands:"]
    lines += [f"  {name:8s} {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "'xmm-enhance COMMAND --help' shows a command's options; -q (warnings and "
              "errors only), -v and --version mean the same in every command."]
    return "\n".join(lines)


def main(argv=None) -> int:
    ensure_std_streams()
    argv = list(sys.argv[1:] if argv is None else argv)
    # -q / -v before the command ("xmm-enhance -q batch ...") mean what they mean after it
    levels = []
    while argv and argv[0] in _LEVEL_FLAGS:
        levels.append(argv.pop(0))
    if argv and argv[0] in COMMANDS:
        argv[1:1] = levels
    if argv and argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if not argv:
        print(_usage(), file=sys.stderr)
        print("xmm-enhance: error: a command is required", file=sys.stderr)
        return 2
    if argv[0] == "--version":
        print(version_text())
        return 0
    if argv[0] not in COMMANDS:
        print(f"xmm-enhance: error: unknown command {argv[0]!r}; choose one of "
              f"{', '.join(COMMANDS)} (xmm-enhance --help)", file=sys.stderr)
        return 2
    import importlib
    try:
        mod = importlib.import_module(COMMANDS[argv[0]][0])
    except ModuleNotFoundError as exc:
        print(f"xmm-enhance: error: command {argv[0]!r} cannot be loaded ({exc}); reinstall "
              "xmm-enhance (make venv)", file=sys.stderr)
        return 1
    with invoked_as(f"xmm-enhance {argv[0]}"):
        try:
            return mod.main(argv[1:])
        except SystemExit as exc:  # argparse in a command: 0 for --help, 2 for usage errors
            return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
