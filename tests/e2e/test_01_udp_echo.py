"""Lab 01-udp-echo: the server sends every datagram back; the client sends lines."""

import os
import re
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import needs_ipv6, udp_socket
from faults import DGRAM_FAULTS, MAX_IPV4_PAYLOAD, dgram_echoes, fault_name, survive


def echo_through(server, payload: bytes, family=socket.AF_INET) -> bytes:
    with udp_socket(family) as s:
        s.sendto(payload, server.sockaddr)
        data, sender = s.recvfrom(70000)
        assert sender[:2] == server.sockaddr
        return data


# ----------------------------------------------------------------- the normal path

def test_client_echoes_each_line(start, run):
    """The lab's client sends each line as a datagram and prints each reply, nothing else."""
    server = start("server", "--port", "0")
    result = run("client", "--host", server.host, "--port", str(server.port),
                 input=b"hello\nworld\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hello\nworld\n"
    assert result.stderr == ""


def test_positional_host_and_port(start, run):
    """server [PORT] and client [HOST [PORT]], as in the source notes."""
    server = start("server", "0")  # server [PORT]
    result = run("client", server.host, str(server.port), input=b"positional\n")
    assert result.stdout == b"positional\n"


def test_server_logs_each_datagram_with_its_sender(start):
    """One log line per datagram: its sender's address and its size."""
    server = start("server", "--port", "0")
    with udp_socket() as s:
        s.sendto(b"12345", server.sockaddr)
        s.recvfrom(100)
        me = "%s:%d" % s.getsockname()
    server.expect(r"^from %s: 5 bytes$" % re.escape(me))


def test_quiet_server_logs_nothing(start):
    """--quiet: the ready line, then nothing."""
    server = start("server", "--port", "0", "--quiet")
    assert echo_through(server, b"x") == b"x"
    assert server.stop() == 0
    assert server.stdout_lines[1:] == []


def test_empty_line_is_an_empty_datagram(start, run):
    """An empty line is an empty datagram, echoed as one; a last line without newline is a line
    too."""
    server = start("server", "--port", "0")
    result = run("client", "-p", str(server.port), input=b"a\n\nb")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"a\n\nb\n"  # the last line had no newline: still a line
    server.expect(r": 0 bytes$")


def test_connect_mode_echoes_too(start, run):
    """client --connect (connect(), send(), recv() on UDP) echoes the same."""
    server = start("server", "--port", "0")
    result = run("client", "--connect", "-p", str(server.port), input=b"one\ntwo\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"one\ntwo\n"


@needs_ipv6
def test_ipv6(start, run):
    """The server listens on ::1 when asked; the lab's client and a Python peer reach it there."""
    server = start("server", "--host", "::1", "--port", "0")
    assert server.address.text == "[::1]:%d" % server.port
    result = run("client", "--host", "::1", "--port", str(server.port), input=b"over six\n")
    assert result.stdout == b"over six\n", result.stderr
    assert echo_through(server, b"v6", socket.AF_INET6) == b"v6"


@needs_ipv6
def test_an_ipv6_socket_on_any_address_hears_ipv4_as_mapped_addresses(start, run):
    """--host :: serves IPv4 clients too: the log shows them as IPv4-mapped IPv6 addresses
    (::ffff:127.0.0.1), as the handout says."""
    server = start("server", "--host", "::", "--port", "0")
    assert server.address.text == "[::]:%d" % server.port
    with udp_socket() as s:  # an IPv4 socket
        s.sendto(b"four", ("127.0.0.1", server.port))
        assert s.recv(100) == b"four"
        me = s.getsockname()[1]
    server.expect(r"^from \[::ffff:127\.0\.0\.1\]:%d: 4 bytes$" % me)
    result = run("client", "--host", "::1", "--port", str(server.port), input=b"six\n")
    assert result.stdout == b"six\n", result.stderr
    server.expect(r"^from \[::1\]:\d+: 3 bytes$")


@pytest.mark.parametrize("prog", ["server", "client"])
@pytest.mark.parametrize("host", ["localhost", "999.1.1.1", "::1::2"])
def test_bad_host_a_name_or_no_literal_is_a_usage_error(run, prog, host):
    """Lab 01 builds its addresses by hand from literals: a name, or a literal that does not
    parse, is a usage error that says names come in lab 03 (nothing is looked up)."""
    result = run(prog, "--host", host, "--port", "0" if prog == "server" else "9")
    assert result.returncode == 2
    first, rest = result.stderr.split("\n", 1)
    assert first == ("%s: bad host '%s': lab 01 takes an IPv4 or IPv6 address (127.0.0.1, ::1);"
                     " names come in lab 03" % (prog, host))
    assert rest.startswith("usage: " + prog)


# ------------------------------------------------------------ binary-safe, any size

@pytest.mark.parametrize("payload", [
    b"",
    b"\x00",
    b"a\x00b\x00\x00c",
    bytes(range(256)) * 4,            # 1 KiB, every byte value
    os.urandom(MAX_IPV4_PAYLOAD),     # the largest IPv4 UDP payload
], ids=["empty", "nul", "nuls-inside", "1KiB", "65507"])
def test_python_peer_gets_exact_bytes_back(start, payload):
    """Any datagram comes back byte for byte: empty, NULs, every byte value, the largest IPv4
    payload."""
    server = start("server", "--port", "0")
    assert echo_through(server, payload) == payload


def test_oversized_datagram_is_refused_by_the_kernel_not_the_server(start):
    """A datagram larger than IPv4 carries is refused by the sending kernel; the server goes on."""
    server = start("server", "--port", "0")
    with udp_socket() as s:
        with pytest.raises(OSError):  # EMSGSIZE: more than an IPv4 datagram holds
            s.sendto(b"x" * (MAX_IPV4_PAYLOAD + 1), server.sockaddr)
    assert echo_through(server, b"still here") == b"still here"


# -------------------------------------------------------------------- real peers

def test_netcat_as_client(start):
    """nc -u gets its line back, newline included."""
    server = start("server", "--port", "0")
    # OpenBSD nc: -u UDP, -w 1 gives up one second after stdin ends and nothing arrives.
    nc = subprocess.run(["nc", "-u", "-w", "1", server.host, str(server.port)],
                        input=b"from netcat\n", capture_output=True, timeout=10)
    assert nc.stdout == b"from netcat\n"  # nc sends the newline too: the echo keeps it


def test_socat_as_client(start):
    """socat gets its datagram back."""
    server = start("server", "--port", "0")
    out = subprocess.run(["socat", "-T", "2", "-", "UDP:%s:%d" % (server.host, server.port)],
                         input=b"via socat", capture_output=True, timeout=10)
    assert out.stdout == b"via socat"


def test_client_against_a_python_echo_peer(run):
    """The client prints what comes back, not what it sent: a peer that reverses each datagram."""
    with udp_socket() as peer:
        port = peer.getsockname()[1]

        def serve():
            for _ in range(2):
                data, addr = peer.recvfrom(70000)
                peer.sendto(data[::-1], addr)

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        result = run("client", "--port", str(port), input=b"abc\nxyz\n")
        t.join(5)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"cba\nzyx\n"


def test_client_ignores_datagrams_from_strangers(run):
    """An unconnected socket accepts datagrams from anyone; the client prints only the
    server's reply."""
    with udp_socket() as peer, udp_socket() as stranger:
        port = peer.getsockname()[1]

        def serve():
            data, addr = peer.recvfrom(100)
            stranger.sendto(b"spoofed", addr)
            peer.sendto(data, addr)

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        result = run("client", "--port", str(port), input=b"real\n")
        t.join(5)
    assert result.stdout == b"real\n"


# ----------------------------------------------------------------- faults, errors

def test_client_without_server_times_out(run):
    """With no reply the client gives up after --timeout, says so and exits 1."""
    with udp_socket() as silent:  # bound, so the port is ours; it never replies
        port = silent.getsockname()[1]
        result = run("client", "--port", str(port), "--timeout", "1", input=b"anyone?\n")
    assert result.returncode == 1
    assert result.stdout == b""
    assert "no reply from 127.0.0.1:%d within 1s" % port in result.stderr
    assert result.seconds < 1 + 1.5


def test_client_default_timeout_is_two_seconds(run):
    """The client's default timeout is two seconds."""
    with udp_socket() as silent:
        port = silent.getsockname()[1]
        result = run("client", "--port", str(port), input=b"anyone?\n")
    assert result.returncode == 1
    assert "within 2s" in result.stderr
    assert 1.9 <= result.seconds < 2 + 1.5


def closed_port() -> int:
    """A port where nothing listens: bind, note the port, close."""
    with udp_socket() as s:
        return s.getsockname()[1]


def test_connect_mode_reports_refused_at_once(run):
    """client --connect learns of the ICMP 'port unreachable' and exits 1 at once, not after its
    timeout."""
    result = run("client", "--connect", "--port", str(closed_port()), "--timeout", "5",
                 input=b"knock\n")
    assert result.returncode == 1
    assert "refused" in result.stderr.lower()
    assert result.seconds < 1.0 + 0.5, "took %.2fs" % result.seconds


def test_busy_port_exits_1(start, run):
    """A second server on a busy port exits 1 with 'Address already in use'."""
    server = start("server", "--port", "0")
    second = run("server", "--port", str(server.port))
    assert second.returncode == 1
    assert second.stderr.strip() == (
        "server: bind 127.0.0.1:%d: Address already in use" % server.port)


@pytest.mark.parametrize("prog", ["server", "client"])
@pytest.mark.parametrize("argv", [
    ["--no-such-flag"], ["--port", "65536"], ["--port", "-1"], ["--port", "9x"],
    ["--port"], ["--host", "300.1.2.3"], ["--host", "no-such-host.invalid"],
    ["1", "2", "3"],
], ids=lambda a: " ".join(a) if isinstance(a, list) else a)
def test_bad_arguments_exit_2_with_usage(run, prog, argv):
    """A bad argument: one line saying what is wrong, then the usage, on stderr; exit status 2."""
    if prog == "server" and argv == ["--host", "no-such-host.invalid"]:
        argv = ["--host", "no-such-host.invalid", "--port", "0"]
    result = run(prog, *argv)
    assert result.returncode == 2
    first, rest = result.stderr.split("\n", 1)
    assert first.startswith(prog + ": ")
    assert rest.startswith("usage: " + prog)
    assert result.stdout == b""


def test_client_bad_timeout(run):
    """A --timeout that is no number exits 2 and names the option."""
    result = run("client", "--timeout", "soon")
    assert result.returncode == 2
    assert "--timeout" in result.stderr


@pytest.mark.parametrize("prog", ["server", "client"])
def test_help(run, prog):
    """--help prints the usage to stdout and exits 0."""
    result = run(prog, "--help")
    assert result.returncode == 0
    assert result.stdout.startswith(b"usage: " + prog.encode())
    assert b"--port" in result.stdout


@pytest.mark.parametrize("signo", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_server_with_status_0(start, signo):
    """SIGTERM or SIGINT stops the server with status 0."""
    server = start("server", "--port", "0")
    assert echo_through(server, b"x") == b"x"
    assert server.stop(signo) == 0


@pytest.mark.parametrize("signo", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_flooded_server_stops_within_a_second(start, signo):
    """A server flooded with datagrams (recvfrom() never has to wait) still stops on SIGTERM or
    SIGINT: it looks at the stop flag each time round. Allowed 3 s here for a loaded machine."""
    server = start("server", "--port", "0")
    stop = threading.Event()

    def flood():
        with udp_socket() as s:
            s.setblocking(False)
            while not stop.is_set():
                try:
                    s.sendto(b"f" * 100, server.sockaddr)
                except OSError:
                    pass

    floods = [threading.Thread(target=flood, daemon=True) for _ in range(2)]
    for t in floods:
        t.start()
    try:
        server.expect(r"^from .*: 100 bytes$")
        began = time.monotonic()
        server.send_signal(signo)
        assert server.wait(5) == 0
        took = time.monotonic() - began
    finally:
        stop.set()
        for t in floods:
            t.join(5)
    assert took < 3, "took %.2fs to stop" % took
    assert server.stdout_lines[-1] == b"stopping on %s" % signo.name.encode()


@pytest.mark.parametrize("signo", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_client_stops_while_it_waits_on_stdin(start, lab, signo):
    """Ctrl-C (SIGINT) or SIGTERM stops the client while it waits for a line on stdin: status 1
    (it stopped before the end of its input), nothing on stderr."""
    server = start("server", "--port", "0")
    client = lab.start("client", "-p", str(server.port), ready=False)
    client.write(b"first\n")
    assert client.read_line() == b"first"  # now blocked reading stdin, which stays open
    began = time.monotonic()
    client.send_signal(signo)
    assert client.wait(5) == 1
    assert time.monotonic() - began < 3
    assert client.stderr == ""


@pytest.mark.parametrize("connect", [False, True], ids=["sendto", "connect"])
@pytest.mark.parametrize("signo", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_client_stops_while_it_waits_for_a_reply(lab, signo, connect):
    """A stop signal ends the client's wait for a reply at once, long before its --timeout:
    status 1, nothing on stderr."""
    with udp_socket() as silent:  # takes the datagram, never answers
        port = silent.getsockname()[1]
        args = ["-p", str(port), "--timeout", "60"] + (["--connect"] if connect else [])
        client = lab.start("client", *args, ready=False)
        client.write(b"anyone?\n")
        assert silent.recv(100) == b"anyone?"  # sent: the client now waits for the reply
        began = time.monotonic()
        client.send_signal(signo)
        assert client.wait(5) == 1
        assert time.monotonic() - began < 3
    assert client.stdout_lines == []
    assert client.stderr == ""


def test_a_tiny_timeout_is_not_forever(run):
    """--timeout 0.0000001 is rounded up to a millisecond, never down to 0 ("wait for ever")."""
    with udp_socket() as silent:
        port = silent.getsockname()[1]
        result = run("client", "--port", str(port), "--timeout", "0.0000001", input=b"hi\n")
    assert result.returncode == 1
    assert "no reply from 127.0.0.1:%d within 1e-07s" % port in result.stderr
    assert result.seconds < 5


def test_a_16_mib_line_ends_the_client_with_a_clear_message(start, run):
    """One line of 16 MiB cannot be one datagram: the client says 'Message too long' and exits 1,
    without hanging and without sending anything."""
    server = start("server", "--port", "0")
    result = run("client", "-p", str(server.port), input=b"a" * (16 << 20) + b"\nnext\n",
                 timeout=60)
    assert result.returncode == 1
    assert result.stderr == "client: sendto 127.0.0.1:%d: Message too long\n" % server.port
    assert result.stdout == b""
    assert server.stdout_lines[1:] == []


def test_twenty_clients_at_once(start, lab):
    """Twenty of the lab's clients at once, 100 lines each: each gets exactly its own lines
    back."""
    server = start("server", "--port", "0", "--quiet")
    clients = []
    for c in range(20):
        data = b"".join(b"client %d line %d\n" % (c, i) for i in range(100))
        p = lab.start("client", "-p", str(server.port), ready=False)
        clients.append((p, data))
        p.write(data)
        p.close_stdin()
    for p, data in clients:
        assert p.wait(30) == 0, p.stderr
        assert b"".join(line + b"\n" for line in p.stdout_lines) == data


# ------------------------------------------------------------------ the fault sweep

@pytest.mark.faults
@pytest.mark.parametrize("fault", DGRAM_FAULTS, ids=fault_name)
def test_fault_sweep(start, fault):
    """One misbehaving peer: a fresh client gets its echo while it misbehaves and after
    it has gone, and the server keeps no descriptor and no memory (2 MiB at most) for
    any of them."""
    survive(start("server", "--port", "0", "--quiet"), fault, served=dgram_echoes, memory_mib=2)
