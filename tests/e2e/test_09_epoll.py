"""Lab 09: the epoll echo server, in both --mode lt and --mode et.

What every echo server promises, and what every event-loop server promises on top, is
tested by the echo contract (echo_contract.py), once per mode; here, what epoll brings:
fairness when one client never pauses (edge-triggered reads must not drain one client
forever), signals seen in a busy loop, and ten thousand connections.
"""

import resource
import signal
import threading
import time

import pytest

from conftest import connect, open_fds, recv_exactly, rss_kib, wait_until
from echo_contract import EchoLab, echo_contract
from faults import echoes

LAB = EchoLab(
    concurrent=200,
    event_loop=True,
    out_of_descriptors="pause",
    variants={"lt": ["--mode", "lt"], "et": ["--mode", "et"]},
    idle_timeout=True,
    logs={"connected": r"^client PEER connected: fd \d+$", "bytes": r"^from PEER: \d+ bytes$",
          "left": r"^client PEER left after \d+ bytes$",
          "reset": r"^client PEER dropped: (Connection reset by peer|Broken pipe)$",
          "busy": r"^refused PEER: server busy$", "stop": r"^stopping on SIG(TERM|INT)$"},
    help_mentions={"server": [b"--mode lt|et"]},
    bad_arguments=[("server", args) for args in (
        ["--mode", "xt"], ["--mode"], ["--max-buffer", "0"], ["--max-clients", "0"],
        ["--max-clients", "many"], ["--port", "70000"], ["--port", "nine"], ["--bogus"],
        ["1", "2"], ["--quiet=yes"])] + [("client", ["--port", "99999"])],
)
globals().update(echo_contract(LAB))


def test_fast_sender_does_not_starve_others(serve):
    """A client streams as fast as it can, reading its echo; another still gets each of
    ten echoes within 2 s."""
    server = serve("--quiet")
    stop = threading.Event()
    flood = connect(server.address)

    def pump():
        chunk = b"f" * 65536
        try:
            while not stop.is_set():
                flood.sendall(chunk)
                recv_exactly(flood, len(chunk))
        except OSError:
            pass

    t = threading.Thread(target=pump)
    t.start()
    try:
        for _ in range(10):
            began = time.monotonic()
            echoes(server)
            assert time.monotonic() - began < 2.0
    finally:
        stop.set()
        t.join(10)
        flood.close()


def test_stop_signal_during_heavy_traffic(serve):
    """SIGINT and SIGTERM are blocked outside epoll_pwait(): a loop that never sleeps
    still sees them, and SIGTERM ends the server with status 0 under four busy clients."""
    server = serve("--quiet")
    stop = threading.Event()

    def pump():
        try:
            with connect(server.address) as s:
                while not stop.is_set():
                    s.sendall(b"z" * 4096)
                    recv_exactly(s, 4096)
        except (OSError, AssertionError):
            pass

    threads = [threading.Thread(target=pump) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        assert server.stop(signal.SIGTERM, timeout=5) == 0
    finally:
        stop.set()
        for t in threads:
            t.join(10)


@pytest.mark.slow
def test_ten_thousand_connections(serve):
    """Ten thousand idle connections at once: each costs the server less than 300 bytes
    of resident memory, a sample of them is served, and all close cleanly."""
    wanted = 10000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted + 500:
        pytest.skip("RLIMIT_NOFILE hard limit %d is below %d" % (hard, wanted + 500))
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the server inherits it too
    socks = []
    try:
        server = serve("--quiet")
        baseline = open_fds(server.pid)
        echoes(server)
        before = rss_kib(server.pid)
        for _ in range(wanted):
            socks.append(connect(server.address))
        wait_until(lambda: open_fds(server.pid) >= baseline + wanted, timeout=10, interval=0.1,
                   what="%d connections accepted" % wanted)
        per_conn = (rss_kib(server.pid) - before) * 1024 / wanted
        print("\nresident memory per idle connection: %.0f bytes" % per_conn)
        assert per_conn < 300, "%.0f bytes of resident memory per idle connection" % per_conn
        for s in socks[::1000] + socks[-1:]:
            s.sendall(b"are you there\n")
            assert recv_exactly(s, 14) == b"are you there\n"
        echoes(server)
        for s in socks:
            s.close()
        socks.clear()
        wait_until(lambda: open_fds(server.pid) == baseline, timeout=10, what="all closed")
    finally:
        for s in socks:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
