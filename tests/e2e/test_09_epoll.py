"""Lab 09: the epoll echo server, in both --mode lt and --mode et, and a client whose one
epoll loop drives many connections.

What every echo server promises, and what every event-loop server promises on top, is
tested by the echo contract (echo_contract.py), once per mode; here, what epoll brings:
fairness when one client never pauses (edge-triggered reads must not drain one client
for ever), a short read taken as "drained" only when it is safe (urgent data, the FIN),
a stop within a second however busy the loop is, idle clients dropped on the loop's
timer, ten thousand connections, and the client's own topic: N connections from one loop.
"""

import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import (Program, connect, cpu_seconds, exchange, needs_ipv6, open_fds,
                      process_state, program_path, read_to_end, recv_exactly, rss_kib,
                      wait_until)
from echo_contract import EchoLab, echo_contract, nofile
from faults import BUSY, echoes, stuff_without_reading

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

STOP_WITHIN = 3.0  # the program has one second; the rest is the machine's load
LINE_16_MIB = b"x" * (16 << 20) + b"\n"


def stops_in_time(program, signo=signal.SIGTERM) -> float:
    """Sends `signo`, checks the exit status 0, and returns how long the exit took."""
    began = time.monotonic()
    assert program.stop(signo, timeout=10) == 0, program.describe()
    took = time.monotonic() - began
    assert took < STOP_WITHIN, "stopped after %.1fs" % took
    return took


def peer_of(sock) -> str:
    """The log's name for our end of a connection, as a regex."""
    host, port = sock.getsockname()[:2]
    return re.escape(("[%s]:%d" if ":" in host else "%s:%d") % (host, port))


def flood(server, clients=4):
    """Clients that write as fast as they can and read everything back, each direction in
    a thread of its own, so that the server always has a ready descriptor (and, in ET, a
    client over its budget). Returns (bytes echoed so far, a function ending the flood)."""
    socks = [connect(server.address, timeout=10) for _ in range(clients)]
    done, echoed = threading.Event(), [0]

    def write(s):
        chunk = b"f" * 65536
        try:
            while not done.is_set():
                s.sendall(chunk)
        except OSError:
            pass  # the server has gone

    def read(s):
        try:
            while piece := s.recv(65536):
                echoed[0] += len(piece)
        except OSError:
            pass

    threads = [threading.Thread(target=f, args=(s,), daemon=True)
               for s in socks for f in (write, read)]
    for t in threads:
        t.start()

    def end():
        done.set()
        for s in socks:
            s.close()
        for t in threads:
            t.join(10)
    return echoed, end


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

