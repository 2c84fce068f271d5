"""Lab 10-broadcast: the server sends "broadcast N"; every receiver on the port prints it.

On loopback the sender's default 127.255.255.255 reaches every receiver bound to 0.0.0.0
on this machine. With root, the same programs run on netlab hosts (network namespaces
that scripts/netlab creates and always removes) to show that a broadcast reaches every
host of the sender's subnet and none beyond its router.
"""

import os
import signal
import socket
import subprocess
import time

import pytest

from conftest import NETLAB, STOP_WITHIN, Netlab, needs_root, none_arrive, wait_until
from faults import RECEIVER_FAULTS, fault_name, fault_stray_signals, flooding, survive, udp_rx_queue

FAST = ("--interval", "50")  # milliseconds between datagrams, so that tests stay quick


def send(run, port, *extra, count=3):
    result = run("server", "--port", str(port), "--count", str(count), *FAST, *extra)
    assert result.returncode == 0, result.stderr
    return result


def quiet_port() -> int:
    """A port that no socket of this machine held a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


def expect_broadcasts(receiver, count=3):
    for n in range(1, count + 1):
        assert receiver.read_line(timeout=5) == b"broadcast %d" % n


def python_sender(payload: bytes, port: int, to="127.255.255.255"):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        s.sendto(payload, (to, port))





# ----------------------------------------------------------------- the normal path

def test_two_receivers_on_one_port_each_get_every_broadcast(start, run):
    """Two receivers share a port (SO_REUSEADDR) and each gets every broadcast; the sender logs
    each datagram."""
    first = start("client", "--host", "0.0.0.0", "--port", "0")
    assert first.address.text == "0.0.0.0:%d" % first.port
    second = start("client", "--port", str(first.port))  # SO_REUSEADDR: the same port
    result = send(run, first.port)
    expect_broadcasts(first)
    expect_broadcasts(second)
    logged = result.stdout.decode().splitlines()
    assert logged == ["sent 'broadcast %d' (11 bytes) to 127.255.255.255:%d" % (n, first.port)
                      for n in (1, 2, 3)]


def test_receiver_count_exits_zero_after_n_datagrams(start, run):
    """client --count 2 prints two broadcasts and exits 0."""
    receiver = start("client", "--port", "0", "--count", "2")
    send(run, receiver.port)
    assert receiver.wait(5) == 0
    assert receiver.stdout_lines[1:] == [b"broadcast 1", b"broadcast 2"]
    assert receiver.stderr == ""


def test_positional_forms(start, run):
    """server [PORT] and client [HOST [PORT]], as in the source notes."""
    receiver = start("client", "0.0.0.0", "0", "--count", "1")  # client [HOST [PORT]]
    result = run("server", str(receiver.port), "--count", "1")  # server [PORT]
    assert result.returncode == 0, result.stderr
    assert receiver.wait(5) == 0
    assert receiver.stdout_lines[1:] == [b"broadcast 1"]


def test_receiver_bound_to_127_0_0_1_does_not_see_broadcasts(start, run):
    """A receiver bound to 127.0.0.1 gets no broadcast to 127.255.255.255."""
    wildcard = start("client", "--port", "0")
    loopback_only = start("client", "--host", "127.0.0.1", "--port", str(wildcard.port))
    send(run, wildcard.port)
    expect_broadcasts(wildcard)
    loopback_only.no_line(1.0)  # 127.255.255.255 is not 127.0.0.1: not for this socket


def test_sender_without_receivers_still_succeeds(run):
    """Broadcast needs no receiver: the sender sends and succeeds."""
    # Broadcast has no receivers to wait for, nor anyone to refuse it.
    result = send(run, quiet_port(), count=2)
    assert len(result.lines) == 2


def test_quiet_sender_prints_nothing(start, run):
    """--quiet: the sender prints nothing."""
    receiver = start("client", "--port", "0", "--count", "2")
    result = send(run, receiver.port, "--quiet", count=2)
    assert result.stdout == b""
    assert receiver.wait(5) == 0


def test_unicast_destination_reaches_one_receiver_only(start, run):
    """--to 127.0.0.1 (unicast) reaches one of the receivers sharing the port, not each."""
    first = start("client", "--port", "0")
    second = start("client", "--port", str(first.port))
    send(run, first.port, "--to", "127.0.0.1", count=1)
    # Unicast to a shared port goes to one socket, not to each: that is what broadcast adds.
    got = wait_until(lambda: [r for r in (first, second) if len(r.stdout_lines) > 1],
                     what="a receiver to print")
    assert got[0].read_line() == b"broadcast 1"
    none_arrive([first, second], within=0.5)
    assert len(first.stdout_lines) + len(second.stdout_lines) == 3  # two ready lines, one copy


# ---------------------------------------------------- interop with other programs

def test_python_and_socat_senders_reach_the_receiver(start):
    """Python and socat broadcasts reach the lab's receiver."""
    receiver = start("client", "--port", "0")
    python_sender(b"from python", receiver.port)
    assert receiver.read_line() == b"from python"
    subprocess.run(["socat", "-u", "STDIN",
                    "UDP4-DATAGRAM:127.255.255.255:%d,broadcast" % receiver.port],
                   input=b"from socat", check=True, timeout=10)
    assert receiver.read_line() == b"from socat"


