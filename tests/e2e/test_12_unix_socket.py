"""Lab 12-unix-socket: stream and datagram Unix domain sockets, path and abstract names,
SO_PEERCRED, descriptor passing (SCM_RIGHTS), and a socket file handled safely.

What every echo server promises is tested in stream mode by the echo contract
(echo_contract.py); here, what this lab adds.
"""

import os
import re
import resource
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
import uuid

import pytest

from conftest import (SANITIZER_REPORTS, STOP_WITHIN, Address, connect, cpu_seconds, exchange,
                      needs_root, process_state, program_path, read_to_end, recv_exactly,
                      wait_until)
from echo_contract import EchoLab, echo_contract, nofile
from faults import (DGRAM_FAULTS, MIB, STREAM_FAULTS, dgram_echoes, dgram_fault_never_reads,
                    dgram_fault_oversized, dgram_fault_unbound_sender, dgram_fault_vanished_senders,
                    echoes, fault_descriptor_then_vanish, fault_name, fault_never_reads,
                    fault_pipe_descriptor, fault_queue_of_clients_that_left,
                    fault_too_many_descriptors, send_fds, survive)

MAX_NAME = 107  # sun_path is 108 bytes; a path needs its NUL, an abstract name its lead NUL
MAX_DATAGRAM = 65536  # the server's kBufferSize
AUTOBOUND = rb"@[0-9a-f]{5}"  # the name Linux gives a socket bound to no name (autobind)

LAB = EchoLab(
    concurrent=1,
    unix=True,
    idle_timeout=True,
    logs={"connected": r"^client pid=\d+ connected: uid=\d+ gid=\d+$",
          "bytes": r"^from pid=\d+: \d+ bytes$",
          "left": r"^client pid=\d+ left after \d+ bytes$",
          "reset": r"^client pid=\d+ (dropped: (Broken pipe|Connection reset by peer)"
                   r"|left after \d+ bytes)$",
          "stop": r"^stopping on SIGNAME$"},
    help_mentions={"server": [b"--path", b"--abstract", b"--dgram", b"--idle-timeout",
                              b"default 60"],
                   "client": [b"--path", b"--abstract", b"--dgram", b"--send-fd", b"--timeout",
                              b"default 10"]},
    bad_arguments=[
        ("server", ["--no-such-flag"]), ("server", ["--port", "70000"]),
        ("server", ["--port", "nine"]), ("server", ["extra"]), ("server", ["--path"]),
        ("server", ["--path", ""]), ("server", ["--abstract", ""]),
        ("server", ["--path", "a.sock", "--abstract", "b"]), ("server", ["--idle-timeout", "0"]),
        ("server", ["--idle-timeout", "soon"]), ("server", ["--idle-timeout", "-1"]),
        ("server", ["--dgram=yes"]),
        ("client", ["--no-such-flag"]), ("client", ["--port", "70000"]),
        ("client", ["--host", "127.0.0.1"]), ("client", ["--timeout", "-1"]),
        ("client", ["--timeout", "0"]), ("client", ["--send-fd", "f", "--dgram"]),
        ("client", ["--send-fd", ""]), ("client", ["--abstract", "x", "--path", "y"]),
    ],
)
globals().update(echo_contract(LAB))


def sock_path(tmp_path, name="s.sock"):
    return str(tmp_path / name)


def abstract_name():
    return "lab12-test-" + uuid.uuid4().hex[:12]


def unix_connect(path: str) -> socket.socket:
    """A stream socket connected to a socket path, or to an abstract name given as '@name'."""
    return connect(Address("unix", path))


