"""Tests of xmm_enhance.fitsio: the all-or-none writes of several files, and the reading of a
FITS file's headers that tells whether it was cut short (fits_truncation)."""
import errno
import io

import numpy as np
import pytest
from astropy.io import fits

from xmm_enhance import fitsio
from xmm_enhance.errors import OutputError


# ---- atomic_write_hduls: all or none --------------------------------------------------------

def _image(value):
    return fits.HDUList([fits.PrimaryHDU(np.full((8, 8), value, np.float32))])


def _second_temp_file_fails(monkeypatch):
    """``fitsio.temp_file`` as atomic_write_hduls calls it; its second call: disk full."""
    real = fitsio.temp_file
    calls = []

    def temp_file(path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path)

    monkeypatch.setattr(fitsio, "temp_file", temp_file)
    return calls


def test_a_failed_rewrite_of_a_set_leaves_every_old_file_as_it_was(tmp_path, monkeypatch):
    a, b = tmp_path / "a.fits.gz", tmp_path / "b.reg"
    fitsio.atomic_write_hduls([(_image(1.0), a), (b"# Region file v1\n", b)])
    old_a, old_b = a.read_bytes(), b.read_bytes()
    assert fits.getdata(a)[0, 0] == 1.0

    calls = _second_temp_file_fails(monkeypatch)
    with pytest.raises(OutputError, match="No space left on device") as err:
        fitsio.atomic_write_hduls([(_image(2.0), a), (b"# Region file v2\n", b)],
                                  overwrite=True)
    assert calls == [a, b]                       # a's temporary was written, b's failed
    assert str(b) in str(err.value) and "free disk space" in str(err.value)
    # nothing is renamed before every temporary is written: a keeps its old content
    assert a.read_bytes() == old_a and b.read_bytes() == old_b
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.fits.gz", "b.reg"]  # no .tmp


def test_a_failed_first_write_of_a_set_leaves_no_file(tmp_path, monkeypatch):
    a, b = tmp_path / "a.fits.gz", tmp_path / "b.reg"
    _second_temp_file_fails(monkeypatch)
    with pytest.raises(OutputError, match="No space left on device"):
        fitsio.atomic_write_hduls([(_image(2.0), a), (b"# Region file\n", b)])
    assert list(tmp_path.iterdir()) == []        # neither file, no temporary


# ---- fits_truncation ------------------------------------------------------------------------

def _fits(hdul) -> bytes:
    buf = io.BytesIO()
    hdul.writeto(buf)
    return buf.getvalue()


def _truncation(data: bytes) -> str:
    return fitsio.fits_truncation(io.BytesIO(data), len(data))


#: one header block and one data block filled to its last byte (720 float32: no padding)
FULL = _fits(fits.HDUList([fits.PrimaryHDU(np.arange(720, dtype=np.float32))]))
#: primary header, image extension header, then its 2880 data bytes
TWO_HDUS = _fits(fits.HDUList([fits.PrimaryHDU(),
                               fits.ImageHDU(np.arange(720, dtype=np.float32))]))
#: 40 data bytes and 2840 bytes of padding
PADDED = _fits(fits.HDUList([fits.PrimaryHDU(np.arange(10, dtype=np.float32))]))


def test_fits_truncation_of_whole_files_is_empty(tmp_path):
    assert len(FULL) == 2 * 2880 and len(TWO_HDUS) == 3 * 2880 and len(PADDED) == 2 * 2880
    for data in (FULL, TWO_HDUS, PADDED):
        assert _truncation(data) == ""
    path = tmp_path / "x.fits"                    # a real file, as the callers read them
    path.write_bytes(TWO_HDUS)
    with open(path, "rb") as fh:
        assert fitsio.fits_truncation(fh, path.stat().st_size) == ""


@pytest.mark.parametrize("cut", [1, 2, 2879, 2880])
def test_fits_truncation_names_data_cut_by_a_byte_up_to_a_whole_block(cut):
    for data in (FULL, TWO_HDUS):
        size = len(data) - cut
        assert _truncation(data[:size]) == (
            f"its data end at byte {len(data)}, the file at byte {size}")


def test_fits_truncation_accepts_a_file_without_its_final_padding_only():
    end = 2880 + 40                               # header + the data, no padding
    assert _truncation(PADDED[:end]) == ""
    assert _truncation(PADDED[:end + 1]) == ""    # part of the padding
    assert _truncation(PADDED[:end - 1]) == f"its data end at byte {end}, the file at byte " \
                                            f"{end - 1}"


def test_fits_truncation_of_a_cut_header():
    assert _truncation(FULL[:1000]) == "a header is cut short at byte 1000"
    # the extension's header cut: the primary HDU is whole
    assert _truncation(TWO_HDUS[:2880 + 100]) == "a header is cut short at byte 2980"


def test_fits_truncation_of_what_is_not_fits_is_empty():
    assert _truncation(b"not a FITS file" * 300) == ""
    assert _truncation(b"") == ""
