"""Lab 09: the epoll echo server, in both --mode lt and --mode et.

Every behaviour test runs once per mode. The fault sweep (marker `faults`) hits one server
with one fault, then checks that a fresh client is served, that the server's descriptor
count returns to its baseline and that its memory stays bounded.
"""

import os
import resource
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import (cpu_seconds, needs_ipv6, open_fds, recv_exactly, rss_kib, tcp_connect,
                      wait_until)

MIB = 1 << 20


@pytest.fixture(params=["lt", "et"])
def mode(request):
    return request.param


def serve(start, mode, *extra, **kw):
    return start("server", "--port", "0", "--mode", mode, *extra, **kw)


def echo_ok(server, payload=b"ping\n", timeout=2.0):
    """A fresh client gets its bytes back, all within `timeout` seconds."""
    began = time.monotonic()
    with tcp_connect(server.address, timeout=timeout) as s:
        s.sendall(payload)
        assert recv_exactly(s, len(payload)) == payload
    assert time.monotonic() - began < timeout


def settle(server, baseline, timeout=5.0):
    """Waits until the server holds exactly its baseline descriptors again."""
    wait_until(lambda: open_fds(server.pid) == baseline, timeout=timeout,
               what="server fds back to %d" % baseline)


def reset(sock):
    """Closes with SO_LINGER 0: the kernel sends RST instead of FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


def limit_fds(n):
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))


# ------------------------------------------------------------------- the normal path

def test_client_echoes_lines_and_binary(start, run, mode):
    server = serve(start, mode)
    data = b"hello\nworld\n\x00\xff binary \x00\n" + b"x" * 100000 + b"\n"
    result = run("client", server.host, str(server.port), input=data)
    assert result.returncode == 0, result.stderr
    assert result.stdout == data
    server.expect(r"client 127\.0\.0\.1:\d+ connected as fd \d+")
    server.expect(r"fd \d+ closed: end of stream")


@needs_ipv6
def test_ipv6(start, run, mode):
    server = serve(start, mode, "--host", "::1")
    assert server.address.text.startswith("[::1]:")
    result = run("client", "--host", "::1", "--port", str(server.port), input=b"six\n")
    assert (result.returncode, result.stdout) == (0, b"six\n")


def test_nc_and_socat_are_served(start, mode):
    server = serve(start, mode)
    data = b"one\ntwo\n"
    nc = subprocess.run(["nc", "-N", server.host, str(server.port)], input=data,
                        capture_output=True, timeout=10)
    assert nc.stdout == data
    socat = subprocess.run(["socat", "-t", "5", "-", "TCP:%s:%d" % (server.host, server.port)],
                           input=data, capture_output=True, timeout=10)
    assert socat.stdout == data


def test_two_hundred_clients_at_once(start, mode):
    server = serve(start, mode, "--quiet")
    socks = [tcp_connect(server.address) for _ in range(200)]
    try:
        for i, s in enumerate(socks):
            s.sendall(b"client %d\n" % i)
        for i, s in enumerate(socks):
            want = b"client %d\n" % i
            assert recv_exactly(s, len(want)) == want
    finally:
        for s in socks:
            s.close()


def test_megabyte_of_random_bytes_both_ways(start, mode):
    server = serve(start, mode, "--quiet")
    data = os.urandom(MIB)
    with tcp_connect(server.address, timeout=10) as s:
        writer = threading.Thread(target=s.sendall, args=(data,))
        writer.start()
        got = recv_exactly(s, len(data))
        writer.join(10)
    assert got == data


def test_stream_has_no_message_boundaries(start, mode):
    """Bytes sent in pieces come back complete, in order, whatever the pieces."""
    server = serve(start, mode)
    with tcp_connect(server.address) as s:
        for piece in (b"he", b"ll", b"o\nwo", b"rld\n"):
            s.sendall(piece)
        assert recv_exactly(s, 12) == b"hello\nworld\n"


# ------------------------------------------------------------ one client stalls no one

def test_idle_clients_and_half_a_line_do_not_delay_anyone(start, mode):
    server = serve(start, mode, "--quiet")
    idle = [tcp_connect(server.address) for _ in range(100)]
    half = tcp_connect(server.address)
    half.sendall(b"half a li")  # no newline: an echo server returns it anyway
    try:
        assert recv_exactly(half, 9) == b"half a li"
        for i in range(20):
            echo_ok(server, b"round %d\n" % i)
    finally:
        for s in idle + [half]:
            s.close()


def test_fast_sender_does_not_starve_others(start, mode):
    """A client streaming as fast as it can; another still gets each echo within 2 s."""
    server = serve(start, mode, "--quiet")
    stop = threading.Event()
    flood = tcp_connect(server.address, timeout=5)

    def pump():
        chunk = b"f" * 65536
        try:
            while not stop.is_set():
                flood.sendall(chunk)
                recv_exactly(flood, len(chunk))
        except OSError:
            pass

    t = threading.Thread(target=pump)
    t.start()
    try:
        for i in range(10):
            echo_ok(server, b"turn %d\n" % i)
    finally:
        stop.set()
        t.join(10)
        flood.close()


def test_writer_that_never_reads_is_throttled(start, mode):
    """16 MiB written, nothing read: the server stops reading it and stays small."""
    server = serve(start, mode, "--quiet")
    echo_ok(server)
    before = rss_kib(server.pid)
    hog = socket.socket(server.family, socket.SOCK_STREAM)
    hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # little room on our side
    hog.connect(server.sockaddr)
    hog.settimeout(0.5)
    chunk, sent = os.urandom(65536), 0
    try:
        while sent < 16 * MIB:
            sent += hog.send(chunk)
    except socket.timeout:
        pass  # the server stopped reading: backpressure reached us
    try:
        assert sent < 16 * MIB, "the server read everything: no backpressure"
        for i in range(5):
            echo_ok(server, b"still here %d\n" % i)
        grown = rss_kib(server.pid) - before
        assert grown < 6 * 1024, "server grew by %d KiB holding one slow reader" % grown
    finally:
        hog.close()


def test_max_buffer_flag_bounds_the_queue(start, mode):
    server = serve(start, mode, "--quiet", "--max-buffer", "65536")
    before = rss_kib(server.pid)
    with socket.create_connection(server.sockaddr, timeout=0.5) as hog:
        try:
            for _ in range(256):
                hog.sendall(b"y" * 65536)
        except socket.timeout:
            pass
        echo_ok(server)
        grown = rss_kib(server.pid) - before
        assert grown < 768, "%d KiB: more than --max-buffer 65536 explains" % grown


# ------------------------------------------------------------------------- limits

def test_max_clients_says_server_busy(start, mode):
    server = serve(start, mode, "--max-clients", "2")
    a, b = tcp_connect(server.address), tcp_connect(server.address)
    try:
        for s in (a, b):
            s.sendall(b"in\n")
            assert recv_exactly(s, 3) == b"in\n"
        with_two = open_fds(server.pid)  # counted once both are in (no start-up noise)
        with tcp_connect(server.address) as third:
            assert recv_exactly(third, 12) == b"server busy\n"
            assert third.recv(100) == b""  # and closed
        server.expect(r"refused 127\.0\.0\.1:\d+: server busy")
        a.close()
        settle(server, with_two - 1)
        echo_ok(server, b"my turn\n")
    finally:
        a.close()
        b.close()


def test_descriptor_limit_gives_busy_not_a_crash(start, mode):
    """Under RLIMIT_NOFILE 64 the default --max-clients leaves room to say 'busy'."""
    server = serve(start, mode, "--quiet", preexec=limit_fds(64))
    baseline = open_fds(server.pid)
    socks = [tcp_connect(server.address) for _ in range(100)]
    try:
        echoed = busy = 0
        for s in socks:
            s.sendall(b"hi\n")
        for s in socks:
            reply = recv_exactly(s, 3)
            if reply == b"hi\n":
                echoed += 1
            else:
                assert reply + recv_exactly(s, 9) == b"server busy\n"
                busy += 1
        assert echoed >= 40 and busy >= 20, (echoed, busy)
    finally:
        for s in socks:
            s.close()
    settle(server, baseline)
    echo_ok(server)


def test_out_of_descriptors_pauses_accepting_without_spinning(start, mode):
    """--max-clients above the descriptor limit: accept4() fails with EMFILE."""
    server = serve(start, mode, "--quiet", "--max-clients", "1000", preexec=limit_fds(64))
    socks = [tcp_connect(server.address) for _ in range(100)]  # the kernel queues them all
    try:
        wait_until(lambda: "pausing accepts" in server.stderr, timeout=5, what="EMFILE report")
        assert "Too many open files" in server.stderr
        cpu = cpu_seconds(server.pid)
        time.sleep(1.0)  # a measurement window, not a wait for readiness
        assert cpu_seconds(server.pid) - cpu < 0.3, "the server spins while out of fds"
        socks[0].sendall(b"first\n")
        assert recv_exactly(socks[0], 6) == b"first\n"  # accepted ones are still served
        for s in socks[:60]:
            s.close()
        for i, s in enumerate(socks[60:]):  # queued until descriptors came free
            s.sendall(b"late %d\n" % i)
            want = b"late %d\n" % i
            assert recv_exactly(s, len(want)) == want
        assert server.stderr.count("pausing accepts") == 1, server.stderr  # once, no flood
    finally:
        for s in socks:
            s.close()
    assert server.stop() == 0


# --------------------------------------------------------------------- faults, signals

def test_reset_mid_stream_drops_only_that_client(start, mode):
    server = serve(start, mode)
    baseline = open_fds(server.pid)
    bystander = tcp_connect(server.address)
    s = tcp_connect(server.address)
    s.sendall(os.urandom(512 * 1024))
    reset(s)
    server.expect(r"closed: (Connection reset by peer|Broken pipe|hang-up)")
    bystander.sendall(b"fine\n")
    assert recv_exactly(bystander, 5) == b"fine\n"
    bystander.close()
    settle(server, baseline)
    echo_ok(server)


def test_half_close_gets_every_byte_then_eof(start, mode):
    server = serve(start, mode)
    data = os.urandom(300 * 1024)
    with tcp_connect(server.address) as s:
        threading.Thread(target=lambda: (s.sendall(data), s.shutdown(socket.SHUT_WR))).start()
        assert recv_exactly(s, len(data)) == data
        assert s.recv(1) == b""  # the server closed after the last byte
    server.expect(r"closed: end of stream")


@pytest.mark.parametrize("signo", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_exits_zero_with_clients_connected(start, mode, signo):
    server = serve(start, mode)
    socks = [tcp_connect(server.address) for _ in range(20)]
    socks[0].sendall(b"x" * 100000)  # one mid-transfer
    try:
        assert server.stop(signo) == 0
        server.expect(r"stopping on signal %d" % signo)
        for s in socks:  # every connection was closed, none left hanging
            s.settimeout(5)
            try:
                while s.recv(1 << 20):
                    pass
            except ConnectionResetError:
                pass  # closed with our bytes unread: RST instead of FIN, closed all the same
    finally:
        for s in socks:
            s.close()


def test_stop_signal_during_heavy_traffic(start, mode):
    """SIGINT/SIGTERM are blocked outside epoll_pwait(): a busy loop still sees them."""
    server = serve(start, mode, "--quiet")
    stop = threading.Event()

    def pump():
        try:
            with tcp_connect(server.address, timeout=5) as s:
                while not stop.is_set():
                    s.sendall(b"z" * 4096)
                    recv_exactly(s, 4096)
        except (OSError, AssertionError):
            pass

    threads = [threading.Thread(target=pump) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        assert server.stop(signal.SIGTERM, timeout=5) == 0
    finally:
        stop.set()
        for t in threads:
            t.join(10)


@pytest.mark.parametrize("args", [
    ["--mode", "xt"], ["--mode"], ["--max-buffer", "0"], ["--max-clients", "0"],
    ["--max-clients", "many"], ["--port", "70000"], ["--port", "nine"], ["--bogus"],
    ["1", "2"], ["--quiet=yes"],
])
def test_bad_arguments_exit_2_with_usage(run, args):
    result = run("server", *args)
    assert result.returncode == 2
    assert "usage" in result.stderr
    assert result.stdout == b""


def test_help_and_client_arguments(run):
    result = run("server", "--help")
    assert result.returncode == 0 and b"--mode lt|et" in result.stdout
    result = run("client", "--port", "99999")
    assert result.returncode == 2 and "usage" in result.stderr
    result = run("client", "--help")
    assert result.returncode == 0 and b"9909" in result.stdout


def test_port_in_use_is_an_error(start, run):
    server = serve(start, "lt")
    result = run("server", "--port", str(server.port))
    assert result.returncode == 1
    assert "server: bind 127.0.0.1:%d: Address already in use" % server.port in result.stderr


# ------------------------------------------------------------------ ten thousand

@pytest.mark.slow
def test_ten_thousand_connections(start, mode):
    wanted = 10000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted + 500:
        pytest.skip("RLIMIT_NOFILE hard limit %d is below %d" % (hard, wanted + 500))
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the server inherits it too
    socks = []
    try:
        server = serve(start, mode, "--quiet")
        baseline = open_fds(server.pid)
        echo_ok(server)
        before = rss_kib(server.pid)
        for _ in range(wanted):
            socks.append(tcp_connect(server.address))
        wait_until(lambda: open_fds(server.pid) >= baseline + wanted, timeout=10, interval=0.1,
                   what="%d connections accepted" % wanted)
        per_conn = (rss_kib(server.pid) - before) * 1024 / wanted
        print("\n%s: resident memory per idle connection: %.0f bytes" % (mode, per_conn))
        assert per_conn < 300, "%.0f bytes of resident memory per idle connection" % per_conn
        for s in socks[::1000] + socks[-1:]:
            s.sendall(b"are you there\n")
            assert recv_exactly(s, 14) == b"are you there\n"
        echo_ok(server)
        for s in socks:
            s.close()
        socks.clear()
        settle(server, baseline, timeout=10)
    finally:
        for s in socks:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# ------------------------------------------------------------------- the fault sweep

def fault_random_bytes(server):
    data = os.urandom(64 * 1024)
    with tcp_connect(server.address) as s:
        s.sendall(data)
        assert recv_exactly(s, len(data)) == data


def fault_nothing_then_close(server):
    tcp_connect(server.address).close()


def fault_max_buffer_unread(server):
    with socket.create_connection(server.sockaddr, timeout=0.5) as s:
        try:
            s.sendall(os.urandom(MIB))  # as much as --max-buffer, never read back
        except socket.timeout:
            pass


def fault_megabyte_without_newline(server):
    data = b"m" * MIB
    with tcp_connect(server.address, timeout=10) as s:
        threading.Thread(target=s.sendall, args=(data,)).start()
        assert recv_exactly(s, len(data)) == data


def fault_silent_peer(server):
    with tcp_connect(server.address):
        echo_ok(server)  # served while the silent one is connected


def fault_half_message_stalls(server):
    with tcp_connect(server.address) as s:
        s.sendall(b"incompl")
        echo_ok(server)


def fault_reset_mid_transfer(server):
    s = tcp_connect(server.address)
    s.sendall(os.urandom(256 * 1024))
    reset(s)


def fault_half_close(server):
    with tcp_connect(server.address) as s:
        s.sendall(b"bye\n")
        s.shutdown(socket.SHUT_WR)
        assert recv_exactly(s, 4) == b"bye\n"
        assert s.recv(1) == b""


def fault_never_reads_replies(server):
    with socket.create_connection(server.sockaddr, timeout=0.3) as s:
        try:
            for _ in range(64):
                s.sendall(b"r" * 65536)
        except socket.timeout:
            pass


def fault_many_at_once(server):
    socks = [tcp_connect(server.address) for _ in range(50)]
    for s in socks:
        reset(s)


FAULTS = [fault_random_bytes, fault_nothing_then_close, fault_max_buffer_unread,
          fault_megabyte_without_newline, fault_silent_peer, fault_half_message_stalls,
          fault_reset_mid_transfer, fault_half_close, fault_never_reads_replies,
          fault_many_at_once]


@pytest.mark.faults
@pytest.mark.parametrize("fault", FAULTS, ids=[f.__name__[6:] for f in FAULTS])
def test_fault_sweep(start, mode, fault):
    server = serve(start, mode, "--quiet")
    baseline = open_fds(server.pid)
    echo_ok(server)
    before = rss_kib(server.pid)
    fault(server)
    echo_ok(server, b"after the fault\n")
    settle(server, baseline)
    assert rss_kib(server.pid) - before < 8 * 1024
    assert server.stop() == 0
