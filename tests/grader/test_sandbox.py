"""The sandbox of scripts/grading/sandbox.py, one property at a time: an unprivileged user
outside, a network of its own, a private /tmp, only what is bound visible and read-only,
limits on processes and memory, the report descriptor and the other programs out of a
student program's reach, test hosts in network namespaces inside, and nothing left when it
ends."""

import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from grading import sandbox  # noqa: E402
from grading.sandbox import Bind, Limits, Sandbox, drop_caps_argv  # noqa: E402

pytestmark = pytest.mark.skipif(sandbox.available() is not None,
                                reason="no sandbox here: %s" % sandbox.available())


@pytest.fixture
def box():
    with Sandbox("test", Limits(memory_mb=256, pids=64, tmp_mb=16)) as b:
        yield b
    assert not sandbox.processes_of_uids(b.uids)


def sh(box, script, binds=(), timeout=30, report=False, student=False):
    argv = ["/bin/sh", "-c", script]
    r = box.run(drop_caps_argv() + argv if student else argv, list(binds), timeout=timeout,
                report=report)
    return r, r.output.decode(errors="replace")


def test_uid_0_inside_is_an_unprivileged_uid_outside(box):
    r, out = sh(box, "id -u; cat /proc/self/uid_map")
    assert r.returncode == 0, out
    lines = out.split()
    assert lines[0] == "0"
    assert str(box.uids[0]) in lines and box.uids[0] >= sandbox.SLOT_BASE


def test_a_network_of_its_own(box):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    try:
        script = ("ip -o link | cut -d: -f2; exec 3<>/dev/tcp/127.0.0.1/%d 2>/dev/null "
                  "&& echo reached || echo refused; ip route get 1.1.1.1 2>&1 | head -1" % port)
        r, out = sh(box, "bash -c '%s'" % script)
        assert "lo" in out and "eth" not in out, out
        assert "refused" in out and "reached" not in out, out
        assert "unreachable" in out, out
    finally:
        listener.close()


