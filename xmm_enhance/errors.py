"""Exceptions that the command-line entry points turn into one-line messages and exit codes.

Every message says what went wrong, which file or OBS_ID, and what to do about it.
Exit codes (design §4.6): 0 success, 1 run-time failure, 2 usage error.

The library and the command line raise the same messages. A setting is named by its
command-line option, with the Python parameter in brackets where that is named otherwise:
``--binSize (binsize=)``, ``--expo_time (expo_time_ks=)``, ``--model PATH (path=)``,
``--dask-scheduler (scheduler=)``. Options spelt as their parameters (``--low_pi``,
``--pps_dir``, ``--overwrite``...) are named once.
"""

__all__ = ["XmmEnhanceError", "UsageError", "InputError", "ArchiveError", "ModelError",
           "PPSError", "OutputError"]


class XmmEnhanceError(RuntimeError):
    """Base class; ``exit_code`` is what the command-line tools exit with."""

    exit_code = 1


class UsageError(XmmEnhanceError):
    """Bad command-line arguments (exit 2)."""

    exit_code = 2


class InputError(XmmEnhanceError):
    """An input file is missing, unreadable or not what the tool needs."""


class PPSError(InputError):
    """A PPS folder lacks a product or holds a corrupt one."""


class ArchiveError(XmmEnhanceError):
    """The XMM archive could not deliver the data (after retries)."""


class ModelError(XmmEnhanceError):
    """A model file is missing, corrupt or carries the wrong metadata."""


class OutputError(XmmEnhanceError):
    """An output cannot be written (folder not writable, exists without --overwrite)."""


#: The fix for a damaged PPS file: a --pps_dir may be the user's own archive copy, so it is not
#: deleted on our advice; a folder this tool downloaded is fetched anew once the file is gone.
REPLACE_FIX = ("replace it with an intact copy from the XMM archive (in a folder this tool "
               "downloaded: delete the file and rerun)")
#: The fix for a PPS file or folder this user cannot read (another user's data under umask 077).
READ_FIX = ("make it readable for this user (chmod u+r, or ask its owner) or copy it to a "
            "folder of your own")
