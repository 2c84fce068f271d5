"""make trace, the timeline: the packets (read with dpkt) and the system calls (strace's
files) as one list of events in time order, and timeline.txt written from it.

An event has a time (wall clock, as both tcpdump and strace stamp it), who it happened to
(client, server, relay, or wire for a packet) and what. A call is placed at the moment it
returned; a call that blocked (accept() waiting for a client, poll() waiting for data) has
a second event where it began, so that what happened meanwhile shows between the two.
Each socket's addresses come from strace (-yy), and they tell whose side each packet's
addresses are on: a packet goes from one lifeline to the other.
"""

from __future__ import annotations

import re
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path

import dpkt

BLOCKED = 0.005  # seconds: a call that took longer has blocked, and shows where it began
POLL_CALLS = {"select", "pselect6", "poll", "ppoll", "epoll_wait", "epoll_pwait",
              "epoll_pwait2"}
BLOCKING_CALLS = {"accept", "accept4", "connect", "read", "readv", "recvfrom", "recvmsg",
                  "recvmmsg"} | POLL_CALLS
FD_CALLS = {"read", "write", "readv", "writev", "close"}  # shown only on a socket
SIGNALS = {"SIGINT", "SIGTERM", "SIGPIPE", "SIGCHLD", "SIGHUP", "SIGURG"}
SOCKET_KINDS = ("TCP", "TCPv6", "UDP", "UDPv6", "UNIX-STREAM", "UNIX-DGRAM", "UNIX-SEQPACKET",
                "UNIX", "socket")
OTHER_SIDE = {"client": "server", "server": "client"}


@dataclass
class Event:
    time: float           # seconds since the epoch
    who: str              # client, server, relay, wire
    text: str             # what, for timeline.txt
    kind: str             # call, wait (a blocking call begins), packet, signal, exit, log
    label: str = ""       # what, shorter, for the diagram
    pid: int = 0
    call: str = ""
    fd: int = -1
    result: int | None = None
    errno: str = ""
    src: str = ""         # packets: the sender's side and the receiver's side
    dst: str = ""
    flow: tuple = ()      # packets and socket calls: the connection, for grouping
    data: bool = False    # a packet or call that only moves bytes (foldable in the diagram)
    unix: tuple = ()      # Unix sockets: (this end's inode, the peer's inode)
    tag: str = ""         # who.pid when a side has several processes
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------- strace

LINE = re.compile(r"^(\d+\.\d+) (\w+)\((.*)\) += (.*?)(?: <(\d+\.\d+)>)?$")
SIGNAL_LINE = re.compile(r"^(\d+\.\d+) --- (SIG\w+) ")
EXIT_LINE = re.compile(r"^(\d+\.\d+) \+\+\+ (exited with (\d+)|killed by (SIG\w+)).* \+\+\+$")
FD = re.compile(r"(\d+)<((?:[^<>]|<[^<>]*>)*)>")
SOCKADDR_IN = re.compile(r"\{sa_family=AF_INET, sin_port=htons\((\d+)\), "
                         r"sin_addr=inet_addr\(\"([^\"]+)\"\)\}")
SOCKADDR_IN6 = re.compile(r"\{sa_family=AF_INET6, sin6_port=htons\((\d+)\), [^}]*?"
                          r"inet_pton\(AF_INET6, \"([^\"]+)\"[^}]*\}")
SOCKADDR_UN = re.compile(r"\{sa_family=AF_UNIX(?:, sun_path=(@?\"(?:[^\"\\]|\\.)*\"))?\}")
STRING = re.compile(r"\"((?:[^\"\\]|\\.)*)\"(\.\.\.)?")
ENDPOINT = re.compile(r"^(TCP|TCPv6|UDP|UDPv6):\[(.+)\]$")


