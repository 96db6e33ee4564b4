"""One Redis ACL user per service, with the keys and commands it needs and no more (issue 14).

The table :data:`SERVICE_USERS` is the one source of the rules: ``deploy/redis/users.acl`` is rendered from
it (a test keeps the two equal), and so are the ACL files of the test fixtures and of
``LocalStack``. docs/security.md ("Redis") explains each user and what a holder of its password can
still do.

Each user is a list of :class:`Grant` s: commands allowed on key patterns, rendered as one Redis 7
ACL *selector* each, so a command is allowed on exactly the keys of a grant that names it (a worker
may ``XADD`` to ``gf:outcomes`` but not to a queue it reads). The user's root permissions hold only
the commands without keys (``EVALSHA``, ``SCRIPT LOAD``, ``PING``...) and, for ``EVALSHA``'s declared
keys, the union of its grants' patterns. A script runs with its caller's permissions: every
command it calls is checked against the grants again, so loading a script of one's own gains
nothing. The default user is the operators' (every command, every key) and has a password: a
connection without credentials can do nothing.

Passwords never appear in the rules: the rendered file carries ``#<sha256 hex>`` of each password,
or, without passwords, a placeholder ``#<sha256:USER>`` that Redis refuses to load
(``deploy/redis/render-acl.sh`` replaces it with the hash of the user's secret).

    python -m graflow_runtime.redis_acl                      # the rules, with placeholders
    python -m graflow_runtime.redis_acl --passwords-dir DIR  # a loadable file: DIR/<user> holds its password
"""

from __future__ import annotations

import argparse
import hashlib
import re
import secrets
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from graflow_runtime import keys

_P = keys.PREFIX
# A key's cell prefix in any layout: "gf:" untagged, "gf:{c<i>.<n>}:" tagged (keys.Layout.prefixes).
_CELL_PREFIX = re.compile(rf"^{_P}:(?:\{{c[0-9.]+\}}:)?")
# The shared tag of the structures outside the cells that scripts touch together (the registry).
_GLOBAL_PREFIX = re.compile(rf"^{_P}:(?:\{{{_P}\}}:)?")


def _in_cells(*names: str) -> tuple[str, ...]:
    """The patterns of keys of the cells (docs/architecture.md, "Redis Cluster: cells"), for every
    layout: each untagged (``gf:outcomes``, the default one-cell layout) and tagged with any cell
    (``gf:{c*}:outcomes``), so one ACL file serves any number of cells. ``names`` are the keys as
    the key functions name them in any layout."""
    rests = [_CELL_PREFIX.sub("", name, count=1) for name in names]
    return (*(f"{_P}:{rest}" for rest in rests), *(f"{_P}:{{c*}}:{rest}" for rest in rests))


def _shared(*names: str) -> tuple[str, ...]:
    """The patterns of the worker registry's keys, untagged and with their one shared tag."""
    rests = [_GLOBAL_PREFIX.sub("", name, count=1) for name in names]
    return (*(f"{_P}:{rest}" for rest in rests), *(f"{_P}:{{{_P}}}:{rest}" for rest in rests))


# Key patterns (Redis globs; "{" and "}" are literal). RUN_META matches a run's meta hash
# gf:run:{R} only, not gf:run:{R}:state and the other run keys (run ids hold no "}").
QUEUE_LANES = _in_cells(keys.queue_stream("*"), keys.queue_high_stream("*"))
RUN_META = _in_cells(keys.run_meta("*"))
RUN_KEYS = _in_cells(f"{_P}:run:*")
RESULTS = _in_cells(keys.results("*"), keys.result_attempts("*"))
DISPATCH_RECORDS = _in_cells(keys.dispatch_record("*"))
WORKER_REGISTRY = _shared(keys.workers_index(), keys.worker_info("*"))
OUTCOMES = _in_cells(keys.outcomes_stream(0))
DEAD_LETTERS = _in_cells(keys.dead_letters_stream(0))
RUNS_ENDED = _in_cells(keys.runs_ended(0))
RETRY = _in_cells(keys.retry_timer(0), keys.retry_wake(0))
FEEDBACK_OPENED = _in_cells(keys.feedback_opened(0))
RUN_INDEXES = _in_cells(
    keys.idempotency("*"), keys.runs_index(0), keys.active_runs(0), keys.feedback_pending(0),
    keys.wait_deadlines(0), keys.children_ended(0), keys.children_to_cancel(0), keys.runs_ended(0),
    keys.runs_by_status(0, "*"),
)
CHANNELS = _in_cells(keys.channel("*"))
WORKFLOW_REGISTRY = _shared(*keys.workflow_registry())

