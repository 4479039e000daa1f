"""The WAN emulator carries every byte, in order, both ways, and counts them (no timings asserted here:
the benchmark measures them)."""

import hashlib
import os
import socket
import threading

from tools.wan import Link, WanProxy


def serve_once(payload: bytes):
    """A server that reads the client's bytes, answers their MD5 and then ``payload``."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    received = {}

    def run():
        conn, _ = listener.accept()
        data = b""
        while len(data) < 300_000:
            piece = conn.recv(65536)
            if not piece:
                break
            data += piece
        received["md5"] = hashlib.md5(data).hexdigest()
        conn.sendall(hashlib.md5(data).hexdigest().encode() + payload)
        conn.close()
        listener.close()

    threading.Thread(target=run, daemon=True).start()
    return listener.getsockname()[1], received


def test_bytes_cross_intact_both_ways_and_are_counted():
    upload, download = os.urandom(300_000), os.urandom(500_000)
    port, received = serve_once(download)
    proxy = WanProxy(port, delay=0.002, capacity=50e6, window=32 * 1024).start()
    try:
        with socket.create_connection(("127.0.0.1", proxy.port)) as c:
            c.sendall(upload)
            answer = b""
            while True:
                piece = c.recv(65536)
                if not piece:
                    break
                answer += piece
        assert answer[:32].decode() == hashlib.md5(upload).hexdigest()
        assert answer[32:] == download
        assert proxy.bytes == (len(upload), len(download) + 32)
    finally:
        proxy.stop()


def test_link_serialises_senders_at_its_capacity():
    link = Link(1000.0)  # bytes per second
    first = link.send(500)
    second = link.send(500)
    assert round(second - first, 3) == 0.5  # the second waits for the first to leave the link
    assert link.bytes == 1000
    unlimited = Link(None)
    assert unlimited.send(10**9) <= unlimited.send(1) + 1e-3
