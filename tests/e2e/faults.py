"""Peers that misbehave, and the one way a fault sweep runs them.

A fault sweep is one test per fault, marked `faults`, so that each fault counts alone:

    @pytest.mark.faults
    @pytest.mark.parametrize("fault", STREAM_FAULTS, ids=fault_name)
    def test_fault_sweep(start, fault):
        survive(start("server", "--port", "0", "--quiet"), fault)

A fault takes the running server (a conftest Program: its address may be TCP over IPv4
or IPv6, a Unix socket path or an abstract name; the same fault serves them all), does
one bad thing to it and returns the sockets it leaves open. survive() then checks what
every server promises whatever its peers do: it keeps serving, and what the fault took
(descriptors, threads, memory) comes back.
"""

import array
import contextlib
import os
import select
import signal
import socket
import struct
import threading
import time

import pytest

from conftest import (accept_queue, connect, exchange, open_fds, read_to_end, recv_exactly,
                      roundtrip, rss_kib, sanitized, thread_count, udp_socket, wait_until)

MIB = 1 << 20
BUSY = b"server busy\n"
MAX_IPV4_PAYLOAD = 65507
# The largest datagram a server takes: what IPv4 carries, or lab 12's 64 KiB buffer.
LARGEST_DATAGRAM = {socket.AF_INET: MAX_IPV4_PAYLOAD, socket.AF_UNIX: 65536}


def fault_name(fault) -> str:
    """The test id of a fault: its function name without the fault_ prefix."""
    return fault.__name__.split("fault_", 1)[1]


# ------------------------------------------------------------------- the sweep

def echoes(server) -> None:
    """A fresh client's conversation comes back whole: the server still serves."""
    payload = b"fresh client\n" * 100
    assert roundtrip(server.address, payload) == payload, "a fresh client was not echoed"


def survive(server, fault, *args, served=echoes, within=10.0, idle=None, memory_mib=32):
    """Runs `fault(server, *args)` against a server just started, then checks that it
    survived: a fresh client is `served` within `within` seconds while the fault's sockets
    are still open and again once they are closed; the server's descriptors come back to
    what it had when idle and its threads to their count before the fault; its resident
    memory grows by less than `memory_mib` (six times that under AddressSanitizer);
    SIGTERM still stops it with status 0. `idle()` says when the server has finished with
    its clients (lab 04: no children)."""
    def settled():
        return (idle is None or idle()) and accept_queue(server.address) == 0

    def served_in_time():
        began = time.monotonic()
        served(server)
        took = time.monotonic() - began
        assert took < within, "a fresh client waited %.1fs (at most %.1fs)" % (took, within)

    fds = open_fds(server.pid)  # a fresh server: its own descriptors only
    served(server)
    wait_until(lambda: settled() and open_fds(server.pid) == fds, timeout=10,
               what="the server idle again after a first client")
    threads, rss = thread_count(server.pid), rss_kib(server.pid)  # a sanitizer's are up
    try:
        held = fault(server, *args) or []
        try:
            if held:
                served_in_time()
        finally:
            for s in held:
                s.close()
        wait_until(lambda: settled() and open_fds(server.pid) == fds
                   and thread_count(server.pid) == threads, timeout=10,
                   what="descriptors back to %d and threads to %d" % (fds, threads))
        served_in_time()
        grown = rss_kib(server.pid) - rss
        budget = memory_mib * 1024 * (6 if sanitized(server.pid) else 1)
        assert grown < budget, "resident memory grew by %d KiB" % grown
    except AssertionError as e:
        raise AssertionError("%s: %s (%s)" % (fault_name(fault), e, fault.__doc__)) from e
    assert server.proc.poll() is None, "the server died"
    assert server.stop() == 0


# ------------------------------------------------------- stream peers (any family)

