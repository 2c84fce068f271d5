"""Lab 06: half-close echo (read to end of stream, send it all back), TIME_WAIT,
SO_REUSEADDR and SO_REUSEPORT; the idle timeout, the client's --timeout, and a stop on
time whatever the server is doing."""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import subprocess
import threading
import time

import pytest

from conftest import (STOP_WITHIN, connect, needs_ipv6, read_to_end, recv_exactly, roundtrip,
                      wait_until)
from faults import (MIB, STREAM_FAULTS, echoes, fault_name, fault_never_reads,
                    fault_never_reads_reply, fault_over_the_limit, survive)


TIME_WAIT = "06"  # the state column of /proc/net/tcp


def tcp_states(port: int) -> list[tuple[int, int, str]]:
    """(local port, remote port, state) of every TCP socket on loopback using `port`."""
    rows = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local = int(fields[1].rsplit(":", 1)[1], 16)
            remote = int(fields[2].rsplit(":", 1)[1], 16)
            if port in (local, remote):
                rows.append((local, remote, fields[3]))
    return rows


def time_wait_on(port: int, local_port: int) -> bool:
    return any(l == local_port and st == TIME_WAIT for l, _, st in tcp_states(port))


# ------------------------------------------------------------------ command line

def test_help_and_bad_arguments(run):
    """--help shows the lab's options; a bad argument exits 2 with the usage. The server's
    timeout is --idle-timeout, as in every server (--timeout is the clients')."""
    help_text = run("server", "--help").stdout
    for flag in (b"--max-bytes", b"--idle-timeout", b"--no-reuseaddr", b"--reuseport"):
        assert flag in help_text
    assert b"--timeout" in run("client", "--help").stdout
    assert run("client", "--help").returncode == 0
    for bad in (["--max-bytes", "0"], ["--max-bytes", "lots"], ["--idle-timeout", "-1"],
                ["--idle-timeout"], ["--idle-timeout", "0"], ["--reuseport=yes"],
                ["--port", "x"], ["1", "2"], ["--timeout", "5"]):
        result = run("server", *bad)
        assert result.returncode == 2, bad
        assert "usage" in result.stderr, bad
    result = run("client", "--reuseport")
    assert result.returncode == 2 and "unknown option" in result.stderr
    for bad in (["--timeout", "0"], ["--timeout", "soon"], ["--idle-timeout", "1"]):
        result = run("client", *bad)
        assert result.returncode == 2 and "usage" in result.stderr, bad


@pytest.mark.parametrize("prog", ["server", "client"])
def test_a_hostile_argument_is_reported_escaped(run, prog):
    """A bad port with control bytes in it is reported escaped: no raw escape sequence
    reaches the terminal, and the one-line error stays one line."""
    result = run(prog, "--port", "9\x1b]0;owned\x07\n")
    assert result.returncode == 2
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr
    first = result.stderr.splitlines()[0]
    assert first == "%s: bad port '9\\x1b]0;owned\\x07\\n' (want 0 to 65535)" % prog, first


