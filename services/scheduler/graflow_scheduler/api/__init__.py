"""The client API (``graflow_api.v1.Scheduler``): the servicer."""
