"""Message schemas: the field kinds, the generic walker that reads them, the ``Message``
base and the registry of type tags.

Every message is an ``@attrs.frozen`` class registered under a u16 type tag (``REGISTRY``); the
frame layer carries the tag, so a body is only the message: a CBOR array of its fields in
declared order, nested messages as nested arrays. Each field declares its *kind* once
(``DIGEST``, ``U64``, ``ListOf(DIGEST, limit, sorted=True)``, ``Nested(Header)``, ...) and one
generic walker reads those kinds to validate, flatten and measure every message, so there is no
hand-written validator per class. Sequence fields hold tuples (lists are converted).

The walker's cost is per message and per list, not per item: each class's codec
(``Nested``) is built once, a scalar field is checked inline, and a location string for
errors is only built on the way to an error or into a nested array (``bench/codec.py``).

This module is the schema machinery only, and imports neither of the other two: the
messages are declared in :mod:`~narwhal.messages.definitions`, which registers each class
here (``_message``) with its fields' kinds (``_field``), and
:mod:`~narwhal.messages.codec` turns registered messages into canonical bytes and back.
"""

from __future__ import annotations

import enum
import operator
from collections.abc import Callable, Mapping, Sequence
from itertools import repeat
from types import MappingProxyType
from typing import Any, ClassVar, TypeVar

import attrs

from narwhal.errors import MessageError, MessageTooLarge, UnknownMessageType

__all__ = [
    "BYTES", "DIGEST", "PUBLIC_KEY", "REGISTRY", "SIGNATURE", "U32", "U64", "Kind", "Link",
    "ListOf", "Message", "Nested", "Pair", "Scalar", "class_for", "schema_of", "tag_of",
]

# --- field kinds: declared once per field, read by the generic walker -------------------------

T = TypeVar("T")


def _describe(v: object) -> str:
    """Name a decoded value in CBOR terms for error messages."""
    if isinstance(v, (bytes, tuple)):
        return f"{'bstr' if isinstance(v, bytes) else 'array'} of length {len(v)}"
    if type(v) is int:
        return f"uint {v}" if v >= 0 else f"negative int {v}"
    names = {str: "tstr", float: "float", bool: "bool", type(None): "null"}
    return names.get(type(v), "map" if isinstance(v, Mapping) else type(v).__name__)


def _reject(values: Sequence[Any], where: str, bad: Callable[[Any], bool], expected: str) -> None:
    """Raise MessageError for the first value failing a vectorized check. ``where`` holds a
    ``{}`` where the value's index goes when ``values`` are the items of a list."""
    i = next(i for i, v in enumerate(values) if bad(v))
    raise MessageError(f"{where.format(i)}: expected {expected}, got {_describe(values[i])}")


def _head_len(n: int) -> int:
    """Bytes of the shortest CBOR head for argument ``n`` (RFC 8949 §3, §4.2.1)."""
    return 1 if n < 24 else 2 if n < 1 << 8 else 3 if n < 1 << 16 else 5 if n < 1 << 32 else 9


def _heads_len(args: Sequence[int]) -> int:
    """Sum of ``_head_len`` over ``args``: one multiplication when all heads share a width."""
    if len(args) < 2:  # one list's length, one uint field: no min/max passes
        return _head_len(args[0]) if args else 0
    width = _head_len(min(args))
    return width * len(args) if width == _head_len(max(args)) else sum(map(_head_len, args))


# Every kind offers the same members to the walker:
#
# * ``parse_all(values, where)`` validates a sequence of values (say the items of one list)
#   and returns them parsed, raising MessageError at ``where``. Vectorized: a few C-speed passes per
#   sequence, not one Python call per item.
# * ``parse_one(value, where, name)`` validates one field of one message: the same verdict,
#   result and error as ``parse_all((value,), f"{where}.{name}")[0]`` (tests check it), for
#   less. A scalar tests the common valid case inline and leaves every other value to
#   ``parse_all``, which decides; the location string is built only then, or to descend into
#   an array (a list, a nested message), never per scalar field.
# * ``size_all(values)`` is the canonical encoded size of a sequence of *valid* values (decode
#   measures only what ``_parse`` accepted): a product when ``fixed``, else a few C-speed
#   passes, and for nested messages one call per field over all the values, not per value.
# * ``fixed`` is the canonical size shared by every valid value when there is one (a digest:
#   34 bytes; a (key, signature) pair: 101), else None: such values are sized by a product.


