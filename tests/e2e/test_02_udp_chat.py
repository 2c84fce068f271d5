"""Lab 02-udp-chat: a UDP relay that sends each client's message to every other client."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import time

import pytest

from conftest import Program, needs_ipv6, udp_socket
from faults import (CHAT_FAULTS, chat_served, fault_name, join, name_of, recv_until, recv_upto,
                    survive)


# ----------------------------------------------------------------------------- helpers

def exact(line: bytes) -> bytes:
    """A pattern for expect() matching exactly `line` ('[::1]' and '*' are no regex)."""
    return b"^" + re.escape(line) + b"$"


def recv(sock: socket.socket) -> bytes:
    return sock.recv(65536)


def peers(server, count: int, family=socket.AF_INET) -> list[socket.socket]:
    """`count` raw Python sockets, each joined; every join notice already read."""
    socks = []
    for _ in range(count):
        s = udp_socket(family)
        join(server, s)
        for earlier in socks:
            assert recv(earlier) == b"* %s joined\n" % name_of(s).encode()
        socks.append(s)
    return socks


def close_all(socks) -> None:
    for s in socks:
        s.close()


def start_server(start, *extra):
    return start("server", "--port", "0", *extra)


def start_client(start, server, *extra):
    return start("client", "--host", server.host, "--port", str(server.port), *extra)


# ------------------------------------------------------------------------- normal path

def test_three_clients_each_see_the_others_not_their_own(start):
    """Three clients: each line reaches the two others, never its sender; the server logs how
    many it relayed to."""
    server = start_server(start)
    a = start_client(start, server)
    assert a.read_line() == b"* welcome %s, 1 online" % a.address.text.encode()
    b = start_client(start, server)
    c = start_client(start, server)
    pa, pb, pc = (p.address.text.encode() for p in (a, b, c))
    a.expect(exact(b"* %s joined" % pc))
    b.expect(exact(b"* %s joined" % pc))

    a.write(b"hello from a\n")
    b.expect(exact(b"%s: hello from a" % pa))
    c.expect(exact(b"%s: hello from a" % pa))
    b.write(b"b here\n")
    a.expect(exact(b"%s: b here" % pb))
    c.expect(exact(b"%s: b here" % pb))
    c.write(b"and c\n")
    a.expect(exact(b"%s: and c" % pc))
    b.expect(exact(b"%s: and c" % pc))
    # The server handles datagrams in order: had anyone been sent their own line, it
    # would have arrived before the later lines they have already printed.
    assert b"%s: hello from a" % pa not in a.stdout_lines
    assert b"%s: b here" % pb not in b.stdout_lines
    server.expect(r"from 127\.0\.0\.1:\d+: 12 bytes, relayed to 2")


def test_nick_who_and_quit_notices(start):
    """/nick (taken, bad and good names), /who, unknown commands, and the notices the others
    see; end of input sends /quit."""
    server = start_server(start)
    a = start_client(start, server)
    b = start_client(start, server)
    pa, pb = a.address.text.encode(), b.address.text.encode()
    a.write(b"/nick alice\n")
    a.expect(b"^\\* you are now alice$")
    b.expect(exact(b"* %s is now alice" % pa))
    a.write(b"hi\n")
    b.expect(b"^alice: hi$")

    b.write(b"/nick alice\n")
    b.expect(b"^\\* nick alice is taken$")
    b.write(b"/nick bad name\n")
    b.expect(b"^\\* bad nick")
    b.write(b"/nick " + b"x" * 17 + b"\n")
    b.expect(b"^\\* bad nick")
    b.write(b"/nick\n")
    b.expect(b"^\\* bad nick")
    b.write(b"/who\n")
    assert b.expect(b"^\\* 2 online: .*$").group(0) == b"* 2 online: alice, " + pb
    b.write(b"/dance\n")
    b.expect(b"^\\* unknown command")

    a.close_stdin()  # end of input: the client sends /quit and exits 0
    assert a.wait() == 0
    b.expect(b"^\\* alice left$")
    b.write(b"/who\n")
    assert b.expect(b"^\\* 1 online: .*$").group(0) == b"* 1 online: " + pb


def test_server_logs_events_and_quiet_silences_them(start):
    """The server logs joins and leaves; --quiet silences them."""
    server = start_server(start)
    [a] = peers(server, 1)
    server.expect(r"^join 127\.0\.0\.1:\d+, 1 online$")
    a.sendto(b"/quit", server.sockaddr)
    server.expect(r"^127\.0\.0\.1:\d+ left, 0 online$")

    quiet = start_server(start, "--quiet")
    [q] = peers(quiet, 1)
    q.sendto(b"/quit", quiet.sockaddr)
    assert recv(q).startswith(b"* bye")
    assert quiet.stop() == 0
    assert quiet.stdout_lines[1:] == []
    close_all([a, q])


def test_positional_port_and_host(start):
    """server [PORT] and client [HOST [PORT]], as in the source notes."""
    server = start("server", "0")
    client = start("client", server.host, str(server.port))
    assert client.read_line().startswith(b"* welcome ")


@needs_ipv6
def test_ipv6(start):
    """The relay works over ::1, between the lab's client and a Python peer."""
    server = start("server", "--host", "::1", "--port", "0")
    assert server.address.text.startswith("[::1]:")
    a = start_client(start, server)
    assert a.address.text.startswith("[::1]:")
    [raw] = peers_after(server, a, socket.AF_INET6)
    a.write(b"over six\n")
    assert recv(raw) == b"%s: over six\n" % a.address.text.encode()
    raw.sendto(b"back", server.sockaddr)
    a.expect(exact(b"%s: back" % name_of(raw).encode()))
    raw.close()


