"""deploy/compose.yaml is valid against the Compose specification's JSON schema (vendored in
deploy/schemas/, with its source: nothing is fetched at test time)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

DEPLOY = Path(__file__).parent
SCHEMA = json.loads((DEPLOY / "schemas" / "compose-spec.json").read_text())


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    jsonschema.Draft7Validator(SCHEMA).validate(compose())


def test_an_unknown_service_field_fails_validation() -> None:
    """The check above can fail: a misspelt key in the real file is refused."""
    document = compose()
    next(iter(document["services"].values()))["healthchek"] = {}
    with pytest.raises(jsonschema.ValidationError, match="healthchek"):
        jsonschema.Draft7Validator(SCHEMA).validate(document)
