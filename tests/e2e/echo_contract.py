"""The echo-server contract: what every TCP echo lab promises (03, 04, 05, 07, 08, 09, and
12 in stream mode), written once; and, in its second part, what the event-loop servers
(07, 08, 09) and their clients promise on top: a stop within a second however busy the
loop, idle clients dropped on its timer, and clients that keep lines in flight and time
out on a silent server.

A lab's test file says what its server is like and takes the contract's tests as its own:

    LAB = EchoLab(concurrent=20, bad_arguments=[("server", ["--port", "70000"])])
    globals().update(echo_contract(LAB))

pytest then collects test_client_echoes_each_line and the rest as tests of that file (and
so of that lab); the file itself holds only what its lab adds. Among what the contract
gives is the fixture `serve`: `serve("--quiet")` starts the lab's server at a fresh
address (port 0, or a new socket path) and waits for its ready line.
"""

import contextlib
import itertools
import os
import re
import resource
import select
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field

import pytest

from conftest import (STOP_WITHIN, connect, cpu_seconds, exchange, needs_ipv6, open_fds,
                      process_state, read_to_end, recv_exactly, roundtrip, rss_kib, sanitized,
                      wait_until)
from faults import (BUSY, MIB, STREAM_FAULTS, echoes, fault_many_resets_at_once,
                    fault_max_buffer_in_one_burst, fault_name, more_clients_than_the_limit, reset,
                    stuff_without_reading, survive)

SIGNALS = pytest.mark.parametrize("signo", [signal.SIGTERM, signal.SIGINT],
                                  ids=["SIGTERM", "SIGINT"])
LINE_16_MIB = b"x" * (16 << 20) + b"\n"


@dataclass
class EchoLab:
    """What a lab's test file tells the contract about its echo server."""

    concurrent: int  # clients served at once in the tests; 1: one at a time (iterative)
    # (program, [arguments]) that must exit 2 with the usage; a third item, if any, is
    # what the first line of stderr must say
    bad_arguments: list
    help_mentions: dict = field(default_factory=dict)  # program -> [bytes its --help shows]
    unix: bool = False  # a Unix socket path (--path) instead of TCP --host and --port
    variants: dict = field(default_factory=dict)  # every test runs once per variant (09's modes)
    idle_timeout: bool = False  # the server takes --idle-timeout SECONDS
    # The server's log lines, as regexes, for the events "connected", "bytes" (read from a
    # client), "left", "reset", "busy" and "stop" (on a signal): PEER stands for the
    # client's address, SIGNAME for the signal's name (SIGTERM), SIGNO for its number,
    # CLIENTS for how many clients there were. An event left out is not checked.
    logs: dict = field(default_factory=dict)
    event_loop: bool = False  # 07, 08, 09: the second part of the contract applies too
    out_of_descriptors: str = "refuse"  # event loops at EMFILE: "refuse" (busy) or "pause"


    def log(self, event, peer=r"127\.0\.0\.1:\d+", signo=0, clients=0) -> str:
        """The regex of the log line for `event`, or "" when the lab's is not checked."""
        name = signal.Signals(signo).name if signo else ""
        return (self.logs.get(event, "").replace("PEER", peer).replace("SIGNAME", name)
                .replace("SIGNO", str(signo)).replace("CLIENTS", str(clients)))


def address_args(server) -> list:
    """The arguments that name `server`'s address, to a client or to a second server."""
    if server.address.is_unix:
        return ["--path", server.address.text]
    return ["--host", server.host, "--port", str(server.port)]


