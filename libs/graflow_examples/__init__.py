"""Example task modules and workflows: what `graflow dev` runs, and what benchmarks build on.

Workers load them with ``GRAFLOW_WORKER_TASK_MODULES=graflow_examples.etl,graflow_examples.fanout,...``.
:data:`EXAMPLES` maps each example's name to its ``module:attribute`` (a Workflow or a zero-argument
function returning one).
"""

EXAMPLES = {
    "etl": "graflow_examples.etl:etl",
    "fanout": "graflow_examples.fanout:fanout",
    "retrying": "graflow_examples.resilience:retrying",
    "failing": "graflow_examples.resilience:failing",
    "slow": "graflow_examples.resilience:slow",
    "release": "graflow_examples.approval:release",
}

TASK_MODULES = [
    "graflow_examples.etl",
    "graflow_examples.fanout",
    "graflow_examples.resilience",
    "graflow_examples.approval",
]
