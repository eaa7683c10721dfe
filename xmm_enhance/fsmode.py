"""The mode of the files this package writes, and who writes them (os only: the batch
engine's parent imports it)."""
from __future__ import annotations

import os

__all__ = ["file_mode", "prepare_matplotlib", "owner_tag", "owner_gone", "temp_file",
           "temporary_is_stale"]


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


#: matplotlib's built-in backend names (lower case), as its rcParams validator knows them.
_MPL_BACKENDS = frozenset(
    "gtk3agg gtk3cairo gtk4agg gtk4cairo macosx nbagg notebook qtagg qtcairo qt5agg qt5cairo "
    "tkagg tkcairo webagg wx wxagg wxcairo agg cairo pdf pgf ps svg template inline "
    "module://matplotlib_inline.backend_inline ipympl widget".split())


def prepare_matplotlib() -> None:
    """Before matplotlib's first import: where its config folder cannot be made or written
    (``HOME`` unset, read-only or unwritable under cron), point ``MPLCONFIGDIR`` at a private
    folder in the temporary directory that is kept between runs.

    matplotlib itself would print two lines to stderr ("mkdir -p failed", "created a
    temporary cache directory") in every process that draws, even with ``-q``, and rebuild
    its font cache each time. Nothing changes where the user set ``MPLCONFIGDIR`` or the
    default folder works. An ``MPLBACKEND`` that matplotlib does not know (it would fail
    at import) is dropped with a warning.
    """
    import sys
    import tempfile

    if "matplotlib" in sys.modules:
        return
    backend = os.environ.get("MPLBACKEND", "").strip()
    if backend and not (backend.lower() in _MPL_BACKENDS or backend.startswith("module://")):
        # matplotlib fails at import on a name it does not know (a traceback, after the
        # image was written); our PNGs draw with Agg whatever the backend
        import warnings

        os.environ.pop("MPLBACKEND")
        warnings.warn(f"MPLBACKEND={backend!r} is not a matplotlib backend; ignored (unset "
                      "it, or set it to one of matplotlib's, e.g. Agg)", UserWarning,
                      stacklevel=3)
    if os.environ.get("MPLCONFIGDIR"):
        return
    home = os.path.expanduser("~")
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
    folder = os.path.join(base, "matplotlib")
    probe = folder
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)   # the nearest existing ancestor must be writable
    if home != "~" and os.path.isdir(probe) and os.access(probe, os.W_OK | os.X_OK):
        return
    uid = os.getuid() if hasattr(os, "getuid") else 0
    private = os.path.join(tempfile.gettempdir(), f"xmm_enhance-matplotlib-{uid}")
    try:
        os.makedirs(private, mode=0o700, exist_ok=True)
        st = os.stat(private)
        if st.st_uid != uid or not os.access(private, os.W_OK | os.X_OK):
            return   # not ours: leave matplotlib to its own fallback
    except OSError:
        return
    os.environ["MPLCONFIGDIR"] = private


def _host_tag() -> str:
    """8 hex digits naming this host and pid namespace (containers that share a host name
    but not their pids get different tags)."""
    import socket
    import zlib

    ident = socket.gethostname()
    try:
        ident += f"/{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        pass
    return f"{zlib.crc32(ident.encode('utf-8', 'replace')) & 0xFFFFFFFF:08x}"


_HOST = _host_tag()


def owner_tag() -> str:
    """``<pid>-<host tag>``: put into the names of temporaries and download folders, so that
    another process can tell whether their writer still runs (:func:`owner_gone`)."""
    return f"{os.getpid()}-{_HOST}"


def owner_gone(name: str) -> bool | None:
    """Whether the writer named in ``name`` (:func:`owner_tag`) is gone: True when it ran on
    this host and its process no longer exists, False when it still runs (or is this
    process), None when the name carries no tag of this host (ask the file's age instead)."""
    import re

    m = re.search(r"(\d+)-([0-9a-f]{8})(?:[.-]|$)", name)
    if not m or m.group(2) != _HOST:
        return None
    pid = int(m.group(1))
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:   # another user's process
        return False
    try:   # a killed process its new parent has not reaped yet is a zombie: gone too
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")
    except (OSError, IndexError):
        return False


#: A temporary whose writer is not known to be dead is left alone until it is this old (s):
#: no writer of this package keeps one open for more than seconds, so an older one is left
#: by a killed run (or one on another host of a shared file system).
STALE_TMP_S = 3600.0


def temp_file(path) -> tuple[int, str]:
    """``tempfile.mkstemp`` beside ``path``: ``.<name>.<pid>-<host>.XXXXXXXX.tmp``, so that
    another process can tell whether its writer still runs (:func:`temporary_is_stale`)."""
    import tempfile
    from pathlib import Path

    path = Path(path)
    return tempfile.mkstemp(prefix=f".{path.name}.{owner_tag()}.", suffix=".tmp",
                            dir=path.parent)


def temporary_is_stale(tmp) -> bool:
    """Whether the temporary ``tmp`` was left by a writer that is gone: its process (named in
    the file name, this host) no longer exists, or it is older than ``STALE_TMP_S``. A live
    writer's temporary (another run writing the same file at this moment) is not stale."""
    import time

    if owner_gone(os.path.basename(tmp)):
        return True
    try:
        return time.time() - os.stat(tmp).st_mtime > STALE_TMP_S
    except OSError:
        return False