def addresses(text: str) -> str:
    """strace's sockaddr structures written as the labs print addresses."""
    text = SOCKADDR_IN.sub(lambda m: "%s:%s" % (m.group(2), m.group(1)), text)
    text = SOCKADDR_IN6.sub(lambda m: "[%s]:%s" % (m.group(2), m.group(1)), text)
    return SOCKADDR_UN.sub(lambda m: m.group(1).replace('"', "") if m.group(1) else "(unnamed)",
                           text)


def split_endpoint(text: str) -> tuple[str, int] | None:
    host, _, port = text.rpartition(":")
    if not port.isdigit():
        return None
    host = host.strip("[]")
    if host.startswith("::ffff:") and "." in host:  # IPv4-mapped: the wire shows IPv4
        host = host[7:]
    return host, int(port)


def preview(data: str, width: int = 14) -> str:
    """The first bytes of a buffer as strace shows them, shortened."""
    m = STRING.search(data)
    if not m:
        return ""
    text = m.group(1)
    return '"%s"' % (text[:width] + ("..." if len(text) > width or m.group(2) else ""))


def split_args(args: str) -> list[str]:
    """strace's arguments, split at the top-level commas."""
    out, depth, quoted, start, i = [], 0, False, 0, 0
    while i < len(args):
        c = args[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c in "[{(<":
            depth += 1
        elif c in "]})>":
            depth -= 1
        elif c == "," and depth == 0:
            out.append(args[start:i].strip())
            start = i + 1
        i += 1
    out.append(args[start:].strip())
    return out


def fd_set(text: str) -> str:
    """poll's and epoll's lists written short: '3:IN|OUT 4:IN'."""
    items = re.findall(r"fd=(\d+)[^,}]*, (?:r?events)=([A-Z|]+)", text)
    if not items:  # epoll: {events=EPOLLIN, data={u32=5, ...}}
        items = [(d, e) for e, d in re.findall(r"events=([A-Z|]+), data=\{u32=(\d+)", text)]
    return " ".join("%s:%s" % (fd, re.sub(r"\b(E?POLL)", "", ev)) for fd, ev in items)


def describe(call: str, raw_args: str, result: str) -> tuple[str, str]:
    """(arguments, result) as the timeline shows them: the key ones, short."""
    args = split_args(addresses(FD.sub(lambda m: m.group(1), raw_args)))
    a = lambda i: args[i] if i < len(args) else ""  # noqa: E731
    shown, extra = ", ".join(args), ""
    if call in ("socket", "socketpair"):
        shown = ", ".join(x for x in (a(0), a(1).replace("|SOCK_CLOEXEC", "")) if x)
    elif call in ("bind", "connect"):
        shown = "%s, %s" % (a(0), a(1))
    elif call in ("accept", "accept4"):
        shown = a(0)
        extra = " from %s" % a(1) if a(1) not in ("NULL", "") and ":" in a(1) else ""
    elif call == "setsockopt":
        value = re.sub(r"inet_addr\(\"([^\"]+)\"\)", r"\1", a(3)).strip("[]")
        value = "..." if value.startswith('"') else re.sub(r"\b\w+=", "", value)
        shown = "%s, %s, %s" % (a(0), a(2), value if len(value) < 40 else value[:37] + "...")
    elif call in ("read", "recvfrom", "readv"):
        shown = a(0)
        n = result.split(" ")[0]
        extra = " (end of stream)" if n == "0" and call != "recvfrom" else \
            (" " + preview(a(1))) if n.isdigit() else ""
        if call == "recvfrom" and ":" in a(4):
            extra += " from " + a(4)
    elif call in ("write", "sendto", "writev"):
        shown = "%s, %s" % (a(0), preview(a(1)))
        if call == "sendto" and a(4) not in ("NULL", ""):
            shown += " to " + a(4)
    elif call in ("sendmsg", "recvmsg"):
        name = re.search(r"msg_name=([^,]+(?:\]:\d+)?)", a(1))
        shown = "%s, %s" % (a(0), preview(a(1)))
        if name and name.group(1) not in ("NULL",):
            shown += (" to " if call == "sendmsg" else " from ") + name.group(1)
        rights = re.search(r"cmsg_type=SCM_RIGHTS, cmsg_data=\[([^\]]*)\]", raw_args)
        if rights:
            passed = ", ".join("%s %s" % (m.group(1), m.group(2))
                               for m in FD.finditer(rights.group(1)))
            shown += ", SCM_RIGHTS [%s]" % (passed or rights.group(1))
        if "SCM_CREDENTIALS" in raw_args:
            shown += ", SCM_CREDENTIALS"
    elif call == "shutdown":
        shown = "%s, %s" % (a(0), a(1))
    elif call == "close":
        shown = a(0)
    elif call in ("poll", "ppoll"):
        timeout = a(2)
        m = re.match(r"\{tv_sec=(\d+), tv_nsec=(\d+)\}", timeout)
        if m:
            timeout = "%g ms" % (int(m.group(1)) * 1000 + int(m.group(2)) / 1e6)
        elif timeout.lstrip("-").isdigit():
            timeout = "%s ms" % timeout
        shown = "%s, %s" % (fd_set(a(0)), timeout)
        m = re.search(r"\((\[.*\])", result)
        extra = ": " + fd_set(m.group(1)) if m else ""
    elif call in ("select", "pselect6"):
        shown = "in %s, out %s" % (a(1), a(2))
        m = re.search(r"\((.*?)(?:, left .*)?\)$", result)
        extra = ": " + m.group(1) if m else ""
    elif call in ("epoll_wait", "epoll_pwait", "epoll_pwait2"):
        shown = "%s, %s ms" % (a(0), a(3)) if call != "epoll_pwait2" else a(0)
        extra = ": " + fd_set(a(1)) if result.split(" ")[0] not in ("0", "-1", "?") else ""
    elif call == "epoll_ctl":
        shown = "%s, %s, %s, %s" % (a(0), a(1).replace("EPOLL_CTL_", ""), a(2),
                                    re.sub(r"\bEPOLL", "", (re.findall(r"events=([A-Z|]+)",
                                                                       a(3)) or [""])[0]))
    return shown, extra


def result_text(result: str) -> tuple[str, int | None, str]:
    """('= 6', 6, '') or ('= -1 ECONNREFUSED', -1, 'ECONNREFUSED') from strace's result."""
    result = FD.sub(lambda m: m.group(1), result)
    m = re.match(r"^(-?\d+|\?)(?: (E[A-Z0-9_]+) \(([^)]*)\))?", result)
    if not m:
        return "= " + result, None, ""
    value, errno = m.group(1), m.group(2) or ""
    if errno.startswith("ERESTART"):
        return "= -1 EINTR (a signal interrupted it)", -1, "EINTR"
    return ("= %s %s" % (value, errno)).rstrip(), (int(value) if value != "?" else None), errno


@dataclass
class Call:
    """One line of strace: a call, when it began, how long it took."""
    who: str
    pid: int
    began: float
    took: float
    name: str
    args: str
    result: str
    ended: float = 0.0  # when it returned: see returned()


FAMILIES = {("AF_INET", "SOCK_STREAM"): "TCP", ("AF_INET6", "SOCK_STREAM"): "TCP",
            ("AF_INET", "SOCK_DGRAM"): "UDP", ("AF_INET6", "SOCK_DGRAM"): "UDP",
            ("AF_UNIX", "SOCK_STREAM"): "UNIX", ("AF_UNIX", "SOCK_DGRAM"): "UNIX",
            ("AF_UNIX", "SOCK_SEQPACKET"): "UNIX"}
INODE = re.compile(r"\d+<socket:\[(\d+)\]>")
SENDS = {"write", "writev", "send", "sendto", "sendmsg", "sendmmsg"}
RECEIVES = {"read", "readv", "recv", "recvfrom", "recvmsg", "recvmmsg"}
WAITS_FOR_THE_NETWORK = RECEIVES | BLOCKING_CALLS - {"connect"}
JOIN = re.compile(r"(?:IP_ADD_MEMBERSHIP|IPV6_ADD_MEMBERSHIP|IPV6_JOIN_GROUP|MCAST_JOIN_GROUP)")


def read_calls(path: Path, who: str, pid: int, signals: list) -> list[Call]:
    """strace's lines for one process, in order; signals and the exit go to `signals`."""
    calls = []
    for line in path.read_text(errors="replace").splitlines():
        m = LINE.match(line)
        if m:
            calls.append(Call(who, pid, float(m.group(1)), float(m.group(5) or 0), m.group(2),
                              m.group(3), m.group(4)))
            continue
        s = SIGNAL_LINE.match(line)
        if s and s.group(2) in SIGNALS:
            signals.append(Event(float(s.group(1)), who, "%s arrives" % s.group(2), "signal",
                                 label=s.group(2), pid=pid))
        e = EXIT_LINE.match(line)
        if e:
            what = "exits %s" % e.group(3) if e.group(3) else "killed by %s" % e.group(4)
            signals.append(Event(float(e.group(1)), who, what, "exit", label=what, pid=pid))
    # strace stamps a call when it begins: the next call of the same process is the latest
    # moment it can have returned, and begin + duration about the earliest.
    for call, after in zip(calls, calls[1:] + [None]):
        call.ended = call.began + call.took
        if after is not None:
            call.ended = max(call.ended, min(after.began - 1e-6, call.ended + 0.002))
    return calls


def socket_kinds(calls: list[Call]) -> dict[str, str]:
    """Each socket's kind (TCP, UDP, UNIX, NETLINK), by inode, from the calls that made it."""
    kinds: dict[str, str] = {}
    for call in sorted(calls, key=lambda c: c.began):
        made = INODE.findall(call.result)
        if call.name in ("socket", "socketpair"):
            family, kind = (split_args(call.args) + ["", ""])[:2]
            kind = kind.split("|")[0]
            made += INODE.findall(call.args) if call.name == "socketpair" else []
            for inode in made:
                kinds[inode] = "NETLINK" if family == "AF_NETLINK" else \
                    FAMILIES.get((family, kind), "socket")
        elif call.name in ("accept", "accept4") and made:
            listener = INODE.findall(call.args)
            kinds[made[0]] = kinds.get(listener[0], "socket") if listener else "socket"
    return kinds


def learn_owners(call: Call, kind: str, owners: dict) -> None:
    """Which side each address is on: a program owns what it binds; what it connects or
    sends to, and what it accepts or receives from, is on the other side."""
    proto = "UDP" if kind == "UDP" else "TCP"
    if kind not in ("TCP", "UDP", "socket"):
        return
    args = split_args(addresses(call.args))
    other = OTHER_SIDE.get(call.who, "client")
    found: list[tuple[str, int, str]] = []
    if call.name in ("bind", "getsockname") and len(args) > 1:
        found.append(split_endpoint(args[1]) + (call.who,) if split_endpoint(args[1]) else None)
    elif call.name == "connect" and len(args) > 1:
        found.append(split_endpoint(args[1]) + (other,) if split_endpoint(args[1]) else None)
    elif call.name == "sendto" and len(args) > 4:
        found.append(split_endpoint(args[4]) + (other,) if split_endpoint(args[4]) else None)
    elif call.name in ("accept", "accept4", "recvfrom") and len(args) > 1:
        peer = args[1] if call.name != "recvfrom" else (args[4] if len(args) > 4 else "")
        found.append(split_endpoint(peer) + (other,) if split_endpoint(peer) else None)
    for item in found:
        if item and call.name in ("bind", "getsockname"):  # its own: that settles it
            owners[(proto, item[0], item[1])] = item[2]
            if call.name == "bind":  # the relay's clients send to what it binds
                owners[("bound", proto, item[0], item[1])] = True
        elif item:  # the other side's, as far as this call can tell
            owners.setdefault((proto, item[0], item[1]), item[2])


def events_of(call: Call, kind: str) -> list[Event]:
    """A call as the timeline shows it. A call that can send is placed where it began (its
    packets follow it); one that waits for the network where it returned (what woke it
    precedes it), and where it began too if it waited, as does connect(), which both sends
    (SYN) and waits (for the handshake)."""
    shown, extra = describe(call.name, call.args, call.result)
    res, value, errno = result_text(call.result)
    fd_match = FD.match(call.args)
    fd = int(fd_match.group(1)) if fd_match else -1
    text = "%s(%s) %s%s" % (call.name, shown, res, extra)
    data = (call.name in SENDS | RECEIVES and kind == "TCP") or call.name in POLL_CALLS
    ev = Event(call.began, call.who, text, "call", label=text, pid=call.pid, call=call.name,
               fd=fd, result=value, errno=errno, data=data, flow=(kind,),
               extra={"began": call.began})
    if kind == "UNIX":
        ev.unix = ("unix",)
    handshake = call.name == "connect" and kind == "TCP"
    if call.name not in WAITS_FOR_THE_NETWORK and not handshake:
        return [ev]
    ev.time = call.ended
    if call.ended - call.began < BLOCKED and not handshake:
        return [ev]
    began = Event(call.began, call.who, "%s(%s) blocks" % (call.name, shown), "wait",
                  label="%s(%s) ..." % (call.name, shown), pid=call.pid, call=call.name, fd=fd)
    return [began, ev]


def read_strace(files: list[tuple[Path, str, int]], owners: dict) -> list[Event]:
    """The events in strace's files (path, side, pid); `owners` learns whose each address
    is. Only socket calls are kept: read(), write() and close() on a socket, not a file."""
    signals: list[Event] = []
    calls = [c for path, who, pid in files for c in read_calls(path, who, pid, signals)]
    kinds = socket_kinds(calls)
    events = [e for e in signals if e.who != "relay"]
    for call in calls:
        inode = INODE.match(call.args)
        kind = kinds.get(inode.group(1), "socket") if inode else ""
        if call.who == "relay":  # its addresses and its decisions only
            learn_owners(call, "UDP", owners)
            text = STRING.search(call.args)
            if call.name == "write" and call.args.startswith("1<") and text:
                line = text.group(1).replace("\\n", "")
                if line.startswith("#"):
                    events.append(Event(call.began, "relay", line, "log", label=line,
                                        pid=call.pid))
            continue
        if call.name in FD_CALLS and not inode:
            continue  # a file, a pipe, a terminal
        if kind == "NETLINK" or (call.name == "socket" and "AF_NETLINK" in call.args):
            continue  # getaddrinfo() asking the kernel about addresses
        learn_owners(call, kind, owners)
        events += events_of(call, kind)
    return events


# ------------------------------------------------------------------------------ pcap

TCP_FLAGS = ((dpkt.tcp.TH_SYN, "SYN"), (dpkt.tcp.TH_FIN, "FIN"), (dpkt.tcp.TH_RST, "RST"),
             (dpkt.tcp.TH_PUSH, "PSH"), (dpkt.tcp.TH_ACK, "ACK"), (dpkt.tcp.TH_URG, "URG"))
ICMP_UNREACH = {0: "net unreachable", 1: "host unreachable", 3: "port unreachable",
                4: "fragmentation needed"}
IGMP3_RECORDS = {1: "is-include", 2: "is-exclude", 3: "leave", 4: "join", 5: "allow", 6: "block"}


def ip_text(packed: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET6 if len(packed) == 16 else socket.AF_INET, packed)


def hostport(ip: str, port: int) -> str:
    return "[%s]:%d" % (ip, port) if ":" in ip else "%s:%d" % (ip, port)


def netlab_name(ip: str) -> str:
    """scripts/netlab's hosts by address: 10.99.1.2 is a2, 10.99.2.1 is b1."""
    m = re.match(r"^(?:10\.99\.([12])\.(\d+)|fd99:([12])::(\w+))$", ip)
    if not m:
        return ""
    subnet = "a" if (m.group(1) or m.group(3)) == "1" else "b"
    host = m.group(2) or m.group(4)
    if host == "255":
        return "all of subnet %s" % subnet.upper()
    return "router" if host in ("254", "fe") else subnet + host


class Packets:
    """Reads the captures and names each packet's sides with the sockets' owners."""

    def __init__(self, owners: dict):
        self.owners = owners
        self.isn: dict = {}

    def side(self, proto: str, ip: str, port: int) -> str | None:
        for host in (ip, "0.0.0.0", "::"):
            if (proto, host, port) in self.owners:
                return self.owners[(proto, host, port)]
        return None

    def other(self, role: str, proto: str, ip: str, port: int) -> str:
        """Who is at the other end of a packet from or to `role` at ip:port."""
        if role == "relay":  # its bound port faces the clients, the others the server
            return "client" if ("bound", proto, ip, port) in self.owners else "server"
        return OTHER_SIDE.get(role, "client")

    def sides(self, proto, src, sport, dst, dport) -> tuple[str, str]:
        a, b = self.side(proto, src, sport), self.side(proto, dst, dport)
        if a and not b:
            b = self.other(a, proto, src, sport)
        elif b and not a:
            a = self.other(b, proto, dst, dport)
        elif not a and not b:
            a, b = "client", "server"
        return a, b

    def read(self, pcap: Path, where: str) -> list[Event]:
        events = []
        with open(pcap, "rb") as f:
            try:
                reader = list(dpkt.pcap.Reader(f))
            except (ValueError, dpkt.NeedData):
                return events
        decoders = {0x0800: dpkt.ip.IP, 0x86DD: dpkt.ip6.IP6, 0x0806: dpkt.arp.ARP}
        for ts, buf in reader:
            # The Ethernet header is only the type here: dpkt decodes from the IP header on.
            decoder = decoders.get(int.from_bytes(buf[12:14], "big")) if len(buf) > 14 else None
            if decoder is None:
                continue
            try:
                ev = self.packet(float(ts), decoder(buf[14:]), where)
            except (dpkt.UnpackError, struct.error, IndexError, ValueError):
                continue
            if ev:
                events.append(ev)
        return events

    def packet(self, ts: float, ip, where: str) -> Event | None:
        if isinstance(ip, dpkt.arp.ARP):
            text = "ARP %s %s" % ("who-has" if ip.op == 1 else "reply", ip_text(ip.tpa))
            return Event(ts, "wire", "%s: %s" % (where, text), "packet", label=text,
                         src="client", dst="", extra={"where": where})
        if not isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)):
            return None
        src, dst = ip_text(ip.src), ip_text(ip.dst)
        payload = ip.data
        if isinstance(ip, dpkt.ip.IP):
            total = ip.len - ip.hl * 4
        else:
            total = ip.plen
        names = " ".join(x for x in (netlab_name(src), netlab_name(dst)) if x)
        host = " (%s)" % " > ".join(filter(None, (netlab_name(src) or "?",
                                                  netlab_name(dst) or "?"))) if names else ""
        if isinstance(payload, dpkt.tcp.TCP):
            return self.tcp(ts, src, dst, payload, total - payload.off * 4, host)
        if isinstance(payload, dpkt.udp.UDP):
            a, b = self.sides("UDP", src, payload.sport, dst, payload.dport)
            length = payload.ulen - 8
            kind = ("broadcast" if dst.endswith(".255") else
                    "multicast" if dst.startswith(("22", "23", "ff")) and "." in dst or
                    dst.startswith("ff") else "")
            text = "%s > %s%s UDP %d bytes%s" % (hostport(src, payload.sport),
                                                 hostport(dst, payload.dport), host, length,
                                                 " (%s)" % kind if kind else "")
            label = "UDP %d bytes%s" % (length, " to %s" % hostport(dst, payload.dport)
                                        if kind else "")
            return Event(ts, "wire", text, "packet", label=label, src=a, dst=b,
                         flow=("UDP", src, payload.sport, dst, payload.dport))
        if isinstance(payload, (dpkt.icmp.ICMP, dpkt.icmp6.ICMP6)):
            return self.icmp(ts, src, dst, payload, host)
        if isinstance(ip, dpkt.ip.IP) and ip.p == 2:  # IGMP
            return self.igmp(ts, src, dst, bytes(payload) if not isinstance(payload, bytes)
                             else payload, host)
        return None

    def tcp(self, ts, src, dst, tcp, length, host) -> Event:
        flags = ",".join(name for bit, name in TCP_FLAGS if tcp.flags & bit)
        a, b = self.sides("TCP", src, tcp.sport, dst, tcp.dport)
        key = (src, tcp.sport, dst, tcp.dport)
        back = (dst, tcp.dport, src, tcp.sport)
        if tcp.flags & dpkt.tcp.TH_SYN or key not in self.isn:
            self.isn[key] = tcp.seq
        seq = (tcp.seq - self.isn[key]) % 2**32
        parts = ["seq=%d" % seq]
        if tcp.flags & dpkt.tcp.TH_ACK:
            parts.append("ack=%d" % ((tcp.ack - self.isn.get(back, tcp.ack - 1)) % 2**32))
        parts += ["win=%d" % tcp.win, "len=%d" % length]
        text = "%s > %s%s TCP %s %s" % (hostport(src, tcp.sport), hostport(dst, tcp.dport), host,
                                        flags, " ".join(parts))
        label = flags if length == 0 else "%s %d bytes" % (flags, length)
        only_data = not tcp.flags & (dpkt.tcp.TH_SYN | dpkt.tcp.TH_FIN | dpkt.tcp.TH_RST)
        flow = tuple(sorted([(src, tcp.sport), (dst, tcp.dport)]))
        return Event(ts, "wire", text, "packet", label=label, src=a, dst=b, flow=("TCP",) + flow,
                     data=only_data, extra={"flags": flags, "len": length})

    def icmp(self, ts, src, dst, icmp, host) -> Event:
        v6 = isinstance(icmp, dpkt.icmp6.ICMP6)
        if v6 and icmp.type in (130, 131, 132, 143):
            text, groups = "MLD %s" % {130: "query", 131: "report", 132: "done",
                                       143: "v2 report"}[icmp.type], []
            data = bytes(icmp.data)
            if icmp.type == 143 and len(data) >= 4:  # MLDv2: group records, as in IGMPv3
                at = 4
                for _ in range(struct.unpack("!H", data[2:4])[0]):
                    rtype, aux, nsrc = struct.unpack("!BBH", data[at:at + 4])
                    groups.append((IGMP3_RECORDS.get(rtype, "record %d" % rtype),
                                   ip_text(data[at + 4:at + 20])))
                    at += 20 + 16 * nsrc + 4 * aux
                text += ": " + ", ".join("%s %s" % g for g in groups)
            # The kernel's own groups (an address's solicited-node group) are noise here.
            own = bool(groups) and all(g.startswith("ff02::1:ff") for _, g in groups)
            return Event(ts, "wire", "%s > %s%s ICMPv6 %s" % (src, dst, host, text), "packet",
                         label=text, src="client", dst="", extra={"noise": own})
        if v6 and icmp.type in (133, 134, 135, 136):
            text = {133: "router solicitation", 134: "router advertisement",
                    135: "neighbour solicitation", 136: "neighbour advertisement"}[icmp.type]
            return Event(ts, "wire", "%s > %s%s ICMPv6 %s" % (src, dst, host, text), "packet",
                         label=text, src="client", dst="", extra={"noise": icmp.type < 135})
        unreachable = (icmp.type == 1) if v6 else (icmp.type == 3)
        what = ("port unreachable" if v6 and icmp.code == 4 else
                ICMP_UNREACH.get(icmp.code, "code %d" % icmp.code)) if unreachable else \
            "type %d code %d" % (icmp.type, icmp.code)
        about, a, b = "", "server", "client"
        try:
            inner = icmp.data.data
            inner = inner if isinstance(inner, (dpkt.ip.IP, dpkt.ip6.IP6)) else \
                (dpkt.ip6.IP6(inner) if v6 else dpkt.ip.IP(inner))
            if inner.p == 17 or getattr(inner, "nxt", 0) == 17:
                sport, dport = struct.unpack("!HH", bytes(inner.data)[:4])
                orig = (ip_text(inner.src), sport, ip_text(inner.dst), dport)
                about = " (for UDP %s > %s)" % (hostport(*orig[:2]), hostport(*orig[2:]))
                b, a = self.sides("UDP", *orig)
        except (dpkt.UnpackError, struct.error, AttributeError, TypeError):
            pass
        name = "ICMPv6" if v6 else "ICMP"
        text = "%s > %s%s %s %s%s" % (src, dst, host, name, what, about)
        return Event(ts, "wire", text, "packet", label="%s %s" % (name, what), src=a, dst=b)

    def igmp(self, ts, src, dst, data: bytes, host) -> Event:
        kind = data[0] if data else 0
        if kind == 0x22 and len(data) >= 8:  # IGMPv3 report: group records
            records, at, groups = struct.unpack("!H", data[6:8])[0], 8, []
            for _ in range(records):
                rtype, aux, nsrc = struct.unpack("!BBH", data[at:at + 4])
                groups.append("%s %s" % (IGMP3_RECORDS.get(rtype, "record %d" % rtype),
                                         ip_text(data[at + 4:at + 8])))
                at += 8 + 4 * nsrc + 4 * aux
            what = "IGMPv3 report: " + ", ".join(groups)
        elif kind in (0x12, 0x16) and len(data) >= 8:
            what = "IGMP report: join %s" % ip_text(data[4:8])
        elif kind == 0x17 and len(data) >= 8:
            what = "IGMP leave %s" % ip_text(data[4:8])
        elif kind == 0x11:
            what = "IGMP query"
        else:
            what = "IGMP type 0x%02x" % kind
        return Event(ts, "wire", "%s > %s%s %s" % (src, dst, host, what), "packet", label=what,
                     src="client", dst="")


