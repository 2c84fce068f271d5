"""The load generator measures what it claims to: a short run against lab 01 (UDP) and
against echo servers written here in Python (TCP; one of them forks, one corrupts a byte).

Each run lasts about half a second; the whole file takes a few seconds. The generator is
built by `scripts/bench --build-loadgen` into LABS_BIN/bench/ (default build/bench/) when
it is missing or older than its source.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("LABS_BIN") or REPO / "build").resolve()
SHORT = ["--duration", "0.5", "--warmup", "0.1", "--timeout", "2", "--json"]
TIMEOUT = 30.0  # seconds any one program may take; a healthy run takes about one


@pytest.fixture(scope="module")
def loadgen():
    path = BIN / "bench" / "loadgen"
    build = subprocess.run([sys.executable, str(REPO / "scripts" / "bench"), "--build-loadgen",
                            "--build", str(BIN)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, "could not build the load generator:\n" + build.stderr
    return path


def run_loadgen(loadgen, *args):
    """Runs the generator to completion; returns (exit status, parsed JSON or None, stderr)."""
    result = subprocess.run([str(loadgen), *[str(a) for a in args]], capture_output=True,
                            text=True, timeout=TIMEOUT, start_new_session=True)
    lines = result.stdout.strip().splitlines()
    report = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else None
    return result.returncode, report, result.stderr


def assert_clean(report):
    assert report["errors"] == 0, report["first_error"]
    assert report["lost"] == 0 and report["unfinished"] == 0, report
    assert report["first_error"] == ""


def assert_latencies_ordered(report):
    quantiles = [report[k] for k in ("lat_p50_us", "lat_p90_us", "lat_p99_us", "lat_p999_us",
                                     "lat_max_us")]
    assert 0 < quantiles[0], report
    assert quantiles == sorted(quantiles), quantiles


class Started:
    """A program started in its own process group, stopped (group and all) at the end."""

    def __init__(self, argv):
        self.proc = subprocess.Popen([str(a) for a in argv], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)
        line = self._first_line()
        assert line.startswith("ready: "), "want a ready line, got %r" % line
        self.port = int(line.rsplit(":", 1)[1])

    def _first_line(self):
        result = []
        reader = threading.Thread(target=lambda: result.append(self.proc.stdout.readline()),
                                  daemon=True)
        reader.start()
        reader.join(10)
        assert result, "no ready line within 10 s from %s" % self.proc.args
        return result[0].strip()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            status = self.proc.wait(5)
        finally:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait(5)
        return status


@pytest.fixture
def started():
    programs = []

    def start(*argv):
        p = Started(argv)
        programs.append(p)
        return p

    yield start
    for p in programs:
        p.stop()


# A Python echo server: threads, or a process per connection (like lab 04), or one that
# flips a bit in the 200th byte it echoes, to show the check notices.
PY_SERVER = textwrap.dedent("""
    import os, signal, socket, socketserver, sys
    mode = sys.argv[1]
    class Echo(socketserver.BaseRequestHandler):
        def handle(self):
            sent = 0
            while True:
                data = bytearray(self.request.recv(65536))
                if not data:
                    return
                if mode == "corrupt" and sent <= 199 < sent + len(data):
                    data[199 - sent] ^= 0x20
                sent += len(data)
                self.request.sendall(data)
    base = socketserver.ForkingTCPServer if mode == "fork" else socketserver.ThreadingTCPServer
    base.allow_reuse_address = True
    base.daemon_threads = True
    server = base(("127.0.0.1", 0), Echo)
    signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
    print("ready: tcp 127.0.0.1:%d" % server.server_address[1], flush=True)
    server.serve_forever()
