"""make gradescope: the bundle has setup.sh and run_autograder at its root and no line of
a solution; run_autograder grades a submission in the sandbox and writes a results.json
that validates against Gradescope's schema, with the tests' scores adding up to the
total (one lab, 01, to keep it short)."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import trees  # noqa: E402
from gradescope_schema import validate_results  # noqa: E402
from grading import sandbox  # noqa: E402
from test_student_kit import lab_dir, secret_lines  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800),
              pytest.mark.skipif(sandbox.available() is not None,
                                 reason="needs the sandbox: %s" % sandbox.available())]


@pytest.fixture(scope="module")
def bundle():
    root = Path(tempfile.mkdtemp(prefix="gradescope-test-"))
    os.chmod(root, 0o755)
    instructor = trees.instructor_tree(root / "instructor", labs=("01",))
    out = root / "autograder.zip"
    p = subprocess.run([sys.executable, str(instructor / "scripts" / "gradescope" / "make-bundle"),
                        "--labs", "01", "--out", str(out)], capture_output=True, timeout=900)
    assert p.returncode == 0, p.stderr.decode()[-3000:]
    yield {"root": root, "zip": out, "instructor": instructor}
    shutil.rmtree(root, ignore_errors=True)


def test_the_bundle_has_its_scripts_at_the_root_and_no_solution(bundle):
    with zipfile.ZipFile(bundle["zip"]) as z:
        names = z.namelist()
        for script in ("setup.sh", "run_autograder"):
            assert script in names
            assert (z.getinfo(script).external_attr >> 16) & 0o111, script
        assert "tests/kit.json" in names and "Makefile" in names
        assert not [n for n in names if n.startswith(("labs/03-", "tests/grader/", ".ci/"))]
        secret = secret_lines(bundle["instructor"], "01")
        for name in names:
            text = z.read(name).decode(errors="replace")
            assert not [l for l in text.split("\n") if l.strip() in secret], name
        setup = z.read("setup.sh")
    check = subprocess.run(["bash", "-n"], input=setup, capture_output=True, timeout=20)
    assert check.returncode == 0, check.stderr


def autograde(bundle, name, files):
    """Lays out /autograder as Gradescope does, under a folder of our own, and runs it."""
    ag = bundle["root"] / name
    with zipfile.ZipFile(bundle["zip"]) as z:
        z.extractall(ag / "source")
    for rel in ("source/run_autograder", "source/setup.sh", "source/scripts/grade"):
        os.chmod(ag / rel, 0o755)
    (ag / "submission").mkdir()
    for rel, data in files.items():
        (ag / "submission" / rel).parent.mkdir(parents=True, exist_ok=True)
        (ag / "submission" / rel).write_bytes(data)
    shutil.copy(ag / "source" / "run_autograder", ag / "run_autograder")
    p = subprocess.run([str(ag / "run_autograder")], cwd=ag, capture_output=True, timeout=900,
                       env=dict(os.environ, AUTOGRADER_ROOT=str(ag), LABS_READY_TIMEOUT="3"))
    assert p.returncode == 0, p.stderr.decode()[-3000:]
    return json.loads((ag / "results" / "results.json").read_text())


def test_a_reference_submission_validates_and_scores_what_passed(bundle):
    lab = lab_dir(bundle["instructor"], "01")
    # Uploaded as bare files, as students of a one-lab assignment do.
    files = {p.name: p.read_bytes() for p in lab.glob("*.[ch]pp")}
    doc = autograde(bundle, "reference", files)
    validate_results(doc)
    assert doc["tests"], doc
    passed = sum(t["score"] for t in doc["tests"])
    assert abs(passed - doc["score"]) < 0.01
    assert abs(sum(t["max_score"] for t in doc["tests"]) - 100) < 0.01
    if all(t["status"] == "passed" for t in doc["tests"]):
        assert doc["score"] == 100


def test_an_empty_submission_scores_0(bundle):
    doc = autograde(bundle, "empty", {})
    validate_results(doc)
    assert doc["score"] == 0
    failed = [t for t in doc["tests"] if t["status"] == "failed"]
    assert failed and all(t["output"] for t in failed)
