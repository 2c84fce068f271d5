"""Lab 03-tcp-echo: an iterative TCP echo server (one client at a time) and its client.

What every echo server promises is tested by the echo contract (echo_contract.py); here,
what this lab adds: its log lines, --quiet, positional arguments and the idle timeout.
"""

import re

import pytest

from conftest import connect, exchange, wait_until
from echo_contract import EchoLab, echo_contract
from faults import STREAM_FAULTS, echoes, fault_name, fault_queue_of_clients_that_left, survive

LAB = EchoLab(
    concurrent=1,
    idle_timeout=True,
    logs={"connected": r"^client PEER connected$", "bytes": r"^from PEER: \d+ bytes$",
          "left": r"^client PEER left after \d+ bytes$",
          "reset": r"^client PEER left after \d+ bytes$", "stop": r"^stopping on signal SIGNO$"},
    bad_arguments=[
        ("server", ["--port", "70000"]), ("server", ["--no-such-flag"]),
        ("server", ["--idle-timeout", "soon"]), ("server", ["--idle-timeout", "-1"]),
        ("server", ["1", "2"]), ("server", ["--host", "1.2.3.999"]),
        ("client", ["--port", "nine"]), ("client", ["127.0.0.1", "1", "extra"]),
        ("client", ["--host"]),
    ],
)
globals().update(echo_contract(LAB))


def test_positional_arguments(start, run):
    """server [PORT] and client [HOST [PORT]], as in the source notes; -H and -p too."""
    server = start("server", "0")
    result = run("client", server.host, str(server.port), input=b"positional\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"positional\n"
    result = run("client", "-H", server.host, "-p", str(server.port), input=b"short\n")
    assert result.stdout == b"short\n"


def test_server_logs_connect_bytes_and_leave(start):
    """One log line when a client comes, one per read with its size, one when it leaves."""
    server = start("server", "--port", "0")
    with connect(server.address) as s:
        me = re.escape("%s:%d" % s.getsockname())
        assert exchange(s, b"12345") == b"12345"
    server.expect(r"^client %s connected$" % me)
    server.expect(r"^from %s: 5 bytes$" % me)
    server.expect(r"^client %s left after 5 bytes$" % me)


def test_quiet_server_logs_nothing(start):
    """--quiet: the ready line, then nothing."""
    server = start("server", "--port", "0", "--quiet")
    echoes(server)
    assert server.stop() == 0
    assert server.stdout_lines[1:] == []


def test_idle_client_is_dropped(start):
    """--idle-timeout 0.5: a client silent that long is closed and reported on stderr, and
    the next client is served."""
    server = start("server", "--port", "0", "--idle-timeout", "0.5")
    with connect(server.address, timeout=10) as silent:
        assert silent.recv(10) == b""  # the server closed it
    wait_until(lambda: "idle too long" in server.stderr, what="the report on stderr")
    echoes(server)


@pytest.mark.faults
@pytest.mark.parametrize("fault", STREAM_FAULTS + [fault_queue_of_clients_that_left],
                         ids=fault_name)
def test_fault_sweep(start, fault):
    """One misbehaving peer against a server with --idle-timeout 1: a fresh client is
    served (once the server has dropped a stalled peer) while the peer misbehaves and
    after it has gone, and the server's descriptors and memory come back."""
    survive(start("server", "--port", "0", "--idle-timeout", "1", "--quiet"), fault)
