"""One sandbox per submission, built with bubblewrap (Debian package bubblewrap).

What a program inside sees and may do:

- its own user namespace: uid 0 inside is an unprivileged uid outside, chosen for this
  sandbox alone (SLOT_BASE + 2 * slot); uid 65534 inside is the next one, so that a test
  may act as "another user". Nothing inside is root on the machine.
- its own network (a private loopback: no network, and no port shared with anyone), PID,
  IPC, UTS and cgroup namespaces; a new session, and --die-with-parent.
- a filesystem of read-only binds (/usr, a few files of /etc, the grader's tree, the
  submission's sources and build) and private tmpfs mounts for /tmp and /run. Nothing
  else of the machine, and no other submission, is visible.
- limits: a cgroup per sandbox (memory, pids, CPU) where the machine lets us make one,
  and rlimits (address space, processes, CPU seconds, file size, no core files) always.

The grader's own processes inside (pytest, scripts/netlab) keep a few capabilities that
count only inside the sandbox's namespaces (CAP_NET_ADMIN and CAP_SYS_ADMIN for test
hosts in network namespaces, CAP_SYS_PTRACE to count a program's descriptors...). Student
programs are started through launcher.c (make and the compiler through drop_caps_argv()):
no capabilities at all, no_new_privs.
Without capabilities they cannot open /proc/PID/fd or /proc/PID/mem of the processes
that hold them, so the report descriptor the grader hands to pytest stays out of reach;
and the launcher's Landlock domain (one per program) keeps them out of each other's.

Everything a sandbox started ends with it: when the sandbox's first process exits, or
the grader stops it at its time limit, the kernel kills every process of the PID
namespace, and the network namespaces and mounts made inside go with it. The grader then
checks the cgroup (or, without one, /proc for the sandbox's uids) and kills anything
left, so nothing survives even a sandbox that was killed half-way.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

BWRAP = "/usr/bin/bwrap"
SLOT_BASE = 1_700_000_000  # host uids SLOT_BASE .. SLOT_BASE + 2 * SLOTS: unused by Debian
SLOTS = 4096
LOCK_DIR = Path("/run/lock")
CGROUP_ROOT = Path("/sys/fs/cgroup")
STUDENT_CAPS = ["CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_SYS_PTRACE", "CAP_SETUID",
                "CAP_SETGID", "CAP_SETPCAP", "CAP_KILL", "CAP_DAC_OVERRIDE", "CAP_FOWNER",
                "CAP_CHOWN"]
ETC_FILES = ["alternatives", "ld.so.cache", "ld.so.conf", "ld.so.conf.d",
             "services", "protocols", "localtime", "iproute2", "gai.conf", "host.conf"]
PASSWD = "root:x:0:0:grader:/tmp:/bin/sh\nnobody:x:65534:65534:another user:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nnogroup:x:65534:\n"
HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
# No DNS inside: an unknown name fails at once as unknown (EAI_NONAME), as it would offline.
NSSWITCH = "passwd: files\ngroup: files\nhosts: files\nnetworks: files\nservices: files\nprotocols: files\n"
OUTPUT_LIMIT = 512 * 1024  # bytes of a sandbox's stdout+stderr kept (the tail)


class SandboxError(Exception):
    """The sandbox itself could not be set up (not the submission's fault)."""


def available() -> str | None:
    """None when sandboxes can be made here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "needs root (to map the sandbox's users and make its cgroup)"
    if not os.access(BWRAP, os.X_OK):
        return "needs bubblewrap (apt-get install bubblewrap, or scripts/install-deps)"
    return None


def drop_caps_argv() -> list[str]:
    """The prefix that starts a student program: no capabilities, no way to gain any."""
    return ["/usr/bin/setpriv", "--inh-caps=-all", "--ambient-caps=-all",
            "--bounding-set=-all", "--no-new-privs", "--"]


def build_launcher(out: Path) -> subprocess.CompletedProcess:
    """Compiles launcher.c (the starter of every student program, beside this file) to
    `out`; no student input goes into it."""
    return subprocess.run(["g++", "-x", "c", "-O1", "-o", str(out),
                           str(Path(__file__).with_name("launcher.c"))],
                          capture_output=True, text=True, timeout=120)


@dataclass
class Limits:
    memory_mb: int = 2048       # the whole sandbox (cgroup)
    pids: int = 1024            # processes and threads
    cpus: float = 1.0           # CPU share (cgroup quota)
    cpu_seconds: int = 600      # per process (RLIMIT_CPU)
    file_mb: int = 512          # largest file a process may write (RLIMIT_FSIZE)
    tmp_mb: int = 256           # size of the private /tmp


@dataclass
class Result:
    returncode: int | None      # None: stopped at its time limit
    output: bytes               # the tail of its stdout and stderr
    report: bytes               # what the command wrote on the report descriptor
    seconds: float
    timed_out: bool
    leftovers: int              # processes found and killed after it ended (should be 0)


@dataclass
class Bind:
    source: Path
    dest: str
    writable: bool = False


# --------------------------------------------------------------------- uid slots

_stale_checked = False
_slot_lock = threading.Lock()
_slots_in_use: set[int] = set()
_slot_fd = -1


class Slot:
    """A pair of host uids for one sandbox, held while the sandbox lives, so that two
    sandboxes (of one grader or of two) never share them: a byte-range lock on one lock
    file per machine (/run/lock/labs-grade-slots, never removed: locks end with the
    process that held them, whatever happens to it)."""

    def __init__(self):
        global _slot_fd
        with _slot_lock:
            if _slot_fd < 0:  # kept open: closing any descriptor of it drops our locks
                LOCK_DIR.mkdir(parents=True, exist_ok=True)
                _slot_fd = os.open(LOCK_DIR / "labs-grade-slots", os.O_RDWR | os.O_CREAT, 0o600)
            start = (os.getpid() * 7) % SLOTS
            for k in range(SLOTS):
                n = (start + k) % SLOTS
                if n in _slots_in_use:
                    continue
                try:
                    fcntl.lockf(_slot_fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, n)
                except OSError:
                    continue
                _slots_in_use.add(n)
                self.number = n
                self.uid = SLOT_BASE + 2 * n
                self.other_uid = self.uid + 1
                return
        raise SandboxError("no free sandbox slot")

    def release(self):
        with _slot_lock:
            if self.number in _slots_in_use:
                fcntl.lockf(_slot_fd, fcntl.LOCK_UN, 1, self.number)
                _slots_in_use.discard(self.number)


# ------------------------------------------------------------------------ cgroups

def _own_cgroups() -> dict[str, str]:
    """controller -> this process's cgroup path, from /proc/self/cgroup."""
    found = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for c in controllers.split(",") if controllers else ["unified"]:
                found[c] = path
    return found


class Cgroup:
    """A cgroup of our own below the grader's, with the sandbox's limits: cgroup v1 (one
    directory per controller) or v2. `dirs` is empty where none can be made: the rlimits
    then are the only limits, and /proc the way to find what is left."""

    def __init__(self, name: str, limits: Limits):
        self.dirs: list[Path] = []
        own = _own_cgroups()
        v2 = (CGROUP_ROOT / "cgroup.controllers").exists()
        try:
            if v2:
                d = CGROUP_ROOT / own.get("unified", "/").lstrip("/") / name
                self._make(d)
                self._write(d / "memory.max", str(limits.memory_mb << 20))
                self._write(d / "memory.swap.max", "0", required=False)
                self._write(d / "pids.max", str(limits.pids))
                self._write(d / "cpu.max", "%d 100000" % int(limits.cpus * 100000))
            else:
                for controller, settings in (
                        ("memory", {"memory.limit_in_bytes": str(limits.memory_mb << 20),
                                    "memory.memsw.limit_in_bytes": str(limits.memory_mb << 20)}),
                        ("pids", {"pids.max": str(limits.pids)}),
                        ("cpu", {"cpu.cfs_period_us": "100000",
                                 "cpu.cfs_quota_us": str(int(limits.cpus * 100000))})):
                    base = CGROUP_ROOT / controller
                    if not base.is_dir() or controller not in own:
                        continue
                    d = base / own[controller].lstrip("/") / name
                    self._make(d)
                    for key, value in settings.items():
                        self._write(d / key, value, required=not key.startswith("memory.memsw"))
        except OSError:
            self.remove()
            self.dirs = []

    def _make(self, d: Path):
        remove_stale_cgroups(d.parent)
        d.mkdir()
        self.dirs.append(d)

    @staticmethod
    def _write(path: Path, value: str, required=True):
        try:
            path.write_text(value)
        except OSError:
            if required:
                raise

    @property
    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs]

    def pids(self, zombies=False) -> set[int]:
        """Live processes in the cgroup (zombies run nothing: left out unless asked for)."""
        found = set()
        for d in self.dirs:
            try:
                found |= {int(x) for x in (d / "cgroup.procs").read_text().split()}
            except OSError:
                pass
        return found if zombies else {pid for pid in found if _state(pid) not in (None, "Z", "X")}

    def remove(self):
        """Removes the cgroup once every process in it has ended (a fork bomb's thousand
        processes take a moment to die on a busy machine)."""
        deadline = time.monotonic() + 60
        for d in reversed(self.dirs):
            while True:
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        break
                    for pid in self.pids(zombies=True):
                        _kill(pid)
                    time.sleep(0.05)


