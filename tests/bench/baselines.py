"""Raw Redis Streams baselines: the floor each Graflow measure is compared with, in the same run.

A *hop* is what a task costs with nothing else in the way: a request ``XADD``ed to ``bench:req``,
read by a responder thread (``XREADGROUP COUNT 100 BLOCK``), which for each entry, in one
``MULTI`` pipeline per batch, either sends it on as the next step (``XADD bench:req``, ``n`` - 1) or
answers it (``XADD`` to the requester's reply stream), and ``XACK``s it. A requester waits for its
answers with ``XREAD BLOCK`` on its own reply stream. So a chain of ``n`` steps crosses the queue
``n`` times, like dispatch then outcome, and a group is many requests answered concurrently.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from tests.bench.cost import Cost, median
from tests.bench.threads import run_together, shares

REQUESTS = "bench:req"
GROUP = "g"


def _respond(url: str, stop: threading.Event) -> None:
    peer = redis.Redis.from_url(url)
    while not stop.is_set():
        batch = peer.xreadgroup(GROUP, "responder", {REQUESTS: ">"}, count=100, block=200)
        for _stream, entries in batch or []:
            pipe = peer.pipeline(transaction=True)
            for entry_id, fields in entries:
                steps = int(fields[b"n"])
                if steps > 1:
                    pipe.xadd(REQUESTS, {b"n": steps - 1, b"r": fields[b"r"]})
                else:
                    pipe.xadd(fields[b"r"], {b"ok": 1})
                pipe.xack(REQUESTS, GROUP, entry_id)
            pipe.execute()
    peer.close()


@contextmanager
def responder(url: str) -> Iterator[None]:
    """The responder thread, running for the block."""
    conn = redis.Redis.from_url(url)
    conn.delete(REQUESTS)
    conn.xgroup_create(REQUESTS, GROUP, id="0", mkstream=True)
    conn.close()
    stop = threading.Event()
    thread = threading.Thread(target=_respond, args=(url, stop), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


class Requester:
    """Sends requests and waits for their answers on a reply stream of its own."""

    def __init__(self, url: str, name: str) -> None:
        self.conn = redis.Redis.from_url(url)
        self.replies = f"bench:rep:{name}"
        self.conn.delete(self.replies)
        self._last = b"0"

    def send(self, steps: int = 1) -> None:
        self.conn.xadd(REQUESTS, {b"n": steps, b"r": self.replies})

    def send_many(self, count: int, steps: int = 1) -> None:
        pipe = self.conn.pipeline(transaction=False)
        for _ in range(count):
            pipe.xadd(REQUESTS, {b"n": steps, b"r": self.replies})
        pipe.execute()

    def wait(self, count: int = 1) -> None:
        received = 0
        while received < count:
            reply = self.conn.xread({self.replies: self._last}, block=10_000, count=count - received)
            if not reply:
                raise TimeoutError(f"{self.replies}: {received} of {count} answers after 10 s")
            entries = reply[0][1]
            received += len(entries)
            self._last = entries[-1][0]

    def close(self) -> None:
        self.conn.close()


def latency_ms(url: str, runs: int) -> list[float]:
    """Round trips of one request (one hop), one at a time, in ms."""
    requester = Requester(url, "latency")
    samples = []
    with responder(url):
        for _ in range(runs):
            began = time.perf_counter()
            requester.send()
            requester.wait()
            samples.append((time.perf_counter() - began) * 1000)
    requester.close()
    return samples


def chain_s(url: str, steps: int) -> float:
    """One request sent on ``steps`` times through the queue, then answered, in seconds."""
    requester = Requester(url, "chain")
    with responder(url):
        requester.send()  # warm up
        requester.wait()
        began = time.perf_counter()
        requester.send(steps)
        requester.wait()
        elapsed = time.perf_counter() - began
    requester.close()
    return elapsed


def group_s(url: str, members: int) -> float:
    """One request, then ``members`` requests sent in one pipeline and all answered, then one
    more (the join): seconds."""
    requester = Requester(url, "group")
    with responder(url):
        began = time.perf_counter()
        requester.send()
        requester.wait()
        requester.send_many(members)
        requester.wait(members)
        requester.send()
        requester.wait()
        elapsed = time.perf_counter() - began
    requester.close()
    return elapsed


def many_runs(url: str, runs: int, steps: int, threads: int) -> dict[str, float]:
    """``runs`` requests of ``steps`` hops each, sent by ``threads`` threads one ``XADD`` at a time
    (each timed, like a submit) and then all waited for: runs/s from the first send to the last
    answer, and the send's p50 in ms."""
    requesters = [Requester(url, f"many-{i}") for i in range(threads)]
    sends: list[list[float]] = [[] for _ in range(threads)]
    share = shares(runs, threads)
    done_at = [0.0] * threads

    def drive(index: int) -> None:
        requester = requesters[index]
        for _ in range(share[index]):
            began = time.perf_counter()
            requester.send(steps)
            sends[index].append((time.perf_counter() - began) * 1000)
        requester.wait(share[index])
        done_at[index] = time.perf_counter()

    with responder(url):
        released = run_together(drive, threads)
    for requester in requesters:
        requester.close()
    return {"runs_per_s": runs / (max(done_at) - released),
            "submit_p50_ms": median([s for per_thread in sends for s in per_thread])}


def throughput(url: str, n: int) -> dict[str, object]:
    """Pipelined ``XADD`` of ``n`` entries (100 a pipeline), then ``XREADGROUP COUNT 100`` + ``XACK``
    per batch: messages/s, and the cost per message (Redis and this process, which is the whole
    system here)."""
    conn = redis.Redis.from_url(url)
    conn.delete("bench:tp")
    conn.xgroup_create("bench:tp", GROUP, id="0", mkstream=True)
    cost = Cost(url, {}, client_counts=True)
    cost.start()
    began = time.perf_counter()
    for offset in range(0, n, 100):
        pipe = conn.pipeline(transaction=False)
        for i in range(offset, min(n, offset + 100)):
            pipe.xadd("bench:tp", {"i": i})
        pipe.execute()
    done = 0
    while done < n:
        batch = conn.xreadgroup(GROUP, "c", {"bench:tp": ">"}, count=100, block=1000)
        ids = [entry_id for _s, entries in batch for entry_id, _f in entries]
        conn.xack("bench:tp", GROUP, *ids)
        done += len(ids)
    elapsed = time.perf_counter() - began
    spent = cost.stop(n)
    cost.close()
    conn.close()
    return {"tasks_per_s": n / elapsed, **spent}
