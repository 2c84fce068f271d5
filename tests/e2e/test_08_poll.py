"""Lab 08: a poll() echo server that no single client can stall, and a client with a
non-blocking socket and a bounded output buffer.

What every echo server promises, and what every event-loop server promises on top, is
tested by the echo contract (echo_contract.py); here, what lab 08 adds: descriptors of any
value and a growable pollfd list; POLLERR and POLLHUP, which come unasked; a stop within a
second however busy the loop is; idle clients dropped on the loop's timer; and the
client's own topic, backpressure seen from the client: it never blocks on a write and
stops reading its input while its buffer is full.
"""

import os
import re
import resource
import select
import signal
import socket
import struct
import threading
import time

import pytest

from conftest import (connect, cpu_seconds, exchange, open_fds, process_state, read_to_end,
                      recv_exactly, rss_kib, wait_until)
from echo_contract import EchoLab, echo_contract, nofile
from faults import BUSY, echoes, stuff_without_reading

LAB = EchoLab(
    concurrent=200,
    event_loop=True,
    idle_timeout=True,
    logs={"connected": r"^client PEER connected$", "bytes": r"^from PEER: \d+ bytes$",
          "left": r"^client PEER left after \d+ bytes$",
          "reset": r"^client PEER dropped: Connection reset by peer$",
          "busy": r"^refused PEER: server busy$", "stop": r"^stopping on SIGNAME$"},
    help_mentions={"server": [b"--max-buffer", b"--max-clients", b"--idle-timeout"],
                   "client": [b"--timeout"]},
    bad_arguments=[("server", args) for args in (
        ["--port", "70000"], ["--port", "nine"], ["--max-clients", "0"], ["--max-clients", "-3"],
        ["--max-buffer", "0"], ["--max-buffer", "lots"], ["--no-such-flag"],
        ["--host", "1.2.3.4.5"], ["--max-clients"], ["1", "2"], ["--idle-timeout", "0"],
        ["--idle-timeout", "soon"])] + [
        ("client", ["--timeout", "0"]), ("client", ["--timeout", "never"]),
        ("client", ["--port", "65536"]), ("client", ["127.0.0.1", "1", "extra"]),
        ("client", ["--max-clients", "3"], "unknown option")],
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


def flood(server, clients=4):
    """Clients that write as fast as they can and read everything back, each direction in
    a thread of its own, so that the server always has a ready descriptor. Returns (bytes
    echoed so far, a function that ends the flood)."""
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


def peer_of(sock) -> str:
    """The log's name for our end of a connection, as a regex."""
    return re.escape("%s:%d" % sock.getsockname()[:2])


# ------------------------------------------------------------------- what poll() adds

def test_more_clients_than_fd_setsize_are_all_served(start):
    """With 1300 descriptors allowed, 1100 clients are all served, on descriptors past
    FD_SETSIZE (1024) too, where select() must refuse (lab 07)."""
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 1300:
        pytest.skip("needs a hard descriptor limit of 1300 to go past FD_SETSIZE")
    server = start("server", "--port", "0", "--quiet", preexec=nofile(1300))
    baseline = open_fds(server.pid)
    socks = [connect(server.address) for _ in range(1100)]
    try:
        wait_until(lambda: open_fds(server.pid) == baseline + 1100, timeout=15,
                   what="1100 clients accepted")
        assert max(int(fd) for fd in os.listdir("/proc/%d/fd" % server.pid)) >= 1100
        for i, s in enumerate(socks):
            s.sendall(b"%d\n" % i)
        for i, s in enumerate(socks):
            assert recv_exactly(s, len(b"%d\n" % i)) == b"%d\n" % i
    finally:
        for s in socks:
            s.close()
    wait_until(lambda: open_fds(server.pid) == baseline, what="descriptors back")


def reset(sock):
    """Closes with SO_LINGER 0: the kernel sends RST instead of FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_reset_while_only_pollout_is_asked_is_seen(start):
    """A client that never reads fills the server's buffer for it, so the server watches
    it for POLLOUT only; then it resets. POLLERR and POLLHUP come unasked: the server
    drops it with the reason, frees its descriptor, and does not spin."""
    server = start("server", "--port", "0")
    baseline = open_fds(server.pid)
    hog = socket.socket()
    hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    hog.connect(server.sockaddr)
    me = peer_of(hog)
    stuff_without_reading(hog)
    reset(hog)
    server.expect(r"^client %s dropped: (Connection reset by peer|Broken pipe)$" % me)
    wait_until(lambda: open_fds(server.pid) == baseline, what="descriptors back")
    busy = cpu_seconds(server.pid)
    time.sleep(0.5)  # measuring CPU use over half a second, not waiting for anything
    assert cpu_seconds(server.pid) - busy < 0.2, "the server spins"
    echoes(server)


def test_default_max_clients_is_ten_thousand(run):
    """--help says the default: poll() has no FD_SETSIZE, so 10000 clients at once."""
    assert b"(10000)" in run("server", "--help").stdout


# ----------------------------------------------------------------------- the log

def test_server_logs_connect_bytes_and_leave(start):
    """One line when a client comes, one per read with its size, one when it leaves with
    the bytes it sent in all, in the wording of docs/conventions.md."""
    server = start("server", "--port", "0")
    with connect(server.address) as s:
        me = peer_of(s)
        assert exchange(s, b"12345") == b"12345"
    server.expect(r"^client %s connected$" % me)
    server.expect(r"^from %s: 5 bytes$" % me)
    server.expect(r"^client %s left after 5 bytes$" % me)
    assert server.stop() == 0
    assert server.stdout_lines[-1] == b"stopping on SIGTERM"


def test_client_bytes_never_reach_the_log(start):
    """What a client sends (escape sequences, a forged log line) is echoed, never logged."""
    server = start("server", "--port", "0")
    evil = b"\x1b]0;owned\x07\nready: tcp 6.6.6.6:66\nstopping on SIGTERM\n"
    with connect(server.address) as s:
        assert exchange(s, evil) == evil
    server.expect(r" left after %d bytes$" % len(evil))
    assert server.stop() == 0
    log = b"\n".join(server.stdout_lines)
    assert b"\x1b" not in log and b"6.6.6.6" not in log
    assert server.stdout_lines.count(b"stopping on SIGTERM") == 1


# ----------------------------------------------------------------------- stopping

@pytest.mark.parametrize("signo", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_while_flooded(start, signo):
    """Four clients write and read as fast as they can, so every poll() returns at once
    and the loop never sleeps. SIGTERM or SIGINT still ends it within a second, status 0.
    (With the signals blocked and ppoll() as the only place they could land, it never
    stopped: ppoll() delivers them only when it would sleep.)"""
    server = start("server", "--port", "0", "--quiet")
    echoed, end = flood(server)
    try:
        wait_until(lambda: echoed[0] > 8 << 20, timeout=10, what="8 MiB echoed")
        stops_in_time(server, signo)
    finally:
        end()


def test_stop_while_out_of_descriptors(start):
    """Eight descriptors: three clients fit, every other one meets EMFILE and is turned
    away with the spare; clients keep coming. SIGTERM still ends the server within a
    second, status 0, and it never spun meanwhile."""
    server = start("server", "--port", "0", "--quiet", preexec=nofile(8))
    held = [connect(server.address) for _ in range(3)]
    done = threading.Event()

    def knock():
        while not done.is_set():
            try:
                with socket.create_connection(server.sockaddr, timeout=2) as s:
                    s.recv(100)
            except OSError:
                pass

    knocker = threading.Thread(target=knock, daemon=True)
    knocker.start()
    try:
        for s in held:
            assert exchange(s, b"in\n") == b"in\n"
        busy = cpu_seconds(server.pid)
        time.sleep(0.5)  # measuring CPU use over half a second, not waiting for anything
        assert cpu_seconds(server.pid) - busy < 0.3, "the server spins while starved"
        stops_in_time(server)
    finally:
        done.set()
        knocker.join(10)
        for s in held:
            s.close()


def test_stop_while_writing_to_a_slow_reader(start):
    """A client sends 8 MiB and reads 4 KiB every 50 ms: the server always has an echo to
    write. SIGTERM still ends it within a second, status 0."""
    server = start("server", "--port", "0", "--quiet")
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

def test_idle_client_is_dropped(start):
    """--idle-timeout 0.5: a client silent that long is closed, the server logs why
    ("client PEER dropped: idle for 0.5s"), nothing on stderr, and the next client is
    served. Nothing else happens meanwhile: only the loop's timer can wake it."""
    server = start("server", "--port", "0", "--idle-timeout", "0.5")
    began = time.monotonic()
    with connect(server.address, timeout=10) as silent:
        me = peer_of(silent)
        assert silent.recv(10) == b""  # the server closed it
    took = time.monotonic() - began
    assert 0.4 < took < 5, took
    server.expect(r"^client %s dropped: idle for 0\.5s$" % me)
    echoes(server)
    assert server.stderr == ""


def test_tiny_idle_timeout_is_not_forever(start):
    """--idle-timeout 0.0000001 is rounded up, never down to a zero timeout: a silent
    client is dropped at once."""
    server = start("server", "--port", "0", "--idle-timeout", "0.0000001")
    with connect(server.address, timeout=10) as silent:
        assert silent.recv(10) == b""
    server.expect(r"dropped: idle for 1e-07s$")


def test_silent_clients_no_longer_deny_service(start):
    """--max-clients 2: two clients that say one line and then nothing hold both places,
    and a third is told "server busy"; after --idle-timeout they are dropped, and a new
    client is served."""
    server = start("server", "--port", "0", "--max-clients", "2", "--idle-timeout", "3")
    silent = [connect(server.address, timeout=10) for _ in range(2)]
    try:
        for s in silent:  # in, and active a moment ago: their 3 s start now
            assert exchange(s, b"hi\n") == b"hi\n"
        with connect(server.address) as third:
            assert read_to_end(third) == BUSY
        for s in silent:
            assert s.recv(10) == b""  # dropped
        echoes(server)
        wait_until(lambda: sum(b"dropped: idle for 3s" in l for l in server.stdout_lines) == 2,
                   what="both drops logged")
    finally:
        for s in silent:
            s.close()


def test_active_client_is_not_dropped(start):
    """--idle-timeout 3: a client that sends a line every 0.2 s for 4 s is never idle that
    long: each line moves its deadline, and every echo comes back."""
    server = start("server", "--port", "0", "--idle-timeout", "3")
    with connect(server.address, timeout=10) as s:
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            assert exchange(s, b"still here\n") == b"still here\n"
            time.sleep(0.2)  # the pace of the client, well inside the idle timeout
    assert not any(b"idle" in l for l in server.stdout_lines)


def test_client_that_never_reads_is_dropped_when_idle(start):
    """A client that writes until every buffer is full and never reads: the server can
    neither read from it (backpressure) nor write to it, so it is idle; after
    --idle-timeout it is dropped and its buffer freed."""
    server = start("server", "--port", "0", "--idle-timeout", "1")
    hog = socket.socket()
    hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    hog.connect(server.sockaddr)
    try:
        stuff_without_reading(hog)
        server.expect(r"^client %s dropped: idle for 1s$" % peer_of(hog), timeout=10)
        echoes(server)
    finally:
        hog.close()


# ---------------------------------------------------------------------- the client

def one_shot_server(behave):
    """A listening socket on a fresh port and a thread that accepts one connection and
    hands it to `behave(conn)`. Returns (port, a function that waits for the thread)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve():
        try:
            conn, _ = listener.accept()
            with conn:
                behave(conn)
        except OSError:
            pass
        finally:
            listener.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return port, lambda: t.join(10)


def read_until_eof(conn) -> bytes:
    conn.settimeout(10)
    data = bytearray()
    while piece := conn.recv(65536):
        data += piece
    return bytes(data)


def test_client_keeps_lines_in_flight(run):
    """A server that answers only once the client has sent everything (it reads to the
    client's FIN, then echoes it all): the client sends every line without waiting for
    any echo, half-closes, and still reads the whole echo. A stop-and-wait client would
    wait for the first line's echo for ever."""
    lines = b"".join(b"line %d\n" % i for i in range(2000))

    def echo_at_the_end(conn):
        conn.sendall(read_until_eof(conn))

    port, done = one_shot_server(echo_at_the_end)
    result = run("client", "--port", str(port), "--timeout", "5", input=lines)
    done()
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == lines


def test_client_reads_until_the_servers_fin(run):
    """After its half-close the client reads on: echo that comes late and in pieces is all
    printed, and the client exits 0 only at the server's FIN."""
    def late_and_in_pieces(conn):
        data = read_until_eof(conn)
        for i in range(0, len(data), 3):
            time.sleep(0.05)  # the pace of a slow server
            conn.sendall(data[i:i + 3])

    port, done = one_shot_server(late_and_in_pieces)
    result = run("client", "--port", str(port), input=b"slow\nbut sure\n")
    done()
    assert (result.returncode, result.stdout) == (0, b"slow\nbut sure\n"), result.stderr


def test_client_16_mib_line(start, run):
    """One line of 16 MiB goes through the client and comes back whole: it reads the echo
    while it writes, so neither side's buffers can deadlock it."""
    server = start("server", "--port", "0", "--quiet")
    result = run("client", "--port", str(server.port), input=LINE_16_MIB, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == LINE_16_MIB


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
    """A server that trickles the echo back, a byte every 0.2 s for 4 s: with --timeout 3
    the client never waits that long for a reply, and gets all of it."""
    line = b"0123456789abcdefghi\n"

    def trickle(conn):
        data = read_until_eof(conn)
        for b in data:
            time.sleep(0.2)  # the pace of the trickle, well inside the timeout
            conn.sendall(bytes([b]))

    port, done = one_shot_server(trickle)
    result = run("client", "--port", str(port), "--timeout", "3", input=line)
    done()
    assert (result.returncode, result.stdout) == (0, line), result.stderr


def test_client_says_when_the_reply_is_not_an_echo(run):
    """A peer that sends back more than it got is not an echo: the client prints what came
    (stdout is the payload) and exits 1 saying so."""
    def too_much(conn):
        conn.sendall(read_until_eof(conn) + b"extra\n")

    port, done = one_shot_server(too_much)
    result = run("client", "--port", str(port), input=b"hi\n")
    done()
    assert result.returncode == 1
    assert result.stdout == b"hi\nextra\n"
    assert result.stderr == ("client: 127.0.0.1:%d sent 9 bytes for the 3 we sent: not an "
                             "echo\n" % port)


def test_client_says_when_the_server_closes_early(run):
    """A peer that reads everything and closes without a word: exit 1, with how much came
    back of how much was sent."""
    port, done = one_shot_server(read_until_eof)
    result = run("client", "--port", str(port), input=b"anyone?\n")
    done()
    assert result.returncode == 1
    assert result.stderr == "client: connection closed by 127.0.0.1:%d after 0 of 8 bytes\n" % port


@pytest.mark.parametrize("signo", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_client_stops_on_a_signal_while_waiting_on_stdin(start, signo):
    """Connected, with nothing typed yet: the client waits in poll() on its input. A stop
    signal ends it at once (exit 1: its input was not all echoed)."""
    server = start("server", "--port", "0")
    client = start("client", "--port", str(server.port), ready=False)
    server.expect(r" connected$")
    wait_until(lambda: process_state(client.pid) == "S", what="the client waiting")
    began = time.monotonic()
    client.send_signal(signo)
    assert client.wait(10) == 1
    assert time.monotonic() - began < STOP_WITHIN
    assert client.stderr == ""


def test_client_stops_on_a_signal_while_waiting_for_a_reply(start):
    """A line sent to a server that never answers, the input still open: SIGTERM ends the
    client at once, long before its --timeout."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        client = start("client", "--port", str(silent.getsockname()[1]), "--timeout", "60",
                       ready=False)
        client.write(b"anyone?\n")
        conn, _ = silent.accept()
        with conn:
            assert recv_exactly(conn, 8) == b"anyone?\n"
            began = time.monotonic()
            client.send_signal(signal.SIGTERM)
            assert client.wait(10) == 1
            assert time.monotonic() - began < STOP_WITHIN


def test_client_stops_reading_its_input_while_its_buffer_is_full(start):
    """A server that accepts and never reads: the client sends until the socket's buffers
    are full, fills its own 256 KiB buffer, then stops reading its input (the writer
    behind the pipe blocks) and never blocks itself: it takes a few MiB of input at most,
    stays small, and still stops at once on SIGTERM."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        client = start("client", "--port", str(silent.getsockname()[1]), "--timeout", "60",
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
                pass  # the client has exited

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        conn, _ = silent.accept()
        with conn:
            last = [-1, time.monotonic()]

            def stalled():  # no more input taken for half a second
                if fed[0] != last[0]:
                    last[:] = [fed[0], time.monotonic()]
                return time.monotonic() - last[1] > 0.5
            wait_until(stalled, timeout=30, what="the client no longer reading its input")
            assert fed[0] < 48 << 20, "the client took %d bytes of input" % fed[0]
            assert rss_kib(client.pid) < 32 * 1024
            assert process_state(client.pid) == "S", "the client is not asleep in poll()"
            began = time.monotonic()
            client.send_signal(signal.SIGTERM)
            assert client.wait(10) == 1
            assert time.monotonic() - began < STOP_WITHIN
        feeder.join(10)


def test_client_does_not_spin_on_a_closed_input_while_its_buffer_is_full(start):
    """The client's input is a pipe whose writer has gone, with bytes still in it, and the
    client's buffer is full (the server never reads). poll() reports POLLHUP on such a pipe
    unasked: the client must skip the entry (fd -1), not merely stop asking for POLLIN,
    or it spins until its timeout."""
    r, w = os.pipe()
    os.set_blocking(w, False)
    with socket.create_server(("127.0.0.1", 0)) as silent:
        try:
            client = start("client", "--port", str(silent.getsockname()[1]), "--timeout", "60",
                           ready=False, stdin=r)
        finally:
            os.close(r)
        conn, _ = silent.accept()
        with conn:
            chunk, stalled_since = b"q" * 65536, None
            while stalled_since is None or time.monotonic() - stalled_since < 0.5:
                try:
                    os.write(w, chunk)
                    stalled_since = None
                except BlockingIOError:  # the pipe is full: the client has stopped reading
                    stalled_since = stalled_since or time.monotonic()
                    select.select([], [w], [], 0.1)
            os.close(w)
            wait_until(lambda: process_state(client.pid) == "S", what="the client waiting")
            busy = cpu_seconds(client.pid)
            time.sleep(0.5)  # measuring CPU use over half a second, not waiting for anything
            assert cpu_seconds(client.pid) - busy < 0.2, "the client spins"
            client.send_signal(signal.SIGTERM)
            assert client.wait(10) == 1
