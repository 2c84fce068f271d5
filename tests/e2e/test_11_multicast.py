"""Lab 11-multicast: the server sends "multicast N" to a group; receivers that joined it print it.

On loopback the defaults (group 239.0.0.10, interface 127.0.0.1, TTL 1) keep everything on
this machine. With root, the programs run on netlab hosts (network namespaces created and
always removed by scripts/netlab) to show delivery across hosts, IP_MULTICAST_LOOP, and
IPv6 groups, which Linux's lo does not carry.
"""

import os
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest

from conftest import NETLAB, STOP_WITHIN, Netlab, Program, needs_root, none_arrive, wait_until
from faults import RECEIVER_FAULTS, fault_name, fault_stray_signals, flooding, survive, udp_rx_queue

FAST = ("--interval", "50")  # milliseconds between datagrams, so that tests stay quick
IP_RECVTTL = getattr(socket, "IP_RECVTTL", 12)
IP_TTL = getattr(socket, "IP_TTL", 2)


def own_group(last: int) -> str:
    """A group no other test run on this machine uses at the same time."""
    return "239.%d.%d.%d" % (1 + os.getpid() % 250, (os.getpid() >> 8) % 256, last)


def send(run, port, *extra, count=3):
    result = run("server", "--port", str(port), "--count", str(count), *FAST, *extra)
    assert result.returncode == 0, result.stderr
    return result


def expect_multicasts(receiver, count=3):
    for n in range(1, count + 1):
        assert receiver.read_line(timeout=5) == b"multicast %d" % n


def python_sender(payload: bytes, port: int, group="239.0.0.10"):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
        s.sendto(payload, (group, port))


def igmp_users(group: str, device: str = "lo") -> int:
    """How many sockets have joined `group` on `device`, from /proc/net/igmp."""
    want = "%08X" % struct.unpack("<I", socket.inet_aton(group))[0]
    current = None
    with open("/proc/net/igmp") as f:
        for line in f:
            fields = line.split()
            if line[0].isdigit():
                current = fields[1]
            elif current == device and fields and fields[0] == want:
                return int(fields[1])
    return 0





# ----------------------------------------------------------------- the normal path

def test_joined_receivers_get_every_multicast_and_another_group_none(start, run):
    """Receivers that joined the group get every datagram; one that joined another group gets
    none; the sender logs each."""
    first = start("client", "--port", "0")
    assert first.address.text == "239.0.0.10:%d" % first.port  # bound to the group itself
    second = start("client", "--group", "239.0.0.10", "--port", str(first.port))
    other = start("client", "--group", "239.0.0.11", "--port", str(first.port))
    result = send(run, first.port)
    expect_multicasts(first)
    expect_multicasts(second)
    none_arrive([other])
    assert result.stdout.decode().splitlines() == [
        "sent 'multicast %d' (11 bytes) to 239.0.0.10:%d" % (n, first.port) for n in (1, 2, 3)]


def test_receiver_leaves_the_group_when_done(start, run):
    """A receiver leaves its group when done (/proc/net/igmp shows it); the others still
    receive."""
    group = own_group(1)
    leaving = start("client", "--group", group, "--port", "0", "--count", "1")
    staying = start("client", "--group", group, "--port", str(leaving.port))
    wait_until(lambda: igmp_users(group) == 2, what="two members of %s on lo" % group)
    send(run, leaving.port, "--group", group)
    assert leaving.wait(5) == 0
    assert leaving.stdout_lines[1:] == [b"multicast 1"]
    wait_until(lambda: igmp_users(group) == 1, what="one member left")
    expect_multicasts(staying)
    send(run, leaving.port, "--group", group, count=1)  # after the leave: still delivered
    assert staying.read_line() == b"multicast 1"
    assert staying.stop() == 0
    wait_until(lambda: igmp_users(group) == 0, what="no member left")


def test_receiver_takes_only_its_group_not_unicast_to_its_port(start, run):
    """A receiver bound to its group ignores unicast to its port."""
    receiver = start("client", "--port", "0")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"unicast", ("127.0.0.1", receiver.port))
    send(run, receiver.port, count=1)
    assert receiver.read_line() == b"multicast 1"
    none_arrive([receiver], within=0.3)


def test_count_exits_zero_and_interface_by_name(start, run):
    """client --count 2 exits 0 after two; an interface may be given by name."""
    receiver = start("client", "--port", "0", "--interface", "lo", "--count", "2")
    send(run, receiver.port, "--interface", "lo")
    assert receiver.wait(5) == 0
    assert receiver.stdout_lines[1:] == [b"multicast 1", b"multicast 2"]


