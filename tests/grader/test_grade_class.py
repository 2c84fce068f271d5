"""scripts/grade-class on a small class, labs 01 and 03 (to keep the run short): the
reference sources, a student who broke lab 03, an empty submission, and a malicious one
whose lab 01 server tries every attack on the grader (tests/grader/malicious/). Graded
with --jobs 2, from source, each submission in its sandbox.

The reference gets full marks; the broken student loses lab 03's points only; the empty
one scores 0; the malicious one raised no score, read nothing, changed no file outside
its sandbox, reached no network and left nothing running; each student's Gradescope
results.json validates against the schema."""

import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import trees  # noqa: E402
from gradescope_schema import validate_results  # noqa: E402
from grading import sandbox  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
GRADE_CLASS = [sys.executable, str(REPO / "scripts" / "grade-class")]
MALICIOUS = Path(__file__).resolve().parent / "malicious"
LABS = ("01", "03")

# A class takes minutes to grade (more on a loaded machine): the first test waits for it.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800),
              pytest.mark.skipif(sandbox.available() is not None,
                                 reason="grade-class needs the sandbox: %s" % sandbox.available())]


def lab_dir(tree, num):
    return next((tree / "labs").glob("%s-*" % num))


def tree_digest(root: Path) -> dict:
    found = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            found[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return found


def copy_lab_sources(src_tree: Path, dest: Path, token: str):
    for num in LABS:
        lab = lab_dir(src_tree, num)
        for f in lab.glob("*.[ch]pp"):
            target = dest / "labs" / lab.name / f.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(f.read_text() + "\n// %s\n" % token)


class Counter(http.server.BaseHTTPRequestHandler):
    hits = []

    def do_GET(self):
        Counter.hits.append(self.path)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"secret\n")

    def log_message(self, *args):
        pass


def our_leftovers():
    low, high = sandbox.SLOT_BASE, sandbox.SLOT_BASE + 2 * sandbox.SLOTS
    return [pid for pid in sandbox.processes_of_uids(range(low, high))]


def sandbox_namespaces():
    """Namespaces (network, user, mount, PID) still held by a process of a sandbox's uid:
    the test hosts made inside a sandbox live in its namespaces and end with them."""
    out = subprocess.run(["lsns", "-n", "-r", "-o", "NS,TYPE,PID,UID"], capture_output=True,
                         text=True, timeout=20).stdout
    low, high = sandbox.SLOT_BASE, sandbox.SLOT_BASE + 2 * sandbox.SLOTS
    return [line for line in out.splitlines()
            if len(line.split()) == 4 and low <= int(line.split()[3]) < high]


def labs_grade_cgroups(since):
    return sorted(str(p) for p in Path("/sys/fs/cgroup").glob("*/**/labs-grade-*")
                  if p.stat().st_ctime >= since)


