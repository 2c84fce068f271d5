"""Lab 09: the epoll echo server, in both --mode lt and --mode et, and a client whose one
epoll loop drives many connections.

What every echo server promises, and what every event-loop server promises on top, is
tested by the echo contract (echo_contract.py), once per mode; here, what epoll brings:
fairness when one client never pauses (edge-triggered reads must not drain one client
for ever), a short read taken as "drained" only when it is safe (urgent data, the FIN),
idle clients dropped oldest first, ten thousand connections, and the client's own topic:
N connections from one loop. (The stop however busy the loop is, the idle timer and the
client's timeouts are the contract's, run in both modes.)
"""

import os
import resource
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import (Program, connect, exchange, needs_ipv6, open_fds, process_state, program_path,
                      read_to_end, recv_exactly, rss_kib, wait_until)
from echo_contract import EchoLab, echo_contract, flood, one_shot_server
from faults import echoes

LAB = EchoLab(
    concurrent=200,
    event_loop=True,
    out_of_descriptors="pause",
    idle_timeout=True,
    variants={"lt": ["--mode", "lt"], "et": ["--mode", "et"]},
    logs={"connected": r"^client PEER connected: fd \d+$", "bytes": r"^from PEER: \d+ bytes$",
          "left": r"^client PEER left after \d+ bytes$",
          "reset": r"^client PEER dropped: (Connection reset by peer|Broken pipe)$",
          "busy": r"^refused PEER: server busy$", "stop": r"^stopping on SIGNAME$"},
    help_mentions={"server": [b"--mode lt|et", b"--idle-timeout"],
                   "client": [b"--connections", b"--timeout"]},
    bad_arguments=[("server", args) for args in (
        ["--mode", "xt"], ["--mode"], ["--max-buffer", "0"], ["--max-clients", "0"],
        ["--max-clients", "many"], ["--port", "70000"], ["--port", "nine"], ["--bogus"],
        ["1", "2"], ["--quiet=yes"], ["--idle-timeout", "0"], ["--idle-timeout", "soon"])] + [
        ("client", ["--port", "99999"]), ("client", ["--connections", "0"]),
        ("client", ["--connections", "many"]), ("client", ["--timeout", "0"]),
        ("client", ["--mode", "et"], "unknown option")],
)
globals().update(echo_contract(LAB))


# ------------------------------------------------------------------- what epoll adds

def test_fast_sender_does_not_starve_others(serve):
    """A client streams as fast as it can, reading its echo; another still gets each of
    ten echoes within 2 s (in ET, the budget per turn sends the fast one to the back of
    the kernel's ready list)."""
    server = serve("--quiet")
    echoed, end = flood(server, clients=1)
    try:
        wait_until(lambda: echoed[0] > 1 << 20, timeout=10, what="1 MiB echoed")
        for _ in range(10):
            began = time.monotonic()
            echoes(server)
            assert time.monotonic() - began < 2.0
    finally:
        end()


