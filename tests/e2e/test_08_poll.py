"""Lab 08: a poll() echo server that no single client can stall.

What every echo server promises, and what every event-loop server promises on top, is
tested by the echo contract (echo_contract.py); here, what only poll() brings:
descriptors of any value, as many clients as the descriptor limit allows.
"""

import os
import resource

import pytest

from conftest import connect, open_fds, recv_exactly, wait_until
from echo_contract import EchoLab, echo_contract, nofile

LAB = EchoLab(
    concurrent=200,
    event_loop=True,
    logs={"connected": r"^client PEER connected$", "bytes": r"^from PEER: \d+ bytes$",
          "left": r"^client PEER left after \d+ bytes$",
          "reset": r"^client PEER dropped: Connection reset by peer$",
          "busy": r"^refused PEER: server busy$", "stop": r"^stopping on SIG(INT|TERM)$"},
    help_mentions={"server": [b"--max-buffer"]},
    bad_arguments=[("server", args) for args in (
        ["--port", "70000"], ["--port", "nine"], ["--max-clients", "0"], ["--max-clients", "-3"],
        ["--max-buffer", "0"], ["--max-buffer", "lots"], ["--no-such-flag"],
        ["--host", "1.2.3.4.5"], ["--max-clients"], ["1", "2"])],
)
globals().update(echo_contract(LAB))


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
