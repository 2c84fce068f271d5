"""Lab 05: TCP echo server, one thread per connection, at most --max-clients at once, and
a client with two threads (a writer and a reader).

What every echo server promises is tested by the echo contract (echo_contract.py); here,
what this lab adds: a thread per client, detached and gone as soon as its client leaves;
the "server busy" reply at --max-clients; the idle timeout; the stop signals taken by the
main thread only; and the client's two threads.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import (STOP_WITHIN, connect, cpu_seconds, exchange, open_fds, read_to_end,
                      recv_exactly, sanitized, thread_count, wait_until)
from echo_contract import EchoLab, echo_contract, nofile
from faults import (BUSY, MIB, STREAM_FAULTS, echoes, fault_name, more_clients_than_the_limit,
                    stuff_without_reading, survive)

pytestmark = pytest.mark.threads

LAB = EchoLab(
    concurrent=50,
    idle_timeout=True,
    logs={"connected": r"^client PEER connected: thread \d+$", "bytes": r"^from PEER: \d+ bytes$",
          "left": r"^client PEER left after \d+ bytes$",
          "reset": r"^client PEER (left after \d+ bytes|dropped: Connection reset by peer)$"},
    help_mentions={"server": [b"--max-clients", b"--idle-timeout"], "client": [b"--timeout"]},
    bad_arguments=[
        ("server", ["--max-clients", "0"]), ("server", ["--max-clients", "many"]),
        ("server", ["--max-clients", "5000"]), ("server", ["--port", "65536"]),
        ("server", ["--frobnicate"]), ("server", ["--host", "1.2.3.4.5"]),
        ("server", ["--idle-timeout", "0"]), ("server", ["--idle-timeout", "soon"]),
        ("client", ["--max-clients", "3"], "unknown option"),
        ("client", ["--timeout", "0"]), ("client", ["--timeout", "-1"]),
    ],
)
globals().update(echo_contract(LAB))


def workers(pid: int, name: str = "worker") -> int:
    """The program's threads called `name`: the server names its workers "worker", the
    client its writer "writer" (sanitizers add threads of their own, so the total alone
    says less)."""
    return len(named_threads(pid, name))


def named_threads(pid: int, name: str) -> list[int]:
    found = []
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/comm" % (pid, tid)) as f:
                if f.read().strip() == name:
                    found.append(int(tid))
        except OSError:
            pass  # the thread ended while we looked
    return found


def idle_baseline(server) -> tuple[int, int]:
    """Threads and descriptors of an idle server, measured after one client has come and
    gone (a sanitizer starts its own helper thread along with the first worker)."""
    echoes(server)
    wait_until(lambda: workers(server.pid) == 0, what="no worker threads left")
    return thread_count(server.pid), open_fds(server.pid)


def status_field(pid: int, field: str, tid: int | None = None) -> str:
    path = "/proc/%d/task/%d/status" % (pid, tid) if tid else "/proc/%d/status" % pid
    with open(path) as f:
        for line in f:
            if line.startswith(field + ":"):
                return line.split(None, 1)[1].strip()
    raise AssertionError("no %s in %s" % (field, path))


def signal_set(pid: int, field: str, tid: int | None = None) -> set[int]:
    """The signals in a /proc status mask (SigBlk, SigPnd, ShdPnd ...)."""
    mask = int(status_field(pid, field, tid), 16)
    return {n for n in range(1, 65) if mask & (1 << (n - 1))}


def vm_kib(pid: int) -> int:
    return int(status_field(pid, "VmSize").split()[0])


def stopped_within(server, seconds: float = STOP_WITHIN, signo=signal.SIGTERM) -> float:
    """Sends `signo` and returns how long the server took to exit 0."""
    began = time.monotonic()
    assert server.stop(signo, timeout=10) == 0
    took = time.monotonic() - began
    assert took < seconds, "stopped only after %.1fs" % took
    return took


# ------------------------------------------------------------------ a thread per client

def test_fifty_clients_at_once_each_on_its_own_thread(start):
    """Fifty clients connected at once are served by fifty worker threads, one descriptor each;
    when they leave, the threads end and the descriptors are closed."""
    server = start("server", "--port", "0", "--quiet")
    idle_threads, idle_fds = idle_baseline(server)
    clients = [connect(server.address) for _ in range(50)]
    try:
        # All 50 are served while every one of them stays connected: an iterative server
        # would serve only the first.
        for i, s in enumerate(clients):
            s.sendall(b"client %d\n" % i)
        for i, s in enumerate(clients):
            assert recv_exactly(s, len(b"client %d\n" % i)) == b"client %d\n" % i
        assert workers(server.pid) == 50
        assert thread_count(server.pid) == idle_threads + 50
        assert open_fds(server.pid) == idle_fds + 50
    finally:
        for s in clients:
            s.close()
    wait_until(lambda: thread_count(server.pid) == idle_threads, timeout=10,
               what="thread count back to its idle value %d" % idle_threads)
    assert workers(server.pid) == 0
    wait_until(lambda: open_fds(server.pid) == idle_fds, what="descriptors back to baseline")


def test_finished_threads_give_their_memory_back_without_a_new_client(start):
    """A hundred clients come and go: their threads end and their stacks are given back at
    once (the workers are detached), with no new connection to make the server look. A
    server that kept finished threads until its next accept() would keep ~8 MiB of address
    space per client that left. (One malloc arena, so that glibc's per-thread arenas,
    which it keeps for reuse, do not hide the stacks.)"""
    env = dict(os.environ, MALLOC_ARENA_MAX="1")
    server = start("server", "--port", "0", "--quiet", "--max-clients", "100", env=env)
    idle_threads, _ = idle_baseline(server)
    idle_vm = vm_kib(server.pid)
    clients = [connect(server.address) for _ in range(100)]
    try:
        for s in clients:
            assert exchange(s, b"here\n") == b"here\n"
        busy_vm = vm_kib(server.pid)
    finally:
        for s in clients:
            s.close()
    wait_until(lambda: thread_count(server.pid) == idle_threads, timeout=10,
               what="threads back to %d" % idle_threads)
    # glibc keeps up to 40 MiB of stacks of ended threads for the next ones: allow that.
    wait_until(lambda: vm_kib(server.pid) < idle_vm + 64 * 1024, timeout=10,
               what="address space back near %d KiB (it was %d KiB with 100 clients, is %d)"
               % (idle_vm, busy_vm, vm_kib(server.pid)))
    assert busy_vm - idle_vm > 100 * 1024, "the hundred threads took %d KiB" % (busy_vm - idle_vm)


def test_twenty_client_programs_at_once(start, lab):
    """Twenty of the lab's clients run at once, each gets exactly its own lines back."""
    server = start("server", "--port", "0", "--quiet")
    procs = []
    for i in range(20):
        p = subprocess.Popen([lab.path("client"), server.host, str(server.port)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        procs.append((i, p))
    try:
        for i, p in procs:
            out, err = p.communicate(b"program %d\nsecond line\n" % i, timeout=20)
            assert p.returncode == 0, err
            assert out == b"program %d\nsecond line\n" % i
    finally:
        for _, p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


# ------------------------------------------------------------------ the limit

def test_busy_reply_at_the_limit(start):
    """With --max-clients 2 a third client is told "server busy" and closed; the two are
    undisturbed, and once one leaves a new client is served."""
    server = start("server", "--port", "0", "--max-clients", "2")
    first, second = connect(server.address), connect(server.address)
    try:
        for s in (first, second):  # both are really being served
            s.sendall(b"x\n")
            assert recv_exactly(s, 2) == b"x\n"
        with connect(server.address) as third:
            assert recv_exactly(third, len(BUSY)) == BUSY
            assert third.recv(100) == b""  # and then closed
        server.expect(r"^refused 127\.0\.0\.1:\d+: server busy$")
        first.close()
        server.expect(r"left after 2 bytes$")
        echoes(server)  # a place is free again
        second.sendall(b"y\n")  # the one still connected was never disturbed
        assert recv_exactly(second, 2) == b"y\n"
    finally:
        first.close()
        second.close()


def test_busy_reply_reaches_the_lab_client(start, run):
    """The lab's client refused by a full server prints at most the busy line, says why on
    stderr and exits 1."""
    server = start("server", "--port", "0", "--max-clients", "1")
    with connect(server.address) as holder:
        holder.sendall(b"a\n")
        assert recv_exactly(holder, 2) == b"a\n"
        # The client sends its line and prints what comes back: the busy line. (Data the
        # server has sent before closing stays readable, even if a RST follows it.) A
        # refusal is not an echo, so the client fails.
        result = run("client", server.host, str(server.port), input=b"hi\n")
        assert result.stdout in (BUSY, b"")
        assert result.returncode == 1
        assert result.stderr.strip()


def test_a_stalled_client_does_not_block_the_others(start):
    """A client that sent half a line and stalls holds its own thread only: others are served."""
    server = start("server", "--port", "0")
    with connect(server.address) as stalled:
        stalled.sendall(b"half a mess")  # and then nothing
        for _ in range(5):
            echoes(server)


def test_out_of_descriptors_neither_spins_nor_stops(start):
    """--max-clients above the descriptor limit: accept() fails with EMFILE. The server says
    so once, does not spin (less than 0.3 s of CPU in a second), serves the clients it has,
    takes the queued ones as descriptors come free, and still stops on SIGTERM."""
    server = start("server", "--port", "0", "--max-clients", "100", preexec=nofile(24))
    if sanitized(server.pid):
        pytest.skip("the sanitizers need descriptors of their own (UBSan's check of a "
                    "thread's dynamic type opens a pipe): out of them, they report falsely")
    baseline = open_fds(server.pid)
    socks = [connect(server.address) for _ in range(40)]
    try:
        wait_until(lambda: "Too many open files" in server.stderr, what="the EMFILE report")
        busy = cpu_seconds(server.pid)
        time.sleep(1.0)  # measuring CPU use over a second, not waiting for anything
        assert cpu_seconds(server.pid) - busy < 0.3, "the server spins while starved"
        assert server.stderr.count("Too many open files") == 1, server.stderr
        accepted = open_fds(server.pid) - baseline
        assert 10 <= accepted < 24, accepted
        assert exchange(socks[0], b"first\n") == b"first\n"
        for s in socks[:10]:
            s.close()
        for i, s in enumerate(socks[accepted:accepted + 10]):  # queued until now
            assert exchange(s, b"late %d\n" % i) == b"late %d\n" % i
        stopped_within(server)  # out of descriptors again, with clients queued
    finally:
        for s in socks:
            s.close()


# ------------------------------------------------------------------ the idle timeout

def test_silent_clients_no_longer_deny_service(start):
    """--max-clients 2 and two clients that never send: a third is told "server busy", but
    only until the idle timeout drops the silent two; then a new client is served."""
    server = start("server", "--port", "0", "--max-clients", "2", "--idle-timeout", "1")
    silent = [connect(server.address) for _ in range(2)]
    try:
        wait_until(lambda: workers(server.pid) == 2, what="two workers")
        with connect(server.address) as third:
            assert read_to_end(third) == BUSY
        for _ in range(2):
            server.expect(r"^client 127\.0\.0\.1:\d+ dropped: idle for 1s$", timeout=10)
        for s in silent:
            assert read_to_end(s, timeout=10) == b""  # the server closed it
        echoes(server)
    finally:
        for s in silent:
            s.close()


def test_a_tiny_idle_timeout_is_not_forever(start):
    """--idle-timeout 0.0000001 is rounded up to a microsecond, not down to 0 (which
    SO_RCVTIMEO reads as "no timeout"): a silent client is dropped at once."""
    server = start("server", "--port", "0", "--idle-timeout", "0.0000001")
    with connect(server.address) as s:
        assert read_to_end(s, timeout=10) == b""
    server.expect(r"dropped: idle for 1e-07s$")


def test_a_client_that_never_reads_is_dropped_after_the_idle_timeout(start):
    """A client that sends and never reads its echo leaves its worker blocked in write();
    SO_SNDTIMEO ends that write after --idle-timeout and the client is dropped."""
    server = start("server", "--port", "0", "--idle-timeout", "1", "--quiet")
    idle_threads, idle_fds = idle_baseline(server)
    with connect(server.address, timeout=10) as s:
        stuff_without_reading(s)
        wait_until(lambda: open_fds(server.pid) == idle_fds, timeout=15,
                   what="the deaf client dropped")
    wait_until(lambda: thread_count(server.pid) == idle_threads, what="its thread gone")
    echoes(server)


# ------------------------------------------------------------------ signals and threads

def test_workers_block_the_stop_signals_and_main_does_not(start):
    """Every worker thread blocks SIGINT, SIGTERM and SIGALRM (it inherited the mask main
    set for its creation); main blocks none of them, so the kernel delivers them to main."""
    server = start("server", "--port", "0", "--quiet")
    socks = [connect(server.address) for _ in range(3)]
    try:
        for s in socks:
            assert exchange(s, b"hi\n") == b"hi\n"
        tids = wait_until(lambda: len(named_threads(server.pid, "worker")) == 3
                          and named_threads(server.pid, "worker"), what="three workers")
        stops = {signal.SIGINT, signal.SIGTERM, signal.SIGALRM}
        for tid in tids:
            assert stops <= signal_set(server.pid, "SigBlk", tid), tid
        # Main blocks every signal for a moment while it creates a worker: wait for it to
        # give itself its mask back after the third.
        wait_until(lambda: not stops & signal_set(server.pid, "SigBlk", server.pid),
                   what="main blocking none of the stop signals")
    finally:
        for s in socks:
            s.close()


def test_a_signal_sent_to_one_worker_stays_with_it(start):
    """tgkill() sends SIGTERM to one worker thread, not to the process: blocked there, it
    stays pending for that thread alone (SigPnd, not ShdPnd) and the server goes on. A
    SIGTERM to the process then goes to main, and the server stops."""
    server = start("server", "--port", "0", "--quiet")
    with connect(server.address) as s:
        assert exchange(s, b"hi\n") == b"hi\n"
        tid = wait_until(lambda: named_threads(server.pid, "worker"), what="a worker")[0]
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.tgkill(server.pid, tid, signal.SIGTERM) == 0, ctypes.get_errno()
        wait_until(lambda: signal.SIGTERM in signal_set(server.pid, "SigPnd", tid),
                   what="SIGTERM pending on the worker")
        assert signal.SIGTERM not in signal_set(server.pid, "ShdPnd")
        assert exchange(s, b"still served\n") == b"still served\n"
        echoes(server)
        stopped_within(server)


def test_sigterm_wakes_threads_blocked_in_read(start):
    """SIGTERM with three clients whose threads wait in read(): the server says it stops,
    shutdown() wakes each thread (each logs its client's end), each client sees the end of
    stream, and the server exits 0."""
    server = start("server", "--port", "0")
    clients = [connect(server.address) for _ in range(3)]
    try:
        for s in clients:
            s.sendall(b"hello\n")
            assert recv_exactly(s, 6) == b"hello\n"
        wait_until(lambda: workers(server.pid) == 3, what="three workers")
        stopped_within(server)
        lines = [line.decode() for line in server.stdout_lines]
        stop = lines.index("stopping on SIGTERM")
        assert sum(bool(re.match(r"^client \S+ left after 6 bytes$", line))
                   for line in lines[stop + 1:]) == 3, lines
        for s in clients:
            assert s.recv(10) == b""  # shutdown() sent each of them a FIN
    finally:
        for s in clients:
            s.close()


def test_stop_while_flooded(start):
    """Twenty clients keep the server busy echoing as fast as it can; SIGTERM still ends it
    within a second or so, with status 0."""
    server = start("server", "--port", "0", "--quiet")
    socks = [connect(server.address, timeout=10) for _ in range(20)]
    done = threading.Event()
    rounds = []

    def flood(s):
        chunk = b"f" * 65536
        try:
            while not done.is_set():
                s.sendall(chunk)
                recv_exactly(s, len(chunk))
                rounds.append(1)
        except (OSError, AssertionError):
            pass  # the server closed us: the point

    threads = [threading.Thread(target=flood, args=(s,), daemon=True) for s in socks]
    try:
        for t in threads:
            t.start()
        wait_until(lambda: len(rounds) >= 100, timeout=10, what="the flood under way")
        stopped_within(server)
    finally:
        done.set()
        for s in socks:
            close_hard(s)
        for t in threads:
            t.join(10)


def test_stop_while_a_slow_reader_takes_the_echo(start):
    """A client sends without pause but reads its echo 4 KiB at a time, so that its worker
    always has a write() in progress; SIGTERM still ends the server at once."""
    server = start("server", "--port", "0", "--quiet")
    s = connect(server.address, timeout=10)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    done = threading.Event()
    taken = []

    def send():
        try:
            while not done.is_set():
                s.sendall(b"s" * 65536)
        except OSError:
            pass

    def read_slowly():
        while not done.is_set():
            try:
                if not s.recv(4096):
                    return
            except OSError:
                return
            taken.append(1)
            done.wait(0.05)

    threads = [threading.Thread(target=f, daemon=True) for f in (send, read_slowly)]
    try:
        for t in threads:
            t.start()
        wait_until(lambda: len(taken) >= 10, timeout=10, what="the slow reading under way")
        stopped_within(server)
    finally:
        done.set()
        close_hard(s)
        for t in threads:
            t.join(10)


# ------------------------------------------------------------------ the client's threads

def close_hard(s: socket.socket) -> None:
    """Wakes whatever of ours is blocked on `s`, then closes it."""
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # not connected any more
    s.close()


def silent_server() -> socket.socket:
    """A listener that never accepts: the kernel completes the handshake and takes the
    client's bytes, but no reply ever comes."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    return listener


def test_client_has_a_writer_thread(start, lab):
    """While the client waits for input, it has a second thread, "writer", which blocks
    every signal; main blocks none of SIGINT and SIGTERM."""
    server = start("server", "--port", "0", "--quiet")
    client = lab.start("client", "--port", str(server.port), ready=False)
    tid = wait_until(lambda: named_threads(client.pid, "writer"), what="the writer thread")[0]
    assert {signal.SIGINT, signal.SIGTERM, signal.SIGALRM} <= signal_set(client.pid, "SigBlk", tid)
    wait_until(lambda: not {signal.SIGINT, signal.SIGTERM} & signal_set(client.pid, "SigBlk",
                                                                        client.pid),
               what="main blocking neither SIGINT nor SIGTERM")
    client.write(b"two threads\n")
    assert client.read_line() == b"two threads"
    client.close_stdin()
    assert client.wait(10) == 0


def test_client_sixteen_mebibyte_line(start, lab):
    """One line of 16 MiB: the writer thread sends it while main reads the echo, so neither
    side's buffers fill up for good; it all comes back, byte for byte."""
    server = start("server", "--port", "0", "--quiet")
    line = b"a" * (16 * MIB) + b"\n"
    result = subprocess.run([lab.path("client"), "--port", str(server.port)], input=line,
                            capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == line


def test_client_timeout_against_a_silent_server(lab):
    """A server that accepts and never answers: the client gives up after --timeout with a
    message and status 1, instead of waiting for ever."""
    with silent_server() as listener:
        port = listener.getsockname()[1]
        began = time.monotonic()
        result = lab.run("client", "--port", str(port), "--timeout", "1", input=b"hello?\n")
        took = time.monotonic() - began
    assert result.returncode == 1
    assert result.stdout == b""
    assert result.stderr == "client: no reply from 127.0.0.1:%d for 1s\n" % port
    assert 1 <= took < 10, took


def test_client_waiting_for_its_user_is_not_a_timeout(start, lab):
    """--timeout counts only while a reply is due: a user who types nothing for longer is
    not timed out, and a line typed afterwards is echoed."""
    server = start("server", "--port", "0", "--quiet")
    client = lab.start("client", "--port", str(server.port), "--timeout", "0.3", ready=False)
    client.no_line(within=1.0)
    assert client.proc.poll() is None, client.stderr
    client.write(b"late\n")
    assert client.read_line() == b"late"
    client.close_stdin()
    assert client.wait(10) == 0
    assert client.stderr == ""


@pytest.mark.parametrize("signo", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_client_stops_while_waiting_on_stdin(start, lab, signo):
    """SIGINT or SIGTERM while the client waits for its user to type: it goes at once,
    status 1 (stopped before the end of its input), nothing printed (main takes the
    signal; the writer, asleep in read() on the terminal, ends with the process)."""
    server = start("server", "--port", "0", "--quiet")
    client = lab.start("client", "--port", str(server.port), ready=False)
    wait_until(lambda: named_threads(client.pid, "writer"), what="the writer thread")
    began = time.monotonic()
    client.send_signal(signo)
    assert client.wait(10) == 1
    assert time.monotonic() - began < STOP_WITHIN
    assert client.stdout_lines == [] and client.stderr == ""


def test_client_stops_while_waiting_for_a_reply(lab):
    """SIGTERM while the client waits for a reply that does not come: it goes at once,
    status 1."""
    with silent_server() as listener:
        client = lab.start("client", "--port", str(listener.getsockname()[1]), "--timeout",
                           "60", ready=False)
        client.write(b"anyone?\n")
        wait_until(lambda: named_threads(client.pid, "writer"), what="the writer thread")
        began = time.monotonic()
        client.send_signal(signal.SIGTERM)
        assert client.wait(10) == 1
        assert time.monotonic() - began < STOP_WITHIN


@pytest.mark.parametrize("prog", ["server", "client"])
def test_a_hostile_argument_is_reported_escaped(run, prog):
    """A bad port with control bytes in it is reported escaped: no raw escape sequence
    reaches the terminal, and the one-line error stays one line."""
    result = run(prog, "--port", "9\x1b]0;owned\x07\n")
    assert result.returncode == 2
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr
    first = result.stderr.splitlines()[0]
    assert first == "%s: bad port '9\\x1b]0;owned\\x07\\n' (want 0 to 65535)" % prog, first


# ------------------------------------------------------------------ the fault sweep

@pytest.mark.faults
@pytest.mark.parametrize("fault", STREAM_FAULTS + [more_clients_than_the_limit(4)],
                         ids=fault_name)
def test_fault_sweep(start, fault):
    """One misbehaving peer against a server with --max-clients 4: a fresh client is
    served while the peer misbehaves and after it has gone, every worker thread ends, and
    the server's descriptors and memory come back."""
    server = start("server", "--port", "0", "--quiet", "--max-clients", "4")
    survive(server, fault, idle=lambda: workers(server.pid) == 0, memory_mib=64)