def close_wait(server_port: int, client_port: int) -> bool:
    """Whether the server's end of this connection is in CLOSE_WAIT: our FIN, and so every
    byte sent before it, has reached the server's receive queue."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for row in f.readlines()[1:]:
                cols = row.split()
                local, remote = cols[1].rsplit(":", 1)[1], cols[2].rsplit(":", 1)[1]
                if (int(local, 16), int(remote, 16)) == (server_port, client_port):
                    return cols[3] == "08"
    return False


@pytest.mark.parametrize("host", ["127.0.0.1", pytest.param("::1", marks=needs_ipv6)])
def test_urgent_data_loses_no_byte(serve, host):
    """`abc`, one urgent byte (MSG_OOB), `def`, then FIN, all queued while the server is
    stopped (SIGSTOP): a read() stops short at the urgent mark, with `def` behind it, so a
    short read with the FIN already in must not be taken for the end. The echo is `abcdef`
    (the urgent byte is out of band, as in labs 03 to 08), in both modes, IPv4 and IPv6."""
    server = serve("--host", host)
    with connect(server.address) as s:
        server.expect(r"connected: fd \d+$")
        os.kill(server.pid, signal.SIGSTOP)
        try:
            wait_until(lambda: process_state(server.pid) == "T", what="the server stopped")
            s.sendall(b"abc")
            s.send(b"!", socket.MSG_OOB)
            s.sendall(b"def")
            s.shutdown(socket.SHUT_WR)
            wait_until(lambda: close_wait(server.port, s.getsockname()[1]),
                       what="everything queued at the server, the FIN last")
        finally:
            os.kill(server.pid, signal.SIGCONT)
        assert read_to_end(s) == b"abcdef"
    server.expect(r"left after 6 bytes$")


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_et_reads_once_per_message(lab, tmp_path):
    """ET stops at a short read instead of reading again until EAGAIN: for 200 messages
    echoed one at a time, the server's read() calls that fail with EAGAIN are few (they
    were one per message: the price that made ET cost more CPU than LT)."""
    trace = tmp_path / "trace"
    env = dict(os.environ, ASAN_OPTIONS=os.environ.get("ASAN_OPTIONS", "") + ":detect_leaks=0")
    server = Program(["strace", "-f", "-qq", "-e", "trace=read", "-o", trace,
                      lab.path("server"), "--port", "0", "--mode", "et", "--quiet"],
                     env=env)  # LeakSanitizer cannot run under ptrace
    lab.programs.append(server)  # stopped after the test, pass or fail
    server.wait_ready()
    with connect(server.address) as s:
        for i in range(200):
            assert exchange(s, b"message %d\n" % i) == b"message %d\n" % i
    traced = [int(p) for p in open("/proc/%d/task/%d/children" % (server.pid, server.pid))
              .read().split()]
    os.kill(traced[0], signal.SIGTERM)  # the server itself: strace exits with its status
    assert server.wait(10) == 0
    calls = trace.read_text()
    assert calls.count("read(") >= 200, calls[-500:]
    assert calls.count("EAGAIN") < 20, "%d reads failed with EAGAIN" % calls.count("EAGAIN")


# ----------------------------------------------------------------------- stopping

def test_stop_signal_during_heavy_traffic(serve):
    """Four clients bounce 4 KiB back and forth without a pause: SIGTERM ends the server
    with status 0."""
    server = serve("--quiet")
    stop = threading.Event()

    def pump():
        try:
            with connect(server.address) as s:
                while not stop.is_set():
                    s.sendall(b"z" * 4096)
                    recv_exactly(s, 4096)
        except (OSError, AssertionError):
            pass

    threads = [threading.Thread(target=pump) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        assert server.stop(signal.SIGTERM, timeout=5) == 0
    finally:
        stop.set()
        for t in threads:
            t.join(10)


# ------------------------------------------------------------------- idle clients

def test_idle_clients_are_dropped_oldest_first(serve):
    """Three clients, each silent from a different moment: each is dropped when its own
    --idle-timeout has passed, in the order they fell silent, though one was the first
    to connect."""
    server = serve("--idle-timeout", "2")
    a, b = connect(server.address), connect(server.address)
    try:
        time.sleep(0.3)  # spacing the moments the clients fall silent
        assert exchange(a, b"a\n") == b"a\n"  # a is active again: now b is the oldest
        c = connect(server.address)
        order = [server.expect(r"^client (\S+) dropped: idle for 2s$", timeout=10).group(1)
                 for _ in range(3)]
        assert order == [peer.encode() for peer in (
            "%s:%d" % s.getsockname()[:2] for s in (b, a, c))]
        c.close()
    finally:
        a.close()
        b.close()


# ------------------------------------------------------------------ ten thousand

@pytest.mark.slow
def test_ten_thousand_connections(serve):
    """Ten thousand idle connections at once: each costs the server less than 300 bytes
    of resident memory, a sample of them is served, and all close cleanly."""
    wanted = 10000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted + 500:
        pytest.skip("RLIMIT_NOFILE hard limit %d is below %d" % (hard, wanted + 500))
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the server inherits it too
    socks = []
    try:
        server = serve("--quiet")
        baseline = open_fds(server.pid)
        echoes(server)
        before = rss_kib(server.pid)
        for _ in range(wanted):
            socks.append(connect(server.address))
        wait_until(lambda: open_fds(server.pid) >= baseline + wanted, timeout=10, interval=0.1,
                   what="%d connections accepted" % wanted)
        per_conn = (rss_kib(server.pid) - before) * 1024 / wanted
        print("\nresident memory per idle connection: %.0f bytes" % per_conn)
        assert per_conn < 300, "%.0f bytes of resident memory per idle connection" % per_conn
        for s in socks[::1000] + socks[-1:]:
            s.sendall(b"are you there\n")
            assert recv_exactly(s, 14) == b"are you there\n"
        echoes(server)
        for s in socks:
            s.close()
        socks.clear()
        wait_until(lambda: open_fds(server.pid) == baseline, timeout=10, what="all closed")
    finally:
        for s in socks:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# ---------------------------------------------------------------------- the client

def test_client_drives_many_connections(serve, run):
    """--connections 100: one loop, one hundred connections to the server; every line goes
    out on each, and stdout shows each echo once, when all of them have sent it back."""
    server = serve()
    lines = b"".join(b"line %d\n" % i for i in range(50))
    result = run("client", "--port", str(server.port), "--connections", "100", input=lines)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == lines
    server.expect(r"left after %d bytes$" % len(lines))
    wait_until(lambda: sum(b" left after %d bytes" % len(lines) in l
                           for l in server.stdout_lines) == 100, what="100 clients served")


def test_client_input_larger_than_its_window(serve, run):
    """Twenty connections and 2 MiB of input: more than the client reads ahead of the
    slowest echo (1 MiB), so its input stops and starts again; every byte comes back on
    every connection, and stdout shows it once."""
    server = serve("--quiet")
    data = b"".join(b"%07d\n" % i for i in range(1 << 18))
    result = run("client", "--port", str(server.port), "--connections", "20", input=data,
                 timeout=60)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == data


def test_client_reads_a_regular_file(serve, run, tmp_path):
    """Standard input redirected from a file, which epoll refuses (EPERM: a file is always
    ready): the client reads it anyway, and an empty one (/dev/null) too."""
    server = serve("--quiet")
    path = tmp_path / "input"
    path.write_bytes(b"from a file\nno newline at the end")
    for stdin, want in ((path, b"from a file\nno newline at the end\n"), ("/dev/null", b"")):
        with open(stdin, "rb") as f:
            out = subprocess.run([program_path("09", "client"), "--port", str(server.port)], stdin=f,
                                 capture_output=True, timeout=20)
        assert (out.returncode, out.stdout, out.stderr) == (0, want, b"")


def test_client_checks_every_echo(run):
    """A peer that sends back other bytes than it got is not an echo: the client prints
    nothing it cannot vouch for, says what came back, and exits 1."""
    def upper(conn):
        conn.settimeout(10)
        data = conn.recv(100)
        conn.sendall(data.upper())
        read_to_end(conn)

    port, done = one_shot_server(upper)
    result = run("client", "--port", str(port), input=b"quiet\n")
    done()
    assert result.returncode == 1
    assert result.stdout == b""
    assert result.stderr == 'client: 127.0.0.1:%d sent back "QUIET\\n": not an echo\n' % port


def test_client_escapes_what_it_shows(run):
    """What the server sends is shown escaped on stderr: an escape sequence that would
    retitle the terminal arrives as text."""
    def evil(conn):
        conn.settimeout(10)
        conn.recv(100)
        conn.sendall(b"\x1b]0;owned\x07\r")
        read_to_end(conn)

    port, done = one_shot_server(evil)
    result = run("client", "--port", str(port), input=b"hello, terminal\n")
    done()
    assert result.returncode == 1
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr
    assert '"\\x1b]0;owned\\x07\\r"' in result.stderr, result.stderr


def test_client_told_server_busy(serve, run):
    """A server whose two places are held: each of the client's three connections gets
    "server busy" instead of the echo, and the client says so (escaped), exit 1. (With
    free places, which of its own connections is refused would depend on timing.)"""
    server = serve("--max-clients", "2")
    held = [connect(server.address) for _ in range(2)]
    try:
        for s in held:
            assert exchange(s, b"in\n") == b"in\n"
        result = run("client", "--port", str(server.port), "--connections", "3", input=b"hi\n")
        assert result.returncode == 1, (result.stdout, result.stderr, server.describe())
        assert result.stdout == b""
        assert 'sent back "server busy\\n": not an echo' in result.stderr, result.stderr
    finally:
        for s in held:
            s.close()


def test_client_stays_small_while_the_server_does_not_read(start):
    """A server that accepts and never reads: the client sends until the buffers are full,
    reads its input at most 1 MiB ahead of the echo, then stops reading it (the writer
    behind the pipe blocks). After --timeout 2 it gives up, exit 1, having taken a few MiB
    of input at most and staying small."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        client = start("client", "--port", str(silent.getsockname()[1]), "--timeout", "2",
                       ready=False)
        fed = [0]

        def feed():
            chunk = b"p" * 65536
            try:
                while True:
                    client.proc.stdin.write(chunk)
                    client.proc.stdin.flush()
                    fed[0] += len(chunk)
            except (OSError, ValueError):
                pass  # the client has exited, or its input was closed

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        conn, _ = silent.accept()
        with conn:
            wait_until(lambda: process_state(client.pid) == "S" and fed[0] > 1 << 20,
                       what="the client waiting, its input under way")
            assert rss_kib(client.pid) < 32 * 1024
            assert client.wait(10) == 1
            assert "no reply within 2s" in client.stderr
        feeder.join(10)
    assert fed[0] < 48 << 20, "the client took %d bytes of input" % fed[0]