# Commands every service's connections make: redis-py's connection set-up (AUTH needs no
# permission) and health check, the Lua script runner (graflow_runtime.scripts: EVALSHA, SCRIPT
# LOAD after NOSCRIPT), the durability check at start-up (graflow_runtime.redis_client's
# check_durability reads INFO when CONFIG is refused, and every service user is refused CONFIG:
# it can change the server), transactions (MULTI/EXEC pipelines; each command in one is checked),
# and a Redis Cluster client's start-up: which node owns which slots (CLUSTER SLOTS) and the command
# table it routes by (COMMAND: read-only facts about commands).
# (graflow_runtime.redis_client.connect turns redis-py's CLIENT SETINFO off.)
CONNECTION_COMMANDS = (
    "ping", "client|setname", "info", "evalsha", "script|load", "multi", "exec", "discard", "cluster|slots",
    "command",
)


@dataclass(frozen=True)
class Grant:
    """Commands allowed on keys: ``keys`` read and written, ``read_keys`` only read, ``write_keys``
    only written (Redis' ``~``, ``%R~``, ``%W~``)."""

    why: str
    commands: tuple[str, ...]
    keys: tuple[str, ...] = ()
    read_keys: tuple[str, ...] = ()
    write_keys: tuple[str, ...] = ()

    @property
    def patterns(self) -> tuple[str, ...]:
        return (*self.keys, *self.read_keys, *self.write_keys)

    def selector(self) -> str:
        rules = [
            *(f"~{p}" for p in self.keys),
            *(f"%R~{p}" for p in self.read_keys),
            *(f"%W~{p}" for p in self.write_keys),
            *(f"+{c}" for c in self.commands),
        ]
        return f"({' '.join(rules)})"


@dataclass(frozen=True)
class RedisUser:
    """A service's Redis user. ``keyless`` commands are allowed beside :data:`CONNECTION_COMMANDS`;
    ``can_still`` is what a holder of its password can do (docs/security.md)."""

    name: str
    grants: tuple[Grant, ...]
    can_still: str
    keyless: tuple[str, ...] = ()

    @property
    def script_keys(self) -> tuple[str, ...]:
        """``EVALSHA`` needs read and write access to the keys a call declares: every pattern of
        the user's grants (its scripts' commands are checked against the grants)."""
        return tuple(dict.fromkeys(p for grant in self.grants for p in grant.patterns))

    @property
    def commands(self) -> frozenset[str]:
        """Every command the user may run somewhere."""
        return frozenset(
            (*CONNECTION_COMMANDS, *self.keyless, *(c for grant in self.grants for c in grant.commands))
        )

    def rules(self, password_hash: str) -> str:
        """The user's ACL rules, as one line of an ACL file (``ACL SETUSER`` takes the same)."""
        root = [
            "on", f"#{password_hash}", "resetchannels", "-@all",
            *(f"+{c}" for c in (*CONNECTION_COMMANDS, *self.keyless)),
            *(f"~{p}" for p in self.script_keys),
        ]
        return " ".join([*root, *(grant.selector() for grant in self.grants)])


