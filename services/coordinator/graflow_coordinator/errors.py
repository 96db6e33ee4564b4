"""Errors of the coordinator's operations, each tied to the gRPC status code it is reported with."""

from __future__ import annotations

import grpc


class CoordinatorError(Exception):
    """A request the coordinator cannot honour; the message tells the caller what to do."""

    code = grpc.StatusCode.INTERNAL


class InvalidRequest(CoordinatorError, ValueError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(CoordinatorError, LookupError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(CoordinatorError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(CoordinatorError):
    code = grpc.StatusCode.FAILED_PRECONDITION
