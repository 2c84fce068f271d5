"""Lab 03-tcp-echo: an iterative TCP echo server (one client at a time) and its client.

What every echo server promises is tested by the echo contract (echo_contract.py); here,
what this lab adds: its log lines, --quiet, positional arguments, the idle timeout, the
getaddrinfo() loop it writes by hand, SO_REUSEADDR and the backlog, stopping whatever the
server is doing, and the stop-and-wait client that reads while it writes.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import (STOP_WITHIN, Program, connect, cpu_seconds, exchange, lab_of, needs_ipv6,
                      process_state, program_path, read_to_end, wait_until)
from echo_contract import (LINE_16_MIB, EchoLab, echo_contract, flood, nofile, slow_reader,
                           stops_in_time)
from faults import STREAM_FAULTS, echoes, fault_name, fault_queue_of_clients_that_left, survive

LAB = EchoLab(
    concurrent=1,
    idle_timeout=True,
    logs={"connected": r"^client PEER connected$", "bytes": r"^from PEER: \d+ bytes$",
          "left": r"^client PEER left after \d+ bytes$",
          # A reset is one client's trouble: a log line saying why it was dropped.
          "reset": r"^client PEER dropped: (Connection reset by peer|Broken pipe)$",
          "stop": r"^stopping on SIGNAME$"},
    help_mentions={"server": [b"--idle-timeout"], "client": [b"--timeout"]},
    bad_arguments=[
        ("server", ["--port", "70000"]), ("server", ["--no-such-flag"]),
        ("server", ["--idle-timeout", "soon"]), ("server", ["--idle-timeout", "-1"]),
        ("server", ["--idle-timeout", "0"]), ("server", ["1", "2"]),
        ("server", ["--host", "1.2.3.999"], "not an IPv4 or IPv6 address"),
        ("client", ["--port", "nine"]), ("client", ["127.0.0.1", "1", "extra"]),
        ("client", ["--host"]), ("client", ["--timeout", "0"]),
        ("client", ["--timeout", "forever"]),
        ("client", ["--host", "999.1.1.1"], "not an IPv4 or IPv6 address"),
    ],
)
globals().update(echo_contract(LAB))


def silent_listener():
    """A listening socket nobody accepts on: the kernel completes the handshake and queues
    what a client sends, and no reply ever comes."""
    return socket.create_server(("127.0.0.1", 0))


def in_time_wait(port: int) -> bool:
    """A connection with local port `port` in TIME_WAIT (state 06 of /proc/net/tcp)."""
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[3] == "06" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


# ----------------------------------------------------------------- the normal path

def test_positional_arguments(start, run):
    """server [PORT] and client [HOST [PORT]], as in the source notes; -H and -p too."""
    server = start("server", "0")
    result = run("client", server.host, str(server.port), input=b"positional\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"positional\n"
    result = run("client", "-H", server.host, "-p", str(server.port), input=b"short\n")
    assert result.stdout == b"short\n"


def test_server_logs_connect_bytes_and_leave(start):
    """One log line when a client comes, one per read with its size, one when it leaves."""
    server = start("server", "--port", "0")
    with connect(server.address) as s:
        me = re.escape("%s:%d" % s.getsockname())
        assert exchange(s, b"12345") == b"12345"
    server.expect(r"^client %s connected$" % me)
    server.expect(r"^from %s: 5 bytes$" % me)
    server.expect(r"^client %s left after 5 bytes$" % me)


def test_quiet_server_logs_nothing(start):
    """--quiet: the ready line, then nothing."""
    server = start("server", "--port", "0", "--quiet")
    echoes(server)
    assert server.stop() == 0
    assert server.stdout_lines[1:] == []


def test_backlog_is_somaxconn(start):
    """The listen queue is SOMAXCONN long, capped by net.core.somaxconn: ss shows a
    listening socket's backlog as its Send-Q."""
    if not shutil.which("ss"):
        pytest.skip("needs ss (iproute2)")
    server = start("server", "--port", "0")
    with open("/proc/sys/net/core/somaxconn") as f:
        somaxconn = int(f.read())
    out = subprocess.run(["ss", "-Htln", "sport = :%d" % server.port], capture_output=True,
                         text=True, timeout=10).stdout.split()
    assert int(out[2]) == min(somaxconn, 4096), out


# ----------------------------------------------------------------- addresses