def peers_after(server, client_program, family):
    """Raw sockets joined after a lab client, which is told of each."""
    raw = udp_socket(family)
    join(server, raw)
    client_program.expect(exact(b"* %s joined" % name_of(raw).encode()))
    return [raw]


# ------------------------------------------------------------------- real peers, keys

def test_same_port_on_two_loopback_addresses_is_two_clients(start):
    """Clients are told apart by address and port: the same port on 127.0.0.1 and 127.0.0.2 is
    two clients."""
    server = start_server(start)
    one = udp_socket()
    port = one.getsockname()[1]
    two = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    two.settimeout(5)
    try:
        two.bind(("127.0.0.2", port))  # same port, another host: the source keyed by port
    except OSError as e:
        pytest.skip("cannot bind 127.0.0.2:%d: %s" % (port, e))
    try:
        assert join(server, one).endswith(b", 1 online\n")
        assert join(server, two).endswith(b", 2 online\n")
        assert recv(one) == b"* 127.0.0.2:%d joined\n" % port
        one.sendto(b"/nick alice", server.sockaddr)
        assert recv(one) == b"* you are now alice\n"
        assert recv(two) == b"* 127.0.0.1:%d is now alice\n" % port
        two.sendto(b"/nick bob", server.sockaddr)
        assert recv(two) == b"* you are now bob\n"
        assert recv(one) == b"* 127.0.0.2:%d is now bob\n" % port
        one.sendto(b"hi bob", server.sockaddr)
        assert recv(two) == b"alice: hi bob\n"
        two.sendto(b"/who", server.sockaddr)
        assert recv(two) == b"* 2 online: alice, bob\n"
    finally:
        close_all([one, two])


def test_nc_and_a_python_socket_take_part(lab, start):
    """nc -u joins, talks and quits like any client."""
    if shutil.which("nc") is None:
        pytest.skip("nc is not installed")
    server = start_server(start)
    [py] = peers(server, 1)
    nc = Program(["nc", "-u", server.host, str(server.port)], cwd=lab.tmp_path)
    lab.programs.append(nc)  # stopped with the lab's programs, pass or fail
    nc.write(b"/join\n")  # nc sends the newline too; the server takes one as the line's end
    welcome = nc.expect(rb"^\* welcome (127\.0\.0\.1:\d+), 2 online$")
    nc_name = welcome.group(1)
    assert recv(py) == b"* %s joined\n" % nc_name
    nc.write(b"from nc\n")
    assert recv(py) == b"%s: from nc\n" % nc_name
    py.sendto(b"from python", server.sockaddr)
    nc.expect(exact(b"%s: from python" % name_of(py).encode()))
    nc.write(b"/quit\n")
    assert recv(py) == b"* %s left\n" % nc_name
    py.close()


