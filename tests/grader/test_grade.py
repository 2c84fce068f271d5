"""scripts/grade on ready-made builds: it finds what the tests find when run directly; a
broken lab loses only its own points; a lab stopped at its time limit keeps the tests
that passed; a hang is stopped in bounded time and nothing is left behind; an empty build
scores 0; and the points: no report line crashes the grader, scores scale to the declared
maximum, the fault sweep is credited per fault."""

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from grading import sandbox  # noqa: E402
from grading.scoring import Weights, parse_report, score, values  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("LABS_BIN") or REPO / "build").resolve()
GRADE = [sys.executable, str(REPO / "scripts" / "grade")]
LAB = "01-udp-echo"
needs_sandbox = pytest.mark.skipif(sandbox.available() is not None,
                                   reason="needs the sandbox: %s" % sandbox.available())


def built(lab):
    return all((BIN / lab / p).exists() for p in ("server", "client"))


def other_lab():
    """A second built lab whose grade must not move when lab 01 is broken."""
    for name in ("12-unix-socket", "03-tcp-echo", "07-select"):
        if built(name) and (REPO / "labs" / name).is_dir():
            return name
    pytest.skip("needs a second built lab besides 01")


@pytest.fixture
def lab01_built():
    if not built(LAB):
        pytest.skip("lab 01 is not built in %s" % BIN)


def grade(tmp_path, bindir, labs, *extra, timeout=300, env=None):
    report = tmp_path / "report.json"
    p = subprocess.run(GRADE + ["--bin", str(bindir), "--labs", labs, "--json", str(report),
                                "--junit", str(tmp_path / "junit.xml"), *extra],
                       capture_output=True, timeout=timeout, env=dict(os.environ, **(env or {})))
    assert p.returncode == 0, p.stderr.decode()
    doc = json.loads(report.read_text())
    return {lab["lab"]: lab for lab in doc["labs"]}, doc, p.stdout.decode()


def fake_build(tmp_path, replace, extra=None):
    """The reference binaries, except `replace`: {'01-udp-echo/server': '#!/bin/sh ...'}."""
    fake = tmp_path / "bin"
    for lab in os.listdir(BIN):
        if not re.match(r"\d\d-", lab) or not built(lab):
            continue
        (fake / lab).mkdir(parents=True)
        for prog in ("server", "client"):
            (fake / lab / prog).symlink_to(BIN / lab / prog)
    for rel, target in (extra or {}).items():
        (fake / rel).symlink_to(target)
    for rel, script in replace.items():
        (fake / rel).unlink()
        (fake / rel).write_text(script)
        (fake / rel).chmod(0o755)
    return fake


def direct_failures(tmp_path, lab):
    """The tests of `lab` that fail when run directly on BIN, outside the grader."""
    junit = tmp_path / "direct.xml"
    test_file = next((REPO / "tests" / "e2e").glob("test_%s_*.py" % lab[:2]))
    subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-o",
                    "addopts=", "--timeout", "60", "--junitxml", str(junit), str(test_file)],
                   cwd=REPO, capture_output=True, timeout=600, env=dict(os.environ, LABS_BIN=str(BIN)))
    return {c.get("name") for c in ET.parse(junit).iter("testcase")
            if c.find("failure") is not None or c.find("error") is not None}


def failed_names(lab):
    return {t["name"] for t in lab["tests"] if t["outcome"] == "failed" and t["counted"]}


