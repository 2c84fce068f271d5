"""make trace: what its timelines and diagrams say, not only that it writes them.

Each test traces a session of its own (tests/trace/sessions/NN.md, in the handouts'
format, so that it does not depend on a handout's wording) with scripts/trace, then reads
timeline.txt and sequence.svg: the packets and the calls must come in the order the
handouts teach. The trace needs root (tcpdump in the session's network namespace) and
the Debian packages of scripts/install-deps --trace; without them the tests skip, saying
which. Every trace must leave no process, namespace or scratch file behind.
"""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
from session_player import parse, session_labs  # noqa: E402

BIN = Path(os.environ.get("LABS_BIN") or REPO / "build").resolve()
TRACE = REPO / "scripts" / "trace"
SESSIONS = REPO / "tests" / "trace" / "sessions"
SLOW = "sanitize" in str(BIN) or "tsan" in str(BIN)
TIMEOUT = float(os.environ.get("SESSION_TIMEOUT") or (30 if SLOW else 15))
LINE = re.compile(r"^\s*(\d+\.\d+)  (\S+)\s+(.*)$")


def missing_packages() -> list[str]:
    return [package for module, package in (("dpkt", "python3-dpkt"),
                                            ("matplotlib", "python3-matplotlib"))
            if importlib.util.find_spec(module) is None]


pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="make trace records packets with tcpdump in a "
                       "network namespace: needs root"),
    pytest.mark.skipif(bool(missing_packages()), reason="needs %s: scripts/install-deps --trace"
                       % " ".join(missing_packages())),
]


class Trace:
    """What scripts/trace wrote for one lab: the timeline's events and the diagram's texts."""

    def __init__(self, out: Path, lab: str, result: subprocess.CompletedProcess):
        self.dir = out / lab
        self.result = result
        self.text = (self.dir / "timeline.txt").read_text()
        self.events = []  # (time, who, what)
        for line in self.text.splitlines():
            m = LINE.match(line)
            if m and not line.startswith("#"):
                self.events.append((float(m.group(1)), m.group(2).split(".")[0], m.group(3)))

    def first(self, pattern: str, who: str | None = None, after: float = -1.0):
        """The time and text of the first event matching `pattern` (a regex) after `after`."""
        for time, by, what in self.events:
            if time > after and (who is None or by == who) and re.search(pattern, what):
                return time, what
        raise AssertionError("no %s event matching %r after %.6f in %s:\n%s" % (
            who or "", pattern, after, self.dir / "timeline.txt", self.text[-3000:]))

    def all(self, pattern: str, who: str | None = None):
        return [(t, w) for t, by, w in self.events
                if (who is None or by == who) and re.search(pattern, w)]

    def svg_texts(self) -> list[tuple[float, str]]:
        """The diagram's texts, top to bottom, with their heights."""
        root = ElementTree.parse(self.dir / "sequence.svg").getroot()
        texts = [(float(e.get("y")), "".join(e.itertext()))
                 for e in root.iter("{http://www.w3.org/2000/svg}text") if e.get("y")]
        return sorted(texts)

    def svg_y(self, pattern: str, nth: int = 0) -> float:
        found = [y for y, text in self.svg_texts() if re.search(pattern, text)]
        assert len(found) > nth, "the diagram has no text matching %r (%d found)" % (pattern,
                                                                                     len(found))
        return found[nth]


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def left_behind(raw: Path) -> list[str]:
    """The session's namespace, its scratch folder and its netlab hosts, if still there
    (raw/session.txt names them: other sessions may run on this machine meanwhile)."""
    made = dict(line.split(" ", 1) for line in (raw / "session.txt").read_text().splitlines())
    left = [n for n in namespaces() if n == made["namespace"] or
            (made["netlab"] and n.startswith(made["netlab"]))]
    return left + ([made["scratch"]] if os.path.exists(made["scratch"]) else [])


def traced_processes(out: Path) -> list[str]:
    """Processes still running whose command line names the trace's output folder."""
    left = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                cmd = Path("/proc/%s/cmdline" % entry).read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if str(out).encode() in cmd:
                left.append(cmd.decode(errors="replace"))
    return left


@pytest.fixture
def trace(tmp_path):
    """Runs scripts/trace on a session; afterwards checks that it left nothing behind."""
    out = tmp_path / "trace"
    traced = []

    def run(lab: str, session: Path | None = None, expect=(0,)) -> Trace:
        argv = [sys.executable, str(TRACE), "--quiet", "--bin", str(BIN), "--out", str(out),
                "--timeout", str(TIMEOUT)]
        argv += ["--session", str(session)] if session else []
        result = subprocess.run(argv + [lab], capture_output=True, text=True, timeout=300)
        assert result.returncode in expect, result.stdout + result.stderr
        name = next(d for d in session_labs() if d.startswith(lab))
        traced.append(out / name / "raw")
        for file in ("session.pcap", "timeline.txt", "sequence.svg", "sequence.png"):
            assert (out / name / file).stat().st_size > 0, file
        return Trace(out, name, result)

    yield run
    assert traced_processes(out) == []
    for raw in traced:
        assert left_behind(raw) == []


# ------------------------------------------------------------------------ what they say

@pytest.mark.lab03
def test_03_handshake_before_accept_and_fin_after_shutdown(trace):
    """Lab 03: the kernel completes a client's handshake (SYN, SYN-ACK, ACK), and the
    client's connect() returns, before the server calls accept() for it; each client's
    shutdown() is followed by its FIN; the diagram draws them in that order."""
    t = trace("03", SESSIONS / "03.md")
    accepts = t.all(r"^accept4?\(3\) = \d+ from 127\.0\.0\.1:(\d+)", "server")
    assert len(accepts) == 2, t.text
    for n, (accepted, what) in enumerate(accepts):
        port = re.search(r"from 127\.0\.0\.1:(\d+)", what).group(1)
        me = re.escape("127.0.0.1:%s" % port)
        syn, _ = t.first(r"^%s > 127\.0\.0\.1:9903 TCP SYN " % me, "wire")
        synack, _ = t.first(r"^127\.0\.0\.1:9903 > %s TCP SYN,ACK " % me, "wire", after=syn - 1e-9)
        ack, _ = t.first(r"^%s > 127\.0\.0\.1:9903 TCP ACK seq=1 ack=1 " % me, "wire",
                         after=synack - 1e-9)
        assert syn <= synack <= ack <= accepted, (n, syn, synack, ack, accepted)
    # The second client was queued while the server still served the first: its handshake,
    # and its connect()'s return, came before the server had even closed the first.
    second = re.search(r":(\d+)$", accepts[1][1]).group(1)
    second_ack, _ = t.first(r"^127\.0\.0\.1:%s > 127\.0\.0\.1:9903 TCP ACK seq=1 ack=1 " % second,
                            "wire")
    connected, _ = t.first(r"^connect\(3, 127\.0\.0\.1:9903\) = 0", "client",
                           after=second_ack - 1e-9)
    first_closed, _ = t.first(r"^close\(4\) = 0", "server")
    assert second_ack < connected < first_closed < accepts[1][0]
    # Each shutdown(SHUT_WR) is followed by that client's FIN, and no FIN came before it.
    for shut, _ in t.all(r"^shutdown\(3, SHUT_WR\) = 0", "client"):
        fin, what = t.first(r"^127\.0\.0\.1:\d+ > 127\.0\.0\.1:9903 TCP FIN", "wire", after=shut)
        port = what.split(" ")[0]
        assert not [x for x in t.all(r"^%s > .* FIN" % re.escape(port)) if x[0] < shut]
    # The diagram: the second handshake above the second accept's return, the FIN below
    # the shutdown.
    assert t.svg_y(r"^SYN$", 1) < t.svg_y(r"^SYN,ACK$", 1) < t.svg_y(
        r"accept4( returns |\(3\) )= 4 from 127\.0\.0\.1:%s" % second)
    assert t.svg_y(r"shutdown\(3, SHUT_WR\)") < t.svg_y(r"^FIN,ACK$")


@pytest.mark.lab01
def test_01_icmp_port_unreachable_then_econnrefused(trace):
    """Lab 01 to a closed port: the ICMP "port unreachable" comes back before the connected
    client's recv() fails with ECONNREFUSED; the plain client gets the same ICMP and no
    error (it times out)."""
    t = trace("01", SESSIONS / "01.md")
    icmps = t.all(r"ICMP port unreachable \(for UDP 127\.0\.0\.1:\d+ > 127\.0\.0\.1:9901\)")
    assert len(icmps) == 2, t.text
    sent, _ = t.first(r"^send\(3, \"knock\"\) = 5|^sendto\(3, \"knock\"\) = 5", "client")
    refused, _ = t.first(r"^recv(from)?\(3\) = -1 ECONNREFUSED", "client")
    assert sent < icmps[0][0] < refused
    assert len(t.all(r"ECONNREFUSED", "client")) == 1  # the plain client is not told
    sent_again, _ = t.first(r"^sendto\(3, \"knock\" to 127\.0\.0\.1:9901\) = 5", "client")
    assert sent_again < icmps[1][0]
    t.first(r"^poll\(3:IN, \d+ ms\) = 0", "client", after=icmps[1][0])  # and it timed out
    assert t.svg_y(r"^ICMP port unreachable$") < t.svg_y(r"ECONNREFUSED")