def test_binary_bytes_are_relayed_as_they_are(start):
    """Bytes that are no text, NULs included, are relayed as they are."""
    server = start_server(start)
    a, b = peers(server, 2)
    payload = bytes(range(256)).replace(b"\n", b"") + b"\0\0\xff"
    a.sendto(payload, server.sockaddr)
    assert recv(b) == name_of(a).encode() + b": " + payload + b"\n"
    close_all([a, b])


def test_empty_datagram_reaches_nobody(start):
    """An empty datagram (or a bare newline) is relayed to nobody and registers nobody."""
    server = start_server(start)
    a, b = peers(server, 2)
    a.sendto(b"", server.sockaddr)
    a.sendto(b"\n", server.sockaddr)  # a bare line end is empty too
    a.sendto(b"after", server.sockaddr)
    assert recv(b) == name_of(a).encode() + b": after\n"  # nothing came before it
    stranger = udp_socket()
    stranger.sendto(b"", server.sockaddr)  # an empty datagram does not register anyone
    a.sendto(b"/who", server.sockaddr)
    assert recv(a) == b"* 2 online: %s, %s\n" % (name_of(a).encode(), name_of(b).encode())
    close_all([a, b, stranger])


def test_newline_inside_a_message_is_refused(start):
    """A newline inside a message is refused; one at its end is fine."""
    server = start_server(start)
    a, b = peers(server, 2)
    a.sendto(b"line one\nline two", server.sockaddr)
    assert recv(a).startswith(b"* one line per message")
    a.sendto(b"\n\n", server.sockaddr)
    assert recv(a).startswith(b"* one line per message")
    a.sendto(b"one trailing newline is fine\n", server.sockaddr)
    assert recv(b) == name_of(a).encode() + b": one trailing newline is fine\n"
    close_all([a, b])


def test_oversized_datagram_is_refused_and_the_limit_itself_relayed(start):
    """--max-message 100: a message of 101 bytes, or 65507, is refused with a notice; one of 100
    is relayed."""
    server = start_server(start, "--max-message", "100")
    a, b = peers(server, 2)
    a.sendto(b"x" * 101, server.sockaddr)
    assert recv(a) == b"* message too long: 101 bytes, the limit is 100\n"
    a.sendto(b"y" * 100, server.sockaddr)
    assert recv(b) == name_of(a).encode() + b": " + b"y" * 100 + b"\n"  # the 101 never came
    a.sendto(b"z" * 65507, server.sockaddr)  # the largest UDP payload over IPv4
    assert recv(a) == b"* message too long: 65507 bytes, the limit is 100\n"
    server.expect(r"refused 65507 bytes from 127\.0\.0\.1:\d+")
    close_all([a, b])


# ---------------------------------------------------------------------------- limits

def test_max_clients_refuses_one_more(start):
    """--max-clients 2: a third is told the server is full and not registered, until one leaves."""
    server = start_server(start, "--max-clients", "2")
    a, b = peers(server, 2)
    extra = udp_socket()
    extra.sendto(b"/join", server.sockaddr)
    assert recv(extra) == b"* server full\n"
    extra.sendto(b"let me in", server.sockaddr)
    assert recv(extra) == b"* server full\n"
    a.sendto(b"/who", server.sockaddr)
    assert recv(a).startswith(b"* 2 online: ")  # the extra one was not registered
    b.sendto(b"/quit", server.sockaddr)
    assert recv(b).startswith(b"* bye")
    assert recv(a) == b"* %s left\n" % name_of(b).encode()
    assert join(server, extra).endswith(b", 2 online\n")  # room again
    close_all([a, b, extra])