def echo_contract(spec: EchoLab) -> dict:
    """The contract's tests and fixtures for the lab `spec` describes, for its test module."""

    log = spec.log
    if spec.variants:
        @pytest.fixture(params=list(spec.variants))
        def variant(request):
            return spec.variants[request.param]
    else:
        @pytest.fixture
        def variant():
            return []

    @pytest.fixture
    def serve(start, tmp_path, variant):
        paths = (tmp_path / ("s%d.sock" % n) for n in itertools.count())

        def serve(*extra, **kw):
            where = ["--path", str(next(paths))] if spec.unix else ["--port", "0"]
            return start("server", *where, *variant, *extra, **kw)
        return serve

    # ------------------------------------------------------------ the normal path

    def test_client_echoes_each_line(serve, run):
        """The lab's client sends each line of its input and prints each echo, a 100 KB
        line too, and nothing else; the server logs the client coming and going."""
        server = serve()
        data = b"hello\nworld\n" + b"x" * 100000 + b"\n"
        result = run("client", *address_args(server), input=data)
        assert result.returncode == 0, result.stderr
        assert result.stdout == data
        assert result.stderr == ""
        for event in ("connected", "bytes", "left"):
            if log(event):
                server.expect(log(event))

    def test_binary_bytes_pass_unchanged(serve, run):
        """NUL bytes and bytes that are no text pass unchanged, through the client and
        through a raw socket (every byte value)."""
        server = serve()
        data = b"nul\x00inside\n\xff\xfe\x80\n\x00\n"
        result = run("client", *address_args(server), input=data)
        assert result.returncode == 0, result.stderr
        assert result.stdout == data
        every_byte = bytes(range(256)) * 4
        with connect(server.address) as s:
            assert exchange(s, every_byte) == every_byte

    def test_last_line_without_newline_comes_back_with_one(serve, run):
        """Input that ends without a newline: its last line is still sent and echoed."""
        server = serve()
        result = run("client", *address_args(server), input=b"a\n\nlast")
        assert result.stdout == b"a\n\nlast\n"

    def test_one_mebibyte_line_through_the_client(serve, run):
        """A single line of a mebibyte goes through the client and back whole."""
        server = serve("--quiet")
        line = b"x" * MIB + b"\n"
        result = run("client", *address_args(server), input=line)
        assert result.returncode == 0, result.stderr
        assert result.stdout == line

    def test_nc_interop(serve):
        """nc -N (which half-closes at the end of its input) gets every line back."""
        server = serve()
        where = ["-U", server.address.text] if spec.unix else [server.host, str(server.port)]
        nc = subprocess.run(["nc", "-N", *where], input=b"from netcat\nline two\n",
                            capture_output=True, timeout=10)
        assert nc.returncode == 0 and nc.stdout == b"from netcat\nline two\n"

    def test_socat_interop(serve):
        """socat gets a thousand lines back, more than one read's worth."""
        server = serve()
        data = b"".join(b"line %d\n" % i for i in range(1000))
        where = ("UNIX-CONNECT:%s" % server.address.text if spec.unix
                 else "TCP:%s:%d" % (server.host, server.port))
        out = subprocess.run(["socat", "-t", "5", "-", where], input=data,
                             capture_output=True, timeout=10)
        assert out.returncode == 0 and out.stdout == data

    @needs_ipv6
    def test_ipv6(serve, run):
        """The server listens on ::1 when asked; the client reaches it there."""
        server = serve("--host", "::1")
        assert server.address.text.startswith("[::1]:")
        assert server.family == socket.AF_INET6
        result = run("client", "--host", "::1", "--port", str(server.port), input=b"six\n")
        assert (result.returncode, result.stdout) == (0, b"six\n")
        if log("connected"):
            server.expect(log("connected", peer=r"\[::1\]:\d+"))

    def test_one_mebibyte_of_random_bytes(serve):
        """A mebibyte of random bytes comes back byte for byte to a peer that reads while
        it writes."""
        server = serve("--quiet")
        payload = os.urandom(MIB)
        with connect(server.address, timeout=10) as s:
            assert exchange(s, payload) == payload

    def test_stream_has_no_message_boundaries(serve):
        """Bytes written in pieces come back complete and in order: the server echoes
        bytes, not messages, and two writes may arrive as one read."""
        server = serve()
        with connect(server.address) as s:
            if not spec.unix:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for piece in (b"he", b"ll", b"o\nwo", b"rld", b"\n"):
                s.sendall(piece)
            assert recv_exactly(s, 12) == b"hello\nworld\n"

    if spec.concurrent > 1:
        def test_many_clients_at_once(serve):
            server = serve("--quiet")
            socks = [connect(server.address) for _ in range(spec.concurrent)]
            try:
                for rnd in range(3):
                    for i, s in enumerate(socks):
                        s.sendall(b"client %d round %d\n" % (i, rnd))
                    for i, s in enumerate(socks):
                        want = b"client %d round %d\n" % (i, rnd)
                        assert recv_exactly(s, len(want)) == want
            finally:
                for s in socks:
                    s.close()
        test_many_clients_at_once.__doc__ = (
            "%d clients connected at once are all served, three rounds each."
            % spec.concurrent)
    else:
        def test_second_client_waits_in_the_backlog_then_is_served(serve):
            """One client at a time: a second one is connected (the kernel completes the
            handshake) but not served until the first leaves; then it is."""
            server = serve()
            first = connect(server.address)
            assert exchange(first, b"first\n") == b"first\n"
            with connect(server.address) as second:
                second.sendall(b"second\n")
                second.settimeout(0.5)
                with pytest.raises(socket.timeout):
                    second.recv(100)
                first.close()
                second.settimeout(10)
                assert recv_exactly(second, 7) == b"second\n"

    def test_reset_mid_stream_drops_only_that_client(serve):
        """A client that resets its connection in the middle of a transfer is dropped (and
        logged); a client connected meanwhile is not disturbed, the server's descriptors
        come back, and the next client is served."""
        server = serve()
        baseline = open_fds(server.pid)
        bystander = connect(server.address) if spec.concurrent > 1 else None
        try:
            if bystander:
                assert exchange(bystander, b"before\n") == b"before\n"
            s = connect(server.address)
            s.sendall(os.urandom(256 * 1024))
            reset(s)
            if log("reset"):
                server.expect(log("reset"), timeout=10)
            if bystander:
                assert exchange(bystander, b"still here\n") == b"still here\n"
        finally:
            if bystander:
                bystander.close()
        wait_until(lambda: open_fds(server.pid) == baseline, what="descriptors back")
        echoes(server)

    def test_half_close_gets_whole_echo_then_eof(serve):
        """A client that half-closes after 300 KB gets all of it back, then the end of
        stream: the server finishes writing before it closes."""
        server = serve()
        payload = os.urandom(300000)
        assert roundtrip(server.address, payload) == payload
        if log("left"):
            server.expect(log("left"))

    # --------------------------------------------------------------- errors, arguments

    def test_bind_in_use_exits_1(serve, run):
        """A second server on the same address exits 1 with 'Address already in use',
        never ready, and the first keeps serving."""
        server = serve()
        result = run("server", *address_args(server))
        assert result.returncode == 1
        assert "server: bind %s: Address already in use" % server.address.text in result.stderr
        assert result.stdout == b""
        echoes(server)

    def test_no_server_connection_refused(run, tmp_path):
        """The client with nobody listening exits 1 with 'Connection refused'."""
        if spec.unix:
            where = str(tmp_path / "stale.sock")
            with socket.socket(socket.AF_UNIX) as gone:
                gone.bind(where)  # the file stays; nobody listens on it
            args = ["--path", where]
        else:
            with socket.socket() as bound:  # bound, not listening: connect() gets RST
                bound.bind(("127.0.0.1", 0))
                where = "127.0.0.1:%d" % bound.getsockname()[1]
            args = where.split(":")
        result = run("client", *args, input=b"hi\n")
        assert result.returncode == 1
        assert result.stdout == b""
        assert re.search(r"^client: connect %s: Connection refused$" % re.escape(where),
                         result.stderr, re.M), result.stderr

    @pytest.mark.parametrize("prog,args,says", [(c + ("",))[:3] for c in spec.bad_arguments],
                             ids=[" ".join([c[0], *c[1]]) for c in spec.bad_arguments])
    def test_bad_arguments_exit_2_with_usage(run, tmp_path, prog, args, says):
        """A bad argument: one line saying what is wrong, then the usage, on stderr; exit
        status 2; nothing on stdout and nothing created."""
        result = run(prog, *args)
        assert result.returncode == 2
        lines = result.stderr.splitlines()
        assert lines[0].startswith(prog + ": ") and says in lines[0], result.stderr
        assert lines[1].startswith("usage: " + prog), result.stderr
        assert result.stdout == b""
        assert list(tmp_path.iterdir()) == []

    def test_help(run, lab):
        """--help prints the usage to stdout and exits 0, with the default port and the
        lab's own options."""
        for prog in ("server", "client"):
            result = run(prog, "--help")
            assert result.returncode == 0
            assert result.stdout.startswith(b"usage: " + prog.encode())
            for text in spec.help_mentions.get(prog, []) + ([] if spec.unix
                                                           else [b"99" + lab.num.encode()]):
                assert text in result.stdout, text

    # ------------------------------------------------------------------- stopping

    @SIGNALS
    def test_stop_signal_when_idle_exits_0(serve, signo):
        """SIGTERM or SIGINT stops an idle server with status 0 and nothing on stderr."""
        server = serve()
        assert server.stop(signo) == 0
        assert server.stderr == ""
        if log("stop"):
            assert re.match(log("stop", signo=signo), server.stdout_lines[-1].decode())

    @SIGNALS
    def test_stop_signal_with_clients_connected_exits_0(serve, signo):
        """SIGTERM or SIGINT with clients connected, one in the middle of a transfer: the
        server exits 0 and every connection is closed, none left hanging."""
        server = serve()
        socks = [connect(server.address) for _ in range(min(spec.concurrent, 20))]
        try:
            for s in socks:
                assert exchange(s, b"hi\n") == b"hi\n"
            socks[0].sendall(b"x" * 100000)
            # A signal that lands between the flag check and a blocking call waits for the
            # next event (see the handouts' Pitfalls): signal it once it sleeps.
            wait_until(lambda: process_state(server.pid) == "S", what="the server asleep")
            assert server.stop(signo) == 0
            if log("stop"):
                assert re.match(log("stop", signo=signo, clients=len(socks)),
                                server.stdout_lines[-1].decode()), server.stdout_lines[-1]
            for s in socks:
                try:
                    read_to_end(s)
                except ConnectionResetError:
                    pass  # closed with our bytes unread: RST instead of FIN, closed all the same
        finally:
            for s in socks:
                s.close()

    @SIGNALS
    def test_stop_signal_while_blocked_writing_exits_0(serve, signo):
        """A peer that never reads: the server is stuck writing to it, and SIGTERM or
        SIGINT still ends it with status 0 (at the latest when an idle timeout fires,
        should the signal land just before the write)."""
        server = serve("--quiet", *(["--idle-timeout", "3"] if spec.idle_timeout else []))
        with connect(server.address, timeout=10) as s:
            stuff_without_reading(s)
            assert server.stop(signo, timeout=10) == 0

    tests = dict(locals())
    if spec.unix:
        del tests["test_ipv6"]
    if spec.event_loop:
        tests.update(event_loop_contract(spec))
    return {name: obj for name, obj in tests.items()
            if name.startswith("test_") or name in ("serve", "variant")}


