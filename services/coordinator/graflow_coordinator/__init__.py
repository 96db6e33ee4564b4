"""The coordinator: queue streams, dispatch, retry timer, worker registry and liveness, reclaiming
the in-flight work of dead workers, and dead letters (docs/architecture.md)."""
