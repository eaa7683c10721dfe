"""Tests of xmm_enhance.archive: OBS_ID checks, PPS discovery, and the download path.

The download tests run astroquery's real ``XMMNewton.download_data`` against a small XSA
imitation on 127.0.0.1 (no other network): it answers HEAD and GET on the data-action-aio URL,
serves the requested products of a fake PPS folder as an XSA-style tar (members
``<OBSID>/pps/<file>``) or as bare files, and can fail, truncate or serve hostile tars on demand.
"""
from __future__ import annotations

import http.server
import io
import logging
import os
import tarfile
import threading
import time
import traceback
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from xmm_enhance import archive
from xmm_enhance.archive import (MARKER_NAME, PPSFiles, download_pps, find_pps_files,
                                 pps_folder_is_complete, validate_obsid)
from xmm_enhance.errors import ArchiveError, PPSError, UsageError

_real_sleep = time.sleep  # the `sleeps` fixture replaces time.sleep itself

OBSID = "0123456789"


# --------------------------------------------------------------------------------------------
# A local imitation of the XSA data-action-aio servlet
# --------------------------------------------------------------------------------------------
class FakeXSA:
    """State of the local archive; tests change the attributes to script its behaviour."""

    def __init__(self, src: Path, obsid: str = OBSID):
        self.src = src
        self.obsid = obsid
        self.mode = "tar"              # or "bare": a single matching file is sent as is
        self.fail = []                 # HTTP codes returned (one per request) before serving
        self.truncate = 0              # number of GET answers cut in half (consistent length)
        self.short = 0                 # number of GET answers shorter than Content-Length
        self.hostile = None            # callable(obsid) -> tar bytes served instead
        self.creds = None              # (user, password) required when set
        self.unknown = 404             # answer to an unknown OBS_ID; "text" = 200 + HTML page
        self.no_ctype = None           # HTTP code answered with no Content-Type (not an archive)
        self.trickle = 0               # number of GET answers sent trickle_bytes per 20 ms
        self.trickle_bytes = 64
        self.slow_headers = 0          # number of GET answers whose status line and headers
                                       # come 4 bytes per 20 ms
        self.hits = []                 # (method, query dict)
        self.lock = threading.Lock()

    def gets(self):
        return [q for m, q in self.hits if m == "GET"]

    def payload(self, q):
        """(status, body, filename, content type) for a query."""
        obsid = q.get("obsno", "")
        if self.creds is not None and (q.get("AIOUSER"), q.get("AIOPWD")) != self.creds:
            return 401, None, None, None
        if obsid != self.obsid:
            if self.unknown == "text":
                return 200, b"<html>No data found</html>", None, "text/html"
            return 404, None, None, None
        if self.hostile is not None:
            return 200, self.hostile(obsid), f"GUEST{obsid}.tar", "application/x-tar"
        name, inst = q.get("name", ""), q.get("instname", "")
        files = sorted(p for p in self.src.iterdir()
                       if name.upper() in p.name.upper()
                       and (not inst or p.name.upper()[11:13] == inst.upper()))
        if not files:
            return 404, None, None, None
        if self.mode == "bare" and len(files) == 1:
            return 200, files[0].read_bytes(), files[0].name, "application/octet-stream"
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for f in files:
                tar.add(f, arcname=f"{obsid}/pps/{f.name}")
        return 200, buf.getvalue(), f"GUEST{obsid}.tar", "application/x-tar"


