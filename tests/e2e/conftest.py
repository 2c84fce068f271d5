"""The end-to-end harness every lab's tests share.

A test file is named test_NN_name.py; it is marked `labNN` automatically (so
`make test LAB=NN` selects it) and its fixtures know which lab they drive:

    def test_echo(start, run):
        server = start("server", "--port", "0")          # waits for the ready line
        result = run("client", server.host, str(server.port), input=b"hi\\n")
        assert result.stdout == b"hi\\n"

Every program runs in its own process group and is stopped (SIGTERM, then SIGKILL for
the whole group) when the test ends, pass or fail. No test sleeps to wait for a program:
it waits, with a timeout, for a line the program prints.

LABS_BIN=DIR points the tests at another build (an instructor grading a student's
binaries); the default is build/ at the top of the repository.
"""

from __future__ import annotations

import fcntl
import os
import queue
import re
import select
import signal
import socket
import struct
import subprocess
import termios
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

# The shared tests and fault library: plain asserts there explain themselves as in a test.
pytest.register_assert_rewrite("echo_contract", "faults")

REPO = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("LABS_BIN") or REPO / "build").resolve()
READY = re.compile(r"^ready: (udp|tcp|unix|unix-dgram) (\S+)$")
STOP_WITHIN = 3.0  # seconds a test allows for a stop: the program has one, the rest is load

SANITIZER_REPORTS = (
    b"ERROR: AddressSanitizer",
    b"ERROR: LeakSanitizer",
    b"WARNING: ThreadSanitizer",
    b"runtime error:",
)
# How long a program may take to print its ready line, or a client to finish. Generous,
# because sanitizer builds and a loaded 2-core CI machine are slow; a healthy run never
# waits this long.
# LABS_READY_TIMEOUT shortens the first for a grader that expects hanging programs.
READY_TIMEOUT = float(os.environ.get("LABS_READY_TIMEOUT") or 10.0)
RUN_TIMEOUT = 20.0


# ---------------------------------------------------------------------------- lab lookup

def lab_dir(num: str) -> str:
    """'01' -> '01-udp-echo', from the folders under labs/."""
    for entry in sorted(os.listdir(REPO / "labs")):
        if entry.startswith(num + "-"):
            return entry
    raise LookupError("no lab %s under %s" % (num, REPO / "labs"))


def program_path(num: str, prog: str) -> Path:
    path = BIN / lab_dir(num) / prog
    if not os.access(path, os.X_OK):
        pytest.fail("%s is not built (looked for %s)" % (prog, path), pytrace=False)
    return path


def lab_of(module_name: str) -> str | None:
    m = re.match(r"test_(\d\d)_", module_name.rsplit(".", 1)[-1])
    return m.group(1) if m else None


def pytest_collection_modifyitems(config, items):
    for item in items:
        num = lab_of(item.module.__name__)
        if num:
            item.add_marker(getattr(pytest.mark, "lab" + num))


# ------------------------------------------------------------------------ addresses

@dataclass
class Address:
    """What a ready line announces: 'udp 127.0.0.1:40123', 'tcp [::1]:9', 'unix /p'."""

    proto: str
    text: str

    @property
    def is_unix(self) -> bool:
        return self.proto.startswith("unix")

    @property
    def host(self) -> str:
        host = self.text.rsplit(":", 1)[0]
        return host[1:-1] if host.startswith("[") else host

    @property
    def port(self) -> int:
        return int(self.text.rsplit(":", 1)[1])

    @property
    def family(self) -> int:
        if self.is_unix:
            return socket.AF_UNIX
        return socket.AF_INET6 if self.text.startswith("[") else socket.AF_INET

    @property
    def sockaddr(self):
        """The address in the form Python's socket module takes."""
        if self.is_unix:
            return "\0" + self.text[1:] if self.text.startswith("@") else self.text
        return (self.host, self.port)


def parse_ready(line: str) -> Address:
    m = READY.match(line)
    if not m:
        raise AssertionError("want a first line 'ready: PROTO ADDRESS', got %r" % line)
    return Address(m.group(1), m.group(2))


# ------------------------------------------------------------------------- programs

