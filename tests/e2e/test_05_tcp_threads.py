"""Lab 05: TCP echo server, one thread per connection, at most --max-clients at once."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import threading

import pytest

from conftest import (needs_ipv6, open_fds, recv_exactly, rss_kib, tcp_connect,
                      thread_count, wait_until)

pytestmark = pytest.mark.threads

BUSY = b"server busy\n"


def echo_once(address, payload: bytes) -> bytes:
    with tcp_connect(address) as s:
        s.sendall(payload)
        return recv_exactly(s, len(payload))


def served(address) -> bool:
    reply = echo_once(address, b"still here\n")
    assert reply == b"still here\n"
    return True


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
    assert served(server.address)
    wait_until(lambda: workers(server.pid) == 0, what="no worker threads left")
    return thread_count(server.pid), open_fds(server.pid)


def reset(sock: socket.socket) -> None:
    """Closes with SO_LINGER 0: the kernel sends RST instead of FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# ------------------------------------------------------------------ command line

def test_help_and_bad_arguments(run):
    for prog in ("server", "client"):
        result = run(prog, "--help")
        assert result.returncode == 0 and b"usage" in result.stdout
    assert b"--max-clients" in run("server", "--help").stdout
    for bad in (["--max-clients", "0"], ["--max-clients", "many"], ["--max-clients", "5000"],
                ["--port", "65536"], ["--frobnicate"], ["--host", "1.2.3.4.5"]):
        result = run("server", *bad)
        assert result.returncode == 2, bad
        assert "usage" in result.stderr, bad
    result = run("client", "--max-clients", "3")
    assert result.returncode == 2 and "unknown option" in result.stderr


def test_no_server_is_connection_refused(run):
    with socket.socket() as s:  # a port that was free a moment ago and has no listener
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = run("client", "127.0.0.1", str(port), input=b"hi\n")
    assert result.returncode == 1
    assert "connect 127.0.0.1:%d: Connection refused" % port in result.stderr


# ------------------------------------------------------------------ normal path

def test_echo_with_own_client(start, run):
    server = start("server", "--port", "0")
    data = b"first line\n\x00binary\xff bytes\nlast line without newline"
    result = run("client", "--host", server.host, "--port", str(server.port), input=data)
    assert result.returncode == 0, result.stderr
    assert result.stdout == data + b"\n"  # the client sends the last line with its newline
    server.expect(r"^127\.0\.0\.1:\d+ connected \(1 clients\)$")
    server.expect(r"^127\.0\.0\.1:\d+ left$")


def test_echo_with_nc(start, run):
    server = start("server", "--port", "0")
    out = subprocess.run(["nc", "-N", server.host, str(server.port)], input=b"one\ntwo\n",
                         capture_output=True, timeout=10)
    assert out.returncode == 0 and out.stdout == b"one\ntwo\n"


@needs_ipv6
def test_echo_over_ipv6(start, run):
    server = start("server", "--host", "::1", "--port", "0")
    assert server.address.text.startswith("[::1]:")
    result = run("client", "::1", str(server.port), input=b"six\n")
    assert result.returncode == 0 and result.stdout == b"six\n"


def test_one_mebibyte_of_binary_data(start):
    server = start("server", "--port", "0", "--quiet")
    data = os.urandom(1 << 20)
    with tcp_connect(server.address, timeout=10) as s:
        # Read while writing: the echo comes back as we send, and buffers are finite.
        writer = threading.Thread(target=s.sendall, args=(data,))
        writer.start()
        echoed = recv_exactly(s, len(data))
        writer.join(10)
    assert echoed == data


def test_fifty_clients_at_once_each_on_its_own_thread(start):
    server = start("server", "--port", "0", "--quiet")
    idle_threads, idle_fds = idle_baseline(server)
    clients = [tcp_connect(server.address) for _ in range(50)]
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
    server = start("server", "--port", "0", "--max-clients", "2")
    first, second = tcp_connect(server.address), tcp_connect(server.address)
    try:
        for s in (first, second):  # both are really being served
            s.sendall(b"x\n")
            assert recv_exactly(s, 2) == b"x\n"
        with tcp_connect(server.address) as third:
            assert recv_exactly(third, len(BUSY)) == BUSY
            assert third.recv(100) == b""  # and then closed
        server.expect(r"refused: server busy$")
        first.close()
        server.expect(r"left$")
        assert served(server.address)  # a place is free again
        second.sendall(b"y\n")  # the one still connected was never disturbed
        assert recv_exactly(second, 2) == b"y\n"
    finally:
        first.close()
        second.close()


def test_busy_reply_reaches_the_lab_client(start, run):
    server = start("server", "--port", "0", "--max-clients", "1")
    with tcp_connect(server.address) as holder:
        holder.sendall(b"a\n")
        assert recv_exactly(holder, 2) == b"a\n"
        # The client sends its line and prints what comes back: the busy line. (Data the
        # server has sent before closing stays readable, even if a RST follows it.) A
        # refusal is not an echo, so the client fails.
        result = run("client", server.host, str(server.port), input=b"hi\n")
        assert result.stdout in (BUSY, b"")
        assert result.returncode == 1
        assert result.stderr.strip()


