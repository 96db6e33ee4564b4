"""Shared machinery of the Graflow services: settings, logging, tracing, gRPC servers and clients
with deadlines and circuit breakers, errors and their status codes, Redis connections, Lua scripts
and key layout, process lifecycle and the one start-up path of a service (``service.service_main``).

Services import this package and the generated contracts (`graflow_api.v1`), never each other.
"""
