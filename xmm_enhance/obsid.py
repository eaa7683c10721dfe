"""The OBS_ID rule, shared by the image maker and the batch engine (no astropy import, so a
batch's parent process stays light)."""
from __future__ import annotations

import re

__all__ = ["obsid_problem"]


def obsid_problem(text: str) -> str:
    """Why ``text`` is not an XMM OBS_ID (ten digits), with the fix; "" when it is one.

    Nine digits get a hint: a leading zero lost by a spreadsheet or an integer conversion is
    the usual cause, and most OBS_IDs start with 0.
    """
    # [0-9], not \d: \d also matches other scripts' digits (fullwidth, Arabic-Indic...)
    if re.fullmatch(r"[0-9]{10}", text):
        return ""
    if re.fullmatch(r"[0-9]{9}", text):
        return (f"has 9 digits where an OBS_ID has 10 digits: a leading zero was probably "
                f"lost (e.g. by a spreadsheet); write it as 0{text}")
    return "is not a ten-digit OBS_ID; fix it or comment it out with #"
