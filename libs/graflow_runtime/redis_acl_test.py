"""The services' Redis ACL users against a real redis-server (TLS, users loaded): each one is
refused what it does not need, and nobody gets in without a password."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

from graflow_runtime import keys, redis_acl
from graflow_runtime.local_redis import LocalRedis, free_port
from graflow_runtime.redis_client import connect
from graflow_runtime.runids import new_run_id
from graflow_runtime.testing.slots import four_cells  # noqa: F401 - fixture

RUN = "01JABCDEFGHJKMNPQRSTVWXYZ0"
DEPLOYED_ACL = Path("deploy/redis/users.acl")


def test_the_deployed_acl_file_is_the_table_rendered() -> None:
    assert DEPLOYED_ACL.read_text() == redis_acl.render(), (
        "deploy/redis/users.acl is stale: python -m graflow_runtime.redis_acl > deploy/redis/users.acl"
    )


def test_the_deployed_acl_file_holds_no_password_and_redis_refuses_it_until_rendered(tmp_path: Path) -> None:
    text = DEPLOYED_ACL.read_text()
    assert not [word for word in text.split() if word.startswith(">")]  # no clear-text password rule
    for name in redis_acl.user_names():
        assert f"#<sha256:{name}>" in text
    (tmp_path / "users.acl").write_text(text)
    refused = subprocess.run(
        [LocalRedis(tmp_path).executable, "--port", str(free_port()), "--bind", "127.0.0.1", "--save", "",
         "--aclfile", str(tmp_path / "users.acl")],
        capture_output=True, timeout=30, check=False,
    )
    assert refused.returncode != 0
    assert b"ACL" in refused.stdout


@asynccontextmanager
async def _as(server: LocalRedis, user: str) -> AsyncIterator[aioredis.Redis]:
    client = connect(server.url_for(user))
    try:
        yield client
    finally:
        await client.aclose()


# (user, a command its service never needs, on a key it must not touch)
REFUSED: list[tuple[str, Callable[[aioredis.Redis], object]]] = [
    ("worker", lambda r: r.hset(keys.run_meta(RUN), "status", "RUN_STATUS_SUCCEEDED")),
    ("worker", lambda r: r.hset(keys.run_state(RUN), "a", "SUCCEEDED")),
    ("worker", lambda r: r.hget(keys.run_state(RUN), "a")),
    ("worker", lambda r: r.xadd(keys.queue_stream("default"), {keys.ENVELOPE_FIELD: b"x"})),
    ("worker", lambda r: r.xadd(keys.run_events(RUN), {b"e": b"x"})),
    ("worker", lambda r: r.hset(keys.results(RUN), "a", b"forged")),
    ("worker", lambda r: r.hget(keys.results(RUN), "a")),
    ("worker", lambda r: r.hset(keys.channel(RUN), "k", b"v")),
    ("worker", lambda r: r.zadd(keys.RETRY_TIMER, {b"default\nx": 1})),
    ("worker", lambda r: r.zadd(keys.WORKERS_INDEX, {b"w": 1})),
    ("worker", lambda r: r.hset(keys.worker_info("w"), "dead", "0")),
    ("worker", lambda r: r.xrange(keys.OUTCOMES_STREAM)),
    ("worker", lambda r: r.xreadgroup(keys.SCHEDULER_GROUP, "thief", {keys.OUTCOMES_STREAM: ">"})),
    ("worker", lambda r: r.xrange(keys.DEAD_LETTERS_STREAM)),
    ("worker", lambda r: r.xdel(keys.queue_stream("default"), "1-0")),
    ("worker", lambda r: r.delete(keys.queue_stream("default"))),
    ("worker", lambda r: r.flushdb()),
    ("worker", lambda r: r.config_set("appendonly", "no")),
    ("worker", lambda r: r.keys("*")),
    ("coordinator", lambda r: r.hset(keys.run_meta(RUN), "status", "RUN_STATUS_FAILED")),
    ("coordinator", lambda r: r.hset(keys.results(RUN), "a", b"forged")),
    ("coordinator", lambda r: r.xreadgroup(keys.WORKER_GROUP, "thief", {keys.queue_stream("default"): ">"})),
    ("coordinator", lambda r: r.hgetall(keys.channel(RUN))),
    ("result-store", lambda r: r.xadd(keys.OUTCOMES_STREAM, {keys.OUTCOME_FIELD: b"x"})),
    ("result-store", lambda r: r.hset(keys.run_meta(RUN), "status", "RUN_STATUS_FAILED")),
    ("result-store", lambda r: r.xadd(keys.queue_stream("default"), {keys.ENVELOPE_FIELD: b"x"})),
    ("scheduler", lambda r: r.xreadgroup(keys.WORKER_GROUP, "thief", {keys.queue_stream("default"): ">"})),
    ("scheduler", lambda r: r.xack(keys.queue_stream("default"), keys.WORKER_GROUP, "1-0")),
    ("scheduler", lambda r: r.zadd(keys.WORKERS_INDEX, {b"w": 1})),
    # It writes a run's arguments into its channel with the run (create_run.lua), never reads it.
    ("scheduler", lambda r: r.hget(keys.channel(RUN), "k")),
    ("scheduler", lambda r: r.set(keys.graph("h"), b"forged")),
    ("scheduler", lambda r: r.zrem(keys.RETRY_TIMER, b"x")),
]


@pytest.mark.parametrize(("user", "command"), REFUSED)
async def test_a_service_user_is_refused_what_its_service_does_not_need(
    acl_redis: LocalRedis, user: str, command: Callable[[aioredis.Redis], object]
) -> None:
    async with _as(acl_redis, user) as client:
        with pytest.raises(NoPermissionError):
            await command(client)  # type: ignore[misc]


async def test_the_worker_may_do_what_it_needs(acl_redis: LocalRedis) -> None:
    async with _as(acl_redis, redis_acl.ADMIN) as admin:
        await admin.hset(keys.run_meta(RUN), mapping={"ended": "0", "status": "RUN_STATUS_RUNNING"})
    async with _as(acl_redis, "worker") as worker:
        stream = keys.queue_stream("acl-test")
        await worker.xgroup_create(stream, keys.WORKER_GROUP, id="0", mkstream=True)
        assert await worker.hget(keys.run_meta(RUN), keys.RUN_ENDED_AT_FIELD) == b"0"
        assert await worker.xadd(keys.OUTCOMES_STREAM, {keys.OUTCOME_FIELD: b"o"})
        assert await worker.xreadgroup(keys.WORKER_GROUP, "w1", {stream: ">"}, count=1) == []
        assert await worker.xrevrange(keys.RUNS_ENDED, count=1) == []


async def test_with_cells_each_service_may_use_the_tagged_keys_its_grants_name(
    acl_redis: LocalRedis, four_cells: keys.Layout  # noqa: F811 - fixture
) -> None:
    """One ACL file serves every layout: the keys of a cell carry its hash tag (gf:{c<i>.<n>}:...),
    the worker registry its shared tag (gf:{gf}:...), and the grants name both forms."""
    run = new_run_id(cell=3)
    async with _as(acl_redis, redis_acl.ADMIN) as admin:
        await admin.hset(keys.run_meta(run), mapping={"ended": "0"})
    async with _as(acl_redis, "worker") as worker:
        lane = keys.queue_stream("acl-cells", 3)
        await worker.xgroup_create(lane, keys.WORKER_GROUP, id="0", mkstream=True)
        assert await worker.xreadgroup(keys.WORKER_GROUP, "w1", {lane: ">"}, count=1) == []
        assert await worker.xadd(keys.outcomes_stream(3), {keys.OUTCOME_FIELD: b"o"})
        assert await worker.xadd(keys.dead_letters_stream(3), {b"d": b"x"})
        assert await worker.hget(keys.run_meta(run), keys.RUN_ENDED_AT_FIELD) == b"0"
        assert await worker.xrevrange(keys.runs_ended(3), count=1) == []
        for refused in (worker.xadd(lane, {keys.ENVELOPE_FIELD: b"x"}), worker.hget(keys.run_state(run), "a"),
                        worker.zadd(keys.workers_index(), {"w": 1}), worker.xrange(keys.outcomes_stream(3))):
            with pytest.raises(NoPermissionError):
                await refused
    async with _as(acl_redis, "coordinator") as coordinator:
        await coordinator.zadd(keys.workers_index(), {"w": 1})
        await coordinator.hset(keys.worker_info("w"), "dead", "0")
        assert await coordinator.zadd(keys.retry_timer(2), {b"default\nx": 1}) == 1
        assert await coordinator.xrange(keys.dead_letters_stream(1)) == []
        with pytest.raises(NoPermissionError):
            await coordinator.hset(keys.run_meta(run), "status", "RUN_STATUS_FAILED")
    async with _as(acl_redis, "scheduler") as scheduler:
        await scheduler.hset(keys.run_state(run), "a", "READY")
        await scheduler.zadd(keys.runs_index(3), {run: 1})
        # The feedback notifier (graflow_scheduler.notify) on its cell's stream, and on the untagged one.
        for opened in (keys.feedback_opened(3), "gf:feedback:opened"):
            group = keys.FEEDBACK_NOTIFIER_GROUP
            await scheduler.xgroup_create(opened, group, id="0", mkstream=True)
            entry = await scheduler.xadd(opened, {keys.FEEDBACK_OPENED_RUN_FIELD: run})
            assert len((await scheduler.xreadgroup(group, "s1", {opened: ">"}, count=1))[0][1]) == 1
            assert await scheduler.xclaim(opened, group, "s1", 0, [entry], justid=True) == [entry]
            assert (await scheduler.xautoclaim(opened, group, "s2", 0, "0-0"))[1]
            assert (await scheduler.xpending(opened, group))["pending"] == 1
            assert await scheduler.xack(opened, group, entry) == 1
        with pytest.raises(NoPermissionError):
            await scheduler.xack(keys.queue_stream("acl-cells", 3), keys.WORKER_GROUP, "1-0")
    async with _as(acl_redis, "result-store") as result_store:
        await result_store.hset(keys.results(run), "a", b"r")
        await result_store.hset(keys.channel(run), "k", b"v")
        with pytest.raises(NoPermissionError):
            await result_store.xadd(keys.outcomes_stream(3), {keys.OUTCOME_FIELD: b"x"})


async def test_a_script_of_the_worker_s_own_runs_with_its_permissions(acl_redis: LocalRedis) -> None:
    """A script runs with its caller's permissions: the worker may load and call one, but every
    command in it is checked against its grants, so it writes no run state that way either."""
    async with _as(acl_redis, "worker") as worker:
        sha = await worker.script_load("return redis.call('XADD', KEYS[1], '*', 'e', 'forged')")
        # A queue may be declared (the worker's scripts do), but the XADD in the script is refused.
        with pytest.raises(ResponseError, match="can't access at least one of the keys"):
            await worker.evalsha(sha, 1, keys.queue_stream("default"))
        with pytest.raises(NoPermissionError):  # a run's state may not even be declared
            await worker.evalsha(sha, 1, keys.run_state(RUN))
    async with _as(acl_redis, redis_acl.ADMIN) as admin:
        assert await admin.exists(keys.queue_stream("default")) == 0


@pytest.mark.parametrize(
    "url",
    [
        lambda s: s.url_for(None),  # no credentials (the default user has a password)
        lambda s: s.url_for("worker").replace(":" + s.users["worker"] + "@", "@"),  # no password
        lambda s: s.url_for("worker").replace(s.users["worker"], "not-" + s.users["worker"]),
        lambda s: s.url_for("worker").replace("worker:", "nobody:"),
    ],
    ids=["no-user", "user-without-password", "wrong-password", "unknown-user"],
)
async def test_a_client_without_a_valid_password_is_refused(
    acl_redis: LocalRedis, url: Callable[[LocalRedis], str]
) -> None:
    client = connect(url(acl_redis))
    try:
        with pytest.raises(AuthenticationError):
            await client.get(keys.run_meta(RUN))
    finally:
        await client.aclose()


def test_rendering_without_a_password_for_every_user_fails() -> None:
    passwords = redis_acl.generate_passwords()
    del passwords["worker"]
    with pytest.raises(ValueError, match="worker"):
        redis_acl.render(passwords)


def test_the_deploy_script_renders_what_the_table_renders_with_the_passwords(tmp_path: Path) -> None:
    passwords = redis_acl.generate_passwords()
    for name, password in passwords.items():
        (tmp_path / name).write_text(password + "\n")  # as a mounted secret may end
    subprocess.run(
        ["sh", "deploy/redis/render-acl.sh", str(DEPLOYED_ACL), str(tmp_path), str(tmp_path / "users.acl")],
        check=True, timeout=30,
    )
    assert (tmp_path / "users.acl").read_text() == redis_acl.render(passwords)
    assert redis_acl.read_passwords(tmp_path) == passwords


async def test_what_the_services_wrote_in_transactions_and_scripts_survives_a_redis_restart(
    tmp_path: Path,
) -> None:
    """Redis replays its AOF as its default user and checks EXEC's commands against that user's
    permissions (redis/redis#14541, valkey-io/valkey#3983): with the default user off, every
    MULTI/EXEC and every Lua script's writes (replicated as MULTI/EXEC) would be dropped silently
    at the next start."""
    with LocalRedis(tmp_path, users=redis_acl.generate_passwords(), fsync="always") as server:
        async with _as(server, "coordinator") as coordinator:
            async with coordinator.pipeline(transaction=True) as pipe:
                pipe.hset(keys.worker_info("w1"), mapping={"queues": "[]"})
                pipe.zadd(keys.WORKERS_INDEX, {"w1": 1})
                await pipe.execute()
        async with _as(server, "result-store") as result_store:
            sha = await result_store.script_load("return redis.call('HSET', KEYS[1], 'a', 'scripted')")
            await result_store.evalsha(sha, 1, keys.results(RUN))
        server.restart()
        async with _as(server, redis_acl.ADMIN) as admin:
            assert await admin.zscore(keys.WORKERS_INDEX, "w1") == 1
            assert await admin.hget(keys.worker_info("w1"), "queues") == b"[]"
            assert await admin.hget(keys.results(RUN), "a") == b"scripted"