# ------------------------------------------------------------------ faults

def test_a_reset_mid_stream_harms_no_one(start):
    server = start("server", "--port", "0")
    other = tcp_connect(server.address)
    try:
        s = tcp_connect(server.address)
        s.sendall(os.urandom(200000))
        reset(s)
        other.sendall(b"fine\n")
        assert recv_exactly(other, 5) == b"fine\n"
        assert served(server.address)
    finally:
        other.close()


def test_a_stalled_client_does_not_block_the_others(start):
    server = start("server", "--port", "0")
    with tcp_connect(server.address) as stalled:
        stalled.sendall(b"half a mess")  # and then nothing
        for _ in range(5):
            assert served(server.address)


def test_sigterm_wakes_threads_blocked_in_read(start):
    server = start("server", "--port", "0")
    clients = [tcp_connect(server.address) for _ in range(3)]
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


def test_sigterm_wakes_a_thread_blocked_in_write(start):
    server = start("server", "--port", "0", "--quiet")
    with tcp_connect(server.address, timeout=10) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        # We never read: the echo fills our receive buffer, then the server's send
        # buffer, and its thread blocks in write().
        s.setblocking(False)
        sent = 0
        def stuck():
            nonlocal sent
            try:
                while True:
                    sent += s.send(b"z" * 65536)
            except BlockingIOError:
                return True
        wait_until(stuck, timeout=10, interval=0.1, what="the server to stop reading")
        assert sent > 0
        assert server.stop(timeout=5) == 0


def test_sigint_exits_zero(start):
    server = start("server", "--port", "0")
    assert server.stop(signal.SIGINT) == 0


# ------------------------------------------------------------------ the fault sweep

def fault_random_bytes(address):
    with tcp_connect(address) as s:
        data = os.urandom(5000)
        s.sendall(data)
        assert recv_exactly(s, len(data)) == data


def fault_connect_and_close(address):
    tcp_connect(address).close()


def fault_megabyte_without_newline(address):
    with tcp_connect(address, timeout=10) as s:
        data = b"m" * (1 << 20)
        writer = threading.Thread(target=s.sendall, args=(data,))
        writer.start()
        assert recv_exactly(s, len(data)) == data
        writer.join(10)


def fault_reset_mid_transfer(address):
    s = tcp_connect(address)
    s.sendall(os.urandom(300000))
    reset(s)


def fault_half_close(address):
    with tcp_connect(address) as s:
        s.sendall(b"then FIN\n")
        s.shutdown(socket.SHUT_WR)  # the server echoes what it has, sees EOF, closes
        assert recv_exactly(s, 9) == b"then FIN\n"
        assert s.recv(10) == b""


def fault_never_reads_replies(address):
    s = tcp_connect(address)
    s.setblocking(False)
    try:
        while True:
            s.send(b"n" * 65536)
    except BlockingIOError:
        pass
    s.close()  # unread data: RST; the blocked thread's write fails and it ends


FAULTS = [fault_random_bytes, fault_connect_and_close, fault_megabyte_without_newline,
          fault_reset_mid_transfer, fault_half_close, fault_never_reads_replies]


@pytest.mark.faults
def test_fault_sweep(start):
    server = start("server", "--port", "0", "--quiet", "--max-clients", "4")
    idle_threads, idle_fds = idle_baseline(server)
    rss_before = rss_kib(server.pid)
    # Peers that connect and send nothing, or half a message and stall, stay connected
    # through the whole sweep: they hold two of the four places and nobody else notices.
    silent = tcp_connect(server.address)
    halfway = tcp_connect(server.address)
    halfway.sendall(b"half a mess")
    try:
        assert recv_exactly(halfway, 11) == b"half a mess"
        held = idle_threads + 2

        def settled():  # every other worker has ended and released its place
            return (workers(server.pid) == 2 and thread_count(server.pid) == held
                    and open_fds(server.pid) == idle_fds + 2)

        for fault in FAULTS:
            fault(server.address)
            wait_until(settled, timeout=10, what="the server to settle after " + fault.__name__)
            assert served(server.address), fault.__name__
            wait_until(settled, timeout=10, what="the server to settle")
        # More clients than the limit: two places are free, the next one is refused.
        extra = [tcp_connect(server.address) for _ in range(2)]
        for s in extra:
            s.sendall(b"e\n")
            assert recv_exactly(s, 2) == b"e\n"
        with tcp_connect(server.address) as over:
            assert recv_exactly(over, len(BUSY)) == BUSY
        for s in extra:
            s.close()
    finally:
        silent.close()
        halfway.close()
    wait_until(lambda: open_fds(server.pid) == idle_fds, timeout=10,
               what="descriptors back to %d" % idle_fds)
    wait_until(lambda: thread_count(server.pid) == idle_threads, timeout=10,
               what="threads back to %d" % idle_threads)
    assert served(server.address)
    assert rss_kib(server.pid) < rss_before + 64 * 1024  # no megabytes kept per client
    assert server.stop() == 0
