"""Small FITS helpers shared by the commands: atomic writes and checksummed HDUs."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from astropy.io import fits

from .errors import OutputError

__all__ = ["atomic_write_hdul", "check_writable_dir"]


def check_writable_dir(folder: Path) -> None:
    """Raise :class:`OutputError` unless ``folder`` exists and is writable."""
    folder = Path(folder)
    if not folder.is_dir():
        raise OutputError(f"{folder}: output folder does not exist; create it or pass another "
                          "--outdir")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{folder}: output folder is not writable; fix its permissions or "
                          "pass another --outdir")


def atomic_write_hdul(hdul: fits.HDUList, path: Path, *, overwrite: bool = False) -> Path:
    """Write ``hdul`` to ``path`` (gzip if it ends in .gz) through a temporary file + rename.

    CHECKSUM/DATASUM are written so that readers (and the batch engine) can verify the file.
    A crash leaves at most a ``.<name>.*.tmp`` file, never a partial ``path``.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputError(f"{path}: exists; pass --overwrite to replace it")
    check_writable_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        if path.name.endswith(".gz"):
            import gzip
            with gzip.open(tmp, "wb", compresslevel=6) as fh:
                hdul.writeto(fh, checksum=True)
        else:
            hdul.writeto(tmp, overwrite=True, checksum=True)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path
