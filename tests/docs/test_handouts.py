"""The handouts stay true to the code.

For every labs/NN-name/README.md:
- it has the sections every handout has, in order;
- every ```cpp block names the file it is an excerpt of (```cpp file=server.cpp), and its
  lines still appear in that file, in order and contiguous (a line `// ...` elides);
- every command in "Run it by hand" that starts the lab's programs uses only options the
  program's --help lists.
"""

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("LABS_BIN") or REPO / "build").resolve()
SECTIONS = ["Goal", "Source notes", "Concepts", "Walk-through", "Run it by hand",
            "What you should see", "Limits", "Pitfalls", "Exercises", "Your turn",
            "Further reading", "Grading"]
TASK = re.compile(r"^\s*// TASK (\d\d\.[a-z0-9-]+)\s*$")
ELISION = "// ..."
SHELL_OPERATORS = {"|", "||", "&&", ";", "&", ">", ">>", "<", "2>", "2>&1"}

LABS = sorted(d.name for d in (REPO / "labs").iterdir() if re.match(r"\d\d-", d.name))


def lab_params():
    return [pytest.param(lab, marks=getattr(pytest.mark, "lab" + lab[:2]), id=lab) for lab in LABS]


def fenced_blocks(text):
    """Yields (info string, body lines, line number) for each fenced block."""
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        m = re.match(r"^\s*```(.*)$", lines[i])
        if m:
            info, start, body = m.group(1).strip(), i + 1, []
            i += 1
            while i < len(lines) and not re.match(r"^\s*```\s*$", lines[i]):
                body.append(lines[i])
                i += 1
            yield info, body, start
        i += 1


def section(text, title):
    m = re.search(r"^## %s\s*$(.*?)(?=^## |\Z)" % re.escape(title), text, re.M | re.S)
    return m.group(1) if m else ""


def significant(lines):
    return [line.strip() for line in lines if line.strip()]


def without_kit_markers(lines):
    """Source lines less the student kit's markers (`// TASK NN.name`, `// KIT: ...`,
    `// END TASK`): they are not code, and an excerpt may run across them."""
    return [line for line in lines
            if not (TASK.match(line) or line.strip().startswith("// KIT:")
                    or line.strip() == "// END TASK")]


def contains_run(haystack, needle):
    n = len(needle)
    return any(haystack[i:i + n] == needle for i in range(len(haystack) - n + 1))


def readme(lab):
    path = REPO / "labs" / lab / "README.md"
    if not path.is_file():
        pytest.fail("labs/%s/README.md is missing" % lab)
    return path.read_text()


@pytest.mark.parametrize("lab", lab_params())
def test_handout_has_every_section_in_order(lab):
    text = readme(lab)
    assert re.match(r"# Lab %s: \S" % lab[:2], text), "the first line is '# Lab %s: TITLE'" % lab[:2]
    found = re.findall(r"^## (.+?)\s*$", text, re.M)
    missing = [s for s in SECTIONS if s not in found]
    assert not missing, "sections missing: %s" % missing
    order = [found.index(s) for s in SECTIONS]
    assert order == sorted(order), "sections out of order: %s" % found


@pytest.mark.parametrize("lab", lab_params())
def test_excerpts_appear_in_their_files(lab):
    text = readme(lab)
    problems = []
    for info, body, line_no in fenced_blocks(text):
        words = info.split()
        if not words or words[0] not in ("cpp", "c++", "c"):
            continue
        names = [w[5:] for w in words if w.startswith("file=")]
        if not names:
            problems.append("line %d: a code block without file=NAME" % line_no)
            continue
        name = names[0]
        path = REPO / "labs" / lab / name
        if not path.is_file():
            path = REPO / name
        if not path.is_file():
            problems.append("line %d: file=%s does not exist" % (line_no, name))
            continue
        source = significant(without_kit_markers(path.read_text().split("\n")))
        chunk, chunks = [], []
        for line in significant(body):
            if line == ELISION:
                chunks.append(chunk)
                chunk = []
            else:
                chunk.append(line)
        chunks.append(chunk)
        position = 0
        for c in filter(None, chunks):
            found_at = next((i for i in range(position, len(source) - len(c) + 1)
                             if source[i:i + len(c)] == c), None)
            if found_at is None:
                where = "anywhere" if not contains_run(source, c) else "in this order"
                problems.append("line %d: excerpt of %s no longer appears %s:\n    %s"
                                % (line_no, name, where, "\n    ".join(c)))
                break
            position = found_at + len(c)
    assert not problems, "\n".join(problems)


def help_options(program):
    out = subprocess.run([program, "--help"], capture_output=True, timeout=10)
    return set(re.findall(rb"(?<![\w-])(--?[A-Za-z][\w-]*)", out.stdout))


