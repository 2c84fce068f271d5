"""Lab 03-tcp-echo: an iterative TCP echo server (one client at a time) and its client."""

import os
import re
import signal
import socket
import subprocess
import time

import pytest

from conftest import (needs_ipv6, open_fds, process_state, recv_exactly, rss_kib, tcp_connect,
                      wait_until)

from stream_faults import (MIB, fault_half_close, fault_half_message_then_stall,
                           fault_megabyte_without_newline, fault_never_reads,
                           fault_random_bytes, fault_reset_mid_transfer, fault_silent_peer,
                           fault_zero_bytes, linger_reset, roundtrip, served,
                           stuff_without_reading)


# ----------------------------------------------------------------- the normal path

def test_client_echoes_each_line(start, run):
    server = start("server", "--port", "0")
    result = run("client", "--host", server.host, "--port", str(server.port),
                 input=b"hello\nworld\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hello\nworld\n"
    assert result.stderr == ""


def test_positional_arguments(start, run):
    server = start("server", "0")  # server [PORT]
    result = run("client", server.host, str(server.port), input=b"positional\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"positional\n"


def test_last_line_without_newline_comes_back_with_one(start, run):
    server = start("server", "-p", "0")
    result = run("client", "-H", server.host, "-p", str(server.port), input=b"a\n\nlast")
    assert result.stdout == b"a\n\nlast\n"


def test_binary_bytes_pass_unchanged(start, run):
    server = start("server", "--port", "0")
    data = b"nul\x00inside\n\xff\xfe\x80\n\x00\n"
    result = run("client", server.host, str(server.port), input=data)
    assert result.returncode == 0, result.stderr
    assert result.stdout == data


def test_server_logs_connect_bytes_and_leave(start):
    server = start("server", "--port", "0")
    with tcp_connect(server.address) as s:
        me = re.escape("%s:%d" % s.getsockname())
        s.sendall(b"12345")
        assert recv_exactly(s, 5) == b"12345"
    server.expect(r"^client %s connected$" % me)
    server.expect(r"^from %s: 5 bytes$" % me)
    server.expect(r"^client %s left after 5 bytes$" % me)


def test_quiet_server_logs_nothing(start):
    server = start("server", "--port", "0", "--quiet")
    assert served(server.address)
    assert server.stop() == 0
    assert server.stdout_lines[1:] == []


@needs_ipv6
def test_ipv6(start, run):
    server = start("server", "--host", "::1", "--port", "0")
    assert server.address.text.startswith("[::1]:")
    result = run("client", "::1", str(server.port), input=b"six\n")
    assert result.stdout == b"six\n"


# ----------------------------------------------------------------- real peers

def test_nc_interop(start):
    server = start("server", "--port", "0")
    nc = subprocess.run(["nc", "-N", server.host, str(server.port)],
                        input=b"from netcat\nline two\n", capture_output=True, timeout=10)
    assert nc.stdout == b"from netcat\nline two\n"


def test_one_mebibyte_of_random_bytes(start):
    server = start("server", "--port", "0", "--quiet")
    payload = os.urandom(MIB)
    assert roundtrip(server.address, payload) == payload


def test_one_mebibyte_line_through_the_client(start, run):
    server = start("server", "--port", "0", "--quiet")
    line = b"x" * MIB + b"\n"
    result = run("client", server.host, str(server.port), input=line)
    assert result.returncode == 0, result.stderr
    assert result.stdout == line


def test_stream_cuts_are_not_messages(start):
    """Two writes may arrive as one read: the server echoes bytes, not messages."""
    server = start("server", "--port", "0")
    with tcp_connect(server.address) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for piece in (b"one ", b"two ", b"three\n"):
            s.sendall(piece)
        assert recv_exactly(s, 14) == b"one two three\n"


# ----------------------------------------------------------------- one at a time

def test_second_client_waits_in_the_backlog_then_is_served(start):
    server = start("server", "--port", "0")
    first = tcp_connect(server.address)
    first.sendall(b"first\n")
    assert recv_exactly(first, 6) == b"first\n"

    second = tcp_connect(server.address)  # the kernel completes the handshake at once
    second.sendall(b"second\n")
    second.settimeout(0.5)
    with pytest.raises(socket.timeout):   # ... but nobody reads it while first is served
        second.recv(100)

    first.close()
    second.settimeout(10)
    assert recv_exactly(second, 7) == b"second\n"
    second.close()


def test_reset_mid_stream_then_next_client_served(start):
    server = start("server", "--port", "0")
    s = tcp_connect(server.address)
    s.sendall(b"y" * 200000)  # the server is busy echoing into a peer that does not read
    linger_reset(s)
    assert served(server.address)
    server.expect(r"client .* left after \d+ bytes")
    assert server.proc.poll() is None


def test_idle_client_is_dropped(start):
    server = start("server", "--port", "0", "--idle-timeout", "0.5")
    with tcp_connect(server.address, timeout=10) as silent:
        assert silent.recv(10) == b""  # the server closed it
    wait_until(lambda: "idle too long" in server.stderr, what="the report on stderr")
    assert served(server.address)


# ----------------------------------------------------------------- errors and arguments

def test_no_server_connection_refused(run):
    with socket.socket() as bound:  # bound but not listening: connect() gets RST
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        result = run("client", "127.0.0.1", str(port), input=b"hi\n")
    assert result.returncode == 1
    assert result.stdout == b""
    assert re.search(r"^client: connect 127\.0\.0\.1:%d: Connection refused$" % port,
                     result.stderr, re.M), result.stderr


def test_bind_in_use_exits_1(start, run):
    server = start("server", "--port", "0")
    result = run("server", "--port", str(server.port))
    assert result.returncode == 1
    assert "server: bind 127.0.0.1:%d: Address already in use" % server.port in result.stderr


@pytest.mark.parametrize("prog,args", [
    ("server", ["--port", "70000"]),
    ("server", ["--no-such-flag"]),
    ("server", ["--idle-timeout", "soon"]),
    ("server", ["--idle-timeout", "-1"]),
    ("server", ["1", "2"]),
    ("server", ["--host", "1.2.3.999"]),
    ("client", ["--port", "nine"]),
    ("client", ["127.0.0.1", "1", "extra"]),
    ("client", ["--host"]),
])
def test_bad_arguments_exit_2(run, prog, args):
    result = run(prog, *args)
    assert result.returncode == 2
    assert "usage:" in result.stderr
    assert result.stdout == b""


def test_help(run):
    for prog, port in (("server", "9903"), ("client", "9903")):
        result = run(prog, "--help")
        assert result.returncode == 0
        assert result.stdout.startswith(b"usage: ")
        assert port.encode() in result.stdout


# ----------------------------------------------------------------- stopping

def test_sigterm_when_idle_exits_0(start):
    server = start("server", "--port", "0")
    assert server.stop(signal.SIGTERM) == 0
    assert server.stdout_lines[-1] == b"stopping on signal 15"


def test_sigint_with_a_client_connected_exits_0(start):
    server = start("server", "--port", "0")
    with tcp_connect(server.address) as s:
        s.sendall(b"hi\n")
        assert recv_exactly(s, 3) == b"hi\n"
        # A signal that lands between the flag check and read() waits for the next event
        # (see the handout's Pitfalls), so signal it once it sleeps in read().
        wait_until(lambda: process_state(server.pid) == "S", what="server asleep in read")
        assert server.stop(signal.SIGINT) == 0
        assert s.recv(10) == b""  # the server's close reached us


def test_sigterm_while_blocked_writing_exits_0(start):
    """A peer that never reads: the server is stuck in write(), and SIGTERM still ends it
    (at the latest when the idle timeout fires, should the signal land just before)."""
    server = start("server", "--port", "0", "--idle-timeout", "3", "--quiet")
    s = tcp_connect(server.address)
    stuff_without_reading(s)
    assert server.stop(signal.SIGTERM, timeout=10) == 0
    s.close()


# ----------------------------------------------------------------- fault sweep

def fault_queue_of_clients_that_left(address):
    """Ten clients queue behind a silent one, each sends a line and leaves unanswered."""
    silent = tcp_connect(address)
    for _ in range(10):
        with tcp_connect(address) as s:
            s.sendall(b"gone before served\n")
    return [silent]


FAULTS = [fault_random_bytes, fault_zero_bytes, fault_megabyte_without_newline,
          fault_silent_peer, fault_half_message_then_stall, fault_reset_mid_transfer,
          fault_half_close, fault_never_reads, fault_queue_of_clients_that_left]


@pytest.mark.faults
def test_fault_sweep(start):
    server = start("server", "--port", "0", "--idle-timeout", "1", "--quiet")
    fds = open_fds(server.pid)  # idle: standard streams and the listening socket
    assert served(server.address)
    rss = rss_kib(server.pid)
    for fault in FAULTS:
        began = time.monotonic()
        leftovers = fault(server.address) or []
        # The server drops a stalled peer after its idle timeout, then serves the next.
        assert served(server.address), fault.__name__
        for s in leftovers:
            s.close()
        wait_until(lambda: open_fds(server.pid) == fds, timeout=10,
                   what="descriptors back to %d after %s" % (fds, fault.__name__))
        assert server.proc.poll() is None, fault.__name__
        print("%s: served again after %.2fs" % (fault.__name__, time.monotonic() - began))
    assert rss_kib(server.pid) < rss + 32 * 1024
    assert server.stop() == 0