def reset(sock: socket.socket) -> None:
    """Closes with SO_LINGER 0: TCP sends RST instead of FIN. (A Unix socket has no RST:
    closing with data unread makes the server's next write fail with EPIPE instead.)"""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def stuff_without_reading(sock: socket.socket, cap: int = 64 * MIB) -> int:
    """Writes, never reading, until nothing moves for half a second: every buffer on the
    way is full and the server can only wait to write its echo to us. Returns the bytes
    written."""
    sock.setblocking(False)
    chunk, sent = b"z" * 65536, 0
    try:
        while sent < cap:
            try:
                sent += sock.send(chunk)
            except BlockingIOError:
                if not select.select([], [sock], [], 0.5)[1]:
                    break
    except OSError:
        pass  # the server has dropped us already
    sock.setblocking(True)
    return sent


def fault_random_bytes(server):
    """256 KiB of random bytes, NUL and newlines among them: all of them come back."""
    payload = os.urandom(256 * 1024)
    assert roundtrip(server.address, payload) == payload


def fault_zero_bytes(server):
    """Connects, sends nothing and half-closes: nothing comes back, then the end of stream."""
    with connect(server.address) as s:
        s.shutdown(socket.SHUT_WR)
        assert read_to_end(s) == b""


def fault_connect_and_close(server):
    """Fifty clients connect and close at once, before the server has even accepted them."""
    for _ in range(50):
        connect(server.address).close()


def fault_megabyte_without_newline(server):
    """A mebibyte without a newline: a stream has no lines, the echo comes back whole."""
    payload = b"m" * MIB
    assert roundtrip(server.address, payload) == payload


def fault_silent_peer(server):
    """Three clients connect and never say a word, and stay."""
    return [connect(server.address) for _ in range(3)]


def fault_half_message_then_stall(server):
    """Half a line, then nothing more, and stays."""
    s = connect(server.address)
    s.sendall(b"this line never ends")
    return [s]


def fault_reset_mid_transfer(server):
    """Five clients each send 200 KB and reset the connection with the echo unread."""
    for _ in range(5):
        s = connect(server.address)
        s.sendall(os.urandom(200_000))
        reset(s)


def fault_half_close(server):
    """A line, then half-close: the whole echo comes back, then the end of stream."""
    with connect(server.address) as s:
        s.sendall(b"bye\n")
        s.shutdown(socket.SHUT_WR)
        assert read_to_end(s) == b"bye\n"


def fault_never_reads(server):
    """Writes and never reads the echo, until every buffer is full, and stays."""
    s = connect(server.address, timeout=10)
    stuff_without_reading(s)
    return [s]


def fault_many_resets_at_once(server):
    """Fifty clients connect, then all reset together."""
    socks = [connect(server.address) for _ in range(50)]
    for s in socks:
        reset(s)


def fault_max_buffer_in_one_burst(server):
    """A whole --max-buffer (1 MiB) sent before reading anything: it all comes back."""
    payload = os.urandom(MIB)
    with connect(server.address, timeout=10) as s:
        s.sendall(payload)
        assert recv_exactly(s, MIB) == payload


def fault_queue_of_clients_that_left(server):
    """Ten clients queue behind a silent one; each sends a line and leaves unanswered."""
    silent = connect(server.address)
    for _ in range(10):
        with connect(server.address) as s:
            s.sendall(b"gone before served\n")
    return [silent]


def more_clients_than_the_limit(limit: int, busy: bool = True):
    """The fault for a server started with a limit of `limit` clients: `limit` clients are
    served, and each one more is told "server busy" and closed (`busy`), or waits in the
    listen queue until a place is free (lab 04's children)."""
    def fault_more_clients_than_the_limit(server):
        held = [connect(server.address) for _ in range(limit)]
        if not busy:
            return held + [connect(server.address) for _ in range(2)]
        try:
            for s in held:
                assert exchange(s, b"in\n") == b"in\n"
            for _ in range(4):
                with connect(server.address) as extra:
                    assert read_to_end(extra) == BUSY
        finally:
            for s in held:
                s.close()
    fault_more_clients_than_the_limit.__doc__ = (
        "%d clients fill the limit of %d; %s" % (limit + (4 if busy else 2), limit,
                                                 "the rest are told 'server busy'"
                                                 if busy else "the rest wait their turn"))
    return fault_more_clients_than_the_limit


