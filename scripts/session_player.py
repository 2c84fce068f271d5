"""Plays a handout's "Run it by hand" session in real terminals and checks every screen.

A session is written in the handout as ```console terminal=N``` blocks (docs/conventions.md,
"Sessions"): `$ COMMAND` is typed into terminal N's shell, `> TEXT` into the program running
there, `^C` `^D` `^Z` `^\\` are keys, `...` stands for any number of lines, and every other
line is what that terminal must show next. The text the student reads is the text this
module plays: nothing is written twice.

Each terminal is a bash shell on a pseudo-terminal of its own, started inside a network
namespace made for the session (so the lab's own port is free and nothing leaks to the
machine's network), in a scratch directory that looks like the repository root: `build/`
holds the labs to test (LABS_BIN), `scripts/`, `labs/` and the rest point at the
repository. Programs can be wrapped (valgrind for make valgrind, strace for make trace),
and hooks see the namespace once it exists, each step before it is played, and the
namespace again once the terminals are closed (make trace captures packets with them).
Everything the session started, and the namespace, is gone when play() returns.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KEYS = {"^C": b"\x03", "^D": b"\x04", "^Z": b"\x1a", "^\\": b"\x1c"}
PLACEHOLDERS = {
    "<port>": r"\d{1,5}",
    "<pid>": r"\d+",
    "<n>": r"\d+",
    "<addr>": r"(?:\d{1,3}(?:\.\d{1,3}){3}|\[[0-9A-Za-z:.%]+\]):\d{1,5}",
    "<path>": r"\S+",
    "<any>": r".*?",
}
PLACEHOLDER = re.compile("|".join(re.escape(k) for k in PLACEHOLDERS))
# The shell reports each prompt with an invisible terminal sequence carrying $?.
PROMPT_MARK = re.compile(rb"\x1b\]1337;session-prompt;(\d+)\x07")
# bash's job notices ("[1] 4242", "[1]+  Done  nc ..."): shown when bash gets round to it,
# so they are skipped unless the handout expects one there.
JOB_NOTICE = re.compile(r"^\[\d+\][+-]?(\s+\d+|\s+(Done|Terminated|Killed|Exit \d+|Stopped|"
                        r"Interrupt|Hangup|Running).*)$")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


class SessionError(AssertionError):
    """The session did not go as the handout says."""


class SessionSkipped(Exception):
    """The session cannot be played here (no root, no namespaces); the reason is the text."""


# ------------------------------------------------------------------------------ parsing

@dataclass
class Step:
    terminal: int
    kind: str  # "command", "type", "key", "expect", "gap"
    text: str
    line: int  # in the handout, for messages

    def pattern(self) -> re.Pattern:
        parts, last = [], 0
        for m in PLACEHOLDER.finditer(self.text):
            parts.append(re.escape(self.text[last:m.start()]))
            parts.append(PLACEHOLDERS[m.group(0)])
            last = m.end()
        parts.append(re.escape(self.text[last:]))
        return re.compile("".join(parts).rstrip())


@dataclass
class Block:
    terminal: int
    steps: list[Step]
    narration: str  # the prose just before the block
    line: int


@dataclass
class Session:
    handout: Path
    blocks: list[Block]
    needs_root: bool = False


def section(text: str, title: str) -> tuple[str, int]:
    """The body of a '## title' section and the line number it starts at."""
    m = re.search(r"^## %s[^\n]*$(.*?)(?=^## |\Z)" % re.escape(title), text, re.M | re.S)
    if not m:
        return "", 0
    return m.group(1), text[:m.start(1)].count("\n") + 1


def parse(handout: Path, title: str = "Run it by hand") -> Session:
    """The session in the handout's section `title` (any `## ` heading that starts so)."""
    text = handout.read_text()
    body, first_line = section(text, title)
    lines = body.split("\n")
    blocks, prose = [], []
    needs_root = "<!-- session: needs root -->" in body
    i = 0
    while i < len(lines):
        m = re.match(r"^\s*```console\s+terminal=(\d)\s*$", lines[i])
        if not m:
            if re.match(r"^\s*```", lines[i]):  # another kind of block: skip it whole
                i += 1
                while i < len(lines) and not re.match(r"^\s*```\s*$", lines[i]):
                    i += 1
            elif lines[i].strip() and not lines[i].startswith("<!--"):
                prose.append(lines[i].strip())
            i += 1
            continue
        terminal, start = int(m.group(1)), i
        indent = len(lines[i]) - len(lines[i].lstrip())
        steps = []
        i += 1
        while i < len(lines) and not re.match(r"^\s*```\s*$", lines[i]):
            raw = lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i].strip()
            line_no = first_line + i
            stripped = raw.rstrip()
            if not stripped:
                pass  # blank lines are layout
            elif stripped.startswith("$ ") or stripped == "$":
                steps.append(Step(terminal, "command", stripped[2:], line_no))
            elif stripped.startswith("> ") or stripped == ">":
                steps.append(Step(terminal, "type", stripped[2:], line_no))
            elif stripped in KEYS:
                steps.append(Step(terminal, "key", stripped, line_no))
            elif stripped == "...":
                steps.append(Step(terminal, "gap", "", line_no))
            else:
                steps.append(Step(terminal, "expect", stripped, line_no))
            i += 1
        blocks.append(Block(terminal, steps, " ".join(prose), first_line + start))
        prose = []
        i += 1
    return Session(handout, blocks, needs_root)