class Program:
    """One running lab program, in its own process group, with its output collected."""

    def __init__(self, argv, cwd=None, env=None, stdin=subprocess.PIPE, preexec=None,
                 pass_fds=()):
        self.argv = [str(a) for a in argv]
        self.proc = subprocess.Popen(
            self.argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=cwd, env=env, start_new_session=True, preexec_fn=preexec, pass_fds=pass_fds)
        self.pid = self.proc.pid
        self.lines: queue.Queue[bytes | None] = queue.Queue()
        self.stdout_lines: list[bytes] = []
        self._stderr = bytearray()
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for t in self._readers:
            t.start()
        self.address: Address | None = None

    def _read_stdout(self):
        for line in iter(self.proc.stdout.readline, b""):
            line = line.rstrip(b"\n")
            self.stdout_lines.append(line)
            self.lines.put(line)
        self.lines.put(None)  # end of output

    def _read_stderr(self):
        for chunk in iter(lambda: self.proc.stderr.read1(65536), b""):
            self._stderr += chunk

    def drain(self, timeout: float = 2.0) -> None:
        """Waits (at most `timeout` each) for the threads that read its output, so that
        stdout_lines and stderr hold everything a program that has exited wrote."""
        for t in self._readers:
            t.join(timeout=timeout)

    # -- output

    @property
    def stderr(self) -> str:
        return self._stderr.decode(errors="replace")

    def describe(self) -> str:
        return "%s (pid %d)\n  stdout so far: %r\n  stderr so far: %r" % (
            " ".join(self.argv), self.pid, self.stdout_lines[-10:], self.stderr[-2000:])

    def read_line(self, timeout: float = 5.0) -> bytes:
        """The next stdout line (without its newline); fails the test on timeout or EOF."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("no output line within %.1fs from %s" % (timeout, self.describe()))
        if line is None:
            self.lines.put(None)
            raise AssertionError("output ended (exit %s) from %s" % (self.proc.poll(), self.describe()))
        return line

    def expect(self, pattern, timeout: float = 5.0) -> re.Match:
        """Reads lines until one matches the regex `pattern` (bytes or str); returns the match."""
        if isinstance(pattern, str):
            pattern = pattern.encode()
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no line matching %r within %.1fs from %s"
                                     % (pattern, timeout, self.describe()))
            m = regex.search(self.read_line(left))
            if m:
                return m

    def no_line(self, within: float) -> None:
        """Asserts that no stdout line arrives within `within` seconds (for 'gets nothing')."""
        try:
            line = self.lines.get(timeout=within)
        except queue.Empty:
            return
        if line is None:
            self.lines.put(None)
            return
        raise AssertionError("unexpected line %r from %s" % (line, self.describe()))

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> Address:
        try:
            line = self.read_line(timeout).decode(errors="replace")
        except AssertionError as e:
            raise AssertionError("no ready line: %s" % e) from None
        self.address = parse_ready(line)
        return self.address

    # -- the ready line's address, for convenience

    @property
    def host(self) -> str:
        return self.address.host

    @property
    def port(self) -> int:
        return self.address.port

    @property
    def sockaddr(self):
        return self.address.sockaddr

    @property
    def family(self) -> int:
        return self.address.family

    # -- input and control

    def write(self, data: bytes) -> None:
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def close_stdin(self) -> None:
        if self.proc.stdin and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass

    def send_signal(self, signo=signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signo)

    def wait(self, timeout: float = 5.0) -> int:
        """Waits for exit; fails the test if the program is still running after `timeout`."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError("still running after %.1fs: %s" % (timeout, self.describe()))
        self.drain()
        return rc

    def stop(self, signo=signal.SIGTERM, timeout: float = 5.0) -> int:
        """Sends `signo` and waits for the exit status."""
        self.close_stdin()
        self.send_signal(signo)
        return self.wait(timeout)

    def kill_group(self) -> None:
        """The last resort: SIGKILL for the program and anything it forked."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass

    def sanitizer_report(self) -> str | None:
        for marker in SANITIZER_REPORTS:
            i = self._stderr.find(marker)
            if i >= 0:
                return self._stderr[max(0, i - 200): i + 3000].decode(errors="replace")
        return None


@dataclass
class Result:
    argv: list
    returncode: int
    stdout: bytes
    stderr: str
    seconds: float

    @property
    def lines(self) -> list[bytes]:
        return self.stdout.split(b"\n")[:-1] if self.stdout else []


class Lab:
    """Starts one lab's programs and remembers them, so each is stopped after the test."""

    def __init__(self, num: str, tmp_path: Path):
        self.num = num
        self.tmp_path = tmp_path
        self.programs: list[Program] = []

    def path(self, prog: str) -> Path:
        return program_path(self.num, prog)

    def start(self, prog: str, *args, ready: bool = True, cwd=None, **kw) -> Program:
        """Starts server or client with `args`; by default waits for its ready line."""
        p = Program([self.path(prog), *args], cwd=cwd or self.tmp_path, **kw)
        self.programs.append(p)
        if ready:
            p.wait_ready()
        return p

    def run(self, prog: str, *args, input: bytes = b"", timeout: float = RUN_TIMEOUT,
            cwd=None, env=None, pass_fds=()) -> Result:
        """Runs a program to completion with `input` on stdin; fails the test on timeout."""
        p = Program([self.path(prog), *args], cwd=cwd or self.tmp_path, env=env,
                    pass_fds=pass_fds)
        self.programs.append(p)
        began = time.monotonic()
        try:
            p.proc.stdin.write(input)
        except BrokenPipeError:
            pass
        p.close_stdin()
        rc = p.wait(timeout)
        return Result(p.argv, rc, b"".join(line + b"\n" for line in p.stdout_lines),
                      p.stderr, time.monotonic() - began)

    def cleanup(self) -> list[str]:
        """Stops everything; returns sanitizer reports found on any program's stderr."""
        reports = []
        for p in self.programs:
            if p.proc.poll() is None:
                p.close_stdin()
                p.send_signal(signal.SIGTERM)
                try:
                    p.proc.wait(3)
                except subprocess.TimeoutExpired:
                    pass
            p.kill_group()  # children of a forking server too
            p.drain()
            report = p.sanitizer_report()
            if report:
                reports.append("%s:\n%s" % (" ".join(p.argv), report))
        return reports


