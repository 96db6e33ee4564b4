"""Clients of the scheduler's downstream service, the result-store's graphs (plan_cache: compiled
plans by graph hash, the graph hash of each run). Deliveries are not a downstream call: the
scheduler enqueues them itself (graflow_scheduler.state.deliveries, graflow_runtime.dispatch)."""
