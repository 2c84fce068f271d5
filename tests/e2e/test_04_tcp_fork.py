"""Lab 04-tcp-fork: a TCP echo server with one child process per connection.

What every echo server promises is tested by the echo contract (echo_contract.py); here,
what this lab adds: children, none left behind as zombies, --max-children, its logs,
stopping whatever the parent is doing (out of descriptors too), and the client that forks
a reader.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import (STOP_WITHIN, children_of, connect, cpu_seconds, exchange, group_alive,
                      open_fds, process_state, recv_exactly, wait_until)
from echo_contract import LINE_16_MIB, EchoLab, echo_contract, nofile, slow_reader, stops_in_time
from faults import STREAM_FAULTS, echoes, fault_name, more_clients_than_the_limit, survive

LAB = EchoLab(
    concurrent=20,
    idle_timeout=True,
    # Parent and child both log, in either order: test_logs_connect_child_exit reads them.
    logs={"reset": r"^child \d+ exited with status (0|1)$",
          "stop": r"^stopping on SIGNAME$"},
    help_mentions={"server": [b"--max-children", b"--idle-timeout"], "client": [b"--timeout"]},
    bad_arguments=[
        ("server", ["--max-children", "0"]), ("server", ["--max-children", "5000"]),
        ("server", ["--max-children", "many"]), ("server", ["--max-children"]),
        ("server", ["--port", "-1"]), ("server", ["--bogus"]), ("client", ["--port", "65536"]),
        ("client", ["--max-children", "2"]), ("server", ["--idle-timeout", "0"]),
        ("client", ["--timeout", "0"]), ("client", ["--timeout", "soon"]),
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
    server.expect(r"^--max-children 2 reached: new clients wait$")

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
    """--idle-timeout 0.5: the child drops a silent client, logs why on stdout ("client PEER
    dropped: idle for 0.5s"), and exits with status 1."""
    server = start("server", "--port", "0", "--idle-timeout", "0.5")
    with connect(server.address, timeout=10) as silent:
        me = re.escape("%s:%d" % silent.getsockname())
        assert silent.recv(10) == b""
    server.expect(r"^client %s dropped: idle for 0\.5s$" % me, timeout=10)
    server.expect(r"^child \d+ exited with status 1$", timeout=10)
    assert server.stderr == ""


def test_tiny_idle_timeout_is_not_forever(start):
    """--idle-timeout 0.0000001 rounds up to a microsecond, never down to a zero timeval
    (which SO_RCVTIMEO takes for "no timeout"): the child drops a silent client at once."""
    server = start("server", "--port", "0", "--idle-timeout", "0.0000001")
    with connect(server.address, timeout=10) as silent:
        assert silent.recv(10) == b""
    server.expect(r"dropped: idle for 1e-07s$", timeout=10)


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
    assert server.stdout_lines[-1] == b"stopping on SIGTERM"
    assert all(re.match(rb"^child \d+ exited with status 0$", line)
               for line in server.stdout_lines[-4:-1]), server.stdout_lines[-4:]


def test_sigterm_right_after_a_client_leaves(start):
    """SIGTERM just after a child has ended (SIGCHLD pending or being handled): the stop is
    never lost between two calls (common/'s 50 ms alarm closes the gap)."""
    for _ in range(5):
        server = start("server", "--port", "0", "--quiet")
        with connect(server.address) as s:
            assert exchange(s, b"x") == b"x"
        assert server.stop(signal.SIGTERM) == 0


# ----------------------------------------------------------------- more stopping


def in_time_wait(port: int) -> bool:
    """A connection with local port `port` in TIME_WAIT (state 06 of /proc/net/tcp)."""
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[3] == "06" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


def test_out_of_descriptors_stops_on_sigterm_without_spinning(start):
    """prlimit --nofile=4: the parent holds the standard three and the listening socket, so
    accept() fails with EMFILE for every client. The parent says so on stderr, does not
    spin (less than 0.3 s of CPU in a second) and stops on SIGTERM within a second, exit 0.
    (It used to block SIGTERM outside ppoll(), which returned at once: never delivered.)"""
    server = start("server", "--port", "0", preexec=nofile(4))
    held = [connect(server.address) for _ in range(3)]
    try:
        wait_until(lambda: "Too many open files" in server.stderr, what="the EMFILE report")
        assert re.search(r"^server: accept: Too many open files$", server.stderr, re.M)
        busy = cpu_seconds(server.pid)
        time.sleep(1.0)  # measuring CPU use over a second, not waiting for anything
        assert cpu_seconds(server.pid) - busy < 0.3, "the parent spins out of descriptors"
        assert server.stderr.count("Too many open files") <= 4  # one a second at most
        stops_in_time(server)
        assert server.stdout_lines[-1] == b"stopping on SIGTERM"
    finally:
        for s in held:
            s.close()


def test_stop_while_flooded_with_connections(start):
    """Clients connect and leave as fast as they can, so the listening socket is always
    ready and children come and go: SIGTERM still ends the parent and every child within
    a second, exit 0."""
    server = start("server", "--port", "0", "--quiet")
    done = threading.Event()

    def flood():
        while not done.is_set():
            try:
                with connect(server.address, timeout=2) as s:
                    s.sendall(b"flood\n")
            except OSError:
                pass  # refused once the server stops: the point

    floods = [threading.Thread(target=flood, daemon=True) for _ in range(4)]
    for t in floods:
        t.start()
    try:
        wait_until(lambda: cpu_seconds(server.pid) > 0.1, timeout=20, what="the parent busy")
        stops_in_time(server)
        wait_until(lambda: group_alive(server.pid) == [], what="every child gone")
    finally:
        done.set()
        for t in floods:
            t.join(10)


def test_stop_while_a_child_writes_to_a_slow_reader(start):
    """A client sends 8 MiB and reads 4 KiB every 50 ms: its child is always in the middle
    of a write. SIGTERM to the parent still ends parent and child within a second, exit 0,
    the child with status 0 (its own 50 ms alarm interrupts the write)."""
    server = start("server", "--port", "0", "--quiet")
    with slow_reader(server):
        [child] = wait_until(lambda: live_children(server.pid), what="the child")
        wait_until(lambda: process_state(child) == "S", what="the child blocked writing")
        stops_in_time(server)
        assert group_alive(server.pid) == []


def test_stop_at_max_children(start):
    """At --max-children the listening socket is out of the wait; SIGTERM still ends the
    parent and its children within a second."""
    server = start("server", "--port", "0", "--max-children", "1")
    with connect(server.address) as held, connect(server.address) as queued:
        assert exchange(held, b"in\n") == b"in\n"
        queued.sendall(b"waiting\n")
        server.expect(r"reached: new clients wait")
        stops_in_time(server)
    assert group_alive(server.pid) == []


def test_many_clients_one_at_a_time_at_max_children_one(start):
    """--max-children 1 and thirty clients one after another: each child's exit wakes the
    parent (SIGCHLD let in by ppoll()), so none waits for the next client to be reaped."""
    server = start("server", "--port", "0", "--max-children", "1", "--quiet")
    for i in range(30):
        with connect(server.address, timeout=5) as s:
            assert exchange(s, b"%d\n" % i, timeout=5) == b"%d\n" % i


def test_restart_at_once_after_stopping_with_clients(start):
    """Stopped with clients connected, the server's children close first, so their ends
    wait in TIME_WAIT on the port; with SO_REUSEADDR a new server binds it at once."""
    server = start("server", "--port", "0")
    port = server.port
    clients = [connect(server.address) for _ in range(2)]
    for s in clients:
        assert exchange(s, b"hi\n") == b"hi\n"
    assert server.stop() == 0
    for s in clients:
        s.settimeout(5)
        assert s.recv(10) == b""
        s.close()
    wait_until(lambda: in_time_wait(port), what="TIME_WAIT on port %d" % port)
    again = start("server", "--port", str(port))
    assert again.port == port
    echoes(again)


def test_backlog_is_somaxconn(start):
    """The listen queue is SOMAXCONN long, capped by net.core.somaxconn: ss shows a
    listening socket's backlog as its Send-Q."""
    if not shutil.which("ss"):
        pytest.skip("needs ss (iproute2)")
    server = start("server", "--port", "0")
    with open("/proc/sys/net/core/somaxconn") as f:
        somaxconn = int(f.read())
    out = subprocess.run(["ss", "-Htln", "sport = :%d" % server.port], capture_output=True,
                         text=True, timeout=10).stdout.split()
    assert int(out[2]) == min(somaxconn, 4096), out


# ----------------------------------------------------------------- the client

def live(pids: list[int]) -> list[int]:
    return [p for p in pids if process_state(p) not in (None, "Z")]


def test_client_forks_a_reader(start):
    """While it runs, the client is two processes: the parent sends what is typed, its one
    child prints what comes back. At the end of input both are gone, exit 0."""
    server = start("server", "--port", "0")
    client = start("client", "--port", str(server.port), ready=False)
    client.write(b"one\n")
    assert client.read_line(10) == b"one"
    [reader] = wait_until(lambda: live(children_of(client.pid)), what="the reader child")
    client.write(b"two\n")
    assert client.read_line(10) == b"two"
    client.close_stdin()
    assert client.wait(10) == 0, client.describe()
    assert process_state(reader) is None


def test_client_sends_a_16_mib_line(start, run):
    """One line of 16 MiB: the parent writes while the child reads, so nothing blocks for
    good, and every byte comes back."""
    server = start("server", "--port", "0", "--quiet")
    result = run("client", "--port", str(server.port), input=LINE_16_MIB, timeout=90)
    assert result.returncode == 0, result.stderr
    assert result.stdout == LINE_16_MIB


def test_client_gives_up_on_a_silent_server(run):
    """A server that accepts and never answers: with --timeout 1 the reading child gives up
    after about a second, says so, and the client exits 1, printing nothing."""
    with socket.create_server(("127.0.0.1", 0)) as quiet:
        port = quiet.getsockname()[1]
        result = run("client", "--port", str(port), "--timeout", "1", input=b"hello?\n")
    assert result.returncode == 1
    assert result.stdout == b""
    assert result.stderr == "client: read 127.0.0.1:%d: no reply within 1s\n" % port
    assert 0.9 < result.seconds < 8, result.seconds


@pytest.mark.parametrize("signo", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_client_stops_on_a_signal_while_it_waits_on_stdin(start, signo):
    """SIGTERM or SIGINT to the client's parent while it waits for input: it ends its child
    and exits 1 within a second, saying nothing."""
    server = start("server", "--port", "0")
    client = start("client", "--port", str(server.port), ready=False)
    client.write(b"first\n")
    assert client.read_line(10) == b"first"
    [reader] = wait_until(lambda: live(children_of(client.pid)), what="the reader child")
    wait_until(lambda: process_state(client.pid) == "S", what="the client waiting on stdin")
    began = time.monotonic()
    client.send_signal(signo)
    assert client.wait(10) == 1
    assert time.monotonic() - began < STOP_WITHIN
    assert process_state(reader) is None
    assert client.stderr == ""


def test_client_stops_when_the_server_closes_first(start):
    """The server drops the client (--idle-timeout 1) while the client waits for input: the
    reading child sees the close and ends, and SIGCHLD stops the parent's wait for input:
    exit 1, "connection closed by ... before the end of input"."""
    server = start("server", "--port", "0", "--idle-timeout", "1")
    client = start("client", "--port", str(server.port), ready=False)
    client.write(b"hi\n")
    assert client.read_line(10) == b"hi"
    assert client.wait(10) == 1
    assert re.search(r"^client: connection closed by 127\.0\.0\.1:%d before the end of "
                     r"input$" % server.port, client.stderr, re.M), client.stderr


def test_client_exits_1_when_the_reply_is_not_an_echo(run):
    """A server that answers "server busy" (12 bytes) to a 6-byte line and closes: the child
    counts 12 bytes back through its pipe, the parent sent 6: not an echo, exit 1."""
    with socket.create_server(("127.0.0.1", 0)) as busy:
        def refuse():
            conn, _ = busy.accept()
            with conn:
                conn.sendall(b"server busy\n")
                conn.settimeout(5)
                try:
                    while conn.recv(4096):
                        pass
                except OSError:
                    pass

        t = threading.Thread(target=refuse, daemon=True)
        t.start()
        result = run("client", "--port", str(busy.getsockname()[1]), input=b"hello\n")
        t.join(10)
    assert result.returncode == 1
    assert result.stdout == b"server busy\n"
    assert "sent 12 bytes for the 6 we sent: not an echo" in result.stderr


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