# ----------------------------------------------------------------------------- terminals

class Terminal:
    """One bash shell on a pseudo-terminal, its screen collected line by line."""

    def __init__(self, number: int, argv: list[str], cwd: str, env: dict):
        self.number = number
        master, slave = os.openpty()
        import fcntl
        import struct
        import termios
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
        self.master = master
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, cwd=cwd,
                                     env=env, close_fds=True)
        os.close(slave)
        self.raw = bytearray()
        self.lines: list[str] = []   # complete lines, cleaned
        self.partial = ""
        self.cursor = 0              # the first line not yet matched
        self.prompts = 0             # prompts seen
        self.prompts_used = 0        # prompts a command has been typed at
        self.status = None           # $? at the last prompt
        self.busy_with = ""          # the last command typed
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        pending = b""
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                chunk = b""
            with self.changed:
                if not chunk:
                    self.changed.notify_all()
                    return
                self.raw += chunk
                pending += chunk
                # Prompt marks may be split across reads: handle only whole ones.
                while True:
                    m = PROMPT_MARK.search(pending)
                    if not m:
                        break
                    self._add_text(pending[:m.start()])
                    self.prompts += 1
                    self.status = int(m.group(1))
                    pending = pending[m.end():]
                keep = pending.rfind(b"\x1b")
                if keep >= 0 and not PROMPT_MARK.search(pending[keep:]) and len(pending) - keep < 64:
                    self._add_text(pending[:keep])
                    pending = pending[keep:]
                else:
                    self._add_text(pending)
                    pending = b""
                self.changed.notify_all()

    def _add_text(self, data: bytes):
        text = self.partial + data.decode(errors="replace")
        parts = text.split("\n")
        self.partial = parts.pop()
        for part in parts:
            line = ANSI.sub("", part.rstrip("\r"))
            if "\r" in line:  # a carriage return inside a line: the screen shows the last part
                line = line.rsplit("\r", 1)[1]
            self.lines.append(line.rstrip())

    def write(self, data: bytes):
        os.write(self.master, data)

    def wait(self, predicate, timeout: float):
        deadline = time.monotonic() + timeout
        with self.changed:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(left)
            return True

    def screen(self, last: int = 15) -> str:
        shown = self.lines[-last:] + ([self.partial] if self.partial else [])
        return "\n".join("    | " + line for line in shown) or "    | (nothing)"

    def close(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.kill()
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.close(self.master)
        except OSError:
            pass
        self.reader.join(2)


# ------------------------------------------------------------------------------- network

class Namespace:
    """A network namespace with its loopback up, for one session."""

    def __init__(self):
        self.name = "session-%s" % uuid.uuid4().hex[:10]
        self.holder = None
        if os.geteuid() == 0 and shutil.which("ip"):
            subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True)
            subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "up"], check=True,
                           capture_output=True)
            # nsenter, not `ip netns exec`: that would give each terminal a mount namespace
            # of its own, and the namespaces a session makes (netlab up, in one terminal)
            # would then be mounted where no other terminal sees them.
            self.prefix = ["nsenter", "--net=/run/netns/" + self.name]
            return
        # Without root: a user namespace of our own, in which we may make a network one.
        if not shutil.which("unshare") or not shutil.which("nsenter"):
            raise SessionSkipped("needs root or unshare/nsenter for a network namespace")
        self.holder = subprocess.Popen(["unshare", "--user", "--map-root-user", "--net", "sh",
                                        "-c", "ip link set lo up 2>/dev/null; exec sleep 86400"],
                                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE)
        time.sleep(0.05)
        if self.holder.poll() is not None:
            raise SessionSkipped("no network namespace: %s"
                                 % self.holder.stderr.read().decode(errors="replace").strip())
        self.prefix = ["nsenter", "--target", str(self.holder.pid), "--user", "--net",
                       "--preserve-credentials"]

    def inode(self) -> int:
        if self.holder:
            return os.stat("/proc/%d/ns/net" % self.holder.pid).st_ino
        return os.stat("/run/netns/%s" % self.name).st_ino

    def pids(self) -> list[int]:
        """Every process whose network namespace is this one (the holder aside)."""
        try:
            inode = self.inode()
        except OSError:
            return []
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or (self.holder and int(entry) == self.holder.pid):
                continue
            try:
                if os.stat("/proc/%s/ns/net" % entry).st_ino == inode:
                    found.append(int(entry))
            except OSError:
                continue
        return found

    def close(self):
        for _ in range(3):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)
        if self.holder:
            self.holder.kill()
            self.holder.wait()
        else:
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


