"""Every handout's "Run it by hand" session, played in real terminals.

The session is the handout's own text (docs/conventions.md, "Sessions"): scripts/
session_player.py types each `$` command and `>` line into the terminal it names, presses
the keys, and checks that each terminal then shows exactly the lines the handout says,
in order, within a timeout. It runs inside a network namespace of its own, so the lab's
own port is used as written. A difference fails with the terminal's screen.
"""

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
from session_player import Player, SessionSkipped, session_labs  # noqa: E402

BIN = Path(os.environ.get("LABS_BIN") or REPO / "build").resolve()
# Sanitizer builds start and stop more slowly; SESSION_TIMEOUT overrides either.
TIMEOUT = float(os.environ.get("SESSION_TIMEOUT") or (30 if "sanitize" in str(BIN) or
                                                      "tsan" in str(BIN) else 15))


@pytest.mark.parametrize("lab", [pytest.param(lab, id=lab[:2],
                                              marks=getattr(pytest.mark, "lab" + lab[:2]))
                                 for lab in session_labs()])
def test_session(lab):
    """The handout's "Run it by hand" session shows what the handout says it shows."""
    player = Player(BIN, timeout=TIMEOUT)
    try:
        player.play(REPO / "labs" / lab / "README.md")
    except SessionSkipped as e:
        pytest.skip(str(e))