@attrs.frozen
class Scalar:
    """A uint or a bstr. ``parse_all``/``size_all`` take a sequence of values, so a list of
    100,000 transactions costs a few C-speed passes, not 100,000 Python calls."""

    name: str  # how the spec and errors call it
    py_type: type  # exact Python type: bool is not an int here
    size: int | None = None  # exact length of a bstr
    lo: int = 0  # inclusive range of a uint
    hi: int = 2**64 - 1
    fixed: int | None = attrs.field(init=False, eq=False, repr=False)
    depth: ClassVar[int] = 0

    @fixed.default
    def _fixed(self) -> int | None:
        return None if self.size is None else _head_len(self.size) + self.size

    def parse_all(self, values: Sequence[Any], where: str) -> Sequence[Any]:
        if not set(map(type, values)) <= {self.py_type}:
            _reject(values, where, lambda v: type(v) is not self.py_type, self.name)
        if self.size is not None and not set(map(len, values)) <= {self.size}:
            _reject(values, where, lambda v: len(v) != self.size, self.name)
        if self.py_type is int and values and not self.lo <= min(values) <= max(values) <= self.hi:
            _reject(values, where, lambda v: not self.lo <= v <= self.hi, self.name)
        return values

    def parse_one(self, value: Any, where: str, name: str) -> Any:
        exact_type = type(value) is self.py_type
        if exact_type and (self.lo <= value <= self.hi if self.py_type is int
                           else self.size is None or len(value) == self.size):
            return value
        return self.parse_all((value,), f"{where}.{name}")[0]

    def size_all(self, values: Sequence[Any]) -> int:
        if self.fixed is not None:
            return self.fixed * len(values)
        if self.py_type is int:
            return _heads_len(values)
        lengths = list(map(len, values))
        return sum(lengths) + _heads_len(lengths)

    def to_wire(self, value: T) -> T:
        return value


DIGEST = Scalar("digest (bstr of 32 bytes)", bytes, size=32)
PUBLIC_KEY = Scalar("public key (bstr of 32 bytes)", bytes, size=32)
SIGNATURE = Scalar("signature (bstr of 64 bytes)", bytes, size=64)
BYTES = Scalar("bstr", bytes)
U64 = Scalar("u64", int)
U32 = Scalar("u32", int, hi=2**32 - 1)


@attrs.frozen
class Pair:
    """A 2-element array of two scalars."""

    first: Scalar
    second: Scalar
    fixed: int | None = attrs.field(init=False, eq=False, repr=False)
    depth: ClassVar[int] = 1

    @fixed.default
    def _fixed(self) -> int | None:
        if self.first.fixed is None or self.second.fixed is None:
            return None
        return 1 + self.first.fixed + self.second.fixed

    @property
    def name(self) -> str:
        return f"[{self.first.name}, {self.second.name}]"

    def parse_all(self, values: Sequence[Any], where: str) -> Sequence[Any]:
        if not set(map(type, values)) <= {tuple}:
            _reject(values, where, lambda v: type(v) is not tuple, self.name)
        if not set(map(len, values)) <= {2}:
            _reject(values, where, lambda v: len(v) != 2, self.name)
        firsts, seconds = zip(*values) if values else ((), ())
        self.first.parse_all(firsts, where + "[0]")
        self.second.parse_all(seconds, where + "[1]")
        return values

    def parse_one(self, value: Any, where: str, name: str) -> Any:
        return self.parse_all((value,), f"{where}.{name}")[0]

    def size_all(self, values: Sequence[Any]) -> int:
        if self.fixed is not None:
            return self.fixed * len(values)
        firsts, seconds = zip(*values) if values else ((), ())
        return len(values) + self.first.size_all(firsts) + self.second.size_all(seconds)

    def to_wire(self, value: T) -> T:
        return value


