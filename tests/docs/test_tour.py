"""make tour: every lab's narrated scenario behaves, and the tour says so."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("LABS_BIN") or REPO / "build").resolve()


def test_tour_runs_every_lab():
    p = subprocess.run([sys.executable, str(REPO / "scripts" / "tour"), "--bin", str(BIN)],
                       capture_output=True, timeout=120)
    out = p.stdout.decode()
    assert p.returncode == 0, out + p.stderr.decode()
    labs = sorted(d.name for d in (REPO / "labs").iterdir() if d.name[:2].isdigit())
    for lab in labs:
        assert "== %s" % lab in out
    assert "%d of %d labs behaved" % (len(labs), len(labs)) in out
    assert "MISBEHAVED" not in out
