"""The mode of the files this package writes (os only: the batch engine's parent imports it)."""
from __future__ import annotations

import os

__all__ = ["file_mode"]


def _proc_umask() -> int | None:
    """This process's umask from /proc (Linux >= 4.7), None where it is not there."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return None


def _import_umask() -> int:
    mask = _proc_umask()
    if mask is None:  # set and restore: only here, at import, before any thread of ours runs
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


_UMASK = _import_umask()


def file_mode() -> int:
    """Mode of the files we write: 0o666 less the umask, as ``open()`` would make them (the
    temporary files behind the atomic writes are created 0o600 and set to this)."""
    mask = _proc_umask()
    return 0o666 & ~(_UMASK if mask is None else mask)