STREAM_FAULTS = [fault_random_bytes, fault_zero_bytes, fault_connect_and_close,
                 fault_megabyte_without_newline, fault_silent_peer,
                 fault_half_message_then_stall, fault_reset_mid_transfer, fault_half_close,
                 fault_never_reads]


# ----------------------------------------------------- lab 06: a reply after the request

def fault_never_reads_reply(server):
    """Sends a 6 MiB request, half-closes and never reads the reply, and stays."""
    s = connect(server.address, timeout=10)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(b"r" * (6 * MIB))  # more than the server's send buffer holds (4 MiB at most)
    s.shutdown(socket.SHUT_WR)
    return [s]


def fault_over_the_limit(server):
    """A 10 MiB request, more than --max-bytes: the server closes on it."""
    s = connect(server.address, timeout=10)
    try:
        s.sendall(b"o" * (10 * MIB))
    except (ConnectionResetError, BrokenPipeError):
        pass  # the server closed after its limit: the point
    s.close()


# ---------------------------------------------- lab 12: descriptors and a full queue

def send_fds(sock: socket.socket, payload: bytes, fds) -> None:
    """Sends `payload` with descriptors attached (SCM_RIGHTS)."""
    sock.sendmsg([payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])


def fault_pipe_descriptor(server):
    """Passes a pipe, where a regular file is expected: reading it would block forever."""
    read_end, write_end = os.pipe()
    try:
        with connect(server.address) as s:
            send_fds(s, b"\0", [read_end])
            s.shutdown(socket.SHUT_WR)
            assert read_to_end(s) == b""
    finally:
        os.close(read_end)
        os.close(write_end)


def fault_too_many_descriptors(server):
    """Passes twenty descriptors at once (of /dev/null, not a regular file)."""
    fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(20)]
    try:
        with connect(server.address) as s:
            send_fds(s, b"\0", fds)
            s.shutdown(socket.SHUT_WR)
            assert read_to_end(s) == b""
    finally:
        for fd in fds:
            os.close(fd)


def fault_descriptor_then_vanish(server):
    """Passes a descriptor and closes at once: the server must still close its copy."""
    fd = os.open(os.devnull, os.O_RDONLY)
    s = connect(server.address)
    send_fds(s, b"\0", [fd])
    s.close()
    os.close(fd)


# ------------------------------------------- datagram peers of an echo server (any family)

def dgram_peer(server, timeout: float = 5.0) -> socket.socket:
    """A datagram socket replies can reach: on an ephemeral loopback port, or (Unix)
    autobound to an abstract name of the kernel's choosing."""
    if server.family != socket.AF_UNIX:
        return udp_socket(server.family, timeout)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    s.bind("")
    return s


def dgram_echoes(server) -> None:
    """A fresh peer gets its datagram back: the server still serves."""
    with dgram_peer(server) as s:
        s.sendto(b"fresh client", server.sockaddr)
        assert s.recv(100) == b"fresh client", "a fresh client was not echoed"


def dgram_fault_many_senders(server):
    """300 senders, each from its own address, each with random bytes of its own size."""
    for i in range(300):
        with dgram_peer(server) as s:
            payload = os.urandom(i * 211 % 9000)
            s.sendto(payload, server.sockaddr)
            assert s.recv(70000) == payload


def dgram_fault_empty_and_largest(server):
    """An empty datagram and one of the largest size the server takes: both echoed."""
    largest = LARGEST_DATAGRAM[server.family]
    with dgram_peer(server) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * largest)
        for size in (0, largest):
            s.sendto(b"z" * size, server.sockaddr)
            assert s.recv(largest + 1) == b"z" * size


def dgram_fault_oversized(server):
    """A datagram 1000 bytes over the largest the server takes: dropped, and the next is
    echoed."""
    with dgram_peer(server) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 65536)
        s.sendto(b"o" * (LARGEST_DATAGRAM[server.family] + 1000), server.sockaddr)
        s.sendto(b"after", server.sockaddr)
        assert s.recv(65536) == b"after"


def dgram_fault_truncating_receiver(server):
    """Reads 10 bytes of a 60000-byte echo: its own kernel discards the rest."""
    with dgram_peer(server) as s:
        s.sendto(b"y" * 60000, server.sockaddr)
        assert len(s.recv(10)) == 10


