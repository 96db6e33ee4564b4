"""``python -m graflow_coordinator`` / ``pants run services/coordinator``: the coordinator as a
process (start-up, signals and exit codes: ``graflow_runtime.service``)."""

from __future__ import annotations

from graflow_runtime.service import Service, service_main

from graflow_coordinator.app import create_app
from graflow_coordinator.settings import CoordinatorSettings

SERVICE = Service("coordinator", CoordinatorSettings, create_app)


def main() -> None:
    service_main(SERVICE)


if __name__ == "__main__":
    main()
