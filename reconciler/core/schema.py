"""The JSON Schema of desired-state.yaml, generated from the models (``schemas/`` holds the checked-in copy).

Guarantees: ``render()`` is deterministic (sorted keys, trailing newline), so a test can compare the
checked-in file byte for byte and fail when the models moved without it.
"""

from __future__ import annotations

import json
from typing import Any

from reconciler.core.model import DesiredFile

SCHEMA_PATH = "schemas/desired-state.schema.json"


def desired_schema() -> dict[str, Any]:
    schema = DesiredFile.model_json_schema(mode="validation")
    schema["$id"] = "https://reconciler.dev/schemas/desired-state.schema.json"
    return schema


def render() -> str:
    return json.dumps(desired_schema(), indent=2, sort_keys=True) + "\n"
