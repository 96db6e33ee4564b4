"""Errors of the services, each carrying what it means to the caller.

A handler raises a :class:`ServiceError` subclass with a message the caller can act on; the
server factory (:func:`graflow_runtime.grpc_server.create_server`) installs the one interceptor
that turns it into ``context.abort(error.code, message)`` and an unreachable Redis into
UNAVAILABLE, so handlers never translate errors themselves.

:class:`ConfigurationError` is the process-level counterpart: raised while a service starts, it
stops the process with exit code 2 (:mod:`graflow_runtime.service`).
"""

from __future__ import annotations

import grpc


class ServiceError(Exception):
    """A request the service cannot honour; ``code`` is the gRPC status the caller receives."""

    code = grpc.StatusCode.INTERNAL


class InvalidRequest(ServiceError, ValueError):
    """The request is malformed; nothing was changed (INVALID_ARGUMENT)."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServiceError, LookupError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ServiceError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ServiceError):
    """The request is well formed but the state it applies to does not allow it."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(ServiceError):
    """Something the service needs is unreachable for now; the caller retries with backoff."""

    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(ServiceError):
    """A limit of the service is reached (the message names it); retrying the same call will not
    help until something is freed or the limit is raised."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class ConfigurationError(RuntimeError):
    """The process is configured wrongly (settings, task modules); it cannot start."""
