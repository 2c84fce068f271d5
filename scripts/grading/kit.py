"""The student kit's transformation: the labs' TASK regions taken out.

In a lab's sources the parts students write are marked with one-line markers:

    // TASK 03.listen
    ...reference code...
    // KIT: const lab::Fd listen_fd = lab::todo<lab::Fd>("03.listen");
    // END TASK

In the kit the region becomes `// TODO(03.listen): see README.md, "Your turn"` (same
indentation) followed by its KIT lines, or by `lab::todo("03.listen");` when it has
none. The task's text is in the lab's handout, section "Your turn". Handout excerpts
(```cpp file=NAME) that quote a region's code are replaced by a pointer to the task.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

TASK = re.compile(r"^(\s*)// TASK (\d\d)\.([a-z0-9-]+)\s*$")
KIT = re.compile(r"^(\s*)// KIT: ?(.*)$")
END = re.compile(r"^\s*// END TASK\s*$")
OLD = re.compile(r"^\s*// (BEGIN SOLUTION|END SOLUTION|STUB:)")
LAB_FILE = re.compile(r"^labs/(\d\d)-[^/]+/[^/]+\.(cpp|hpp)$")
EXCERPT = re.compile(r"(?ms)^[ \t]*```(cpp[^\n]*)\n(.*?)^[ \t]*```[ \t]*$")


class KitError(Exception):
    pass


@dataclass
class Stripped:
    text: str
    secret: list[str] = field(default_factory=list)     # reference lines taken out
    ids: list[str] = field(default_factory=list)        # task ids, in order
    lines_of: dict[str, list[str]] = field(default_factory=dict)  # id -> its lines


def lab_of(path: str) -> str | None:
    m = LAB_FILE.match(path)
    return m.group(1) if m else None


def uses_old_markers(text: str) -> bool:
    return any(OLD.match(line) for line in text.split("\n"))


def strip_regions(text: str, path: str) -> Stripped:
    num = lab_of(path)
    lines = text.split("\n")
    result = Stripped("")
    out = []
    i = 0
    while i < len(lines):
        m = TASK.match(lines[i])
        if not m:
            if END.match(lines[i]) or KIT.match(lines[i]):
                raise KitError("%s:%d: %s outside a TASK region" % (path, i + 1, lines[i].strip()))
            if lines[i].lstrip().startswith("// TASK"):
                raise KitError("%s:%d: a TASK marker is `// TASK NN.name` (name: a-z, 0-9, -)"
                               % (path, i + 1))
            out.append(lines[i])
            i += 1
            continue
        indent, lab, name = m.group(1), m.group(2), m.group(3)
        task = "%s.%s" % (lab, name)
        if num is not None and lab != num:
            raise KitError("%s:%d: task %s in lab %s's file" % (path, i + 1, task, num))
        if task in result.ids:
            raise KitError("%s:%d: task %s twice" % (path, i + 1, task))
        start = i
        i += 1
        kit_lines, body = [], []
        while i < len(lines) and not END.match(lines[i]):
            if TASK.match(lines[i]):
                raise KitError("%s:%d: a TASK region inside task %s" % (path, i + 1, task))
            k = KIT.match(lines[i])
            if k:
                kit_lines.append(k.group(1) + k.group(2))
            else:
                body.append(lines[i])
            i += 1
        if i == len(lines):
            raise KitError("%s:%d: task %s has no // END TASK" % (path, start + 1, task))
        result.ids.append(task)
        result.secret += body
        result.lines_of[task] = body
        out.append('%s// TODO(%s): see README.md, "Your turn"' % (indent, task))
        out += kit_lines or ['%slab::todo("%s");' % (indent, task)]
        i += 1  # past END TASK
    result.text = "\n".join(out)
    return result


def significant(line: str) -> str:
    return line.strip()


COMMON_WORDS = {"auto", "bool", "break", "case", "char", "const", "constexpr", "continue",
                "default", "else", "errno", "false", "long", "nullptr", "return", "size_t",
                "sizeof", "ssize_t", "static_cast", "switch", "true", "unsigned", "void", "while"}


def distinctive(line: str) -> bool:
    """Lines worth hiding: not braces, comments, blank lines, nor lines made only of
    keywords and short names (`if (n == -1) {` is in every program, and no solution)."""
    s = line.strip()
    if len(s) < 12 or s.startswith("//"):
        return False
    words = re.findall(r"[A-Za-z_][A-Za-z0-9_]*", s.split("//", 1)[0])
    return any(len(w) >= 4 and w not in COMMON_WORDS for w in words)


def strip_excerpts(text: str, secret_of, default_dir: str, task_of) -> str:
    """Replaces each ```cpp file=NAME block that quotes a secret line by a pointer to
    the task. secret_of(path) -> set of secret lines; task_of(path, line) -> task id."""
    def replace(m):
        info, body = m.group(1), m.group(2)
        f = re.search(r"\bfile=(\S+)", info)
        name = f.group(1) if f else None  # without file=: checked against every lab
        key = (name if "/" in name else "%s/%s" % (default_dir, name)) if name else \
            ("%s/" % default_dir if default_dir.startswith("labs/") else None)
        secret = secret_of(key)
        hits = [significant(l) for l in body.split("\n")
                if distinctive(l) and significant(l) in secret]
        if not hits:
            return m.group(0)
        tasks = sorted({task_of(key, h) for h in hits} - {None})
        what = ", ".join("**%s**" % t for t in tasks) or "a task"
        where = "`%s`" % name.split("/")[-1] if name else "the lab's sources"
        return ('*(In the student kit this excerpt is yours to write: %s in "Your turn" '
                'below, and the `TODO(...)` comments in %s.)*' % (what, where))
    return EXCERPT.sub(replace, text)