def test_server_on_a_name_binds_its_first_address(start, run):
    """--host localhost: getaddrinfo() turns the name into addresses, and the server binds
    the first that works."""
    server = start("server", "--host", "localhost", "--port", "0")
    assert server.host in ("127.0.0.1", "::1"), server.address.text
    result = run("client", "--host", "localhost", "--port", str(server.port), input=b"name\n")
    assert (result.returncode, result.stdout) == (0, b"name\n"), result.stderr


@needs_ipv6
def test_client_tries_each_address_until_one_answers(lab, tmp_path, start):
    """A name with two addresses, ::1 first: the server (on 127.0.0.1 only) refuses the
    first, and the client connects to the second. The name is given in an /etc/hosts of
    the client's own (a mount namespace: root only)."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare for an /etc/hosts of its own")
    server = start("server", "--port", "0")
    hosts = tmp_path / "hosts"
    hosts.write_text("::1 twohomes\n127.0.0.1 twohomes\n")
    script = 'mount --bind "$0" /etc/hosts && exec "$@"'
    client = Program(["unshare", "--mount", "sh", "-c", script, hosts, lab.path("client"),
                      "--host", "twohomes", "--port", str(server.port)], cwd=tmp_path)
    lab.programs.append(client)
    client.write(b"second address\n")
    client.close_stdin()
    assert client.wait(10) == 0, client.describe()
    assert client.stdout_lines == [b"second address"]
    server.expect(r"^client 127\.0\.0\.1:\d+ connected$")


@needs_ipv6
def test_any_address_takes_ipv4_clients_as_mapped_addresses(start, run):
    """--host :: listens on IPv6 and IPv4 alike (net.ipv6.bindv6only is 0): a client that
    comes over IPv4 is logged as an IPv4-mapped address."""
    with open("/proc/sys/net/ipv6/bindv6only") as f:
        if f.read().strip() != "0":
            pytest.skip("net.ipv6.bindv6only is set")
    server = start("server", "--host", "::", "--port", "0")
    assert server.address.text.startswith("[::]:")
    result = run("client", "--host", "127.0.0.1", "--port", str(server.port), input=b"v4\n")
    assert result.stdout == b"v4\n"
    server.expect(r"^client \[::ffff:127\.0\.0\.1\]:\d+ connected$")


@pytest.mark.parametrize("prog", ["server", "client"])
def test_numeric_bad_host_sends_no_dns_query(run, tmp_path, prog):
    """A host that looks like a number is only ever parsed (AI_NUMERICHOST): 999.1.1.1 is
    refused with exit 2, and no socket is opened to ask a resolver about it."""
    if not shutil.which("strace"):
        pytest.skip("needs strace")
    trace = tmp_path / "trace"
    binary = program_path(lab_of(__name__), prog)
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0")  # LeakSanitizer cannot run traced
    out = subprocess.run(["strace", "-f", "-qq", "-o", str(trace), "-e",
                          "trace=socket,connect,sendto,sendmmsg", binary, "--host", "999.1.1.1",
                          "--port", "1"], capture_output=True, timeout=20, env=env)
    assert out.returncode == 2, out.stderr
    assert b"not an IPv4 or IPv6 address" in out.stderr
    calls = trace.read_text()
    assert "socket(" not in calls and "connect(" not in calls, calls


@pytest.mark.parametrize("prog", ["server", "client"])
def test_untrusted_host_text_is_escaped(run, prog):
    """A host argument with control bytes (it has a ':', so it is only parsed, never looked
    up) is written escaped in the error: no escape sequence reaches the terminal, and no
    forged line starts on stderr."""
    result = run(prog, "--host", "::\x1b]0;owned\x07\nready: tcp 6.6.6.6:66", "--port", "1")
    assert result.returncode == 2, result.stderr
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr
    first = result.stderr.splitlines()[0]
    assert first == ("%s: bad host '::\\x1b]0;owned\\x07\\nready: tcp 6.6.6.6:66': "
                     "not an IPv4 or IPv6 address" % prog), first
    assert not any(line.startswith("ready:") for line in result.stderr.splitlines())


# ----------------------------------------------------------------- one client's trouble

def test_idle_client_is_dropped(start):
    """--idle-timeout 0.5: a client silent that long is closed, the server logs why on
    stdout ("client PEER dropped: idle for 0.5s"), nothing on stderr, and the next client
    is served."""
    server = start("server", "--port", "0", "--idle-timeout", "0.5")
    with connect(server.address, timeout=10) as silent:
        me = re.escape("%s:%d" % silent.getsockname())
        assert silent.recv(10) == b""  # the server closed it
    server.expect(r"^client %s dropped: idle for 0\.5s$" % me)
    echoes(server)
    assert server.stderr == ""


def test_tiny_idle_timeout_is_not_forever(start):
    """--idle-timeout 0.0000001 rounds up to a microsecond, never down to a zero timeval
    (which SO_RCVTIMEO takes for "no timeout"): a silent client is dropped at once, and
    the server still serves a client whose bytes are there in time."""
    server = start("server", "--port", "0", "--idle-timeout", "0.0000001")
    with connect(server.address, timeout=10) as silent:
        assert silent.recv(10) == b""
    server.expect(r"dropped: idle for 1e-07s$")
    # A microsecond is too short for a client's bytes to follow its connect (it failed
    # once under load): they and the FIN are sent while the server is stopped, so they
    # wait in the socket before it is accepted.
    payload = b"fresh client\n" * 100
    os.kill(server.pid, signal.SIGSTOP)
    try:
        fresh = connect(server.address, timeout=10)
        fresh.sendall(payload)
        fresh.shutdown(socket.SHUT_WR)
    finally:
        os.kill(server.pid, signal.SIGCONT)
    with fresh:
        assert read_to_end(fresh, timeout=10) == payload


def test_restart_at_once_after_closing_first(start):
    """The server closes first (an idle client dropped), so its end of that connection
    waits in TIME_WAIT on the port; with SO_REUSEADDR a new server binds the port at once."""
    server = start("server", "--port", "0", "--idle-timeout", "0.2")
    port = server.port
    with connect(server.address, timeout=10) as silent:
        assert silent.recv(10) == b""
    wait_until(lambda: in_time_wait(port), what="TIME_WAIT on port %d" % port)
    assert server.stop() == 0
    again = start("server", "--port", str(port))
    assert again.port == port
    echoes(again)


# ----------------------------------------------------------------- stopping


def test_stop_while_flooded(start):
    """A client that writes and reads as fast as it can keeps the server always busy;
    SIGTERM still ends it, with status 0, within a second."""
    server = start("server", "--port", "0", "--quiet")
    echoed, end = flood(server, clients=1)
    try:
        wait_until(lambda: echoed[0] > 4 << 20, timeout=10, what="4 MiB echoed")
        stops_in_time(server)
    finally:
        end()


def test_stop_while_writing_to_a_slow_reader(start):
    """A client sends 8 MiB and reads 4 KiB every 50 ms: the server is always in the
    middle of a write. SIGTERM still ends it within a second, status 0."""
    server = start("server", "--port", "0", "--quiet")
    with slow_reader(server):
        wait_until(lambda: process_state(server.pid) == "S", what="the server blocked writing")
        stops_in_time(server)


def test_out_of_descriptors_neither_spins_nor_ignores_sigterm(start):
    """With four descriptors (the standard three and the listening socket) accept() fails
    with EMFILE for every client. The server says so on stderr, does not spin (less than
    0.3 s of CPU in a second), and still stops on SIGTERM within a second, status 0."""
    server = start("server", "--port", "0", preexec=nofile(4))
    held = [connect(server.address) for _ in range(3)]
    try:
        wait_until(lambda: "Too many open files" in server.stderr, what="the EMFILE report")
        assert re.search(r"^server: accept 127\.0\.0\.1:\d+: Too many open files$",
                         server.stderr, re.M), server.stderr
        busy = cpu_seconds(server.pid)
        time.sleep(1.0)  # measuring CPU use over a second, not waiting for anything
        assert cpu_seconds(server.pid) - busy < 0.3, "the server spins out of descriptors"
        assert server.stderr.count("Too many open files") <= 4  # one a second at most
        stops_in_time(server)
    finally:
        for s in held:
            s.close()


@pytest.mark.parametrize("signo", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_log_names_the_signal(start, signo):
    """The last log line names the signal that stopped the server."""
    server = start("server", "--port", "0")
    assert server.stop(signo) == 0
    assert server.stdout_lines[-1] == b"stopping on " + signal.Signals(signo).name.encode()


# ----------------------------------------------------------------- the client

def test_client_sends_a_16_mib_line_while_it_reads(start, run):
    """One line of 16 MiB, far more than the socket buffers hold: the client reads the
    echo while it writes, so neither side blocks for good, and every byte comes back."""
    server = start("server", "--port", "0", "--quiet")
    result = run("client", "--port", str(server.port), input=LINE_16_MIB, timeout=90)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout) == len(LINE_16_MIB)
    assert result.stdout == LINE_16_MIB


def test_client_gives_up_on_a_silent_server(run):
    """A server that accepts and never answers: with --timeout 1 the client says so and
    exits 1 after about a second, printing nothing."""
    with silent_listener() as quiet:
        port = quiet.getsockname()[1]
        result = run("client", "--port", str(port), "--timeout", "1", input=b"hello?\n")
    assert result.returncode == 1
    assert result.stdout == b""
    assert result.stderr == "client: read 127.0.0.1:%d: no reply within 1s\n" % port
    assert 0.9 < result.seconds < 8, result.seconds


@pytest.mark.parametrize("signo", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_client_stops_on_a_signal_while_it_waits_on_stdin(start, signo):
    """A client connected and waiting for its next line of input stops on SIGTERM or
    SIGINT within a second, exit 1, nothing printed."""
    server = start("server", "--port", "0")
    client = start("client", "--port", str(server.port), ready=False)
    client.write(b"first\n")
    assert client.read_line(10) == b"first"
    wait_until(lambda: process_state(client.pid) == "S", what="the client waiting on stdin")
    began = time.monotonic()
    client.send_signal(signo)
    assert client.wait(10) == 1
    assert time.monotonic() - began < STOP_WITHIN
    assert client.stderr == ""


def test_client_stops_on_sigterm_while_it_waits_for_a_reply(start):
    """A client waiting for an echo that does not come (default --timeout, 10 s) stops on
    SIGTERM within a second."""
    with silent_listener() as quiet:
        client = start("client", "--port", str(quiet.getsockname()[1]), ready=False)
        client.write(b"anyone?\n")
        wait_until(lambda: process_state(client.pid) == "S", what="the client waiting")
        began = time.monotonic()
        client.send_signal(signal.SIGTERM)
        assert client.wait(10) == 1
        assert time.monotonic() - began < STOP_WITHIN


def test_client_exits_1_when_the_reply_is_not_an_echo(run):
    """A server that answers "server busy" (12 bytes) to a 6-byte line and closes: more
    bytes than were sent is not an echo. The client prints what came, and exits 1."""
    with socket.create_server(("127.0.0.1", 0)) as busy:
        def refuse():
            conn, _ = busy.accept()
            with conn:
                conn.sendall(b"server busy\n")
                conn.shutdown(socket.SHUT_WR)
                conn.settimeout(5)
                try:
                    while conn.recv(4096):
                        pass
                except OSError:
                    pass

        t = threading.Thread(target=refuse, daemon=True)
        t.start()
        result = run("client", "--port", str(busy.getsockname()[1]), input=b"hello\n")
        t.join(10)
    assert result.returncode == 1
    assert result.stdout == b"server busy\n"
    assert "sent 12 bytes for the 6 we sent: not an echo" in result.stderr


def test_client_reports_a_server_that_closes_early(run):
    """A server that reads a little and closes without answering: fewer bytes back than
    were sent is no echo either, exit 1."""
    with socket.create_server(("127.0.0.1", 0)) as rude:
        def hang_up():
            conn, _ = rude.accept()
            conn.recv(3)
            conn.close()

        t = threading.Thread(target=hang_up, daemon=True)
        t.start()
        result = run("client", "--port", str(rude.getsockname()[1]), input=b"hello\n")
        t.join(10)
    assert result.returncode == 1
    assert re.search(r"^client: (127\.0\.0\.1:\d+ sent 0 bytes for the 6 we sent: not an echo|"
                     r"(read|write) 127\.0\.0\.1:\d+: Connection reset by peer)$",
                     result.stderr, re.M), result.stderr


# ----------------------------------------------------------------- fault sweep

@pytest.mark.faults
@pytest.mark.parametrize("fault", STREAM_FAULTS + [fault_queue_of_clients_that_left],
                         ids=fault_name)
def test_fault_sweep(start, fault):
    """One misbehaving peer against a server with --idle-timeout 1: a fresh client is
    served (once the server has dropped a stalled peer) while the peer misbehaves and
    after it has gone, and the server's descriptors and memory come back."""
    survive(start("server", "--port", "0", "--idle-timeout", "1", "--quiet"), fault)