def _handler(state: FakeXSA):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output clean
            pass

        def _serve(self, head: bool):
            q = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
            with state.lock:
                state.hits.append(("HEAD" if head else "GET", q))
                failing = state.fail.pop(0) if state.fail else None
            if failing:
                self.send_error(failing)
                return
            if state.no_ctype:
                self.send_response(state.no_ctype)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status, body, fname, ctype = state.payload(q)
            if status != 200:
                self.send_error(status)
                return
            length = len(body)
            if not head:
                with state.lock:
                    slow_headers = state.slow_headers > 0
                    state.slow_headers -= slow_headers
                if slow_headers:
                    self._trickle_headers(body, fname, ctype)
                    return
                with state.lock:
                    if state.truncate:
                        state.truncate -= 1
                        body = body[: len(body) // 2]
                        length = len(body)
                    elif state.short:
                        state.short -= 1
                        body = body[: len(body) // 2]   # Content-Length still says full size
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            if fname:
                self.send_header("Content-Disposition", f'attachment; filename="{fname}"')
            self.send_header("Content-Length", str(length))
            self.end_headers()
            if head:
                return
            with state.lock:
                slow = state.trickle > 0
                state.trickle -= slow
            if not slow:
                self.wfile.write(body)
                return
            try:
                step = state.trickle_bytes
                for i in range(0, len(body), step):
                    self.wfile.write(body[i:i + step])
                    self.wfile.flush()
                    _real_sleep(0.02)
            except OSError:  # the client gave up
                pass

        def _trickle_headers(self, body, fname, ctype):
            head = (f"HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\n"
                    f'Content-Disposition: attachment; filename="{fname}"\r\n'
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
            self.close_connection = True
            try:
                for i in range(0, len(head), 4):
                    self.wfile.write(head[i:i + 4])
                    self.wfile.flush()
                    _real_sleep(0.02)
                self.wfile.write(body)
            except OSError:  # the client gave up
                pass

        def do_HEAD(self):
            self._serve(True)

        def do_GET(self):
            self._serve(False)

    return Handler


@pytest.fixture
def xsa(tmp_path_factory, monkeypatch, fake_pps):
    """A running fake archive serving a fake PPS of OBSID; astroquery points at it."""
    from astroquery.esa.xmm_newton import conf

    src = fake_pps(tmp_path_factory.mktemp("archive_src"), OBSID,
                   exposures=(("S003", 40000.0), ("U002", 1000.0)))
    state = FakeXSA(src)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    url = f"http://127.0.0.1:{server.server_address[1]}/nxsa-sl/servlet/data-action-aio?"
    try:
        with conf.set_temp("DATA_ACTION_AIO", url):
            yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def sleeps(monkeypatch):
    """Record back-off delays instead of sleeping."""
    calls = []
    monkeypatch.setattr(archive.time, "sleep", calls.append)
    return calls


def _leftovers(save_dir: Path):
    """Files and folders under save_dir (relative paths)."""
    return sorted(str(p.relative_to(save_dir)) for p in save_dir.rglob("*"))


# --------------------------------------------------------------------------------------------
# validate_obsid
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("good", ["0123456789", " 0884250101\n", "9999999999"])
def test_validate_obsid_accepts_ten_digits(good):
    assert validate_obsid(good) == good.strip()


@pytest.mark.parametrize("bad", ["012345678", "01234567890", "012345678a", "", "0123 45678",
                                 "../0123456", 123456789, None])
def test_validate_obsid_rejects(bad):
    with pytest.raises(UsageError) as err:
        validate_obsid(bad)
    assert err.value.exit_code == 2
    assert "10 digits" in str(err.value) and "\n" not in str(err.value)


def test_nine_digits_get_the_lost_zero_hint():
    with pytest.raises(UsageError, match="leading zero was probably lost.*write it as "
                                         "0852030101"):
        validate_obsid("852030101")


# --------------------------------------------------------------------------------------------
# find_pps_files
# --------------------------------------------------------------------------------------------
def test_find_picks_largest_ontime_and_its_fbktsr(tmp_path, fake_pps, caplog):
    folder = fake_pps(tmp_path / "pps", OBSID,
                      exposures=(("S001", 1000.0), ("U002", 52000.0), ("S003", 40000.0)))
    with caplog.at_level(logging.WARNING):
        found = find_pps_files(folder)
    assert isinstance(found, PPSFiles)
    assert found.expid == "U002" and found.ontime == 52000.0
    assert found.events.name == f"P{OBSID}PNU002PIEVLI0000.FTZ"
    assert found.fbktsr.name == f"P{OBSID}PNU002FBKTSR0000.FTZ"
    assert found.attitude.name.endswith("ATTTSR0000.FTZ")
    assert found.calind.name.endswith("CALIND0000.FTZ")
    assert found.obsid == OBSID and found.folder == folder
    assert found.submode == "PrimeFullWindow"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_find_ontime_falls_back_to_gti_tables(tmp_path, fake_pps):
    folder = fake_pps(tmp_path / "pps", OBSID, exposures=(("S003", 30000.0), ("S004", 31000.0)),
                      ontime_keyword=False)
    found = find_pps_files(folder, OBSID)
    assert found.expid == "S004"
    assert found.ontime == pytest.approx(31000.0)


def test_find_accepts_uncompressed_lower_case_and_pps_subfolder(tmp_path, fake_pps):
    folder = fake_pps(tmp_path / OBSID / "pps", OBSID, ext="fits")
    for p in list(folder.iterdir()):
        p.rename(p.with_name(p.name.lower()))
    found = find_pps_files(tmp_path / OBSID)    # the parent: descends into pps/
    assert found.events.name == f"p{OBSID}pns003pievli0000.fits"
    assert found.fbktsr is not None and found.expid == "S003"


def test_find_warns_for_untrained_submode(tmp_path, fake_pps, caplog):
    folder = fake_pps(tmp_path / "pps", OBSID, exposures=(("S003", 40000.0, "PrimeLargeWindow"),))
    with caplog.at_level(logging.WARNING, logger="xmm_enhance.archive"):
        found = find_pps_files(folder)
    assert found.submode == "PrimeLargeWindow"
    warn = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warn) == 1 and "PrimeLargeWindow" in warn[0] and OBSID in warn[0]


def test_find_missing_and_empty_folder(tmp_path):
    with pytest.raises(PPSError, match="does not exist"):
        find_pps_files(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hello")
    with pytest.raises(PPSError, match="no PPS files") as err:
        find_pps_files(tmp_path / "empty")
    assert err.value.exit_code == 1


def test_find_without_event_list(tmp_path, fake_pps):
    folder = fake_pps(tmp_path / "pps", OBSID)
    (folder / f"P{OBSID}PNS003PIEVLI0000.FTZ").unlink()
    with pytest.raises(PPSError, match="PIEVLI") as err:
        find_pps_files(folder)
    assert OBSID in str(err.value)


def test_find_timing_only_says_so(tmp_path, fake_pps):
    folder = fake_pps(tmp_path / "pps", OBSID)
    ev = folder / f"P{OBSID}PNS003PIEVLI0000.FTZ"
    ev.rename(folder / f"P{OBSID}PNS003TIEVLI0000.FTZ")
    with pytest.raises(PPSError, match="timing"):
        find_pps_files(folder)


def test_find_without_fbktsr_names_the_exposure(tmp_path, fake_pps, caplog):
    # FBKTSR only for the short exposure: it is the one that can be imaged, and the warning
    # names the longer one's missing file
    folder = fake_pps(tmp_path / "pps", OBSID, exposures=(("S001", 2000.0), ("U002", 45000.0)),
                      with_fbktsr={"S001"})
    with caplog.at_level(logging.WARNING, logger="xmm_enhance.archive"):
        found = find_pps_files(folder)
    assert found.expid == "S001" and found.others == ("U002",)
    warn = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warn) == 1 and f"P{OBSID}PNU002FBKTSR0000.FTZ" in warn[0] and "S001" in warn[0]
    # no exposure with one: an error naming the best exposure's missing file
    (folder / f"P{OBSID}PNS001FBKTSR0000.FTZ").unlink()
    with pytest.raises(PPSError) as err:
        find_pps_files(folder)
    msg = str(err.value)
    assert "FBKTSR" in msg and "U002" in msg and "\n" not in msg


def test_find_prefers_a_full_frame_exposure_and_lists_the_others(tmp_path, fake_pps, caplog):
    folder = fake_pps(tmp_path / "pps", OBSID,
                      exposures=(("S003", 60000.0, "PrimeSmallWindow"), ("U002", 30000.0),
                                 ("U004", 1000.0)))
    with caplog.at_level(logging.WARNING, logger="xmm_enhance.archive"):
        found = find_pps_files(folder)
    assert found.expid == "U002" and found.submode == "PrimeFullWindow"
    assert found.others == ("U004", "S003")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    # what make_image moves on to when an exposure has no good time
    assert find_pps_files(folder, exclude=["U002"]).expid == "U004"
    assert find_pps_files(folder, exclude=["U002", "U004"]).expid == "S003"
    with pytest.raises(PPSError, match="no other pn imaging exposure"):
        find_pps_files(folder, exclude=["U002", "U004", "S003"])


@pytest.mark.parametrize("layout", ["OBSID/PPS", "parent of OBSID/PPS", "parent of OBSID/pps",
                                    "parent of OBSID"])
def test_find_heasarc_layout_and_a_parent_folder(tmp_path, fake_pps, layout):
    sub = {"OBSID/PPS": "PPS", "parent of OBSID/PPS": "PPS", "parent of OBSID/pps": "pps",
           "parent of OBSID": ""}[layout]
    folder = fake_pps(tmp_path / OBSID / sub if sub else tmp_path / OBSID, OBSID)
    (tmp_path / OBSID / "ODF").mkdir(exist_ok=True)
    given = tmp_path / OBSID if layout == "OBSID/PPS" else tmp_path
    found = find_pps_files(given, OBSID)
    assert found.folder == folder and found.expid == "S003"


def test_find_in_an_unreadable_folder_or_file_says_permission(tmp_path, fake_pps, monkeypatch):
    folder = fake_pps(tmp_path / "pps", OBSID)
    real = Path.iterdir

    def denied(self):
        if self == folder:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "iterdir", denied)
    with pytest.raises(PPSError) as err:
        find_pps_files(folder)
    assert "permission denied" in str(err.value) and "chmod" in str(err.value)
    monkeypatch.setattr(Path, "iterdir", real)
    from astropy.io import fits as afits
    real_open = afits.open

    def no_read(name, *a, **k):
        if str(name).endswith("FBKTSR0000.FTZ"):
            raise PermissionError(13, "Permission denied", str(name))
        return real_open(name, *a, **k)

    monkeypatch.setattr(afits, "open", no_read)
    with pytest.raises(PPSError) as err:
        find_pps_files(folder)
    assert "permission denied" in str(err.value) and "corrupt" not in str(err.value)


def test_find_ignores_an_unreadable_optional_file(tmp_path, fake_pps, caplog):
    folder = fake_pps(tmp_path / "pps", OBSID)
    att = next(folder.glob("*ATTTSR*"))
    att.write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="xmm_enhance.archive"):
        found = find_pps_files(folder)
    assert found.attitude is None and found.calind is not None
    assert any(att.name in r.getMessage() and "ignored" in r.getMessage()
               for r in caplog.records)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_find_corrupt_ftz(tmp_path, fake_pps, damage):
    folder = fake_pps(tmp_path / "pps", OBSID)
    ev = folder / f"P{OBSID}PNS003PIEVLI0000.FTZ"
    data = ev.read_bytes()
    ev.write_bytes(b"\x1f\x8b\x08\x00garbage" * 10 if damage == "garbage" else data[:60])
    with pytest.raises(PPSError) as err:
        find_pps_files(folder)
    msg = str(err.value)
    assert ev.name in msg and "replace it with an intact copy" in msg