@pytest.mark.lab01
def test_01_through_the_relay_a_lost_datagram_never_reaches_the_server(trace):
    """Lab 01 through tools/impair (the session lab 01's handout can use): the relay's
    lifeline says "lost" for the third line; that datagram reached the relay and never
    went on to the server, and the client timed out."""
    t = trace("01", SESSIONS / "01-impair.md")
    arrived, _ = t.first(r'^127\.0\.0\.1:\d+ > 127\.0\.0\.1:9801 UDP 5 bytes$', "wire")
    lost, _ = t.first(r"^#5 127\.0\.0\.1:\d+ -> server: 5 bytes: lost$", "relay", after=arrived)
    timed_out, _ = t.first(r"^poll\(3:IN, 1000 ms\) = 0$", "client", after=lost)
    assert not [x for x in t.all(r"> 127\.0\.0\.1:9901 UDP 5 bytes$", "wire")
                if arrived < x[0] < timed_out]
    assert len(t.all(r"-> server: 3 bytes: forwarded$", "relay")) >= 2
    assert t.svg_y(r"^relay$") < t.svg_y(r"5 bytes: lost")


@pytest.mark.lab02
def test_02_through_the_relay_one_member_misses_a_message(trace):
    """Lab 02 with bob behind tools/impair: the server sends bob a copy of each of alice's
    three lines; the relay loses the second, and bob's client reads only two."""
    t = trace("02", SESSIONS / "02-impair.md")
    copies = t.all(r"^#[789] server -> 127\.0\.0\.1:\d+: 1[13] bytes: ", "relay")
    assert [c[1].rsplit(": ", 1)[1] for c in copies] == ["forwarded", "lost", "forwarded"], copies
    read = [w for _, w in t.all(r'^recv(from)?\(\d+\) = \d+ "alice: ', "client")]
    assert len(read) == 2 and "one" in read[0] and "three" in read[1], read


@pytest.mark.lab11
def test_11_igmp_report_follows_the_join(trace):
    """Lab 11: joining 239.0.0.10 (IP_ADD_MEMBERSHIP) sends an IGMP membership report, and
    leaving (IP_DROP_MEMBERSHIP) another one, to leave."""
    t = trace("11", SESSIONS / "11.md")
    joined, _ = t.first(r"^setsockopt\(3, IP_ADD_MEMBERSHIP, .*239\.0\.0\.10.*\) = 0", "client")
    report, what = t.first(r"IGMP.*report.*join 239\.0\.0\.10", "wire", after=joined)
    left, _ = t.first(r"^setsockopt\(3, IP_DROP_MEMBERSHIP, .*239\.0\.0\.10.*\) = 0", "client",
                      after=report)
    t.first(r"IGMP.*(leave 239\.0\.0\.10|report: leave 239\.0\.0\.10)", "wire", after=left)
    t.first(r"UDP 11 bytes \(multicast\)", "wire", after=report)
    assert t.svg_y(r"IP_ADD_MEMBERSHIP") < t.svg_y(r"join 239\.0\.0\.10")


@pytest.mark.lab10
@pytest.mark.netns
def test_10_broadcast_on_the_netlab_hosts(trace):
    """Lab 10 across the netlab hosts: the capture is taken on each host; a1's broadcast to
    10.99.1.255 is one packet, which a2 (subnet A) receives and b1 (subnet B) does not."""
    t = trace("10", SESSIONS / "10.md")
    sent, _ = t.first(r'^sendto\(3, "broadcast 1" to 10\.99\.1\.255:9910\) = 11', "server")
    packets = t.all(r"^10\.99\.1\.1:\d+ > 10\.99\.1\.255:9910 \(a1 > all of subnet A\) "
                    r"UDP 11 bytes \(broadcast\)$", "wire")
    assert len(packets) == 1 and packets[0][0] > sent, t.text
    received = t.all(r'^recvfrom\(3\) = 11 "broadcast 1"', "client")
    assert len(received) == 1 and received[0][0] > packets[0][0]
    t.first(r"^\w+\(3\S*( .*)?\) = -1 EINTR", "client")  # b1 heard nothing until ^C
    assert (t.dir / "raw" / "b1.pcap").exists() and (t.dir / "raw" / "a1.pcap").exists()


