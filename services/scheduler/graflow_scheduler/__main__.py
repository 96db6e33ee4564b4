"""``python -m graflow_scheduler`` / ``pants run services/scheduler``: the scheduler as a process
(start-up, signals and exit codes: ``graflow_runtime.service``)."""

from __future__ import annotations

from graflow_runtime.service import Service, service_main

from graflow_scheduler.app import create_app
from graflow_scheduler.settings import SchedulerSettings

SERVICE = Service("scheduler", SchedulerSettings, create_app)


def main() -> None:
    service_main(SERVICE)


if __name__ == "__main__":
    main()
