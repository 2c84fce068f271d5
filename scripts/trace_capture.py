"""make trace, the capture: plays a session (scripts/session_player.py) while tcpdump records
the packets and strace the lab programs' system calls.

- Packets: tcpdump on the loopback of the session's own network namespace, so only this
  session's packets are in it; when the session brings up the netlab hosts (labs 10, 11),
  also on each host's eth0, outgoing packets only (-Q out), so each packet is recorded
  once, where it leaves its sender.
- Calls: each lab program runs under `strace -DD -ff -ttt -T -y` (one file per process,
  wall-clock times, each call's duration, descriptors named; -DD keeps the program the
  shell's own child), limited to the calls that matter to sockets (CALLS). Not -yy:
  asking the kernel for each socket's addresses at every call takes milliseconds, and
  would put the calls out of step with the packets. The datagram relay (tools/impair) is
  traced only for its addresses and its log lines, so that its decisions show on its
  lifeline.

tcpdump and strace both stamp events with the same wall clock, so they merge by time.
Everything the capture starts ends with the session; the raw files stay in raw_dir.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from session_player import Namespace, Player, Step
from trace_events import Event

CALLS = ("socket,socketpair,bind,listen,accept,accept4,connect,shutdown,close,setsockopt,"
         "read,write,readv,writev,recvfrom,sendto,recvmsg,sendmsg,recvmmsg,sendmmsg,"
         "select,pselect6,poll,ppoll,epoll_create1,epoll_ctl,epoll_wait,epoll_pwait,epoll_pwait2")
RELAY_CALLS = "socket,bind,getsockname,write"  # its addresses, and its log lines
SNAPLEN = 256          # bytes kept of each packet: every header, and the payload's start
NETLAB_HOSTS = ("a1", "a2", "a3", "b1", "b2")
LISTENING_WITHIN = 10.0  # seconds tcpdump may take to say it listens (a loaded machine)
QUIET, LINGER = 0.3, 2.0  # after the session: stop once no packet came for QUIET seconds


def role_of(prog: Path) -> str | None:
    """'server' or 'client' for a lab program, 'relay' for the impairment relay."""
    if prog.parent.name == "tools":
        return "relay" if prog.name == "impair" else None
    if prog.parent.name[:2].isdigit() and prog.name in ("server", "client"):
        return prog.name
    return None


class Capture:
    """One session played with its packets and calls recorded into raw_dir."""

    def __init__(self, raw_dir: Path, bin_dir: Path, timeout: float, narrate: bool = False,
                 out=None):
        self.raw = raw_dir
        self.bin_dir = bin_dir
        self.timeout = timeout
        self.narrate = narrate
        self.out = out
        self.dumps: list[tuple[subprocess.Popen, Path, str]] = []  # tcpdump, its pcap, where
        self.missing: list[str] = []  # what could not be recorded, and why
        self.steps: list[Event] = []  # what was typed, and when
        self.netlab_prefix = ""
        self.netlab_captured = False
        self.strace = shutil.which("strace")
        self.tcpdump = shutil.which("tcpdump")

    # -- the calls

    def wrap(self, prog: Path):
        role = role_of(prog)
        if role is None or not self.strace:
            return None
        calls, length = (RELAY_CALLS, 120) if role == "relay" else (CALLS, 32)
        # LeakSanitizer stops the world with ptrace, which strace already holds.
        asan = (os.environ.get("ASAN_OPTIONS", "") + ":detect_leaks=0").lstrip(":")
        return ["env", "ASAN_OPTIONS=" + asan, self.strace, "-DD", "-ff", "-ttt", "-T", "-y", "-qq",
                "-s", str(length), "-e", "trace=" + calls,
                "-o", str(self.raw / ("strace.%s.%s" % (prog.parent.name, role)))]

    # -- the packets

    def _tcpdump(self, prefix: list[str], iface: str, name: str, outgoing_only: bool):
        pcap = self.raw / ("%s.pcap" % name)
        err = self.raw / ("tcpdump.%s.err" % name)
        argv = prefix + [self.tcpdump, "-i", iface] + (["-Q", "out"] if outgoing_only else []) + \
            ["-n", "-U", "--immediate-mode", "-Z", "root", "-s", str(SNAPLEN), "-w", str(pcap)]
        with open(err, "wb") as errors:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=errors, start_new_session=True)
        deadline = time.monotonic() + LISTENING_WITHIN
        while b"listening on" not in err.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                self._stop(proc)
                why = err.read_bytes().decode(errors="replace").strip().splitlines()
                why = why[-1].removeprefix("tcpdump: ") if why else \
                    "did not start within %.0fs" % LISTENING_WITHIN
                self.missing.append("no packets on %s: tcpdump: %s" % (name, why))
                return
            time.sleep(0.01)
        self.dumps.append((proc, pcap, name))

    def on_namespace(self, namespace: Namespace):
        if not self.tcpdump:
            self.missing.append("no packets: tcpdump is not installed (scripts/install-deps)")
            return
        self._tcpdump(namespace.prefix, "lo", "lo", outgoing_only=False)
        if not self.dumps and os.geteuid() != 0:  # it insists on giving up a root it lacks
            self.missing[-1] += " (capturing packets needs root: sudo make trace)"

    def on_step(self, step: Step):
        """Each step typed is an event too; once the session's netlab hosts are up, each
        host's eth0 is recorded as well."""
        if step.kind in ("command", "type", "key"):
            typed = {"command": "$ ", "type": "> ", "key": ""}[step.kind] + step.text
            self.steps.append(Event(time.time(), "typed", "terminal %d: %s" % (
                step.terminal, typed), "step", label="terminal %d: %s" % (step.terminal, typed)))
        if self.netlab_captured or not self.tcpdump or not self.netlab_prefix:
            return
        last = self.netlab_prefix + NETLAB_HOSTS[-1]
        if not os.path.exists("/run/netns/" + last):
            return
        link = subprocess.run(["ip", "-n", last, "-brief", "link", "show", "eth0"],
                              capture_output=True, text=True)
        if " UP " not in link.stdout + " ":
            return  # netlab up is still building it
        self.netlab_captured = True
        for host in NETLAB_HOSTS:
            self._tcpdump(["ip", "netns", "exec", self.netlab_prefix + host], "eth0", host,
                          outgoing_only=True)

    @staticmethod
    def _stop(proc: subprocess.Popen):
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # tcpdump writes what it holds, then exits
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def on_close(self, namespace: Namespace):
        """The kernel still sends a little after the last step (a group's leave report, a
        last ACK): the capture goes on until the captures have been quiet for QUIET."""
        deadline = time.monotonic() + LINGER
        sizes = None
        while time.monotonic() < deadline:
            now = [pcap.stat().st_size if pcap.exists() else 0 for _, pcap, _ in self.dumps]
            if now == sizes:
                break
            sizes = now
            time.sleep(QUIET)
        for proc, _, _ in self.dumps:
            self._stop(proc)

    # -- the whole

    def play(self, session: Path, title: str = "Run it by hand") -> None:
        """Plays the session; raises SessionError or SessionSkipped as Player.play does."""
        if self.raw.exists():
            shutil.rmtree(self.raw)
        self.raw.mkdir(parents=True)
        if not self.strace:
            self.missing.append("no system calls: strace is not installed (scripts/install-deps)")
        player = Player(self.bin_dir, timeout=self.timeout, narrate=self.narrate,
                        wrap=self.wrap, out=self.out, on_namespace=self._started,
                        on_step=self.on_step, on_close=self.on_close)
        self._player = player
        try:
            player.play(session, title)
        finally:
            for proc, _, _ in self.dumps:  # already stopped, unless the namespace failed
                self._stop(proc)

    def _started(self, namespace: Namespace):
        self.netlab_prefix = self._player.netlab_prefix
        # Where the session runs, for whoever checks that it is all gone afterwards.
        (self.raw / "session.txt").write_text("namespace %s\nscratch %s\nnetlab %s\n" % (
            namespace.name, self._player.work, self.netlab_prefix))
        self.on_namespace(namespace)

    def pcaps(self) -> list[tuple[Path, str]]:
        return [(pcap, name) for _, pcap, name in self.dumps if pcap.exists()]