# ============================================================ part two: event loops

def event_loop_contract(spec: EchoLab) -> dict:
    """What a server with one thread and an event loop (select, poll, epoll) promises: no
    client, however slow, silent, greedy or numerous, stalls the others or the server."""

    log = spec.log

    def test_idle_clients_and_half_line_do_not_delay_an_active_client(serve, run):
        """A hundred idle clients, one of them halfway through a line, delay no one: the
        lab's client gets 200 lines back within 5 s, fresh clients within 2 s each, and
        the half line is echoed without waiting for its newline."""
        server = serve("--quiet")
        baseline = open_fds(server.pid)
        idle = [connect(server.address) for _ in range(100)]
        try:
            idle[0].sendall(b"half a li")  # ...and never the rest
            wait_until(lambda: open_fds(server.pid) == baseline + 100, what="100 accepted")
            lines = b"".join(b"active %d\n" % i for i in range(200))
            result = run("client", *address_args(server), input=lines)
            assert result.stdout == lines
            assert result.seconds < 5.0
            for i in range(20):
                began = time.monotonic()
                with connect(server.address, timeout=2) as s:
                    assert exchange(s, b"round %d\n" % i) == b"round %d\n" % i
                assert time.monotonic() - began < 2.0
            assert recv_exactly(idle[0], 9) == b"half a li"
        finally:
            for s in idle:
                s.close()

    def test_small_max_buffer_still_echoes_everything(serve):
        """With --max-buffer 1 the server reads a byte at a time, but loses none: 200 KB
        of random bytes come back whole."""
        server = serve("--quiet", "--max-buffer", "1")
        payload = os.urandom(200000)
        with connect(server.address, timeout=10) as s:
            assert exchange(s, payload) == payload

    def test_max_buffer_flag_bounds_the_queue(serve):
        """With --max-buffer 65536, a client that writes 16 MiB and reads nothing costs the
        server little more than 64 KiB (a few hundred KiB of slack)."""
        server = serve("--quiet", "--max-buffer", "65536")
        before = rss_kib(server.pid)
        with socket.create_connection(server.sockaddr, timeout=0.5) as hog:
            try:
                for _ in range(256):
                    hog.sendall(b"y" * 65536)
            except socket.timeout:
                pass  # the server stopped reading: the point
            echoes(server)
            grown = rss_kib(server.pid) - before
            assert grown < 768 * (6 if sanitized(server.pid) else 1), \
                "%d KiB: more than --max-buffer 65536 explains" % grown

    def test_writer_that_never_reads_is_held_back(serve):
        """A client writes as fast as it can and never reads: the server stops reading it
        (the client is held back long before 48 MiB: what it got in is the server's
        --max-buffer and the kernel's buffers both ways, which Linux's autotuning may grow
        to some 16 MiB on loopback), serves others within 2 s each, and stays small (less
        than 6 MiB more)."""
        server = serve("--quiet")
        echoes(server)
        before = rss_kib(server.pid)
        hog = socket.socket(server.family, socket.SOCK_STREAM)
        hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # little room our side
        hog.connect(server.sockaddr)
        try:
            sent = stuff_without_reading(hog, cap=48 * MIB)
            assert sent < 48 * MIB, "the server kept reading from a client that never reads"
            for _ in range(5):
                began = time.monotonic()
                echoes(server)
                assert time.monotonic() - began < 2.0
            grown = rss_kib(server.pid) - before
            assert grown < 6 * 1024 * (6 if sanitized(server.pid) else 1), \
                "the server grew by %d KiB holding one slow reader" % grown
        finally:
            hog.close()

    def test_clients_leaving_together_do_not_disturb_the_rest(serve):
        """Half the clients leave in one go (closes and resets mixed), five times over,
        while new ones come: everyone who stays is served in every round. (An array of
        clients that moves the last one into a gap must serve the one it moved, with its
        buffer.)"""
        server = serve("--quiet")
        baseline = open_fds(server.pid)
        socks = [connect(server.address) for _ in range(60)]
        try:
            for rnd in range(5):
                wait_until(lambda: open_fds(server.pid) == baseline + len(socks), what="all in")
                staying = []
                for i, s in enumerate(socks):
                    if i % 2 == rnd % 2 and len(socks) > 4:
                        reset(s) if i % 4 else s.close()
                    else:
                        s.sendall(b"%d stays in round %d\n" % (i, rnd))
                        staying.append((i, s))
                for i, s in staying:
                    want = b"%d stays in round %d\n" % (i, rnd)
                    assert recv_exactly(s, len(want)) == want
                socks = [s for _, s in staying] + [connect(server.address) for _ in range(10)]
        finally:
            for s in socks:
                s.close()
        wait_until(lambda: open_fds(server.pid) == baseline, what="descriptors back")

    def test_max_clients_one_more_gets_server_busy(serve):
        """With --max-clients 3, a fourth client is told "server busy" and closed (and the
        server logs it); the three are undisturbed, and once one leaves a new one is
        served."""
        server = serve("--max-clients", "3")
        held = [connect(server.address) for _ in range(3)]
        try:
            for s in held:
                assert exchange(s, b"in\n") == b"in\n"
            with_three = open_fds(server.pid)
            with connect(server.address) as extra:
                assert read_to_end(extra) == BUSY
            if spec.log("busy"):
                server.expect(spec.log("busy", clients=3))
            held.pop().close()
            wait_until(lambda: open_fds(server.pid) == with_three - 1, what="one left")
            echoes(server)
            for s in held:
                assert exchange(s, b"still in\n") == b"still in\n"
        finally:
            for s in held:
                s.close()

    def test_default_max_clients_follows_the_descriptor_limit(serve):
        """With only 64 descriptors, the default --max-clients leaves room to say "server
        busy": of 100 clients, those that fit are echoed, the others told busy, and the
        server serves again once they have gone."""
        server = serve("--quiet", preexec=nofile(64))
        baseline = open_fds(server.pid)
        socks = [connect(server.address) for _ in range(100)]
        try:
            echoed = busy = 0
            for s in socks:
                s.sendall(b"hi\n")
            for s in socks:
                reply = recv_exactly(s, 3)
                if reply == b"hi\n":
                    echoed += 1
                else:
                    assert reply + recv_exactly(s, len(BUSY) - 3) == BUSY
                    busy += 1
            assert 40 <= echoed <= 64 - baseline and busy >= 20, (echoed, busy)
        finally:
            for s in socks:
                s.close()
        wait_until(lambda: open_fds(server.pid) == baseline, what="descriptors back")
        echoes(server)

    def test_out_of_descriptors_neither_spins_nor_stops(serve):
        """--max-clients above the descriptor limit: accept() fails with EMFILE. The server
        says so once, does not spin (less than 0.3 s of CPU in a second), keeps serving
        the clients it has, and takes new ones once descriptors come free."""
        server = serve("--max-clients", "1000", preexec=nofile(64))
        baseline = open_fds(server.pid)
        socks = [connect(server.address) for _ in range(100)]
        try:
            if spec.out_of_descriptors == "refuse":  # the spare descriptor: "server busy"
                def settled():
                    accepted = open_fds(server.pid) - baseline
                    return accepted + len(readable(socks)) == 100 and accepted
                accepted = wait_until(settled, timeout=10, what="every attempt answered")
                assert accepted >= 40 and 100 - accepted >= 30, accepted
                refused = readable(socks)
                for s in refused:
                    assert read_to_end(s) == BUSY
                said = lambda: sum(b"out of descriptors" in l for l in server.stdout_lines)
            else:  # "pause": stop accepting until a client leaves; the rest wait queued
                wait_until(lambda: "pausing accepts" in server.stderr, what="the EMFILE report")
                assert "Too many open files" in server.stderr
                refused = []
                said = lambda: server.stderr.count("pausing accepts")
            busy = cpu_seconds(server.pid)
            time.sleep(1.0)  # measuring CPU use over a second, not waiting for anything
            assert cpu_seconds(server.pid) - busy < 0.3, "the server spins while starved"
            assert said() == 1
            waiting = [s for s in socks if s not in refused]
            assert exchange(waiting[0], b"first\n") == b"first\n"
            for s in waiting[:-30]:
                s.close()
            for i, s in enumerate(waiting[-30:]):  # accepted long ago, or queued until now
                assert exchange(s, b"late %d\n" % i) == b"late %d\n" % i
            echoes(server)
        finally:
            for s in socks:
                s.close()

    # ------------------------------------------------------------- the log

    def test_server_logs_connect_bytes_and_leave(serve):
        """One line when a client comes, one per read with its size, one when it leaves with
        the bytes it sent in all, in the wording of docs/conventions.md."""
        server = serve()
        with connect(server.address) as s:
            me = peer_of(s)
            assert exchange(s, b"12345") == b"12345"
        server.expect(log("connected", peer=me))
        server.expect(r"^from %s: 5 bytes$" % me)
        server.expect(r"^client %s left after 5 bytes$" % me)
        assert server.stop() == 0
        assert server.stdout_lines[-1] == b"stopping on SIGTERM"

    def test_client_bytes_never_reach_the_log(serve):
        """What a client sends (escape sequences, a forged log line) is echoed, never
        logged."""
        server = serve()
        evil = b"\x1b]0;owned\x07\nready: tcp 6.6.6.6:66\nstopping on SIGTERM\n"
        with connect(server.address) as s:
            assert exchange(s, evil) == evil
        server.expect(r" left after %d bytes$" % len(evil))
        assert server.stop() == 0
        logged = b"\n".join(server.stdout_lines)
        assert b"\x1b" not in logged and b"6.6.6.6" not in logged
        assert server.stdout_lines.count(b"stopping on SIGTERM") == 1

    # ------------------------------------------------------------- stopping however busy

    @SIGNALS
    def test_stop_while_flooded(serve, signo):
        """Four clients write and read as fast as they can, so every wait returns at once
        and the loop never sleeps. SIGTERM or SIGINT still ends it within a second, status
        0. (pselect(), ppoll() and epoll_pwait() deliver a pending signal only when they
        would sleep: the loop must look at the flag itself.)"""
        server = serve("--quiet")
        echoed, end = flood(server)
        try:
            wait_until(lambda: echoed[0] > 8 << 20, timeout=10, what="8 MiB echoed")
            stops_in_time(server, signo)
        finally:
            end()

    def test_stop_while_out_of_descriptors(serve):
        """Clients keep coming to a server out of descriptors (EMFILE): it refuses them with
        its spare descriptor, or pauses its accepts (09) while they queue. SIGTERM still
        ends it within a second, status 0, and it never spun meanwhile."""
        if spec.out_of_descriptors == "refuse":  # three clients fit in eight descriptors
            server = serve("--quiet", preexec=nofile(8))
            socks = [connect(server.address) for _ in range(3)]
            for s in socks:
                assert exchange(s, b"in\n") == b"in\n"
            socks += [connect(server.address) for _ in range(20)]
            wait_until(lambda: len(readable(socks)) >= 20, what="the rest refused")
        else:  # eleven fit in sixteen; the rest wait in the kernel's queue
            server = serve("--quiet", "--max-clients", "100", preexec=nofile(16))
            socks = [connect(server.address) for _ in range(20)]
            wait_until(lambda: "pausing accepts" in server.stderr, what="the EMFILE report")
        try:
            busy = cpu_seconds(server.pid)
            time.sleep(0.5)  # measuring CPU use over half a second, not waiting for anything
            assert cpu_seconds(server.pid) - busy < 0.3, "the server spins while starved"
            socks += [connect(server.address) for _ in range(5)]
            stops_in_time(server)
        finally:
            for s in socks:
                s.close()

    def test_stop_while_writing_to_a_slow_reader(serve):
        """A client sends 8 MiB and reads 4 KiB every 50 ms: the server always has an echo
        to write. SIGTERM still ends it within a second, status 0."""
        server = serve("--quiet")
        with slow_reader(server) as received:
            wait_until(lambda: received[0] > 32768, what="the slow reader under way")
            stops_in_time(server)

    # ------------------------------------------------------------- idle clients

    def test_idle_client_is_dropped(serve):
        """--idle-timeout 0.5: a client silent that long is closed, the server logs why
        ("client PEER dropped: idle for 0.5s"), nothing on stderr, and the next client is
        served. Nothing else happens meanwhile: only the wait's timeout, set by the
        earliest deadline, can wake the loop."""
        server = serve("--idle-timeout", "0.5")
        began = time.monotonic()
        with connect(server.address, timeout=10) as silent:
            me = peer_of(silent)
            assert silent.recv(10) == b""  # the server closed it
        took = time.monotonic() - began
        assert 0.4 < took < 5, took
        server.expect(r"^client %s dropped: idle for 0\.5s$" % me)
        echoes(server)
        assert server.stderr == ""

    def test_tiny_idle_timeout_is_not_forever(serve):
        """--idle-timeout 0.0000001 is rounded up, never down to a zero timeout (which
        would mean none): a silent client is dropped at once."""
        server = serve("--idle-timeout", "0.0000001")
        with connect(server.address, timeout=10) as silent:
            assert silent.recv(10) == b""
        server.expect(r"dropped: idle for 1e-07s$")

    def test_silent_clients_no_longer_deny_service(serve):
        """--max-clients 2: two clients that never send hold both places and a third is
        told "server busy"; after --idle-timeout (3 s) they are dropped, and a new client
        is served."""
        server = serve("--max-clients", "2", "--idle-timeout", "3")  # room to knock, under load
        silent = [connect(server.address, timeout=10) for _ in range(2)]
        try:
            wait_until(lambda: sum(b" connected" in l for l in server.stdout_lines) == 2,
                       what="both silent clients in")
            with connect(server.address) as third:
                assert read_to_end(third) == BUSY
            for s in silent:
                assert s.recv(10) == b""  # dropped
            echoes(server)
            wait_until(lambda: sum(b"dropped: idle for 3s" in l
                                   for l in server.stdout_lines) == 2, what="both drops logged")
        finally:
            for s in silent:
                s.close()

    def test_active_client_is_not_dropped(serve):
        """--idle-timeout 2: a client that sends a line every 0.2 s for 4 s is never idle
        that long: each line moves its deadline, and every echo comes back."""
        server = serve("--idle-timeout", "2")
        with connect(server.address, timeout=10) as s:
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline:
                assert exchange(s, b"still here\n") == b"still here\n"
                time.sleep(0.2)  # the pace of the client, well inside the idle timeout
        assert not any(b"idle" in l for l in server.stdout_lines)

    def test_client_that_never_reads_is_dropped_when_idle(serve):
        """A client that writes until every buffer is full and never reads: the server can
        neither read from it (backpressure) nor write to it, so it is idle; after
        --idle-timeout it is dropped and its buffer freed."""
        server = serve("--idle-timeout", "1")
        hog = socket.socket(server.family, socket.SOCK_STREAM)
        hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        hog.connect(server.sockaddr)
        try:
            stuff_without_reading(hog)
            server.expect(r"^client %s dropped: idle for 1s$" % peer_of(hog), timeout=10)
            echoes(server)
        finally:
            hog.close()

    # ------------------------------------------------------------- the lab's client

    def test_client_16_mib_line(serve, run):
        """One line of 16 MiB goes through the client and comes back whole: it reads the
        echo while it writes, so neither side's buffers can deadlock it."""
        server = serve("--quiet")
        result = run("client", *address_args(server), input=LINE_16_MIB, timeout=60)
        assert result.returncode == 0, result.stderr
        assert result.stdout == LINE_16_MIB

    def test_client_keeps_lines_in_flight(run):
        """A server that answers only once the client has sent everything (it reads to the
        client's FIN, then echoes it all): the client sends every line without waiting for
        any echo, half-closes, and still reads the whole echo. A stop-and-wait client would
        wait for the first line's echo for ever."""
        lines = b"".join(b"line %d\n" % i for i in range(2000))
        port, done = one_shot_server(lambda conn: conn.sendall(read_to_end(conn, 10)))
        result = run("client", "--port", str(port), "--timeout", "5", input=lines)
        done()
        assert (result.returncode, result.stderr) == (0, "")
        assert result.stdout == lines

    def test_client_reads_until_the_servers_fin(run):
        """After its half-close the client reads on: echo that comes late and in pieces is all
        printed, and the client exits 0 only at the server's FIN."""
        def late_and_in_pieces(conn):
            data = read_to_end(conn, 10)
            for i in range(0, len(data), 3):
                time.sleep(0.05)  # the pace of a slow server
                conn.sendall(data[i:i + 3])

        port, done = one_shot_server(late_and_in_pieces)
        result = run("client", "--port", str(port), input=b"slow\nbut sure\n")
        done()
        assert (result.returncode, result.stdout) == (0, b"slow\nbut sure\n"), result.stderr

    def test_client_timeout_against_a_silent_server(run):
        """A server that accepts (the kernel completes the handshake) and never answers:
        with --timeout 1 the client gives up after about a second, exit 1, and says why."""
        with socket.create_server(("127.0.0.1", 0)) as silent:
            port = silent.getsockname()[1]
            result = run("client", "--port", str(port), "--timeout", "1", input=b"hello?\n")
        assert result.returncode == 1
        assert result.stdout == b""
        assert result.stderr == "client: read 127.0.0.1:%d: no reply within 1s\n" % port
        assert 0.9 < result.seconds < 5, result.seconds

    def test_client_timeout_counts_from_the_last_reply(run):
        """A server that trickles the echo back, a byte every 0.2 s for 4 s: with
        --timeout 3 the client never waits that long for a reply, and gets all of it."""
        line = b"0123456789abcdefghi\n"

        def trickle(conn):
            conn.settimeout(10)
            for b in recv_exactly(conn, len(line)):
                time.sleep(0.2)  # the pace of the trickle, well inside the timeout
                conn.sendall(bytes([b]))
            read_to_end(conn, 10)

        port, done = one_shot_server(trickle)
        result = run("client", "--port", str(port), "--timeout", "3", input=line)
        done()
        assert (result.returncode, result.stdout) == (0, line), result.stderr

    def test_client_says_when_the_server_closes_early(run):
        """A peer that reads everything and closes without a word: exit 1, with how much
        came back of how much was sent."""
        port, done = one_shot_server(lambda conn: read_to_end(conn, 10))
        result = run("client", "--port", str(port), input=b"anyone?\n")
        done()
        assert result.returncode == 1
        assert result.stderr == ("client: connection closed by 127.0.0.1:%d after 0 of 8 "
                                 "bytes\n" % port)

    @SIGNALS
    def test_client_stops_on_a_signal_while_waiting_on_stdin(serve, start, signo):
        """Connected, with nothing typed yet: the client waits on its input and the socket
        at once. A stop signal ends it at once (exit 1: its input was not all echoed)."""
        server = serve()
        client = start("client", *address_args(server), ready=False)
        server.expect(r" connected")
        wait_until(lambda: process_state(client.pid) == "S", what="the client waiting")
        began = time.monotonic()
        client.send_signal(signo)
        assert client.wait(10) == 1
        assert time.monotonic() - began < STOP_WITHIN
        assert client.stderr == ""

    def test_client_stops_on_a_signal_while_waiting_for_a_reply(start):
        """A line sent to a server that never answers, the input still open: SIGTERM ends
        the client at once, long before its --timeout."""
        with socket.create_server(("127.0.0.1", 0)) as silent:
            client = start("client", "--port", str(silent.getsockname()[1]), "--timeout",
                           "60", ready=False)
            client.write(b"anyone?\n")
            conn, _ = silent.accept()
            with conn:
                assert recv_exactly(conn, 8) == b"anyone?\n"
                began = time.monotonic()
                client.send_signal(signal.SIGTERM)
                assert client.wait(10) == 1
                assert time.monotonic() - began < STOP_WITHIN

    @pytest.mark.faults
    @pytest.mark.parametrize("fault", STREAM_FAULTS + [
        fault_many_resets_at_once, fault_max_buffer_in_one_burst,
        more_clients_than_the_limit(8)], ids=fault_name)
    def test_fault_sweep(serve, fault):
        """One misbehaving peer against a server with --max-clients 8: a fresh client is
        served within 2 s while it misbehaves and after it has gone, and the server's
        descriptors and memory come back."""
        survive(serve("--max-clients", "8"), fault, within=2.0, memory_mib=8)

    return {name: obj for name, obj in locals().items() if name.startswith("test_")}