def leftovers():
    return sandbox.processes_of_uids(range(sandbox.SLOT_BASE, sandbox.SLOT_BASE + 2 * sandbox.SLOTS))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_grading_finds_what_the_tests_find_run_directly(tmp_path, lab01_built):
    labs, doc, out = grade(tmp_path, BIN, "01")
    direct = direct_failures(tmp_path, LAB)
    assert failed_names(labs[LAB]) == direct, out
    if not direct:
        assert labs[LAB]["points"] == labs[LAB]["max"], out
        assert re.search(r"^total\s+100\.0/100$", out, re.M), out
    junit = (tmp_path / "junit.xml").read_text()
    assert '<testsuite name="01-udp-echo"' in junit


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_server_that_exits_at_once_costs_only_its_lab(tmp_path, lab01_built):
    other = other_lab()
    reference, _, _ = grade(tmp_path, BIN, other[:2])
    fake = fake_build(tmp_path, {LAB + "/server": "#!/bin/sh\nexit 0\n"})
    labs, doc, out = grade(tmp_path, fake, "01,%s" % other[:2])
    assert labs[LAB]["points"] < labs[LAB]["max"] * 0.7, out
    assert labs[LAB]["reason"], out
    assert labs[other]["points"] == reference[other]["points"], out
    failed = [t for t in labs[LAB]["tests"] if t["outcome"] == "failed"]
    assert failed and all(t["message"] for t in failed)
    assert "<failure" in (tmp_path / "junit.xml").read_text()


@needs_sandbox
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_lab_stopped_at_its_time_limit_keeps_the_tests_that_passed(tmp_path, lab01_built):
    # The first four server starts are the real server; the fifth hangs without a ready
    # line, longer than the lab's time limit.
    script = ('#!/bin/sh\nn=$(cat /tmp/starts 2>/dev/null || echo 0)\n'
              'echo $((n + 1)) >/tmp/starts\n[ "$n" -lt 4 ] || exec sleep 600\n'
              'exec "$(dirname "$0")/server.real" "$@"\n')
    fake = fake_build(tmp_path, {LAB + "/server": script},
                      extra={LAB + "/server.real": BIN / LAB / "server"})
    labs, doc, out = grade(tmp_path, fake, "01", "--timeout", "12",
                           env={"LABS_READY_TIMEOUT": "60"})
    lab = labs[LAB]
    assert lab["timed_out"] and lab["reason"].startswith("timed out after 12s"), out
    passed = [t for t in lab["tests"] if t["outcome"] == "passed"]
    assert passed and 0 < lab["points"] < lab["max"], out
    assert any(t["message"] == "not run: the lab timed out after 12s" for t in lab["tests"])
    assert not leftovers()


@needs_sandbox
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_hang_is_stopped_in_bounded_time_and_nothing_is_left(tmp_path, lab01_built):
    script = "#!/bin/sh\nsetsid sleep 600 </dev/null >/dev/null 2>&1 &\nexec sleep 600\n"
    fake = fake_build(tmp_path, {LAB + "/server": script})
    import time
    began, started = time.monotonic(), time.time()
    labs, _, out = grade(tmp_path, fake, "01", "--timeout", "8", env={"LABS_READY_TIMEOUT": "60"})
    assert time.monotonic() - began < 8 + 60  # against the 600 s the server would take
    assert labs[LAB]["points"] < labs[LAB]["max"] * 0.7, out
    assert labs[LAB]["reason"].startswith("timed out after 8s"), out
    assert not leftovers(), "processes left running"
    assert not [p for p in Path("/sys/fs/cgroup").glob("*/**/labs-grade-*")
                if p.stat().st_ctime >= started]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_an_empty_build_scores_0(tmp_path):
    (tmp_path / "empty").mkdir()
    labs, doc, out = grade(tmp_path, tmp_path / "empty", "01,03")
    assert doc["total"] == 0, out
    assert all("is not built" in lab["reason"] for lab in labs.values()), out


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_without_the_sandbox_too(tmp_path, lab01_built):
    labs, doc, out = grade(tmp_path, BIN, "01", "--no-sandbox")
    assert "not sandboxed" in out
    assert labs[LAB]["passed"] > 10


@pytest.mark.parametrize("argv", [["--labs", "99"], ["--timeout", "soon"], ["--timeout", "0"],
                                  ["--bin", "/no/such/dir"], ["--src", "/no/such/dir"],
                                  ["--bin", ".", "--src", "."], ["--nonsense"]])
def test_bad_arguments_exit_2(argv):
    p = subprocess.run(GRADE + argv, capture_output=True, timeout=30)
    assert p.returncode == 2
    assert p.stderr.startswith(b"grade: ") or b"usage" in p.stderr


