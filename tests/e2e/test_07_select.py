"""Lab 07: a select() echo server that no single client can stall.

The behaviour it shares with lab 08 is tested in event_loop_cases.py; here, what only
select() brings: descriptors at or above FD_SETSIZE must be refused, never FD_SET.
"""

import os
import resource

import pytest

from conftest import open_fds, recv_exactly, tcp_connect, wait_until
from event_loop_cases import *  # noqa: F401,F403  (the tests 07 and 08 share)
from event_loop_cases import BUSY, echo_ok, nofile, read_to_end, readable


def test_more_connections_than_fd_setsize_are_refused(start):
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 1300:
        pytest.skip("needs a hard descriptor limit of 1300 to go past FD_SETSIZE")
    server = start("server", "--port", "0", "--quiet", "--max-clients", "5000",
                   preexec=nofile(1300))
    baseline = open_fds(server.pid)
    socks = [tcp_connect(server.address) for _ in range(1100)]
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
        held[-1].sendall(b"near the top\n")
        assert recv_exactly(held[-1], 13) == b"near the top\n"
        for s in held[:50]:
            s.close()
        wait_until(lambda: open_fds(server.pid) == baseline + accepted - 50, what="50 closed")
        echo_ok(server)
    finally:
        for s in socks:
            s.close()