@pytest.fixture
def lab(request, tmp_path):
    num = lab_of(request.module.__name__)
    if num is None:
        pytest.fail("test module %s is not named test_NN_*.py" % request.module.__name__)
    runner = Lab(num, tmp_path)
    yield runner
    reports = runner.cleanup()
    if reports:
        pytest.fail("sanitizer report:\n" + "\n".join(reports), pytrace=False)


@pytest.fixture
def start(lab):
    return lab.start


@pytest.fixture
def run(lab):
    return lab.run


# --------------------------------------------------------------------- peers and /proc

def udp_socket(family=socket.AF_INET, timeout: float = 5.0, bind_host=None) -> socket.socket:
    """A UDP socket bound to an ephemeral loopback port, with a receive timeout."""
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    s.bind((bind_host or ("::1" if family == socket.AF_INET6 else "127.0.0.1"), 0))
    return s


def connect(address: Address, timeout: float = 5.0) -> socket.socket:
    """A stream socket connected to `address` (TCP over IPv4 or IPv6, or a Unix socket).
    A Unix connect() to a full listen queue fails at once with EAGAIN, where a TCP SYN
    would wait: it is retried until `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(address.family, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(address.sockaddr)
            return s
        except BlockingIOError:
            s.close()
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.02)


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(min(65536, size - len(data)))
        if not chunk:
            raise AssertionError("peer closed after %d of %d bytes" % (len(data), size))
        data += chunk
    return bytes(data)


def read_to_end(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything the peer sends until it closes its end."""
    sock.settimeout(timeout)
    data = bytearray()
    while chunk := sock.recv(65536):
        data += chunk
    return bytes(data)


def exchange(sock: socket.socket, payload: bytes, timeout: float = 10.0) -> bytes:
    """Writes `payload` from a thread while reading as many bytes back, as a real peer
    must: one that wrote everything before reading would deadlock on full buffers."""
    errors = []

    def write():
        try:
            sock.sendall(payload)
        except OSError as e:
            errors.append(e)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    echoed = recv_exactly(sock, len(payload))
    writer.join(timeout)
    assert not errors, errors
    return echoed


