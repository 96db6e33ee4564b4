"""Feedback notifications: each new feedback request POSTed to a webhook (docs/operations.md,
"Feedback notifications"). ``apply_outcome.lua`` appends the request to its cell's
feedback-opened stream with the request itself (so a request is notified iff it was recorded);
:mod:`.notifier` reads those streams through a consumer group shared by the replicas and delivers
each entry at least once, retrying with backoff, off the path of every run."""
