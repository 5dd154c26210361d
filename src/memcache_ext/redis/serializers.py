"""Serializers for the Redis tier: what a value becomes in Redis, and back.

:class:`PickleSerializer` (the default, for trusted deployments only: whoever
can write to Redis can run code in every instance), :class:`JsonSerializer`,
and :class:`MsgpackSerializer` when msgpack is installed. Any object with
``dumps(value) -> bytes`` and ``loads(bytes)`` will do.
"""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Callable
from typing import Any, Optional, Union

__all__ = [
    "Serializer",
    "PickleSerializer",
    "JsonSerializer",
    "MsgpackSerializer",
    "make_serializer",
    "Codec",
]

logger = logging.getLogger("memcache_ext.redis")


class Serializer:
    """What a tier needs from a serializer: ``dumps(value) -> bytes``, ``loads(bytes)``."""

    name = "serializer"

    def dumps(self, value: Any) -> bytes:  # pragma: no cover - interface
        raise NotImplementedError

    def loads(self, data: bytes) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class PickleSerializer(Serializer):
    """pickle, for trusted deployments only (unpickling runs code chosen by whoever wrote)."""

    name = "pickle"

    def __init__(self, protocol: int = pickle.HIGHEST_PROTOCOL) -> None:
        self.protocol = protocol

    def dumps(self, value: Any) -> bytes:
        return pickle.dumps(value, protocol=self.protocol)

    def loads(self, data: bytes) -> Any:
        return pickle.loads(data)


class JsonSerializer(Serializer):
    """JSON (UTF-8): safe on untrusted data; tuples come back as lists."""

    name = "json"

    def __init__(self, default: Optional[Callable[[Any], Any]] = None) -> None:
        self.default = default

    def dumps(self, value: Any) -> bytes:
        return json.dumps(
            value, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=self.default
        ).encode()

    def loads(self, data: bytes) -> Any:
        return json.loads(data)


class MsgpackSerializer(Serializer):
    """MessagePack (needs the ``msgpack`` package): compact and safe."""

    name = "msgpack"

    def __init__(self) -> None:
        try:
            import msgpack
        except ImportError as exc:
            raise ImportError("MsgpackSerializer needs msgpack: pip install msgpack") from exc
        self._msgpack = msgpack

    def dumps(self, value: Any) -> bytes:
        return bytes(self._msgpack.packb(value, use_bin_type=True))

    def loads(self, data: bytes) -> Any:
        return self._msgpack.unpackb(data, raw=False, strict_map_key=False)


_SERIALIZERS: dict[str, Callable[[], Serializer]] = {
    "pickle": PickleSerializer,
    "json": JsonSerializer,
    "msgpack": MsgpackSerializer,
}


def make_serializer(serializer: Union[str, Serializer, None]) -> Serializer:
    """The serializer named, or given (checked), or the default."""
    if serializer is None:
        return PickleSerializer()
    if isinstance(serializer, str):
        try:
            return _SERIALIZERS[serializer]()
        except KeyError:
            raise ValueError(
                f"unknown serializer {serializer!r}; expected one of {sorted(_SERIALIZERS)}"
            ) from None
    if not (
        callable(getattr(serializer, "dumps", None))
        and callable(getattr(serializer, "loads", None))
    ):
        raise TypeError("serializer must have dumps(value) -> bytes and loads(bytes)")
    return serializer


class Codec:
    """A serializer with the tier's size bound; failures are counted and logged, never raised.

    ``encode`` returns None for a value it refuses (not serializable, or
    longer than ``max_bytes``); ``decode`` returns ``missing`` for data it
    cannot use (longer than ``max_bytes``, checked before deserializing, or
    garbage). ``count(name)`` is told which.
    """

    def __init__(
        self,
        serializer: Serializer,
        max_bytes: Optional[int],
        count: Callable[[str], None],
        what: str,
        missing: Any = None,
    ) -> None:
        self.serializer = serializer
        self.max_bytes = max_bytes
        self._count = count
        self._what = what
        self.missing = missing

    def encode(self, key: str, value: Any) -> Optional[bytes]:
        try:
            data = self.serializer.dumps(value)
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError(f"dumps() returned {type(data).__name__}, not bytes")
        except Exception as exc:  # noqa: BLE001 - a bad value is refused, not raised
            self._count("serialization_failures")
            logger.warning(
                "%s: cannot serialize the value of %r: %s: %s",
                self._what,
                key,
                type(exc).__name__,
                exc,
            )
            return None
        if self.max_bytes is not None and len(data) > self.max_bytes:
            self._count("oversized_writes")
            logger.warning(
                "%s: value of %r refused: %d bytes > max_value_bytes=%d",
                self._what,
                key,
                len(data),
                self.max_bytes,
            )
            return None
        return bytes(data)

    def decode(self, key: str, raw: bytes) -> Any:
        if self.max_bytes is not None and len(raw) > self.max_bytes:
            self._count("oversized_reads")
            logger.warning(
                "%s: value of %r in Redis ignored: %d bytes > max_value_bytes=%d",
                self._what,
                key,
                len(raw),
                self.max_bytes,
            )
            return self.missing
        try:
            return self.serializer.loads(raw)
        except Exception as exc:  # noqa: BLE001 - a bad value is a miss
            self._count("deserialization_failures")
            logger.warning(
                "%s: value of %r in Redis does not deserialize (%s: %s); treated as a miss",
                self._what,
                key,
                type(exc).__name__,
                exc,
            )
            return self.missing
