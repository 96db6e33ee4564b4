"""Limits and defaults of the contracts that the SDK and the services both apply, written once.

Plain Python, no third-party imports: the SDK imports it.
"""

# Directives one attempt may return with its outcome (``TaskOutcome.directives``): the SDK refuses
# to record more, the scheduler fails the node with InvalidDirective when it gets more.
MAX_DIRECTIVES = 1000
# Re-runs of a node (next_iteration, goto, loop edges) when neither the node nor its run sets
# ``max_cycles``.
DEFAULT_MAX_CYCLES = 100
# Multiplier of a task's retry delay after each attempt when its RetryPolicy sets none (0).
DEFAULT_BACKOFF_FACTOR = 2.0
# Dead letters in one ListDeadLetters page, and ids in one request by id (ListDeadLetters.ids,
# ReplayDeadLetters.ids): more is INVALID_ARGUMENT.
DEAD_LETTERS_PAGE_MAX = 1000
# Largest result a worker may carry inline in its outcome (``TaskOutcome.result``): the upper bound
# of GRAFLOW_WORKER_INLINE_RESULT_MAX_BYTES; the scheduler dead-letters an outcome carrying more.
# Every outcome stays in the outcome stream until it is applied and trimmed, so this is kept small.
MAX_INLINE_RESULT_BYTES = 1024 * 1024
# Nesting of JSON that users send (task arguments, channel values, feedback answers): deeper lists
# and objects are refused with INVALID_ARGUMENT, as are numbers that are not finite (1e400, NaN).
MAX_JSON_DEPTH = 64
# Largest task result (its encoded value) the result-store accepts: the default and the upper bound
# of GRAFLOW_RESULT_STORE_MAX_VALUE_BYTES. A worker fails a task whose result is larger
# (``ResultTooLarge``, not retried) without sending it; well below the gRPC message limit (64 MiB).
MAX_RESULT_BYTES = 16 * 1024 * 1024

# ---- A submitted workflow (the scheduler's compiler refuses more with INVALID_ARGUMENT, naming the
# field and the limit; nothing is stored). Each bounds what one SubmitRun can make the scheduler
# build, store or schedule.
# Edges of one workflow (``WorkflowSpec.edges``, loop edges included).
MAX_EDGES = 1_000_000
# Member ids of all groups of one workflow together (``GroupSpec.member_ids``).
MAX_GROUP_MEMBERS = 1_000_000
# Edges after group expansion: an edge into a group is one plan edge per member, and an edge out
# of a group passes the results of each of its members (an upstream input per member). 4,000
# sources into a group of 4,000 members would be 16,000,000: refused before anything is built.
MAX_EXPANDED_EDGES = 500_000
# Distinct loop edges of one workflow: each one walks the graph twice when compiled.
MAX_LOOP_EDGES = 100
# Start-to-close timeout of one attempt (``timeout_ms``): 7 days.
MAX_TIMEOUT_MS = 7 * 24 * 3600 * 1000
# Retry delays (``RetryPolicy.initial_interval_ms``, ``.max_interval_ms``): 1 day.
MAX_RETRY_INTERVAL_MS = 24 * 3600 * 1000
# Attempts of one node (``RetryPolicy.max_attempts``).
MAX_ATTEMPTS = 100
# Re-runs of one node (``max_cycles``) and node runs of one run (``RunDefaults.max_steps``).
MAX_CYCLES = 100_000
MAX_STEPS = 10_000_000
# ``NodeSpec.priority``: only its sign matters (above 0: the high lane); kept within +-1000.
MAX_PRIORITY = 1000
# How long one WaitRun (or SubmitRun with wait_ms) may wait for a run's end: 10 minutes (the SDK
# waits 60 s per call). Longer is INVALID_ARGUMENT; each waiting call holds a slot of the server.
MAX_WAIT_MS = 10 * 60 * 1000
# Dead letters kept (``gf:deadletters``, trimmed with ``XADD MAXLEN ~`` by every writer: the
# scheduler and the workers through ``graflow_runtime.streams.add_dead_letter``, the coordinator in
# its reclaim script).
# The coordinator's GRAFLOW_COORDINATOR_DEAD_LETTER_MAXLEN defaults to it.
DEAD_LETTERS_MAXLEN = 100_000
# Queue names in use (each one is two streams with a consumer group, which nothing deletes): a
# queue beyond them is refused with RESOURCE_EXHAUSTED (the registry is the set ``gf:queues``).
MAX_QUEUES = 1000
# Channel keys of one run (the result-store refuses a new key beyond them with RESOURCE_EXHAUSTED),
# and keys named by one ChannelGet, ChannelSet or ChannelDelete (more is INVALID_ARGUMENT).
MAX_CHANNEL_KEYS = 10_000
# Task types one worker registers (``RegisterWorkerRequest.task_types``, kept in its worker record).
MAX_WORKER_TASK_TYPES = 10_000
# Distinct loop edges times the graph's size (task nodes, groups and the edges between them after
# group expansion): each loop edge is walked through the graph, and its body and cleared join
# fields ride in every outcome of its tail.
MAX_LOOP_WALK = 5_000_000
