"""What the grader takes from a submission: labs/NN-name/*.cpp and *.hpp, regular files of
at most 1 MiB, from a folder, an archive or a git repository; nothing else (no Makefile,
tests, scripts, links, paths out of the archive); and grade-class's bad arguments."""

import io
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from grading.submission import find_submissions, read_sources, student_name  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
LABS = {"01-udp-echo", "03-tcp-echo"}


def tree(root: Path):
    files = {"labs/01-udp-echo/server.cpp": b"int main() {}\n",
             "labs/01-udp-echo/helper.hpp": b"// helper\n",
             "labs/03-tcp-echo/client.cpp": b"// client\n",
             "labs/03-tcp-echo/README.md": b"notes\n",
             "labs/99-extra/server.cpp": b"// not a lab of ours\n",
             "Makefile": b"all:\n\ttouch /tmp/pwned\n",
             "tests/e2e/conftest.py": b"raise SystemExit\n",
             "common/io.cpp": b"// theirs\n"}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


WANTED = {"labs/01-udp-echo/server.cpp", "labs/01-udp-echo/helper.hpp", "labs/03-tcp-echo/client.cpp"}


def test_a_folder(tmp_path):
    root = tree(tmp_path / "alice")
    (root / "labs" / "01-udp-echo" / "big.cpp").write_bytes(b"x" * ((1 << 20) + 1))
    (root / "labs" / "01-udp-echo" / "link.cpp").symlink_to("/etc/passwd")
    sources, notes = read_sources(root, LABS)
    assert set(sources) == WANTED and not notes
    assert sources["labs/01-udp-echo/server.cpp"] == b"int main() {}\n"


def test_a_folder_one_level_down_and_a_git_work_tree(tmp_path):
    root = tree(tmp_path / "bob" / "student-kit")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    sources, _ = read_sources(tmp_path / "bob", LABS)
    assert set(sources) == WANTED


def test_a_tarball_takes_no_link_and_no_path_out(tmp_path):
    root = tree(tmp_path / "src")
    out = tmp_path / "carol.tar.gz"
    with tarfile.open(out, "w:gz") as tar:
        tar.add(root, arcname="kit")
        link = tarfile.TarInfo("kit/labs/03-tcp-echo/server.cpp")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
        tar.addfile(link)
        evil = tarfile.TarInfo("../../labs/03-tcp-echo/server.hpp")
        evil.size = 4
        tar.addfile(evil, io.BytesIO(b"evil"))
    sources, _ = read_sources(out, LABS)
    assert set(sources) == WANTED
    assert not list(tmp_path.glob("**/server.hpp"))


def test_a_zip_and_a_bare_repository(tmp_path):
    root = tree(tmp_path / "src")
    z = tmp_path / "dave.zip"
    with zipfile.ZipFile(z, "w") as f:
        for p in root.rglob("*"):
            if p.is_file():
                f.write(p, "kit/" + str(p.relative_to(root)))
    assert set(read_sources(z, LABS)[0]) == WANTED
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(["git", "-c", "user.name=s", "-c", "user.email=s@example.org", "commit", "-qm",
                    "work"], cwd=root, check=True)
    bare = tmp_path / "erin.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(root), str(bare)], check=True)
    assert set(read_sources(bare, LABS)[0]) == WANTED


def test_names_and_what_counts_as_a_submission(tmp_path):
    (tmp_path / "frank").mkdir()
    (tmp_path / "grace.tar.gz").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not a submission\n")
    (tmp_path / ".hidden").mkdir()
    assert [p.name for p in find_submissions(tmp_path)] == ["frank", "grace.tar.gz"]
    assert student_name(tmp_path / "grace.tar.gz") == "grace"
    assert student_name(tmp_path / "h o/../x y.zip") == "x_y"
    sources, notes = read_sources(tmp_path / "grace.tar.gz", LABS)
    assert sources == {} and notes  # an archive that is not one: nothing taken, a note


@pytest.mark.parametrize("argv", [[], ["SUBS"], ["SUBS", "--out", "OUT", "--jobs", "0"],
                                  ["/no/such/dir", "--out", "OUT"],
                                  ["SUBS", "--out", "OUT", "--labs", "99"],
                                  ["SUBS", "--out", "OUT", "--timeout", "0"]])
def test_grade_class_bad_arguments_exit_2(tmp_path, argv):
    (tmp_path / "subs").mkdir()
    argv = [a.replace("SUBS", str(tmp_path / "subs")).replace("OUT", str(tmp_path / "out"))
            for a in argv]
    p = subprocess.run([sys.executable, str(REPO / "scripts" / "grade-class"), *argv],
                       capture_output=True, timeout=60)
    assert p.returncode == 2, p.stderr
    assert b"grade-class: " in p.stderr or b"usage" in p.stderr
