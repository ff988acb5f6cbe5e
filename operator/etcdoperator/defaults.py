"""Structural-schema defaulting, the way the Kubernetes API server applies CRD defaults.

The API server defaults an object before the operator ever sees it; the operator defaults again
with the same schema so that it behaves the same when a default is missing (older CRD installed,
an API server that skipped it, or a unit test feeding raw specs).
"""

from __future__ import annotations

import copy
from typing import Any


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Return `value` with every missing defaulted property filled in, recursively.

    As in the API server: a default applies when the key is absent (not when it is null), the
    default value is itself defaulted, and array items and additionalProperties are walked too.
    """
    if isinstance(value, dict):
        out = dict(value)
        props: dict[str, Any] = schema.get("properties") or {}
        for key, sub in props.items():
            if key not in out and "default" in sub:
                out[key] = copy.deepcopy(sub["default"])
            if key in out and out[key] is not None:
                out[key] = apply_defaults(sub, out[key])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key, item in list(out.items()):
                if key not in props and item is not None:
                    out[key] = apply_defaults(extra, item)
        return out
    if isinstance(value, list):
        items = schema.get("items")
        if isinstance(items, dict):
            return [apply_defaults(items, v) if v is not None else v for v in value]
    return value
