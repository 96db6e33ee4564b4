"""The result-store service: task results, run-scoped channels and content-addressed graphs."""