@attrs.frozen
class Nested:
    """Another message's fields as a nested array (a Header in a Certificate). It is also a
    message class's codec: ``decode`` and ``encode`` use one instance per class
    (``_NESTED``), and what sizing and flattening need from the schema is derived once, here."""

    cls: type[Message]
    #: Array head plus the fields whose canonical size is ``fixed``: the same for every value.
    _constant: int = attrs.field(init=False, eq=False, repr=False)
    #: (index, kind) of the other fields, sized column by column.
    _variable: tuple[tuple[int, Kind], ...] = attrs.field(init=False, eq=False, repr=False)
    _names: tuple[str, ...] = attrs.field(init=False, eq=False, repr=False)
    #: Some field holds messages, which ``to_wire`` must turn into arrays.
    _holds_messages: bool = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        fields = schema_of(self.cls)
        kinds = [kind for _, kind in fields]
        init = object.__setattr__  # frozen: set the derived attributes once
        init(self, "_constant", _head_len(len(fields)) + sum(
            kind.fixed for kind in kinds if kind.fixed is not None))
        init(self, "_variable", tuple((i, k) for i, k in enumerate(kinds) if k.fixed is None))
        init(self, "_names", tuple(name for name, _ in fields))
        init(self, "_holds_messages", any(
            isinstance(k, Nested) or isinstance(k, ListOf) and isinstance(k.item, Nested)
            for k in kinds))

    @property
    def name(self) -> str:
        return self.cls.__name__

    @property
    def depth(self) -> int:
        return 1 + max((kind.depth for _, kind in schema_of(self.cls)), default=0)

    @property
    def fixed(self) -> int | None:
        return None if self._variable else self._constant

    def parse_all(self, values: Sequence[Any], where: str) -> Sequence[Any]:
        return tuple(_parse(self.cls, v, where.format(i)) for i, v in enumerate(values))

    def parse_one(self, value: Any, where: str, name: str) -> Any:
        return _parse(self.cls, value, f"{where}.{name}")

    def size_all(self, values: Sequence[Any]) -> int:
        """Column by column: one ``size_all`` per variable field over all the values (the
        rows are valid, so each is a tuple of one value per field)."""
        size = self._constant * len(values)
        if self._variable and values:
            columns = tuple(zip(*values))
            size += sum(kind.size_all(columns[i]) for i, kind in self._variable)
        return size

    def to_wire(self, value: Message) -> tuple[Any, ...]:
        wire = tuple(map(getattr, repeat(value), self._names))
        if self._holds_messages:
            wire = tuple(kind.to_wire(v) for (_, kind), v in zip(schema_of(self.cls), wire))
        return wire


