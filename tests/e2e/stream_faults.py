"""Peers that misbehave, for the fault sweeps of the TCP echo labs (03, 04): each
fault_* function does one bad thing to a server at `address` (a ready line's Address)
and returns the sockets it must keep open while a fresh client is served."""

import os
import select
import socket
import struct
import threading

from conftest import recv_exactly, tcp_connect

MIB = 1 << 20


def roundtrip(address, payload: bytes, timeout: float = 10.0) -> bytes:
    """Sends `payload` from a thread while reading the echo, as a real peer must: a peer
    that wrote everything first and read afterwards would deadlock on full buffers."""
    with tcp_connect(address, timeout) as s:
        writer = threading.Thread(target=s.sendall, args=(payload,), daemon=True)
        writer.start()
        echoed = recv_exactly(s, len(payload))
        writer.join(timeout)
        return echoed

def served(address, timeout: float = 10.0) -> bool:
    """A fresh client gets its echo (within `timeout`: the server may first have to drop
    a stalled peer)."""
    with tcp_connect(address, timeout) as s:
        s.sendall(b"ping\n")
        return recv_exactly(s, 5) == b"ping\n"

def linger_reset(s: socket.socket) -> None:
    """Closes with SO_LINGER 0: the kernel sends RST instead of FIN."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()

def stuff_without_reading(s: socket.socket, cap: int = 64 * MIB) -> None:
    """Writes until neither side's buffers take more: the server is then blocked writing
    its echo to us, because we never read."""
    s.setblocking(False)
    chunk = b"z" * 65536
    sent = 0
    while sent < cap:
        try:
            sent += s.send(chunk)
        except BlockingIOError:
            if not select.select([], [s], [], 0.5)[1]:
                break  # nothing moved for half a second: everything is full
    s.setblocking(True)

def fault_random_bytes(address):
    payload = os.urandom(256 * 1024)
    assert roundtrip(address, payload) == payload

def fault_zero_bytes(address):
    tcp_connect(address).close()

def fault_megabyte_without_newline(address):
    payload = b"m" * MIB
    assert roundtrip(address, payload) == payload

def fault_silent_peer(address):
    return [tcp_connect(address)]

def fault_half_message_then_stall(address):
    s = tcp_connect(address)
    s.sendall(b"half a mess")
    assert recv_exactly(s, 11) == b"half a mess"
    return [s]

def fault_reset_mid_transfer(address):
    s = tcp_connect(address)
    s.sendall(b"r" * 300000)
    linger_reset(s)

def fault_half_close(address):
    with tcp_connect(address) as s:
        s.sendall(b"bye\n")
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(100):
            data += chunk
        assert data == b"bye\n"

def fault_never_reads(address):
    s = tcp_connect(address)
    stuff_without_reading(s)
    return [s]
