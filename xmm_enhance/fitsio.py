"""Output helpers shared by the commands: atomic writes of checksummed FITS files and PNGs."""
from __future__ import annotations

import contextlib
import io
import os
import re
import struct
import tempfile
import zlib
from pathlib import Path

from astropy.io import fits

from .errors import OutputError
from .fsmode import file_mode, temp_file, temporary_is_stale  # noqa: F401

__all__ = ["add_history", "atomic_write_hdul", "atomic_write_hduls", "atomic_savefig",
           "check_writable_dir", "check_creatable_dir", "check_name_length", "ensure_output_dir",
           "header_text", "refuse_existing", "remove_stale_temporaries", "GZIP_LEVEL",
           "temp_file", "temporary_is_stale", "fits_truncation"]

#: zlib level of ``.gz`` outputs. Float images hardly compress beyond their runs of zeros, so
#: level 1 with run-length matching (``Z_RLE``) gives files as small as level 6 (or 9) in less
#: than half the time (2.2 MB in 36 ms vs 89 ms for an 832x832 float32 SR prediction).
GZIP_LEVEL = 1

try:
    # Intel ISA-L's deflate (python-isal): the same standard deflate stream, 3x faster than zlib
    # level 1 + Z_RLE and a little smaller (13.9 MB SR prediction file: 32 ms / 7.65 MB vs
    # 96 ms / 7.80 MB on one core); zlib is the fallback where no wheel installs
    from isal import isal_zlib as _isal
except ImportError:  # pragma: no cover - exercised where isal is missing
    _isal = None
#: ISA-L level of ``.gz`` outputs (0-3; 1 is its fast, still Huffman-and-match level).
ISAL_LEVEL = 1


def _deflater():
    """A raw-deflate compressor (ISA-L when installed, else zlib with ``GZIP_LEVEL``/Z_RLE)."""
    if _isal is not None:
        return _isal.compressobj(ISAL_LEVEL, _isal.DEFLATED, -15)
    return zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -15, 9, zlib.Z_RLE)


def add_history(header: fits.Header, text: str, width: int = 72) -> None:
    """Add ``text`` as HISTORY cards broken at spaces (astropy breaks them mid-word)."""
    import textwrap

    for line in textwrap.wrap(str(text), width=width, break_long_words=True,
                              break_on_hyphens=False) or [""]:
        header.add_history(line)


def header_text(text) -> str:
    """``text`` as a FITS header string: printable ASCII as it is, any other character (a
    file name's ``é``, a tab) as its Python escape (``\\xe9``, ``\\t``), which astropy would
    otherwise refuse ("FITS header values must contain standard printable ASCII
    characters"). Readable, and the original name can be recovered from it."""
    return "".join(c if " " <= c <= "~" else ascii(c)[1:-1] for c in str(text))


def remove_stale_temporaries(path: Path) -> int:
    """Delete the temporaries that killed writers of ``path`` left behind (not those of a
    writer still at work: :func:`temporary_is_stale`); return how many."""
    path = Path(path)
    n = 0
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            if temporary_is_stale(tmp):
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


def check_creatable_dir(folder: Path, fix: str = "choose another output folder") -> None:
    """Raise :class:`OutputError` unless ``folder`` is a writable folder or can be made as one
    (``mkdir -p``) in a writable folder. Nothing is created: the caller makes it when it
    writes, so that a run that writes nothing leaves no empty folder. ``fix``: the message's
    advice."""
    folder = Path(folder)
    if folder.exists():
        if not folder.is_dir():
            raise OutputError(f"{folder}: is a file, not a folder; {fix}")
        check_writable_dir(folder)
        return
    parent = folder.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"{folder}: cannot create the output folder ({parent} is not a "
                          f"folder); {fix}")
    try:
        check_writable_dir(parent)
    except OutputError:
        raise OutputError(f"{folder}: cannot create the output folder ({parent} is not "
                          f"writable); {fix}") from None