# ----------------------------------------------------------------------- points

WEIGHTS = REPO / "tests" / "weights.toml"


def records(outcomes):
    """[(name, markers, outcome)] -> the grader's test records."""
    return [{"name": n, "nodeid": "t.py::" + n, "markers": m, "outcome": o} for n, m, o in outcomes]


SAMPLE = [("test_help", [], "passed"), ("test_bad_port", [], "passed"),
          ("test_fault_sweep[reset]", ["faults"], "passed"),
          ("test_fault_sweep[garbage]", ["faults"], "passed"),
          ("test_fault_sweep[half-close]", ["faults"], "passed"),
          ("test_echo", [], "passed"), ("test_ipv6", [], "passed"),
          ("test_needs_root", [], "skipped")]


@pytest.mark.parametrize("shares", [(5, 5, 25, 65), (0, 10, 30, 60), (5, 1, 1, 1), (5, 33, 33, 34.5)])
@pytest.mark.parametrize("lab_points", [100, 120, 7.5])
def test_passing_everything_gives_exactly_the_maximum_whatever_the_weights(tmp_path, shares, lab_points):
    text = WEIGHTS.read_text()
    for name, value in zip(("handout", "arguments", "faults", "behaviour"), shares):
        text = re.sub(r'(name = "%s".*?\npoints = )[\d.]+' % name, r"\g<1>%g" % value, text, flags=re.S)
    (tmp_path / "w.toml").write_text(text)
    w = Weights(tmp_path / "w.toml")
    assert score(records(SAMPLE), lab_points, w) == lab_points
    worth = values(records(SAMPLE), lab_points, w)
    assert sum(worth.values()) == lab_points and "t.py::test_needs_root" not in worth


def test_the_fault_sweep_is_credited_per_fault():
    w = Weights(WEIGHTS)
    one_lost = [(n, m, "failed" if n == "test_fault_sweep[garbage]" else o) for n, m, o in SAMPLE]
    faults = [g for g in w.groups if g["name"] == "faults"][0]["points"]
    total = sum(g["points"] for g in w.groups if g.get("scored", True))
    assert score(records(one_lost), 100, w) == pytest.approx(100 - 100 * faults / total / 3)


def test_tests_of_the_instructors_tree_and_given_code_count_for_no_one():
    w = Weights(WEIGHTS)
    assert "test_handout_*" in w.ungraded_patterns()
    tests = records(SAMPLE + [("test_handout_has_every_section", [], "failed")])
    assert score(tests, 100, w) == 100
    tests = records([("test_help", [], "passed"), ("test_echo", [], "failed")])
    tests[0]["given"] = True  # the untouched kit passes it
    assert score(tests, 100, w) == 0


@pytest.mark.parametrize("garbage", [
    b"not json\n", b"[1, 2]\n", b'"text"\n', b"{}\n", b'{"nodeid": 5, "outcome": "passed"}\n',
    b'{"nodeid": "t.py::x", "outcome": "won"}\n', b'{"collected": "all"}\n',
    b'{"collected": [1, {"nodeid": 2}, {"nodeid": "t.py::a", "markers": "faults"}]}\n',
    b'{"nodeid": "t.py::b", "outcome": "failed", "seconds": "slow", "stderr": [3, {"tail": 4}]}\n',
    b"\xff\xfe\x00garbage\n", b'{"nodeid": "t.py::a"' + b"x" * 100000 + b"\n", b"\n\n\n"])
def test_no_report_line_crashes_the_grader(garbage):
    good = (b'{"collected": [{"nodeid": "t.py::a", "markers": [], "doc": ""}]}\n'
            b'{"nodeid": "t.py::a", "outcome": "passed", "seconds": 0.1, "message": ""}\n')
    collected, finished, bad = parse_report(garbage + good + garbage)
    assert collected[-1]["nodeid"] == "t.py::a"
    assert finished["t.py::a"]["outcome"] == "passed"
    for entry in finished.values():
        assert entry["outcome"] in ("passed", "failed", "skipped")
        assert isinstance(entry["seconds"], float) and isinstance(entry["message"], str)
