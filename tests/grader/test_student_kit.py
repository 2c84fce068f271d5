"""make student-kit: kits of any set of labs in which no line of a solution remains (code,
handouts, docs), every task a TODO whose text is in the handout's "Your turn", only the
kit's labs and their tests, a README for students; the untouched kit builds, each program
stops at its first TODO, and scores 0; a student's own `scripts/grade --src .` in the
kit gives the official score.

The labs are converted to the TASK markers one by one: these tests use a copy of the
checkout in which labs 01 and 03 are (tests/grader/trees.py)."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import trees  # noqa: E402
from grading import sandbox  # noqa: E402
from grading.kit import distinctive  # noqa: E402

LABS = ("01", "03")
TASK = re.compile(r"^\s*// TASK (\d\d\.[a-z0-9-]+)\s*$")
END = re.compile(r"^\s*// END TASK\s*$")


@pytest.fixture(scope="module")
def instructor(tmp_path_factory):
    root = tmp_path_factory.mktemp("instructor")
    tree = trees.instructor_tree(root / "tree", labs=LABS)
    yield tree
    shutil.rmtree(root, ignore_errors=True)


def kit_of(instructor, out, *args):
    return subprocess.run([sys.executable, str(instructor / "scripts" / "student-kit"),
                           "--out", str(out), *args], capture_output=True, timeout=600)


@pytest.fixture(scope="module")
def kit(instructor, tmp_path_factory):
    out = tmp_path_factory.mktemp("kit") / "student-kit"
    p = kit_of(instructor, out, "--labs", ",".join(LABS), "--tar")
    assert p.returncode == 0, p.stderr.decode()
    yield out
    shutil.rmtree(out.parent, ignore_errors=True)


def lab_dir(tree, num):
    return next((tree / "labs").glob("%s-*" % num))


def regions(tree, num):
    """{task id: its lines} and the lines outside every region, for one lab."""
    tasks, outside = {}, set()
    for src in lab_dir(tree, num).glob("*.[ch]pp"):
        current = None
        for line in src.read_text().split("\n"):
            m = TASK.match(line)
            if m:
                current = m.group(1)
                tasks[current] = []
            elif END.match(line):
                current = None
            elif line.strip().startswith("// KIT:"):
                outside.add(line.strip()[len("// KIT:"):].strip())  # the kit has it
            elif current:
                tasks[current].append(line.strip())
            else:
                outside.add(line.strip())
    return tasks, outside


def secret_lines(tree, num):
    """Lines of the lab's tasks that neither its given code (nor that of an earlier lab of
    the kit), common/, nor the tools every kit carries (tests/, scripts/) also have."""
    tasks, outside = regions(tree, num)
    for earlier in LABS:
        if earlier < num:
            outside |= regions(tree, earlier)[1]
    public = set()
    for part in ("common", "tests/load", "tests/unit", "tests/e2e", "scripts", "tools"):
        for p in (tree / part).rglob("*"):
            if p.is_file() and p.suffix in (".cpp", ".hpp", ".py", ""):
                try:
                    public |= {l.strip() for l in p.read_text().split("\n")}
                except UnicodeDecodeError:
                    pass
    return {l for lines in tasks.values() for l in lines if distinctive(l)} - outside - public


def text_files(root):
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix != ".gz":
            try:
                yield p, p.read_text()
            except UnicodeDecodeError:
                pass


def test_no_line_of_a_solution_anywhere_in_the_kit(instructor, kit):
    for num in LABS:
        secret = secret_lines(instructor, num)
        assert secret, "lab %s marks no task" % num
        leaked = ["%s:%d" % (p.relative_to(kit), n) for p, text in text_files(kit)
                  for n, line in enumerate(text.split("\n"), 1) if line.strip() in secret]
        assert not leaked, leaked[:20]
    assert (kit.parent / "student-kit.tar.gz").stat().st_size > 10000


def test_every_task_is_a_todo_with_its_entry_in_your_turn(instructor, kit):
    for num in LABS:
        tasks, _ = regions(instructor, num)
        lab = lab_dir(kit, num)
        sources = "".join(p.read_text() for p in lab.glob("*.[ch]pp"))
        todos = re.findall(r'// TODO\((\d\d\.[a-z0-9-]+)\): see README\.md, "Your turn"', sources)
        assert sorted(todos) == sorted(tasks), (num, todos, list(tasks))
        assert not re.search(r"// (TASK|END TASK|KIT:)", sources)
        readme = (lab / "README.md").read_text()
        turn = re.search(r"^## Your turn\s*$(.*?)(?=^## |\Z)", readme, re.M | re.S)
        assert turn, "%s: no 'Your turn' section in the kit's handout" % num
        for task in tasks:
            assert "- **%s**" % task in turn.group(1), task


def test_the_kit_holds_its_labs_and_their_tests_only(kit):
    labs = sorted(d.name[:2] for d in (kit / "labs").iterdir())
    assert labs == list(LABS)
    tests = sorted(p.name for p in (kit / "tests" / "e2e").glob("test_[0-9][0-9]_*.py"))
    assert tests and all(t[5:7] in LABS for t in tests), tests
    for gone in ("tests/grader", "tests/docs", ".ci", "scripts/gradescope", "scripts/student-kit"):
        assert not (kit / gone).exists(), gone
    for kept in ("Makefile", "common", "scripts/grade", "scripts/grading/core.py",
                 "scripts/grade_report.py", "tests/e2e/conftest.py", "tests/weights.toml",
                 "tests/kit.json"):
        assert (kit / kept).exists(), kept
    assert os.access(kit / "scripts" / "grade", os.X_OK)
    readme = (kit / "README.md").read_text()
    for said in ("Your turn", "make test LAB=01", "scripts/grade --src .", "## Submit",
                 "labs/NN-name/*.cpp"):
        assert said in readme, said
    # A lab the kit does not have is an error, not a silent run of nothing.
    p = subprocess.run(["make", "-C", str(kit), "-n", "test", "LAB=13"], capture_output=True,
                       timeout=60, env=clean_env())
    assert p.returncode != 0 and b"no lab" in p.stderr, p.stderr


def test_a_kit_of_one_lab_leaves_the_others_out(instructor, tmp_path):
    p = kit_of(instructor, tmp_path / "kit", "--labs", "03")
    assert p.returncode == 0, p.stderr.decode()
    assert sorted(d.name[:2] for d in (tmp_path / "kit" / "labs").iterdir()) == ["03"]
    assert not list((tmp_path / "kit" / "tests" / "e2e").glob("test_01_*"))


def test_a_lab_not_in_the_task_format_is_refused(instructor, tmp_path):
    old = [d.name[:2] for d in sorted((instructor / "labs").iterdir())
           if d.name[:2] not in LABS and not trees.has_tasks(instructor, d.name[:2])]
    if not old:
        pytest.skip("every lab uses the TASK markers")
    p = kit_of(instructor, tmp_path / "kit", "--labs", old[0])
    assert p.returncode == 1
    assert b"student-kit: " in p.stderr
    assert not (tmp_path / "kit").exists()


def test_a_doc_that_quotes_a_solution_line_is_refused(instructor, tmp_path):
    copy = tmp_path / "tree"
    shutil.copytree(instructor, copy, symlinks=True)
    line = sorted(secret_lines(copy, "03"))[0]
    with open(copy / "docs" / "index.md", "a") as f:
        f.write("\n    %s\n" % line)
    p = kit_of(copy, tmp_path / "kit", "--labs", "03")
    assert p.returncode == 1
    assert b"solution text would be left" in p.stderr and b"docs/index.md" in p.stderr
    assert not (tmp_path / "kit").exists()


def test_bad_lab_numbers_exit_2(instructor, tmp_path):
    p = kit_of(instructor, tmp_path / "kit", "--labs", "13")
    assert p.returncode == 2 and b"no lab" in p.stderr


def clean_env():
    return {k: v for k, v in os.environ.items()
            if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "BUILD", "SAN", "WERROR", "OPT")}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_untouched_kit_builds_and_each_program_stops_at_its_first_todo(kit, tmp_path):
    targets = ["build/%s/%s" % (lab_dir(kit, n).name, prog) for n in LABS
               for prog in ("server", "client")]
    make = subprocess.run(["make", "-C", str(kit), "-j2", "OPT=-O0", "WERROR=0", "BUILD=build",
                           "SAN=", *targets], capture_output=True, timeout=600, env=clean_env())
    assert make.returncode == 0, make.stderr.decode()[-3000:]
    for target in targets:
        p = subprocess.run([str(kit / target), "--port", "0"], capture_output=True,
                           stdin=subprocess.DEVNULL, timeout=10)
        assert p.returncode == 1, target
        assert re.search(rb"not implemented: task \d\d\.[a-z0-9-]+", p.stderr), (target, p.stderr)
        assert b"ready:" not in p.stdout


def grade(tree, src, tmp_path, name):
    report = tmp_path / ("%s.json" % name)
    p = subprocess.run([sys.executable, str(tree / "scripts" / "grade"), "--src", str(src),
                        "--labs", "01", "--json", str(report)], capture_output=True,
                       timeout=900, env=dict(os.environ, LABS_READY_TIMEOUT="3"))
    assert p.returncode == 0, p.stderr.decode()
    return json.loads(report.read_text())


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.skipif(sandbox.available() is not None, reason="needs the sandbox (root, bubblewrap)")
def test_a_students_local_score_is_the_official_one(instructor, tmp_path):
    p = kit_of(instructor, tmp_path / "kit", "--labs", "01", "--baseline")
    assert p.returncode == 0, p.stderr.decode()
    kit = tmp_path / "kit"
    given = json.loads((kit / "tests" / "kit.json").read_text())["given"]
    # A student who did part of the work: all of the reference but its client.
    lab = lab_dir(instructor, "01").name
    for src in (instructor / "labs" / lab).glob("*.[ch]pp"):
        if src.name != "client.cpp":
            shutil.copy(src, kit / "labs" / lab / src.name)
    local = grade(kit, kit, tmp_path, "local")
    official = subprocess.run([sys.executable, str(instructor / "scripts" / "grade"),
                               "--src", str(kit), "--labs", "01", "--json",
                               str(tmp_path / "official.json"),
                               "--baseline", str(kit / "tests" / "kit.json")],
                              capture_output=True, timeout=900,
                              env=dict(os.environ, LABS_READY_TIMEOUT="3"))
    assert official.returncode == 0, official.stderr.decode()
    official = json.loads((tmp_path / "official.json").read_text())
    assert 0 < local["total"] < local["max"]
    assert local["total"] == official["total"]
    assert [(t["name"], t["outcome"], t["counted"]) for t in local["labs"][0]["tests"]] == \
        [(t["name"], t["outcome"], t["counted"]) for t in official["labs"][0]["tests"]]
    assert isinstance(given, dict)
