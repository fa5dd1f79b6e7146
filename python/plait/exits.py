"""How steps and workflows end, typed errors, and their encoding in the journal.

`Success` / `Failure` are exits; `Complete` / `Suspended` are workflow results.

Encoded exits follow Effect's shape::

    {"_tag": "Success", "value": ...}
    {"_tag": "Failure", "cause": {"_tag": "Fail", "error": {"_tag": "CardDeclined", ...}}}
    {"_tag": "Failure", "cause": {"_tag": "Die", "defect": {"name": ..., "message": ...}}}
    {"_tag": "Failure", "cause": {"_tag": "Interrupt", "executionId": ...}}
"""

from __future__ import annotations

import json
import traceback
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import pydantic
from pydantic import BaseModel
from pydantic_core import PydanticSerializationError

from plait.errors import Defect, Interrupted, JournalDecodeError, ResultSchemaError
from plait.schema import adapter, model_from_fields

__all__ = [
    "OUTCOME_PREFIXES",
    "Complete",
    "Exit",
    "ExitCodec",
    "Failure",
    "Success",
    "Suspended",
    "TaggedError",
]

T = TypeVar("T")


class TaggedError(Exception):
    """Base class of typed errors: declare fields with annotations, as on a pydantic model.

    Declared in a workflow's or activity's `error=`, it is stored in the journal and raised
    again as the same class with the same fields, after a replay or in another process.

    Example:
        >>> class CardDeclined(TaggedError):
        ...     reason: str
        >>> err = CardDeclined(reason="insufficient funds")
        >>> err.reason, str(err)
        ('insufficient funds', "CardDeclined(reason='insufficient funds')")
    """

    __plait_model__: ClassVar[type[BaseModel]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        hints = typing.get_type_hints(cls)
        fields: dict[str, object] = {}
        for name, tp in hints.items():
            if name.startswith("_") or typing.get_origin(tp) is ClassVar or tp is ClassVar:
                continue
            default = cls.__dict__.get(name, getattr(cls, name, ...))
            fields[name] = (tp, default)
        cls.__plait_model__ = model_from_fields(cls.__name__, fields)

    def __init__(self, **fields: Any) -> None:
        model = self.__plait_model__(**fields)
        for name in type(model).model_fields:
            setattr(self, name, getattr(model, name))
        super().__init__(f"{type(self).__name__}({self._fields_repr()})")

    def _fields_repr(self) -> str:
        return ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__plait_model__.model_fields)

    def fields(self) -> dict[str, Any]:
        """The error's fields as a dict."""
        return {n: getattr(self, n) for n in self.__plait_model__.model_fields}

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is type(self)
            and isinstance(other, TaggedError)
            and (other.fields() == self.fields())
        )

    __hash__ = Exception.__hash__


@dataclass(frozen=True, slots=True)
class Success(Generic[T]):
    """A step or workflow that returned `value`."""

    value: T

    def unwrap(self) -> T:
        """The value."""
        return self.value


@dataclass(frozen=True, slots=True)
class Failure:
    """A step or workflow that failed with `error`.

    The error is a declared error, a `Defect`, or `Interrupted`.
    """

    error: BaseException

    def unwrap(self) -> typing.NoReturn:
        """Raises the error."""
        raise self.error


Exit = Success[Any] | Failure


@dataclass(frozen=True, slots=True)
class Complete(Generic[T]):
    """The execution finished for good, with `exit`."""

    exit: Success[T] | Failure


@dataclass(frozen=True, slots=True)
class Suspended:
    """The execution waits on a deferred or a durable clock.

    `cause` is set when it suspended on a failure (`suspend_on_failure`).
    """

    cause: Defect | None = None


Result = Complete[Any] | Suspended

_SUCCESS_PREFIX = b'{"_tag":"Success","value":'

#: What the stored encoding of each outcome starts with (`ExitCodec` writes keys in this order,
#: without spaces). Listings filter on them: the store compares bytes and decodes nothing.
OUTCOME_PREFIXES: dict[str, bytes] = {
    "Success": b'{"_tag":"Success"',
    "Fail": b'{"_tag":"Failure","cause":{"_tag":"Fail"',
    "Die": b'{"_tag":"Failure","cause":{"_tag":"Die"',
    "Interrupt": b'{"_tag":"Failure","cause":{"_tag":"Interrupt"',
}
_DEFECT_CLASSES: dict[str, type[Defect]] = {
    "plait.ResultSchemaError": ResultSchemaError,
}


def defect_of(exc: BaseException) -> Defect:
    """`exc` as a `Defect` (unchanged if it is one)."""
    if isinstance(exc, Defect):
        return exc
    cls = type(exc)
    name = (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )
    stack = "".join(traceback.format_exception(exc))
    return Defect(name, str(exc), stack)


def _defect_json(defect: Defect) -> dict[str, str]:
    name = defect.type_name
    if type(defect) is not Defect:
        name = f"plait.{type(defect).__name__}"
    return {"name": name, "message": defect.message, "stack": defect.traceback}


