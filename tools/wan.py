"""A WAN-emulating TCP proxy on loopback: one-way delay, link capacity shared by all connections, and a
per-connection window, as a long-distance TCP link behaves.

    proxy = WanProxy(target_port, delay=0.020, capacity=100e6 / 8, window=128 * 1024).start()

- capacity: bytes per second of each direction of the link; every connection shares it (serialisation);
- delay: one-way propagation delay, in seconds, added to every byte (and to its acknowledgement);
- window: bytes a connection may have in flight, unacknowledged, in each direction; a connection's
  throughput is therefore at most window / (2 x delay), as with a TCP window on a long link.

The proxy stops reading from a sender whose window is full, so the sender's own TCP buffers fill and it
blocks, exactly as on a real link. Bytes carried in each direction are counted.
"""

import collections
import socket
import threading
import time
from typing import Deque, List, Optional, Tuple

PIECE = 16 * 1024


class Link:
    """One direction of the link: bytes leave one after the other at ``capacity`` bytes per second."""

    def __init__(self, capacity: Optional[float]):
        self.capacity = capacity
        self._next_free = 0.0
        self._lock = threading.Lock()
        self.bytes = 0

    def send(self, n: int) -> float:
        """Reserves the link for ``n`` bytes; returns when their last byte has left."""
        with self._lock:
            self.bytes += n
            now = time.monotonic()
            if not self.capacity:
                return now
            start = max(now, self._next_free)
            self._next_free = start + n / self.capacity
            return self._next_free


class _Pipe:
    """One direction of one connection: reader (window, link), delay line, writer."""

    def __init__(self, src: socket.socket, dst: socket.socket, link: Link, delay: float, window: int,
                 on_close):
        self.src, self.dst, self.link, self.delay, self.window = src, dst, link, delay, window
        self.on_close = on_close
        self.cond = threading.Condition()
        self.in_flight = 0
        self.queue: Deque[Tuple[float, bytes]] = collections.deque()
        self.acks: Deque[Tuple[float, int]] = collections.deque()
        self.eof = False
        self.closed = False

    def start(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._write, daemon=True).start()

    def _read(self) -> None:
        try:
            while True:
                with self.cond:
                    while True:
                        now = time.monotonic()
                        while self.acks and self.acks[0][0] <= now:
                            self.in_flight -= self.acks.popleft()[1]
                        if self.closed:
                            return
                        room = self.window - self.in_flight
                        if room > 0:
                            break
                        wait = (self.acks[0][0] - now) if self.acks else None
                        self.cond.wait(wait)
                data = self.src.recv(min(PIECE, room))
                if not data:
                    break
                deliver = self.link.send(len(data)) + self.delay
                with self.cond:
                    self.in_flight += len(data)
                    self.queue.append((deliver, data))
                    self.cond.notify_all()
        except OSError:
            pass
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    def _write(self) -> None:
        try:
            while True:
                with self.cond:
                    while not self.queue and not self.eof and not self.closed:
                        self.cond.wait()
                    if self.closed or (not self.queue and self.eof):
                        break
                    deliver, data = self.queue.popleft()
                pause = deliver - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                self.dst.sendall(data)
                with self.cond:
                    self.acks.append((deliver + self.delay, len(data)))
                    self.cond.notify_all()
            if not self.closed:
                self.dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self.on_close()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()


class WanProxy:
    def __init__(self, target_port: int, delay: float = 0.020, capacity: Optional[float] = 100e6 / 8,
                 window: int = 128 * 1024, target_host: str = "127.0.0.1"):
        self.target = (target_host, target_port)
        self.delay = delay
        self.window = window
        self.upstream = Link(capacity)  # client to target
        self.downstream = Link(capacity)  # target to client
        self.port = 0
        self._listener: Optional[socket.socket] = None
        self._sockets: List[socket.socket] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> "WanProxy":
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True, name="wan-accept").start()
        return self

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
                server = socket.create_connection(self.target, timeout=10)
            except OSError:
                if self._stopped.is_set():
                    return
                continue
            server.settimeout(None)
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                # Small kernel buffers, so that the emulated window, not the kernel's, limits the flow.
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            with self._lock:
                self._sockets += [client, server]
            closed = [0]

            def on_close(c=client, s=server, count=closed) -> None:
                count[0] += 1
                if count[0] == 2:
                    for sock in (c, s):
                        try:
                            sock.close()
                        except OSError:
                            pass

            _Pipe(client, server, self.upstream, self.delay, self.window, on_close).start()
            _Pipe(server, client, self.downstream, self.delay, self.window, on_close).start()

    def stop(self) -> None:
        self._stopped.set()
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            try:
                s.close()
            except OSError:
                pass

    @property
    def bytes(self) -> Tuple[int, int]:
        """(client to target, target to client) bytes carried so far."""
        return self.upstream.bytes, self.downstream.bytes