def ensure_output_dir(folder: Path) -> Path:
    """Create ``folder`` and its parents if missing (``mkdir -p``), then check it is writable.

    Raises
    ------
    OutputError
        ``folder`` is a file, cannot be created, or is not writable.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder}: is a file, not a folder; choose another output folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{folder}: cannot create the output folder ({_reason(exc)}); "
                          "choose another output folder") from None
    check_writable_dir(folder)
    return folder


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def _fits_bytes(hdul: fits.HDUList, gzipped: bool) -> bytes:
    """The file content of ``hdul`` (with CHECKSUM/DATASUM), gzip-compressed if asked."""
    buf = io.BytesIO()
    hdul.writeto(buf, checksum=True)
    raw = buf.getbuffer()
    if not gzipped:
        return bytes(raw)
    return gzip_member(raw)


#: Bytes per deflate block compressed by one thread in :func:`gzip_member`.
GZIP_CHUNK = 1 << 21


def gzip_member(raw) -> bytes:
    """One standard gzip member (mtime 0, CRC-32, size) of ``raw``, readable by any gzip reader.

    Large inputs are deflated in ``GZIP_CHUNK`` blocks on threads (the compressors release the
    GIL), each by its own compressor, and the blocks joined with sync flushes into one deflate
    stream, as pigz does: no match reaches back into a previous block, so any inflater reads the
    stream, and the loss against one stream is a few bytes per block.
    """
    raw = memoryview(raw).cast("B")
    n = len(raw)
    chunks = [raw[i:i + GZIP_CHUNK] for i in range(0, n, GZIP_CHUNK)] or [raw]

    mod = _isal if _isal is not None else zlib  # its flush constants

    def deflate(k):
        z = _deflater()
        last = k == len(chunks) - 1
        return z.compress(chunks[k]) + z.flush(mod.Z_FINISH if last else mod.Z_SYNC_FLUSH)

    if len(chunks) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(len(chunks), os.cpu_count() or 1)) as ex:
            body = b"".join(ex.map(deflate, range(len(chunks))))
    else:
        body = deflate(0)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # deflate, no flags, mtime 0, OS unknown
    trailer = struct.pack("<II", zlib.crc32(raw) & 0xFFFFFFFF, n & 0xFFFFFFFF)
    return header + body + trailer


def atomic_write_hduls(items, *, overwrite: bool = False) -> list[Path]:
    """Write several FITS files all or none: each to a temporary file, then rename them all.

    Parameters
    ----------
    items : sequence of (HDUList or bytes, path)
        A path ending in ``.gz`` is written gzip-compressed; bytes (a region file...) are
        written as they are. CHECKSUM/DATASUM are written so
        that readers (and the batch engine) can verify the file.
    overwrite : bool
        Replace existing files; otherwise an existing one raises before anything is written.

    Returns
    -------
    list of Path

    Raises
    ------
    OutputError
        A file exists (without ``overwrite``), or writing failed (disk full, permissions...):
        then no temporary file is left and none of the paths that did not exist before exists.

    Notes
    -----
    A killed process leaves at most ``.<name>.*.tmp`` files (removed by the next write of the
    same path), never a partial file under one of the final names.
    """
    items = [(hdul, Path(path)) for hdul, path in items]
    if not overwrite:
        refuse_existing(path for _, path in items)
    for folder in dict.fromkeys(path.parent for _, path in items):
        check_writable_dir(folder)
    tmps: list[str] = []
    done: list[Path] = []
    existed = {path: path.exists() for _, path in items}
    path = items[0][1] if items else None
    try:
        for hdul, path in items:
            data = (hdul if isinstance(hdul, bytes)
                    else _fits_bytes(hdul, path.name.endswith(".gz")))
            remove_stale_temporaries(path)
            fd, tmp = temp_file(path)
            tmps.append(tmp)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.chmod(tmp, file_mode())
        for (_, path), tmp in zip(items, tmps):
            os.replace(tmp, path)
            done.append(path)
    except BaseException as exc:
        # clean-up that fails too (a folder made read-only) must not hide the first error;
        # what stays is removed by the next run (remove_stale_temporaries)
        for tmp in tmps:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        for p in done:  # a set is all or nothing: undo the renames of files that were new
            if not existed[p]:
                with contextlib.suppress(OSError):
                    p.unlink()
        if isinstance(exc, OSError):
            raise OutputError(f"{path}: cannot write ({_reason(exc)}); free disk space, fix "
                              "the folder's permissions or choose another output folder"
                              ) from None
        raise
    return [path for _, path in items]


#: What a temporary name adds to a final one: ``.<name>.<pid>-<host>.XXXXXXXX.tmp``
#: (:func:`temp_file`; pids have at most 7 digits on Linux).
_TMP_EXTRA = len("." + "." + "4194304-ffffffff." + "XXXXXXXX" + ".tmp")


def _name_max(folder: Path) -> int:
    """The file system's longest file name (bytes) in ``folder`` or its nearest existing
    ancestor; 255 where it cannot be asked."""
    f = Path(folder)
    while not f.exists() and f != f.parent:
        f = f.parent
    try:
        return int(os.pathconf(f, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return 255


def check_name_length(paths, fix: str = "give the input a shorter name") -> None:
    """Raise :class:`OutputError` for the first of ``paths`` whose name, or its temporary
    name, is too long for its file system (before any work, rather than an ``OSError`` at
    the end)."""
    for p in map(Path, paths):
        n = len(os.fsencode(p.name)) + _TMP_EXTRA
        limit = _name_max(p.parent)
        if n > limit:
            raise OutputError(f"{p.parent / (p.name[:40] + '...')}: output file name too long "
                              f"for the file system ({n} bytes with the temporary name's, at "
                              f"most {limit}); {fix}")


def refuse_existing(paths) -> None:
    """Raise :class:`OutputError` for the first of ``paths`` that exists (a run without
    ``--overwrite``; both commands that write FITS also have ``--skip-existing``)."""
    for p in map(Path, paths):
        if p.exists():
            raise OutputError(f"{p}: exists; pass --overwrite to replace it, or --skip-existing "
                              "to keep complete outputs and redo the rest")


def atomic_write_hdul(hdul: fits.HDUList, path: Path, *, overwrite: bool = False) -> Path:
    """Write ``hdul`` to ``path`` (gzip if it ends in .gz) through a temporary file + rename.

    See :func:`atomic_write_hduls` (one file).
    """
    return atomic_write_hduls([(hdul, path)], overwrite=overwrite)[0]


def atomic_savefig(fig, path: Path, *, dpi=None) -> Path:
    """Save a matplotlib figure as PNG through a temporary file + rename; return ``path``."""
    path = Path(path)
    tmp = None
    try:
        remove_stale_temporaries(path)
        fd, tmp = temp_file(path)
        os.close(fd)
        fig.savefig(tmp, format="png", dpi=dpi)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):   # must not hide the first error
                Path(tmp).unlink()
        if isinstance(exc, OSError):   # disk full, no such folder, a folder of that name...
            raise OutputError(f"{path}: cannot write ({_reason(exc)}); free disk space, fix "
                              "the folder's permissions or choose another output folder"
                              ) from None
        raise
    return path


_BLOCK = 2880
_SIZE_KEYS = (b"BITPIX", b"NAXIS", b"PCOUNT", b"GCOUNT")
_NAXIS_N = re.compile(rb"NAXIS[0-9]{1,3}")


def fits_truncation(fh, size: int) -> str:
    """"" or why the uncompressed FITS stream ``fh`` (seekable, binary, ``size`` bytes) ends
    before the data its headers announce: a header cut short, or an HDU whose data (without
    the final padding, which some writers leave out) run past the end.

    Reads the headers only (2880-byte blocks up to each ``END``, then a seek past the data),
    and raises no warning: astropy's own "File may have been truncated" is a Python warning,
    and catching it would take every thread's warnings (``warnings`` is process-wide). A
    stream that does not start as FITS, or a header this reading cannot follow, gives "":
    astropy then says what is wrong with it.
    """
    pos = 0
    while pos < size:
        fh.seek(pos)
        keys: dict = {}
        blocks, ended = 0, False
        while not ended:
            block = fh.read(_BLOCK)
            if pos == 0 and blocks == 0 and not block.startswith(b"SIMPLE  ="):
                return ""
            if len(block) < _BLOCK:
                if pos > 0 and blocks == 0 and not block.strip(b"\0 "):
                    return ""   # blank bytes after the last HDU
                return f"a header is cut short at byte {size}"
            blocks += 1
            for i in range(0, _BLOCK, 80):
                key = block[i:i + 8].rstrip()
                if key == b"END":
                    ended = True
                    break
                if key in _SIZE_KEYS or _NAXIS_N.fullmatch(key):
                    try:
                        keys[key] = int(block[i + 10:i + 80].split(b"/")[0])
                    except ValueError:
                        return ""
            if blocks > 10_000:
                return ""
        naxis = keys.get(b"NAXIS", 0)
        dims = [keys.get(b"NAXIS%d" % k, 0) for k in range(1, naxis + 1)]
        if dims and dims[0] == 0 and len(dims) > 1:   # random groups: NAXIS1 = 0
            dims = dims[1:]
        n = 1
        for d in dims:
            n *= d
        nbytes = (abs(keys.get(b"BITPIX", 8)) // 8 * keys.get(b"GCOUNT", 1)
                  * (keys.get(b"PCOUNT", 0) + (n if dims else 0)))
        start = pos + blocks * _BLOCK
        if start + nbytes > size:
            return (f"its data end at byte {start + nbytes}, the file at byte {size}")
        pos = start + -(-nbytes // _BLOCK) * _BLOCK
    return ""
