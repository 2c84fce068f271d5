"""The tests that labs 07 (select) and 08 (poll) share: the two servers keep the same
promises, so one set of tests checks both. test_07_select.py and test_08_poll.py import
everything here and add what only their API does (FD_SETSIZE, a growable pollfd list).

Every test starts the server on port 0 and waits for its ready line; peers are Python
sockets, the lab's own client, nc and socat, all on loopback.
"""

import os
import resource
import select
import signal
import socket
import struct
import subprocess
import threading
import time

import pytest

from conftest import (cpu_seconds, needs_ipv6, open_fds, recv_exactly, rss_kib, tcp_connect,
                      wait_until)

BUSY = b"server busy\n"
MIB = 1 << 20


# ---------------------------------------------------------------------------- helpers

def echo_ok(server, payload=b"ping\n", timeout=5.0):
    """A fresh connection is served: `payload` comes back byte for byte. Returns seconds."""
    began = time.monotonic()
    with tcp_connect(server.address, timeout) as s:
        s.sendall(payload)
        assert recv_exactly(s, len(payload)) == payload
    return time.monotonic() - began


def read_to_end(sock, timeout=5.0) -> bytes:
    """Everything until the peer closes (a reset counts as a close)."""
    sock.settimeout(timeout)
    data = bytearray()
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return bytes(data)


def exchange(sock, payload: bytes) -> bytes:
    """Writes `payload` from a thread while reading the echo, as a well-behaved peer does."""
    errors = []

    def writer():
        try:
            sock.sendall(payload)
        except OSError as e:
            errors.append(e)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    echoed = recv_exactly(sock, len(payload))
    t.join(10)
    assert not errors, errors
    return echoed


def readable(socks):
    """The sockets with something to read (or an end of stream) right now. poll(), since
    select() in the test itself would fail past FD_SETSIZE, just like the lab's would."""
    poller = select.poll()
    by_fd = {s.fileno(): s for s in socks if s.fileno() != -1}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    return [by_fd[fd] for fd, _ in poller.poll(0)]