# --------------------------------------------------------------------------- the whole

def collect(raw: Path, pcaps: list[tuple[Path, str]], steps: list[Event] = ()) -> \
        tuple[list[Event], dict]:
    """Every event of a capture in time order (with the steps typed), and the processes of
    each side."""
    owners: dict = {}
    processes: dict[str, list[int]] = {}
    files = []
    for path in sorted(raw.glob("strace.*.*.*"), key=lambda p: int(p.name.rsplit(".", 1)[1])):
        _, _, role, pid = path.name.rsplit(".", 3)
        processes.setdefault(role, []).append(int(pid))
        files.append((path, role, int(pid)))
    events = read_strace(files, owners)
    packets = Packets(owners)
    for pcap, where in pcaps:
        events += packets.read(pcap, where)
    events += steps
    events.sort(key=lambda e: e.time)
    for ev in events:
        if ev.pid and len(processes.get(ev.who, [])) > 1:
            ev.tag = "%s.%d" % (ev.who, ev.pid)
    return events, processes


def write_timeline(path: Path, events: list[Event], header: list[str]) -> None:
    start = events[0].time if events else 0.0
    with open(path, "w") as f:
        for line in header:
            f.write("# %s\n" % line if line else "#\n")
        f.write("#\n#     time  who            what\n")
        for ev in events:
            f.write("%10.6f  %-13s  %s\n" % (ev.time - start, ev.tag or ev.who, ev.text))