class ExitCodec:
    """Encodes exits of one step or workflow with its `success` type and `error` classes."""

    __slots__ = ("_adapter", "_errors", "_void", "error_types", "label", "success")

    def __init__(
        self,
        label: str,
        success: object,
        error: type[BaseException] | tuple[type[BaseException], ...] | None,
    ) -> None:
        self.label = label
        self.success = success
        self._void = success is None or success is type(None)
        self._adapter = None if self._void else adapter(success)
        error_types = () if error is None else error if isinstance(error, tuple) else (error,)
        for cls in error_types:
            if not (isinstance(cls, type) and issubclass(cls, Exception)):
                msg = f"{label}: error= takes exception classes, got {cls!r}"
                raise TypeError(msg)
        self.error_types: tuple[type[BaseException], ...] = error_types
        self._errors = {cls.__name__: cls for cls in error_types}

    def settle(self, outcome: Exit) -> tuple[bytes, Exit]:
        """Encodes `outcome`, returning the bytes and the exit a replay of them would give."""
        if isinstance(outcome, Success):
            if self._void:
                return b'{"_tag":"Success","value":null}', Success(None)
            try:
                value = self._adapter.validate_python(outcome.value)  # type: ignore[union-attr]
                data = self._adapter.dump_json(value)  # type: ignore[union-attr]
            except (pydantic.ValidationError, PydanticSerializationError) as err:
                return self.settle(Failure(self._schema_error(err)))
            if self.success is Any or self.success is object:
                value = json.loads(data)
            return _SUCCESS_PREFIX + data + b"}", Success(value)
        encoded = self._encode_failure(outcome.error)
        return encoded, self.decode(encoded)

    def encode_checked(self, outcome: Exit) -> bytes:
        """Encodes `outcome` as `settle` does, but refuses a value its schema does not hold.

        Raises:
            pydantic.ValidationError: A success value that does not validate.
            PydanticSerializationError: One that validates but cannot be written as JSON.
        """
        if isinstance(outcome, Success) and not self._void:
            value = self._adapter.validate_python(outcome.value)  # type: ignore[union-attr]
            return _SUCCESS_PREFIX + self._adapter.dump_json(value) + b"}"  # type: ignore[union-attr]
        return self.settle(outcome)[0]

    def _schema_error(self, err: Exception) -> ResultSchemaError:
        return ResultSchemaError(
            "plait.ResultSchemaError",
            f"{self.label}: result does not match {self.success!r}: {err}",
        )

    def _encode_failure(self, error: BaseException) -> bytes:
        if isinstance(error, Interrupted):
            cause: dict[str, Any] = {"_tag": "Interrupt", "executionId": error.execution_id}
        elif isinstance(error, self.error_types) and not isinstance(error, Defect):
            tag = type(error).__name__
            if isinstance(error, TaggedError):
                fields = error.__plait_model__.model_validate(error.fields()).model_dump(
                    mode="json"
                )
                cause = {"_tag": "Fail", "error": {"_tag": tag, **fields}}
            else:
                cause = {"_tag": "Fail", "error": {"_tag": tag, "args": list(error.args)}}
            try:
                return json.dumps(
                    {"_tag": "Failure", "cause": cause}, separators=(",", ":")
                ).encode()
            except (TypeError, ValueError) as err:
                error = self._schema_error(err)
                cause = {"_tag": "Die", "defect": _defect_json(error)}
        else:
            cause = {"_tag": "Die", "defect": _defect_json(defect_of(error))}
        return json.dumps({"_tag": "Failure", "cause": cause}, separators=(",", ":")).encode()

    def decode(self, data: bytes) -> Exit:
        """The exit stored as `data`.

        Raises:
            JournalDecodeError: `data` is not an exit this codec's schemas can read.
        """
        if data.startswith(_SUCCESS_PREFIX):
            body = data[len(_SUCCESS_PREFIX) : -1]
            if self._void:
                return Success(None)
            try:
                return Success(self._adapter.validate_json(body))  # type: ignore[union-attr]
            except pydantic.ValidationError as err:
                msg = f"{self.label}: stored result does not match {self.success!r} any more: {err}"
                raise JournalDecodeError(msg) from err
        try:
            encoded = json.loads(data)
            cause = encoded["cause"]
            tag = cause["_tag"]
        except (ValueError, KeyError, TypeError) as err:
            msg = f"{self.label}: undecodable stored exit {data[:200]!r}"
            raise JournalDecodeError(msg) from err
        if tag == "Die":
            d = cause.get("defect") or {}
            cls = _DEFECT_CLASSES.get(d.get("name", ""), Defect)
            return Failure(
                cls(str(d.get("name", "")), str(d.get("message", "")), str(d.get("stack", "")))
            )
        if tag == "Interrupt":
            return Failure(Interrupted(str(cause.get("executionId", ""))))
        if tag == "Fail":
            return Failure(self._decode_error(cause.get("error")))
        msg = f"{self.label}: stored exit has unknown cause {tag!r}"
        raise JournalDecodeError(msg)

    def _decode_error(self, data: object) -> BaseException:
        if not isinstance(data, dict):
            msg = f"{self.label}: stored error is not an object: {data!r}"
            raise JournalDecodeError(msg)
        fields = dict(data)
        tag = fields.pop("_tag", None)
        cls = self._errors.get(tag) if isinstance(tag, str) else None
        if cls is None:
            declared = sorted(self._errors)
            msg = f"{self.label}: stored error {tag!r} is not among the declared errors {declared}"
            raise JournalDecodeError(msg)
        if issubclass(cls, TaggedError):
            try:
                return cls(**fields)
            except pydantic.ValidationError as err:
                msg = f"{self.label}: stored error {tag} no longer matches its fields: {err}"
                raise JournalDecodeError(msg) from err
        return cls(*fields.get("args", ()))