def nofile(limit):
    """A preexec function: the program starts with only `limit` descriptors."""
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


def readable(socks):
    """The sockets with something to read (or an end of stream) right now. poll(), since
    select() would fail past FD_SETSIZE, just like the lab's would."""
    poller = select.poll()
    by_fd = {s.fileno(): s for s in socks if s.fileno() != -1}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    return [by_fd[fd] for fd, _ in poller.poll(0)]


def stops_in_time(program, signo=signal.SIGTERM) -> float:
    """Sends `signo`, checks the exit status 0, and returns how long the exit took."""
    began = time.monotonic()
    assert program.stop(signo, timeout=10) == 0, program.describe()
    took = time.monotonic() - began
    assert took < STOP_WITHIN, "stopped after %.1fs" % took
    return took


def peer_of(sock) -> str:
    """The log's name for our end of a connection, as a regex."""
    host, port = sock.getsockname()[:2]
    return re.escape(("[%s]:%d" if ":" in host else "%s:%d") % (host, port))


def flood(server, clients=4):
    """Clients that write as fast as they can and read everything back, each direction in
    a thread of its own, so that the server always has a ready descriptor. Returns (bytes
    echoed so far, a function that ends the flood)."""
    socks = [connect(server.address, timeout=10) for _ in range(clients)]
    done, echoed = threading.Event(), [0]

    def write(s):
        chunk = b"f" * 65536
        try:
            while not done.is_set():
                s.sendall(chunk)
        except OSError:
            pass  # the server has gone

    def read(s):
        try:
            while piece := s.recv(65536):
                echoed[0] += len(piece)
        except OSError:
            pass

    threads = [threading.Thread(target=f, args=(s,), daemon=True)
               for s in socks for f in (write, read)]
    for t in threads:
        t.start()

    def end():
        done.set()
        for s in socks:
            shut(s)  # wakes a thread blocked in sendall() or recv() on it, as close() does not
            s.close()
        for t in threads:
            t.join(10)
    return echoed, end


