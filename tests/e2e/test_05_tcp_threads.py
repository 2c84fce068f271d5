"""Lab 05: TCP echo server, one thread per connection, at most --max-clients at once.

What every echo server promises is tested by the echo contract (echo_contract.py); here,
what this lab adds: a thread per client, ended when it leaves or the server stops, and
the "server busy" reply at --max-clients.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from conftest import connect, open_fds, recv_exactly, thread_count, wait_until
from echo_contract import EchoLab, echo_contract
from faults import BUSY, STREAM_FAULTS, echoes, fault_name, more_clients_than_the_limit, survive

pytestmark = pytest.mark.threads

LAB = EchoLab(
    concurrent=50,
    logs={"connected": r"^PEER connected \(1 clients\)$", "left": r"^PEER left$"},
    help_mentions={"server": [b"--max-clients"]},
    bad_arguments=[
        ("server", ["--max-clients", "0"]), ("server", ["--max-clients", "many"]),
        ("server", ["--max-clients", "5000"]), ("server", ["--port", "65536"]),
        ("server", ["--frobnicate"]), ("server", ["--host", "1.2.3.4.5"]),
        ("client", ["--max-clients", "3"], "unknown option"),
    ],
)
globals().update(echo_contract(LAB))


def workers(pid: int) -> int:
    """The server's worker threads: it names them "worker" (sanitizers add threads of
    their own, so the total alone says less)."""
    count = 0
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/comm" % (pid, tid)) as f:
                count += f.read().strip() == "worker"
        except OSError:
            pass  # the thread ended while we looked
    return count


def idle_baseline(server) -> tuple[int, int]:
    """Threads and descriptors of an idle server, measured after one client has come and
    gone (a sanitizer starts its own helper thread along with the first worker)."""
    echoes(server)
    wait_until(lambda: workers(server.pid) == 0, what="no worker threads left")
    return thread_count(server.pid), open_fds(server.pid)


def test_fifty_clients_at_once_each_on_its_own_thread(start):
    """Fifty clients connected at once are served by fifty worker threads, one descriptor each;
    when they leave, the threads end and the descriptors are closed."""
    server = start("server", "--port", "0", "--quiet")
    idle_threads, idle_fds = idle_baseline(server)
    clients = [connect(server.address) for _ in range(50)]
    try:
        # All 50 are served while every one of them stays connected: an iterative server
        # would serve only the first.
        for i, s in enumerate(clients):
            s.sendall(b"client %d\n" % i)
        for i, s in enumerate(clients):
            assert recv_exactly(s, len(b"client %d\n" % i)) == b"client %d\n" % i
        assert workers(server.pid) == 50
        assert thread_count(server.pid) == idle_threads + 50
        assert open_fds(server.pid) == idle_fds + 50
    finally:
        for s in clients:
            s.close()
    wait_until(lambda: thread_count(server.pid) == idle_threads, timeout=10,
               what="thread count back to its idle value %d" % idle_threads)
    assert workers(server.pid) == 0
    wait_until(lambda: open_fds(server.pid) == idle_fds, what="descriptors back to baseline")


def test_twenty_client_programs_at_once(start, lab):
    """Twenty of the lab's clients run at once, each gets exactly its own lines back."""
    server = start("server", "--port", "0", "--quiet")
    procs = []
    for i in range(20):
        p = subprocess.Popen([lab.path("client"), server.host, str(server.port)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        procs.append((i, p))
    try:
        for i, p in procs:
            out, err = p.communicate(b"program %d\nsecond line\n" % i, timeout=20)
            assert p.returncode == 0, err
            assert out == b"program %d\nsecond line\n" % i
    finally:
        for _, p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


# ------------------------------------------------------------------ the limit

def test_busy_reply_at_the_limit(start):
    """With --max-clients 2 a third client is told "server busy" and closed; the two are
    undisturbed, and once one leaves a new client is served."""
    server = start("server", "--port", "0", "--max-clients", "2")
    first, second = connect(server.address), connect(server.address)
    try:
        for s in (first, second):  # both are really being served
            s.sendall(b"x\n")
            assert recv_exactly(s, 2) == b"x\n"
        with connect(server.address) as third:
            assert recv_exactly(third, len(BUSY)) == BUSY
            assert third.recv(100) == b""  # and then closed
        server.expect(r"refused: server busy$")
        first.close()
        server.expect(r"left$")
        echoes(server)  # a place is free again
        second.sendall(b"y\n")  # the one still connected was never disturbed
        assert recv_exactly(second, 2) == b"y\n"
    finally:
        first.close()
        second.close()


def test_busy_reply_reaches_the_lab_client(start, run):
    """The lab's client refused by a full server prints at most the busy line, says why on
    stderr and exits 1."""
    server = start("server", "--port", "0", "--max-clients", "1")
    with connect(server.address) as holder:
        holder.sendall(b"a\n")
        assert recv_exactly(holder, 2) == b"a\n"
        # The client sends its line and prints what comes back: the busy line. (Data the
        # server has sent before closing stays readable, even if a RST follows it.) A
        # refusal is not an echo, so the client fails.
        result = run("client", server.host, str(server.port), input=b"hi\n")
        assert result.stdout in (BUSY, b"")
        assert result.returncode == 1
        assert result.stderr.strip()


def test_a_stalled_client_does_not_block_the_others(start):
    """A client that sent half a line and stalls holds its own thread only: others are served."""
    server = start("server", "--port", "0")
    with connect(server.address) as stalled:
        stalled.sendall(b"half a mess")  # and then nothing
        for _ in range(5):
            echoes(server)


def test_sigterm_wakes_threads_blocked_in_read(start):
    """SIGTERM with three clients whose threads wait in read(): the server says it closes three
    connections, each client sees the end of stream, and the server exits 0."""
    server = start("server", "--port", "0")
    clients = [connect(server.address) for _ in range(3)]
    try:
        for s in clients:
            s.sendall(b"hello\n")
            assert recv_exactly(s, 6) == b"hello\n"
        wait_until(lambda: workers(server.pid) == 3, what="three workers")
        assert server.stop() == 0
        assert "stopping on signal 15: closing 3 connections" in \
            b"\n".join(server.stdout_lines).decode()
        for s in clients:
            assert s.recv(10) == b""  # shutdown() sent each of them a FIN
    finally:
        for s in clients:
            s.close()


# ------------------------------------------------------------------ the fault sweep

@pytest.mark.faults
@pytest.mark.parametrize("fault", STREAM_FAULTS + [more_clients_than_the_limit(4)],
                         ids=fault_name)
def test_fault_sweep(start, fault):
    """One misbehaving peer against a server with --max-clients 4: a fresh client is
    served while the peer misbehaves and after it has gone, every worker thread ends, and
    the server's descriptors and memory come back."""
    server = start("server", "--port", "0", "--quiet", "--max-clients", "4")
    survive(server, fault, idle=lambda: workers(server.pid) == 0, memory_mib=64)