def test_find_names_a_doubly_gzipped_file_and_a_cut_fbktsr(tmp_path, fake_pps):
    import gzip as gz

    folder = fake_pps(tmp_path / "pps", OBSID)
    ev = folder / f"P{OBSID}PNS003PIEVLI0000.FTZ"
    twice = folder / (ev.name + ".gz")
    twice.write_bytes(gz.compress(ev.read_bytes()))       # the .FTZ gzipped once more
    ev.unlink()
    with pytest.raises(PPSError) as err:
        find_pps_files(folder)
    assert twice.name in str(err.value) and "compressed twice" in str(err.value)
    assert "gunzip" in str(err.value)
    # an FBKTSR cut before its RATE table: "truncated", not "has no RATE extension"
    folder = fake_pps(tmp_path / "pps2", OBSID)
    fbk = folder / f"P{OBSID}PNS003FBKTSR0000.FTZ"
    raw = gz.decompress(fbk.read_bytes())
    fbk.write_bytes(gz.compress(raw)[: len(gz.compress(raw[:2880 * 2]))])
    with pytest.raises(PPSError) as err:
        find_pps_files(folder)
    assert "gzip stream ends early" in str(err.value) and "no RATE extension" not in str(err.value)


def test_find_obsid_mismatch_and_mixed_folders(tmp_path, fake_pps):
    folder = fake_pps(tmp_path / "pps", OBSID)
    with pytest.raises(PPSError, match=OBSID):
        find_pps_files(folder, "0999999999")
    fake_pps(folder, "0888888888")
    with pytest.raises(PPSError, match="several OBS_IDs"):
        find_pps_files(folder)
    assert find_pps_files(folder, "0888888888").obsid == "0888888888"
    with pytest.raises(UsageError):
        find_pps_files(folder, "12345")


# --------------------------------------------------------------------------------------------
# download_pps against the local archive
# --------------------------------------------------------------------------------------------
def _expected_names():
    return {f"P{OBSID}PNS003PIEVLI0000.FTZ", f"P{OBSID}PNU002PIEVLI0000.FTZ",
            f"P{OBSID}PNS003FBKTSR0000.FTZ", f"P{OBSID}PNU002FBKTSR0000.FTZ",
            f"P{OBSID}OBX000ATTTSR0000.FTZ", f"P{OBSID}OBX000CALIND0000.FTZ"}


def test_download_tar_flattens_and_asks_only_for_pn_products(xsa, tmp_path, sleeps, capsys):
    save = tmp_path / "save"
    pps = download_pps(OBSID, save, backoff_s=0.01)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""              # no progress bars or prints
    assert pps == save / OBSID / "pps"
    names = {p.name for p in pps.iterdir()}
    assert names == _expected_names() | {MARKER_NAME}
    # byte-identical to what the archive holds
    for n in _expected_names():
        assert (pps / n).read_bytes() == (xsa.src / n).read_bytes()
    # only the staging-free result is left
    assert _leftovers(save) == sorted([OBSID, f"{OBSID}/pps"]
                                      + [f"{OBSID}/pps/{n}" for n in names])
    queries = xsa.gets()
    assert [q["name"] for q in queries] == ["PIEVLI", "FBKTSR", "ATTTSR", "CALIND"]
    assert all(q["level"] == "PPS" and q["extension"] == "FTZ" and q["obsno"] == OBSID
               for q in queries)
    assert [q.get("instname") for q in queries] == ["PN", "PN", None, None]
    assert sleeps == []
    found = find_pps_files(pps, OBSID)
    assert found.expid == "S003" and found.ontime == 40000.0


def test_download_bare_files(xsa, tmp_path):
    xsa.mode = "bare"
    # one exposure only, so every request matches a single file
    for n in (f"P{OBSID}PNU002PIEVLI0000.FTZ", f"P{OBSID}PNU002FBKTSR0000.FTZ"):
        (xsa.src / n).unlink()
    pps = download_pps(OBSID, tmp_path, backoff_s=0.01)
    assert {p.name for p in pps.iterdir()} == {
        f"P{OBSID}PNS003PIEVLI0000.FTZ", f"P{OBSID}PNS003FBKTSR0000.FTZ",
        f"P{OBSID}OBX000ATTTSR0000.FTZ", f"P{OBSID}OBX000CALIND0000.FTZ", MARKER_NAME}
    assert find_pps_files(pps).fbktsr.read_bytes() == \
        (xsa.src / f"P{OBSID}PNS003FBKTSR0000.FTZ").read_bytes()


def test_download_retries_503_twice_then_succeeds(xsa, tmp_path, sleeps):
    xsa.fail = [503, 503]
    pps = download_pps(OBSID, tmp_path, retries=3, backoff_s=0.01)
    assert {p.name for p in pps.iterdir()} == _expected_names() | {MARKER_NAME}
    assert sleeps == pytest.approx([0.01, 0.02])       # exponential back-off
    assert len(xsa.gets()) == 4                         # one successful GET per product


def test_download_retries_429_too_many_requests(xsa, tmp_path, sleeps):
    xsa.fail = [429, 429]                               # the archive asks us to slow down
    pps = download_pps(OBSID, tmp_path, retries=3, backoff_s=0.01)
    assert {p.name for p in pps.iterdir()} == _expected_names() | {MARKER_NAME}
    assert sleeps == pytest.approx([0.01, 0.02])
    assert len(xsa.gets()) == 4


def test_download_back_off_doubles_at_each_retry(xsa, tmp_path, sleeps):
    xsa.fail = [503, 503, 503]
    pps = download_pps(OBSID, tmp_path, retries=3, backoff_s=0.01)
    assert {p.name for p in pps.iterdir()} == _expected_names() | {MARKER_NAME}
    assert sleeps == pytest.approx([0.01, 0.02, 0.04])  # not 0.03: exponential, not linear
    assert len(xsa.gets()) == 4


def test_download_gives_up_after_retries(xsa, tmp_path, sleeps):
    xsa.fail = [503] * 20
    with pytest.raises(ArchiveError) as err:
        download_pps(OBSID, tmp_path, retries=2, backoff_s=0.01)
    msg = str(err.value)
    assert OBSID in msg and "3 attempts" in msg and "503" in msg
    assert sleeps == pytest.approx([0.01, 0.02])
    assert len(xsa.hits) == 3
    assert _leftovers(tmp_path) == []                    # no pps, no staging, no OBS_ID folder