@pytest.fixture(scope="module")
def graded():
    # Not under pytest's tmp_path (private to root): every folder here is one that a
    # sandbox could read, and the mark folder one it could write, were they visible.
    root = Path(tempfile.mkdtemp(prefix="grade-class-test-"))
    os.chmod(root, 0o755)
    instructor = trees.instructor_tree(root / "instructor", labs=LABS)
    subs = root / "submissions"
    out = root / "out"
    mark = root / "mark"
    mark.mkdir()
    os.chmod(mark, 0o777)  # a sandbox that could see it could write here

    # The reference, as a git work tree.
    ref = subs / "reference"
    copy_lab_sources(instructor, ref, "TOKEN-reference-7d1f")
    subprocess.run(["git", "init", "-q"], cwd=ref, check=True)
    # A student who broke lab 03: its programs stop at start. Sent as a tarball.
    broken = root / "broken"
    copy_lab_sources(instructor, broken, "TOKEN-broken-93ab")
    for f in (broken / "labs").glob("03-*/*.cpp"):
        f.write_text(f.read_text() + "\nnamespace { struct Broken { Broken() { std::_Exit(3); } } "
                     "broken_at_start; }\n#include <cstdlib>\n")
        f.write_text("#include <cstdlib>\n" + f.read_text())
    subs.mkdir(exist_ok=True)
    with tarfile.open(subs / "broken03.tar.gz", "w:gz") as tar:
        tar.add(broken, arcname="student-kit")
    (subs / "empty").mkdir()
    # The malicious one: its lab 01 server, its own Makefile, its own tests and weights.
    evil = subs / "malicious"
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Counter)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    fill = {"@SUBMISSIONS@": str(subs), "@INSTRUCTOR@": str(instructor), "@OUT@": str(out),
            "@MARK@": str(mark), "@HTTP_PORT@": str(httpd.server_address[1])}
    for name, dest in (("server.cpp", evil / "labs" / lab_dir(instructor, "01").name / "server.cpp"),
                       ("Makefile", evil / "Makefile")):
        text = (MALICIOUS / name).read_text()
        for key, value in fill.items():
            text = text.replace(key, value)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text)
    (evil / "tests" / "e2e").mkdir(parents=True)
    (evil / "tests" / "e2e" / "conftest.py").write_text("raise SystemExit('evil conftest')\n")
    (evil / "tests" / "weights.toml").write_text("[default]\npoints = 100000\n")
    for d in (subs, ref, evil, out.parent):
        os.chmod(d, 0o755)

    direct = direct_failures(instructor, root / "direct-build")
    started = time.time()
    before = {"instructor": tree_digest(instructor), "submissions": tree_digest(subs)}
    env = dict(os.environ, LABS_READY_TIMEOUT="3")
    try:
        p = subprocess.run(GRADE_CLASS + [str(subs), "--out", str(out), "--jobs", "2",
                                          "--labs", ",".join(LABS), "--timeout", "60",
                                          "--memory", "768", "--instructor", str(instructor)],
                           capture_output=True, timeout=900, env=env)
    finally:
        httpd.shutdown()
        httpd.server_close()
    after = {"instructor": tree_digest(instructor), "submissions": tree_digest(subs),
             "namespaces": sandbox_namespaces()}
    yield {"proc": p, "out": out, "before": before, "after": after, "mark": mark,
           "instructor": instructor, "subs": subs, "root": root,
           "started": started, "direct": direct}
    shutil.rmtree(root, ignore_errors=True)


def direct_failures(instructor: Path, build: Path) -> set:
    """The reference's own failures, outside the grader: its labs built with its Makefile
    and its tests run directly. The grader must find exactly these (none, in a healthy
    tree); a lab being rewritten may fail a test of its own for a while."""
    targets = ["%s/%s/%s" % (build, lab_dir(instructor, n).name, prog) for n in LABS
               for prog in ("server", "client")]
    env = {k: v for k, v in os.environ.items()
           if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "BUILD", "SAN", "WERROR", "OPT")}
    make = subprocess.run(["make", "-C", str(instructor), "-j2", "OPT=-O1", "WERROR=",
                           "BUILD=%s" % build, *targets], capture_output=True, timeout=600, env=env)
    assert make.returncode == 0, make.stderr.decode()[-2000:]
    junit = build / "junit.xml"
    files = [str(next((instructor / "tests" / "e2e").glob("test_%s_*.py" % n))) for n in LABS]
    subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-o",
                    "addopts=", "--timeout", "60", "--junitxml", str(junit), *files],
                   cwd=instructor, capture_output=True, timeout=900,
                   env=dict(env, LABS_BIN=str(build)))
    import xml.etree.ElementTree as ET
    failed = set()
    for case in ET.parse(junit).iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failed.add(case.get("name"))
    return failed


def report(graded, name):
    return json.loads((graded["out"] / name / "report.json").read_text())


def labs_of(doc):
    return {lab["lab"][:2]: lab for lab in doc["labs"]}