# -------------------------------------------------------------------------------- player

@dataclass
class Player:
    """Plays one session. bin_dir is the build to run; wrap(prog_path) may return an argv
    prefix (valgrind ..., strace ...) to run each lab program under. The hooks, when given:
    on_namespace(namespace) once the namespace exists, before any terminal starts;
    on_step(step) as each step is played (a command once its terminal is ready for it,
    right before it is typed); on_close(namespace) once the terminals are closed, before
    the namespace goes (also when the session failed)."""

    bin_dir: Path
    timeout: float = 10.0
    narrate: bool = False
    wrap: object = None
    out: object = None  # where narration goes (print by default)
    on_namespace: object = None
    on_step: object = None
    on_close: object = None
    terminals: dict = field(default_factory=dict)
    netlab_prefix: str = ""
    work: object = None  # the scratch repository root, while a session plays

    def say(self, text=""):
        (self.out or print)(text)

    def play(self, handout: Path, title: str = "Run it by hand") -> None:
        session = parse(handout, title)
        if not session.blocks:
            raise SessionError("%s: '%s' has no ```console terminal=N``` blocks"
                               % (handout, title))
        if session.needs_root and os.geteuid() != 0:
            raise SessionSkipped("this session needs root (network namespaces of its own)")
        work = self.work = Path(tempfile.mkdtemp(prefix="session-"))
        namespace = None
        self.netlab_prefix = "s%s-" % uuid.uuid4().hex[:6]
        try:
            self._prepare(work)
            namespace = Namespace()
            if self.on_namespace:
                self.on_namespace(namespace)
            self._run(session, work, namespace)
        finally:
            for t in self.terminals.values():
                t.close()
            try:
                if namespace and self.on_close:
                    self.on_close(namespace)
            finally:
                if namespace:
                    namespace.close()
                if session.needs_root and (REPO / "scripts" / "netlab").exists():
                    subprocess.run([str(REPO / "scripts" / "netlab"), "down"],
                                   capture_output=True,
                                   env=dict(os.environ, NETLAB_PREFIX=self.netlab_prefix))
                self.terminals = {}
                shutil.rmtree(work, ignore_errors=True)

    # -- the scratch repository root

    def _prepare(self, work: Path):
        for entry in REPO.iterdir():
            if entry.name not in ("build", ".git"):
                (work / entry.name).symlink_to(entry)
        build = work / "build"
        build.mkdir()
        for entry in sorted(Path(self.bin_dir).iterdir()):
            if not entry.is_dir():
                continue
            if self.wrap is None:
                (build / entry.name).symlink_to(entry.resolve())
                continue
            (build / entry.name).mkdir()
            for prog in entry.iterdir():
                target = build / entry.name / prog.name
                prefix = self.wrap(prog) if prog.is_file() and os.access(prog, os.X_OK) else None
                if prefix:
                    quoted = " ".join("'%s'" % str(p).replace("'", "'\\''") for p in prefix)
                    target.write_text('#!/bin/bash\nexec %s "%s" "$@"\n' % (quoted, prog.resolve()))
                    target.chmod(0o755)
                else:
                    target.symlink_to(prog.resolve())

    # -- playing

    def _terminal(self, number: int, work: Path, namespace: Namespace) -> Terminal:
        if number in self.terminals:
            return self.terminals[number]
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(work), "TERM": "xterm", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            "PS1": "", "PS2": "",
            "PROMPT_COMMAND": 'printf "\\033]1337;session-prompt;%d\\007" $?',
            "NETLAB_PREFIX": self.netlab_prefix,
            "TMPDIR": str(work),
        }
        for name in ("ASAN_OPTIONS", "UBSAN_OPTIONS", "TSAN_OPTIONS", "LSAN_OPTIONS"):
            if name in os.environ:
                env[name] = os.environ[name]
        real_strace = shutil.which("strace")
        if "ASAN_OPTIONS" in env and real_strace:
            # LeakSanitizer stops the program with ptrace at exit, which a program already
            # traced by strace cannot do: under strace, the sanitizer build checks no leaks.
            # A script that execs strace keeps `$!` the pid of strace, as the pages expect.
            wrappers = work / ".sanitizer-bin"
            wrappers.mkdir(exist_ok=True)
            wrapper = wrappers / "strace"
            wrapper.write_text('#!/bin/sh\nASAN_OPTIONS="$ASAN_OPTIONS:detect_leaks=0" exec %s "$@"\n'
                               % shlex.quote(real_strace))
            wrapper.chmod(0o755)
            env["PATH"] = "%s:%s" % (wrappers, env["PATH"])
        argv = namespace.prefix + ["setsid", "-c", "-w", "bash", "--norc", "--noprofile",
                                   "--noediting", "-i"]
        t = Terminal(number, argv, str(work), env)
        self.terminals[number] = t
        # sudo is what a student without root types; here it only runs the command.
        t.write(b"stty -echo; sudo() { \"$@\"; }\n")
        if not t.wait(lambda: t.prompts >= 2, self.timeout):
            raise SessionError("terminal %d: the shell did not start:\n%s" % (number, t.screen()))
        t.prompts_used = t.prompts - 1  # the prompt on screen now is free to type at
        t.cursor = len(t.lines)
        return t

    def _run(self, session: Session, work: Path, namespace: Namespace):
        for block in session.blocks:
            t = self._terminal(block.terminal, work, namespace)
            if self.narrate:
                if block.narration:
                    self.say("  " + block.narration)
                self.say("  --- terminal %d" % block.terminal)
            gap = False
            for step in block.steps:
                if self.on_step and step.kind != "command":  # a command: once it is typed
                    self.on_step(step)
                where = "%s:%d" % (session.handout.relative_to(REPO)
                                   if session.handout.is_relative_to(REPO)
                                   else session.handout, step.line)
                if step.kind == "gap":
                    gap = True
                    continue
                if step.kind == "expect":
                    self._expect(t, step, gap, where)
                    gap = False
                    continue
                if gap:  # a gap before input: whatever is on screen so far is skipped
                    t.cursor = len(t.lines)
                    gap = False
                if step.kind == "command":
                    self._command(t, step, where)
                elif step.kind == "type":
                    t.write(step.text.encode() + b"\n")
                    self._show("> " + step.text)
                else:
                    t.write(KEYS[step.text])
                    self._show(step.text)

    def _show(self, text):
        if self.narrate:
            self.say("  | " + text)

    def _command(self, t: Terminal, step: Step, where: str):
        background = step.text.rstrip().endswith("&")
        if not t.wait(lambda: t.prompts > t.prompts_used, self.timeout):
            raise SessionError("%s: terminal %d is still busy with `%s` when the handout types "
                               "`%s`:\n%s" % (where, t.number, t.busy_with, step.text,
                                              t.screen()))
        t.prompts_used = t.prompts
        t.busy_with = step.text
        if self.on_step:
            self.on_step(step)
        t.write(step.text.encode() + b"\n")
        self._show("$ " + step.text)
        if background:  # its prompt comes back at once: the next command need not wait
            pass

    def _expect(self, t: Terminal, step: Step, gap: bool, where: str):
        pattern = step.pattern()
        deadline = time.monotonic() + self.timeout
        while True:
            with t.changed:
                while t.cursor < len(t.lines):
                    line = t.lines[t.cursor]
                    t.cursor += 1
                    if pattern.fullmatch(line):
                        self._show(line)
                        return
                    # Blank lines are layout on the screen as in the handout (bash prints
                    # one after a program that Ctrl-C ended, say).
                    if gap or not line.strip() or JOB_NOTICE.match(line):
                        continue
                    raise SessionError(
                        "%s: terminal %d shows\n      %r\n    where the handout says\n      %r\n"
                        "  terminal %d:\n%s" % (where, t.number, line, step.text, t.number,
                                                t.screen()))
                left = deadline - time.monotonic()
                if left <= 0 or (t.proc.poll() is not None and t.cursor >= len(t.lines)):
                    raise SessionError(
                        "%s: terminal %d never showed\n      %r\n    within %.0fs\n  terminal "
                        "%d:\n%s" % (where, t.number, step.text, self.timeout, t.number,
                                     t.screen()))
                t.changed.wait(min(left, 0.5))


def session_labs() -> list[str]:
    return sorted(d.name for d in (REPO / "labs").iterdir()
                  if re.match(r"\d\d-", d.name) and (d / "README.md").is_file())