_STREAM_CONSUMER = ("xreadgroup", "xack", "xgroup|create", "xpending")
# graflow_runtime.queues.QueueGroups registers a queue name before it makes its streams.
_QUEUE_REGISTRY = Grant(
    "register queue names in use, up to MAX_QUEUES (register_queues.lua)",
    ("sismember", "scard", "sadd"),
    keys=(keys.QUEUES,),
)
# graflow_runtime.audit: the API servers record the mutating calls they answer.
_AUDIT = Grant("record audited calls (graflow_runtime.audit)", ("xadd",), write_keys=(keys.AUDIT_STREAM,))
# graflow_runtime.fleet: the scheduler's and the coordinator's fleet-metrics lease (metrics_lease.lua).
_METRICS_LEASE = Grant(
    "take and renew the fleet-metrics lease (metrics_lease.lua)", ("get", "set", "pexpire"),
    keys=(keys.metrics_lease("*"),),
)
# graflow_runtime.redis_client.check_layout: every process records or compares the key layout.
_LAYOUT = Grant("record and check the key layout at start-up (check_layout)", ("get", "set"),
                keys=(keys.LAYOUT_KEY,))

WORKER = RedisUser(
    name="worker",
    keyless=("client|id", "client|unblock"),
    grants=(
        _LAYOUT,
        Grant(
            "take deliveries from the queues' lanes and acknowledge them (read_lanes.lua, "
            "append_and_ack.lua), look at its own pending entries",
            (*_STREAM_CONSUMER, "xrange"),
            keys=QUEUE_LANES,
        ),
        Grant(
            "append outcomes (append_and_ack.lua) and dead letters of undecodable deliveries",
            ("xadd",),
            write_keys=(*OUTCOMES, *DEAD_LETTERS),
        ),
        Grant(
            "learn which runs ended (invariant 11): a run meta's 'ended', the ended-runs stream",
            ("hget", "xread", "xrevrange"),
            read_keys=(*RUN_META, *RUNS_ENDED),
        ),
    ),
    can_still="take, hold and acknowledge the deliveries of every queue (so run or drop any task), "
    "append outcomes and dead letters (a forged outcome is refused by its signature), read whether a "
    "run ended and its meta (status, graph hash, parent), unblock another client's blocking read. It "
    "cannot write run state, results, channels, checkpoints or graphs, enqueue a delivery, move the "
    "retry timer, read results or channels, or touch the worker registry.",
)

SCHEDULER = RedisUser(
    name="scheduler",
    grants=(
        _LAYOUT,
        _METRICS_LEASE,
        Grant(
            "run state and its indexes (the state/*.lua scripts, reads of runs, waits, children), "
            "the ended-runs stream, results carried inline in outcomes (apply_outcome.lua, "
            "run_result.lua), dispatch records (dispatch.lua)",
            (
                "exists", "expire", "ttl", "get", "set",
                "hget", "hgetall", "hmget", "hset", "hsetnx", "hdel", "hexists", "hincrby", "hstrlen",
                "hvals",
                "sadd", "srem", "scard", "smembers", "sscan",
                "zadd", "zrem", "zrange", "zcard",
                "xadd", "xread", "xrevrange",
            ),
            keys=(*RUN_KEYS, *RUN_INDEXES, *RESULTS, *DISPATCH_RECORDS),
        ),
        Grant(
            "a submitted run's arguments: its first channel values, written with the run (create_run.lua)",
            ("hset", "expire"),
            write_keys=CHANNELS,
        ),
        Grant(
            "the workflow registry (put_workflow.lua, GetWorkflow, ListWorkflows, DeleteWorkflow)",
            ("hget", "hgetall", "hset", "hdel", "hexists", "hlen", "hincrby"),
            keys=WORKFLOW_REGISTRY,
        ),
        Grant(
            "consume outcomes: its consumer group, claims of a dead replica's entries, trimming; "
            "synthesized outcomes (resolve_wait.lua, run_ended_outcome.lua)",
            (*_STREAM_CONSUMER, "xautoclaim", "xinfo|groups", "xtrim", "xadd"),
            keys=OUTCOMES,
        ),
        Grant("dead-letter an outcome it cannot apply", ("xadd",), write_keys=DEAD_LETTERS),
        Grant(
            "notify a webhook of new feedback requests: append them (apply_outcome.lua), read them "
            "through its consumer group, claim a dead replica's, keep its own held "
            "(graflow_scheduler.notify)",
            (*_STREAM_CONSUMER, "xautoclaim", "xclaim", "xadd"),
            keys=FEEDBACK_OPENED,
        ),
        _AUDIT,
        _QUEUE_REGISTRY,
        Grant(
            "enqueue deliveries (dispatch.lua): the queues' consumer groups, appends",
            ("exists", "xgroup|create", "xadd"),
            keys=QUEUE_LANES,
        ),
        Grant(
            "delay retries: the retry timer and its wake-up stream (dispatch.lua)",
            ("zadd", "zrange", "xadd"),
            keys=RETRY,
        ),
    ),
    can_still="create, change, end and delete any run and its events, store and overwrite any run's "
    "results, enqueue any delivery on any queue (a forged envelope needs the signing key), append "
    "outcomes and dead letters, append (not read) audit events, hold the fleet-metrics lease, append, "
    "read and acknowledge the feedback-opened streams (its webhook notifications), register, replace "
    "and delete workflows, write (not read) a run's channel values (its arguments). "
    "It cannot read or acknowledge the "
    "queues' deliveries, move or drop the retry timer's entries, touch the worker registry, read "
    "channels, touch checkpoints or graphs.",
)

