"""A context manager that blocks and records network connection attempts (offline tests)."""

import socket
from unittest import mock


class NetworkGuard:
    """Blocks and records every attempt to open a network connection."""

    def __init__(self):
        self.attempts = []

    def _refuse(self, *args, **kwargs):
        self.attempts.append(args)
        raise OSError("network access is blocked in this test")

    def __enter__(self):
        self._patches = [
            mock.patch.object(socket.socket, "connect", self._refuse),
            mock.patch.object(socket, "create_connection", self._refuse),
            mock.patch.object(socket, "getaddrinfo", self._refuse),
        ]
        for p in self._patches:
            p.start()
        return self

    def __exit__(self, *exc):
        for p in self._patches:
            p.stop()
