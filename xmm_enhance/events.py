"""Reading EPIC-pn event lists (PIEVLI, plain or gzipped FITS) and selecting events.

Only the columns the image needs are kept, and the time-independent part of the selection
(``FLAG``, ``PATTERN``, ``PI``) is applied while the table streams past, a million rows at a
time, so memory follows the *selected* events, not the file: a gzipped ``.FTZ`` is decompressed
once, in one pass; a plain FITS file is memory-mapped. Headers are parsed with astropy.

Selection (the seed's ``evselect`` expression, ``xmm-pn-reference.md`` §3)::

    (FLAG == 0) && (PATTERN in [0:4]) && (PI in [low:high])

``PI in [a:b]`` is inclusive at both ends, as in SAS. ``PATTERN`` is the pn event pattern
(0 single, 1-4 doubles, 5-12 triples and quads).
"""
from __future__ import annotations

import gzip
import logging
import math
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits

from .errors import REPLACE_FIX, PPSError

__all__ = ["EventList", "read_events", "read_header", "selection_mask", "selection_expression",
           "read_table", "IMAGE_COLUMNS"]

log = logging.getLogger(__name__)

#: Columns kept for every selected event: what binning and the sky-WCS fit need.
IMAGE_COLUMNS = ("TIME", "DETX", "DETY", "X", "Y")
_SELECT_COLUMNS = ("FLAG", "PATTERN", "PI")
_BLOCK = 2880
_FIX = REPLACE_FIX


def selection_mask(flag, pattern, pi, low_pi: int, high_pi: int, *, max_pattern: int = 4,
                   flag_value: int = 0) -> np.ndarray:
    """``(FLAG == flag_value) & (0 <= PATTERN <= max_pattern) & (low_pi <= PI <= high_pi)``."""
    return ((np.asarray(flag) == flag_value) & (np.asarray(pattern) <= max_pattern)
            & (np.asarray(pattern) >= 0) & (np.asarray(pi) >= low_pi)
            & (np.asarray(pi) <= high_pi))


def selection_expression(low_pi: int, high_pi: int, *, max_pattern: int = 4,
                         gti: str | None = None) -> str:
    """The selection as a SAS ``evselect`` expression (written to ``SLCTEXPR``)."""
    expr = f"(FLAG == 0) && (PATTERN in [0:{max_pattern}]) && (PI in [{low_pi}:{high_pi}])"
    if gti:
        expr += f" && gti({gti},TIME)"
    return expr


@dataclass
class EventList:
    """Selected events of one pn event list and what the image needs from its file.

    Arrays are 1-D and aligned: ``time`` float64 (s), ``detx``/``dety`` int32 (DET, 0.05"),
    ``x``/``y`` (sky pixels, 0.05"; float64 or int32 as stored).
    """

    path: Path
    header: fits.Header          #: EVENTS extension header
    primary: fits.Header         #: primary header
    columns: dict                #: name -> array of the selected events
    ccd_gtis: dict = field(default_factory=dict)  #: CCD number -> GTI set (STDGTInn)
    n_rows: int = 0              #: rows in the file
    n_selected: int = 0          #: rows passing FLAG/PATTERN/PI

    def __getattr__(self, name):
        cols = self.__dict__.get("columns", {})
        if name.upper() in cols:
            return cols[name.upper()]
        raise AttributeError(name)

    def __len__(self):
        return self.n_selected

    def own_gti(self) -> np.ndarray:
        """Good time common to all CCDs with a GTI table; ``[TSTART, TSTOP)`` without any."""
        from . import gti as _gti

        tables = [g for g in self.ccd_gtis.values() if len(g)]
        if tables:
            return _gti.intersect_many(tables)
        t0, t1 = self.header.get("TSTART"), self.header.get("TSTOP")
        if t0 is None or t1 is None:
            t = self.columns.get("TIME")
            if t is None or len(t) == 0:
                return np.empty((0, 2))
            t0, t1 = float(t.min()), float(np.nextafter(t.max(), np.inf))
        log.warning("%s: no STDGTInn tables; using TSTART-TSTOP as the event list's good time",
                    self.path.name)
        return _gti.as_gti([[float(t0), float(t1)]])


# --------------------------------------------------------------------------------------------
# A streaming FITS reader: header blocks and binary-table rows, from a plain or gzip stream.

