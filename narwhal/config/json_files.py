"""Strict JSON files and :class:`ConfigError`: how every config and key file is read and written.

:func:`load_json` reads a file and hands the decoded value to a parser, :func:`save_json`
writes one atomically (temp file, fsync, rename) with its mode set before any byte is
written, and :func:`canonical_json` is the byte form the committee's network id hashes.
:class:`JsonReader` walks one JSON object, refusing unknown and missing fields. The field
helpers (:func:`as_tuple`, :func:`short_hex`, ``_check``, ``_within``) are shared by the
attrs classes of :mod:`~narwhal.config.parameters` and :mod:`~narwhal.config.committee`.

Kept apart from those classes because :mod:`narwhal.crypto` reads and writes its key files
with the same helpers, and knows nothing of parameters or committees.

Guarantees:

- Every problem is a :class:`ConfigError` naming the field as a dotted path
  (``authorities.<hex>.workers.1.worker_address: ...``), prefixed with the file when loaded.
- JSON objects that repeat a key are refused (``json`` alone would silently keep the last),
  and so are ``NaN`` and ``Infinity`` (not JSON numbers). Hex input may be upper case.
- A file is replaced whole or not at all, and a key file is never readable by others.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import attrs

from narwhal.errors import NarwhalError

__all__ = [
    "KEY_SIZE", "ConfigError", "JsonReader", "PathLike", "as_tuple", "canonical_json",
    "load_json", "parse_hex", "save_json", "short_hex",
]

T = TypeVar("T")
PathLike = str | os.PathLike[str]
KEY_SIZE = 32


class ConfigError(NarwhalError):
    """A configuration or key file, or a config object built in code, is invalid."""


# --- files ----------------------------------------------------------------------------------


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ConfigError(f"{key}: duplicate JSON key")
        result[key] = value
    return result


def _no_constants(name: str) -> None:
    raise ConfigError(f"{name} is not a JSON number")


def load_json(path: PathLike, parse: Callable[[Any], T]) -> T:
    """Read a JSON file and ``parse`` it; every error is ``ConfigError("<path>: ...")``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        return parse(json.loads(text, object_pairs_hook=_no_duplicates,
                                parse_constant=_no_constants))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, int digit limit, nesting
        raise ConfigError(f"{path}: invalid JSON: {exc}") from exc


def save_json(path: PathLike, value: Any, mode: int = 0o644) -> None:
    """Write ``value`` as indented JSON atomically (temp file, fsync, rename), with ``mode``
    set before any byte is written (key files are never readable by others, even briefly)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(value, indent=2, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def canonical_json(value: Any) -> bytes:
    """Keys sorted, no whitespace, ASCII only (``\\uXXXX`` escapes), as bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


@contextlib.contextmanager
def _within(prefix: str) -> Iterator[None]:
    """Prefix the field path of a ConfigError raised inside with ``prefix.``."""
    try:
        yield
    except ConfigError as exc:
        raise ConfigError(f"{prefix}.{exc}") from exc


class JsonReader:
    """One JSON object being read: checks its field names and decodes fields, naming the
    dotted path of the field in every error."""

    __slots__ = ("value", "where")

    def __init__(self, value: object, where: str = "", *, required: Iterable[str] = (),
                 optional: Iterable[str] | None = ()) -> None:
        """``optional=None`` accepts any field names (an object used as a map)."""
        if not isinstance(value, dict):
            kind = "an array" if isinstance(value, list) else repr(value)
            raise ConfigError(f"{where or '(top level)'}: expected an object, got {kind}")
        self.value: dict[str, Any] = value
        self.where = where
        if optional is not None:
            known = {*required, *optional}
            for key in value.keys() - known:
                raise ConfigError(f"{self.path(key)}: unknown field (known: {sorted(known)})")
        for key in required:
            if key not in value:
                raise ConfigError(f"{self.path(key)}: missing")

    def path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def child(self, key: str, *, required: Iterable[str] = (),
              optional: Iterable[str] | None = ()) -> JsonReader:
        return JsonReader(self.value[key], self.path(key), required=required, optional=optional)

    def hex(self, key: str, size: int = KEY_SIZE) -> bytes:
        return parse_hex(self.value[key], size, self.path(key))

    def build(self, cls: Callable[..., T]) -> T:
        """``cls(**fields)`` with ``network_key`` decoded from hex; errors under this path."""
        fields = {**self.value, "network_key": self.hex("network_key")}
        with _within(self.where):
            return cls(**fields)

    def numbered(self, key: str) -> list[tuple[str, Any]]:
        """An object keyed by worker ids ``"0"`` .. ``"W-1"`` (W >= 1): (path, value) by id."""
        obj = self.child(key, optional=None)
        ids = [str(i) for i in range(len(obj.value))]
        if not ids or sorted(obj.value, key=lambda k: (len(k), k)) != ids:
            raise ConfigError(f"{obj.where}: worker ids must be \"0\" .. \"W-1\" with W >= 1, "
                              f"no gaps or leading zeros; got {sorted(obj.value)}")
        return [(obj.path(k), obj.value[k]) for k in ids]


def parse_hex(text: object, size: int, where: str) -> bytes:
    """``size`` bytes from exactly ``2 * size`` hex digits, or a ConfigError at ``where``."""
    if not isinstance(text, str):
        raise ConfigError(f"{where}: expected a hex string, got {text!r}")
    try:
        data = bytes.fromhex(text)
    except ValueError:
        raise ConfigError(f"{where}: not a hex string") from None
    if len(text) != 2 * size or len(data) != size:
        raise ConfigError(f"{where}: expected {size} bytes ({2 * size} hex digits), "
                          f"got {len(text)} characters")
    return data


# --- fields ---------------------------------------------------------------------------------


def as_tuple(items: Iterable[Any]) -> tuple[Any, ...]:
    """attrs converter (``converter=tuple`` and generic converters confuse mypy's plugin)."""
    return tuple(items)


def short_hex(key: bytes) -> str:
    """The first 8 hex digits of a key: enough to tell authorities apart in logs."""
    return key[:4].hex()


def _check(test: Callable[[Any], bool], what: str) -> Any:
    """An attrs validator: ``ConfigError("<field>: must be <what>, got <value>")`` unless
    ``test(value)``."""
    def validator(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not test(value):
            raise ConfigError(f"{attribute.name}: must be {what}, got {value!r}")
    return validator