def reset(sock):
    """Closes with SO_LINGER 0: the kernel sends RST instead of FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def sanitized(pid) -> bool:
    with open("/proc/%d/maps" % pid) as f:
        return "libasan" in f.read()


def rss_budget_kib(pid) -> int:
    """How much the resident size may grow in a test: a few buffers, far below the traffic."""
    return 96 * 1024 if sanitized(pid) else 16 * 1024


def fds_back_to(server, baseline):
    wait_until(lambda: open_fds(server.pid) == baseline, timeout=5,
               what="server's descriptors back to %d" % baseline)


def nofile(limit):
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


# ---------------------------------------------------------------------- normal path

def test_client_echoes_lines_and_server_logs_each_event(start, run):
    server = start("server", "--port", "0")
    lines = b"hello\n\x00binary\xff\xfe bytes\n" + b"x" * 100000 + b"\nlast line without newline"
    result = run("client", server.host, str(server.port), input=lines)
    assert result.returncode == 0, result.stderr
    assert result.stdout == lines + b"\n"
    server.expect(r"^127\.0\.0\.1:\d+ connected \(1 clients\)$")
    server.expect(r"^from 127\.0\.0\.1:\d+: \d+ bytes$")
    server.expect(r"^127\.0\.0\.1:\d+ left$")
    assert server.stop() == 0


def test_client_default_port_and_help(lab, run):
    for prog in ("server", "client"):
        result = run(prog, "--help")
        assert result.returncode == 0
        assert b"usage" in result.stdout and b"99" + lab.num.encode() in result.stdout
    assert b"--max-buffer" in run("server", "--help").stdout


@pytest.mark.parametrize("args", [
    ["--port", "70000"], ["--port", "nine"], ["--max-clients", "0"], ["--max-clients", "-3"],
    ["--max-buffer", "0"], ["--max-buffer", "lots"], ["--no-such-flag"], ["--host", "1.2.3.4.5"],
    ["--max-clients"], ["1", "2"],
])
def test_bad_arguments_exit_2_with_usage(run, args):
    result = run("server", *args)
    assert result.returncode == 2
    assert "usage" in result.stderr and result.stderr.startswith("server: ")
    assert result.stdout == b""


def test_client_without_server_fails_cleanly(run):
    with socket.socket() as s:  # a port that was free a moment ago, nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = run("client", "127.0.0.1", str(port), input=b"hi\n")
    assert result.returncode == 1
    assert "client: connect 127.0.0.1:%d: Connection refused" % port in result.stderr


def test_nc_half_close_gets_echo_then_eof(start):
    server = start("server", "--port", "0")
    out = subprocess.run(["nc", "-N", server.host, str(server.port)], input=b"via nc\n",
                         capture_output=True, timeout=10)
    assert out.returncode == 0 and out.stdout == b"via nc\n"


def test_socat_peer(start):
    server = start("server", "--port", "0")
    data = b"".join(b"line %d\n" % i for i in range(1000))  # more than one read's worth
    out = subprocess.run(["socat", "-t", "5", "-", "TCP:%s:%d" % (server.host, server.port)],
                         input=data, capture_output=True, timeout=10)
    assert out.returncode == 0 and out.stdout == data


@needs_ipv6
def test_ipv6(start, run):
    server = start("server", "--host", "::1", "--port", "0")
    assert server.family == socket.AF_INET6
    result = run("client", "--host", "::1", "--port", str(server.port), input=b"six\n")
    assert result.stdout == b"six\n"
    server.expect(r"^\[::1\]:\d+ connected")


# ------------------------------------------------------------------- many at once

def test_200_clients_echo_at_once(start):
    server = start("server", "--port", "0", "--quiet")
    socks = [tcp_connect(server.address) for _ in range(200)]
    try:
        for rnd in range(3):
            for i, s in enumerate(socks):
                s.sendall(b"client %d round %d\n" % (i, rnd))
            for i, s in enumerate(socks):
                want = b"client %d round %d\n" % (i, rnd)
                assert recv_exactly(s, len(want)) == want
    finally:
        for s in socks:
            s.close()


def test_idle_clients_and_half_line_do_not_delay_an_active_client(start, run):
    server = start("server", "--port", "0", "--quiet")
    baseline = open_fds(server.pid)
    idle = [tcp_connect(server.address) for _ in range(100)]
    try:
        idle[0].sendall(b"half a li")  # ...and never the rest
        wait_until(lambda: open_fds(server.pid) == baseline + 100, what="100 idle accepted")
        lines = b"".join(b"active %d\n" % i for i in range(200))
        result = run("client", server.host, str(server.port), input=lines)
        assert result.stdout == lines
        assert result.seconds < 5.0
        assert recv_exactly(idle[0], 9) == b"half a li"  # its echo did not wait for a newline
    finally:
        for s in idle:
            s.close()


def test_one_mib_of_random_bytes_byte_for_byte(start):
    server = start("server", "--port", "0", "--quiet")
    payload = os.urandom(MIB)
    with tcp_connect(server.address, timeout=10) as s:
        assert exchange(s, payload) == payload


def test_small_max_buffer_still_echoes_everything(start):
    server = start("server", "--port", "0", "--quiet", "--max-buffer", "1")
    payload = os.urandom(200000)
    with tcp_connect(server.address, timeout=10) as s:
        assert exchange(s, payload) == payload


def test_writer_that_never_reads_is_held_back(start):
    server = start("server", "--port", "0", "--quiet")
    echo_ok(server)
    rss_before = rss_kib(server.pid)
    hog = tcp_connect(server.address)
    hog.setblocking(False)
    chunk = os.urandom(MIB)
    sent = 0
    deadline = time.monotonic() + 5
    while sent < 32 * MIB and time.monotonic() < deadline:
        try:
            sent += hog.send(chunk)
        except BlockingIOError:  # stalled: done if no room comes within half a second
            if not select.select([], [hog], [], 0.5)[1]:
                break
    try:
        # Kernel buffers on both sides take some MiB; then the server stops reading.
        assert sent < 32 * MIB, "the server kept reading from a client that never reads"
        for _ in range(5):
            assert echo_ok(server) < 2.0
        growth = rss_kib(server.pid) - rss_before
        assert growth < rss_budget_kib(server.pid), "resident size grew %d KiB" % growth
    finally:
        hog.close()


def test_reset_mid_stream_drops_only_that_client(start):
    server = start("server", "--port", "0")
    baseline = open_fds(server.pid)
    with tcp_connect(server.address) as other:
        s = tcp_connect(server.address)
        s.sendall(os.urandom(256 * 1024))
        reset(s)
        server.expect(r"dropped: Connection reset by peer")
        other.sendall(b"still here\n")
        assert recv_exactly(other, 11) == b"still here\n"
    fds_back_to(server, baseline)
    echo_ok(server)


def test_half_close_gets_whole_echo_then_eof(start):
    server = start("server", "--port", "0", "--quiet")
    payload = os.urandom(300000)
    with tcp_connect(server.address) as s:
        threading.Thread(target=lambda: (s.sendall(payload), s.shutdown(socket.SHUT_WR)),
                         daemon=True).start()
        assert read_to_end(s) == payload


def test_clients_leaving_together_do_not_disturb_the_rest(start):
    # Removal moves the last client into the gap; the one moved must still be served in
    # the same pass, and its buffer must travel with it.
    server = start("server", "--port", "0", "--quiet")
    baseline = open_fds(server.pid)
    socks = [tcp_connect(server.address) for _ in range(60)]
    try:
        for rnd in range(5):
            wait_until(lambda: open_fds(server.pid) == baseline + len(socks), what="all in")
            staying = []
            for i, s in enumerate(socks):
                if i % 2 == rnd % 2 and len(socks) > 4:
                    reset(s) if i % 4 else s.close()
                else:
                    s.sendall(b"%d stays in round %d\n" % (i, rnd))
                    staying.append((i, s))
            for i, s in staying:
                want = b"%d stays in round %d\n" % (i, rnd)
                assert recv_exactly(s, len(want)) == want
            socks = [s for _, s in staying] + [tcp_connect(server.address) for _ in range(10)]
    finally:
        for s in socks:
            s.close()
    fds_back_to(server, baseline)


# ------------------------------------------------------------------------- limits

def test_max_clients_one_more_gets_server_busy(start):
    server = start("server", "--port", "0", "--max-clients", "3")
    held = [tcp_connect(server.address) for _ in range(3)]
    try:
        for s in held:
            s.sendall(b"x\n")
            assert recv_exactly(s, 2) == b"x\n"
        with tcp_connect(server.address) as extra:
            assert read_to_end(extra) == BUSY
        server.expect(r"^refused 127\.0\.0\.1:\d+: server busy \(descriptor \d+, 3 clients\)$")
        held.pop().close()
        server.expect(r" left$")
        echo_ok(server)
    finally:
        for s in held:
            s.close()


def test_out_of_descriptors_neither_spins_nor_stops(start):
    # 64 descriptors and --max-clients far above that: accept() meets EMFILE.
    server = start("server", "--port", "0", "--max-clients", "1000", preexec=nofile(64))
    baseline = open_fds(server.pid)
    socks = [tcp_connect(server.address) for _ in range(100)]
    try:
        def settled():
            accepted = open_fds(server.pid) - baseline
            refused = len(readable(socks))
            return accepted + refused == 100 and (accepted, refused)
        accepted, refused = wait_until(settled, timeout=10, what="every attempt answered")
        assert accepted >= 40 and refused >= 30
        for s in readable(socks):
            assert read_to_end(s) == BUSY
        busy_before = cpu_seconds(server.pid)
        time.sleep(1.0)  # measuring CPU use over a second, not waiting for anything
        assert cpu_seconds(server.pid) - busy_before < 0.3, "the server spins while starved"
        assert sum(b"out of descriptors" in l for l in server.stdout_lines) == 1
        held = [s for s in socks if s.fileno() != -1 and not readable([s])]
        for s in held[:10]:
            s.close()
        wait_until(lambda: open_fds(server.pid) == baseline + accepted - 10, what="10 closed")
        echo_ok(server)
        held[10].sendall(b"old friend\n")
        assert recv_exactly(held[10], 11) == b"old friend\n"
    finally:
        for s in socks:
            s.close()


# ------------------------------------------------------------------------ signals

@pytest.mark.parametrize("signo", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_exits_0_with_clients_connected(start, signo):
    server = start("server", "--port", "0")
    with tcp_connect(server.address) as a, tcp_connect(server.address) as b:
        a.sendall(b"a\n")
        assert recv_exactly(a, 2) == b"a\n"
        wait_until(lambda: sum(b"connected" in l for l in server.stdout_lines) == 2)
        assert server.stop(signo) == 0
        assert server.stdout_lines[-1] == b"stopping on signal %d with 2 clients" % signo
        assert read_to_end(b) == b""  # the server closed its end on the way out


def test_sigterm_while_idle(start):
    server = start("server", "--port", "0", "--quiet")
    assert server.stop() == 0
    assert server.stderr == ""


# ------------------------------------------------------------------- fault sweep

def fault_random_bytes(server):
    data = os.urandom(65536)
    with tcp_connect(server.address) as s:
        assert exchange(s, data) == data
    return []


def fault_connect_and_close(server):
    seen = len(server.stdout_lines)
    for _ in range(50):
        tcp_connect(server.address).close()
    # Until the server has read their ends of stream, the dead ones still count against
    # --max-clients; wait until each of the 50 has left or been refused.
    # (A close can also arrive as a reset, logged as "dropped". At least 50: the previous
    # client's "left" may be logged just after `seen` was taken.)
    wait_until(lambda: sum(l.endswith(b" left") or l.startswith(b"refused ")
                           or b" dropped: " in l for l in server.stdout_lines[seen:]) >= 50,
               what="50 connections handled")
    return []


def fault_zero_bytes_then_half_close(server):
    with tcp_connect(server.address) as s:
        s.shutdown(socket.SHUT_WR)
        assert read_to_end(s) == b""
    return []


def fault_silent_peer(server):
    return [tcp_connect(server.address) for _ in range(5)]


def fault_half_message_and_stall(server):
    s = tcp_connect(server.address)
    s.sendall(b"this line never ends")
    return [s]


def fault_max_buffer_in_one_burst(server):
    data = os.urandom(MIB)  # exactly --max-buffer, sent before reading anything
    with tcp_connect(server.address, timeout=10) as s:
        s.sendall(data)
        assert recv_exactly(s, MIB) == data
    return []


def fault_megabyte_without_newline(server):
    data = b"x" * MIB
    with tcp_connect(server.address, timeout=10) as s:
        assert exchange(s, data) == data
    return []


def fault_reset_mid_transfer(server):
    for _ in range(5):
        s = tcp_connect(server.address)
        s.sendall(os.urandom(200000))
        reset(s)
    return []


def fault_never_reads_replies(server):
    s = tcp_connect(server.address)
    s.setblocking(False)
    chunk = b"r" * 65536
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        try:
            s.send(chunk)
        except BlockingIOError:
            select.select([], [s], [], 0.05)
    return [s]


def fault_more_clients_than_the_limit(server):
    held = [tcp_connect(server.address) for _ in range(8)]
    extra = [tcp_connect(server.address) for _ in range(4)]
    try:
        for s in extra:
            assert read_to_end(s) == BUSY
    finally:
        for s in held + extra:
            s.close()
    return []


FAULTS = [fault_random_bytes, fault_connect_and_close, fault_zero_bytes_then_half_close,
          fault_silent_peer, fault_half_message_and_stall, fault_max_buffer_in_one_burst,
          fault_megabyte_without_newline, fault_reset_mid_transfer, fault_never_reads_replies,
          fault_more_clients_than_the_limit]


@pytest.mark.faults
@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.__name__[6:])
def test_fault_sweep(start, fault):
    server = start("server", "--port", "0", "--max-clients", "8")
    baseline = open_fds(server.pid)
    echo_ok(server)
    fds_back_to(server, baseline)
    rss_before = rss_kib(server.pid)
    held = fault(server)
    try:
        if held:  # served while the fault is still in place
            assert echo_ok(server, b"fresh client\n" * 100) < 2.0
    finally:
        for s in held:
            s.close()
    fds_back_to(server, baseline)
    assert echo_ok(server, b"fresh client\n" * 100) < 2.0
    assert rss_kib(server.pid) - rss_before < rss_budget_kib(server.pid)
    assert server.proc.poll() is None