class _Stream:
    """Sequential reader over a plain or gzip-compressed file, counting the offset."""

    def __init__(self, path: Path):
        self.path = path
        with open(path, "rb") as fh:
            magic = fh.read(2)
        self.gz = magic == b"\x1f\x8b"
        self.fh = gzip.open(path, "rb") if self.gz else open(path, "rb")
        self.pos = 0

    def close(self):
        self.fh.close()

    def read(self, n: int) -> bytes:
        b = self.fh.read(n)
        self.pos += len(b)
        return b

    def readinto_exact(self, mv: memoryview) -> None:
        got = 0
        n = len(mv)
        while got < n:
            k = self.fh.readinto(mv[got:])
            if not k:
                raise EOFError(f"file ends {n - got} bytes early")
            got += k
        self.pos += n

    def skip(self, n: int) -> None:
        if n <= 0:
            return
        if self.gz:
            buf = bytearray(min(n, 1 << 24))
            mv = memoryview(buf)
            left = n
            while left:
                k = min(left, len(buf))
                self.readinto_exact(mv[:k])
                left -= k
        else:
            self.fh.seek(n, 1)
            self.pos += n


def _read_header(s: _Stream):
    """Next header (astropy Header) or None at a clean end of file."""
    blocks = []
    while True:
        b = s.read(_BLOCK)
        if not b:
            if not blocks:
                return None
            raise EOFError("file ends inside a FITS header")
        if len(b) < _BLOCK:
            if not blocks and not b.strip(b"\0 "):
                return None  # trailing padding
            raise EOFError("file ends inside a FITS header")
        blocks.append(b)
        if any(b[i:i + 80].rstrip() == b"END" for i in range(0, _BLOCK, 80)):
            break
        if len(blocks) > 10000:
            raise ValueError("FITS header without END")
    raw = b"".join(blocks)
    first = raw[:8]
    if first not in (b"SIMPLE  ", b"XTENSION"):
        raise ValueError("not a FITS header")
    return fits.Header.fromstring(raw.decode("ascii", errors="replace"))


def _data_size(h: fits.Header) -> int:
    naxis = int(h.get("NAXIS", 0))
    if naxis == 0:
        return 0
    n = 1
    for i in range(1, naxis + 1):
        n *= int(h[f"NAXIS{i}"])
    return abs(int(h["BITPIX"])) // 8 * int(h.get("GCOUNT", 1)) * (int(h.get("PCOUNT", 0)) + n)


_TFORM = re.compile(r"^\s*(\d*)([LXBIJKAEDCMPQ])")
_SIZES = {"L": 1, "B": 1, "I": 2, "J": 4, "K": 8, "A": 1, "E": 4, "D": 8, "C": 8, "M": 16,
          "P": 8, "Q": 16}
_NUMPY = {"L": "i1", "B": "u1", "I": ">i2", "J": ">i4", "K": ">i8", "E": ">f4", "D": ">f8"}


def _table_layout(h: fits.Header):
    """{COLUMN: (offset, tform-code, repeat, tscal, tzero)} and the row length."""
    cols = {}
    off = 0
    for i in range(1, int(h.get("TFIELDS", 0)) + 1):
        form = str(h[f"TFORM{i}"])
        m = _TFORM.match(form)
        if not m:
            raise ValueError(f"unsupported TFORM{i} = {form!r}")
        rep = int(m.group(1)) if m.group(1) else 1
        code = m.group(2)
        size = math.ceil(rep / 8) if code == "X" else rep * _SIZES[code]
        name = str(h.get(f"TTYPE{i}", f"COL{i}")).strip().upper()
        cols[name] = (off, code, rep, float(h.get(f"TSCAL{i}", 1.0)),
                      float(h.get(f"TZERO{i}", 0.0)))
        off += size
    rowlen = int(h["NAXIS1"])
    if off != rowlen:
        raise ValueError(f"columns add up to {off} bytes, NAXIS1 says {rowlen}")
    return cols, rowlen


def _row_dtype(layout, rowlen, names):
    fmts, offs = [], []
    for n in names:
        off, code, rep, _, _ = layout[n]
        if code not in _NUMPY or rep != 1:
            raise ValueError(f"column {n} has an unsupported format for reading")
        fmts.append(_NUMPY[code])
        offs.append(off)
    return np.dtype({"names": list(names), "formats": fmts, "offsets": offs,
                     "itemsize": rowlen})


def _convert(raw: np.ndarray, code: str, tscal: float, tzero: float) -> np.ndarray:
    """Native-endian values of a raw big-endian column with TSCAL/TZERO applied."""
    if tscal == 1.0 and tzero == 0.0:
        return raw.astype(raw.dtype.newbyteorder("="), copy=True)
    if tscal == 1.0 and float(tzero).is_integer() and code in "BIJK":
        # the FITS conventions for unsigned/signed integers stored with an offset
        special = {("B", -128.0): np.int8, ("I", 32768.0): np.uint16,
                   ("J", 2147483648.0): np.uint32}
        dt = special.get((code, tzero))
        if dt is not None:
            return (raw.astype(np.int64) + int(tzero)).astype(dt)
        return raw.astype(np.int64) + int(tzero)
    return raw.astype(np.float64) * tscal + tzero