def test_grade_class_ran(graded):
    p = graded["proc"]
    assert p.returncode == 0, p.stderr.decode()[-3000:]
    rows = (graded["out"] / "class.csv").read_text().splitlines()
    assert rows[0] == "student,01,03,total"
    assert sorted(r.split(",")[0] for r in rows[1:]) == ["broken03", "empty", "malicious", "reference"]


def failures(doc):
    return ["%s: %s" % (t["name"], t["message"][:300]) for lab in doc["labs"] for t in lab["tests"]
            if t["outcome"] == "failed"]


def test_the_reference_gets_full_marks(graded):
    doc = report(graded, "reference")
    failed = {t["name"] for lab in doc["labs"] for t in lab["tests"]
              if t["outcome"] == "failed" and t["counted"]}
    assert failed == graded["direct"], failures(doc)  # the same as outside the grader
    if not graded["direct"]:
        assert doc["total"] == doc["max"] == 200, failures(doc)
        assert all(lab["passed"] == lab["total"] > 10 for lab in doc["labs"])


def test_the_broken_student_loses_lab_03s_points_only(graded):
    labs = labs_of(report(graded, "broken03"))
    assert labs["01"]["points"] == labs_of(report(graded, "reference"))["01"]["points"]
    assert labs["03"]["points"] <= 0.1 * labs["03"]["max"], labs["03"]["reason"]
    feedback = (graded["out"] / "broken03" / "feedback.md").read_text()
    assert "## 03-tcp-echo" in feedback and "What it checks:" in feedback
    assert "## 01-udp-echo" not in feedback


def test_the_empty_submission_scores_0(graded):
    doc = report(graded, "empty")
    assert doc["total"] == 0
    text = (graded["out"] / "empty" / "feedback.md").read_text()
    assert "not implemented" in text or "TODO" in text


def test_the_malicious_one_raised_no_score(graded):
    doc = report(graded, "malicious")
    assert doc["total"] == 0, [(l["lab"], l["points"]) for l in doc["labs"]]
    names = {t["name"] for lab in doc["labs"] for t in lab["tests"]}
    assert "test_forged" not in names
    assert doc["max"] == 200  # its own weights.toml was not used
    assert "evil" not in (graded["out"] / "class.csv").read_text()


def test_the_malicious_one_tried_and_every_attack_was_blocked(graded):
    text = (graded["out"] / "malicious" / "report.json").read_text()
    assert "attack read-other-submissions: blocked" in text, "the attacks did not run"
    assert "SUCCEEDED" not in text
    for token in ("TOKEN-reference-7d1f", "TOKEN-broken-93ab"):
        assert token not in text, "it read another student's code"


def test_the_malicious_one_changed_no_file_outside_its_sandbox(graded):
    assert graded["after"]["instructor"] == graded["before"]["instructor"]
    assert graded["after"]["submissions"] == graded["before"]["submissions"]
    assert not list(graded["mark"].iterdir()), "its Makefile ran, or it wrote to the host"
    assert not list(graded["out"].rglob("pwned*"))


def test_nothing_is_left_behind(graded):
    assert not our_leftovers(), "processes of a sandbox still run"
    assert graded["after"]["namespaces"] == []
    assert not labs_grade_cgroups(graded["started"])
    assert not [p for p in Path("/tmp").glob("labs-grade-*")
                if p.stat().st_mtime >= graded["started"]]


def test_the_malicious_one_reached_no_network(graded):
    assert Counter.hits == []


def test_gradescope_results_validate(graded):
    for student in ("reference", "broken03", "empty", "malicious"):
        doc = json.loads((graded["out"] / student / "results.json").read_text())
        validate_results(doc)
        assert abs(sum(t["score"] for t in doc["tests"]) - doc["score"]) < 0.05
    ref = json.loads((graded["out"] / "reference" / "results.json").read_text())
    assert abs(ref["score"] - report(graded, "reference")["total"]) < 0.01
