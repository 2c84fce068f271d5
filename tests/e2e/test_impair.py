"""tools/impair, the datagram impairment relay: it passes datagrams between clients and a
server, loses, duplicates, delays and reorders them as asked, the same way for the same
seed, and keeps the suite's conventions (--help, exit 2 on a bad argument, the ready line,
a log line per datagram, a clean stop on SIGINT and SIGTERM).

Accounting never depends on timing: the relay logs one line per datagram it decides
about, so a test sends a window of datagrams, waits for as many decision lines, and only
then reads what arrived."""

import re
import signal
import socket
import subprocess
import time

import pytest

from conftest import BIN, STOP_WITHIN, Program, needs_ipv6, program_path, udp_socket

IMPAIR = BIN / "tools" / "impair"
DECISION = re.compile(rb"^#(\d+) (\S+) -> (\S+): (\d+) bytes: (.*)$")


@pytest.fixture
def programs():
    """Starts programs (the relay, lab 01's) and stops every one when the test ends."""
    started = []

    def start(argv, ready=True):
        p = Program([str(a) for a in argv])
        started.append(p)
        if ready:
            p.wait_ready()
        return p

    yield start
    for p in started:
        if p.proc.poll() is None:
            p.close_stdin()
            p.send_signal(signal.SIGTERM)
            try:
                p.proc.wait(3)
            except subprocess.TimeoutExpired:
                pass
        p.kill_group()


@pytest.fixture
def sink():
    """A Python UDP socket playing the server: it receives what the relay lets through."""
    with udp_socket(timeout=5.0) as s:
        yield s


def relay(start, to, *options):
    if not IMPAIR.exists():
        pytest.fail("tools/impair is not built (looked for %s)" % IMPAIR, pytrace=False)
    host, port = to[:2]
    target = "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)
    r = start([IMPAIR, "--port", "0", "--to", target, *options])
    r.expect(rb"^relaying to ")
    return r


def decisions(r, count, timeout=20.0):
    """The next `count` decision lines of the relay, as (number, path, fate)."""
    found = []
    deadline = time.monotonic() + timeout
    while len(found) < count:
        m = DECISION.match(r.read_line(max(0.1, deadline - time.monotonic())))
        if m:
            found.append((int(m.group(1)), m.group(2) + b" -> " + m.group(3), m.group(5)))
    return found


def drain(sock, within=0.3):
    """Every datagram waiting on `sock`, until none comes for `within` seconds."""
    got = []
    sock.settimeout(within)
    while True:
        try:
            got.append(sock.recv(70000))
        except socket.timeout:
            return got


def one_way(r, sink, payloads, window=25):
    """Sends `payloads` through the relay to `sink`, a window at a time: each window is
    sent, then its decisions awaited, so no socket buffer ever overflows. Returns the
    decisions and what arrived, in order."""
    fates, arrived = [], []
    with udp_socket() as client:
        for i in range(0, len(payloads), window):
            chunk = payloads[i:i + window]
            for p in chunk:
                client.sendto(p, r.sockaddr)
            fates += decisions(r, len(chunk))
            arrived += drain(sink, within=0.01)
    arrived += drain(sink)
    return fates, arrived


# ------------------------------------------------------------------- the command line

def test_help_prints_usage_and_exits_0():
    """--help: the usage on stdout, status 0, nothing on stderr."""
    p = subprocess.run([IMPAIR, "--help"], capture_output=True, timeout=10)
    assert p.returncode == 0
    assert p.stdout.startswith(b"usage: impair --to HOST:PORT")
    for option in (b"--loss P", b"--dup P", b"--reorder P", b"--delay MS", b"--seed N",
                   b"--max-clients N", b"--quiet"):
        assert option in p.stdout
    assert p.stderr == b""


@pytest.mark.parametrize("argv", [
    [],                                                   # no --to
    ["--to", "127.0.0.1"],                                # no port
    ["--to", "127.0.0.1:0"],                              # port 0
    ["--to", "127.0.0.1:70000"],                          # port out of range
    ["--to", "999.1.1.1:9901"],                           # not an address
    ["--to", "127.0.0.1:9901", "--loss", "101"],
    ["--to", "127.0.0.1:9901", "--dup", "-1"],
    ["--to", "127.0.0.1:9901", "--delay", "10001"],
    ["--to", "127.0.0.1:9901", "--seed", "x"],
    ["--to", "127.0.0.1:9901", "--max-clients", "0"],
    ["--to", "127.0.0.1:9901", "--reorder", "10"],        # reordering needs a delay
    ["--to", "127.0.0.1:9901", "--host", "0.0.0.0"],      # an open relay: refused
    ["--to", "127.0.0.1:9901", "--port", "65536"],
    ["--to", "127.0.0.1:9901", "--bogus"],
    ["--to", "127.0.0.1:9901", "9801"],                   # no positional arguments
], ids=lambda argv: " ".join(argv) or "nothing")
def test_bad_arguments_exit_2(argv):
    """A bad command line: one line saying what is wrong, then the usage, on stderr; exit 2."""
    p = subprocess.run([IMPAIR, *argv], capture_output=True, timeout=10)
    assert p.returncode == 2, p
    assert p.stdout == b""
    first, rest = p.stderr.split(b"\n", 1)
    assert first.startswith(b"impair: "), p.stderr
    assert rest.startswith(b"usage: impair"), p.stderr