def test_no_server_is_connection_refused(run):
    """The client with nobody listening exits 1 with 'Connection refused'."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = run("client", "--port", str(port), input=b"hi\n")
    assert result.returncode == 1
    assert "connect 127.0.0.1:%d: Connection refused" % port in result.stderr


# ------------------------------------------------------------------ half-close

def test_round_trip_with_own_client(start, run):
    """The client sends all its input, half-closes, and prints the reply; the server logs the
    connection, the client's half-close and the end, each line with the server's pid."""
    server = start("server", "--port", "0")
    data = b"line one\nline two\n\x00\xff no newline at the end"
    result = run("client", server.host, str(server.port), input=data)
    assert result.returncode == 0, result.stderr
    assert result.stdout == data + b"\n"  # the harness adds a newline to a last partial line
    peer = r"127\.0\.0\.1:\d+"
    server.expect(r"^pid %d: client %s connected$" % (server.pid, peer))
    server.expect(r"^pid %d: client %s half-closed after %d bytes$" % (server.pid, peer, len(data)))
    server.expect(r"^pid %d: client %s left after %d bytes$" % (server.pid, peer, len(data)))


def test_every_log_line_carries_the_pid(start):
    """Every line after the ready line starts with the server's pid, the stop line too:
    with --reuseport several servers may share a terminal."""
    server = start("server", "--port", "0")
    echoes(server)
    assert server.stop() == 0
    lines = [line.decode() for line in server.stdout_lines[1:]]
    assert lines and all(line.startswith("pid %d: " % server.pid) for line in lines), lines
    assert lines[-1] == "pid %d: stopping on SIGTERM" % server.pid


def test_empty_input_gives_empty_reply(start, lab):
    """No input: an empty reply, and the client exits 0."""
    server = start("server", "--port", "0")
    out = subprocess.run([lab.path("client"), "--port", str(server.port)], input=b"",
                         capture_output=True, timeout=10)
    assert out.returncode == 0 and out.stdout == b""
    server.expect(r"half-closed after 0 bytes")


def test_one_mebibyte_round_trip(start, lab):
    """A mebibyte of random bytes makes the round trip, through the lab's client and through
    Python."""
    server = start("server", "--port", "0")
    data = os.urandom(1 << 20)
    out = subprocess.run([lab.path("client"), "--port", str(server.port)], input=data,
                         capture_output=True, timeout=20)
    assert out.returncode == 0, out.stderr
    assert out.stdout == data
    assert roundtrip(server.address, data) == data  # and through a Python peer


def test_sixteen_mebibytes_in_one_line(start, lab):
    """A single 16 MiB line, the server's default --max-bytes exactly: it all comes back."""
    server = start("server", "--port", "0", "--quiet")
    data = b"a" * (16 * MIB - 1) + b"\n"
    out = subprocess.run([lab.path("client"), "--port", str(server.port)], input=data,
                         capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == data


def test_nc_interop(start):
    """nc -N (which half-closes like the lab's client) gets its reply."""
    server = start("server", "--port", "0")
    # nc -N: shutdown(SHUT_WR) at the end of its input, exactly like our client.
    out = subprocess.run(["nc", "-N", server.host, str(server.port)], input=b"from nc\n",
                         capture_output=True, timeout=10)
    assert out.returncode == 0 and out.stdout == b"from nc\n"


@needs_ipv6
def test_over_ipv6(start, run):
    """The server listens on ::1 when asked; the client reaches it there."""
    server = start("server", "--host", "::1", "--port", "0")
    result = run("client", "--host", "::1", "--port", str(server.port), input=b"v6\n")
    assert result.returncode == 0 and result.stdout == b"v6\n"


def test_reply_comes_only_after_the_half_close(start):
    """The server answers only once the client has half-closed; then it sends the reply and its
    own end of stream."""
    server = start("server", "--port", "0")
    with connect(server.address) as s:
        s.sendall(b"part one, ")
        s.sendall(b"part two")
        server.expect(r"connected$")
        s.settimeout(0.5)
        with pytest.raises(socket.timeout):  # nothing yet: the server waits for our FIN
            s.recv(100)
        s.settimeout(5)
        s.shutdown(socket.SHUT_WR)  # our writing half is closed, our reading half is not
        assert recv_exactly(s, 18) == b"part one, part two"
        assert s.recv(100) == b""  # then the server's FIN


def test_the_client_ends_in_time_wait_after_a_normal_exchange(start):
    """The side that closes first ends in TIME_WAIT: after a normal exchange, the client's port."""
    server = start("server", "--port", "0")
    with connect(server.address) as s:
        client_port = s.getsockname()[1]
        s.sendall(b"x")
        s.shutdown(socket.SHUT_WR)
        assert recv_exactly(s, 1) == b"x"
        assert s.recv(10) == b""
    # The client sent the first FIN, so TIME_WAIT is on the client's port, not the server's.
    wait_until(lambda: time_wait_on(server.port, client_port), what="client in TIME_WAIT")
    assert not time_wait_on(server.port, server.port)


# ------------------------------------------------------------------ TIME_WAIT and restart

def stop_with_a_client_connected(start, *flags):
    """Stops a server while a client is connected: the server closes first, so after the
    client closes too, the server's port holds a connection in TIME_WAIT."""
    server = start("server", "--port", "0", *flags)
    s = connect(server.address)
    server.expect(r"connected$")
    assert server.stop() == 0
    assert s.recv(10) == b""  # the server's FIN
    s.close()
    wait_until(lambda: time_wait_on(server.port, server.port), what="server port in TIME_WAIT")
    assert "dropped: server stopping, closing first" in "\n".join(
        line.decode() for line in server.stdout_lines)
    return server.port


def test_restart_during_time_wait_succeeds_with_so_reuseaddr(start):
    """With SO_REUSEADDR a server restarts on its port at once, TIME_WAIT notwithstanding."""
    port = stop_with_a_client_connected(start)
    again = start("server", "--port", str(port))  # at once, TIME_WAIT still there
    assert again.port == port and time_wait_on(port, port)
    echoes(again)


def test_restart_during_time_wait_fails_without_so_reuseaddr(start, run):
    """Without SO_REUSEADDR (--no-reuseaddr) a restart during TIME_WAIT exits 1 with 'Address
    already in use'."""
    port = stop_with_a_client_connected(start, "--no-reuseaddr")
    result = run("server", "--no-reuseaddr", "--port", str(port))
    assert result.returncode == 1
    assert result.stderr == "server: bind 127.0.0.1:%d: Address already in use\n" % port
    assert time_wait_on(port, port)


def test_so_reuseaddr_does_not_allow_two_listeners(start, run):
    """SO_REUSEADDR does not let a second server listen on a live server's port."""
    server = start("server", "--port", "0")
    result = run("server", "--port", str(server.port))
    assert result.returncode == 1 and "Address already in use" in result.stderr


# ------------------------------------------------------------------ SO_REUSEPORT

def test_two_reuseport_servers_share_fifty_connections(start):
    """Two servers with --reuseport on one port: the kernel spreads fifty connections over both."""
    first = start("server", "--port", "0", "--reuseport")
    second = start("server", "--port", str(first.port), "--reuseport")
    for i in range(50):
        assert roundtrip(first.address, b"%d" % i) == b"%d" % i
    counts = {}
    for server in (first, second):
        server.stop()
        pids = [int(m.group(1)) for line in server.stdout_lines
                if (m := re.match(rb"^pid (\d+): client \S+ connected$", line))]
        assert set(pids) <= {server.pid}
        counts[server.pid] = len(pids)
    assert sum(counts.values()) == 50
    assert all(n > 0 for n in counts.values()), counts  # the kernel spread the load


def test_reuseport_needs_the_option_on_both(start, run):
    """SO_REUSEPORT works only if both servers set it."""
    first = start("server", "--port", "0", "--reuseport")
    result = run("server", "--port", str(first.port))
    assert result.returncode == 1 and "Address already in use" in result.stderr


# ------------------------------------------------------------------ limits and faults

def test_over_max_bytes_the_server_says_so(start, run):
    """--max-bytes 1000: a request of exactly the limit is answered; a larger one is refused
    with a line to the client and a log line; the client prints the line, says why on one
    line of stderr (its write or read met the server's close, or the reply was short), and
    exits 1."""
    server = start("server", "--port", "0", "--max-bytes", "1000")
    exact = b"a" * 999 + b"\n"  # exactly the limit is fine
    assert run("client", "--port", str(server.port), input=exact).stdout == exact
    result = run("client", "--port", str(server.port), input=b"b" * 5_000_000)
    assert result.returncode == 1
    assert result.stdout == b"server: more than 1000 bytes; closing\n"
    assert re.fullmatch(r"client: ((write|read) 127\.0\.0\.1:\d+: "
                        r"(Connection reset by peer|Broken pipe)"
                        r"|got \d+ bytes back from 127\.0\.0\.1:\d+ for \d+ sent)\n",
                        result.stderr), result.stderr
    server.expect(r"^pid \d+: client 127\.0\.0\.1:\d+ dropped: more than 1000 bytes$")
    assert roundtrip(server.address, b"still here\n") == b"still here\n"


def test_a_silent_peer_is_dropped_after_the_idle_timeout(start):
    """--idle-timeout 0.5: a client that stalls half way is dropped, and the next served."""
    server = start("server", "--port", "0", "--idle-timeout", "0.5")
    with connect(server.address) as silent:
        silent.sendall(b"half")  # and then nothing, no FIN either
        echoes(server)  # waits in the backlog until the silent one is dropped
        assert silent.recv(10) == b""
    server.expect(r"^pid \d+: client 127\.0\.0\.1:\d+ dropped: idle for 0\.5s$")


def test_a_tiny_idle_timeout_is_not_forever(start):
    """--idle-timeout 0.0000001 is rounded up to a microsecond, not down to 0 (which
    SO_RCVTIMEO reads as "no timeout"): a silent client is dropped at once."""
    server = start("server", "--port", "0", "--idle-timeout", "0.0000001")
    with connect(server.address) as s:
        assert read_to_end(s, timeout=10) == b""
    server.expect(r"dropped: idle for 1e-07s$")


def test_sigterm_exits_zero(start):
    """SIGTERM or SIGINT stops the server with status 0, and it says which."""
    server = start("server", "--port", "0")
    assert server.stop(signal.SIGTERM) == 0
    assert server.stdout_lines[-1].endswith(b": stopping on SIGTERM")
    server = start("server", "--port", "0")
    assert server.stop(signal.SIGINT) == 0
    assert server.stdout_lines[-1].endswith(b": stopping on SIGINT")


# ------------------------------------------------------------------ stopping on time

def stopped_within(server, seconds: float = STOP_WITHIN, signo=signal.SIGTERM) -> float:
    """Sends `signo` and returns how long the server took to exit 0."""
    began = time.monotonic()
    assert server.stop(signo, timeout=10) == 0
    took = time.monotonic() - began
    assert took < seconds, "stopped only after %.1fs" % took
    return took


def test_stop_while_a_slow_reader_takes_the_reply(start):
    """A client sends 8 MiB, half-closes, and reads the reply 4 KiB every 10 ms: the server
    always has a write() in progress, and each one takes a few bytes before the next
    signal (common/'s watchdog raises one every 50 ms) can interrupt it, so it never fails
    with EINTR. SIGTERM still ends the server at once, not after the idle timeout (30 s)."""
    server = start("server", "--port", "0", "--idle-timeout", "30", "--quiet")
    s = connect(server.address, timeout=10)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    done = threading.Event()
    taken = []

    def read_slowly():
        while not done.is_set():
            try:
                if not s.recv(4096):
                    return
            except OSError:
                return
            taken.append(1)
            done.wait(0.01)

    reader = threading.Thread(target=read_slowly, daemon=True)
    try:
        s.sendall(b"a" * (8 * MIB))
        s.shutdown(socket.SHUT_WR)
        reader.start()
        wait_until(lambda: len(taken) >= 10, timeout=10, what="the slow reading under way")
        stopped_within(server)
    finally:
        done.set()
        reader.join(10)
        s.close()


def test_stop_while_flooded(start):
    """A client that sends without end (--max-bytes 1 GiB, so the server reads on and on,
    never waiting): SIGTERM still ends the server at once."""
    server = start("server", "--port", "0", "--max-bytes", str(1 << 30), "--quiet")
    s = connect(server.address, timeout=10)
    done = threading.Event()
    sent = []

    def flood():
        try:
            while not done.is_set():
                s.sendall(b"f" * 65536)
                sent.append(1)
        except OSError:
            pass  # the server closed: the point

    sender = threading.Thread(target=flood, daemon=True)
    try:
        sender.start()
        wait_until(lambda: len(sent) >= 100, timeout=10, what="the flood under way")
        stopped_within(server)
    finally:
        done.set()
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sender.join(10)
        s.close()


def test_stop_while_a_client_sends_nothing(start):
    """A connected client that sends nothing: the server waits in read(), and SIGINT
    ends it at once (the idle timeout is 60 s)."""
    server = start("server", "--port", "0")
    with connect(server.address) as s:
        server.expect(r"connected$")
        stopped_within(server, signo=signal.SIGINT)
        assert s.recv(10) == b""


# ------------------------------------------------------------------ the client

def caught_signals(pid: int) -> set[int]:
    """The signals the process has a handler for (SigCgt in /proc/PID/status)."""
    with open("/proc/%d/status" % pid) as f:
        mask = int(next(l for l in f if l.startswith("SigCgt:")).split()[1], 16)
    return {n for n in range(1, 65) if mask & (1 << (n - 1))}


def silent_server() -> socket.socket:
    """A listener that never accepts: the kernel completes the handshake and takes the
    client's bytes, but no reply ever comes."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    return listener


def test_client_timeout_against_a_silent_server(lab):
    """A server that takes the request and never answers: the client gives up after
    --timeout with one line and status 1, instead of waiting for ever."""
    with silent_server() as listener:
        port = listener.getsockname()[1]
        began = time.monotonic()
        result = lab.run("client", "--port", str(port), "--timeout", "1", input=b"hello?\n")
        took = time.monotonic() - began
    assert result.returncode == 1
    assert result.stdout == b""
    assert result.stderr == "client: 127.0.0.1:%d took or sent nothing for 1s\n" % port
    assert 1 <= took < 10, took


def test_client_prints_the_reply_when_its_shutdown_fails(lab):
    """A server that answers the first bytes and resets the connection (SO_LINGER 0) while
    the client's input is still open: the client's shutdown() then fails, since there is no
    connection left to half-close. It still prints the reply that came before the reset,
    then says which call failed, status 1."""
    with silent_server() as listener:
        port = listener.getsockname()[1]
        client = lab.start("client", "--port", str(port), ready=False)
        client.write(b"may I?\n")
        conn, peer = listener.accept()
        with conn:
            assert recv_exactly(conn, 7) == b"may I?\n"
            conn.sendall(b"no thanks\n")
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # The reset has reached the client's socket once it has left the kernel's table.
        wait_until(lambda: not tcp_connection_exists(peer[1], port),
                   what="the client's end reset")
        client.close_stdin()
        assert client.wait(10) == 1
    assert client.stdout_lines == [b"no thanks"]
    assert re.fullmatch(r"client: shutdown 127\.0\.0\.1:%d: (Transport endpoint is not "
                        r"connected|Connection reset by peer)\n" % port, client.stderr), \
        client.stderr


def tcp_connection_exists(local_port: int, remote_port: int) -> bool:
    """Whether /proc/net/tcp lists a connection from `local_port` to `remote_port` (both
    ports: another test's socket may have the same local port, towards elsewhere)."""
    with open("/proc/net/tcp") as f:
        return any(int(fields[1].rsplit(":", 1)[1], 16) == local_port and
                   int(fields[2].rsplit(":", 1)[1], 16) == remote_port
                   for fields in (line.split() for line in f.readlines()[1:]))


@pytest.mark.parametrize("signo", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_client_stops_while_waiting_on_stdin(start, lab, signo):
    """SIGINT or SIGTERM while the client waits for its input: it goes at once, status 1
    (stopped before the end of its input), nothing printed."""
    server = start("server", "--port", "0")
    client = lab.start("client", "--port", str(server.port), ready=False)
    server.expect(r"connected$")
    # The client catches the signals once it is connected (before, a Ctrl-C simply ends
    # it): wait until its handler is in place.
    wait_until(lambda: signo in caught_signals(client.pid), what="the client's handler")
    began = time.monotonic()
    client.send_signal(signo)
    assert client.wait(10) == 1
    assert time.monotonic() - began < STOP_WITHIN
    assert client.stdout_lines == [] and client.stderr == ""


def test_client_stops_while_waiting_for_the_reply(lab):
    """SIGTERM while the client waits for a reply that does not come: it goes at once,
    status 1."""
    with silent_server() as listener:
        client = lab.start("client", "--port", str(listener.getsockname()[1]), "--timeout",
                           "60", ready=False)
        client.write(b"anyone?\n")
        client.close_stdin()  # the client half-closes and waits for the reply
        wait_until(lambda: signal.SIGTERM in caught_signals(client.pid),
                   what="the client's handler")
        began = time.monotonic()
        client.send_signal(signal.SIGTERM)
        assert client.wait(10) == 1
        assert time.monotonic() - began < STOP_WITHIN


# ------------------------------------------------------------------ the fault sweep

def small_quarantine_env() -> dict:
    """The environment, with AddressSanitizer told to keep little freed memory (its
    quarantine would otherwise hold up to 256 MiB and hide what the program keeps)."""
    env = dict(os.environ)
    env["ASAN_OPTIONS"] = ":".join(filter(None, [env.get("ASAN_OPTIONS"), "quarantine_size_mb=4"]))
    return env


@pytest.mark.faults
@pytest.mark.parametrize("fault", [f for f in STREAM_FAULTS if f is not fault_never_reads] + [
    fault_never_reads_reply, fault_over_the_limit], ids=fault_name)
def test_fault_sweep(start, fault):
    """One misbehaving peer against a server with --idle-timeout 0.5 and --max-bytes 8 MiB: a
    fresh client is served (once a stalled peer is dropped) while the peer misbehaves and
    after it has gone, and the server's descriptors and memory come back (the buffer is
    bounded by --max-bytes; 40 MiB allows for allocator slack)."""
    server = start("server", "--port", "0", "--quiet", "--idle-timeout", "0.5",
                   "--max-bytes", str(8 << 20), env=small_quarantine_env())
    survive(server, fault, memory_mib=40)


def test_a_peer_that_never_reads_the_reply_is_dropped(start):
    """A client sends a request too big for the buffers, half-closes and never reads the
    reply: after --idle-timeout the server drops it, logs it, and serves the next."""
    server = start("server", "--port", "0", "--idle-timeout", "0.5")
    [hog] = fault_never_reads_reply(server)
    with hog:
        server.expect(r"^pid \d+: client 127\.0\.0\.1:\d+ dropped: idle for 0\.5s$",
                      timeout=10)
        echoes(server)