def test_python_receiver_gets_the_lab_sender(run):
    """A Python receiver gets the lab sender's broadcasts."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", 0))
        s.settimeout(5)
        send(run, s.getsockname()[1], count=2)
        assert [s.recvfrom(100)[0] for _ in range(2)] == [b"broadcast 1", b"broadcast 2"]


def test_payload_is_binary_safe(start):
    """Bytes that are no text, and an empty datagram, are printed as they are."""
    receiver = start("client", "--port", "0")
    python_sender(b"a\x00b\xff", receiver.port)
    assert receiver.read_line() == b"a\x00b\xff"
    python_sender(b"", receiver.port)  # an empty datagram is a message too
    assert receiver.read_line() == b""


# ------------------------------------------------------------- faults and errors

def test_without_so_broadcast_sendto_is_refused(start, run):
    """Without SO_BROADCAST (--no-broadcast-flag) sendto() is refused: 'Permission denied',
    status 1."""
    receiver = start("client", "--port", "0")
    result = run("server", "--port", str(receiver.port), "--count", "1", "--no-broadcast-flag")
    assert result.returncode == 1
    assert result.stderr == "server: sendto 127.255.255.255:%d: Permission denied\n" % receiver.port
    receiver.no_line(0.5)


@pytest.mark.parametrize("prog,args", [
    ("server", ["--to", "::1"]),           # IPv6 has no broadcast
    ("server", ["--to", "300.1.1.1"]),
    ("server", ["--count", "-1"]),
    ("server", ["--interval", "soon"]),
    ("server", ["--port", "65536"]),
    ("server", ["--no-broadcast-flag=1"]),
    ("server", ["1", "2"]),
    ("client", ["--count", "many"]),
    ("client", ["--host", "999.0.0.1"]),
    ("client", ["--port"]),
    ("client", ["--to", "127.255.255.255"]),  # a sender's option
    ("client", ["--timeout", "2"]),  # a receiver expects no reply, so it has no timeout
])
def test_bad_arguments_exit_2_with_usage(run, prog, args):
    """A bad argument: one line saying what is wrong, then the usage, on stderr; exit status 2."""
    result = run(prog, *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(prog + ": ")
    assert "usage:" in result.stderr
    assert result.stdout == b""


@pytest.mark.parametrize("prog", ["server", "client"])
def test_help_exits_0(run, prog):
    """--help prints the usage to stdout and exits 0."""
    result = run(prog, "--help")
    assert result.returncode == 0
    assert result.stdout.startswith(b"usage: " + prog.encode())


def test_sigterm_stops_the_receiver_with_status_0(start):
    """SIGTERM stops a waiting receiver with status 0."""
    receiver = start("client", "--port", "0")
    assert receiver.stop(signal.SIGTERM, timeout=3) == 0


@pytest.mark.parametrize("signo", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_a_sleeping_sender_at_once(start, signo):
    """SIGTERM or SIGINT stops a sender between two datagrams at once, with status 0."""
    # --count 0 sends forever; an hour between datagrams shows the signal ends the wait.
    sender = start("server", "--port", str(quiet_port()), "--interval", "3600000", ready=False)
    sender.expect(r"^sent 'broadcast 1'")
    assert sender.stop(signo, timeout=3) == 0
    assert sender.stdout_lines[-1] == b"stopping on " + signo.name.encode()


@pytest.mark.parametrize("signo", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_a_receiver_blocked_in_recvfrom_at_once(start, signo):
    """A receiver waiting in recvfrom() stops within a second of SIGTERM or SIGINT, status 0,
    saying nothing (its stdout is the payload only)."""
    receiver = start("client", "--port", "0")
    began = time.monotonic()
    assert receiver.stop(signo, timeout=10) == 0
    assert time.monotonic() - began < STOP_WITHIN
    assert receiver.stdout_lines[1:] == [] and receiver.stderr == ""


def test_receiver_stops_while_flooded(start):
    """Broadcasts arrive as fast as Python sends them, so recvfrom() rarely has to wait:
    SIGTERM still ends the receiver within a second, status 0. The loop looks at the stop
    flag every time round, not only when a wait is interrupted."""
    receiver = start("client", "--port", "0")
    with flooding(receiver.port, "127.255.255.255"):
        wait_until(lambda: len(receiver.stdout_lines) > 1000, timeout=10,
                   what="a thousand datagrams printed")
        began = time.monotonic()
        assert receiver.stop(signal.SIGTERM, timeout=10) == 0
        assert time.monotonic() - began < STOP_WITHIN


def test_receiver_stops_while_its_stdout_is_full(stalled):
    """Nobody reads the receiver's stdout and broadcasts keep coming: it is blocked in
    write() with datagrams always waiting in its socket. SIGTERM ends it within a second,
    status 0. (A loop that waited in ppoll() and looked at the flag only on EINTR never
    stopped here: its socket is always readable.)"""
    receiver = stalled("client", "--port", "0")
    port = int(receiver.first_line().rsplit(b":", 1)[1])
    with flooding(port, "127.255.255.255", pause_every=10):
        wait_until(lambda: receiver.unread() > 60000 and udp_rx_queue(port) > 0, timeout=10,
                   what="the pipe full and datagrams queued")
        receiver.stops_in_time(signal.SIGTERM)


def test_sender_stops_while_its_stdout_is_full(stalled):
    """Nobody reads the sender's log and it sends without a pause (--interval 0): it is
    blocked writing a log line. SIGTERM ends it within a second, status 0."""
    sender = stalled("server", "--port", str(quiet_port()), "--interval", "0")
    wait_until(lambda: sender.unread() > 60000, timeout=10, what="the pipe full")
    sender.stops_in_time(signal.SIGTERM)


@pytest.mark.parametrize("signo", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_a_sender_without_pause(start, signo):
    """A sender with --interval 0 never sleeps: SIGTERM or SIGINT still ends it within a
    second, status 0, and its last line says which signal."""
    sender = start("server", "--port", str(quiet_port()), "--interval", "0", ready=False)
    sender.expect(r"^sent 'broadcast 1000'", timeout=10)
    began = time.monotonic()
    assert sender.stop(signo, timeout=10) == 0
    assert time.monotonic() - began < STOP_WITHIN
    assert sender.stdout_lines[-1] == b"stopping on " + signo.name.encode()


def test_stray_signals_do_not_stop_the_receiver(start, run):
    """SIGWINCH, SIGSTOP and SIGCONT while the receiver waits in recvfrom(): it goes on
    waiting, then prints what comes, and SIGTERM still stops it."""
    receiver = start("client", "--port", "0")

    def still_served(receiver):
        send(run, receiver.port, count=1)
        assert receiver.read_line() == b"broadcast 1"

    survive(receiver, fault_stray_signals, served=still_served, memory_mib=8)


@pytest.mark.parametrize("prog,args", [
    ("server", ["--to", "evil\nready: udp 6.6.6.6:66\x1b]0;owned\x07"]),
    ("client", ["--host", "evil\nready: udp 6.6.6.6:66\x1b]0;owned\x07"]),
])
def test_arguments_in_errors_are_escaped(run, prog, args):
    """An argument with a newline and a terminal escape comes back escaped in the one-line
    error: it can neither forge a second line (a fake ready line) nor retitle a window."""
    result = run(prog, *args)
    assert result.returncode == 2
    first = result.stderr.split("\n", 1)[0]
    assert "evil\\nready: udp 6.6.6.6:66\\x1b]0;owned\\x07" in first
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr
    assert result.stderr.split("\n")[1].startswith("usage: ")


@pytest.mark.faults
@pytest.mark.parametrize("fault", RECEIVER_FAULTS, ids=fault_name)
def test_fault_sweep(start, run, fault):
    """One odd datagram after another, from Python: the receiver prints each as it is,
    still prints what the lab's sender sends, and keeps no descriptor and no memory
    (8 MiB at most) for any of them."""
    receiver = start("client", "--port", "0")

    def still_served(receiver):
        send(run, receiver.port, count=1)
        assert receiver.read_line() == b"broadcast 1"

    survive(receiver, fault, lambda payload: python_sender(payload, receiver.port),
            served=still_served, memory_mib=8)


# ------------------------------------------------- several hosts (needs root)

def link_names() -> set[str]:
    """The interfaces of this machine's own network namespace."""
    return set(os.listdir("/sys/class/net"))