# ---------------------------------------------------------------------- the relaying

def test_passes_datagrams_both_ways_and_logs_each(programs):
    """Without impairment every datagram goes through, each way, as the same bytes; the
    server sees the relay's socket for that client, and each decision is logged."""
    with udp_socket() as server_sock, udp_socket() as client:
        r = relay(programs, server_sock.getsockname())
        payload = bytes(range(256)) * 4
        client.sendto(payload, r.sockaddr)
        data, upstream = server_sock.recvfrom(70000)
        assert data == payload
        server_sock.sendto(b"reply:" + data, upstream)
        assert client.recvfrom(70000) == (b"reply:" + payload, r.sockaddr)
        me = "%s:%d" % client.getsockname()
        r.expect(r"^client %s connected: to the server from 127\.0\.0\.1:%d$"
                 % (re.escape(me), upstream[1]))
        assert decisions(r, 2) == [(1, me.encode() + b" -> server", b"forwarded"),
                                   (2, b"server -> " + me.encode(), b"forwarded")]


def test_replies_go_back_to_the_client_they_are_for(programs):
    """Each client has its own socket towards the server: the server sees two addresses,
    and each reply reaches only the client it answers."""
    with udp_socket() as server_sock, udp_socket() as a, udp_socket() as b:
        r = relay(programs, server_sock.getsockname())
        a.sendto(b"from a", r.sockaddr)
        b.sendto(b"from b", r.sockaddr)
        seen = dict(server_sock.recvfrom(100) for _ in range(2))
        assert set(seen) == {b"from a", b"from b"}
        assert seen[b"from a"] != seen[b"from b"]
        for text, upstream in seen.items():
            server_sock.sendto(b"re " + text, upstream)
        assert a.recv(100) == b"re from a"
        assert b.recv(100) == b"re from b"
        assert drain(a, 0.2) == [] and drain(b, 0.2) == []


def test_loss_rate_follows_the_seed(programs, sink):
    """--loss 30 --seed 7 over 1000 datagrams: between 25 and 35 percent are lost, exactly
    those the log says, and the same seed loses the same datagrams again."""
    payloads = [b"%04d" % i for i in range(1000)]
    runs = []
    for _ in range(2):
        r = relay(programs, sink.getsockname(), "--loss", "30", "--seed", "7")
        fates, arrived = one_way(r, sink, payloads)
        lost = [n for n, _, fate in fates if fate == b"lost"]
        assert 250 <= len(lost) <= 350, len(lost)
        assert sorted(arrived) == [p for n, p in enumerate(payloads, 1) if n not in lost]
        runs.append(lost)
        r.stop()
    assert runs[0] == runs[1]
    r = relay(programs, sink.getsockname(), "--loss", "30", "--seed", "8")
    fates, _ = one_way(r, sink, payloads[:200])
    assert [n for n, _, fate in fates if fate == b"lost"] != [n for n in runs[0] if n <= 200]


def test_duplicates_arrive_twice(programs, sink):
    """--dup 40: the datagrams logged "sent twice" arrive twice, the others once."""
    r = relay(programs, sink.getsockname(), "--dup", "40", "--seed", "3")
    payloads = [b"%03d" % i for i in range(200)]
    fates, arrived = one_way(r, sink, payloads)
    twice = {payloads[n - 1] for n, _, fate in fates if fate == b"sent twice"}
    assert 40 <= len(twice) <= 120, len(twice)
    for p in payloads:
        assert arrived.count(p) == (2 if p in twice else 1), p


def test_reordered_datagrams_overtake_delayed_ones(programs, sink):
    """--delay 400 --reorder 30: a burst arrives out of order, none lost; the datagrams
    logged "at once" come first, the others after the delay, in their own order."""
    r = relay(programs, sink.getsockname(), "--delay", "400", "--reorder", "30", "--seed", "5")
    payloads = [b"%02d" % i for i in range(20)]
    with udp_socket() as client:
        for p in payloads:
            client.sendto(p, r.sockaddr)
        fates = decisions(r, len(payloads))
    arrived = drain(sink, within=2.0)
    assert sorted(arrived) == payloads
    assert arrived != payloads
    early = [payloads[n - 1] for n, _, fate in fates if b"at once" in fate]
    assert early and arrived == early + [p for p in payloads if p not in early]


