"""The SDK's client path is light: importing it loads none of the services' settings machinery."""

import json
import os
import subprocess
import sys

from graflow.cli.devstack import child_pythonpath

PROBE = """
import json, sys
import graflow
from graflow.operators import Operators
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


def test_importing_the_sdk_and_its_clients_loads_no_pydantic():
    env = {**os.environ, "PYTHONPATH": child_pythonpath()}
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stdout))
    assert "graflow_runtime" in loaded
    assert not loaded & {"pydantic", "pydantic_settings"}, sorted(loaded)
