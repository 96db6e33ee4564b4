"""Redis Lua scripts: ``.lua`` files beside the code that uses them, loaded as package resources
(``importlib.resources``: the same from a source tree, a wheel or a PEX), called by SHA
(``EVALSHA``) and loaded again when Redis lost them (NOSCRIPT after a restart or ``SCRIPT FLUSH``).

Calls are queued on pipelines directly with ``evalsha`` instead of redis-py's ``Script`` objects,
whose pipelines check ``SCRIPT EXISTS`` on every execute (an extra round trip per batch).

A script's files are declared as a ``resources()`` target that the package's ``python_sources``
depend on, so that every wheel and PEX carrying the code carries its scripts.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

ScriptArg = str | bytes | int | float
# The keys and the arguments of one call.
ScriptCall = tuple[Sequence[str], Sequence[ScriptArg]]


@dataclass(frozen=True)
class LuaScript:
    name: str
    source: str

    @classmethod
    def load(cls, package: str, *filenames: str) -> LuaScript:
        """The files of ``package`` joined in order into one script, named after the last one
        (helpers shared by several scripts come first, the script itself last)."""
        files = resources.files(package)
        source = "\n".join(files.joinpath(name).read_text(encoding="utf-8") for name in filenames)
        return cls(name=filenames[-1], source=source)

    @functools.cached_property
    def sha(self) -> str:
        # Computed once: it is needed for every call (the outcome path calls a script per outcome).
        return hashlib.sha1(self.source.encode("utf-8")).hexdigest()  # noqa: S324 - Redis script id

    async def load_into(self, client: aioredis.Redis) -> None:
        """``SCRIPT LOAD`` (idempotent): calls by SHA find it from now on."""
        await client.script_load(self.source)

    async def run(self, client: aioredis.Redis, keys: Sequence[str], args: Sequence[ScriptArg]) -> Any:
        """One call; a script Redis lost is loaded and the call made again (it did not run)."""
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await self.load_into(client)
            return await client.evalsha(self.sha, len(keys), *keys, *args)

    async def run_many(self, client: aioredis.Redis, calls: Sequence[ScriptCall]) -> list[Any]:
        """One call per (keys, args), all in one pipeline (one round trip); replies in order. The
        calls that met NOSCRIPT did not run: they run again, in a second pipeline, once the script
        is loaded. The first error reply is raised once every call has run."""
        if len(calls) == 1:
            return [await self.run(client, *calls[0])]
        replies = await self._pipelined(client, calls)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            await self.load_into(client)
            retried = await self._pipelined(client, [calls[i] for i in missing])
            for index, reply in zip(missing, retried, strict=True):
                replies[index] = reply
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    async def _pipelined(self, client: aioredis.Redis, calls: Sequence[ScriptCall]) -> list[Any]:
        async with client.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                pipe.evalsha(self.sha, len(keys), *keys, *args)
            return list(await pipe.execute(raise_on_error=False))
