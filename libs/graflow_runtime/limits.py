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
# Audit events in one ListAuditEvents page: more is INVALID_ARGUMENT.
AUDIT_PAGE_MAX = 1000
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