@attrs.frozen
class ListOf:
    """A definite array of at most ``limit`` items; ``sorted`` demands strictly increasing
    keys (the item, or a pair's first element): sorted bytewise, without duplicates."""

    item: Scalar | Pair | Nested
    limit: int
    limit_name: str
    sorted: bool = False
    fixed: ClassVar[None] = None  # the item count varies

    @property
    def name(self) -> str:
        order = ", sorted, unique" if self.sorted else ""
        return f"array of {self.item.name} (at most {self.limit_name} = {self.limit}{order})"

    @property
    def depth(self) -> int:
        return 1 + self.item.depth

    def parse_all(self, values: Sequence[Any], where: str) -> Sequence[Any]:
        if not set(map(type, values)) <= {tuple}:
            _reject(values, where, lambda v: type(v) is not tuple, "array")
        return [self._parse_list(items, where.format(i)) for i, items in enumerate(values)]

    def parse_one(self, value: Any, where: str, name: str) -> Any:
        at = f"{where}.{name}"
        if type(value) is not tuple:
            _reject((value,), at, lambda v: True, "array")
        return self._parse_list(value, at)

    def _parse_list(self, items: tuple[Any, ...], at: str) -> Sequence[Any]:
        if len(items) > self.limit:
            raise MessageTooLarge(f"{at}: {len(items)} items exceed {self.limit_name} = {self.limit}")
        parsed = self.item.parse_all(items, at + "[{}]")
        if self.sorted:
            keys = tuple(map(operator.itemgetter(0), parsed)) if isinstance(self.item, Pair) else parsed
            if not all(map(operator.lt, keys, keys[1:])):
                j = next(j for j in range(1, len(keys)) if not keys[j - 1] < keys[j])
                raise MessageError(f"{at}[{j}]: not sorted strictly after item {j - 1}")
        return parsed

    def size_all(self, values: Sequence[Any]) -> int:
        lengths = list(map(len, values))
        if self.item.fixed is not None:
            return _heads_len(lengths) + self.item.fixed * sum(lengths)
        return _heads_len(lengths) + sum(map(self.item.size_all, values))

    def to_wire(self, value: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(map(self.item.to_wire, value)) if isinstance(self.item, Nested) else value


Kind = Scalar | Pair | Nested | ListOf


def _field(kind: Kind) -> Any:
    """Declare a message field of the given kind (sequence fields accept any iterable)."""
    return attrs.field(metadata={"kind": kind}, converter=tuple if isinstance(kind, ListOf) else None)


def _cache() -> Any:
    """A per-instance cache slot, outside the schema, equality and repr."""
    return attrs.field(default=None, init=False, eq=False, repr=False)


def schema_of(cls: type[Message]) -> tuple[tuple[str, Kind], ...]:
    """The wire fields of a registered message class, in order: (name, kind)."""
    return _SCHEMA[cls]


# --- the registry -----------------------------------------------------------------------------


class Link(enum.Enum):
    """Which link may carry a message as a request or one-way; a response travels back on
    its request's link. The connection layer refuses a message on any other link."""

    ANY = "any"  # Ack answers requests on every link
    PRIMARY_PRIMARY = "primary<->primary"
    WORKER_WORKER = "worker<->worker"  # worker i to worker i of another authority
    WORKER_TO_PRIMARY = "worker->primary"  # to its own primary
    PRIMARY_TO_WORKER = "primary->worker"  # to its own workers
    CLIENT_TO_WORKER = "client->worker"
    CLIENT_PRIMARY = "client<->primary"  # ordered-output subscription


@attrs.frozen
class Message:
    """Base of every message. Class attributes set by registration: ``TAG`` (u16),
    ``direction`` (a Link), ``response`` (the answer's class, None if it is itself a response
    or one-way)."""

    TAG: ClassVar[int]
    direction: ClassVar[Link]
    response: ClassVar[type[Message] | None]
    KEEP_BODY: ClassVar[bool] = False  # cache the canonical body on the instance (Batch)


_registry: dict[int, type[Message]] = {}
#: tag -> message class, read-only.
REGISTRY: Mapping[int, type[Message]] = MappingProxyType(_registry)
_SCHEMA: dict[type[Message], tuple[tuple[str, Kind], ...]] = {}
_DEPTH: dict[type[Message], int] = {}  # deepest CBOR nesting each class's schema allows
_NESTED: dict[type[Message], Nested] = {}  # each class's codec, built once

M = TypeVar("M", bound=type[Message])


def _message(tag: int, direction: Link, response: type[Message] | None = None) -> Callable[[M], M]:
    def register(cls: M) -> M:
        assert 0 <= tag <= 0xFFFF and tag not in _registry, hex(tag)
        cls.TAG, cls.direction, cls.response = tag, direction, response
        _registry[tag] = cls
        _SCHEMA[cls] = tuple(
            (a.name, a.metadata["kind"]) for a in attrs.fields(cls) if "kind" in a.metadata)
        _NESTED[cls] = Nested(cls)
        _DEPTH[cls] = _NESTED[cls].depth
        return cls

    return register


def class_for(tag: int) -> type[Message]:
    """The message class registered under ``tag``; UnknownMessageType otherwise."""
    try:
        return _registry[tag]
    except (KeyError, TypeError):
        raise UnknownMessageType(f"unknown message type tag {tag!r}") from None


def tag_of(msg: Message | type[Message]) -> int:
    """The type tag of a message or message class."""
    cls = msg if isinstance(msg, type) else type(msg)
    if _registry.get(getattr(cls, "TAG", -1)) is not cls:
        raise TypeError(f"{cls!r} is not a registered message class")
    return cls.TAG


# --- the walker's entry: a decoded value against a class's schema -----------------------------

M2 = TypeVar("M2", bound=Message)


def _fields(cls: type[Message], value: Any, where: str) -> list[Any]:
    """Validate a decoded CBOR value against ``cls``'s schema; its parsed field values."""
    fields = _SCHEMA[cls]
    if type(value) is not tuple or len(value) != len(fields):
        names = ", ".join(name for name, _ in fields)
        raise MessageError(f"{where}: expected an array of {len(fields)} fields [{names}], "
                           f"got {_describe(value)}")
    return [kind.parse_one(v, where, name) for (name, kind), v in zip(fields, value)]


def _parse(cls: type[M2], value: Any, where: str) -> M2:
    """Validate a decoded CBOR value against ``cls``'s schema and build the message."""
    return cls(*_fields(cls, value, where))
