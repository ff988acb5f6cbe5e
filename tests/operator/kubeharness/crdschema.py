"""What the API server does with a custom resource: check the CRD is structural, default, validate.

Defaulting is the operator's own `apply_defaults` (the same walk the API server does). Validation
uses jsonschema on the openAPIV3Schema, strict about unknown fields (as `kubectl apply
--validate=strict`). CEL rules (x-kubernetes-validations) are evaluated by `cel_errors` (cel-python),
not by `default_and_validate`; the operator checks the non-transition rules itself too
(etcdoperator.spec.validate_cluster_spec).
"""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
from etcdoperator.defaults import apply_defaults

_FORBIDDEN = ("$ref", "definitions", "dependencies", "additionalItems", "patternProperties", "$schema", "id")
_JUNCTORS = ("allOf", "anyOf", "oneOf", "not")
_NOT_IN_JUNCTORS = (
    "type",
    "default",
    "nullable",
    "additionalProperties",
    "description",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-embedded-resource",
)


def structural_errors(schema: dict[str, Any], path: str = "", *, in_junctor: bool = False) -> list[str]:
    errors: list[str] = []
    for key in _FORBIDDEN:
        if key in schema:
            errors.append(f"{path or '/'}: {key} is not allowed in a structural schema")
    int_or_string = schema.get("x-kubernetes-int-or-string") is True
    preserve = schema.get("x-kubernetes-preserve-unknown-fields") is True
    if in_junctor:
        for key in _NOT_IN_JUNCTORS:
            if key in schema:
                errors.append(f"{path}: {key} must not be inside allOf/anyOf/oneOf/not")
    elif "type" not in schema and not int_or_string and not preserve:
        errors.append(f"{path or '/'}: type is required")
    if "properties" in schema and "additionalProperties" in schema:
        errors.append(f"{path}: properties and additionalProperties are mutually exclusive")
    for name, sub in (schema.get("properties") or {}).items():
        errors += structural_errors(sub, f"{path}/{name}", in_junctor=in_junctor)
    if isinstance(schema.get("additionalProperties"), dict):
        errors += structural_errors(schema["additionalProperties"], f"{path}/*", in_junctor=in_junctor)
    if isinstance(schema.get("items"), dict):
        errors += structural_errors(schema["items"], f"{path}[]", in_junctor=in_junctor)
    for j in _JUNCTORS:
        subs = schema.get(j)
        if subs is None:
            continue
        for i, sub in enumerate(subs if isinstance(subs, list) else [subs]):
            if int_or_string and j == "anyOf" and sub in ({"type": "integer"}, {"type": "string"}):
                continue  # the one pattern allowed for int-or-string
            errors += structural_errors(sub, f"{path}/{j}[{i}]", in_junctor=True)
    if "default" in schema and not in_junctor:
        try:
            jsonschema.Draft7Validator(_to_jsonschema(schema, strict=False)).validate(schema["default"])
        except jsonschema.ValidationError as e:
            errors.append(f"{path}: default does not validate: {e.message}")
    return errors


def _to_jsonschema(schema: Any, *, strict: bool) -> Any:
    """OpenAPI v3 (as Kubernetes uses it) to JSON Schema; strict forbids unknown fields."""
    if isinstance(schema, list):
        return [_to_jsonschema(s, strict=strict) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key.startswith("x-kubernetes-") or key in ("nullable", "format", "description", "default"):
            continue
        if key == "properties":
            out[key] = {k: _to_jsonschema(v, strict=strict) for k, v in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = _to_jsonschema(value, strict=strict)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [_to_jsonschema(v, strict=strict) for v in value]
        else:
            out[key] = value
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    preserve = schema.get("x-kubernetes-preserve-unknown-fields") is True
    if (
        strict
        and out.get("type") == "object"
        and "properties" in out
        and not preserve
        and "additionalProperties" not in out
    ):
        out["additionalProperties"] = False
    return out


def version_schema(crd: dict[str, Any], version: str | None = None) -> dict[str, Any]:
    versions = crd["spec"]["versions"]
    v = next(v for v in versions if version is None or v["name"] == version)
    return v["schema"]["openAPIV3Schema"]


def default_and_validate(
    crd: dict[str, Any], obj: dict[str, Any], *, strict: bool = True
) -> tuple[dict[str, Any], list[str]]:
    """Returns (the defaulted object, validation errors) like a create/update would."""
    schema = version_schema(crd, obj.get("apiVersion", "/").split("/")[-1])
    body = copy.deepcopy(obj)
    meta = body.get("metadata")
    body = apply_defaults(schema, {k: v for k, v in body.items() if k != "metadata"})
    if meta is not None:
        body["metadata"] = meta
    root = dict(schema)
    root["properties"] = {k: v for k, v in schema["properties"].items() if k != "metadata"}
    validator = jsonschema.Draft7Validator(_to_jsonschema(root, strict=strict))
    errors = []
    for e in sorted(
        validator.iter_errors({k: v for k, v in body.items() if k != "metadata"}), key=lambda e: list(e.path)
    ):
        where = "/".join(str(p) for p in e.absolute_path)
        errors.append(f"{where or '/'}: {e.message}")
    return body, errors


def cel_errors(crd: dict[str, Any], obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    """Evaluate the CRD's x-kubernetes-validations (CEL, with cel-python) on `obj` (already defaulted),
    as the API server does on create (`old` None) or update: a rule is checked at every schema node
    the object has; a transition rule (it names `oldSelf`) only where the old object has that node too."""
    import celpy

    env = celpy.Environment()
    errors: list[str] = []

    def walk(schema: dict[str, Any], new: Any, prev: Any, has_prev: bool, path: str) -> None:
        for rule in schema.get("x-kubernetes-validations") or []:
            text = rule["rule"]
            transition = "oldSelf" in text
            if transition and not has_prev:
                continue
            activation = {"self": celpy.json_to_cel(new)}
            if transition:
                activation["oldSelf"] = celpy.json_to_cel(prev)
            try:
                ok = env.program(env.compile(text)).evaluate(activation)
            except celpy.CELEvalError as e:
                errors.append(f"{path or '/'}: {rule.get('message', text)} (evaluation error: {e})")
                continue
            if isinstance(ok, celpy.CELEvalError):
                errors.append(f"{path or '/'}: {rule.get('message', text)} (evaluation error: {ok})")
            elif not bool(ok):
                errors.append(f"{path or '/'}: {rule.get('message', text)}")
        if isinstance(new, dict):
            for key, sub in (schema.get("properties") or {}).items():
                if key in new:
                    p_has = has_prev and isinstance(prev, dict) and key in prev
                    walk(sub, new[key], prev[key] if p_has else None, p_has, f"{path}/{key}")

    walk(version_schema(crd), obj, old, old is not None, "")
    return errors