def dgram_socket(tmp_path, name, timeout=5.0) -> socket.socket:
    """A datagram socket bound to a path of its own in `tmp_path`, where replies come."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    s.bind(str(tmp_path / name))
    return s


def env_with_tmpdir(tmpdir):
    env = dict(os.environ)
    env["TMPDIR"] = str(tmpdir)
    return env


def run_with_fd(prog, args, fd, timeout=20.0):
    """Runs a lab program with `fd` inherited (the harness's run() passes no descriptors)."""
    p = subprocess.run([str(program_path("12", prog)), *args], pass_fds=[fd],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    for marker in SANITIZER_REPORTS:
        assert marker not in p.stderr, p.stderr.decode(errors="replace")
    return p


def stop_time(program, signo=signal.SIGTERM) -> float:
    """Sends `signo` and returns how long the program took to exit (asserting status 0)."""
    began = time.monotonic()
    program.send_signal(signo)
    assert program.wait(timeout=10) == 0, program.describe()
    return time.monotonic() - began


def first_line_or_exit(program, timeout=20.0):
    """The program's first stdout line, or None if it exits without one."""
    return program.lines.get(timeout=timeout)


# ----------------------------------------------------------------- stream: the normal path

def test_default_path_is_lab12_sock_in_the_working_directory(start, run, tmp_path):
    """Without --path both programs use ./lab12.sock; the server creates it as a socket and
    removes it when stopped, leaving nothing else behind."""
    server = start("server")
    assert server.address.proto == "unix" and server.address.text == "./lab12.sock"
    assert stat.S_ISSOCK(os.lstat(tmp_path / "lab12.sock").st_mode)
    result = run("client", input=b"default\n")
    assert result.stdout == b"default\n"
    assert server.stop() == 0
    assert server.stdout_lines[-1] == b"stopping on SIGTERM"
    assert list(tmp_path.iterdir()) == []


def test_quiet_server_logs_nothing(start, run, tmp_path):
    """--quiet: the ready line, then nothing."""
    path = sock_path(tmp_path)
    server = start("server", "--path", path, "--quiet")
    assert run("client", "--path", path, input=b"x\n").stdout == b"x\n"
    assert server.stop() == 0
    assert server.stdout_lines == [b"ready: unix " + path.encode()]


def test_client_reads_while_it_writes_a_16_mib_line(start, run, tmp_path):
    """One line of 16 MiB, far more than both socket buffers hold: the client sends it while
    it reads the echo, so it comes back whole instead of both sides waiting for ever."""
    path = sock_path(tmp_path)
    start("server", "--path", path, "--quiet")
    line = b"a" * (16 * MIB) + b"\n"
    result = run("client", "--path", path, input=line, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == line


def test_python_peer_and_socat(start, tmp_path):
    """Any stream peer is served: Python's socket module, and socat."""
    path = sock_path(tmp_path)
    server = start("server", "--path", path)
    with unix_connect(path) as s:
        assert exchange(s, b"from python\n") == b"from python\n"
    server.expect(r"^client pid=%d left after 12 bytes$" % os.getpid())
    out = subprocess.run(["socat", "-t", "5", "-", "UNIX-CONNECT:" + path], input=b"socat\n",
                         capture_output=True, timeout=20)
    assert (out.returncode, out.stdout) == (0, b"socat\n"), out.stderr


# ----------------------------------------------------------------- SO_PEERCRED

def test_peercred_logs_the_clients_pid_uid_gid(start, tmp_path):
    """SO_PEERCRED: the server logs the lab client's own pid, uid and gid, and its leave."""
    path = sock_path(tmp_path)
    server = start("server", "--path", path)
    client = start("client", "--path", path, ready=False)
    client.write(b"who am i\n")
    assert client.read_line() == b"who am i"
    server.expect(r"^client pid=%d connected: uid=%d gid=%d$"
                  % (client.pid, os.getuid(), os.getgid()))
    server.expect(r"^from pid=%d: 9 bytes$" % client.pid)
    client.close_stdin()
    assert client.wait() == 0
    server.expect(r"^client pid=%d left after 9 bytes$" % client.pid)


def test_peercred_of_a_python_peer(start, tmp_path):
    """SO_PEERCRED names any peer, a Python socket too: the test's own pid, uid and gid."""
    path = sock_path(tmp_path)
    server = start("server", "--path", path)
    with unix_connect(path) as s:
        s.sendall(b"x")
        assert recv_exactly(s, 1) == b"x"
    server.expect(r"^client pid=%d connected: uid=%d gid=%d$"
                  % (os.getpid(), os.getuid(), os.getgid()))


# ----------------------------------------------------------------- datagram mode

def test_dgram_two_clients_each_get_their_own_replies(start, tmp_path):
    """--dgram: each client binds a name of its own, which Linux picks (autobind: an
    abstract name such as @0001f), so that each gets its own replies; nothing is left in
    TMPDIR or the working directory."""
    path = sock_path(tmp_path)
    server = start("server", "--path", path, "--dgram")
    assert server.address.proto == "unix-dgram" and server.address.text == path
    private = tmp_path / "tmpdir"
    private.mkdir()
    env = env_with_tmpdir(private)
    a = start("client", "--path", path, "--dgram", ready=False, env=env)
    b = start("client", "--path", path, "--dgram", ready=False, env=env)
    for i in range(3):
        a.write(b"from a %d\n" % i)
        b.write(b"from b %d\n" % i)
        assert a.read_line() == b"from a %d" % i
        assert b.read_line() == b"from b %d" % i
    senders = {server.expect(rb"^from (" + AUTOBOUND + rb"): 8 bytes$").group(1)
               for _ in range(6)}
    assert len(senders) == 2
    a.close_stdin()
    b.close_stdin()
    assert a.wait() == 0 and b.wait() == 0
    assert list(private.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.sock", "tmpdir"]


def test_dgram_empty_line_is_an_empty_datagram(start, run, tmp_path):
    """--dgram: an empty line is an empty datagram, echoed as one; a NUL passes."""
    path = sock_path(tmp_path)
    server = start("server", "--path", path, "--dgram")
    result = run("client", "--path", path, "--dgram", input=b"a\n\nb\x00c\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"a\n\nb\x00c\n"
    server.expect(r": 0 bytes$")


def test_dgram_python_peer_socat_and_an_unbound_sender(start, tmp_path):
    """The datagram server replies to any bound peer (Python, socat) and logs a sender
    without an address as unnamed, which it cannot answer."""
    path = sock_path(tmp_path)
    server = start("server", "--path", path, "--dgram")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as unbound:
        unbound.sendto(b"no return address", path)
    server.expect(r"^from \(unnamed\): 17 bytes$")
    server.expect(r"^cannot reply to \(unnamed\): the sender did not bind a name$")
    with dgram_socket(tmp_path, "peer.sock") as s:
        s.sendto(b"named", path)
        assert s.recvfrom(100) == (b"named", path)
    server.expect(r"^from %s: 5 bytes$" % str(tmp_path / "peer.sock"))
    out = subprocess.run(["socat", "-t", "2", "-", "UNIX-SENDTO:%s,bind=%s"
                          % (path, tmp_path / "socat.sock")], input=b"via socat\n",
                         capture_output=True, timeout=20)
    assert (out.returncode, out.stdout) == (0, b"via socat\n"), out.stderr


def test_dgram_client_gives_up_when_no_reply(start, run, tmp_path):
    """A datagram over the server's limit is dropped, not echoed; the client gives up after
    --timeout and exits 1."""
    path = sock_path(tmp_path)
    server = start("server", "--path", path, "--dgram")
    big = b"x" * (MAX_DATAGRAM + 1) + b"\n"  # over the server's limit: dropped, not echoed
    result = run("client", "--path", path, "--dgram", "--timeout", "0.5", input=big)
    assert result.returncode == 1
    assert "client: no reply from %s within 0.5s" % path in result.stderr
    server.expect(r"^from %s: 65537 bytes, more than 65536; dropped$" % AUTOBOUND.decode())


def test_dgram_peer_name_is_escaped_in_the_log(start, tmp_path):
    """A peer chooses its own name: one with a newline, a forged ready line and an escape
    sequence that retitles a terminal is logged on one line, every control byte escaped."""
    name = abstract_name()
    server = start("server", "--abstract", name, "--dgram")
    evil = "\0x\nready: tcp 6.6.6.6:66\n\x1b]0;owned\x07"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(evil)
        s.settimeout(5)
        s.sendto(b"hi", "\0" + name)
        assert s.recv(10) == b"hi"
    server.expect(re.escape(r"from @x\nready: tcp 6.6.6.6:66\n\x1b]0;owned\x07: 2 bytes"))
    assert server.stop() == 0
    assert len(server.stdout_lines) == 3, server.stdout_lines  # ready, from, stopping
    assert not any(b"\x1b" in line or b"\x07" in line for line in server.stdout_lines)
    # A path with a newline: escaped in the ready line and in an error line alike.
    odd = str(tmp_path / "a\nready:\x1b[2Kb.sock")
    server = start("server", "--path", odd, ready=False)
    assert server.read_line() == b"ready: unix " + str(tmp_path).encode() + rb"/a\nready:\x1b[2Kb.sock"
    assert server.stop() == 0
    server = start("server", "--path", str(tmp_path / "no\ndir" / "s.sock"), ready=False)
    assert server.wait() == 1
    assert server.stderr.count("\n") == 1 and "no\\ndir" in server.stderr, server.stderr


# ----------------------------------------------------------------- abstract names

def test_abstract_stream(start, run, tmp_path):
    """--abstract NAME: a stream socket with no file anywhere, reached by the lab's client and
    by Python."""
    name = abstract_name()
    server = start("server", "--abstract", name)
    assert server.address.text == "@" + name
    result = run("client", "--abstract", name, input=b"abstract\n")
    assert result.stdout == b"abstract\n"
    assert list(tmp_path.iterdir()) == []  # no file anywhere: the name lives in the kernel
    with unix_connect("\0" + name) as s:
        s.sendall(b"py\n")
        assert recv_exactly(s, 3) == b"py\n"
    assert server.stop() == 0


def test_abstract_dgram(start, run, tmp_path):
    """--abstract NAME --dgram: the datagram echo works on an abstract name."""
    name = abstract_name()
    server = start("server", "--abstract", name, "--dgram")
    assert server.address.proto == "unix-dgram" and server.address.text == "@" + name
    private = tmp_path / "tmpdir"
    private.mkdir()
    result = run("client", "--abstract", name, "--dgram", input=b"one\ntwo\n",
                 env=env_with_tmpdir(private))
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"one\ntwo\n"
    assert list(private.iterdir()) == []


def test_abstract_name_is_not_a_path(start, run, tmp_path):
    """An abstract name given as --path is a file that does not exist."""
    name = abstract_name()
    start("server", "--abstract", name)
    result = run("client", "--path", name, input=b"x\n")  # a file of that name: none
    assert result.returncode == 1
    assert "connect %s: No such file or directory" % name in result.stderr


# ----------------------------------------------------------------- --send-fd (SCM_RIGHTS)

def test_send_fd_of_a_file_the_server_cannot_open_by_name(start, tmp_path):
    """The file is unlinked before the client even starts: it has no name left. The client
    reaches it through the descriptor it inherited; the server only through the one passed."""
    path = sock_path(tmp_path)
    server = start("server", "--path", path)
    content = b"secret\x00bytes\n" + bytes(range(256)) * 300
    secret = tmp_path / "secret.bin"
    secret.write_bytes(content)
    fd = os.open(secret, os.O_RDONLY)
    try:
        os.unlink(secret)
        p = run_with_fd("client", ["--path", path, "--send-fd", "/dev/fd/%d" % fd], fd)
    finally:
        os.close(fd)
    assert p.returncode == 0, p.stderr
    assert p.stdout == content
    server.expect(r"^from pid=\d+: 1 bytes and 1 descriptor\(s\)$")
    server.expect(r"^sent %d bytes of the passed file to pid=\d+$" % len(content))


def test_send_fd_of_a_file_in_an_unreadable_directory(start, run, tmp_path):
    """--send-fd: the server reads a file through the passed descriptor, though it cannot reach
    it by name."""
    path = sock_path(tmp_path)
    start("server", "--path", path)
    vault = tmp_path / "vault"
    vault.mkdir()
    (vault / "note.txt").write_bytes(b"behind a locked door\n")
    fd = os.open(vault / "note.txt", os.O_RDONLY)
    try:
        os.chmod(vault, 0)  # nobody but root can look inside by name now
        if os.geteuid() != 0:
            with pytest.raises(PermissionError):
                open(vault / "note.txt", "rb")
        p = run_with_fd("client", ["--path", path, "--send-fd", "/dev/fd/%d" % fd], fd)
    finally:
        os.chmod(vault, 0o700)
        os.close(fd)
    assert p.returncode == 0, p.stderr.decode()
    assert p.stdout == b"behind a locked door\n"


def test_send_fd_of_an_ordinary_file_and_an_empty_one(start, run, tmp_path):
    """--send-fd of an ordinary file prints its content; of an empty file, nothing."""
    path = sock_path(tmp_path)
    start("server", "--path", path)
    (tmp_path / "f.txt").write_bytes(b"plain\n")
    (tmp_path / "empty").write_bytes(b"")
    result = run("client", "--path", path, "--send-fd", "f.txt")
    assert (result.returncode, result.stdout) == (0, b"plain\n"), result.stderr
    result = run("client", "--path", path, "--send-fd", "empty")
    assert (result.returncode, result.stdout) == (0, b""), result.stderr


def test_send_fd_leaves_the_clients_offset_alone(start, tmp_path):
    """The passed descriptor shares its file offset with the client's: the server reads with
    pread() at offsets of its own, from the start, and the client's offset stays put."""
    path = sock_path(tmp_path)
    start("server", "--path", path)
    (tmp_path / "f.txt").write_bytes(b"0123456789")
    fd = os.open(tmp_path / "f.txt", os.O_RDONLY)
    try:
        os.lseek(fd, 4, os.SEEK_SET)
        p = run_with_fd("client", ["--path", path, "--send-fd", "/dev/fd/%d" % fd], fd)
        assert os.lseek(fd, 0, os.SEEK_CUR) == 4
    finally:
        os.close(fd)
    assert (p.returncode, p.stdout) == (0, b"0123456789"), p.stderr


def test_send_fd_missing_file_exits_1(run, tmp_path):
    """--send-fd of a missing file: one error line and status 1."""
    result = run("client", "--path", sock_path(tmp_path), "--send-fd", "no-such-file")
    assert result.returncode == 1
    assert "client: open no-such-file: No such file or directory" in result.stderr


def test_send_fd_larger_than_the_limit_is_reported(start, run, tmp_path):
    """A passed file larger than the server's limit: it sends the first MiB, the client says how
    much is missing and exits 1."""
    path = sock_path(tmp_path)
    server = start("server", "--path", path)
    (tmp_path / "big").write_bytes((b"b" * 1023 + b"\n") * 1024 + b"0123456789")
    result = run("client", "--path", path, "--send-fd", "big")
    assert result.returncode == 1
    assert len(result.stdout) == MIB
    assert "got %d bytes back; big has %d" % (MIB, MIB + 10) in result.stderr
    server.expect(r"^sent %d bytes" % MIB)


def test_passed_pipe_and_extra_descriptors_are_refused_and_closed(start, tmp_path):
    """The server logs what it refuses: a pipe (pread() says ESPIPE rather than block),
    descriptors beyond the four it takes (closed by the kernel); none stays open."""
    path = sock_path(tmp_path)
    server = start("server", "--path", path)
    fds = len(os.listdir("/proc/%d/fd" % server.pid))
    fault_pipe_descriptor(server)
    server.expect(r"^refused a descriptor from pid=\d+: Illegal seek$")
    fault_too_many_descriptors(server)
    server.expect(r"^client pid=\d+: too many descriptors; extras closed$")
    wait_until(lambda: len(os.listdir("/proc/%d/fd" % server.pid)) == fds, what="fds closed")


# ----------------------------------------------------------------- the client's timeouts

def test_client_timeout_against_a_silent_server(run, tmp_path):
    """A server that accepts and never answers: the stream client, --send-fd and --dgram
    each give up after --timeout, say so and exit 1, instead of waiting for ever."""
    path = sock_path(tmp_path)
    (tmp_path / "f.txt").write_bytes(b"never sent back\n")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
        silent.bind(path)
        silent.listen()
        for args in ([], ["--send-fd", "f.txt"]):
            result = run("client", "--path", path, "--timeout", "0.5", *args, input=b"hi\n")
            assert result.returncode == 1, args
            assert result.stderr == "client: no reply from %s within 0.5s\n" % path, args
            assert result.seconds < 5, args
    os.unlink(path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as silent:
        silent.bind(path)
        result = run("client", "--path", path, "--dgram", "--timeout", "0.5", input=b"hi\n")
        assert result.returncode == 1
        assert result.stderr == "client: no reply from %s within 0.5s\n" % path


@pytest.mark.parametrize("mode", [[], ["--dgram"]], ids=["stream", "dgram"])
@pytest.mark.parametrize("signo", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_client_stops_on_a_signal_while_waiting_on_stdin(start, tmp_path, mode, signo):
    """A client waiting for input (a student who has not typed yet) stops on SIGINT or
    SIGTERM, at once and quietly, with status 1 (as every echo client: it stopped before
    the end of its input)."""
    path = sock_path(tmp_path)
    start("server", "--path", path, *mode)
    client = start("client", "--path", path, *mode, ready=False)
    client.write(b"first\n")
    assert client.read_line() == b"first"
    wait_until(lambda: process_state(client.pid) == "S", what="the client asleep")
    began = time.monotonic()
    client.send_signal(signo)
    assert client.wait(timeout=10) == 1
    assert time.monotonic() - began < STOP_WITHIN
    assert client.stderr == ""


# ----------------------------------------------------------------- the socket file

def test_socket_file_is_created_0600_whatever_the_umask(start, tmp_path):
    """The socket file is created 0600, even under umask 0."""
    path = sock_path(tmp_path)
    start("server", "--path", path, preexec=lambda: os.umask(0))
    mode = os.lstat(path).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600


@needs_root
def test_permissions_keep_other_users_out(start):
    """Connecting needs write permission on the socket file: 0600 shuts out everyone but
    the owner; opening it up with chmod lets them in."""
    probe = ("import socket,sys\n"
             "s = socket.socket(socket.AF_UNIX)\n"
             "try:\n    s.connect(sys.argv[1]); print('connected')\n"
             "except OSError as e:\n    print(e.strerror)\n")
    # tmp_path's parents are 0700; another user needs a directory it may enter.
    shared = tempfile.mkdtemp(prefix="lab12-perm-")
    try:
        os.chmod(shared, 0o755)
        path = os.path.join(shared, "s.sock")
        start("server", "--path", path)

        def connect_as_nobody():
            return subprocess.run(["/usr/bin/python3", "-c", probe, path], user=65534,
                                  group=65534, capture_output=True, timeout=20).stdout

        assert connect_as_nobody() == b"Permission denied\n"
        os.chmod(path, 0o666)
        assert connect_as_nobody() == b"connected\n"
    finally:
        for entry in os.listdir(shared):
            os.unlink(os.path.join(shared, entry))
        os.rmdir(shared)


@pytest.mark.parametrize("signo", [signal.SIGTERM, signal.SIGINT])
def test_path_removed_on_signal(start, tmp_path, signo):
    """A stopped server removes its socket file: stream or datagram, idle or with a
    client connected; the file is gone by the time it logs 'stopping on SIGTERM'."""
    path = sock_path(tmp_path)
    server = start("server", "--path", path)
    assert os.path.exists(path)
    assert server.stop(signo) == 0
    assert not os.path.exists(path)
    server_dgram = start("server", "--path", path, "--dgram")
    assert server_dgram.stop(signo) == 0
    assert not os.path.exists(path)
    server = start("server", "--path", path)
    with unix_connect(path) as s:
        s.sendall(b"hold\n")
        assert recv_exactly(s, 5) == b"hold\n"
        server.send_signal(signo)  # blocked in recvmsg() on this client: EINTR, then out
        server.expect("^stopping on %s$" % signo.name)
        assert not os.path.exists(path)  # gone before the server says it is stopping
        assert server.wait() == 0


def test_a_replaced_socket_file_is_not_removed(start, tmp_path):
    """The server removes its socket file only if it is still its own: a file put at the
    path since (here another socket) stays when the server stops."""
    path = sock_path(tmp_path)
    server = start("server", "--path", path)
    os.unlink(path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as newcomer:
        newcomer.bind(path)
        inode = os.lstat(path).st_ino
        assert server.stop() == 0
        assert os.lstat(path).st_ino == inode


def test_stale_socket_is_removed_and_reused(start, run, tmp_path):
    """A socket file left by a crashed server is removed, said so, and bound again."""
    path = sock_path(tmp_path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as crashed:
        crashed.bind(path)  # closing does not remove the file: a crashed server's leftover
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    server = start("server", "--path", path)
    server.expect(r"^removed a stale socket file at %s$" % path)
    assert run("client", "--path", path, input=b"fresh\n").stdout == b"fresh\n"


@pytest.mark.parametrize("mode", [[], ["--dgram"]], ids=["stream", "dgram"])
def test_servers_started_together_on_a_stale_path_one_wins(start, tmp_path, mode):
    """Fifty times, two servers start at the same moment on a stale socket file: exactly
    one becomes ready; the other exits 1 with 'Address already in use', never ready (the
    lock on the directory lets one at a time probe, unlink and bind)."""
    path = sock_path(tmp_path)
    for attempt in range(50):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as crashed:
            crashed.bind(path)  # stale: nobody listens on it once closed
        pair = [start("server", "--path", path, "--quiet", *mode, ready=False)
                for _ in range(2)]
        firsts = [first_line_or_exit(p) for p in pair]
        ready = [p for p, line in zip(pair, firsts) if line and line.startswith(b"ready: ")]
        assert len(ready) == 1, (attempt, firsts, [p.stderr for p in pair])
        loser = pair[1 - pair.index(ready[0])]
        assert loser.wait() == 1
        assert loser.stderr == "server: bind %s: Address already in use\n" % path
        if not mode:
            assert exchange(unix_connect(path), b"winner\n") == b"winner\n"
        assert ready[0].stop() == 0
        assert not os.path.exists(path)


def test_a_second_server_in_the_same_directory_is_not_held_up(start, run, tmp_path):
    """The directory is locked only while a server starts: a second server on another path
    in the same directory starts and serves while the first runs, and no lock file is left."""
    first = start("server", "--path", sock_path(tmp_path, "a.sock"))
    second = start("server", "--path", sock_path(tmp_path, "b.sock"), "--dgram")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.sock", "b.sock"]
    assert first.stop() == 0 and second.stop() == 0
    assert list(tmp_path.iterdir()) == []


def test_live_servers_path_is_not_stolen(start, run, tmp_path):
    """A second server, stream or datagram, on a live server's path exits 1 with 'Address
    already in use' and leaves the file alone."""
    path = sock_path(tmp_path)
    first = start("server", "--path", path)
    inode = os.lstat(path).st_ino
    for mode in ([], ["--dgram"]):
        second = run("server", "--path", path, *mode)
        assert second.returncode == 1
        assert second.stderr == "server: bind %s: Address already in use\n" % path
        assert second.stdout == b""  # never ready
    assert os.lstat(path).st_ino == inode
    assert run("client", "--path", path, input=b"still mine\n").stdout == b"still mine\n"
    assert first.proc.poll() is None


def test_live_abstract_name_is_not_stolen(start, run):
    """A second server on a live abstract name exits 1 with 'Address already in use'."""
    name = abstract_name()
    start("server", "--abstract", name)
    second = run("server", "--abstract", name)
    assert second.returncode == 1
    assert "bind @%s: Address already in use" % name in second.stderr


@pytest.mark.parametrize("kind", ["regular file", "directory", "symlink"])
def test_something_else_at_the_path_is_left_alone(run, tmp_path, kind):
    """A regular file, a directory or a symlink at the path is no stale socket: the server exits
    1 and touches nothing."""
    path = tmp_path / "s.sock"
    if kind == "regular file":
        path.write_bytes(b"precious\n")
    elif kind == "directory":
        path.mkdir()
        (path / "inside").write_bytes(b"precious\n")
    else:
        (tmp_path / "target").write_bytes(b"precious\n")
        path.symlink_to(tmp_path / "target")
    before = os.lstat(path)
    result = run("server", "--path", str(path))
    assert result.returncode == 1
    assert "server: bind %s: Address already in use (not a socket; left alone)" % path \
        in result.stderr
    after = os.lstat(path)
    assert (after.st_ino, after.st_mode, after.st_mtime_ns) == \
        (before.st_ino, before.st_mode, before.st_mtime_ns)
    if kind == "regular file":
        assert path.read_bytes() == b"precious\n"
    elif kind == "directory":
        assert (path / "inside").read_bytes() == b"precious\n"
    else:
        assert (tmp_path / "target").read_bytes() == b"precious\n"


def test_longest_path_fits_and_one_byte_more_is_refused(start, run, tmp_path):
    """A path of 107 bytes works; one of 108 is refused with status 2 by both programs, never
    truncated and bound."""
    prefix = str(tmp_path) + "/"
    longest = prefix + "a" * (MAX_NAME - len(prefix))
    assert len(longest) == MAX_NAME
    server = start("server", "--path", longest)
    assert server.address.text == longest
    assert run("client", "--path", longest, input=b"fits\n").stdout == b"fits\n"
    assert server.stop() == 0
    too_long = longest + "b"
    for prog in ("server", "client"):
        result = run(prog, "--path", too_long)
        assert result.returncode == 2, prog
        assert "socket path is 108 bytes; sun_path holds at most 107" in result.stderr
        assert "usage:" in result.stderr
    assert not os.path.exists(too_long)  # refused, not truncated to 107 bytes and bound
    assert not os.path.exists(too_long[:-1])


def test_abstract_name_too_long_is_refused(run):
    """An abstract name of 108 bytes is refused with status 2."""
    result = run("server", "--abstract", "n" * (MAX_NAME + 1))
    assert result.returncode == 2
    assert "abstract name is 108 bytes; sun_path holds at most 107" in result.stderr


# ----------------------------------------------------------------- errors and arguments

def test_client_without_a_server(run, tmp_path):
    """The client with no socket file exits 1 with 'No such file or directory'; the datagram
    client with a dead one, with 'Connection refused', leaving nothing behind."""
    path = sock_path(tmp_path)
    result = run("client", "--path", path, input=b"x\n")
    assert result.returncode == 1
    assert result.stderr == "client: connect %s: No such file or directory\n" % path
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as gone:
        gone.bind(path)  # a file, but nobody bound to it once closed
    private = tmp_path / "tmpdir"
    private.mkdir()
    result = run("client", "--path", path, "--dgram", input=b"x\n", env=env_with_tmpdir(private))
    assert result.returncode == 1
    assert result.stderr == "client: connect %s: Connection refused\n" % path
    assert list(private.iterdir()) == []


# ----------------------------------------------------------------- timeouts and stopping

def test_idle_client_is_dropped_and_the_next_served(start, tmp_path):
    """A client that says nothing is dropped after --idle-timeout, and the client waiting
    behind it in the backlog is served."""
    path = sock_path(tmp_path)
    server = start("server", "--path", path, "--idle-timeout", "0.5")
    with unix_connect(path) as silent, unix_connect(path) as waiting:
        waiting.sendall(b"behind\n")
        server.expect(r"^client pid=%d dropped: idle for 0.5s$" % os.getpid(), timeout=10)
        assert recv_exactly(waiting, 7) == b"behind\n"
        assert read_to_end(silent) == b""


def test_a_tiny_idle_timeout_is_not_forever(start, tmp_path):
    """--idle-timeout 0.0000001 rounds up to a microsecond, never down to the 0 that
    SO_RCVTIMEO reads as "no timeout": a silent client is dropped at once."""
    path = sock_path(tmp_path)
    server = start("server", "--path", path, "--idle-timeout", "0.0000001")
    with unix_connect(path):
        server.expect(r"^client pid=\d+ dropped: idle for 1e-07s$", timeout=10)


def test_stop_while_writing_to_a_slow_reader(start, tmp_path):
    """A client sends 8 MiB and reads the echo 4 KiB every 50 ms: the server spends its
    time blocked writing to it. SIGTERM still ends it within a second or so, status 0."""
    path = sock_path(tmp_path)
    server = start("server", "--path", path, "--quiet")
    done = threading.Event()
    got = []
    s = unix_connect(path)

    def write():
        try:
            s.sendall(b"a" * (8 * MIB))
        except OSError:
            pass

    def read_slowly():
        try:
            while not done.is_set() and (chunk := s.recv(4096)):
                got.append(len(chunk))
                time.sleep(0.05)
        except OSError:
            pass

    threads = [threading.Thread(target=f, daemon=True) for f in (write, read_slowly)]
    try:
        for t in threads:
            t.start()
        wait_until(lambda: sum(got) >= 16384 and process_state(server.pid) == "S",
                   timeout=10, what="the server blocked writing to the slow reader")
        assert stop_time(server) < STOP_WITHIN
    finally:
        done.set()
        s.close()


def test_stop_while_flooded(start, tmp_path):
    """A client that keeps the server busy all the time (it writes and reads without a
    pause), and a datagram server under a stream of datagrams: SIGTERM ends both, 0."""
    path = sock_path(tmp_path)
    server = start("server", "--path", path, "--quiet")
    done = threading.Event()
    s = unix_connect(path)

    def flood():
        try:
            while not done.is_set():
                exchange(s, os.urandom(65536), timeout=5)
        except (OSError, AssertionError):
            pass

    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    try:
        time.sleep(0.3)  # let the flood run a while: measuring the stop under load
        assert stop_time(server) < STOP_WITHIN
    finally:
        done.set()
        s.close()
    dgram = start("server", "--path", sock_path(tmp_path, "d.sock"), "--dgram", "--quiet")
    sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sender.bind("")
    sender.setblocking(False)

    def flood_datagrams():
        while not done.is_set():
            try:
                sender.sendto(b"d" * 1000, dgram.sockaddr)
            except OSError:
                time.sleep(0.001)  # the server's queue is full: it is busy

    done.clear()
    threading.Thread(target=flood_datagrams, daemon=True).start()
    try:
        time.sleep(0.3)
        assert stop_time(dgram) < STOP_WITHIN
    finally:
        done.set()
        time.sleep(0.05)
        sender.close()


def test_out_of_descriptors_neither_spins_nor_stops_short(start, tmp_path):
    """With four descriptors, accept() fails with EMFILE: the server says so, pauses rather
    than spinning (less than 0.3 s of CPU in a second), and still stops on SIGTERM."""
    name = abstract_name()  # no directory to lock: the fourth descriptor is the socket
    server = start("server", "--abstract", name, preexec=nofile(4))
    waiting = unix_connect("\0" + name)
    try:
        wait_until(lambda: "accept: Too many open files" in server.stderr, what="EMFILE")
        busy = cpu_seconds(server.pid)
        time.sleep(1.0)  # measuring CPU use over a second, not waiting for anything
        assert cpu_seconds(server.pid) - busy < 0.3, "the server spins while starved"
        assert stop_time(server) < STOP_WITHIN
    finally:
        waiting.close()


def test_descriptors_that_do_not_fit_are_closed_by_the_kernel(start, tmp_path):
    """Six descriptors: a client passing four leaves room for one (MSG_CTRUNC); the server
    says so, serves it and the next client, and stops on SIGTERM."""
    path = sock_path(tmp_path)
    server = start("server", "--path", path, preexec=nofile(6))
    files = [os.open(tmp_path / ("f%d" % i), os.O_RDWR | os.O_CREAT) for i in range(4)]
    try:
        with unix_connect(path) as s:
            send_fds(s, b"\0", files)
            s.shutdown(socket.SHUT_WR)
            assert read_to_end(s) == b""
        server.expect(r"too many descriptors; extras closed$")
        echoes(server)
        assert stop_time(server) < STOP_WITHIN
    finally:
        for fd in files:
            os.close(fd)


def test_full_backlog_refuses_with_eagain(start, tmp_path):
    """Behind a client being served, the listen queue holds kBacklog = SOMAXCONN connections
    (net.core.somaxconn); one more gets EAGAIN at once, where a TCP SYN would wait. Once
    they leave, a fresh client is served."""
    with open("/proc/sys/net/core/somaxconn") as f:
        backlog = int(f.read())
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < backlog + 200:
        pytest.skip("needs %d descriptors, have %d" % (backlog + 200, hard))
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, backlog + 200), hard))
    path = sock_path(tmp_path)
    server = start("server", "--path", path, "--quiet")
    silent = unix_connect(path)
    queued, refused = [], 0
    try:
        wait_until(lambda: process_state(server.pid) == "S", what="the server serving")
        for _ in range(backlog + 10):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect(path)
                queued.append(s)
            except BlockingIOError:
                refused += 1
                s.close()
        assert refused > 0 and backlog <= len(queued) <= backlog + 1, (refused, len(queued))
    finally:
        silent.close()
        for s in queued:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    echoes(server)


# ----------------------------------------------------------------- the fault sweeps

@pytest.mark.faults
@pytest.mark.parametrize("fault", STREAM_FAULTS + [
    fault_queue_of_clients_that_left, fault_pipe_descriptor, fault_too_many_descriptors,
    fault_descriptor_then_vanish], ids=fault_name)
def test_stream_fault_sweep(start, tmp_path, fault):
    """One misbehaving peer against a stream server with --idle-timeout 1: a fresh client
    is served (once a stalled peer is dropped) while it misbehaves and after it has gone,
    the server's descriptors and memory come back, and stopped, it removes its socket."""
    path = sock_path(tmp_path)
    survive(start("server", "--path", path, "--idle-timeout", "1", "--quiet"), fault)
    assert not os.path.exists(path)


@pytest.mark.faults
def test_stream_logs_the_faults(start, tmp_path):
    """The server logs what it drops and why: a silent client, extra passed descriptors,
    a descriptor it cannot read, a client that never reads."""
    path = sock_path(tmp_path)
    server = start("server", "--path", path, "--idle-timeout", "0.5")
    with unix_connect(path):
        server.expect(r"^client pid=\d+ dropped: idle for 0.5s$")
    fault_too_many_descriptors(server)
    server.expect(r"too many descriptors; extras closed$")
    server.expect(r"^sent 0 bytes of the passed file to pid=\d+$")  # /dev/null: empty
    fault_pipe_descriptor(server)
    server.expect(r"^refused a descriptor from pid=\d+: Illegal seek$")
    hog = fault_never_reads(server)
    server.expect(r"^client pid=\d+ dropped: idle for 0.5s$")
    hog[0].close()


@pytest.mark.faults
@pytest.mark.parametrize("fault", DGRAM_FAULTS + [
    dgram_fault_oversized, dgram_fault_unbound_sender], ids=fault_name)
def test_dgram_fault_sweep(start, tmp_path, fault):
    """One misbehaving peer against a datagram server: a fresh peer gets its echo while it
    misbehaves and after it has gone, the server's descriptors and memory come back, and
    stopped, it removes its socket."""
    path = sock_path(tmp_path)
    survive(start("server", "--path", path, "--dgram", "--quiet"), fault, served=dgram_echoes)
    assert not os.path.exists(path)


def test_dgram_reports_replies_it_cannot_send(start, tmp_path):
    """Echoes to a sender that vanished, or to one that never reads, fail; the server logs
    each (one peer's trouble is an event, not the server's failure) and goes on."""
    server = start("server", "--path", sock_path(tmp_path), "--dgram")
    dgram_fault_vanished_senders(server)  # most are gone before their echo: refused
    for hog in dgram_fault_never_reads(server):
        dgram_echoes(server)
        hog.close()
    dropped = re.compile(rb"^reply to " + AUTOBOUND + rb" dropped: (.*)$")

    def reasons():
        return {m.group(1) for m in map(dropped.match, server.stdout_lines) if m}
    wait_until(lambda: b"Resource temporarily unavailable" in reasons(), what="EAGAIN")
    assert reasons() <= {b"Connection refused", b"Resource temporarily unavailable"}
    dgram_echoes(server)
    assert server.stderr == ""


def test_dgram_server_recovers_when_a_non_reader_of_large_replies_leaves(start, tmp_path):
    """Queued replies are charged to the server's send buffer: a peer that never reads
    large ones can exhaust it (see the handout's pitfalls). The server must not block;
    when that peer goes, everyone is served again."""
    path = sock_path(tmp_path)
    server = start("server", "--path", path, "--dgram")
    hog = dgram_socket(tmp_path, "hog.sock")
    hog.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * MIB)
    for _ in range(20):
        hog.sendto(b"h" * 60000, path)
    server.expect(r"^reply to %s dropped: Resource temporarily unavailable$"
                  % re.escape(str(tmp_path / "hog.sock")))
    hog.close()
    dgram_echoes(server)
    assert server.proc.poll() is None