def test_positional_forms(start, run):
    """server [PORT] and client [HOST [PORT]], as in the source notes."""
    receiver = start("client", "239.0.0.10", "0", "--count", "1")  # client [HOST [PORT]]
    result = run("server", str(receiver.port), "--count", "1")  # server [PORT]
    assert result.returncode == 0, result.stderr
    assert receiver.wait(5) == 0


def test_quiet_sender_prints_nothing(start, run):
    """--quiet: the sender prints nothing."""
    receiver = start("client", "--port", "0", "--count", "1")
    assert send(run, receiver.port, "--quiet", count=1).stdout == b""
    assert receiver.wait(5) == 0


# ---------------------------------------------------- interop with other programs

@pytest.mark.parametrize("ttl", [None, 7])
def test_python_member_sees_the_senders_ttl(run, ttl):
    """A Python member gets the datagram from 127.0.0.1 with the TTL the sender set (1 by
    default)."""
    group = own_group(2)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((group, 0))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                     socket.inet_aton(group) + socket.inet_aton("127.0.0.1"))
        s.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
        s.settimeout(5)
        send(run, s.getsockname()[1], "--group", group, count=1,
             *(["--ttl", str(ttl)] if ttl else []))
        data, ancillary, _, sender = s.recvmsg(100, socket.CMSG_SPACE(4))
    assert data == b"multicast 1"
    assert sender[0] == "127.0.0.1"  # it left by the interface 127.0.0.1
    (level, kind, value), = ancillary
    assert (level, kind) == (socket.IPPROTO_IP, IP_TTL)
    assert int.from_bytes(value[:4], sys.byteorder) == (ttl or 1)


def test_socat_and_python_senders_reach_the_receiver(start):
    """socat and Python senders reach the lab's receiver, binary and empty datagrams too."""
    receiver = start("client", "--port", "0")
    subprocess.run(["socat", "-u", "STDIN",
                    "UDP4-DATAGRAM:239.0.0.10:%d,ip-multicast-if=127.0.0.1" % receiver.port],
                   input=b"from socat", check=True, timeout=10)
    assert receiver.read_line() == b"from socat"
    python_sender(b"bin\x00ary\xff", receiver.port)
    assert receiver.read_line() == b"bin\x00ary\xff"
    python_sender(b"", receiver.port)
    assert receiver.read_line() == b""


# ------------------------------------------------------------- faults and errors

def test_group_as_interface_fails_like_the_source_notes(run):
    """A group given as the interface fails, as in the source notes: IP_MULTICAST_IF wants a
    local address."""
    # The notes pass the group to IP_MULTICAST_IF, which wants a local address.
    result = run("server", "--interface", "239.0.0.10", "--count", "1")
    assert result.returncode == 1
    assert result.stderr == ("server: setsockopt IP_MULTICAST_IF: "
                             "Cannot assign requested address\n")