COORDINATOR = RedisUser(
    name="coordinator",
    grants=(
        _LAYOUT,
        _METRICS_LEASE,
        Grant(
            "record audited calls and list them (graflow_runtime.audit, ListAuditEvents)",
            ("xadd", "xrevrange"),
            keys=(keys.AUDIT_STREAM,),
        ),
        Grant(
            "the worker registry: leases, heartbeats, deaths (heartbeat.lua, mark_dead.lua, "
            "remove_worker.lua; its keys share one tag when tagged)",
            ("zadd", "zrem", "zscore", "zrangebyscore", "zcount", "hget", "hset", "hgetall", "del"),
            keys=WORKER_REGISTRY,
        ),
        Grant(
            "administer the queues: consumer groups and consumers (delete_consumer.lua), reclaims of "
            "dead workers' entries (settle_reclaim.lua), trimming, appends by Dispatch, the retry "
            "timer and replays",
            (
                "exists", "xadd", "xack", "xclaim", "xpending", "xrange", "xrevrange", "xtrim", "xlen",
                "xgroup|create", "xgroup|delconsumer", "xinfo|groups", "xinfo|consumers",
            ),
            keys=QUEUE_LANES,
        ),
        _QUEUE_REGISTRY,
        Grant("list the queues for the fleet-wide gauges (graflow_runtime.fleet)", ("smembers",),
              read_keys=(keys.QUEUES,)),
        Grant(
            "dead letters: list, replay (replay_dead_letters.lua), poison messages",
            ("xadd", "xrange", "xrevrange", "xdel"),
            keys=DEAD_LETTERS,
        ),
        Grant("outcomes of lost and poisoned attempts (settle_reclaim.lua)", ("xadd",),
              write_keys=OUTCOMES),
        Grant(
            "the retry timer (move_due.lua) and its wake-up stream; Dispatch (dispatch.lua)",
            ("zadd", "zrem", "zrange", "zrangebyscore", "xadd", "xread", "xrevrange"),
            keys=RETRY,
        ),
        Grant("dispatch records of its Dispatch RPC (dispatch.lua)", ("hmget", "hset", "expire"),
              keys=DISPATCH_RECORDS),
        Grant(
            "whether a run ended, for Dispatch (dispatch.lua)",
            ("hget", "xrevrange"),
            read_keys=(*RUN_META, *RUNS_ENDED),
        ),
    ),
    can_still="register, renew and declare dead any worker, claim, acknowledge, trim and append any "
    "queue's deliveries (so drop or repeat any task; a forged envelope needs the signing key), append "
    "outcomes of lost attempts (a forged one is refused by its signature), list, delete and replay dead "
    "letters, read whether a run ended, append and read audit events, hold the fleet-metrics lease "
    "(so keep another replica from exporting the fleet-wide gauges). It cannot write run state or "
    "results, read results, channels, checkpoints or graphs.",
)

