"""Clients of the scheduler's downstream services: the coordinator (coordinator: task
envelopes, one ``Dispatch`` per batch) and the result-store's graphs (plan_cache: compiled plans
by graph hash, the graph hash of each run)."""