@pytest.mark.parametrize("lab", lab_params())
def test_commands_by_hand_use_real_options(lab):
    text = section(readme(lab), "Run it by hand")
    assert text.strip(), "no 'Run it by hand' section"
    program = re.compile(r"^(?:\./)?build/%s/(server|client)$" % re.escape(lab))
    commands = 0
    problems = []
    for info, body, line_no in fenced_blocks(text):
        if info.split()[:1] not in (["sh"], ["bash"], ["console"]):
            continue
        for offset, line in enumerate(body):
            if info.startswith("console") and not line.strip().startswith("$ "):
                continue  # a session: only `$` lines are commands
            try:
                words = shlex.split(line.strip().removeprefix("$ "), comments=True)
            except ValueError:
                continue
            for i, word in enumerate(words):
                m = program.match(word)
                if not m:
                    continue
                commands += 1
                exe = BIN / lab / m.group(1)
                if not os.access(exe, os.X_OK):
                    pytest.fail("%s is not built" % exe)
                known = help_options(exe)
                for arg in words[i + 1:]:
                    if arg in SHELL_OPERATORS:
                        break
                    if arg.startswith("-") and arg != "-":
                        flag = arg.split("=", 1)[0].encode()
                        if flag not in known:
                            problems.append("%s: %s is not an option of %s"
                                            % (line.strip(), flag.decode(), m.group(1)))
    assert commands > 0, "'Run it by hand' starts none of the lab's programs"
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("lab", lab_params())
def test_handout_states_the_points_of_weights_toml(lab):
    import tomllib
    with open(REPO / "tests" / "weights.toml", "rb") as f:
        weights = tomllib.load(f)
    points = weights.get("lab", {}).get(lab[:2], {}).get("points", weights["default"]["points"])
    scored = [g for g in weights["group"] if g.get("scored", True)]
    total = sum(g["points"] for g in scored)
    text = section(readme(lab), "Grading")
    assert text, "no 'Grading' section"
    said = " ".join(text.split())
    assert "worth %g points" % points in said, said
    for g in scored:
        assert "%s %g" % (g["name"], points * g["points"] / total) in said, (g["name"], said)
    for g in weights["group"]:
        if g not in scored:  # named only to say it counts for no one
            assert not re.search(r"\b%s \d" % re.escape(g["name"]), said), (g["name"], said)


def tasks_in_code(lab):
    ids = []
    for path in sorted((REPO / "labs" / lab).iterdir()):
        if path.suffix in (".cpp", ".hpp"):
            ids += [m.group(1) for m in map(TASK.match, path.read_text().split("\n")) if m]
    return ids


@pytest.mark.parametrize("lab", lab_params())
def test_your_turn_lists_every_task(lab):
    """Each task region of the code (`// TASK NN.name`) has its entry in the handout's
    "Your turn" section (`- **NN.name**: ...`), and each entry names a task in the code."""
    in_code = tasks_in_code(lab)
    assert len(in_code) == len(set(in_code)), "a task id appears twice: %s" % in_code
    assert in_code, "no `// TASK %s.name` region in labs/%s" % (lab[:2], lab)
    assert all(i.startswith(lab[:2] + ".") for i in in_code), in_code
    text = section(readme(lab), "Your turn")
    in_handout = re.findall(r"^\s*[-*] \*\*(\d\d\.[a-z0-9-]+)\*\*:", text, re.M)
    assert sorted(in_handout) == sorted(set(in_handout)), "an entry appears twice"
    missing = [i for i in in_code if i not in in_handout]
    stale = [i for i in in_handout if i not in in_code]
    assert not missing, "tasks without an entry in 'Your turn': %s" % missing
    assert not stale, "'Your turn' entries for tasks the code does not have: %s" % stale


STEP = re.compile(r"//\s+(\d+)\.\s")  # "// 4. select() ..." or "...;  // 5. accept()"
MORE_STEPS = re.compile(r"\band (\d+)\.\s")  # "// 2. bind() and 3. listen()"


@pytest.mark.parametrize("lab", lab_params())
def test_steps_run_forward_in_every_file(lab):
    """The numbered steps of each program appear in increasing order, top to bottom, so
    that the file reads in the order of the handout's walk-through."""
    for path in sorted((REPO / "labs" / lab).iterdir()):
        if path.suffix not in (".cpp", ".hpp"):
            continue
        steps = []
        for number, line in enumerate(path.read_text().split("\n"), 1):
            found = STEP.search(line)
            if found:
                rest = line[found.end():]
                steps += [(int(n), number) for n in [found.group(1)] + MORE_STEPS.findall(rest)]
        for (a, at_a), (b, at_b) in zip(steps, steps[1:]):
            assert b > a, "%s: step %d (line %d) after step %d (line %d)" % (
                path.relative_to(REPO), b, at_b, a, at_a)