def test_a_trickling_download_is_abandoned_and_retried(xsa, tmp_path, sleeps, monkeypatch):
    """A server that sends 64 bytes every 20 ms (3 kB/s) never trips the read time-out; with
    a floor of 100 kB per 0.3 s the first answer is abandoned as stalled and the retry,
    served at full speed, completes."""
    monkeypatch.setattr(archive, "STALL_WINDOW_S", 0.3)
    monkeypatch.setattr(archive, "STALL_MIN_BYTES", 100_000)
    xsa.trickle = 1
    t0 = time.monotonic()
    pps = download_pps(OBSID, tmp_path, retries=1, backoff_s=0.01)
    assert time.monotonic() - t0 < 30
    assert {p.name for p in pps.iterdir()} == _expected_names() | {MARKER_NAME}
    for n in _expected_names():
        assert (pps / n).read_bytes() == (xsa.src / n).read_bytes()
    assert len(sleeps) == 1                      # one retry after the stalled attempt


def test_trickled_reply_headers_are_abandoned_and_retried(xsa, tmp_path, sleeps, monkeypatch):
    """A server that sends its status line and headers 4 bytes per 20 ms (~2 s for them all)
    never trips the read time-out; with a 0.3 s window the first answer is abandoned as
    stalled, and the retry, served at full speed, completes with the archive's bytes."""
    monkeypatch.setattr(archive, "STALL_WINDOW_S", 0.3)
    xsa.slow_headers = 1
    t0 = time.monotonic()
    pps = download_pps(OBSID, tmp_path, retries=1, backoff_s=0.01)
    assert time.monotonic() - t0 < 1.5        # did not wait for the ~2 s of headers
    assert len(sleeps) == 1                    # one retry after the stalled attempt
    for n in _expected_names():
        assert (pps / n).read_bytes() == (xsa.src / n).read_bytes()


def test_the_header_deadline_holds_behind_an_http_proxy(tmp_path):
    """requests builds a ProxyManager of its own when HTTP(S)_PROXY is set: the deadline's
    connection classes were only on the direct pool manager."""
    client = archive._make_client(tmp_path)
    adapter = client._session.get_adapter("https://nxsa.esac.esa.int/")
    for proxy in ("http://proxy.example:3128", "https://proxy.example:3129"):
        manager = adapter.proxy_manager_for(proxy)
        for scheme in ("http", "https"):
            conn = manager.pool_classes_by_scheme[scheme].ConnectionCls
            assert conn.getresponse.__qualname__.startswith(
                "_header_deadline_pools"), (proxy, scheme)
    client._session.close()


def test_always_trickled_reply_headers_fail_with_one_line(xsa, tmp_path, sleeps, monkeypatch):
    monkeypatch.setattr(archive, "STALL_WINDOW_S", 0.3)
    xsa.slow_headers = 100
    with pytest.raises(ArchiveError) as err:
        download_pps(OBSID, tmp_path, retries=1, backoff_s=0.01)
    msg = str(err.value)
    assert "\n" not in msg and "2 attempts" in msg and "headers were incomplete after 0.3 s" in msg
    assert err.value.unanswered  # counts towards the batch's archive give-up
    assert _leftovers(tmp_path) == []


def test_slow_reply_headers_within_the_window_are_kept(xsa, tmp_path, sleeps, monkeypatch):
    monkeypatch.setattr(archive, "STALL_WINDOW_S", 20.0)   # ~2 s of headers fit
    xsa.slow_headers = 1
    pps = download_pps(OBSID, tmp_path, retries=0, backoff_s=0.01)
    assert {p.name for p in pps.iterdir()} == _expected_names() | {MARKER_NAME}
    assert sleeps == []


def test_progress_reader_reads_whole_blocks_and_ignores_the_pace_of_the_end(monkeypatch):
    """``readinto`` fills its buffer unless the stream ends (http.client's chunked reads take
    a short read for truncation), and the empty read at the end is no stall."""
    class Slow(io.BytesIO):
        def read1(self, n=-1):
            return super().read1(min(n if n >= 0 else 10**9, 7))

    class Client:
        stalled = None

    monkeypatch.setattr(archive, "STALL_WINDOW_S", 0.0)    # any read after the first trips
    monkeypatch.setattr(archive, "STALL_MIN_BYTES", 1)
    r = archive._ProgressReader(Slow(b"x" * 100), Client())
    buf = bytearray(40)
    assert r.readinto(buf) == 40 and bytes(buf) == b"x" * 40
    assert r.read() == b"x" * 60 and r.read(5) == b""      # the end: no TimeoutError
    monkeypatch.setattr(archive, "STALL_MIN_BYTES", 10**6)
    r = archive._ProgressReader(Slow(b"x" * 100), Client())
    with pytest.raises(TimeoutError, match="stalled"):
        r.read(50)


def test_a_download_that_always_trickles_fails_with_one_line(xsa, tmp_path, sleeps,
                                                             monkeypatch):
    monkeypatch.setattr(archive, "STALL_WINDOW_S", 0.3)
    monkeypatch.setattr(archive, "STALL_MIN_BYTES", 100_000)
    xsa.trickle = 100
    with pytest.raises(ArchiveError) as err:
        download_pps(OBSID, tmp_path, retries=1, backoff_s=0.01)
    msg = str(err.value)
    assert "\n" not in msg and "2 attempts" in msg and "stalled" in msg and "KiB" in msg
    assert err.value.unanswered  # counts towards the batch's archive give-up
    assert _leftovers(tmp_path) == []


def test_a_slow_but_steady_download_is_kept(xsa, tmp_path, sleeps, monkeypatch):
    monkeypatch.setattr(archive, "STALL_WINDOW_S", 0.3)
    monkeypatch.setattr(archive, "STALL_MIN_BYTES", 20_000)  # it sends ~60 kB per 0.3 s
    xsa.trickle, xsa.trickle_bytes = 100, 4096
    pps = download_pps(OBSID, tmp_path, retries=0, backoff_s=0.01)
    assert {p.name for p in pps.iterdir()} == _expected_names() | {MARKER_NAME}
    assert sleeps == []


@pytest.mark.parametrize("how", ["truncate", "short"])
def test_download_truncated_then_ok(xsa, tmp_path, sleeps, how):
    setattr(xsa, how, 1)
    pps = download_pps(OBSID, tmp_path, backoff_s=0.01)
    assert {p.name for p in pps.iterdir()} == _expected_names() | {MARKER_NAME}
    assert len(sleeps) == 1
    for n in _expected_names():
        assert (pps / n).read_bytes() == (xsa.src / n).read_bytes()
    assert not [p for p in (tmp_path / OBSID).iterdir() if p.name != "pps"]


def test_download_always_truncated_leaves_nothing(xsa, tmp_path, sleeps):
    xsa.truncate = 100
    with pytest.raises(ArchiveError, match="2 attempts") as err:
        download_pps(OBSID, tmp_path, retries=1, backoff_s=0.01)
    assert "PIEVLI" in str(err.value)
    assert _leftovers(tmp_path) == []