def remove_stale_cgroups(parent: Path | None = None):
    """Cgroups of graders that died before removing theirs (labs-grade-SLOT-PID, PID gone):
    whatever ran in them has ended; an empty cgroup is all that is left. Under `parent`,
    or anywhere in the cgroup tree."""
    try:
        names = ([p for p in parent.iterdir() if p.name.startswith("labs-grade-")] if parent
                 else list(CGROUP_ROOT.glob("*/**/labs-grade-*")))
    except OSError:
        return
    for d in names:
        pid = d.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not os.path.exists("/proc/%s" % pid):
            try:
                d.rmdir()
            except OSError:
                pass


def _state(pid: int) -> str | None:
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _kill(pid: int):
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def temp_dir(kind: str) -> Path:
    """A folder of the grader's in /tmp, named after the process that owns it, so that a
    grader killed before its cleanup leaves nothing for long: the next one removes it."""
    import tempfile
    return Path(tempfile.mkdtemp(prefix="labs-grade-%s-%d-" % (kind, os.getpid())))


def remove_stale_temp_dirs():
    import tempfile
    for d in Path(tempfile.gettempdir()).glob("labs-grade-*-*-*"):
        pid = d.name.split("-")[3] if len(d.name.split("-")) > 4 else ""
        if pid.isdigit() and int(pid) != os.getpid() and not os.path.exists("/proc/%s" % pid):
            shutil.rmtree(d, ignore_errors=True)