def test_delay_holds_each_datagram(programs):
    """--delay 300: a round trip through the relay to lab 01's server takes at least 600 ms
    (300 each way), and the echo still comes back whole."""
    server = programs([program_path("01", "server"), "--port", "0"])
    r = relay(programs, server.sockaddr, "--delay", "300")
    with udp_socket() as client:
        began = time.monotonic()
        client.sendto(b"slow", r.sockaddr)
        assert client.recv(100) == b"slow"
        assert time.monotonic() - began >= 0.6


def test_lab01_client_and_server_through_the_relay(programs):
    """Lab 01's client talks to lab 01's server through the relay, plain and --connect."""
    server = programs([program_path("01", "server"), "--port", "0"])
    r = relay(programs, server.sockaddr)
    for extra in ([], ["--connect"]):
        p = subprocess.run([program_path("01", "client"), "--port", str(r.port), *extra],
                           input=b"one\ntwo\n", capture_output=True, timeout=20)
        assert p.returncode == 0 and p.stdout == b"one\ntwo\n", p
    server.expect(rb"^from 127\.0\.0\.1:\d+: 3 bytes$")


def test_lab01_client_times_out_when_everything_is_lost(programs):
    """--loss 100: lab 01's client gets no reply and gives up after its --timeout."""
    server = programs([program_path("01", "server"), "--port", "0"])
    r = relay(programs, server.sockaddr, "--loss", "100")
    p = subprocess.run([program_path("01", "client"), "--port", str(r.port), "--timeout", "1"],
                       input=b"hello\n", capture_output=True, timeout=20)
    assert p.returncode == 1
    assert b"no reply from 127.0.0.1:%d within 1s" % r.port in p.stderr
    assert decisions(r, 1)[0][2] == b"lost"


def test_a_refused_datagram_is_logged(programs):
    """No server at --to: the ICMP "port unreachable" comes back to the client's upstream
    socket, and the relay says so (the client itself hears nothing, as UDP promises)."""
    with udp_socket() as closed:
        port = closed.getsockname()[1]
    r = relay(programs, ("127.0.0.1", port))
    with udp_socket() as client:
        client.sendto(b"anyone?", r.sockaddr)
        r.expect(rb"^server for 127\.0\.0\.1:\d+: Connection refused$")


def test_clients_beyond_the_limit_replace_the_longest_silent(programs, sink):
    """--max-clients 2: a third client takes the place of the one silent longest, and all
    three are served."""
    r = relay(programs, sink.getsockname(), "--max-clients", "2")
    with udp_socket() as a, udp_socket() as b, udp_socket() as c:
        for s, text in ((a, b"a"), (b, b"b"), (c, b"c")):
            s.sendto(text, r.sockaddr)
            assert sink.recv(10) == text
        r.expect(r"^client 127\.0\.0\.1:%d dropped: room for a new one$" % a.getsockname()[1])


def test_quiet_logs_no_decisions(programs, sink):
    """--quiet: the ready line and nothing else, while datagrams still go through."""
    r = programs([IMPAIR, "--port", "0", "--to", "127.0.0.1:%d" % sink.getsockname()[1],
                  "--quiet"])
    with udp_socket() as client:
        client.sendto(b"hush", r.sockaddr)
        assert sink.recv(10) == b"hush"
    assert r.stop() == 0
    assert r.stdout_lines[1:] == []


@needs_ipv6
def test_over_ipv6(programs):
    """--host ::1 and a server at [::1]: the same relaying over IPv6."""
    with udp_socket(socket.AF_INET6) as server_sock, udp_socket(socket.AF_INET6) as client:
        r = programs([IMPAIR, "--host", "::1", "--port", "0", "--to",
                      "[::1]:%d" % server_sock.getsockname()[1]])
        assert r.address.text.startswith("[::1]:")
        client.sendto(b"six", r.sockaddr)
        data, upstream = server_sock.recvfrom(10)
        assert data == b"six"
        server_sock.sendto(b"back", upstream)
        assert client.recv(10) == b"back"


@pytest.mark.parametrize("signo", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_stops_on_signal_with_datagrams_waiting(programs, sink, signo):
    """SIGINT or SIGTERM: "stopping on SIG..." and exit 0 within a second, even with
    datagrams waiting out a long --delay."""
    r = relay(programs, sink.getsockname(), "--delay", "10000")
    with udp_socket() as client:
        for i in range(5):
            client.sendto(b"%d" % i, r.sockaddr)
        decisions(r, 5)
    began = time.monotonic()
    assert r.stop(signo, timeout=10) == 0
    assert time.monotonic() - began < STOP_WITHIN
    name = "SIGINT" if signo == signal.SIGINT else "SIGTERM"
    assert r.stdout_lines[-1] == b"stopping on " + name.encode()
    assert drain(sink, 0.1) == []