def test_download_keeps_existing_folder_untouched_on_failure(xsa, tmp_path, sleeps):
    old = tmp_path / OBSID / "pps"
    old.mkdir(parents=True)
    (old / "keep.txt").write_text("mine")
    xsa.truncate = 100
    with pytest.raises(ArchiveError):
        download_pps(OBSID, tmp_path, retries=1, backoff_s=0.01)
    assert _leftovers(tmp_path) == [OBSID, f"{OBSID}/pps", f"{OBSID}/pps/keep.txt"]


@pytest.mark.parametrize("answer", [404, "text"])
def test_download_unknown_obsid_is_quick_error(xsa, tmp_path, sleeps, answer):
    xsa.unknown = answer
    t0 = time.monotonic()
    with pytest.raises(ArchiveError) as err:
        download_pps("0999999999", tmp_path, retries=5, backoff_s=10.0)
    assert time.monotonic() - t0 < 5.0
    msg = str(err.value)
    assert "0999999999" in msg and "\n" not in msg
    assert ("404" in msg) if answer == 404 else ("no file" in msg)
    assert sleeps == [] and len(xsa.hits) == 1          # no retry
    assert _leftovers(tmp_path) == []


def test_download_missing_optional_products_is_fine(xsa, tmp_path, sleeps, caplog):
    for n in (f"P{OBSID}OBX000ATTTSR0000.FTZ", f"P{OBSID}OBX000CALIND0000.FTZ"):
        (xsa.src / n).unlink()
    with caplog.at_level(logging.WARNING, logger="xmm_enhance.archive"):
        pps = download_pps(OBSID, tmp_path, backoff_s=0.01)
    assert sum("ATTTSR" in r.getMessage() or "CALIND" in r.getMessage()
               for r in caplog.records) == 2
    found = find_pps_files(pps)
    assert found.attitude is None and found.calind is None
    n_hits = len(xsa.hits)
    download_pps(OBSID, tmp_path, backoff_s=0.01)       # the marker makes it reusable
    assert len(xsa.hits) == n_hits


def test_download_missing_fbktsr_is_an_error(xsa, tmp_path, sleeps):
    for p in list(xsa.src.glob("*FBKTSR*")):
        p.unlink()
    with pytest.raises(ArchiveError, match="FBKTSR"):
        download_pps(OBSID, tmp_path, backoff_s=0.01)
    assert sleeps == [] and _leftovers(tmp_path) == []


def _tar_with(member: tarfile.TarInfo, data: bytes | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        ok = tarfile.TarInfo(f"{OBSID}/pps/README.txt")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"hi"))
        tar.addfile(member, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "hardlink"])
def test_download_refuses_escaping_tar(xsa, tmp_path, sleeps, kind):
    outside = tmp_path / "outside"
    outside.mkdir()
    if kind == "dotdot":
        m = tarfile.TarInfo(f"{OBSID}/pps/../../../../outside/evil.txt")
    elif kind == "absolute":
        m = tarfile.TarInfo(str(outside / "evil.txt"))
    elif kind == "symlink":
        m = tarfile.TarInfo(f"{OBSID}/pps/P{OBSID}PNS003PIEVLI0000.FTZ")
        m.type, m.linkname = tarfile.SYMTYPE, str(outside / "evil.txt")
    else:
        m = tarfile.TarInfo(f"{OBSID}/pps/P{OBSID}PNS003PIEVLI0000.FTZ")
        m.type, m.linkname = tarfile.LNKTYPE, "../../../outside/evil.txt"
    data = None
    if m.isfile():
        data = b"evil"
        m.size = len(data)
    xsa.hostile = lambda obsid: _tar_with(m, data)
    save = tmp_path / "save"
    with pytest.raises(ArchiveError, match="unsafe") as err:
        download_pps(OBSID, save, backoff_s=0.01)
    assert OBSID in str(err.value)
    assert list(outside.iterdir()) == []
    assert not list(tmp_path.rglob("evil.txt"))
    assert _leftovers(save) == []
    assert sleeps == []                                 # refused at once, not retried


def test_download_reuses_complete_folder(xsa, tmp_path):
    pps = download_pps(OBSID, tmp_path, backoff_s=0.01)
    n_hits = len(xsa.hits)
    assert pps_folder_is_complete(pps, OBSID)
    mtimes = {p.name: p.stat().st_mtime_ns for p in pps.iterdir()}
    assert download_pps(OBSID, tmp_path, backoff_s=0.01) == pps
    assert len(xsa.hits) == n_hits                      # server not contacted again
    assert {p.name: p.stat().st_mtime_ns for p in pps.iterdir()} == mtimes
    # a file that went missing makes the folder incomplete: downloaded again
    (pps / f"P{OBSID}PNS003FBKTSR0000.FTZ").unlink()
    assert not pps_folder_is_complete(pps, OBSID)
    download_pps(OBSID, tmp_path, backoff_s=0.01)
    assert len(xsa.hits) > n_hits and pps_folder_is_complete(pps, OBSID)


def test_download_removes_stale_staging_folder(xsa, tmp_path):
    stale = tmp_path / OBSID / ".pps-download-old"
    stale.mkdir(parents=True)
    (stale / "junk").write_bytes(b"x")
    fresh = tmp_path / OBSID / ".pps-download-running"
    fresh.mkdir()
    old = time.time() - 3 * 86400
    os.utime(stale / "junk", (old, old))                # nothing in it written for days
    os.utime(stale, (old, old))
    dead = __import__("subprocess").Popen(["true"])
    dead.wait()
    from xmm_enhance.fsmode import _HOST
    killed = tmp_path / OBSID / f".pps-download-{dead.pid}-{_HOST}-x1y2"   # its writer is gone
    killed.mkdir()
    download_pps(OBSID, tmp_path, backoff_s=0.01)
    # a recent one whose writer is unknown may be a live download on another node
    assert not stale.exists() and not killed.exists() and fresh.exists()


def test_download_reuses_folder_made_elsewhere(xsa, tmp_path, fake_pps):
    fake_pps(tmp_path / OBSID / "pps", OBSID)           # e.g. copied by hand, no marker
    xsa.fail = [500] * 50                                # any request would fail
    pps = download_pps(OBSID, tmp_path, retries=0, backoff_s=0.01)
    assert pps == tmp_path / OBSID / "pps" and xsa.hits == []


def _credentials(tmp_path, user="alice_the_observer", password="s3cr3t-Pa55word"):
    f = tmp_path / "creds.ini"
    f.write_text(f"[xmm_newton]\nusername = {user}\npassword = {password}\n")
    return f, user, password


def _everything_said(err, caplog, capsys):
    text = caplog.text + "".join(r.getMessage() for r in caplog.records)
    out = capsys.readouterr()
    text += out.out + out.err
    if err is not None:
        text += str(err.value) + "".join(traceback.format_exception(err.value))
    return text


def test_credentials_are_sent_but_never_shown(xsa, tmp_path, caplog, capsys):
    cred, user, password = _credentials(tmp_path)
    xsa.creds = (user, password)
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="astroquery")
    pps = download_pps(OBSID, tmp_path / "save", credentials_file=cred, backoff_s=0.01)
    assert find_pps_files(pps).expid == "S003"
    assert all(q.get("AIOUSER") == user for _, q in xsa.hits)   # they did reach the archive
    said = _everything_said(None, caplog, capsys)
    assert OBSID in said                                         # logging did happen
    assert user not in said and password not in said


@pytest.mark.parametrize("failure", ["wrong", "503"])
def test_credentials_absent_from_errors(xsa, tmp_path, caplog, capsys, sleeps, failure):
    cred, user, password = _credentials(tmp_path)
    xsa.creds = (user, "another-password") if failure == "wrong" else (user, password)
    if failure == "503":
        xsa.fail = [503] * 10
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="astroquery")
    with pytest.raises(ArchiveError) as err:
        download_pps(OBSID, tmp_path / "save", credentials_file=cred, retries=1,
                     backoff_s=0.01)
    if failure == "wrong":
        assert "credentials" in str(err.value) and len(xsa.hits) == 1   # not retried
    said = _everything_said(err, caplog, capsys)
    assert user not in said and password not in said
    assert _leftovers(tmp_path / "save") == []


def test_reply_without_content_type_is_not_called_a_credentials_problem(xsa, tmp_path, sleeps):
    # astroquery raises LoginError("Incorrect credentials") for any reply without a
    # Content-Type: a wrong archive URL, not the user's credentials (there are none here)
    xsa.no_ctype = 404
    with pytest.raises(ArchiveError) as err:
        download_pps(OBSID, tmp_path / "save", retries=2, backoff_s=0.01)
    msg = str(err.value)
    assert "not an archive file" in msg and "archive URL" in msg
    assert "refused the credentials" not in msg
    assert len(xsa.hits) == 1 and sleeps == []     # permanent: not retried
    assert _leftovers(tmp_path / "save") == []


def test_bad_credentials_file_is_usage_error(xsa, tmp_path):
    with pytest.raises(UsageError, match="not found"):
        download_pps(OBSID, tmp_path, credentials_file=tmp_path / "none.ini")
    bad = tmp_path / "bad.ini"
    bad.write_text("[other]\nusername = x\n")
    with pytest.raises(UsageError, match=r"\[xmm_newton\]"):
        download_pps(OBSID, tmp_path, credentials_file=bad)
    assert xsa.hits == []


def test_download_validates_obsid_before_network(xsa, tmp_path):
    with pytest.raises(UsageError):
        download_pps("12345", tmp_path)
    assert xsa.hits == [] and not os.listdir(tmp_path)


@pytest.fixture
def refused_port(monkeypatch):
    """astroquery pointed at a 127.0.0.1 port nobody listens on; yields the port."""
    import socket

    from astroquery.esa.xmm_newton import conf

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with conf.set_temp("DATA_ACTION_AIO", f"http://127.0.0.1:{port}/data-action-aio?"):
        yield port


def test_download_connection_refused_is_retried(tmp_path, sleeps, refused_port):
    with pytest.raises(ArchiveError) as err:
        download_pps(OBSID, tmp_path, retries=2, backoff_s=0.01)
    assert "3 attempts" in str(err.value) and "Connection" in str(err.value)
    assert len(str(err.value)) < 400 and "\n" not in str(err.value)
    assert sleeps == pytest.approx([0.01, 0.02]) and _leftovers(tmp_path) == []


def test_download_of_simulated_pps_round_trip(tmp_path_factory, tmp_path, monkeypatch):
    """The simulator's PPS folder, served as an XSA tar, comes back byte-identical."""
    pps_sim = pytest.importorskip("xmm_enhance.simulate.pps")
    from astroquery.esa.xmm_newton import conf

    src = tmp_path_factory.mktemp("sim_src")
    pps_sim.write_pps(src, OBSID, n_events=20000, seed=3)
    state = FakeXSA(src)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    url = f"http://127.0.0.1:{server.server_address[1]}/nxsa-sl/servlet/data-action-aio?"
    try:
        with conf.set_temp("DATA_ACTION_AIO", url):
            pps = download_pps(OBSID, tmp_path, backoff_s=0.01)
    finally:
        server.shutdown()
        server.server_close()
    got, want = find_pps_files(pps), find_pps_files(src)
    assert (got.expid, got.ontime, got.submode) == (want.expid, want.ontime, want.submode)
    for a, b in ((got.events, want.events), (got.fbktsr, want.fbktsr),
                 (got.attitude, want.attitude), (got.calind, want.calind)):
        assert a.name == b.name and a.read_bytes() == b.read_bytes()


# --------------------------------------------------------------------------------------------
# A mirror URL (--archive-url): joined as astroquery needs it, named in the errors it may cause
# --------------------------------------------------------------------------------------------
def test_archive_url_gets_its_question_mark(xsa, tmp_path):
    from astroquery.esa.xmm_newton import conf

    from xmm_enhance.batch import _archive_url

    assert archive.aio_url("http://h/data-action-aio") == "http://h/data-action-aio?"
    assert archive.aio_url(" http://h/x?site=2 ") == "http://h/x?site=2&"
    for url in ("http://h/x?", "http://h/x?site=2&"):
        assert archive.aio_url(url) == url
    bare = conf.DATA_ACTION_AIO.rstrip("?")              # as a user types it
    with _archive_url(bare):
        assert conf.DATA_ACTION_AIO == bare + "?"
    with conf.set_temp("DATA_ACTION_AIO", bare):        # set directly (the Python API)
        pps = download_pps(OBSID, tmp_path, backoff_s=0.01)
    assert {p.name for p in pps.iterdir()} == _expected_names() | {MARKER_NAME}
    assert all(q.get("obsno") == OBSID for _, q in xsa.hits)


@pytest.mark.parametrize("answer", [404, "text"])
def test_errors_name_a_mirror_url_as_a_suspect(xsa, tmp_path, sleeps, monkeypatch, answer):
    from astroquery.esa.xmm_newton import conf

    xsa.unknown = answer
    with pytest.raises(ArchiveError) as err:
        download_pps("0999999999", tmp_path, retries=1, backoff_s=0.01)
    msg = str(err.value)
    assert conf.DATA_ACTION_AIO in msg and "--archive-url" in msg and "0999999999" in msg
    assert ("HTTP 404" in msg) if answer == 404 else ("sent no file" in msg)
    # with astroquery's own archive URL the OBS_ID alone is the suspect, as before
    monkeypatch.setattr(archive, "_archive_url", lambda: (conf.DATA_ACTION_AIO, False))
    with pytest.raises(ArchiveError) as err:
        download_pps("0999999999", tmp_path, retries=1, backoff_s=0.01)
    msg = str(err.value)
    assert "--archive-url" not in msg and conf.DATA_ACTION_AIO not in msg
    assert ("not found in the XMM archive (HTTP 404)" in msg if answer == 404
            else "the XMM archive sent no file" in msg)


def test_connection_error_shows_its_root_cause(tmp_path, sleeps, refused_port):
    port = refused_port
    with pytest.raises(ArchiveError) as err:
        download_pps(OBSID, tmp_path, retries=0)
    msg = str(err.value)
    assert msg.startswith(f"OBS_ID {OBSID} PN PIEVLI: download failed after 1 attempt (")
    assert f"cannot reach 127.0.0.1:{port} (ConnectionError: Connection refused)" in msg
    assert msg.count(OBSID) == 1 and "..." not in msg and len(msg) < 250
    assert sleeps == [] and _leftovers(tmp_path) == []