def become_subreaper():
    """Orphans of our children come to us, not to the machine's init: bubblewrap's
    outer process exits without waiting for the sandbox's first process, whose zombie
    (still holding the sandbox's user namespace) we then reap ourselves."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def reap_orphans(uids):
    """Reaps zombies that are our children by adoption and ran as one of `uids` (never a
    child that subprocess waits for: those run as root)."""
    wanted = {str(u) for u in uids}
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/status" % entry) as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        uid = fields.get("Uid", "").split()
        if fields.get("State", "").split()[:1] == ["Z"] and uid and uid[0] in wanted and \
                fields.get("PPid", "").strip() == str(me):
            try:
                os.waitpid(int(entry), os.WNOHANG)
            except ChildProcessError:
                pass


def processes_of_uids(uids) -> list[int]:
    """Live processes whose real or effective uid is one of `uids` (the kernel's record,
    which a program cannot change without privileges it does not have)."""
    found = []
    wanted = {str(u) for u in uids}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/status" % entry) as f:
                for line in f:
                    if line.startswith("State:") and line.split()[1] in ("Z", "X"):
                        break  # a zombie runs nothing (and its parent reaps it)
                    if line.startswith("Uid:"):
                        real, effective = line.split()[1:3]
                        if real in wanted or effective in wanted:
                            found.append(int(entry))
                        break
        except OSError:
            continue
    return found


# ----------------------------------------------------------------------- sandbox

class Sandbox:
    """Runs commands for one submission, each in a fresh set of namespaces."""

    def __init__(self, name: str, limits: Limits | None = None, etc_dir: Path | None = None):
        reason = available()
        if reason:
            raise SandboxError(reason)
        self.limits = limits or Limits()
        become_subreaper()
        global _stale_checked
        if not _stale_checked:
            _stale_checked = True
            remove_stale_cgroups()
            remove_stale_temp_dirs()
        self.slot = Slot()
        self.name = "labs-grade-%d-%d" % (self.slot.number, os.getpid())
        self.cgroup = Cgroup(self.name, self.limits)
        self._etc = Path(etc_dir) if etc_dir else None
        self._own_etc = None
        if self._etc is None:
            self._own_etc = temp_dir("etc")
            os.chmod(self._own_etc, 0o755)
            for fname, text in (("passwd", PASSWD), ("group", GROUP), ("hosts", HOSTS),
                                ("nsswitch.conf", NSSWITCH)):
                (self._own_etc / fname).write_text(text)
                os.chmod(self._own_etc / fname, 0o644)
            self._etc = self._own_etc

    @property
    def uids(self) -> tuple[int, int]:
        return self.slot.uid, self.slot.other_uid

    def chown_writable(self, path: Path):
        """Makes `path` (a directory tree) the sandbox's own: writable inside only."""
        for root, dirs, files in os.walk(path):
            os.lchown(root, self.slot.uid, self.slot.uid)
            for name in files + dirs:
                os.lchown(os.path.join(root, name), self.slot.uid, self.slot.uid)

    def close(self):
        self.kill_all()
        self.cgroup.remove()
        self.slot.release()
        if self._own_etc:
            shutil.rmtree(self._own_etc, ignore_errors=True)
            self._own_etc = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def kill_all(self) -> int:
        """Kills whatever still runs as this sandbox (there should be nothing); returns how
        many processes it found."""
        seen = set()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            reap_orphans(self.uids)
            left = self.cgroup.pids() | set(processes_of_uids(self.uids))
            left.discard(os.getpid())
            if not left:
                break
            seen |= left
            for pid in left:
                _kill(pid)
            time.sleep(0.02)
        reap_orphans(self.uids)
        return len(seen)

    # -- one command

    def bwrap_argv(self, binds: list[Bind], env: dict[str, str], info_fd: int, block_fd: int,
                   cwd: str = "/") -> list[str]:
        a = [BWRAP, "--unshare-user", "--userns-block-fd", str(block_fd),
             "--info-fd", str(info_fd), "--uid", "0", "--gid", "0",
             "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
             "--unshare-cgroup-try", "--hostname", "sandbox", "--die-with-parent",
             "--new-session", "--clearenv"]
        for key, value in env.items():
            a += ["--setenv", key, value]
        a += ["--ro-bind", "/usr", "/usr"]
        for link in ("bin", "lib", "lib64", "sbin"):
            target = os.readlink("/" + link) if os.path.islink("/" + link) else None
            if target:
                a += ["--symlink", target, "/" + link]
            elif os.path.isdir("/" + link):
                a += ["--ro-bind", "/" + link, "/" + link]
        for name in ETC_FILES:
            if os.path.exists("/etc/" + name):
                a += ["--ro-bind", "/etc/" + name, "/etc/" + name]
        for name in ("passwd", "group", "hosts", "nsswitch.conf"):
            a += ["--ro-bind", str(self._etc / name), "/etc/" + name]
        a += ["--proc", "/proc", "--dev", "/dev",
              "--size", str(self.limits.tmp_mb << 20), "--perms", "1777", "--tmpfs", "/tmp",
              "--tmpfs", "/run",
              # ip netns exec mounts a sysfs of its own: the kernel lets a user namespace
              # do that only while another sysfs is fully visible, hence the second bind.
              "--ro-bind", "/sys", "/sys", "--ro-bind", "/sys", "/run/.sysfs"]
        for b in binds:
            a += ["--bind" if b.writable else "--ro-bind", str(b.source), b.dest]
        for cap in STUDENT_CAPS:
            a += ["--cap-add", cap]
        a += ["--chdir", cwd]
        return a

    def run(self, command: list[str], binds: list[Bind], env: dict[str, str] | None = None,
            timeout: float = 60.0, cwd: str = "/", report: bool = False) -> Result:
        """Runs `command` in a fresh sandbox; stops it at `timeout` seconds. With
        report=True the command gets a descriptor, $GRADE_REPORT_FD, whose contents come
        back in Result.report: the only channel from inside that the grader believes."""
        env = dict(env or {})
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        env.setdefault("HOME", "/tmp")
        env.setdefault("LANG", "C.UTF-8")
        block_r, block_w = os.pipe()
        info_r, info_w = os.pipe()
        out_r, out_w = os.pipe()
        rep_r, rep_w = os.pipe() if report else (-1, -1)
        keep = [block_r, info_w] + ([rep_w] if report else [])
        if report:
            env["GRADE_REPORT_FD"] = str(rep_w)
        lim = self.limits
        argv = (["/bin/sh", "-c",
                 'while [ "$1" != -- ]; do echo $$ >"$1" || exit 125; shift; done; shift; '
                 'exec "$@"', "sh", *self.cgroup.procs_files, "--",
                 "/usr/bin/prlimit", "--as=%s" % self._address_space(),
                 "--nproc=%d" % lim.pids, "--cpu=%d" % lim.cpu_seconds,
                 "--fsize=%d" % (lim.file_mb << 20), "--core=0", "--nofile=4096", "--",
                 "/usr/bin/setpriv", "--reuid=%d" % self.slot.uid, "--regid=%d" % self.slot.uid,
                 "--clear-groups", "--"]
                + self.bwrap_argv(binds, env, info_w, block_r, cwd) + ["--"] + command)
        began = time.monotonic()
        output = bytearray()
        report_data = bytearray()
        readers = []
        proc = None
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out_w, stderr=out_w,
                                    pass_fds=keep, env={"PATH": "/usr/bin:/bin"},
                                    start_new_session=True)
            os.close(out_w), os.close(block_r), os.close(info_w)
            out_w = block_r = info_w = -1
            if report:
                os.close(rep_w)
                rep_w = -1
            readers.append(_drain(out_r, output, OUTPUT_LIMIT))
            if report:
                readers.append(_drain(rep_r, report_data, 64 << 20))
            child = self._child_pid(info_r, proc, began + 30)
            self._map_users(child)
            os.write(block_w, b"1")
            os.close(block_w)
            block_w = -1
            try:
                returncode = proc.wait(max(0.1, timeout - (time.monotonic() - began)))
                timed_out = False
            except subprocess.TimeoutExpired:
                returncode, timed_out = None, True
        finally:
            if proc is not None and proc.poll() is None:
                _kill(proc.pid)  # bwrap; --die-with-parent takes its namespace down
                proc.wait()
            leftovers = self.kill_all()
            for fd in (out_w, block_r, info_w, block_w, info_r, rep_w):
                if fd >= 0:
                    os.close(fd)
            for t in readers:
                t.join(10)
        if returncode is not None and returncode < 0:
            returncode = 128 - returncode
        return Result(returncode, bytes(output), bytes(report_data),
                      round(time.monotonic() - began, 2), timed_out, leftovers)

    def _address_space(self) -> str:
        """RLIMIT_AS, a stand-in for the cgroup's memory limit where there is none. Loose:
        address space is not memory (a thread reserves its stack, glibc an arena), so a
        tight one would stop threaded programs that use little."""
        if any("memory" in str(d) for d in self.cgroup.dirs) or \
                any((d / "memory.max").exists() for d in self.cgroup.dirs):
            return "unlimited"
        return str(max(self.limits.memory_mb << 22, 8 << 30))

    @staticmethod
    def _child_pid(info_r: int, proc, deadline: float) -> int:
        data = b""
        while b"}" not in data:
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None and not select.select([info_r], [], [], 0)[0]:
                raise SandboxError("bubblewrap did not start (exit %s)" % proc.poll())
            ready, _, _ = select.select([info_r], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(info_r, 4096)
                if not chunk:
                    raise SandboxError("bubblewrap did not start (exit %s)" % proc.wait())
                data += chunk
        return int(json.loads(data)["child-pid"])

    def _map_users(self, pid: int):
        uid, other = self.slot.uid, self.slot.other_uid
        for kind in ("uid_map", "gid_map"):
            with open("/proc/%d/%s" % (pid, kind), "w") as f:
                f.write("0 %d 1\n65534 %d 1\n" % (uid, other))


def _drain(fd: int, into: bytearray, limit: int) -> threading.Thread:
    """Reads `fd` to its end in a thread, keeping the last `limit` bytes; closes it."""
    def run():
        try:
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                into.extend(chunk)
                if len(into) > limit:
                    del into[:len(into) - limit]
        finally:
            os.close(fd)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t
