"""make tour: the handouts' sessions played with their prose as narration.

Every session is already played by test_sessions.py; this checks that the tour narrates one
(the prose between the terminal blocks, the commands, the screens) and says it behaved.
"""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("LABS_BIN") or REPO / "build").resolve()


def test_tour_narrates_a_session():
    p = subprocess.run([sys.executable, str(REPO / "scripts" / "tour"), "--bin", str(BIN), "03"],
                       capture_output=True, timeout=120)
    out = p.stdout.decode()
    assert p.returncode in (0, 1), out + p.stderr.decode()
    assert "== 03-tcp-echo" in out
    if "skipped:" in out:
        return  # no network namespace here: test_sessions.py says why
    assert p.returncode == 0 and "1 of 1 labs behaved" in out, out
    assert "--- terminal 1" in out and "| $ build/03-tcp-echo/server" in out, out
    assert "| ready: tcp 127.0.0.1:9903" in out, out