def roundtrip(address: Address, payload: bytes, timeout: float = 10.0) -> bytes:
    """A whole conversation: connects, writes `payload` while reading, half-closes when
    done writing (shutdown(SHUT_WR), as the labs' clients do), and returns everything the
    server sent until it closed."""
    with connect(address, timeout) as s:
        def write():
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        reply = read_to_end(s, timeout)
        writer.join(timeout)
        return reply


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.02, what: str = "condition"):
    """Polls `predicate` until it returns something true; fails the test on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


def open_fds(pid: int) -> int:
    return len(os.listdir("/proc/%d/fd" % pid))


def thread_count(pid: int) -> int:
    return len(os.listdir("/proc/%d/task" % pid))


def rss_kib(pid: int) -> int:
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the process (all its threads) so far."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_of(pid: int) -> list[int]:
    """Processes whose parent is `pid` (zombies included), from /proc."""
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(entry))
    return kids


def process_state(pid: int) -> str | None:
    """'R', 'S', 'Z' ... or None when the process is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def group_alive(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group `pgid`."""
    alive = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(entry))
    return alive


def accept_queue(address: Address) -> int:
    """Connections to a TCP listener that the kernel has completed and the server not yet
    accepted (the rx_queue of a LISTEN row in /proc/net/tcp). 0 for a Unix socket, whose
    queue /proc does not show."""
    if address.is_unix:
        return 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == address.port:
                    return int(fields[4].split(":")[1], 16)
    return 0


def sanitized(pid: int) -> bool:
    """Whether the program runs under AddressSanitizer (its memory use is then far larger)."""
    with open("/proc/%d/maps" % pid) as f:
        return "libasan" in f.read()


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_ipv6 = pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback (::1) here")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


# ------------------------------------------------------- test hosts (scripts/netlab)

NETLAB = REPO / "scripts" / "netlab"


class Netlab:
    """scripts/netlab with a namespace prefix of this test run's own."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.env = dict(os.environ, NETLAB_PREFIX=prefix)

    def __call__(self, *args, check=True):
        return subprocess.run([str(NETLAB), *args], env=self.env, capture_output=True,
                              timeout=60, check=check)

    def namespaces(self) -> list[str]:
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                             check=True).stdout
        return sorted(line.split()[0] for line in out.splitlines()
                      if line.startswith(self.prefix))

    def start(self, lab, host, prog, *args, ready=True) -> Program:
        """Starts a lab program on a netlab host, stopped by the harness like any other."""
        p = Program([NETLAB, "exec", host, lab.path(prog), *args], cwd=lab.tmp_path,
                    env=self.env)
        lab.programs.append(p)
        if ready:
            p.wait_ready()
        return p


@pytest.fixture(scope="module")
def netlab(request):
    """The test hosts of scripts/netlab, up for one test module and always taken down."""
    num = lab_of(request.module.__name__) or "00"
    net = Netlab("lab-%s%d-" % (chr(ord("a") + int(num) % 26), os.getpid()))
    try:
        net("up")
        yield net
    finally:
        net("down", check=False)  # even when up, or a test, failed


def none_arrive(receivers, within=1.0):
    """No receiver prints a line within `within` seconds (all waited out together)."""
    for i, receiver in enumerate(receivers):
        receiver.no_line(within if i == 0 else 0.05)


class Stalled:
    """A lab program whose stdout is a pipe that nobody reads after its first line: once
    the pipe's 64 KiB are full, each of its writes blocks."""

    def __init__(self, path, *args):
        self.out, write_end = os.pipe()
        self.proc = subprocess.Popen([str(path), *args], stdin=subprocess.DEVNULL,
                                     stdout=write_end, stderr=subprocess.PIPE,
                                     start_new_session=True)
        os.close(write_end)
        self.stderr = b""

    def first_line(self, timeout: float = 10.0) -> bytes:
        line = b""
        deadline = time.monotonic() + timeout
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            assert left > 0 and select.select([self.out], [], [], left)[0], "no first line"
            byte = os.read(self.out, 1)
            assert byte, "output ended before a first line"
            line += byte
        return line[:-1]

    def unread(self) -> int:
        """Bytes in the pipe that nobody has read."""
        return struct.unpack("i", fcntl.ioctl(self.out, termios.FIONREAD, b"\0" * 4))[0]

    def stops_in_time(self, signo=signal.SIGTERM) -> None:
        """Sends `signo`; the program must exit 0 within STOP_WITHIN seconds."""
        began = time.monotonic()
        self.proc.send_signal(signo)
        try:
            status = self.proc.wait(10)
        except subprocess.TimeoutExpired:
            raise AssertionError("still running 10 s after %s" % signo.name) from None
        took = time.monotonic() - began
        assert status == 0, "exit status %d" % status
        assert took < STOP_WITHIN, "stopped after %.1fs" % took

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)
        self.stderr = self.proc.stderr.read()
        self.proc.stderr.close()
        os.close(self.out)


@pytest.fixture
def stalled(lab):
    """Starts programs as Stalled; stops them (SIGKILL) and checks their stderr for a
    sanitizer report when the test ends."""
    started = []

    def start(prog, *args):
        started.append(Stalled(lab.path(prog), *args))
        return started[-1]

    yield start
    for program in started:
        program.close()
    reports = [p.stderr.decode(errors="replace") for p in started
               if any(marker in p.stderr for marker in SANITIZER_REPORTS)]
    if reports:
        pytest.fail("sanitizer report:\n" + "\n".join(reports), pytrace=False)
