"""Lab 04-tcp-fork: a TCP echo server with one child process per connection.

What every echo server promises is tested by the echo contract (echo_contract.py); here,
what this lab adds: children, none left behind as zombies, --max-children, its logs.
"""

import os
import re
import signal
import socket
import time

import pytest

from conftest import (children_of, connect, exchange, group_alive, open_fds, process_state,
                      recv_exactly, wait_until)
from echo_contract import EchoLab, echo_contract
from faults import STREAM_FAULTS, fault_name, more_clients_than_the_limit, survive

LAB = EchoLab(
    concurrent=20,
    idle_timeout=True,
    # Parent and child both log, in either order: test_logs_connect_child_exit reads them.
    logs={"reset": r"^child \d+ exited with status (0|1)$"},
    help_mentions={"server": [b"--max-children"]},
    bad_arguments=[
        ("server", ["--max-children", "0"]), ("server", ["--max-children", "5000"]),
        ("server", ["--max-children", "many"]), ("server", ["--max-children"]),
        ("server", ["--port", "-1"]), ("server", ["--bogus"]), ("client", ["--port", "65536"]),
        ("client", ["--max-children", "2"]),
    ],
)
globals().update(echo_contract(LAB))


def live_children(pid: int) -> list[int]:
    """The server's children that are still running (not zombies)."""
    return [c for c in children_of(pid) if process_state(c) not in (None, "Z")]


def zombies(pid: int) -> list[int]:
    """The server's children that have exited and not been reaped."""
    return [c for c in children_of(pid) if process_state(c) == "Z"]


def socket_fds(pid: int) -> int:
    """How many of the process's descriptors are sockets."""
    count = 0
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            if os.readlink("/proc/%d/fd/%s" % (pid, fd)).startswith("socket:"):
                count += 1
        except OSError:
            pass
    return count


# ----------------------------------------------------------------- the normal path

def test_positional_arguments_and_binary_bytes(start, run):
    """server [PORT] and client [HOST [PORT]], as in the source notes, with bytes that are no
    text."""
    server = start("server", "0")
    data = b"\x00\xff\n\x80zero\x00\n"
    result = run("client", server.host, str(server.port), input=data)
    assert result.stdout == data


def expect_all(server, patterns, timeout: float = 10.0) -> dict:
    """Reads log lines until each regex has matched one; parent and child both log, so
    their lines may come in either order."""
    waiting = {p: re.compile(p) for p in patterns}
    found = {}
    deadline = time.monotonic() + timeout
    while waiting:
        line = server.read_line(max(0.1, deadline - time.monotonic())).decode(errors="replace")
        for p, regex in list(waiting.items()):
            m = regex.search(line)
            if m:
                found[p] = m
                del waiting[p]
    return found


def test_logs_connect_child_exit(start):
    """The parent logs each client with the child that serves it, the child logs the bytes and
    the leave, and the parent logs the child's exit status."""
    server = start("server", "--port", "0")
    with connect(server.address) as s:
        me = re.escape("%s:%d" % s.getsockname())
        assert exchange(s, b"12345") == b"12345"
    connected = r"^client %s connected: child (\d+)$" % me
    found = expect_all(server, [connected, r"^from %s: 5 bytes$" % me,
                                r"^client %s left after 5 bytes$" % me])
    child = int(found[connected].group(1))
    server.expect(r"^child %d exited with status 0$" % child)


# ----------------------------------------------------------------- processes

def test_twenty_clients_at_once(start):
    """Twenty clients connected at once are served by twenty live children, all reaped once the
    clients leave."""
    server = start("server", "--port", "0", "--quiet")
    clients = [connect(server.address) for _ in range(20)]
    try:
        # All twenty are served while all twenty stay connected: twenty children.
        for i, s in enumerate(clients):
            line = b"client %d\n" % i
            assert exchange(s, line) == line
        wait_until(lambda: len(live_children(server.pid)) == 20, what="20 live children")
    finally:
        for s in clients:
            s.close()
    wait_until(lambda: children_of(server.pid) == [], timeout=10, what="children reaped")


