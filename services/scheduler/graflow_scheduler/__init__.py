"""The Graflow scheduler: workflow runs, node states, joins and group policies, run events, and
the client API (``graflow_api.v1.Scheduler``)."""