""")


def python_server(started, mode):
    return started(sys.executable, "-c", PY_SERVER, mode)


def test_udp_against_lab01(loadgen, started):
    server_bin = BIN / "01-udp-echo" / "server"
    if not os.access(server_bin, os.X_OK):
        pytest.fail("%s is not built" % server_bin, pytrace=False)
    server = started(server_bin, "--port", "0", "--quiet")
    status, report, stderr = run_loadgen(loadgen, "--udp", "--port", server.port,
                                         "--connections", 4, "--depth", 2,
                                         "--server-pid", server.proc.pid, *SHORT)
    assert status == 0, stderr
    assert report["proto"] == "udp" and report["joined"] == 4
    assert report["round_trips"] > 100, report
    assert_clean(report)
    assert_latencies_ordered(report)
    assert report["server_procs"] == 1
    assert report["server_cpu_s"] > 0, "the server's CPU time was not read"
    assert report["server_rss_kib"] > 0


def test_tcp_against_python_echo(loadgen, started):
    server = python_server(started, "threads")
    status, report, stderr = run_loadgen(loadgen, "--port", server.port, "--connections", 3,
                                         "--depth", 2, "--size", 100,
                                         "--server-pid", server.proc.pid, *SHORT)
    assert status == 0, stderr
    assert report["proto"] == "tcp" and report["joined"] == 3
    assert report["round_trips"] > 50, report
    assert report["rt_per_s"] > 0
    assert_clean(report)
    assert_latencies_ordered(report)
    assert report["connect_max_ms"] > 0
    assert report["cpu_us_per_rt"] > 0


def test_cpu_of_forked_children_is_counted(loadgen, started):
    server = python_server(started, "fork")
    status, report, stderr = run_loadgen(loadgen, "--port", server.port, "--connections", 3,
                                         "--server-pid", server.proc.pid, *SHORT)
    assert status == 0, stderr
    assert_clean(report)
    # The parent and one child per connection; the children do all the echoing, so the
    # CPU time would be near zero if only the parent were counted.
    assert report["server_procs"] == 4, report
    assert report["server_cpu_s"] > 0.05, report


def test_a_changed_byte_is_an_error(loadgen, started):
    server = python_server(started, "corrupt")
    status, report, stderr = run_loadgen(loadgen, "--port", server.port, "--size", 64, *SHORT)
    assert report is not None, stderr
    assert report["errors"] == 1, report
    # Byte 199 of the stream is byte 7 of message 3 (64-byte messages, counted from 0).
    assert "message 3 byte 7" in report["first_error"], report["first_error"]
    assert status == 0  # the join message came back intact: the run itself completed


def test_idle_mode_holds_every_connection(loadgen, started):
    # socketserver listens with a backlog of 5: join a few at a time, as the bench does
    # with the labs (a full backlog drops SYNs, and a dropped SYN waits a second).
    server = python_server(started, "threads")
    status, report, stderr = run_loadgen(loadgen, "--port", server.port, "--idle",
                                         "--connections", 20, "--connect-batch", 4,
                                         "--server-pid", server.proc.pid,
                                         "--json")
    assert status == 0, stderr
    assert report["mode"] == "idle"
    assert report["held"] == 20 and report["errors"] == 0, report
    assert report["rss_after_kib"] > 0


def test_nothing_listening_fails_with_a_reason(loadgen):
    with socket.socket() as probe:  # a port that was free a moment ago: nobody listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    status, report, stderr = run_loadgen(loadgen, "--port", port, *SHORT)
    assert status == 1
    assert report["errors"] == 1 and "Connection refused" in report["first_error"]
    assert stderr.startswith("loadgen: no connection to 127.0.0.1:%d" % port), stderr


@pytest.mark.parametrize("args, reason", [
    ([], "--port N is required"),
    (["--port", "9"], None),
    (["--port", "9", "--host", "192.0.2.1"], "only loopback"),
    (["--port", "9", "--udp", "--size", "8"], "at least 17"),
    (["--port", "9", "--connections", "0"], "--connections"),
    (["--port", "9", "--bogus"], "--bogus"),
])
def test_bad_arguments_exit_2(loadgen, args, reason):
    if reason is None:  # the control: a valid command line gets past argument checks
        status, _, stderr = run_loadgen(loadgen, *args, "--duration", "0.05", "--timeout", "0.5")
        assert status != 2, stderr
        return
    status, _, stderr = run_loadgen(loadgen, *args)
    assert status == 2
    assert reason in stderr and "usage: loadgen" in stderr, stderr
