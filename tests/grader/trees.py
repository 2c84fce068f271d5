"""Instructor trees for the grader's tests: a copy of this checkout in which the labs a
test needs use the student kit's TASK markers.

Labs still marked the older way (`// BEGIN SOLUTION: hint` ... `// STUB: code` ...
`// END SOLUTION`) are converted in the copy, region k of lab NN becoming task NN.task-k
with a "Your turn" entry in the copy's handout; labs already converted are copied as they
are. The checkout itself is never changed.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GRADER_FILES = ("scripts/grade", "scripts/grading/", "scripts/student-kit",
                "scripts/gradescope/", "tests/weights.toml")
OLD_BEGIN = re.compile(r"^(\s*)// BEGIN SOLUTION:\s*(.*)$")
OLD_MORE = re.compile(r"^\s*//\s{2,}(\S.*)$")
OLD_STUB = re.compile(r"^(\s*)// STUB: ?(.*)$")
OLD_END = re.compile(r"^(\s*)// END SOLUTION\s*$")
TODO_FALLBACK = """
// (added by the grader's tests: this checkout's common/ predates lab::todo)
#include <cstdio>
#include <cstdlib>
namespace lab {
[[noreturn]] inline void todo(std::string_view task) {
    std::fprintf(stderr, "%s: not implemented: task %.*s (see the handout, \\"Your turn\\")\\n",
                 program_name().c_str(), static_cast<int>(task.size()), task.data());
    std::exit(1);
}
template <typename T>
[[noreturn]] T todo(std::string_view task) { todo(task); }
}  // namespace lab
"""


def tracked(tree: Path):
    if not (tree / ".git").exists():
        return sorted(str(p.relative_to(tree)) for p in tree.rglob("*") if p.is_file()
                      and not str(p.relative_to(tree)).startswith(("build/", "dist/")))
    out = subprocess.run(["git", "ls-files", "-z"], cwd=tree, capture_output=True, check=True)
    return [f for f in out.stdout.decode().split("\0") if f and (tree / f).is_file()]


def convert_source(text: str, num: str, start: int):
    """Old markers -> TASK markers; returns (text, [(task id, hint)])."""
    out, tasks = [], []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        m = OLD_BEGIN.match(lines[i])
        if not m:
            out.append(lines[i])
            i += 1
            continue
        indent, hint = m.group(1), [m.group(2)]
        i += 1
        while i < len(lines) and OLD_MORE.match(lines[i]) and not OLD_STUB.match(lines[i]):
            hint.append(OLD_MORE.match(lines[i]).group(1))
            i += 1
        task = "%s.task-%d" % (num, start + len(tasks) + 1)
        tasks.append((task, " ".join(h.strip() for h in hint)))
        out.append("%s// TASK %s" % (indent, task))
        while i < len(lines) and not OLD_END.match(lines[i]):
            s = OLD_STUB.match(lines[i])
            if s:  # the stub's message becomes the task's id
                code = re.sub(r'lab::(?:not_implemented|todo)(<[^>]*>)?\("[^"]*"\)',
                              lambda m: 'lab::todo%s("%s")' % (m.group(1) or "", task), s.group(2))
                out.append("%s// KIT: %s" % (s.group(1), code))
            else:
                out.append(lines[i])
            i += 1
        out.append("%s// END TASK" % indent)
        i += 1
    return "\n".join(out), tasks


def instructor_tree(dest: Path, labs=("01", "03"), source: Path = REPO) -> Path:
    """A copy of the checkout's tracked files at dest, with `labs` in the TASK format."""
    # GRADER_TEST_SOURCE: take the labs, common/ and the tests from another tree (a
    # snapshot), and the grader itself from this checkout.
    source = Path(os.environ.get("GRADER_TEST_SOURCE") or source)
    for f in tracked(source):
        target = dest / f
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / f, target)
    if source != REPO:
        for f in tracked(REPO):
            if f.startswith(GRADER_FILES):
                target = dest / f
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / f, target)
    for lab_dir in sorted((dest / "labs").iterdir()):
        num = lab_dir.name[:2]
        if num not in labs:
            continue
        tasks = []
        for src in sorted(lab_dir.glob("*.[ch]pp")):
            text, found = convert_source(src.read_text(), num, len(tasks))
            src.write_text(text)
            tasks += found
        readme = lab_dir / "README.md"
        if tasks and "## Your turn" not in readme.read_text():
            readme.write_text(readme.read_text().rstrip("\n") + "\n\n## Your turn\n\n" + "".join(
                "- **%s**: %s\n" % (task, hint) for task, hint in tasks))
    error_hpp = dest / "common" / "error.hpp"
    if "todo(" not in error_hpp.read_text():
        text = error_hpp.read_text()
        guard = text.rstrip().rsplit("\n", 1)
        if guard[-1].startswith("#endif"):
            error_hpp.write_text(guard[0] + "\n" + TODO_FALLBACK + guard[-1] + "\n")
        else:
            error_hpp.write_text(text + TODO_FALLBACK)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    return dest


def has_tasks(tree: Path, num: str) -> bool:
    for lab_dir in (tree / "labs").glob("%s-*" % num):
        for src in lab_dir.glob("*.[ch]pp"):
            if re.search(r"^\s*// TASK %s\." % num, src.read_text(), re.M):
                return True
    return False