def test_parent_and_child_each_close_the_descriptor_they_do_not_need(start):
    """After fork() the parent keeps only the listening socket and the child only its
    connection."""
    server = start("server", "--port", "0", "--quiet")
    with connect(server.address) as s:
        assert exchange(s, b"x") == b"x"
        [child] = wait_until(lambda: live_children(server.pid), what="a child")
        # the parent: only the listening socket (it closes its copy of conn after fork)
        wait_until(lambda: socket_fds(server.pid) == 1, what="one socket in the parent")
        assert socket_fds(child) == 1       # the child: only its connection


def test_hundred_connections_leave_no_zombies_and_no_descriptors(start):
    """A hundred clients one after another: every child is reaped (no zombie) and the parent's
    descriptors come back to their count."""
    server = start("server", "--port", "0", "--quiet")
    fds = open_fds(server.pid)
    for i in range(100):
        with connect(server.address) as s:
            line = b"%d\n" % i
            assert exchange(s, line) == line
    wait_until(lambda: children_of(server.pid) == [], timeout=10,
               what="every child reaped (left: zombies %s)" % zombies(server.pid))
    wait_until(lambda: open_fds(server.pid) == fds, what="descriptors back to %d" % fds)


def test_max_children_makes_the_next_client_wait(start):
    """With --max-children 2 the server says it stops accepting; a third client waits in the
    listen queue, unserved, until one of the two leaves."""
    server = start("server", "--port", "0", "--max-children", "2")
    first, second = connect(server.address), connect(server.address)
    assert exchange(first, b"1\n") == b"1\n"
    assert exchange(second, b"2\n") == b"2\n"
    server.expect(r"^2 children: not accepting until one exits$")

    third = connect(server.address)  # queued in the backlog, not accepted
    third.sendall(b"3\n")
    third.settimeout(0.5)
    with pytest.raises(socket.timeout):
        third.recv(10)
    assert len(live_children(server.pid)) == 2

    first.close()
    third.settimeout(10)
    assert recv_exactly(third, 2) == b"3\n"
    second.close()
    third.close()


def test_idle_client_is_dropped(start):
    """--idle-timeout 0.5: the child drops a silent client, says so, and exits with status 1."""
    server = start("server", "--port", "0", "--idle-timeout", "0.5")
    with connect(server.address, timeout=10) as silent:
        assert silent.recv(10) == b""
    server.expect(r"idle too long", timeout=10)
    server.expect(r"^child \d+ exited with status 1$", timeout=10)


# ----------------------------------------------------------------- stopping

def test_sigterm_ends_parent_and_every_child(start):
    """SIGTERM ends the parent and every child (none left in the process group), closes every
    connection, exits 0, and logs each child's end."""
    server = start("server", "--port", "0")
    clients = [connect(server.address) for _ in range(3)]
    for s in clients:
        assert exchange(s, b"hi\n") == b"hi\n"
    kids = wait_until(lambda: len(live_children(server.pid)) == 3 and live_children(server.pid),
                      what="3 children")
    assert server.stop(signal.SIGTERM) == 0
    assert group_alive(server.pid) == []
    assert all(process_state(k) is None for k in kids)
    for s in clients:
        s.settimeout(5)
        assert s.recv(10) == b""  # each child's end closed the connection
        s.close()
    assert server.stdout_lines[-4] == b"stopping on signal 15, ending 3 children"
    assert all(re.match(rb"^child \d+ killed by signal 15$", line)
               for line in server.stdout_lines[-3:])


def test_sigterm_right_after_a_client_leaves(start):
    """Signals are blocked outside ppoll(), so none is lost between two calls."""
    for _ in range(5):
        server = start("server", "--port", "0", "--quiet")
        with connect(server.address) as s:
            assert exchange(s, b"x") == b"x"
        assert server.stop(signal.SIGTERM) == 0


# ----------------------------------------------------------------- fault sweep

@pytest.mark.faults
@pytest.mark.parametrize("fault", STREAM_FAULTS + [more_clients_than_the_limit(4, busy=False)],
                         ids=fault_name)
def test_fault_sweep(start, fault):
    """One misbehaving peer against a server with --max-children 4 and --idle-timeout 1:
    a fresh client is served (once a stalled peer's child has dropped it) while the peer
    misbehaves and after it has gone, every child is reaped, and the server's descriptors
    and memory come back."""
    server = start("server", "--port", "0", "--max-children", "4", "--idle-timeout", "1",
                   "--quiet")
    survive(server, fault, idle=lambda: children_of(server.pid) == [])
