"""Serializers for the Redis tier: what a value becomes in Redis, and back.

:class:`JsonSerializer` (the default: safe on data anyone may have written),
:class:`MsgpackSerializer` when msgpack is installed, and
:class:`PickleSerializer`, opt-in and signed: it needs an HMAC key, signs
every value it writes and refuses (a counted miss) any value whose signature
does not verify, so that whoever can write a Redis key cannot make the tier
unpickle it. Any object with ``dumps(value) -> bytes`` and ``loads(bytes)``
will do.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import pickle
import threading
import time
from collections.abc import Callable
from typing import Any, Optional, Union

__all__ = [
    "Serializer",
    "PickleSerializer",
    "JsonSerializer",
    "MsgpackSerializer",
    "BadSignatureError",
    "make_serializer",
    "Codec",
    "RateLimitedLog",
]

logger = logging.getLogger("memcache_ext.redis")


class RateLimitedLog:
    """A warning at most once per ``interval`` seconds per kind, with the count held back."""

    def __init__(self, interval: float = 60.0) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._next: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def report(self, kind: str, msg: str, *args: Any) -> None:
        now = time.monotonic()
        with self._lock:
            if now < self._next.get(kind, 0.0):
                self._held[kind] = self._held.get(kind, 0) + 1
                return
            self._next[kind] = now + self.interval
            held = self._held.pop(kind, 0)
        if held:
            msg += " (%d more like it since the last such warning)"
            args = (*args, held)
        logger.warning(msg, *args)


class BadSignatureError(ValueError):
    """A signed value whose signature does not verify: never deserialized."""


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
    """pickle, signed with HMAC-SHA256: ``PickleSerializer(key=...)``, the key >= 16 bytes.

    Every value written is ``b"MXP1" + HMAC(key, pickle) + pickle``; ``loads``
    checks the signature (constant time) before unpickling anything and raises
    :class:`BadSignatureError` otherwise, which the tier counts as a miss
    (``bad_signatures``). Every instance of a namespace needs the same key.
    Read it from the environment or a file, never from the command line::

        PickleSerializer(key=os.environ["CACHE_HMAC_KEY"])
    """

    name = "pickle-hmac"
    MAGIC = b"MXP1"
    _MAC_BYTES = 32

    def __init__(
        self, key: Union[bytes, str, None] = None, protocol: int = pickle.HIGHEST_PROTOCOL
    ) -> None:
        if key is None:
            raise TypeError(
                "PickleSerializer needs an HMAC key (key=..., 16 bytes or more, read from "
                "the environment or a file): an unsigned pickle in Redis lets whoever can "
                "write a key run code in every instance. Or use the default JSON serializer."
            )
        if isinstance(key, str):
            key = key.encode()
        if not isinstance(key, (bytes, bytearray)):
            raise TypeError(f"key must be bytes or str, not {type(key).__name__}")
        if len(key) < 16:
            raise ValueError(f"the HMAC key must be at least 16 bytes, got {len(key)}")
        self._key = bytes(key)
        self.protocol = protocol

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()

    def dumps(self, value: Any) -> bytes:
        payload = pickle.dumps(value, protocol=self.protocol)
        return self.MAGIC + self._mac(payload) + payload

    def loads(self, data: bytes) -> Any:
        head = len(self.MAGIC) + self._MAC_BYTES
        data = bytes(data)
        if len(data) < head or not data.startswith(self.MAGIC):
            raise BadSignatureError("not a signed value")
        mac, payload = data[len(self.MAGIC) : head], data[head:]
        if not hmac.compare_digest(mac, self._mac(payload)):
            raise BadSignatureError("the signature does not verify (another key, or forged)")
        return pickle.loads(payload)  # verified: written with our key

    def __repr__(self) -> str:
        return f"{type(self).__name__}(key=<{len(self._key)} bytes>)"


class JsonSerializer(Serializer):
    """JSON (UTF-8), the default: safe on untrusted data; tuples come back as lists."""

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
    "json": JsonSerializer,
    "msgpack": MsgpackSerializer,
}


def make_serializer(serializer: Union[str, Serializer, None]) -> Serializer:
    """The serializer named, or given (checked), or the default (JSON)."""
    if serializer is None:
        return JsonSerializer()
    if isinstance(serializer, str):
        if serializer in ("pickle", "pickle-hmac"):
            raise ValueError(
                "serializer='pickle' is not available by name: pickle needs an HMAC key, "
                "pass serializer=PickleSerializer(key=...) (key from the environment or a file)"
            )
        try:
            return _SERIALIZERS[serializer]()
        except KeyError:
            raise ValueError(
                f"unknown serializer {serializer!r}; expected one of {sorted(_SERIALIZERS)} "
                f"or a PickleSerializer(key=...)"
            ) from None
    if isinstance(serializer, type):  # its dumps/loads are unbound: every write would fail
        raise TypeError(
            f"serializer must be an instance, not the class {serializer.__name__}: "
            f"pass {serializer.__name__}(...)"
        )
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
    cannot use (longer than ``max_bytes``, checked before deserializing, a bad
    signature, or garbage). ``count(name)`` is told which; the warnings about
    data read from Redis come at most once a minute per kind.
    """

    def __init__(
        self,
        serializer: Serializer,
        max_bytes: Optional[int],
        count: Callable[[str], None],
        what: str,
        missing: Any = None,
        log: Optional[RateLimitedLog] = None,
    ) -> None:
        self.serializer = serializer
        self.max_bytes = max_bytes
        self._count = count
        self._what = what
        self.missing = missing
        self.log = log if log is not None else RateLimitedLog()

    def encode(self, key: str, value: Any) -> Optional[bytes]:
        try:
            data = self.serializer.dumps(value)
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError(f"dumps() returned {type(data).__name__}, not bytes")
        except Exception as exc:  # noqa: BLE001 - a bad value is refused, not raised
            self._count("serialization_failures")
            self.log.report(
                "serialize",
                "%s: cannot serialize the value of %r: %s: %s",
                self._what,
                key,
                type(exc).__name__,
                exc,
            )
            return None
        if self.max_bytes is not None and len(data) > self.max_bytes:
            self._count("oversized_writes")
            self.log.report(
                "oversized_write",
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
            self.log.report(
                "oversized_read",
                "%s: value of %r in Redis ignored: %d bytes > max_value_bytes=%d",
                self._what,
                key,
                len(raw),
                self.max_bytes,
            )
            return self.missing
        try:
            return self.serializer.loads(raw)
        except BadSignatureError as exc:
            self._count("bad_signatures")
            self.log.report(
                "signature",
                "%s: value of %r in Redis refused: %s; treated as a miss",
                self._what,
                key,
                exc,
            )
            return self.missing
        except Exception as exc:  # noqa: BLE001 - a bad value is a miss
            self._count("deserialization_failures")
            self.log.report(
                "deserialize",
                "%s: value of %r in Redis does not deserialize (%s: %s); treated as a miss",
                self._what,
                key,
                type(exc).__name__,
                exc,
            )
            return self.missing
