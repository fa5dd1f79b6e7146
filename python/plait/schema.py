"""Schemas as pydantic sees them: cached type adapters and payload models."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, cast

import pydantic
from pydantic import BaseModel, TypeAdapter

__all__ = ["adapter", "model_from_fields", "model_from_signature", "payload_model"]

_adapters: dict[Any, TypeAdapter[Any]] = {}


def adapter(tp: Any) -> TypeAdapter[Any]:
    """A `TypeAdapter` for `tp`, built once per type (building one costs ~100 µs)."""
    try:
        return _adapters[tp]
    except KeyError:
        pass
    except TypeError:  # an unhashable annotation (rare): no caching
        return TypeAdapter(tp)
    built: TypeAdapter[Any] = TypeAdapter(tp)
    _adapters[tp] = built
    return built


def model_from_fields(name: str, fields: Mapping[str, object]) -> type[BaseModel]:
    """A model named `name` whose fields are `{field: type}` or `{field: (type, default)}`."""
    definitions: dict[str, Any] = {
        field: spec if isinstance(spec, tuple) else (spec, ...) for field, spec in fields.items()
    }
    return cast("type[BaseModel]", pydantic.create_model(name, **definitions))


def model_from_signature(
    name: str, fn: Callable[..., object], skip: frozenset[str] = frozenset()
) -> type[BaseModel]:
    """A model of `fn`'s parameters (other than `skip`), annotations and defaults included."""
    fields: dict[str, object] = {}
    hints = _hints(fn)
    for param in inspect.signature(fn).parameters.values():
        if param.name in skip:
            continue
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            msg = f"{name}: *args and **kwargs cannot form a payload"
            raise TypeError(msg)
        tp = hints.get(param.name, Any)
        fields[param.name] = tp if param.default is param.empty else (tp, param.default)
    return model_from_fields(name, fields)


def return_type(fn: Callable[..., object], default: object) -> object:
    """`fn`'s return annotation, or `default` when it has none."""
    return _hints(fn).get("return", default)


def _hints(fn: Callable[..., object]) -> dict[str, object]:
    import typing

    try:
        return typing.get_type_hints(fn)
    except (NameError, TypeError):
        return dict(getattr(fn, "__annotations__", {}))


def payload_model(
    name: str, payload: type[BaseModel] | Mapping[str, object] | None
) -> type[BaseModel]:
    """The payload model of workflow `name`: the model given, or one built from a field dict."""
    if payload is None:
        return model_from_fields(f"{name}Payload", {})
    if isinstance(payload, type) and issubclass(payload, BaseModel):
        return payload
    if isinstance(payload, Mapping):
        return model_from_fields(f"{name}Payload", payload)
    msg = (
        f"workflow {name!r}: payload must be a pydantic model or a dict of fields, got {payload!r}"
    )
    raise TypeError(msg)