def _short(err) -> str:
    s = str(err).strip().splitlines()
    return (s[0] if s else type(err).__name__)[:160]


def _corrupt(path: Path, err) -> PPSError:
    from .archive import unreadable_error

    return unreadable_error(path, err) or PPSError(
        f"{path}: corrupt or truncated FITS file ({_short(err)}); {_FIX}")


def read_table(path, extname: str, columns, *, where=None, chunk_rows: int = 1 << 20,
               extra_tables=None):
    """Stream a binary table's ``columns``, keeping rows where ``where(chunk)`` is true.

    Parameters
    ----------
    path : path-like
        FITS file, plain or gzip-compressed (detected from its first bytes).
    extname : str
        Extension to read (first match, case-insensitive).
    columns : sequence of str
        Columns to return (also passed to ``where``).
    where : callable, optional
        ``where(dict name -> chunk array) -> bool mask``; rows where it is False are dropped.
        It may need more columns than are returned: list them in ``columns`` and drop later, or
        use the ``need`` attribute of the callable (a tuple of column names).
    chunk_rows : int
        Rows decoded at a time (bounds the working memory).
    extra_tables : callable, optional
        ``extra_tables(header) -> bool``: other small binary tables to read whole (their
        columns as a dict), e.g. the ``STDGTInn`` tables after ``EVENTS``.

    Returns
    -------
    (primary header, table header, {column: array}, n_rows, {extname: (header, {col: array})})
    """
    path = Path(path)
    columns = [c.upper() for c in columns]
    need = list(dict.fromkeys(columns + [c.upper() for c in getattr(where, "need", ())]))
    s = _open_stream(path)
    try:
        primary = _primary_header(s)
        table_hdr = None
        out = None
        nrows = 0
        extras = {}
        while True:
            h = _read_header(s)
            if h is None:
                break
            size = _data_size(h)
            name = str(h.get("EXTNAME", "")).strip().upper()
            if table_hdr is None and name == extname.upper():
                table_hdr = h
                out, nrows = _read_rows(s, path, h, need, columns, where, chunk_rows)
                s.skip(_padded(size) - size)
            elif extra_tables is not None and h.get("XTENSION", "").strip() == "BINTABLE" \
                    and extra_tables(h):
                layout, _ = _table_layout(h)
                names = [n for n, v in layout.items() if v[1] in _NUMPY and v[2] == 1]
                cols, _ = _read_rows(s, path, h, names, names, None, chunk_rows)
                extras[name] = (h, cols)
                s.skip(_padded(size) - size)
            else:
                s.skip(_padded(size))
    except PPSError:
        raise
    except (EOFError, OSError, zlib.error, ValueError, KeyError) as err:
        raise _corrupt(path, err) from err
    finally:
        s.close()
    if table_hdr is None:
        raise PPSError(f"{path}: no {extname} extension; is this a pn event list? {_FIX}")
    return primary, table_hdr, out, nrows, extras


def read_header(path, extname: str = "EVENTS"):
    """(primary header, header of ``extname``) without reading any table data.

    Unlike ``astropy.io.fits.getheader``, which decompresses a whole gzipped file, this stops
    at the wanted header: milliseconds for a multi-GB ``.FTZ`` whose EVENTS table comes first.
    """
    path = Path(path)
    s = _open_stream(path)
    try:
        primary = _primary_header(s)
        while True:
            h = _read_header(s)
            if h is None:
                break
            if str(h.get("EXTNAME", "")).strip().upper() == extname.upper():
                return primary, h
            s.skip(_padded(_data_size(h)))
    except PPSError:
        raise
    except (EOFError, OSError, zlib.error, ValueError, KeyError) as err:
        raise _corrupt(path, err) from err
    finally:
        s.close()
    raise PPSError(f"{path}: no {extname} extension; {_FIX}")


def _open_stream(path: Path) -> "_Stream":
    """A :class:`_Stream` on ``path``; PPSError if it cannot be opened."""
    try:
        return _Stream(path)
    except OSError as err:
        raise PPSError(f"{path}: cannot open ({_short(err)})") from err


def _primary_header(s: "_Stream"):
    """Read the primary header and skip its data; the stream is left at the first extension."""
    primary = _read_header(s)
    if primary is None:
        raise ValueError("empty file")
    s.skip(_padded(_data_size(primary)))
    return primary