def test_full_server_makes_the_client_exit_1(start, run):
    """The lab's client told the server is full says so and exits 1."""
    server = start_server(start, "--max-clients", "1")
    [a] = peers(server, 1)
    result = run("client", "--host", server.host, "--port", str(server.port))
    assert result.returncode == 1
    assert result.stdout == b""
    assert "server full" in result.stderr
    a.close()


def test_rate_limit_drops_the_excess_with_one_notice(start):
    """--rate 5: a burst of 40 is cut to about five a second, with one notice a second to the
    sender and none to the others."""
    server = start_server(start, "--rate", "5")
    a, b, c = peers(server, 3)
    began = time.monotonic()
    for i in range(40):
        a.sendto(b"burst %d" % i, server.sockaddr)
    elapsed = time.monotonic() - began
    c.sendto(b"marker", server.sockaddr)  # another client is not limited by a's flood
    relayed = 0
    while True:
        data = recv(b)
        if data == name_of(c).encode() + b": marker\n":
            break
        assert data.startswith(name_of(a).encode() + b": burst ")
        relayed += 1
    windows = int(elapsed) + 2  # the burst may straddle one-second windows
    # Every datagram counts, /join included: at most 5 a second got through, and some did.
    assert 1 <= relayed <= 5 * windows and relayed < 40, (relayed, elapsed)
    c.sendto(b"/who", server.sockaddr)
    assert recv_until(c, b"* 3 online")  # c's own datagrams still pass
    # a's notices were sent before c's marker was relayed to a, so they are all waiting.
    received = recv_upto(a, name_of(c).encode() + b": marker")
    notices = [n for n in received if n.startswith(b"* rate limit: 5 messages a second")]
    assert 1 <= len(notices) <= windows, received  # one per window, not one per datagram
    a.sendto(b"/quit", server.sockaddr)  # leaving is never rate-limited
    left = b"* %s left\n" % name_of(a).encode()
    assert recv_until(b, left[:-1]) == left
    close_all([a, b, c])


def test_idle_clients_are_forgotten(start):
    """--idle-timeout: a silent member is forgotten and the others told; the lab's client keeps
    itself alive; the forgotten one may come back."""
    server = start_server(start, "--idle-timeout", "0.5")
    # The lab client sends a keepalive when it has been quiet for 0.1 s; the raw socket
    # says nothing after joining, so only it is forgotten.
    lurker = udp_socket()
    join(server, lurker)
    talker = start_client(start, server, "--keepalive", "0.1")
    talker.expect(exact(b"* %s left (idle)" % name_of(lurker).encode()), timeout=10)
    server.expect(r"forgot 127\.0\.0\.1:\d+ after idle timeout, 1 online", timeout=5)
    talker.write(b"/who\n")
    talker.expect(exact(b"* 1 online: %s" % talker.address.text.encode()))
    lurker.sendto(b"/join", server.sockaddr)  # it may come back
    assert recv_until(lurker, b"* welcome").endswith(b", 2 online\n")
    lurker.close()


# ------------------------------------------------------------------- client specifics

def test_client_with_a_silent_server_times_out(run):
    """A server that never welcomes: the client gives up after --timeout and exits 1."""
    silent = udp_socket()  # the port is taken, but nothing ever answers
    port = silent.getsockname()[1]
    result = run("client", "--port", str(port), "--timeout", "0.5")
    assert result.returncode == 1
    assert result.stdout == b""
    assert "no welcome from 127.0.0.1:%d within 0.5s" % port in result.stderr
    assert result.seconds < 10
    assert silent.recv(100) == b"/join"
    silent.close()


def test_client_with_no_server_reports_refused(run):
    """No server: the ICMP error ends the client's wait at once, with 'Connection refused' and
    status 1."""
    probe = udp_socket()
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now: the kernel answers with ICMP
    result = run("client", "--port", str(port), "--timeout", "5")
    assert result.returncode == 1
    assert result.stdout == b""
    assert "127.0.0.1:%d" % port in result.stderr
    assert "Connection refused" in result.stderr
    assert result.seconds < 5  # the ICMP error ends the wait, not the timeout


