"""scripts/grade: full marks for the reference build; a broken lab loses exactly its own
points; a hanging lab is stopped in bounded time; nothing is left running."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("LABS_BIN") or REPO / "build").resolve()
GRADE = [sys.executable, str(REPO / "scripts" / "grade")]
LAB = "01-udp-echo"


def other_lab():
    """A second built lab whose grade must not move when lab 01 is broken."""
    for name in ("03-tcp-echo", "12-unix-socket", "07-select"):
        if (BIN / name / "server").exists() and (REPO / "labs" / name).is_dir():
            return name
    pytest.skip("needs a second built lab besides 01")


def grade(tmp_path, bindir, labs, *extra, timeout=120, env=None):
    report = tmp_path / "report.json"
    began = time.monotonic()
    p = subprocess.run(GRADE + ["--bin", str(bindir), "--labs", labs, "--json", str(report),
                                "--junit", str(tmp_path / "junit.xml"), *extra],
                       capture_output=True, timeout=timeout, env=dict(os.environ, **(env or {})))
    seconds = time.monotonic() - began
    assert p.returncode == 0, p.stderr.decode()
    doc = json.loads(report.read_text())
    return {lab["lab"]: lab for lab in doc["labs"]}, doc, p.stdout.decode(), seconds


def fake_build(tmp_path, replace):
    """A build directory that links to the reference binaries, except `replace`:
    {'01-udp-echo/server': '#!/bin/sh\\n...'}."""
    fake = tmp_path / "bin"
    for lab in os.listdir(BIN):
        if not re.match(r"\d\d-", lab):
            continue
        (fake / lab).mkdir(parents=True)
        for prog in ("server", "client"):
            if (BIN / lab / prog).exists():
                (fake / lab / prog).symlink_to(BIN / lab / prog)
    for rel, script in replace.items():
        target = fake / rel
        target.unlink()
        target.write_text(script)
        target.chmod(0o755)
    return fake


def processes_using(bindir):
    """Live processes started with LABS_BIN=bindir in their environment."""
    needle = ("LABS_BIN=%s" % bindir).encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open("/proc/%s/environ" % pid, "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(int(pid))
        except OSError:
            pass
    return found


def test_reference_build_scores_full_marks(tmp_path):
    labs, doc, out, _ = grade(tmp_path, BIN, "01")
    assert labs[LAB]["points"] == labs[LAB]["max"], out
    assert labs[LAB]["passed"] == labs[LAB]["total"] > 10
    assert doc["total"] == doc["max"]
    assert re.search(r"^total\s+100\.0/100$", out, re.M), out
    junit = (tmp_path / "junit.xml").read_text()
    assert '<testsuite name="01-udp-echo"' in junit and "<failure" not in junit


def test_a_server_that_exits_at_once_costs_only_its_lab(tmp_path):
    other = other_lab()
    fake = fake_build(tmp_path, {LAB + "/server": "#!/bin/sh\nexit 0\n"})
    labs, doc, out, _ = grade(tmp_path, fake, "01,%s" % other[:2])
    assert labs[LAB]["points"] < labs[LAB]["max"] * 0.7, out
    assert labs[LAB]["reason"], out
    assert labs[other]["points"] == labs[other]["max"], out
    failed = [t for t in labs[LAB]["tests"] if t["outcome"] == "failed"]
    assert failed and all(t["message"] for t in failed)
    assert "<failure" in (tmp_path / "junit.xml").read_text()


def test_a_hanging_server_is_stopped_in_bounded_time(tmp_path):
    fake = fake_build(tmp_path, {LAB + "/server": "#!/bin/sh\nexec sleep 600\n"})
    labs, _, out, seconds = grade(tmp_path, fake, "01", "--timeout", "8",
                                  env={"LABS_READY_TIMEOUT": "1"}, timeout=60)
    assert seconds < 8 + 15, "grading took %.1fs" % seconds
    assert labs[LAB]["points"] < labs[LAB]["max"] * 0.7, out
    assert labs[LAB]["reason"], out
    assert not processes_using(fake), "processes left running"


def test_a_lab_that_leaves_processes_behind_loses_its_points(tmp_path):
    real = BIN / LAB / "server"
    # Starts a process in a session of its own (out of the harness's reach), then runs
    # the real server: every test passes, but something is left running.
    script = "#!/bin/sh\nsetsid sleep 600 </dev/null >/dev/null 2>&1 &\nexec %s \"$@\"\n" % real
    fake = fake_build(tmp_path, {LAB + "/server": script})
    labs, _, out, _ = grade(tmp_path, fake, "01")
    assert labs[LAB]["points"] == 0, out
    assert "left" in labs[LAB]["reason"] and "behind" in labs[LAB]["reason"], out
    assert not processes_using(fake), "the grader did not clean up"


@pytest.mark.parametrize("argv", [["--labs", "99"], ["--timeout", "soon"], ["--timeout", "0"],
                                  ["--bin", "/no/such/dir"], ["--nonsense"]])
def test_bad_arguments_exit_2(argv):
    p = subprocess.run(GRADE + argv, capture_output=True, timeout=30)
    assert p.returncode == 2
    assert p.stderr.startswith(b"grade: ") or b"usage" in p.stderr
