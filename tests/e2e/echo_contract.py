"""The echo-server contract: what every TCP echo lab promises (03, 04, 05, 07, 08, 09, and
12 in stream mode), written once; and, in its second part, what the event-loop servers
(07, 08, 09) promise on top.

A lab's test file says what its server is like and takes the contract's tests as its own:

    LAB = EchoLab(concurrent=20, bad_arguments=[("server", ["--port", "70000"])])
    globals().update(echo_contract(LAB))

pytest then collects test_client_echoes_each_line and the rest as tests of that file (and
so of that lab); the file itself holds only what its lab adds. Among what the contract
gives is the fixture `serve`: `serve("--quiet")` starts the lab's server at a fresh
address (port 0, or a new socket path) and waits for its ready line.
"""

import itertools
import os
import re
import resource
import select
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field

import pytest

from conftest import (connect, cpu_seconds, exchange, needs_ipv6, open_fds,
                      process_state, read_to_end, recv_exactly, roundtrip, rss_kib, sanitized,
                      wait_until)
from faults import (BUSY, MIB, STREAM_FAULTS, echoes, fault_many_resets_at_once, fault_name,
                    fault_max_buffer_in_one_burst, more_clients_than_the_limit, reset,
                    stuff_without_reading, survive)

SIGNALS = pytest.mark.parametrize("signo", [signal.SIGTERM, signal.SIGINT],
                                  ids=["SIGTERM", "SIGINT"])


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
        (the client is held back long before 16 MiB), serves others within 2 s each, and
        stays small (less than 6 MiB more)."""
        server = serve("--quiet")
        echoes(server)
        before = rss_kib(server.pid)
        hog = socket.socket(server.family, socket.SOCK_STREAM)
        hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # little room our side
        hog.connect(server.sockaddr)
        try:
            sent = stuff_without_reading(hog, cap=16 * MIB)
            assert sent < 16 * MIB, "the server kept reading from a client that never reads"
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