@pytest.mark.lab12
def test_12_sendmsg_carries_scm_rights(trace):
    """Lab 12: no packets; the client's sendmsg() carries the file's descriptor
    (SCM_RIGHTS) and the server's recvmsg() receives a descriptor of the same file."""
    t = trace("12", SESSIONS / "12.md")
    assert t.all(r".", "wire") == []
    sent, what = t.first(r"^sendmsg\(\d+, .*SCM_RIGHTS \[\d+ \S*note\.txt\]\) = 1", "client")
    got, _ = t.first(r"^recvmsg\(\d+, .*SCM_RIGHTS \[\d+ \S*note\.txt\]\) = 1", "server",
                     after=sent)
    assert t.svg_y(r"^sendmsg\(.*SCM_RIGHTS") < t.svg_y(r"^recvmsg\(.*SCM_RIGHTS|"
                                                         r"recvmsg returns .*SCM_RIGHTS")
    t.svg_y(r"in the kernel: 1 byte \+ a descriptor")


# ------------------------------------------------------------------------ the command

def test_bad_arguments_exit_2():
    """An unknown lab, or --session with other than one lab: exit 2, saying why."""
    for argv in (["99"], ["--session", str(SESSIONS / "03.md"), "03", "01"],
                 ["--session", str(SESSIONS / "03.md"), "--publish", "03"]):
        p = subprocess.run([sys.executable, str(TRACE), *argv], capture_output=True, text=True,
                           timeout=60)
        assert p.returncode == 2, p
        assert p.stderr.startswith("trace: "), p.stderr


@pytest.mark.lab03
def test_without_root_the_calls_are_traced_and_the_missing_packets_said(tmp_path):
    """As a user without root: the session plays in an unprivileged namespace, the calls
    are traced, and the timeline, the diagram and stderr say that the packets are missing
    and why."""
    if not shutil.which("runuser") or subprocess.run(
            ["runuser", "-u", "nobody", "--", "unshare", "--user", "--map-root-user", "--net",
             "true"], capture_output=True).returncode != 0:
        pytest.skip("no runuser, or no unprivileged user namespaces here")
    work = Path(tempfile.mkdtemp(prefix="trace-nobody-"))
    try:
        work.chmod(0o777)
        p = subprocess.run(["runuser", "-u", "nobody", "--", "env", "HOME=%s" % work,
                            "TMPDIR=%s" % work, sys.executable, str(TRACE), "--quiet", "--bin",
                            str(BIN), "--out", str(work / "out"), "--timeout", str(TIMEOUT),
                            "--session", str(SESSIONS / "03.md"), "03"],
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stdout + p.stderr
        timeline = (work / "out" / "03-tcp-echo" / "timeline.txt").read_text()
        assert "# no packets on lo: tcpdump: " in timeline
        assert "capturing packets needs root: sudo make trace" in p.stderr
        assert re.search(r"server +accept4\(3\) = 4 from 127\.0\.0\.1:\d+", timeline)
        assert " wire " not in timeline
        svg = (work / "out" / "03-tcp-echo" / "sequence.svg").read_text()
        assert "capturing packets needs root" in svg
        assert traced_processes(work) == []
    finally:
        shutil.rmtree(work, ignore_errors=True)


HANDOUTS = [lab for lab in session_labs() if parse(REPO / "labs" / lab / "README.md").blocks]


@pytest.mark.handout_trace
@pytest.mark.parametrize("lab", [pytest.param(lab, id=lab[:2],
                                              marks=getattr(pytest.mark, "lab" + lab[:2]))
                                 for lab in HANDOUTS])
def test_trace_of_the_handout(trace, lab):
    """make trace LAB=NN: the handout's own session plays under strace and tcpdump, and the
    timeline has the lab's programs' calls. Whether the session shows what the handout
    says is test_sessions.py's to check: a session that does not (status 1) must still be
    traced, and say so at the top of its timeline."""
    t = trace(lab[:2], expect=(0, 1))
    assert t.all(r".", "server") or t.all(r".", "client"), t.text
    if t.result.returncode == 1:
        assert "# the session did not play as written: " in t.text