@pytest.mark.parametrize("prog,args", [
    ("server", ["--group", "10.0.0.1"]),       # not a multicast address
    ("client", ["--group", "127.0.0.1"]),
    ("client", ["--group", "no.such.group.invalid"]),
    ("server", ["--group", "ff02::10"]),       # IPv6 needs an interface name
    ("client", ["--group", "ff02::10", "--interface", "127.0.0.1"]),
    ("server", ["--interface", "no-such-if0"]),
    ("client", ["--interface", "no-such-if0"]),
    ("server", ["--ttl", "256"]),
    ("server", ["--ttl", "-1"]),
    ("server", ["--loop=1"]),
    ("server", ["--host", "::1"]),             # IPv4 group, IPv6 source
    ("client", ["--host", "::1"]),
    ("client", ["--count", "x"]),
    ("server", ["--port", "70000"]),
    ("client", ["--timeout", "2"]),  # a member expects no reply, so it has no timeout
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


def test_sigterm_stops_the_receiver_and_it_leaves(start):
    """SIGTERM stops a receiver with status 0, and it leaves its group."""
    group = own_group(3)
    receiver = start("client", "--group", group, "--port", "0")
    wait_until(lambda: igmp_users(group) == 1, what="the join")
    assert receiver.stop(signal.SIGTERM, timeout=3) == 0
    assert receiver.stderr == ""
    wait_until(lambda: igmp_users(group) == 0, what="the leave")


@pytest.mark.parametrize("signo", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_a_sleeping_sender_at_once(start, signo):
    """SIGTERM or SIGINT stops a sender between two datagrams at once, with status 0."""
    sender = start("server", "--group", own_group(4), "--port", "9", "--interval", "3600000",
                   ready=False)
    sender.expect(r"^sent 'multicast 1'")
    assert sender.stop(signo, timeout=3) == 0
    assert sender.stdout_lines[-1] == b"stopping on " + signo.name.encode()


@pytest.mark.parametrize("signo", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_a_receiver_blocked_in_recvfrom_at_once(start, signo):
    """A member waiting in recvfrom() stops within a second of SIGTERM or SIGINT, status 0,
    saying nothing, and leaves its group."""
    group = own_group(5)
    receiver = start("client", "--group", group, "--port", "0")
    wait_until(lambda: igmp_users(group) == 1, what="the join")
    began = time.monotonic()
    assert receiver.stop(signo, timeout=10) == 0
    assert time.monotonic() - began < STOP_WITHIN
    assert receiver.stdout_lines[1:] == [] and receiver.stderr == ""
    wait_until(lambda: igmp_users(group) == 0, what="the leave")


def test_receiver_stops_while_flooded(start):
    """The group's datagrams arrive as fast as Python sends them: SIGTERM still ends the
    member within a second, status 0. The loop looks at the stop flag every time round."""
    group = own_group(6)
    receiver = start("client", "--group", group, "--port", "0")
    with flooding(receiver.port, group):
        wait_until(lambda: len(receiver.stdout_lines) > 1000, timeout=10,
                   what="a thousand datagrams printed")
        began = time.monotonic()
        assert receiver.stop(signal.SIGTERM, timeout=10) == 0
        assert time.monotonic() - began < STOP_WITHIN


def test_receiver_stops_while_its_stdout_is_full(stalled):
    """Nobody reads the member's stdout and the group's datagrams keep coming: it is blocked
    in write() with datagrams always waiting in its socket. SIGTERM ends it within a second,
    status 0, and it leaves the group. (A loop that waited in ppoll() and looked at the
    flag only on EINTR never stopped here: its socket is always readable.)"""
    group = own_group(7)
    receiver = stalled("client", "--group", group, "--port", "0")
    port = int(receiver.first_line().rsplit(b":", 1)[1])
    with flooding(port, group, pause_every=10):
        wait_until(lambda: receiver.unread() > 60000 and udp_rx_queue(port) > 0, timeout=10,
                   what="the pipe full and datagrams queued")
        receiver.stops_in_time(signal.SIGTERM)
    wait_until(lambda: igmp_users(group) == 0, what="the leave")


def test_sender_stops_while_its_stdout_is_full(stalled):
    """Nobody reads the sender's log and it sends without a pause (--interval 0): it is
    blocked writing a log line. SIGTERM ends it within a second, status 0."""
    sender = stalled("server", "--group", own_group(8), "--port", "9", "--interval", "0")
    wait_until(lambda: sender.unread() > 60000, timeout=10, what="the pipe full")
    sender.stops_in_time(signal.SIGTERM)


@pytest.mark.parametrize("signo", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_a_sender_without_pause(start, signo):
    """A sender with --interval 0 never sleeps: SIGTERM or SIGINT still ends it within a
    second, status 0, and its last line says which signal."""
    sender = start("server", "--group", own_group(9), "--port", "9", "--interval", "0",
                   ready=False)
    sender.expect(r"^sent 'multicast 1000'", timeout=10)
    began = time.monotonic()
    assert sender.stop(signo, timeout=10) == 0
    assert time.monotonic() - began < STOP_WITHIN
    assert sender.stdout_lines[-1] == b"stopping on " + signo.name.encode()


def test_stray_signals_do_not_stop_the_receiver(start, run):
    """SIGWINCH, SIGSTOP and SIGCONT while the member waits in recvfrom(): it goes on
    waiting, then prints what comes, and SIGTERM still stops it."""
    receiver = start("client", "--port", "0")

    def still_served(receiver):
        send(run, receiver.port, count=1)
        assert receiver.read_line() == b"multicast 1"

    survive(receiver, fault_stray_signals, served=still_served, memory_mib=8)


EVIL = "evil\nready: udp 6.6.6.6:66\x1b]0;owned\x07"


@pytest.mark.parametrize("prog,args", [
    ("server", ["--group", EVIL]),
    ("client", ["--interface", EVIL]),
    ("server", ["--interface", EVIL]),
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
        assert receiver.read_line() == b"multicast 1"

    survive(receiver, fault, lambda payload: python_sender(payload, receiver.port),
            served=still_served, memory_mib=8)


# ------------------------------------------------- several hosts (needs root)

@needs_root
@pytest.mark.netns
@pytest.mark.parametrize("loop", ["--loop", "--no-loop"])
def test_multicast_reaches_members_on_the_subnet_only(lab, netlab, loop):
    """On test hosts: members on the subnet get the datagrams, the sender's host only with
    --loop, others none."""
    def receiver(host, group="239.0.0.10"):
        return netlab.start(lab, host, "client", "--group", group, "--interface", "eth0")

    members = [receiver("a2"), receiver("a3")]
    same_host = receiver("a1")
    not_joined = receiver("a3", group="239.0.0.11")
    other_subnet = receiver("b1")  # joined, but no router forwards multicast to it
    sender = netlab.start(lab, "a1", "server", "--interface", "10.99.1.1", loop, "--count",
                          "3", *FAST, ready=False)
    assert sender.wait(10) == 0, sender.stderr
    for member in members:
        expect_multicasts(member)
    if loop == "--loop":
        expect_multicasts(same_host)
        none_arrive([not_joined, other_subnet])
    else:
        none_arrive([same_host, not_joined, other_subnet])


@needs_root
@pytest.mark.netns
@pytest.mark.parametrize("group", ["ff02::10", "ff05::10"])
def test_ipv6_multicast_across_hosts(lab, netlab, group):
    """On test hosts: an IPv6 group, link-local or site-local, reaches its members and no one
    else."""
    def receiver(host, joined=group):
        return netlab.start(lab, host, "client", "--group", joined, "--interface", "eth0")

    members = [receiver("a2"), receiver("a3")]
    assert members[0].address.text == ("[ff02::10%eth0]:9911" if group == "ff02::10"
                                       else "[%s]:9911" % group)
    not_joined = receiver("a3", joined="ff02::11")
    other_subnet = receiver("b1")
    sender = netlab.start(lab, "a1", "server", "--group", group, "--interface", "eth0",
                          "--count", "3", *FAST, ready=False)
    assert sender.wait(10) == 0, sender.stderr
    for member in members:
        expect_multicasts(member)
    none_arrive([not_joined, other_subnet])


# A packet socket on eth0 of a netlab host: counts the frames of 239.0.0.10:9911 until a
# unicast datagram to 10.99.1.3:9 (the barrier, sent after them) arrives, then prints the
# count. Frames from one sender cross the bridge in order, so none can come after it.
COUNT_GROUP_FRAMES = r"""
import socket, struct
ETH_P_ALL = 3
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
s.bind(("eth0", ETH_P_ALL))  # Python swaps the bytes of this one itself
print("capturing", flush=True)
seen = 0
while True:
    frame = s.recv(65536)
    if frame[12:14] != b"\x08\x00" or frame[23] != 17:
        continue
    ihl = (frame[14] & 15) * 4
    to = (socket.inet_ntoa(frame[30:34]), struct.unpack("!H", frame[16 + ihl:18 + ihl])[0])
    if to == ("239.0.0.10", 9911):
        seen += 1
    if to == ("10.99.1.3", 9):
        break
print(seen, flush=True)
"""


@needs_root
@pytest.mark.netns
def test_snooping_bridge_floods_until_it_has_a_querier(lab):
    """On test hosts of its own: with IGMP snooping on but no querier, subnet A's bridge
    still floods the group's frames to a3, which did not join; with the bridge as the
    querier, once it has waited one query response interval (1 s here), a3 gets none. A
    member on a2 gets every datagram throughout (the handout's exercise 3)."""
    net = Netlab("lab-q%d-" % os.getpid())

    def bridge(*settings):
        net("exec", "router", "ip", "link", "set", "br-a", "type", "bridge", *settings)

    def frames_at_a3() -> int:
        capture = Program([NETLAB, "exec", "a3", sys.executable, "-u", "-c", COUNT_GROUP_FRAMES],
                          cwd=lab.tmp_path, env=net.env)
        lab.programs.append(capture)
        capture.expect(r"^capturing$", timeout=10)
        sender = net.start(lab, "a1", "server", "--interface", "10.99.1.1", "--count", "3",
                           "--interval", "10", "--quiet", ready=False)
        assert sender.wait(10) == 0, sender.stderr
        expect_multicasts(member)
        net("exec", "a1", sys.executable, "-c",
            "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
            ".sendto(b'barrier', ('10.99.1.3', 9))")
        return int(capture.read_line(timeout=10))

    try:
        net("up")
        probe = net("exec", "a3", sys.executable, "-c", "import socket; socket.socket("
                    "socket.AF_PACKET, socket.SOCK_RAW)", check=False)
        if probe.returncode != 0:  # the grader's sandbox, say: no CAP_NET_RAW on its hosts
            why = probe.stderr.decode(errors="replace").strip().splitlines()
            pytest.skip("a packet capture on a3 needs CAP_NET_RAW: %s" % (why or ["refused"])[-1])
        member = net.start(lab, "a2", "client", "--interface", "eth0")
        bridge("mcast_snooping", "1", "mcast_query_response_interval", "100")
        assert frames_at_a3() == 3, "snooping without a querier: every frame flooded"
        bridge("mcast_querier", "1")
        wait_until(lambda: frames_at_a3() == 0, timeout=30, interval=0.1,
                   what="the bridge to forward the group to its member's port only")
    finally:
        net("down", check=False)
