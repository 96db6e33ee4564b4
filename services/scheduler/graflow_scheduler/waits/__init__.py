"""Waits: human feedback and child runs (docs/architecture.md, "Waits"; the scripts are
``waits.lua`` and ``resolve_wait.lua`` in graflow_scheduler.state).

A task that asks for feedback, or waits for a child run it started, ends its attempt with a
WAITING outcome; its node is parked (``parking``), holding no worker, and resumes:

- with an answer through the API (``feedback``; ``validation`` checks requests and answers);
- by the wait timer (``timer``): a request's deadline fails the node with FeedbackTimeout, through
  the outcome stream like any failure, or keeps it waiting (``feedback``); a child run that ended
  resumes its parent's node (``children``, which also cancels the children of canceled runs);
- a resumed node is dispatched at once (``resume``); if that fails it stays READY for the
  recovery sweep.

Every step is an idempotent script call: replicas may run the timer side by side, and a crash
between two steps is repaired by the next pass.
"""
