"""
A local port forwarded over the SSH connection pyinfra opened to a host, for services that
listen on the host's loopback only (rigkit's default): ``http://127.0.0.1:<local port>``
here reaches ``127.0.0.1:<port>`` there. Each accepted connection becomes one
``direct-tcpip`` channel; two threads copy bytes until either side closes.
"""

from __future__ import annotations

import select
import socket
import threading


class SSHTunnel:
    def __init__(self, transport, remote_host: str, remote_port: int):
        self.transport = transport
        self.remote = (remote_host, remote_port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, addr = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._pump, args=(conn, addr), daemon=True).start()

    def _pump(self, conn: socket.socket, addr) -> None:
        try:
            chan = self.transport.open_channel("direct-tcpip", self.remote, addr)
        except Exception:
            conn.close()
            return
        try:
            while not self._closed.is_set():
                ready, _, _ = select.select([conn, chan], [], [], 1.0)
                if conn in ready:
                    data = conn.recv(65536)
                    if not data:
                        break
                    chan.sendall(data)
                if chan in ready:
                    data = chan.recv(65536)
                    if not data:
                        break
                    conn.sendall(data)
        except OSError:
            pass
        finally:
            chan.close()
            conn.close()

    def close(self) -> None:
        self._closed.set()
        self.sock.close()
