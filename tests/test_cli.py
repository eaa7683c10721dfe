"""The command-line set: the ``xmm-enhance`` dispatcher, shared options, the demo.

Every command answers ``--version`` alike, says what ``-q`` means in the same words, shows the
name it was invoked by in its usage line, and exits 2 on usage errors. ``make demo`` runs here
too, into a temporary folder.
"""
import logging
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from astropy.io import fits
from astropy.wcs import WCS

import xmm_enhance
from xmm_enhance.cli import common
from xmm_enhance.cli.main import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]
VERSION = f"xmm_enhance {xmm_enhance.__version__}"


pytestmark = pytest.mark.usefixtures("restore_logging")


# ---- the dispatcher ---------------------------------------------------------------------------

def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: xmm-enhance")
    for name in ("image", "infer", "batch", "demo"):
        assert f"  {name} " in out


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == VERSION


@pytest.mark.parametrize("argv", [["bogus"], [], ["--bogus"]])
def test_unknown_or_missing_command_is_a_usage_error(argv, capsys):
    assert main(argv) == 2
    cap = capsys.readouterr()
    assert cap.out == ""
    assert "xmm-enhance: error:" in cap.err


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_command_shows_its_invoked_name_version_and_quiet(name, capsys):
    assert main([name, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: xmm-enhance {name} ")
    assert common.QUIET_HELP in " ".join(out.split())
    assert main([name, "--version"]) == 0
    assert capsys.readouterr().out.strip() == VERSION


def test_quiet_before_the_command_means_what_it_means_after(tmp_path, capsys):
    """The help says -q means the same in every command; 'xmm-enhance -q batch ...' was an
    unknown command '-q'."""
    lst = tmp_path / "empty.txt"
    lst.write_text("# nothing\n")
    assert main(["-q", "batch", str(lst), "--save_dir", str(tmp_path / "o")]) == 0
    assert "unknown command" not in capsys.readouterr().err
    assert main(["-v", "--version"]) == 0
    assert main(["-q"]) == 2


def test_image_usage_errors_exit_2_under_the_invoked_name(capsys):
    assert main(["image"]) == 2
    assert "usage: xmm-enhance image" in capsys.readouterr().err
    assert main(["image", "0123456789", "--binSize", "0", "--pps_dir", "."]) == 2
    assert main(["image", "0123456789", "--expo_time", "nan"]) == 2
    err = capsys.readouterr().err
    assert "xmm-enhance image: error: --expo_time" in err
    assert "make_detxy_pn_image_pps.py" not in err


def test_dispatch_to_image_makes_the_image(tmp_path, capsys):
    from xmm_enhance.simulate import pps as sim

    truth = sim.write_pps(tmp_path / "pps", "0123456789", n_events=20_000, seed=5)
    out = tmp_path / "out"
    assert main(["image", "0123456789", "--pps_dir", str(truth.folder), "--save_dir",
                 str(out), "--expo_time", "5", "--backend", "native"]) == 0
    path = out / "pn_cleaned_5.0ks_detxy_500_2000_80.fits"
    assert f"image: {path}" in capsys.readouterr().out
    assert fits.getheader(path)["EXPOSURE"] == pytest.approx(5000.0, abs=1e-6)


def test_console_script_and_root_script_names():
    """Installed entry point (``python -m xmm_enhance.cli.main`` is the same function) vs the
    seed-compatible root script: each usage line names how it was run."""
    run = dict(capture_output=True, text=True, timeout=120, cwd=ROOT)
    r = subprocess.run([sys.executable, "-m", "xmm_enhance.cli.main", "image", "--help"], **run)
    assert r.returncode == 0 and r.stdout.startswith("usage: xmm-enhance image ")
    r = subprocess.run([sys.executable, "make_detxy_pn_image_pps.py", "--help"], **run)
    assert r.returncode == 0 and r.stdout.startswith("usage: make_detxy_pn_image_pps.py ")
    r = subprocess.run([sys.executable, "make_detxy_pn_image_pps.py", "--version"], **run)
    assert r.returncode == 0 and r.stdout.strip() == VERSION
    r = subprocess.run([sys.executable, "make_detxy_pn_image_pps.py", "--binSize", "x"], **run)
    assert r.returncode == 2 and "usage: make_detxy_pn_image_pps.py" in r.stderr


# ---- -q / -v -----------------------------------------------------------------------------------

@pytest.mark.parametrize("flags,shown", [
    ({"quiet": True}, {"WARNING", "ERROR"}),
    ({}, {"INFO", "WARNING", "ERROR"}),
    ({"verbose": True}, {"DEBUG", "INFO", "WARNING", "ERROR"}),
])
def test_quiet_means_warnings_and_errors(flags, shown, capsys):
    import argparse

    common.setup_logging(argparse.Namespace(**{"quiet": False, "verbose": False, **flags}))
    log = logging.getLogger("xmm_enhance.some.module")
    for level in ("DEBUG", "INFO", "WARNING", "ERROR"):
        log.log(getattr(logging, level), "message at %s", level)
    warnings.warn_explicit("a python warning", UserWarning, "x.py", 1)
    err = capsys.readouterr().err
    for level in ("DEBUG", "INFO", "WARNING", "ERROR"):
        assert (f"message at {level}" in err) == (level in shown), (flags, level)
    assert "warning: a python warning" in err  # -q keeps warnings


# ---- the demo (make demo) ----------------------------------------------------------------------

def test_demo_writes_what_the_readme_promises(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "demo"
    assert main(["demo", "--outdir", str(out), "-q"]) == 0
    stem = "pn_cleaned_20.0ks_detxy_500_2000_80"
    expected = {f"{stem}.fits", f"{stem}_gti.png"}
    for w in ("SR", "DN"):
        expected |= {f"{stem}_input_wcs_{w}.fits.gz", f"{stem}_predict_wcs_{w}.fits.gz",
                     f"{stem}_predict_wcs_{w}.png"}
    made = {p.name for p in out.iterdir() if p.is_file()}
    assert expected <= made, expected - made
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert {p.name[17:23] for p in (out / "0000000001" / "pps").iterdir()} == {
        "PIEVLI", "FBKTSR", "ATTTSR", "CALIND"}
    h = fits.getheader(out / f"{stem}.fits")
    assert h["EXPOSURE"] == pytest.approx(20000.0, abs=1e-6) and h["OBS_ID"] == "0000000001"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        WCS(h)
    for w, shape in (("SR", (832, 832)), ("DN", (416, 416))):
        with fits.open(out / f"{stem}_predict_wcs_{w}.fits.gz", checksum=True) as hdul:
            assert hdul[0].data.shape == shape
    for p in out.glob("*.png"):
        assert p.read_bytes()[:4] == b"\x89PNG"
    assert capsys.readouterr().out == ""  # -q: warnings and errors only


def test_demo_usage_error_exits_2(tmp_path, capsys):
    assert main(["demo", "--seed", "x"]) == 2
    assert "usage: xmm-enhance demo" in capsys.readouterr().err
    # a negative seed is a usage error too (numpy refused it with a traceback, exit 1, after
    # making the output folder)
    assert main(["demo", "--seed", "-1", "--outdir", str(tmp_path / "d")]) == 2
    assert "--seed: must be >= 0" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_sigterm_as_interrupt_raises_keyboardinterrupt_and_restores_the_handler():
    import os
    import signal

    from xmm_enhance.cli.common import sigterm_as_interrupt

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with sigterm_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            import time
            time.sleep(5)          # the handler runs here at the latest
    assert signal.getsignal(signal.SIGTERM) is before


def test_make_image_sigterm_exits_130(tmp_path, sigterm_when_ready):
    """make_detxy_pn_image_pps.py stopped by SIGTERM: exit 130, 'interrupted', no temporary."""
    code = f"""
import sys, time
sys.path.insert(0, {str(ROOT)!r})
import xmm_enhance.pipeline as p
def slow(*a, **k):
    print("working", flush=True)
    time.sleep(60)
p.make_image = slow
import xmm_enhance.cli.make_image as m
sys.exit(m.main(["0123456789", "--pps_dir", {str(tmp_path)!r}]))
"""
    returncode, err = sigterm_when_ready(code, "working")
    assert returncode == 130 and "interrupted" in err, err


def test_demo_sigterm_exits_130_and_leaves_no_temporary(tmp_path, sigterm_when_ready):
    """xmm-enhance demo stopped by SIGTERM while it writes the simulated event list: exit
    130, 'interrupted', no half-written file."""
    out = tmp_path / "demo"
    code = f"""
import sys, time
sys.path.insert(0, {str(ROOT)!r})
from astropy.io import fits
def slow(self, fh, *a, **k):
    fh.write(b"x" * 1000)
    print("writing", flush=True)
    time.sleep(60)
fits.HDUList.writeto = slow
from xmm_enhance.cli.main import main
sys.exit(main(["demo", "--outdir", {str(out)!r}]))
"""
    returncode, err = sigterm_when_ready(code, "writing")
    assert returncode == 130 and err.strip().endswith("interrupted"), err
    assert "Traceback" not in err
    assert [p.name for p in out.rglob("*") if p.is_file()] == []


def test_demo_refuses_a_folder_holding_another_observations_image(tmp_path, capsys):
    """The message named --save_dir (the demo has --outdir) and the simulated PPS (~5 MB) was
    left behind."""
    from astropy.io import fits

    img = tmp_path / "pn_cleaned_20.0ks_detxy_500_2000_80.fits"
    fits.PrimaryHDU(header=fits.Header({"OBS_ID": "0123456789"})).writeto(img)
    assert main(["demo", "--outdir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "OBS_ID 0123456789" in err[0] and "--outdir" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == [img.name]


def test_demo_outdir_that_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert main(["demo", "--outdir", str(tmp_path / "f")]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "pass a writable --outdir" in err, err


def test_library_warnings_read_as_warning_lines(capsys, restore_logging):
    """A warning the library logs (an unsupported pn SUBMODE, a retry) reads 'warning: ...' on
    the console like the commands' own, so that a cron log can be grepped for it."""
    import argparse
    import logging

    from xmm_enhance.cli.common import setup_logging

    setup_logging(argparse.Namespace(quiet=False, verbose=False))
    log = logging.getLogger("xmm_enhance.archive")
    log.info("plain info")
    log.warning("OBS_ID 0123456789 exposure S003: pn SUBMODE 'PrimeSmallWindow' ...")
    log.warning("warning: already prefixed")
    log.error("something failed")
    err = capsys.readouterr().err.splitlines()
    assert err == ["plain info",
                   "warning: OBS_ID 0123456789 exposure S003: pn SUBMODE 'PrimeSmallWindow' ...",
                   "warning: already prefixed", "error: something failed"]
