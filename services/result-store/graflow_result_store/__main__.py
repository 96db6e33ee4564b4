"""``python -m graflow_result_store`` / ``pants run services/result-store``: the result-store as a
process (start-up, signals and exit codes: ``graflow_runtime.service``)."""

from __future__ import annotations

from graflow_runtime.service import Service, service_main

from graflow_result_store.app import create_app
from graflow_result_store.settings import ResultStoreSettings

SERVICE = Service("result-store", ResultStoreSettings, create_app)


def main() -> None:
    service_main(SERVICE)


if __name__ == "__main__":
    main()