def test_failed_download_leaves_no_empty_save_dir(xsa, tmp_path, sleeps):
    """make_detxy_pn_image_pps.py with a --save_dir that did not exist and an unknown OBS_ID:
    the error, and no empty folders left (an existing --save_dir stays)."""
    from xmm_enhance.pipeline import make_image

    xsa.unknown = 404
    save = tmp_path / "new" / "save"
    with pytest.raises(ArchiveError):
        make_image("0999999999", save_dir=save, backend="native")
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()
    with pytest.raises(ArchiveError):
        make_image("0999999999", save_dir=tmp_path / "kept", backend="native")
    assert (tmp_path / "kept").is_dir()


def test_credentials_with_a_percent_sign_are_refused_without_showing_them(tmp_path, caplog,
                                                                          capsys):
    """astroquery reads the file with ConfigParser's '%' interpolation: a lone '%' failed in
    it with part of the password in the message (and in batch reports)."""
    from xmm_enhance.archive import _read_credentials

    cred, _, password = _credentials(tmp_path, password="Tr0ub4dor%horse-battery")
    with pytest.raises(UsageError) as err:
        _read_credentials(cred)
    assert "'%%'" in str(err.value) and "horse" not in _everything_said(err, caplog, capsys)
    cred.write_text("[xmm_newton]\nusername = alice\npassword = Tr0ub4dor%%horse\n")
    assert _read_credentials(cred) == ("alice", "Tr0ub4dor%horse")


def _serving_extra_member(xsa, name: str, data: bytes, when=lambda: True) -> None:
    """Make ``xsa`` add a member ``<obsid>/pps/<name>`` holding ``data`` to its PIEVLI tars
    (while ``when()`` says so)."""
    real = xsa.payload

    def payload(q):
        status, body, fname, ctype = real(q)
        if q.get("name", "").upper() == "PIEVLI" and body and when():
            buf = io.BytesIO()
            with tarfile.open(fileobj=io.BytesIO(body)) as src, \
                    tarfile.open(fileobj=buf, mode="w") as tar:
                for m in src.getmembers():
                    tar.addfile(m, src.extractfile(m))
                extra = tarfile.TarInfo(f"{OBSID}/pps/{name}")
                extra.size = len(data)
                tar.addfile(extra, io.BytesIO(data))
            return status, buf.getvalue(), fname, ctype
        return status, body, fname, ctype

    xsa.payload = payload


def _pievli_gets(xsa) -> int:
    return len([g for g in xsa.gets() if g.get("name", "").upper() == "PIEVLI"])


def test_a_failed_attempts_files_do_not_spoil_the_retry(xsa, tmp_path, sleeps):
    """The first answer holds a junk copy of a pn file beside the asked one; the retry is
    clean. The junk was left in the staging folder and failed the whole download."""
    junk = f"P{OBSID}PNU009PIEVLI0000.FTZ"
    _serving_extra_member(xsa, junk, b"not a fits", when=lambda: _pievli_gets(xsa) == 1)
    pps = download_pps(OBSID, tmp_path, retries=2, backoff_s=0.01)
    assert _pievli_gets(xsa) == 2 and not (pps / junk).exists()
    assert find_pps_files(pps).events.name == f"P{OBSID}PNS003PIEVLI0000.FTZ"


def test_a_damaged_file_that_was_not_asked_for_is_dropped(xsa, tmp_path, sleeps, caplog):
    _serving_extra_member(xsa, f"P{OBSID}M1S001MIEVLI0000.FTZ", b"garbage")
    with caplog.at_level(logging.WARNING):
        pps = download_pps(OBSID, tmp_path, retries=3, backoff_s=0.01)
    assert sleeps == []                                  # no retry for it
    assert any("MIEVLI" in r.getMessage() and "dropped" in r.getMessage()
               for r in caplog.records)
    assert find_pps_files(pps).events.name == f"P{OBSID}PNS003PIEVLI0000.FTZ"


def test_make_detxy_takes_an_archive_url(xsa, tmp_path, sleeps, capsys):
    """make_detxy_pn_image_pps.py --archive-url (as xmm-enhance batch has it): a mirror, its
    missing '?' added; a URL that is not http(s) is a usage error."""
    from astroquery.esa.xmm_newton import conf

    from xmm_enhance.cli.make_image import main as make_main

    mirror = conf.DATA_ACTION_AIO.rstrip("?")
    with conf.set_temp("DATA_ACTION_AIO", "http://127.0.0.1:9/nowhere?"):   # the default: dead
        make_main([OBSID, "--save_dir", str(tmp_path), "--archive-url", mirror, "-q"])
        assert conf.DATA_ACTION_AIO == "http://127.0.0.1:9/nowhere?"     # put back
    # the download came from the mirror (the fake archive's event list is too bare for an
    # image: that step's own error follows)
    assert (tmp_path / OBSID / "pps" / MARKER_NAME).is_file()
    assert xsa.gets()
    err = capsys.readouterr().err
    assert "127.0.0.1:9" not in err and "cannot reach" not in err
    assert make_main([OBSID, "--save_dir", str(tmp_path), "--archive-url", "ftp://x"]) == 2
    assert "not an http(s) URL" in capsys.readouterr().err


def _second_download_waits(tmp_path, monkeypatch, caplog, first_fails=False):
    """Two threads download OBSID into tmp_path at once; the first is held inside its
    download until the second is seen waiting for the lock. Returns both results (a path or
    the exception)."""
    started, go = threading.Event(), threading.Event()
    real = archive._fetch_product
    calls = []

    def held(*args, **kwargs):
        calls.append(threading.current_thread().name)
        if len(calls) == 1:
            started.set()
            assert go.wait(20)
            if first_fails:
                raise archive._Permanent(f"OBS_ID {OBSID}: the archive said no")
        return real(*args, **kwargs)

    monkeypatch.setattr(archive, "_fetch_product", held)
    caplog.set_level(logging.WARNING, logger="xmm_enhance")
    out = {}

    def run(key):
        try:
            out[key] = download_pps(OBSID, tmp_path / "save", backoff_s=0.01)
        except Exception as exc:
            out[key] = exc

    first = threading.Thread(target=run, args=("first",), name="first")
    first.start()
    assert started.wait(20)
    second = threading.Thread(target=run, args=("second",), name="second")
    second.start()
    for _ in range(400):
        if "another process is downloading it" in caplog.text:
            break
        time.sleep(0.05)
    assert "another process is downloading it" in caplog.text
    assert "second" not in calls                        # it waits before asking the archive
    go.set()
    first.join(20)
    second.join(20)
    return out, calls


def test_a_second_download_of_one_obsid_waits_and_reuses_the_first(xsa, tmp_path, monkeypatch,
                                                                   caplog):
    out, calls = _second_download_waits(tmp_path, monkeypatch, caplog)
    pps = tmp_path / "save" / OBSID / "pps"
    assert out == {"first": pps, "second": pps} and pps_folder_is_complete(pps, OBSID)
    assert "second" not in calls                        # downloaded once
    assert not list((tmp_path / "save" / OBSID).glob(".pps-download-*"))


