"""Quality gates of weights folders: did these weights pass the check that lets a user rely on them?

Each shipped folder holds ``gate.json`` beside ``MODEL_CARD.md`` (whose ``## Quality gate`` section
repeats the reason)::

    {"passed": true,
     "reason": "one line: why it passed or what it fails",
     "measured": "what was measured, with the command that measures it"}

A folder without ``gate.json`` (for example a fresh training export) has not passed: nothing says
it restores. ``flipnet serve`` lists a method as ready only when its weights passed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

GATE_FILE = "gate.json"
NO_GATE = "no quality gate recorded"


@dataclass(frozen=True)
class Gate:
    """The quality gate of one weights folder."""

    passed: bool
    reason: str  # one line
    measured: str = ""  # what was measured, with the command


def read_gate(folder: str | os.PathLike) -> Gate:
    """``folder/gate.json`` as a Gate; a missing or unreadable file is a gate not passed (with
    the problem as its reason), so weights nobody checked are never shown as ready."""
    path = Path(folder) / GATE_FILE
    if not path.is_file():
        return Gate(False, NO_GATE)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        passed, reason = data["passed"], data["reason"]
        measured = data.get("measured", "")
        if not isinstance(passed, bool) or not isinstance(reason, str) or not reason.strip() \
                or not isinstance(measured, str):
            raise TypeError("passed must be true/false, reason and measured text")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return Gate(False, f"{GATE_FILE} is invalid ({type(e).__name__}: {e})")
    return Gate(passed, " ".join(reason.split()), measured)