@pytest.mark.parametrize("signo", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_while_flooded(serve, signo):
    """Four clients write and read as fast as they can: epoll_wait() returns at once every
    time and the loop never sleeps. SIGTERM or SIGINT still ends it within a second,
    status 0, in both modes. (epoll_pwait() delivers a pending signal only when it would
    sleep: the loop must look at the flag itself.)"""
    server = serve("--quiet")
    echoed, end = flood(server)
    try:
        wait_until(lambda: echoed[0] > 8 << 20, timeout=10, what="8 MiB echoed")
        stops_in_time(server, signo)
    finally:
        end()


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


def test_stop_while_out_of_descriptors(serve):
    """Sixteen descriptors and --max-clients above them: eleven clients fit, the rest wait
    in the kernel's queue (EMFILE), and more keep coming. SIGTERM ends the server within
    a second, status 0, and it never spun meanwhile."""
    server = serve("--quiet", "--max-clients", "100", preexec=nofile(16))
    socks = [connect(server.address) for _ in range(20)]
    try:
        wait_until(lambda: "pausing accepts" in server.stderr, what="the EMFILE report")
        busy = cpu_seconds(server.pid)
        time.sleep(0.5)  # measuring CPU use over half a second, not waiting for anything
        assert cpu_seconds(server.pid) - busy < 0.3, "the server spins while starved"
        socks += [connect(server.address) for _ in range(5)]
        stops_in_time(server)
    finally:
        for s in socks:
            s.close()


def test_stop_while_writing_to_a_slow_reader(serve):
    """A client sends 8 MiB and reads 4 KiB every 50 ms: the server always has an echo to
    write. SIGTERM still ends it within a second, status 0."""
    server = serve("--quiet")
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(server.sockaddr)
    s.settimeout(10)
    stop, received = threading.Event(), [0]

    def slow_read():
        try:
            while not stop.is_set() and (piece := s.recv(4096)):
                received[0] += len(piece)
                time.sleep(0.05)  # the pace of a slow reader
        except OSError:
            pass

    def write():
        try:
            s.sendall(b"s" * (8 << 20))
        except OSError:
            pass  # the server has gone

    threads = [threading.Thread(target=f, daemon=True) for f in (slow_read, write)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: received[0] > 32768, what="the slow reader under way")
        stops_in_time(server)
    finally:
        stop.set()
        s.close()
        for t in threads:
            t.join(10)


# ------------------------------------------------------------------- idle clients

def test_idle_client_is_dropped(serve):
    """--idle-timeout 0.5: a client silent that long is closed, and the server logs why
    ("client PEER dropped: idle for 0.5s"). Nothing else happens meanwhile: only the
    wait's timeout, set by the earliest deadline, can wake the loop."""
    server = serve("--idle-timeout", "0.5")
    began = time.monotonic()
    with connect(server.address, timeout=10) as silent:
        me = peer_of(silent)
        assert silent.recv(10) == b""  # the server closed it
    took = time.monotonic() - began
    assert 0.4 < took < 5, took
    server.expect(r"^client %s dropped: idle for 0\.5s$" % me)
    echoes(server)
    assert server.stderr == ""


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


def test_tiny_idle_timeout_is_not_forever(serve):
    """--idle-timeout 0.0000001 is rounded up, never down to no timeout at all: a silent
    client is dropped at once."""
    server = serve("--idle-timeout", "0.0000001")
    with connect(server.address, timeout=10) as silent:
        assert silent.recv(10) == b""
    server.expect(r"dropped: idle for 1e-07s$")


def test_silent_clients_no_longer_deny_service(serve):
    """--max-clients 2: two clients that never send hold both places and a third is told
    "server busy"; after --idle-timeout (3 s) they are dropped, and a new client is served."""
    server = serve("--max-clients", "2", "--idle-timeout", "3")  # room to knock, under load
    silent = [connect(server.address, timeout=10) for _ in range(2)]
    try:
        wait_until(lambda: sum(b" connected" in l for l in server.stdout_lines) == 2,
                   what="both silent clients in")
        with connect(server.address) as third:
            assert read_to_end(third) == BUSY
        for s in silent:
            assert s.recv(10) == b""  # dropped
        echoes(server)
        assert sum(b"dropped: idle for 3s" in l for l in server.stdout_lines) == 2
    finally:
        for s in silent:
            s.close()


def test_active_client_is_not_dropped(serve):
    """--idle-timeout 2: a client that sends a line every 0.2 s for 4 s is never idle that
    long: each line moves it to the back of the list, and every echo comes back."""
    server = serve("--idle-timeout", "2")
    with connect(server.address, timeout=10) as s:
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            assert exchange(s, b"still here\n") == b"still here\n"
            time.sleep(0.2)  # the pace of the client, well inside the idle timeout
    assert not any(b"idle" in l for l in server.stdout_lines)


def test_client_that_never_reads_is_dropped_when_idle(serve):
    """A client that writes until every buffer is full and never reads: the server can
    neither read from it (backpressure) nor write to it, so it is idle; after
    --idle-timeout it is dropped and its buffer freed."""
    server = serve("--idle-timeout", "1")
    hog = socket.socket()
    hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    hog.connect(server.sockaddr)
    try:
        stuff_without_reading(hog)
        server.expect(r"^client %s dropped: idle for 1s$" % peer_of(hog), timeout=10)
        echoes(server)
    finally:
        hog.close()


# ----------------------------------------------------------------------- the log

def test_server_logs_connect_bytes_and_leave(serve):
    """One line when a client comes (with its descriptor, the index of its place in the
    table), one per read with its size, one when it leaves with the bytes it sent in all."""
    server = serve()
    with connect(server.address) as s:
        me = peer_of(s)
        assert exchange(s, b"12345") == b"12345"
    server.expect(r"^client %s connected: fd \d+$" % me)
    server.expect(r"^from %s: 5 bytes$" % me)
    server.expect(r"^client %s left after 5 bytes$" % me)
    assert server.stop() == 0
    assert server.stdout_lines[-1] == b"stopping on SIGTERM"


def test_client_bytes_never_reach_the_log(serve):
    """What a client sends (escape sequences, a forged log line) is echoed, never logged."""
    server = serve()
    evil = b"\x1b]0;owned\x07\nready: tcp 6.6.6.6:66\nstopping on SIGTERM\n"
    with connect(server.address) as s:
        assert exchange(s, evil) == evil
    server.expect(r" left after %d bytes$" % len(evil))
    assert server.stop() == 0
    log = b"\n".join(server.stdout_lines)
    assert b"\x1b" not in log and b"6.6.6.6" not in log
    assert server.stdout_lines.count(b"stopping on SIGTERM") == 1


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

def one_shot_server(behave):
    """A listening socket on a fresh port and a thread that accepts one connection and
    hands it to `behave(conn)`. Returns (port, a function that waits for the thread)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve_one():
        try:
            conn, _ = listener.accept()
            with conn:
                behave(conn)
        except OSError:
            pass
        finally:
            listener.close()

    t = threading.Thread(target=serve_one, daemon=True)
    t.start()
    return port, lambda: t.join(10)


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


def test_client_16_mib_line(serve, run):
    """One line of 16 MiB goes through the client and comes back whole: it reads the echo
    while it writes, so neither side's buffers can deadlock it."""
    server = serve("--quiet")
    result = run("client", "--port", str(server.port), input=LINE_16_MIB, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == LINE_16_MIB


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
    """--connections 3 to a server that takes two: the third connection gets "server busy"
    instead of the echo, and the client says so (escaped), exit 1."""
    server = serve("--max-clients", "2")
    result = run("client", "--port", str(server.port), "--connections", "3", input=b"hi\n")
    assert result.returncode == 1, (result.stdout, result.stderr, server.describe())
    assert 'sent back "server busy\\n": not an echo' in result.stderr, (result.stderr,
                                                                      server.describe())


def test_client_says_when_the_server_closes_early(run):
    """A peer that reads everything and closes without a word: exit 1, with how much came
    back of how much was sent."""
    def read_and_close(conn):
        read_to_end(conn)

    port, done = one_shot_server(read_and_close)
    result = run("client", "--port", str(port), input=b"anyone?\n")
    done()
    assert result.returncode == 1
    assert result.stderr == "client: connection closed by 127.0.0.1:%d after 0 of 8 bytes\n" % port


def test_client_timeout_against_a_silent_server(run):
    """A server that accepts (the kernel completes the handshake) and never answers: with
    --timeout 1 the client gives up after about a second, exit 1, and says why."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        result = run("client", "--port", str(port), "--timeout", "1", input=b"hello?\n")
    assert result.returncode == 1
    assert result.stdout == b""
    assert result.stderr == "client: read 127.0.0.1:%d: no reply within 1s\n" % port
    assert 0.9 < result.seconds < 5, result.seconds


def test_client_timeout_counts_from_the_last_reply(run):
    """A server that trickles the echo back, a byte every 0.2 s for over 2 s: with
    --timeout 1 the client never waits that long for a reply, and gets all of it."""
    line = b"0123456789\n"

    def trickle(conn):
        conn.settimeout(10)
        data = recv_exactly(conn, len(line))
        for b in data:
            time.sleep(0.2)  # the pace of the trickle, well inside the timeout
            conn.sendall(bytes([b]))
        read_to_end(conn)

    port, done = one_shot_server(trickle)
    result = run("client", "--port", str(port), "--timeout", "1", input=line)
    done()
    assert (result.returncode, result.stdout) == (0, line), result.stderr


@pytest.mark.parametrize("signo", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_client_stops_on_a_signal_while_waiting_on_stdin(serve, start, signo):
    """Connected, with nothing typed yet: the client waits in epoll_wait() on its input. A
    stop signal ends it at once (exit 1: its input was not all echoed)."""
    server = serve()
    client = start("client", "--port", str(server.port), "--connections", "3", ready=False)
    wait_until(lambda: sum(b" connected" in l for l in server.stdout_lines) == 3,
               what="three connections in")
    wait_until(lambda: process_state(client.pid) == "S", what="the client waiting")
    began = time.monotonic()
    client.send_signal(signo)
    assert client.wait(10) == 1
    assert time.monotonic() - began < STOP_WITHIN
    assert client.stderr == ""


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
