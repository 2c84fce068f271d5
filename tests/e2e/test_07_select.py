"""Lab 07: a select() echo server that no single client can stall, and a client that
waits on its input and the socket at once.

What every echo server promises, and what every event-loop server promises on top, is
tested by the echo contract (echo_contract.py), with the stop however busy the loop is,
the idle timer and the client's lines in flight; here, what only select() has: descriptors
at or above FD_SETSIZE refused, never FD_SET, and a client that shows what it got when it
is not an echo.
"""

import os
import resource

import pytest

from conftest import connect, exchange, open_fds, read_to_end, wait_until
from echo_contract import EchoLab, echo_contract, nofile, one_shot_server, readable
from faults import BUSY, echoes

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


# ----------------------------------------------------------------- what only select() has

def test_more_connections_than_fd_setsize_are_refused(start):
    """With 1300 descriptors allowed, 1100 clients: those whose descriptor would reach
    FD_SETSIZE (1024) are told "server busy"; the others, the highest too, are served."""
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 1300:
        pytest.skip("needs a hard descriptor limit of 1300 to go past FD_SETSIZE")
    server = start("server", "--port", "0", "--quiet", "--max-clients", "5000",
                   preexec=nofile(1300))
    baseline = open_fds(server.pid)
    socks = [connect(server.address) for _ in range(1100)]
    try:
        def settled():
            accepted = open_fds(server.pid) - baseline
            refused = len(readable(socks))
            return accepted + refused == len(socks) and (accepted, refused)
        accepted, refused = wait_until(settled, timeout=15, what="every attempt answered")
        assert accepted <= 1024 - baseline and refused >= 1100 - (1024 - baseline)
        assert max(int(fd) for fd in os.listdir("/proc/%d/fd" % server.pid)) < 1024
        turned_away = readable(socks)
        assert all(read_to_end(s) == BUSY for s in turned_away[:20])
        held = [s for s in socks if s not in turned_away]
        assert exchange(held[-1], b"near the top\n") == b"near the top\n"
        for s in held[:50]:
            s.close()
        wait_until(lambda: open_fds(server.pid) == baseline + accepted - 50, what="50 closed")
        echoes(server)
    finally:
        for s in socks:
            s.close()


def test_default_max_clients_is_fd_setsize(run):
    """--help says what select() allows: 1024 clients at most by default."""
    assert b"(1024)" in run("server", "--help").stdout


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