@needs_root
@pytest.mark.netns
@pytest.mark.parametrize("to", ["10.99.1.255", "255.255.255.255"])
def test_broadcast_reaches_its_subnet_and_stops_at_the_router(lab, netlab, to):
    """On test hosts: a broadcast reaches every host of its subnet, the sender's own too, and
    none beyond the router."""
    here = [netlab.start(lab, host, "client", "--port", "9910") for host in ("a1", "a2", "a3")]
    there = [netlab.start(lab, host, "client", "--port", "9910") for host in ("b1", "b2")]
    sender = netlab.start(lab, "a1", "server", "--to", to, "--count", "3", *FAST, ready=False)
    assert sender.wait(10) == 0, sender.stderr
    for receiver in here:  # a1 too: the sender's own host gets a copy
        expect_broadcasts(receiver)
    none_arrive(there)


@needs_root
@pytest.mark.netns
def test_netlab_refuses_non_root_and_cleans_up_after_itself():
    """scripts/netlab needs root, refuses to come up twice, and leaves nothing behind."""
    prefix = "lab-c%d-" % os.getpid()
    net = Netlab(prefix)
    denied = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                             str(NETLAB), "up"], env=net.env, capture_output=True, text=True,
                            timeout=30)
    assert denied.returncode == 1
    assert "needs root" in denied.stderr
    links_before = link_names()
    try:
        net("up")
        assert net.namespaces() == sorted(prefix + h for h in ("a1", "a2", "a3", "b1", "b2",
                                                               "router"))
        again = net("up", check=False)
        assert again.returncode == 1 and b"already up" in again.stderr
    finally:
        net("down")
    assert net.namespaces() == []
    assert link_names() == links_before  # nothing was added to this machine's own network
