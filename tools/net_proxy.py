"""A TCP proxy on loopback for tests and benchmarks: throttles, corrupts a byte, or drops the link.

    proxy = TcpProxy(target_port, rate=2_000_000).start()   # peers then use proxy.url
    proxy.corrupt_once_at(3_000_000)   # flips one byte of what the target sends, at that offset
    proxy.set_rate(None)                # full speed
    proxy.cut()                         # closes every connection and refuses new ones until restore()

Each direction's rate limit (bytes per second) is shared by all connections, like a link's capacity.
"""

import socket
import threading
import time
from typing import List, Optional

PIECE = 16 * 1024


class TcpProxy:
    def __init__(self, target_port: int, rate: Optional[float] = None, target_host: str = "127.0.0.1",
                 delay: float = 0.0, upstream_rate: Optional[float] = None):
        self.target = (target_host, target_port)
        self.rate = rate
        self.upstream_rate = upstream_rate
        self.delay = delay  # one-way delay added to every piece, in seconds
        self._lock = threading.Lock()
        self._next_free = {True: 0.0, False: 0.0}  # per direction (downstream?): when the link can send again
        self._listener: Optional[socket.socket] = None
        self._connections: List[socket.socket] = []
        self._closed = threading.Event()
        self._refusing = False
        self._corrupt_at: Optional[int] = None
        self.downstream_bytes = 0  # target to client
        self.upstream_bytes = 0  # client to target
        self.corrupted = 0
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> "TcpProxy":
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", self.port))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True, name="proxy-accept").start()
        return self

    def set_rate(self, rate: Optional[float]) -> None:
        """Target-to-client capacity in bytes per second (None: unlimited)."""
        with self._lock:
            self.rate = rate
            self._next_free[True] = 0.0

    def set_upstream_rate(self, rate: Optional[float]) -> None:
        """Client-to-target capacity in bytes per second (None: unlimited)."""
        with self._lock:
            self.upstream_rate = rate
            self._next_free[False] = 0.0

    def corrupt_once_at(self, offset: int) -> None:
        """Flips the byte at this offset of the target-to-client stream (all connections, counted from now)."""
        with self._lock:
            self._corrupt_at = self.downstream_bytes + offset

    def cut(self) -> None:
        """Drops every connection and refuses new ones (the peer went away)."""
        with self._lock:
            self._refusing = True
            connections, self._connections = self._connections, []
        for c in connections:
            _close(c)

    def restore(self) -> None:
        with self._lock:
            self._refusing = False

    def stop(self) -> None:
        self._closed.set()
        self.cut()
        if self._listener is not None:
            _close(self._listener)

    # -- internals -----------------------------------------------------------------------------------

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                refusing = self._refusing
            if refusing:
                _close(client)
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
                server.settimeout(None)
            except OSError:
                _close(client)
                continue
            with self._lock:
                self._connections += [client, server]
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _throttle(self, n: int, downstream: bool) -> None:
        with self._lock:
            rate = self.rate if downstream else self.upstream_rate
            if not rate:
                return
            now = time.monotonic()
            start = max(now, self._next_free[downstream])
            self._next_free[downstream] = start + n / rate
            wait = self._next_free[downstream] - now
        if wait > 0:
            time.sleep(wait)

    def _pump(self, src: socket.socket, dst: socket.socket, downstream: bool) -> None:
        try:
            while True:
                data = src.recv(PIECE)
                if not data:
                    break
                if self.delay:
                    time.sleep(self.delay)
                self._throttle(len(data), downstream)
                if downstream:
                    with self._lock:
                        begin = self.downstream_bytes
                        self.downstream_bytes += len(data)
                        at = self._corrupt_at
                        if at is not None and begin <= at < begin + len(data):
                            buf = bytearray(data)
                            buf[at - begin] ^= 0xFF
                            data = bytes(buf)
                            self._corrupt_at = None
                            self.corrupted += 1
                else:
                    with self._lock:
                        self.upstream_bytes += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _close(src)
            _close(dst)
            with self._lock:
                for s in (src, dst):
                    if s in self._connections:
                        self._connections.remove(s)


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass
