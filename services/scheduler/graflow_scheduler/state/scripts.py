"""The run-state Lua scripts: loaded from package resources, called by SHA (EVALSHA), reloaded
when Redis lost them (NOSCRIPT after a restart).

Calls are queued on pipelines directly with ``evalsha`` instead of redis-py's ``Script`` objects,
whose pipelines check ``SCRIPT EXISTS`` on every execute (an extra round trip per batch).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

_PACKAGE = "graflow_scheduler.state"
ScriptArg = str | bytes | int | float


def _read(name: str) -> str:
    return resources.files(_PACKAGE).joinpath(name).read_text(encoding="utf-8")


@dataclass(frozen=True)
class RunScript:
    name: str
    source: str

    @functools.cached_property
    def sha(self) -> str:
        # Computed once: it is needed for every call (the outcome path calls a script per outcome).
        return hashlib.sha1(self.source.encode("utf-8")).hexdigest()  # noqa: S324 - Redis script id

    @classmethod
    def load(cls, filename: str, *helpers: str) -> RunScript:
        """``common.lua``, then the ``helpers`` files, then ``filename`` (one script)."""
        parts = ["common.lua", *helpers, filename]
        return cls(name=filename, source="\n".join(_read(part) for part in parts))


class Scripts:
    """The run scripts, and how to call them."""

    def __init__(self) -> None:
        self.create_run = RunScript.load("create_run.lua")
        self.apply_outcome = RunScript.load("apply_outcome.lua", "flow.lua", "waits.lua")
        self.cancel_run = RunScript.load("cancel_run.lua")
        self.resolve_wait = RunScript.load("resolve_wait.lua", "flow.lua", "waits.lua")
        self.run_ended_outcome = RunScript.load("run_ended_outcome.lua")

    @property
    def all(self) -> tuple[RunScript, ...]:
        return (self.create_run, self.apply_outcome, self.cancel_run, self.resolve_wait,
                self.run_ended_outcome)

    async def load_into(self, client: aioredis.Redis) -> None:
        """SCRIPT LOAD every script (idempotent)."""
        for script in self.all:
            await client.script_load(script.source)

    async def call(
        self, client: aioredis.Redis, script: RunScript, keys: Sequence[str], args: Sequence[ScriptArg]
    ) -> object:
        try:
            return await client.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            await self.load_into(client)
            return await client.evalsha(script.sha, len(keys), *keys, *args)

    async def call_many(
        self,
        client: aioredis.Redis,
        script: RunScript,
        calls: Sequence[tuple[Sequence[str], Sequence[ScriptArg]]],
    ) -> list[object]:
        """Run ``script`` once per (keys, args) in one pipeline; results in order. Calls that met
        NOSCRIPT did not run; they are run again after loading the scripts."""
        results = await self._pipeline(client, script, calls)
        missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
        if missing:
            await self.load_into(client)
            retried = await self._pipeline(client, script, [calls[i] for i in missing])
            for index, result in zip(missing, retried, strict=True):
                results[index] = result
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results

    @staticmethod
    async def _pipeline(
        client: aioredis.Redis,
        script: RunScript,
        calls: Sequence[tuple[Sequence[str], Sequence[ScriptArg]]],
    ) -> list[object]:
        async with client.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            return list(await pipe.execute(raise_on_error=False))
