"""A fault-injecting TCP proxy for tests: asyncio, loopback only, bounded in time.

One background thread runs an event loop; each ``route`` listens on a loopback
address and forwards to a loopback port, applying its faults:

- ``rules``: after N bytes in one direction (optionally counted from a marker),
  ``drop`` (FIN both ways), ``reset`` (RST both ways) or ``stall`` (keep the sockets
  open, forward nothing, close after ``stall_seconds``), for the first ``times`` connections;
- ``http``: HTTP/1.1-aware faults on requests (S3): answer a canned status instead of
  forwarding (``reply``), or cut the connection at a fraction of the request body;
- ``latency`` (seconds added to every chunk) and ``rate`` (bytes/second each way).

Everything is bounded: a proxy closes every connection after ``max_seconds``.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

CHUNK = 65536


@dataclass
class Rule:
    """Cut or freeze a connection once ``after`` bytes went ``direction`` ("down": server to client)."""

    after: int = 0
    action: str = "drop"  # "drop" | "reset" | "stall"
    direction: str = "down"  # "down" | "up"
    times: int | None = 1  # connections to affect; None: every one
    marker: bytes | None = None  # count from the end of the first occurrence of this
    skip: int = 0  # connections to let through untouched first (a rule may be shared by routes)
    fired: int = 0
    seen: int = 0


@dataclass
class HttpFault:
    """A fault on HTTP requests whose method (and optionally path) match."""

    method: bytes = b"PUT"
    action: str = "reply"  # "reply" | "drop" | "reset"
    status: int = 503
    code: str = "SlowDown"
    at: float = 0.5  # drop/reset: fraction of the body forwarded first
    path_contains: bytes = b""
    times: int | None = 1
    fired: int = 0

    def matches(self, method: bytes, path: bytes) -> bool:
        return method == self.method and self.path_contains in path and (self.times is None or self.fired < self.times)


@dataclass
class Route:
    """One listener and its faults; attributes may be changed while it runs."""

    target_port: int
    listen_host: str
    port: int = 0
    rules: list[Rule] = field(default_factory=list)
    http: list[HttpFault] = field(default_factory=list)
    latency: float = 0.0
    rate: float | None = None
    stall_seconds: float = 30.0
    connections: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    http_requests: list[tuple[bytes, bytes]] = field(default_factory=list)  # (method, path)


class _Cut(Exception):
    """Raised inside a pipe to end the connection the way ``action`` says."""

    def __init__(self, action: str) -> None:
        self.action = action


class FaultProxy:
    """Runs routes on a private event loop thread; use as a context manager."""

    def __init__(self, max_seconds: float = 300.0) -> None:
        self.deadline = time.monotonic() + max_seconds
        self.loop = asyncio.new_event_loop()
        self._servers: list[asyncio.AbstractServer] = []
        self._tasks: set[asyncio.Task] = set()
        self._thread = threading.Thread(target=self.loop.run_forever, name="faultproxy", daemon=True)
        self._thread.start()
        self._call(self._watchdog())

    def _call(self, coro, timeout: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def route(self, target_port: int, listen_port: int = 0, listen_host: str = "127.0.0.1") -> Route:
        """Listen on ``listen_host:listen_port`` (0: free port) and forward to 127.0.0.1:``target_port``."""
        if not listen_host.startswith("127."):
            raise ValueError("the fault proxy listens on loopback only")
        route = Route(target_port, listen_host)
        server = self._call(self._listen(route, listen_port))
        self._servers.append(server)
        route.port = server.sockets[0].getsockname()[1]
        return route

    async def _listen(self, route: Route, port: int) -> asyncio.AbstractServer:
        return await asyncio.start_server(lambda r, w: self._spawn(self._handle(route, r, w)),
                                          route.listen_host, port, reuse_address=True)

    async def _watchdog(self) -> None:
        self._expiry = self._spawn(self._expire())

    def cut_connections(self) -> None:
        """Close every open connection now (listeners stay): the far end went away."""

        async def cut() -> None:
            for task in list(self._tasks):
                if task is not self._expiry and task is not asyncio.current_task():
                    task.cancel()
            await asyncio.sleep(0.05)

        self._call(cut())

    async def _expire(self) -> None:
        await asyncio.sleep(max(0.0, self.deadline - time.monotonic()))
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()

    def _spawn(self, coro) -> asyncio.Task:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _handle(self, route: Route, client_r, client_w) -> None:
        route.connections += 1
        if time.monotonic() >= self.deadline:  # the watchdog has fired: no new connections either
            _abort(client_w, reset=False)
            return
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", route.target_port)
        except OSError:
            _abort(client_w, reset=False)
            return
        rules = []
        for rule in route.rules:
            rule.seen += 1
            if rule.seen > rule.skip and (rule.times is None or rule.fired < rule.times):
                rules.append(rule)
        up = _Pipe(route, "up", client_r, server_w, client_w, rules)
        down = _Pipe(route, "down", server_r, client_w, client_w, rules)
        tasks = [asyncio.ensure_future(up.run()), asyncio.ensure_future(down.run())]
        action = "drop"
        try:
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                exc = task.exception()
                if isinstance(exc, _Cut):
                    action = exc.action
            if action == "stall":
                for task in pending:
                    task.cancel()
                await asyncio.sleep(min(route.stall_seconds, max(0.0, self.deadline - time.monotonic())))
        finally:
            for task in tasks:
                task.cancel()
            _abort(client_w, reset=action == "reset")
            _abort(server_w, reset=action == "reset")

    def close(self) -> None:
        """Stop listening, close every connection, end the thread."""
        if not self.loop.is_running():
            return

        async def shutdown() -> None:
            for server in self._servers:
                server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.sleep(0.05)

        self._call(shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()

    def __enter__(self) -> "FaultProxy":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _abort(writer: asyncio.StreamWriter, reset: bool) -> None:
    sock = writer.get_extra_info("socket")
    if reset and sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        writer.transport.abort()
    else:
        writer.close()


class _Pipe:
    """One direction of one connection: rules, HTTP framing, latency and rate."""

    def __init__(self, route: Route, direction: str, reader, writer, client_w, rules: list[Rule]) -> None:
        self.route, self.direction, self.reader, self.writer = route, direction, reader, writer
        self.client_w = client_w
        self.rules = [r for r in rules if r.direction == direction]
        self.counted = {id(r): (0 if r.marker is None else None) for r in self.rules}
        self.tail = b""  # last bytes seen, to find markers split across reads
        self.http = _HttpFramer(route) if direction == "up" and route.http else None

    async def run(self) -> None:
        while True:
            data = await self.reader.read(CHUNK)
            if not data:
                try:
                    self.writer.write_eof()
                except (OSError, RuntimeError):
                    pass
                return
            if self.http is not None:
                data, cut = self.http.feed(data)
                if cut == "reply":
                    await self._send(data, to_client=True)
                    raise _Cut("drop")
                if cut:
                    await self._send(data)
                    raise _Cut(cut)
            data, cut = self._apply_rules(data)
            await self._send(data)
            if cut:
                raise _Cut(cut)

    def _apply_rules(self, data: bytes) -> tuple[bytes, str | None]:
        window = self.tail + data
        self.tail = window[-256:]
        for rule in self.rules:
            key = id(rule)
            start = 0
            if self.counted[key] is None:
                pos = window.find(rule.marker)
                if pos < 0:
                    continue
                self.counted[key] = 0
                start = max(0, pos + len(rule.marker) - (len(window) - len(data)))
            budget = rule.after - self.counted[key]
            available = len(data) - start
            if available >= budget and (rule.times is None or rule.fired < rule.times):
                rule.fired += 1
                return data[: start + max(0, budget)], rule.action
            self.counted[key] += available
        return data, None

    async def _send(self, data: bytes, to_client: bool = False) -> None:
        writer = self.client_w if to_client else self.writer
        if not data:
            return
        if self.route.latency:
            await asyncio.sleep(self.route.latency)
        step = max(1, int(self.route.rate / 20)) if self.route.rate else len(data)
        for i in range(0, len(data), step):
            piece = data[i:i + step]
            writer.write(piece)
            await writer.drain()
            if self.direction == "up" and not to_client:
                self.route.bytes_up += len(piece)
            else:
                self.route.bytes_down += len(piece)
            if self.route.rate:
                await asyncio.sleep(len(piece) / self.route.rate)


class _HttpFramer:
    """Frames HTTP/1.1 requests with Content-Length bodies to apply HttpFaults (chunked: passed untouched)."""

    def __init__(self, route: Route) -> None:
        self.route = route
        self.buf = b""
        self.body_left = 0  # bytes of the current body still to pass through
        self.passthrough = False  # after a chunked request: framing is given up, bytes pass untouched
        self.fault: HttpFault | None = None
        self.cut_at = -1  # bytes of body left when the current fault cuts

    def feed(self, data: bytes) -> tuple[bytes, str | None]:
        """Bytes to forward now, and "reply" (data then goes to the client) / "drop" / "reset" / None."""
        if self.passthrough:
            return data, None
        out = b""
        self.buf += data
        while self.buf:
            if self.body_left:
                take = min(self.body_left, len(self.buf))
                if self.fault is not None and self.fault.action != "reply" and self.body_left - take <= self.cut_at:
                    take = self.body_left - self.cut_at
                    return out + self.buf[:take], self.fault.action
                piece, self.buf = self.buf[:take], self.buf[take:]
                self.body_left -= take
                if self.fault is None or self.fault.action != "reply":
                    out += piece
                if self.body_left == 0 and self.fault is not None and self.fault.action == "reply":
                    return self._reply(), "reply"
                continue
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return out, None
            head, self.buf = self.buf[: end + 4], self.buf[end + 4:]
            line = head.split(b"\r\n", 1)[0].split(b" ")
            method, path = line[0], line[1] if len(line) > 1 else b""
            headers = {k.strip().lower(): v.strip() for k, _, v in
                       (h.partition(b":") for h in head.split(b"\r\n")[1:] if h)}
            self.route.http_requests.append((method, path))
            if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
                self.passthrough = True
                out, self.buf = out + head + self.buf, b""
                return out, None
            self.body_left = int(headers.get(b"content-length", b"0") or 0)
            self.fault = next((f for f in self.route.http if f.matches(method, path)), None)
            if self.fault is None:
                out += head
                continue
            self.fault.fired += 1
            if self.fault.action == "reply":
                if b"100-continue" in headers.get(b"expect", b"").lower() or not self.body_left:
                    return self._reply(), "reply"
                continue  # swallow the body, then answer
            out += head
            self.cut_at = self.body_left - int(self.body_left * self.fault.at)
            if self.body_left == 0 or self.cut_at >= self.body_left:
                return out, self.fault.action
        return out, None

    def _reply(self) -> bytes:
        fault = self.fault
        assert fault is not None
        body = (f"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{fault.code}</Code>"
                f"<Message>injected by the test fault proxy</Message></Error>").encode()
        reason = {503: "Slow Down", 403: "Forbidden", 500: "Internal Server Error"}.get(fault.status, "Error")
        return (f"HTTP/1.1 {fault.status} {reason}\r\nContent-Type: application/xml\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