@contextlib.contextmanager
def slow_reader(server):
    """A client that sends 8 MiB and reads its echo 4 KiB every 50 ms, so the server always
    has an echo to write; yields [bytes received so far]."""
    s = socket.socket(server.family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(server.sockaddr)
    s.settimeout(10)
    stop, received = threading.Event(), [0]

    def slow_read():
        try:
            while not stop.is_set() and (piece := s.recv(4096)):
                received[0] += len(piece)
                time.sleep(0.05)  # the pace of a slow reader
        except OSError:
            pass

    def write():
        try:
            s.sendall(b"s" * (8 << 20))
        except OSError:
            pass  # the server has gone

    threads = [threading.Thread(target=f, daemon=True) for f in (slow_read, write)]
    for t in threads:
        t.start()
    try:
        yield received
    finally:
        stop.set()
        shut(s)
        s.close()
        for t in threads:
            t.join(10)


def one_shot_server(behave):
    """A listening socket on a fresh port and a thread that accepts one connection and
    hands it to `behave(conn)`. Returns (port, a function that waits for the thread)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve_one():
        try:
            conn, _ = listener.accept()
            with conn:
                behave(conn)
        except OSError:
            pass
        finally:
            listener.close()

    t = threading.Thread(target=serve_one, daemon=True)
    t.start()
    return port, lambda: t.join(10)


def shut(sock) -> None:
    """shutdown(SHUT_RDWR), which ends the calls other threads are blocked in on `sock`."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # not connected any more