def dgram_fault_vanished_senders(server):
    """Fifty senders close before their echo comes: it meets a closed address."""
    for _ in range(50):
        s = dgram_peer(server)
        s.sendto(b"gone before the reply", server.sockaddr)
        s.close()


def dgram_fault_unbound_sender(server):
    """A Unix sender with no address of its own: there is nowhere to reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(b"anonymous", server.sockaddr)


def dgram_fault_never_reads(server):
    """Sends a hundred datagrams and never reads an echo, and stays."""
    hog = dgram_peer(server)
    for _ in range(100):
        hog.sendto(b"h", server.sockaddr)
    return [hog]


def fault_stray_signals(server):
    """Twenty SIGWINCH, then SIGSTOP and SIGCONT, while the server waits in a system call:
    it retries the interrupted call."""
    for _ in range(20):
        os.kill(server.pid, signal.SIGWINCH)  # ignored by default: the call goes on
    os.kill(server.pid, signal.SIGSTOP)
    os.kill(server.pid, signal.SIGCONT)


DGRAM_FAULTS = [dgram_fault_many_senders, dgram_fault_empty_and_largest,
                dgram_fault_truncating_receiver, dgram_fault_vanished_senders,
                dgram_fault_never_reads, fault_stray_signals]


# ------------------------------------- datagrams to a receiver (labs 10, 11): fault(r, send)

def receiver_fault_random_bytes(receiver, send):
    """512 random bytes (no newline, which would split the printed line)."""
    payload = os.urandom(512).replace(b"\n", b".")
    send(payload)
    assert receiver.read_line() == payload


def receiver_fault_empty(receiver, send):
    """An empty datagram: a message too, printed as an empty line."""
    send(b"")
    assert receiver.read_line() == b""


def receiver_fault_nul_bytes(receiver, send):
    """A hundred NUL bytes: printed as they are, nothing cut at the first."""
    send(b"\0" * 100)
    assert receiver.read_line() == b"\0" * 100


def receiver_fault_largest(receiver, send):
    """Thirty datagrams of the largest IPv4 payload, 65507 bytes."""
    for _ in range(30):
        send(b"y" * MAX_IPV4_PAYLOAD)
        assert receiver.read_line() == b"y" * MAX_IPV4_PAYLOAD


def receiver_fault_oversized(receiver, send):
    """One byte over what IPv4 carries: refused by the sending kernel, never received."""
    with pytest.raises(OSError):
        send(b"x" * (MAX_IPV4_PAYLOAD + 1))


def receiver_fault_many_source_ports(receiver, send):
    """200 senders, each from its own port: the receiver keeps nothing per sender."""
    for i in range(200):
        send(b"port %d" % i)
        assert receiver.read_line() == b"port %d" % i


RECEIVER_FAULTS = [receiver_fault_random_bytes, receiver_fault_empty, receiver_fault_nul_bytes,
                   receiver_fault_largest, receiver_fault_oversized,
                   receiver_fault_many_source_ports]


# ------------------------------------------------------------ floods of datagrams

def udp_rx_queue(port: int) -> int:
    """Bytes waiting in the receive queues of the UDP sockets bound to `port`, from
    /proc/net/udp: what the receivers have not taken yet."""
    total = 0
    with open("/proc/net/udp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                total += int(fields[4].split(":")[1], 16)
    return total


@contextlib.contextmanager
def flooding(port: int, to: str, pause_every: int = 0):
    """Datagrams of 1000 bytes to `to`:`port` (a broadcast or a group address) from a
    thread, as fast as Python sends them (or with a millisecond's pause after every
    `pause_every`), until the block ends."""
    done, sent = threading.Event(), [0]

    def pump():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
            while not done.is_set():
                s.sendto(b"f" * 1000, (to, port))
                sent[0] += 1
                if pause_every and sent[0] % pause_every == 0:
                    time.sleep(0.001)  # the pace of the flood, not a wait for anything

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    try:
        yield sent
    finally:
        done.set()
        thread.join(10)
