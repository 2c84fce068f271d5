"""Lab 08: a poll() echo server that no single client can stall.

The behaviour it shares with lab 07 is tested in event_loop_cases.py; here, what only
poll() brings: descriptors of any value, as many clients as the descriptor limit allows.
"""

import os
import resource

import pytest

from conftest import open_fds, recv_exactly, tcp_connect, wait_until
from event_loop_cases import *  # noqa: F401,F403  (the tests 07 and 08 share)
from event_loop_cases import BUSY, echo_ok, fds_back_to, nofile, read_to_end, readable


def test_more_clients_than_fd_setsize_are_all_served(start):
    # Where select() must refuse (lab 07), poll() takes descriptors of any value.
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 1300:
        pytest.skip("needs a hard descriptor limit of 1300 to go past FD_SETSIZE")
    server = start("server", "--port", "0", "--quiet", preexec=nofile(1300))
    baseline = open_fds(server.pid)
    socks = [tcp_connect(server.address) for _ in range(1100)]
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
    fds_back_to(server, baseline)


def test_default_max_clients_follows_the_descriptor_limit(start):
    # 64 descriptors, 5 of them not clients: the 60th client is told "server busy".
    server = start("server", "--port", "0", preexec=nofile(64))
    baseline = open_fds(server.pid)
    socks = [tcp_connect(server.address) for _ in range(70)]
    try:
        def settled():
            accepted = open_fds(server.pid) - baseline
            return accepted + len(readable(socks)) == 70 and accepted
        accepted = wait_until(settled, timeout=10, what="every attempt answered")
        assert accepted <= 64 - baseline
        assert all(read_to_end(s) == BUSY for s in readable(socks))
    finally:
        for s in socks:
            s.close()
    fds_back_to(server, baseline)
    echo_ok(server)
