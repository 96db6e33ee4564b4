"""A check that every Lua script call stays in one Redis Cluster hash slot (docs/architecture.md,
"Redis Cluster: cells"), for tests that run on a single Redis: there, a script whose keys span two
cells works, and would fail with CROSSSLOT on a cluster.

    def test_x(one_slot_scripts: list[str]) -> None:  # a fixture of this module
        ...  # any script call spanning slots fails the test at the call

``four_cells`` sets this process's key layout to four cells for the test (and back to the default
after), naming exactly the keys a cluster deployment with four cells would.

The fixture ``one_slot_scripts`` observes :class:`graflow_runtime.scripts.LuaScript`'s calls in this
process (services run as other processes are checked by the cluster fixture instead) and yields the
names of the scripts that ran, so a test can also assert that the path it names was taken.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from redis.crc import key_slot

from graflow_runtime import keys
from graflow_runtime.scripts import LuaScript, ScriptArg, ScriptCall


class CrossSlotCall(AssertionError):
    """A script call's keys lie in more than one hash slot."""


def check_one_slot(script: str, keys: Sequence[str]) -> None:
    slots = {key_slot(key.encode() if isinstance(key, str) else key) for key in keys}
    if len(slots) > 1:
        raise CrossSlotCall(f"{script} was called with keys of {len(slots)} slots: {list(keys)}")


@pytest.fixture
def one_slot_scripts(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    ran: list[str] = []
    run, pipelined = LuaScript.run, LuaScript._pipelined

    async def checked_run(
        self: LuaScript, client: Any, names: Sequence[str], args: Sequence[ScriptArg]
    ) -> Any:
        check_one_slot(self.name, names)
        ran.append(self.name)
        return await run(self, client, names, args)

    async def checked_pipelined(self: LuaScript, client: Any, calls: Sequence[ScriptCall]) -> list[Any]:
        for names, _ in calls:
            check_one_slot(self.name, names)
            ran.append(self.name)
        return await pipelined(self, client, calls)

    monkeypatch.setattr(LuaScript, "run", checked_run)
    monkeypatch.setattr(LuaScript, "_pipelined", checked_pipelined)
    yield ran


@pytest.fixture
def four_cells() -> Iterator[keys.Layout]:
    layout = keys.Layout(cells=4)
    keys.configure(layout)
    yield layout
    keys.configure(keys.Layout())
