"""docs/errors.md: every error's example session shows what the page says it shows."""

import os
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
from session_player import Player, SessionSkipped  # noqa: E402

BIN = Path(os.environ.get("LABS_BIN") or REPO / "build").resolve()
PAGE = REPO / "docs" / "errors.md"
TIMEOUT = float(os.environ.get("SESSION_TIMEOUT") or 20)
ERRORS = re.findall(r"^## (E[A-Z]+):", PAGE.read_text(), re.M)


def test_the_page_covers_the_errors_the_labs_meet():
    """Each error of the table has its section with an example, and the other way round."""
    table = re.findall(r"^\| (E[A-Z]+) \|", PAGE.read_text(), re.M)
    assert table == ERRORS
    for name in ("ECONNREFUSED", "ECONNRESET", "EPIPE", "ETIMEDOUT", "ENETUNREACH", "EHOSTUNREACH",
                 "EADDRINUSE", "EADDRNOTAVAIL", "EACCES", "EMFILE", "EAGAIN", "EINTR",
                 "EMSGSIZE"):
        assert name in ERRORS, name


@pytest.mark.parametrize("error", ERRORS)
def test_example_session(error):
    """The example session of one error shows that error, as the page says."""
    try:
        Player(BIN, timeout=TIMEOUT).play(PAGE, error + ":")
    except SessionSkipped as e:
        pytest.skip(str(e))
