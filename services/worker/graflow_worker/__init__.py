"""The Graflow worker: runs the task functions registered in its own process.

It reads task envelopes from its queue streams through the ``workers`` consumer group, runs the
registered function with its bound arguments and upstream results, stores results in the
result-store and appends each outcome to ``gf:outcomes`` atomically with the acknowledgement of its
delivery (``docs/architecture.md``, "Data path of one task", steps 3-4).
"""
