"""A webhook receiver for the tests of feedback notifications (the scheduler's, end to end): a
real HTTP/1.1 server on a free loopback port (asyncio streams) that records every POST it gets and
answers with the statuses it is told, in order (the last one repeats), or never answers at all
(``hang``). :func:`receiving` runs it in the test's event loop, :func:`receiving_in_thread` in a
loop of its own for synchronous tests."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Received:
    at: float  # time.monotonic() when the request was read
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes


@dataclass
class Receiver:
    statuses: Sequence[int] = (200,)
    hang: bool = False
    received: list[Received] = field(default_factory=list)
    port: int = 0
    _handlers: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def wait_for(self, count: int, timeout_s: float = 15.0) -> list[Received]:
        """The first ``count`` requests, once they have come."""
        deadline = time.monotonic() + timeout_s
        while len(self.received) < count:
            assert time.monotonic() < deadline, f"{len(self.received)} webhook requests, not {count}"
            await asyncio.sleep(0.02)
        return self.received[:count]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while True:
                request_line = await reader.readline()
                if not request_line:
                    return
                _, path, _ = request_line.decode().split(" ", 2)
                headers: dict[str, str] = {}
                while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = line.decode().partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                index = len(self.received)
                self.received.append(Received(time.monotonic(), path, headers, body))
                if self.hang:
                    await asyncio.sleep(3600)
                status = self.statuses[min(index, len(self.statuses) - 1)]
                writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 2\r\n\r\nok".encode())
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            return
        finally:
            self._handlers.discard(task)
            writer.close()


@contextlib.asynccontextmanager
async def receiving(statuses: Sequence[int] = (200,), *, hang: bool = False) -> AsyncIterator[Receiver]:
    receiver = Receiver(statuses=statuses, hang=hang)
    server = await asyncio.start_server(receiver._handle, "127.0.0.1", 0)
    receiver.port = server.sockets[0].getsockname()[1]
    try:
        yield receiver
    finally:
        server.close()
        for task in list(receiver._handlers):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 1.0)


@contextlib.contextmanager
def receiving_in_thread(statuses: Sequence[int] = (200,)) -> Iterator[Receiver]:
    """:func:`receiving` on an event loop in a thread of its own; ``received`` fills meanwhile."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="webhook-receiver", daemon=True)
    thread.start()
    context = receiving(statuses)
    try:
        yield asyncio.run_coroutine_threadsafe(context.__aenter__(), loop).result(10)
    finally:
        asyncio.run_coroutine_threadsafe(context.__aexit__(None, None, None), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
