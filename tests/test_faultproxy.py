"""The fault proxy itself: each fault does exactly what it says, on real loopback sockets."""

from __future__ import annotations

import http.server
import os
import socket
import socketserver
import threading
import time

import pytest

from tests.faultproxy import FaultProxy, HttpFault, Rule
from tests.waiting import eventually

PAYLOAD = os.urandom(300_000)


class _Source(socketserver.BaseRequestHandler):
    """Sends PAYLOAD and closes."""

    def handle(self) -> None:
        try:
            self.request.sendall(PAYLOAD)
        except OSError:
            pass


class _Sink(socketserver.BaseRequestHandler):
    """Records whatever the client sends until it closes."""

    def handle(self) -> None:
        try:
            while data := self.request.recv(65536):
                self.server.received.append(data)  # type: ignore[attr-defined]
        except OSError:
            pass


def _serve(handler):
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.received = []  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def source():
    server = _serve(_Source)
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def sink():
    server = _serve(_Sink)
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy():
    with FaultProxy(max_seconds=60) as p:
        yield p


def receive(port: int, timeout: float = 5.0) -> tuple[bytes, str]:
    """Everything the proxy delivers, and how the stream ended: "eof", "reset" or "timeout"."""
    got = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            while data := sock.recv(65536):
                got += data
            return bytes(got), "eof"
        except ConnectionResetError:
            return bytes(got), "reset"
        except TimeoutError:
            return bytes(got), "timeout"


def test_pass_through_is_byte_exact(proxy, source):
    route = proxy.route(source.server_address[1])
    assert receive(route.port) == (PAYLOAD, "eof")
    assert route.connections == 1 and route.bytes_down == len(PAYLOAD)


@pytest.mark.parametrize("after", [0, 1, 150_000, len(PAYLOAD) - 1])
def test_drop_after_n_bytes_then_pass(proxy, source, after):
    route = proxy.route(source.server_address[1])
    route.rules.append(Rule(after=after, action="drop"))
    assert receive(route.port) == (PAYLOAD[:after], "eof")
    assert receive(route.port) == (PAYLOAD, "eof")  # times=1: the next connection is clean


def test_skip_lets_the_first_connections_through(proxy, source):
    route = proxy.route(source.server_address[1])
    route.rules.append(Rule(after=10, skip=2))
    assert [receive(route.port)[0] for _ in range(4)] == [PAYLOAD, PAYLOAD, PAYLOAD[:10], PAYLOAD]


def test_reset_sends_rst(proxy, source):
    route = proxy.route(source.server_address[1])
    route.rules.append(Rule(after=1000, action="reset", times=None))
    for _ in range(2):
        data, end = receive(route.port)
        assert end == "reset" and len(data) <= 1000 and PAYLOAD.startswith(data)


def test_stall_keeps_the_connection_open_and_silent(proxy, source):
    route = proxy.route(source.server_address[1])
    route.stall_seconds = 10.0
    route.rules.append(Rule(after=5000, action="stall"))
    assert receive(route.port, timeout=3) == (PAYLOAD[:5000], "timeout")


def test_marker_counts_from_the_marker(proxy, source):
    route = proxy.route(source.server_address[1])
    marker = PAYLOAD[100_000:100_016]
    route.rules.append(Rule(after=10, marker=marker))
    assert receive(route.port) == (PAYLOAD[:100_026], "eof")


def test_latency_and_rate_slow_the_stream_but_keep_it_exact(proxy, source):
    route = proxy.route(source.server_address[1])
    route.latency, route.rate = 0.3, 1_000_000
    start = time.monotonic()
    assert receive(route.port) == (PAYLOAD, "eof")
    assert time.monotonic() - start >= 0.3 + len(PAYLOAD) / 1_000_000 * 0.9  # lower bound only


def test_upstream_rule_cuts_what_the_client_sends(proxy, sink):
    route = proxy.route(sink.server_address[1])
    route.rules.append(Rule(after=7, direction="up", action="drop"))
    with socket.create_connection(("127.0.0.1", route.port), timeout=5) as sock:
        sock.sendall(b"0123456789abcdef")
        while sock.recv(65536):
            pass
    assert eventually(lambda: b"".join(sink.received) == b"0123456")


def test_loopback_only_and_bounded_in_time(source):
    with FaultProxy(max_seconds=60) as p, pytest.raises(ValueError):
        p.route(source.server_address[1], listen_host="0.0.0.0")
    with FaultProxy(max_seconds=1.0) as p:
        route = p.route(source.server_address[1])
        route.stall_seconds = 600
        route.rules.append(Rule(after=10, action="stall"))
        start = time.monotonic()
        data, end = receive(route.port, timeout=20)
        assert data == PAYLOAD[:10] and end in ("eof", "reset") and time.monotonic() - start < 15


class _Http(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    bodies: list[bytes] = []

    def do_PUT(self) -> None:  # noqa: N802 - http.server's naming
        _Http.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def http_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Http)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def put(port: int, body: bytes) -> bytes:
    """Two PUTs on one keep-alive connection: the replies as raw bytes."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        request = b"PUT /b/k HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        sock.sendall(request + request)
        got = b""
        try:
            while data := sock.recv(65536):
                got += data
                if got.count(b"HTTP/1.1") == 2:
                    break
        except (ConnectionResetError, TimeoutError):
            pass
        return got


def test_http_reply_answers_without_forwarding(proxy, http_server):
    route = proxy.route(http_server.server_address[1])
    route.http.append(HttpFault(status=503, code="SlowDown", times=1))
    _Http.bodies.clear()
    reply = put(route.port, b"x" * 5000)
    assert reply.startswith(b"HTTP/1.1 503") and b"<Code>SlowDown</Code>" in reply
    assert _Http.bodies == []  # the server never saw it; Connection: close ended the second one
    assert put(route.port, b"y" * 10).count(b"HTTP/1.1 200") == 2  # times=1: now clean


@pytest.mark.parametrize("at", [0.0, 0.5, 0.999])
def test_http_drop_at_a_fraction_of_the_body(proxy, http_server, at):
    route = proxy.route(http_server.server_address[1])
    route.http.append(HttpFault(action="drop", at=at))
    _Http.bodies.clear()
    assert put(route.port, b"z" * 10_000) == b""
    eventually(lambda: _Http.bodies)
    # The server saw the headers and exactly that fraction of the body, then the end of the stream.
    assert [len(b) for b in _Http.bodies] == [int(10_000 * at)]