RESULT_STORE = RedisUser(
    name="result-store",
    keyless=("time",),
    grants=(
        _LAYOUT,
        _AUDIT,
        Grant(
            "results, channels, checkpoints (put_results.lua, channel_*.lua) and graph blobs",
            ("get", "set", "hget", "hmget", "hset", "hdel", "hexists", "hkeys", "hlen", "expire"),
            # (gf:chan:{R}:exp: the channel's per-key expiry, graflow_result_store.store)
            keys=(
                *RESULTS, *_in_cells(keys.channel("*"), f"{keys.channel('*')}:exp", keys.checkpoints("*")),
                keys.graph("*"),
            ),
        ),
    ),
    can_still="read, overwrite and delete any run's results, channels, checkpoints and graph blobs "
    "(a changed graph blob changes what a run's later nodes are), append (not read) audit events. "
    "It cannot touch run state, the queues, outcomes, dead letters or the worker registry.",
)

SERVICE_USERS = (SCHEDULER, COORDINATOR, RESULT_STORE, WORKER)
# Operators' user: every command on every key (ACL LOAD, CONFIG, inspecting keys). No service uses it.
# It is Redis' default user, not a user of its own with the default user off: Redis replays its AOF
# as the default user and checks the commands of each MULTI/EXEC against that user's permissions
# (redis/redis#14541, fixed by redis/redis#14545; valkey-io/valkey#3983), so with the default user
# off every transaction and every Lua script's writes (replicated as MULTI/EXEC) were dropped
# silently at the next start (redis_acl_test.py's restart test).
ADMIN = "default"


def password_hash(password: str) -> str:
    """What an ACL file holds for a password (``#<hex>``): its SHA-256, so the file holds no secret."""
    return hashlib.sha256(password.encode()).hexdigest()


def render(passwords: Mapping[str, str] | None = None) -> str:
    """The ACL file: the operators' user (Redis' default user), one user per service. With
    ``passwords`` (user name -> password, every user of the file) it is loadable as it is; without,
    each password is a placeholder ``<sha256:USER>`` that Redis refuses."""
    def hashed(user: str) -> str:
        if passwords is None:
            return f"<sha256:{user}>"
        if not passwords.get(user):
            raise ValueError(f"no password for the Redis user {user!r}")
        return password_hash(passwords[user])

    lines = [
        f"user {ADMIN} on #{hashed(ADMIN)} ~* &* +@all",
        *(f"user {user.name} {user.rules(hashed(user.name))}" for user in SERVICE_USERS),
    ]
    return "\n".join(lines) + "\n"


def user_names() -> tuple[str, ...]:
    """Every user of the ACL file that logs in: the operators' user and the services'."""
    return (ADMIN, *(user.name for user in SERVICE_USERS))


def generate_passwords() -> dict[str, str]:
    """A new random password for every user (test and development stacks)."""
    return {name: secrets.token_urlsafe(24) for name in user_names()}


def read_passwords(directory: Path) -> dict[str, str]:
    """Every user's password from ``directory/<user>`` (a mounted secret; a final newline is not
    part of the password)."""
    names = user_names()
    missing = [name for name in names if not (directory / name).is_file()]
    if missing:
        raise ValueError(f"{directory} has no password file for the Redis user(s) {', '.join(missing)}")
    return {name: (directory / name).read_text().rstrip("\n") for name in names}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m graflow_runtime.redis_acl", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--passwords-dir", type=Path,
        help="a directory holding one file per user (default, scheduler, coordinator, result-store, worker) "
        "with its password: prints a file redis-server loads (--aclfile)",
    )
    options = parser.parse_args(argv)
    try:
        passwords = read_passwords(options.passwords_dir) if options.passwords_dir else None
    except ValueError as exc:
        parser.error(str(exc))
    sys.stdout.write(render(passwords))
    return 0


if __name__ == "__main__":
    sys.exit(main())
