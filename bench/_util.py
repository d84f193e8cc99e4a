"""Shared helpers for the benchmarks: a lean HTTP client, a fast upstream, processes.

The client is deliberately tiny (one ``sendall`` per request, a hand-rolled
response parser, TCP_NODELAY) so that what the benchmark measures is the
server side, not the client library. The fast upstream answers from canned
bytes in a thread per connection, so it costs a few microseconds and the
proxy's own overhead stands out. Every server runs in its own process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import socketserver
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

__all__ = [
    "CHAT_BODY",
    "CHAT_REPLY",
    "FastHandler",
    "RawClient",
    "Server",
    "free_port",
    "machine_info",
    "parse_args",
    "percentile",
    "run_fast_upstream",
    "spawn_ready",
    "start_all",
    "stop_all",
    "summarize",
]

CHAT_BODY = json.dumps(
    {
        "model": "llama3.2",
        "messages": [{"role": "user", "content": "Say hi."}],
        "stream": False,
    }
).encode()

CHAT_REPLY = json.dumps(
    {
        "model": "llama3.2",
        "created_at": "2026-01-01T00:00:00.000000Z",
        "message": {"role": "assistant", "content": "Hi! How can I help you today?"},
        "done": True,
        "done_reason": "stop",
        "total_duration": 123456789,
        "load_duration": 1234567,
        "prompt_eval_count": 12,
        "prompt_eval_duration": 2345678,
        "eval_count": 9,
        "eval_duration": 34567890,
    }
).encode()


# -- client ------------------------------------------------------------------


def request_bytes(
    method: str, path: str, host: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> bytes:
    """One HTTP/1.1 request, head and body, ready for a single write."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
        lines.append("Content-Type: application/json")
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class RawClient:
    """A keep-alive HTTP/1.1 client over one blocking socket."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        rest = url.split("://", 1)[1].rstrip("/")
        host, _, port = rest.partition(":")
        self.host = f"{host}:{port}".encode()
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def _fill(self) -> None:
        data = self.sock.recv(262144)
        if not data:
            raise ConnectionError("server closed the connection")
        self.buf += data

    def _line(self) -> bytes:
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line, self.buf = self.buf[:i], self.buf[i + 2 :]
                return line
            self._fill()

    def read_exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def send(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> None:
        self.sock.sendall(request_bytes(method, path, self.host.decode(), body, headers))

    def head(self) -> tuple[int, dict[bytes, bytes]]:
        status = int(self._line().split(b" ", 2)[1])
        headers: dict[bytes, bytes] = {}
        while True:
            line = self._line()
            if not line:
                return status, headers
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()

    def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        self.send(method, path, body, headers)
        status, head = self.head()
        if b"content-length" in head:
            return status, self.read_exactly(int(head[b"content-length"]))
        parts = []
        for chunk in self.chunks():
            parts.append(chunk)
        return status, b"".join(parts)

    def chunks(self) -> Any:
        """Yield the chunks of a chunked body as each arrives."""
        while True:
            size = int(self._line().split(b";")[0], 16)
            if size == 0:
                self._line()
                return
            chunk = self.read_exactly(size)
            self.read_exactly(2)
            yield chunk

    def stream_lines(self, path: str, on_line: Callable[[bytes, int], None]) -> None:
        """GET a chunked NDJSON stream; call ``on_line(line, monotonic_ns)`` on arrival."""
        self.send("GET", path)
        status, _ = self.head()
        if status != 200:
            raise RuntimeError(f"stream answered {status}")
        pending = b""
        for chunk in self.chunks():
            now = time.monotonic_ns()
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                on_line(line, now)


# -- fast upstream -------------------------------------------------------------


class FastHandler(socketserver.BaseRequestHandler):
    """One connection of the fast upstream: parse each request, then ``respond``.

    ``started`` is the monotonic time (ns) the request's first bytes arrived, for
    variants that time the gaps between requests (``bench/dispatch.py``).
    """

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = b""
        while True:
            started = time.monotonic_ns() if buf else 0
            while b"\r\n\r\n" not in buf:
                data = sock.recv(65536)
                if not data:
                    return
                if not started:
                    started = time.monotonic_ns()
                buf += data
            head, buf = buf.split(b"\r\n\r\n", 1)
            lines = head.split(b"\r\n")
            method, target, version = lines[0].split(b" ", 2)
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(buf) < length:
                data = sock.recv(65536)
                if not data:
                    return
                buf += data
            body, buf = buf[:length], buf[length:]
            old = version == b"HTTP/1.0"
            close = old or any(line.lower() == b"connection: close" for line in lines)
            self.respond(sock, method, target, body, old, started)
            if close:
                return

    def respond(
        self,
        sock: socket.socket,
        method: bytes,
        target: bytes,
        body: bytes,
        old: bool,
        started: int,
    ) -> None:
        """The canned answer: a chunked NDJSON stream for ``/stream``, else a chat reply."""
        if target.startswith(b"/stream"):
            self._stream(sock, target, chunked=not old)
        else:
            reply = CHAT_REPLY if method != b"HEAD" else b""
            sock.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(CHAT_REPLY), reply)
            )

    def _stream(self, sock: socket.socket, target: bytes, chunked: bool) -> None:
        query = dict(
            part.split(b"=", 1) for part in target.partition(b"?")[2].split(b"&") if b"=" in part
        )
        count = int(query.get(b"n", b"100"))
        gap = float(query.get(b"gap_ms", b"2")) / 1000
        framing = b"Transfer-Encoding: chunked\r\n" if chunked else b"Connection: close\r\n"
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n%s\r\n" % framing)
        for i in range(count):
            line = b'{"i": %d, "t": %d}\n' % (i, time.monotonic_ns())
            sock.sendall(b"%x\r\n%s\r\n" % (len(line), line) if chunked else line)
            time.sleep(gap)
        if chunked:
            sock.sendall(b"0\r\n\r\n")


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def run_fast_upstream(handler: type[FastHandler] = FastHandler) -> None:
    """Serve the canned upstream on an ephemeral port; print ``READY <url>``."""
    server = _Server(("127.0.0.1", 0), handler)
    print(f"READY http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


# -- processes -------------------------------------------------------------------


class Server:
    """A server subprocess and the URL it announced."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes], url: str, log: IO[bytes]) -> None:
        self.name = name
        self.popen = popen
        self.url = url
        self.log = log

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self.log.close()