@pytest.fixture
def open_dir():
    """A directory anyone may enter (pytest's own tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="sandbox-test-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_only_what_is_bound_is_visible_and_read_only(box, open_dir):
    shared = open_dir
    (shared / "f").write_text("grader's\n")
    os.chmod(shared / "f", 0o666)  # only the read-only bind keeps the sandbox out
    r, out = sh(box, "ls /; ls /work/main /root /home 2>&1; cat /g/f; echo x >/g/f; "
                     "echo y >/g/new; cat /g/f", [Bind(shared, "/g")])
    assert "grader's" in out
    assert "Read-only file system" in out or "Permission denied" in out, out
    assert (shared / "f").read_text() == "grader's\n" and not (shared / "new").exists()
    assert "No such file or directory" in out  # /work/main, /root, /home
    assert "work" not in out.split("\n")[:12]  # ls /


def test_a_private_tmp_each_time(box):
    sh(box, "echo secret >/tmp/left")
    r, out = sh(box, "cat /tmp/left 2>&1 || echo gone")
    assert "gone" in out


def test_processes_are_limited(box):
    r, out = sh(box, "i=0; while [ $i -lt 200 ]; do sleep 30 & i=$((i+1)); done 2>&1 | "
                     "tail -1; echo started; ps -e --no-headers | wc -l", timeout=60)
    count = int(out.strip().split("\n")[-1])
    assert count <= 64 + 2, out


def test_memory_is_limited(box):
    r, out = sh(box, "python3 -c 'b = bytearray(600 << 20); print(\"allocated\")'", timeout=60)
    assert "allocated" not in out and r.returncode != 0, (r.returncode, out)


STUDENT = """#!/bin/bash
for f in /proc/[0-9]*/fd/*; do echo forged >"$f"; done 2>/dev/null
echo forged >&"$GRADE_REPORT_FD" 2>/dev/null
echo tried
"""
GRADER = """#!/bin/bash
echo from-grader >&"$GRADE_REPORT_FD"
# As the harness starts a program: without the descriptor (close_fds), no capabilities.
( eval "exec $GRADE_REPORT_FD>&-"; exec %s /t/student )
echo done
"""


def test_a_student_program_cannot_reach_the_report_descriptor(box, open_dir):
    (open_dir / "student").write_text(STUDENT)
    (open_dir / "grader").write_text(GRADER % " ".join(drop_caps_argv()))
    for name in ("student", "grader"):
        os.chmod(open_dir / name, 0o755)
    r = box.run(["/t/grader"], [Bind(open_dir, "/t")], timeout=30, report=True)
    out = r.output.decode()
    assert "tried" in out and "done" in out, out
    assert r.report == b"from-grader\n"


PROBER = """#!/bin/sh
if (echo forged >"/proc/$1/fd/1") 2>/dev/null; then echo "$2: reached"; else echo "$2: refused"; fi
"""
TWO_PROGRAMS = """#!/bin/bash
# Two programs at once, as two tests running side by side start them.
mkfifo /tmp/out
/work/bin/x/holder >/tmp/out &
holder=$!
exec 3</tmp/out
read -r -t 10 line <&3 && echo "holder: $line"
/work/bin/x/prober "$holder" launcher
%s /work/build/x/prober "$holder" "capabilities dropped only"
read -r -t 10 line <&3 && echo "holder's output: $line"
kill "$holder"
"""


def landlock_abi() -> int:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    # landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION), x86-64's number
    return libc.syscall(444, None, ctypes.c_size_t(0), ctypes.c_uint32(1))


@pytest.mark.skipif(landlock_abi() < 1, reason="this kernel has no Landlock")
def test_student_programs_cannot_reach_each_other(box, open_dir):
    """Programs started as the grader starts them (launcher.c) cannot open each other's
    descriptors: one test's program cannot write into another's output. Dropping the
    capabilities alone would not do it (the second probe shows the threat is real)."""
    launcher = open_dir / "launcher"
    built = sandbox.build_launcher(launcher)  # as the grader builds it
    assert built.returncode == 0, built.stderr
    for sub in ("bin/x", "build/x"):
        (open_dir / sub).mkdir(parents=True)
        os.chmod(open_dir / sub, 0o755)
        os.chmod(open_dir / sub.split("/")[0], 0o755)
    (open_dir / "build/x/holder").write_text("#!/bin/sh\necho up\nexec sleep 30\n")
    (open_dir / "build/x/prober").write_text(PROBER)
    (open_dir / "grader").write_text(TWO_PROGRAMS % " ".join(drop_caps_argv()))
    for prog in ("holder", "prober"):
        shutil.copyfile(launcher, open_dir / "bin/x" / prog)
        os.chmod(open_dir / "bin/x" / prog, 0o755)
        os.chmod(open_dir / "build/x" / prog, 0o755)
    os.chmod(open_dir / "grader", 0o755)
    r = box.run(["/t/grader"], [Bind(open_dir, "/t"), Bind(open_dir / "bin", "/work/bin"),
                                Bind(open_dir / "build", "/work/build")], timeout=30)
    out = r.output.decode()
    assert "holder: up" in out, out
    assert "launcher: refused" in out, out
    assert "capabilities dropped only: reached" in out and "holder's output: forged" in out, out


def test_test_hosts_in_network_namespaces_inside(box):
    r, out = sh(box, "ip netns add h1 && ip netns exec h1 ip -o link && ip netns del h1 && echo ok")
    assert r.returncode == 0 and out.strip().endswith("ok"), out


def test_a_student_program_has_no_capabilities(box):
    r, out = sh(box, "grep -E '^Cap(Eff|Prm|Bnd)' /proc/self/status; ip link add d0 type dummy "
                     "2>&1; echo done", student=True)
    assert "CapEff:\t0000000000000000" in out and "CapBnd:\t0000000000000000" in out, out
    assert "Operation not permitted" in out


def test_everything_ends_with_the_sandbox(box):
    r, out = sh(box, "setsid sh -c 'sleep 600' </dev/null >/dev/null 2>&1 & "
                     "(trap '' TERM HUP; exec sleep 600) & echo up; sleep 600", timeout=2)
    assert r.timed_out and r.returncode is None
    assert not sandbox.processes_of_uids(box.uids)
    r, out = sh(box, "setsid sleep 600 </dev/null >/dev/null 2>&1 & echo bye")
    assert r.returncode == 0 and "bye" in out
    assert not sandbox.processes_of_uids(box.uids)


def test_sandboxes_never_share_their_users():
    slots = [sandbox.Slot() for _ in range(5)]
    try:
        assert len({s.number for s in slots}) == 5
        assert len({s.uid for s in slots} | {s.other_uid for s in slots}) == 10
    finally:
        for s in slots:
            s.release()
    again = sandbox.Slot()
    again.release()