def _padded(n: int) -> int:
    return -(-n // _BLOCK) * _BLOCK


def _read_rows(s: _Stream, path: Path, h, need, columns, where, chunk_rows):
    layout, rowlen = _table_layout(h)
    nrows = int(h["NAXIS2"])
    missing = [c for c in need if c not in layout]
    if missing:
        raise PPSError(f"{path}: {h.get('EXTNAME', 'table')} has no column "
                       f"{', '.join(missing)}; not a pn imaging event list?")
    dtype = _row_dtype(layout, rowlen, need)
    parts = {c: [] for c in columns}
    chunk_rows = max(1, int(chunk_rows))
    # A plain file is mapped one chunk at a time: a map of the whole table would keep every
    # page it touched in the process's resident memory (2.5 GB for 50 M events; session 23).
    mapped = not s.gz and nrows > 0
    if mapped and path.stat().st_size < s.pos + nrows * rowlen:
        raise EOFError("table shorter than NAXIS2 says")
    buf = None if mapped else bytearray(min(nrows, chunk_rows) * rowlen)
    done = 0
    while done < nrows:
        n = min(chunk_rows, nrows - done)
        if mapped:
            arr = np.memmap(path, dtype=dtype, mode="r", offset=s.pos + done * rowlen,
                            shape=(n,))
        else:
            mv = memoryview(buf)[:n * rowlen]
            s.readinto_exact(mv)
            arr = np.frombuffer(buf, dtype=dtype, count=n)
        chunk = {c: _convert(arr[c], *_code_scale(layout[c])) for c in need}
        if where is not None:
            keep = np.asarray(where(chunk), bool)
            for c in columns:
                parts[c].append(chunk[c][keep])
        else:   # copies: neither a view of the map nor of the reused buffer may be kept
            for c in columns:
                parts[c].append(np.array(chunk[c], copy=True))
        del arr, chunk
        done += n
    if mapped:
        s.skip(nrows * rowlen)
    out = {}
    for c in columns:
        if parts[c]:
            out[c] = np.concatenate(parts[c]) if len(parts[c]) > 1 else parts[c][0]
        else:
            code, tscal, tzero = _code_scale(layout[c])
            out[c] = _convert(np.empty(0, dtype=np.dtype(_NUMPY[code])), code, tscal, tzero)
    return out, nrows


def _code_scale(spec):
    _, code, _, tscal, tzero = spec
    return code, tscal, tzero


def read_events(path, *, low_pi: int = 500, high_pi: int = 2000, max_pattern: int = 4,
                columns=IMAGE_COLUMNS, chunk_rows: int = 1 << 20) -> EventList:
    """Selected events of a pn event list (PIEVLI), plus its headers and CCD GTIs.

    Parameters
    ----------
    path : path-like
        ``P<OBSID>PN<S|U>nnnPIEVLI0000.FTZ`` (gzipped) or an uncompressed copy.
    low_pi, high_pi : int
        Inclusive PI range in eV (``PI in [low_pi:high_pi]``).
    max_pattern : int
        Keep ``PATTERN <= max_pattern`` (4: singles and doubles).
    columns : sequence of str
        Columns kept for selected events (default ``TIME, DETX, DETY, X, Y``).

    Raises
    ------
    PPSError
        The file is missing, corrupt or truncated, or lacks the EVENTS table or a column.
    """
    path = Path(path)
    if not path.is_file():
        raise PPSError(f"{path}: event list not found; download the PPS again or fix --pps_dir")

    def where(c):
        return selection_mask(c["FLAG"], c["PATTERN"], c["PI"], low_pi, high_pi,
                              max_pattern=max_pattern)
    where.need = _SELECT_COLUMNS

    def is_gti(h):
        return re.fullmatch(r"STDGTI\d+", str(h.get("EXTNAME", "")).strip().upper()) is not None

    primary, hdr, cols, nrows, extras = read_table(path, "EVENTS", columns, where=where,
                                                   chunk_rows=chunk_rows, extra_tables=is_gti)
    for c in ("DETX", "DETY"):
        if c in cols and cols[c].dtype != np.int32 and cols[c].dtype.kind in "iu":
            cols[c] = cols[c].astype(np.int32)
    from . import gti as _gti
    ccd = {}
    for name, (h, t) in extras.items():
        if "START" in t and "STOP" in t:
            n = int(re.sub(r"\D", "", name))
            ccd[n] = _gti.as_gti(np.column_stack([t["START"], t["STOP"]]))
    n_sel = len(next(iter(cols.values()))) if cols else 0
    log.debug("%s: %d rows, %d pass FLAG/PATTERN/PI", path.name, nrows, n_sel)
    return EventList(path=path, header=hdr, primary=primary, columns=cols, ccd_gtis=ccd,
                     n_rows=nrows, n_selected=n_sel)