def test_a_second_download_goes_on_when_the_first_fails(xsa, tmp_path, monkeypatch, caplog):
    out, calls = _second_download_waits(tmp_path, monkeypatch, caplog, first_fails=True)
    pps = tmp_path / "save" / OBSID / "pps"
    assert isinstance(out["first"], ArchiveError) and "the archive said no" in str(out["first"])
    assert out["second"] == pps and pps_folder_is_complete(pps, OBSID)
    assert "second" in calls


def test_when_both_downloads_fail_no_folder_is_left(xsa, tmp_path, monkeypatch, caplog):
    """The waiting download remade the folder the failed first one removed; when it fails
    too, it removes it as well (an empty <OBS_ID> folder stayed)."""
    xsa.unknown = 404
    xsa.src = tmp_path / "nothing"                       # the archive has no such OBS_ID
    (tmp_path / "nothing").mkdir()
    out, _ = _second_download_waits(tmp_path, monkeypatch, caplog, first_fails=True)
    assert all(isinstance(v, ArchiveError) for v in out.values())
    assert not (tmp_path / "save" / OBSID).exists()


def test_a_running_downloads_folder_is_not_removed_by_a_batch_beside_it(tmp_path):
    """The batch cleans an observation's folder of what killed runs left; a download that is
    running there now (it holds the download lock) keeps its folder."""
    from xmm_enhance.fsmode import owner_tag

    obs = tmp_path / OBSID
    stage = obs / f".pps-download-{owner_tag()}-live"    # this process: alive
    stage.mkdir(parents=True)
    old = time.time() - 2 * archive.STAGE_IDLE_S
    with archive._download_lock(obs, OBSID) as held:
        assert held
        os.utime(stage, (old, old))
        assert archive.remove_stale_downloads(obs) == 0 and stage.is_dir()
    assert archive.remove_stale_downloads(obs) == 1 and not stage.exists()
    assert list(obs.iterdir()) == []                    # nor a lock file left


def test_an_archive_that_stops_answering_is_given_up_on(xsa, tmp_path, sleeps):
    """In one process (a batch): the first OBS_ID gets every retry, the next ones one attempt
    each, and after ARCHIVE_GIVE_UP_AFTER in a row the archive is not asked at all; an answer
    (here: the archive works again) starts over."""
    ids = [f"01234567{i:02d}" for i in range(1, 6)]
    xsa.fail = [503] * 100
    hits = []
    for o in ids[:archive.ARCHIVE_GIVE_UP_AFTER + 1]:
        before = len(xsa.hits)
        with pytest.raises(ArchiveError) as err:
            download_pps(o, tmp_path, retries=3, backoff_s=0.01)
        hits.append(len(xsa.hits) - before)
    assert hits == [4, 1, 1, 0]
    msg = str(err.value)
    assert "not asked for: the archive gave no answer for the last 3 OBS_IDs" in msg
    assert "503" in msg and msg.count("try again later") == 1
    assert _leftovers(tmp_path) == []
    # a quarter of an hour later it is asked again (a long-lived worker is not cut off)
    archive._UNANSWERED["t"] -= archive.ARCHIVE_ASK_AGAIN_S
    before = len(xsa.hits)
    with pytest.raises(ArchiveError, match="download failed after 1 attempt"):
        download_pps(ids[4], tmp_path, retries=3, backoff_s=0.01)
    assert len(xsa.hits) - before == 1
    # it still gave no answer: given up again for a quarter of an hour; then it answers
    with pytest.raises(ArchiveError, match="not asked for"):
        download_pps(OBSID, tmp_path, retries=3, backoff_s=0.01)
    archive._UNANSWERED["t"] -= archive.ARCHIVE_ASK_AGAIN_S
    xsa.fail = []
    assert pps_folder_is_complete(download_pps(OBSID, tmp_path, retries=3, backoff_s=0.01),
                                  OBSID)
    assert archive._UNANSWERED["n"] == 0


def test_a_given_up_archive_does_not_block_another_url_or_a_reset(xsa, tmp_path, sleeps):
    """A notebook that met an outage was refused every download for a quarter of an hour,
    even from a mirror; another archive URL is now asked at once with all its retries, and
    archive_answers_again() (public) forgets the outage."""
    from astroquery.esa.xmm_newton import conf

    ids = [f"01234567{i:02d}" for i in range(1, 5)]
    xsa.fail = [503] * 100
    for o in ids[:archive.ARCHIVE_GIVE_UP_AFTER]:
        with pytest.raises(ArchiveError):
            download_pps(o, tmp_path, retries=0, backoff_s=0.01)
    with pytest.raises(ArchiveError, match="not asked for"):
        download_pps(ids[3], tmp_path, retries=3, backoff_s=0.01)
    mirror = conf.DATA_ACTION_AIO.replace("/nxsa-sl/", "/mirror/")
    before = len(xsa.hits)
    with archive.using_archive_url(mirror):
        with pytest.raises(ArchiveError, match="after 4 attempts"):
            download_pps(ids[3], tmp_path, retries=3, backoff_s=0.01)
        assert len(xsa.hits) - before == 4
        # the mirror's own count: 1 after one failure, not the first URL's 3 + 1
        with pytest.raises(ArchiveError, match="after 1 attempt"):
            download_pps(ids[2], tmp_path, retries=3, backoff_s=0.01)
    for o in ids[:archive.ARCHIVE_GIVE_UP_AFTER]:
        with pytest.raises(ArchiveError):
            download_pps(o, tmp_path, retries=0, backoff_s=0.01)
    with pytest.raises(ArchiveError, match="not asked for"):
        download_pps(ids[3], tmp_path, retries=3, backoff_s=0.01)
    assert "archive_answers_again" in archive.__all__
    archive.archive_answers_again()
    xsa.fail = []
    assert pps_folder_is_complete(download_pps(OBSID, tmp_path, backoff_s=0.01), OBSID)


def test_a_damaged_answer_is_not_an_outage(xsa, tmp_path, sleeps):
    """Truncated downloads after every retry: the archive answered, so the next OBS_ID gets
    all its retries (the give-up counts only refused or timed-out connections and 5xx)."""
    xsa.truncate = 100
    with pytest.raises(ArchiveError):
        download_pps(OBSID, tmp_path, retries=1, backoff_s=0.01)
    assert archive._UNANSWERED["n"] == 0


def test_a_new_batch_run_forgets_an_earlier_outage(tmp_path):
    archive._UNANSWERED.update(n=5, t=time.monotonic())
    from xmm_enhance import batch

    batch.run_batch([], batch.BatchConfig(save_dir=tmp_path))
    assert archive._UNANSWERED["n"] == 0


def test_find_excludes_one_exposure_given_as_a_string(tmp_path, fake_pps):
    """exclude='S003' iterated the string's letters: nothing was excluded."""
    folder = fake_pps(tmp_path / "pps", OBSID,
                      exposures=(("S003", 40000.0), ("U002", 1000.0)))
    assert find_pps_files(folder, OBSID).expid == "S003"
    assert find_pps_files(folder, OBSID, exclude="S003").expid == "U002"