def test_client_at_end_of_input_sends_quit(start, run):
    """The client relays each line of its input, a last one without newline too, then sends
    /quit and exits 0."""
    server = start_server(start)
    [watcher] = peers(server, 1)
    result = run("client", "--host", server.host, "--port", str(server.port),
                 input=b"first\nsecond")  # a last line without newline is a line
    assert result.returncode == 0, result.stderr
    assert result.lines[0].startswith(b"ready: udp 127.0.0.1:")
    name = result.lines[0].split()[-1]
    assert recv(watcher) == b"* %s joined\n" % name
    assert recv(watcher) == b"%s: first\n" % name
    assert recv(watcher) == b"%s: second\n" % name
    assert recv(watcher) == b"* %s left\n" % name
    watcher.close()


def test_client_reads_stdin_and_socket_at_once(start):
    """The client prints a message at once, while it waits for input."""
    server = start_server(start)
    client = start_client(start, server)
    [raw] = peers_after(server, client, socket.AF_INET)
    # Nothing typed yet: a datagram must still be printed at once, not after the next line.
    raw.sendto(b"are you there?", server.sockaddr)
    client.expect(exact(b"%s: are you there?" % name_of(raw).encode()))
    client.write(b"yes\n")
    assert recv(raw) == b"%s: yes\n" % client.address.text.encode()
    raw.close()


# ------------------------------------------------------------------ arguments, signals

@pytest.mark.parametrize("prog,args", [
    ("server", ["--port", "70000"]),
    ("server", ["--port", "nine"]),
    ("server", ["--no-such-flag"]),
    ("server", ["--max-clients", "0"]),
    ("server", ["--max-clients", "1001"]),
    ("server", ["--max-message", "65508"]),
    ("server", ["--idle-timeout", "-1"]),
    ("server", ["--rate", "x"]),
    ("server", ["--host", "300.1.1.1"]),
    ("server", ["1", "2"]),
    ("client", ["--timeout", "0"]),
    ("client", ["--keepalive", "-1"]),
    ("client", ["--port"]),
    ("client", ["a", "1", "extra"]),
])
def test_bad_arguments_exit_2_with_usage(run, prog, args):
    """A bad argument: the usage on stderr and exit status 2."""
    result = run(prog, *args)
    assert result.returncode == 2
    assert "usage" in result.stderr
    assert result.stdout == b""


@pytest.mark.parametrize("prog", ["server", "client"])
def test_help(run, prog):
    """--help prints the usage to stdout and exits 0."""
    result = run(prog, "--help")
    assert result.returncode == 0
    assert result.stdout.startswith(b"usage: %s" % prog.encode())


def test_sigterm_stops_server_and_client_cleanly(start):
    """SIGTERM stops the client, which says goodbye first, and the server, both with status 0."""
    server = start_server(start)
    [watcher] = peers(server, 1)
    client = start_client(start, server)
    name = client.address.text.encode()
    assert recv(watcher) == b"* %s joined\n" % name
    client.send_signal(signal.SIGTERM)
    assert client.wait() == 0
    assert recv(watcher) == b"* %s left\n" % name  # it said goodbye on its way out
    assert server.stop(signal.SIGTERM) == 0
    assert server.stderr == ""
    watcher.close()


# ----------------------------------------------------------------------- fault sweep

@pytest.mark.faults
@pytest.mark.parametrize("fault", CHAT_FAULTS, ids=fault_name)
def test_fault_sweep(start, fault):
    """One misbehaving peer against a relay with --max-clients 40: two fresh clients still
    hear each other while it misbehaves and after it has gone, and the server's
    descriptors and memory come back."""
    server = start_server(start, "--quiet", "--rate", "100000", "--max-clients", "40")
    survive(server, fault, served=chat_served)
