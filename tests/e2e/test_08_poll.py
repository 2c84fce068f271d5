"""Lab 08: a poll() echo server that no single client can stall, and a client with a
non-blocking socket and a bounded output buffer.

What every echo server promises, and what every event-loop server promises on top, is
tested by the echo contract (echo_contract.py); here, what lab 08 adds: descriptors of any
value and a growable pollfd list; POLLERR and POLLHUP, which come unasked; and the
client's own topic, backpressure seen from the client: it never blocks on a write and
stops reading its input while its buffer is full. (The stop however busy the loop is and
the idle timer are the contract's.)
"""

import os
import resource
import select
import signal
import socket
import struct
import threading
import time

import pytest

from conftest import (connect, cpu_seconds, open_fds, process_state, read_to_end, recv_exactly,
                      rss_kib, wait_until)
from echo_contract import STOP_WITHIN, EchoLab, echo_contract, nofile, one_shot_server, peer_of
from faults import echoes, stuff_without_reading

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


# ---------------------------------------------------------------------- the client

def test_client_says_when_the_reply_is_not_an_echo(run):
    """A peer that sends back more than it got is not an echo: the client prints what came
    (stdout is the payload) and exits 1 saying so."""
    def too_much(conn):
        conn.sendall(read_to_end(conn, 10) + b"extra\n")

    port, done = one_shot_server(too_much)
    result = run("client", "--port", str(port), input=b"hi\n")
    done()
    assert result.returncode == 1
    assert result.stdout == b"hi\nextra\n"
    assert result.stderr == ("client: 127.0.0.1:%d sent 9 bytes for the 3 we sent: not an "
                             "echo\n" % port)


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