def stop_all(servers: Sequence[Server]) -> None:
    """Stop every server, newest first; one that fails to stop does not spare the rest.

    All are asked to terminate first, so their shutdowns overlap.
    """
    errors: list[BaseException] = []
    for server in reversed(servers):
        if server.popen.poll() is None:
            server.popen.terminate()
    for server in reversed(servers):
        try:
            server.stop()
        except BaseException as e:  # keep stopping the others, then re-raise
            errors.append(e)
    if errors:
        raise errors[0]


def start_all(starts: Sequence[Callable[[], Server]], servers: list[Server]) -> list[Server]:
    """Run independent ``starts`` at once (each mostly waits for its server's READY line).

    Every server that started is appended to ``servers``, the caller's list to stop in a
    ``finally``, even when another failed to start (then the first error is raised).
    """
    with ThreadPoolExecutor(len(starts)) as pool:
        futures = [pool.submit(start) for start in starts]
    started: list[Server] = []
    error: BaseException | None = None
    for future in futures:
        try:
            server = future.result()
        except Exception as e:
            error = error or e
            continue
        servers.append(server)
        started.append(server)
    if error is not None:
        raise error
    return started


def free_port() -> int:
    """A loopback port that was free a moment ago (for servers that cannot bind port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def spawn_ready(
    name: str,
    argv: Sequence[str],
    workdir: Path,
    env: dict[str, str] | None = None,
    pattern: str = "READY ",
    timeout: float = 20.0,
) -> Server:
    """Start ``argv``; wait until its output has a line containing ``pattern`` + URL."""
    log_path = workdir / f"{name}.log"
    log = open(log_path, "w+b")  # noqa: SIM115 - closed by Server.stop
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FOREMAN_")}
    full_env.update(env or {})
    popen = subprocess.Popen(
        list(argv), stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=str(workdir)
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        at = text.find(pattern)
        if at >= 0 and "\n" in text[at:]:
            url = text[at + len(pattern) :].split("\n", 1)[0].split()[0].rstrip(",")
            return Server(name, popen, url, log)
        if popen.poll() is not None:
            break
        time.sleep(0.05)
    popen.kill()
    popen.wait()
    raise RuntimeError(f"{name} did not start:\n{log_path.read_text(errors='replace')}")


# -- command line ----------------------------------------------------------------


def parse_args(
    parser: argparse.ArgumentParser, smoke: dict[str, Any], argv: Sequence[str] | None = None
) -> argparse.Namespace:
    """Parse with a ``--smoke`` flag: it swaps the defaults for ``smoke`` (seconds, not
    minutes: every code path, tiny sizes); options given explicitly still win."""
    parser.add_argument(
        "--smoke", action="store_true", help="a tiny run (seconds) that still prints every table"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        parser.set_defaults(**smoke)
        args = parser.parse_args(argv)
    return args


# -- numbers ---------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def summarize(values: Sequence[float]) -> tuple[float, float]:
    """(median, p99)."""
    return statistics.median(values), percentile(values, 99)


def machine_info() -> str:
    import twisted

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
        f"Twisted {twisted.__version__}, {platform.system()} {platform.release()}"
    )


if __name__ == "__main__":
    if sys.argv[1:] == ["fast-upstream"]:
        run_fast_upstream()
    else:
        raise SystemExit("usage: python bench/_util.py fast-upstream")
