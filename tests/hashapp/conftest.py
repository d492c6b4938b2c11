"""A real uvicorn server on 127.0.0.1 (a free port), stopped by the test that started it."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager

import pytest


@pytest.fixture
def running_server():
    """``with running_server(app) as url: ...``"""
    return _running_server


@contextmanager
def _running_server(app):
    """Serve ``app`` with uvicorn on 127.0.0.1 in a thread; yields the base URL; stops it after."""
    uvicorn = pytest.importorskip("uvicorn")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
