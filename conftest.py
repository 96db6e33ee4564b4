import os

# Tests spawn and restart service processes (fork, then exec after a pre-exec hook) while gRPC
# calls may be in flight. gRPC core's fork handlers then re-initialise gRPC in the child between
# fork and exec, and the child can abort (SIGABRT, "epoll_wait error: Bad file descriptor") before
# it becomes the service. Nothing here uses gRPC across a fork, so they are off. This must run
# before anything imports grpc.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

pytest_plugins = ["graflow_testing.plugin"]
