"""The run-state Lua scripts, the ``*.lua`` files beside this module: ``common.lua``, then the
helpers a script needs, then the script itself, joined into one. They run through
:class:`graflow_runtime.scripts.LuaScript`: called by SHA, reloaded after NOSCRIPT, and pipelined
directly with ``evalsha`` for a batch (``apply_outcome`` once per outcome of a batch, in one round
trip; that module says why not through redis-py's ``Script`` objects)."""

from __future__ import annotations

from graflow_runtime.scripts import LuaScript


def _load(filename: str, *helpers: str) -> LuaScript:
    return LuaScript.load(__package__, "common.lua", *helpers, filename)


CREATE_RUN = _load("create_run.lua")
APPLY_OUTCOME = _load("apply_outcome.lua", "flow.lua", "waits.lua")
CANCEL_RUN = _load("cancel_run.lua")
RESOLVE_WAIT = _load("resolve_wait.lua", "flow.lua", "waits.lua")
RUN_ENDED_OUTCOME = _load("run_ended_outcome.lua")
PUT_WORKFLOW = _load("put_workflow.lua")
# Standalone (no common.lua): a read of the run's meta and its sinks' results.
RUN_RESULT = LuaScript.load(__package__, "run_result.lua")
# Standalone: the recovery sweep's repair of the status indexes (after a rolling upgrade).
REPAIR_STATUS = LuaScript.load(__package__, "repair_status.lua")
ALL = (CREATE_RUN, APPLY_OUTCOME, CANCEL_RUN, RESOLVE_WAIT, RUN_ENDED_OUTCOME, RUN_RESULT, REPAIR_STATUS)
