"""Where each service listens by default (every default works on one machine).

The services' settings and the SDK's clients both start from these. Plain Python, no third-party
imports: the SDK's client path imports it without pulling in the services' settings (pydantic).
"""

DEFAULT_SCHEDULER_ADDRESS = "127.0.0.1:50051"
DEFAULT_COORDINATOR_ADDRESS = "127.0.0.1:50052"
DEFAULT_RESULT_STORE_ADDRESS = "127.0.0.1:50053"
