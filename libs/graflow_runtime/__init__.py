"""Shared machinery of the Graflow services: settings, logging, tracing, gRPC servers and clients
with deadlines and circuit breakers, Redis connections and key layout, process lifecycle.

Services import this package and the generated contracts (`graflow_api.v1`), never each other.
"""
