"""Output helpers shared by the commands: atomic writes of checksummed FITS files and PNGs."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from astropy.io import fits

from .errors import OutputError

__all__ = ["atomic_write_hdul", "atomic_savefig", "check_writable_dir",
           "remove_stale_temporaries"]


def remove_stale_temporaries(path: Path) -> int:
    """Delete temporaries a killed writer of ``path`` left behind; return how many."""
    path = Path(path)
    n = 0
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            tmp.unlink()
            n += 1
        except OSError:
            pass
    return n


def check_writable_dir(folder: Path) -> None:
    """Raise :class:`OutputError` unless ``folder`` exists and is writable."""
    folder = Path(folder)
    if not folder.is_dir():
        raise OutputError(f"{folder}: output folder does not exist; create it or choose "
                          "another output folder")
    # os.access says yes to root even on read-only file systems: really try.
    try:
        fd, probe = tempfile.mkstemp(prefix=".xmm_enhance_probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError:
        raise OutputError(f"{folder}: output folder is not writable; fix its permissions or "
                          "choose another output folder") from None


def atomic_write_hdul(hdul: fits.HDUList, path: Path, *, overwrite: bool = False) -> Path:
    """Write ``hdul`` to ``path`` (gzip if it ends in .gz) through a temporary file + rename.

    CHECKSUM/DATASUM are written so that readers (and the batch engine) can verify the file.
    A crash leaves at most a ``.<name>.*.tmp`` file, never a partial ``path``.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputError(f"{path}: exists; pass --overwrite to replace it")
    check_writable_dir(path.parent)
    remove_stale_temporaries(path)
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


def atomic_savefig(fig, path: Path, *, dpi=None) -> Path:
    """Save a matplotlib figure as PNG through a temporary file + rename; return ``path``."""
    path = Path(path)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=dpi)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
