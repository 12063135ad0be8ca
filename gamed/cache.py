"""A two-tier cache with TTL (section 2 of the reference design), and its game-state keys.

L1 is a plain dict bounded by ``l1_size``; when it is full, the 25% least
recently accessed L1 entries move down to L2, a ``pylru`` LRU bounded by
``l2_size`` (what falls out of L2 is gone: an eviction). An L2 hit moves the
entry back up to L1. Entries live ``ttl`` seconds from their last ``set``:
expired ones are dropped when met by ``get`` and by a periodic sweep (a
``TimerService`` on the injected clock). Values above ``compress_threshold``
bytes are zlib-compressed when ``enable_compression`` is on (the reference
declared the option and never compressed).

Everything runs on the reactor thread: no locks. All time comes from the
injected clock, so tests drive TTLs with ``twisted.internet.task.Clock``.
"""

from __future__ import annotations

import heapq
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pylru
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.application.internet import TimerService
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

_log = Logger()

# How a value is kept in an entry.
_RAW, _ZBYTES, _ZSTR, _ZSER = 0, 1, 2, 3


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """The reference's ``CacheConfig`` plus the knobs it left implicit."""

    l1_size: int = 1000
    l2_size: int = 10000
    ttl: float = 300.0
    enable_compression: bool = True
    #: Values whose encoded size is at least this many bytes are compressed.
    compress_threshold: int = 1024
    #: zlib level: 1 is ~4x faster than the default 6 and nearly as small for JSON.
    compress_level: int = 1
    #: Seconds between sweeps of expired entries (the reference's cleanup_interval).
    sweep_interval: float = 60.0

    def __post_init__(self) -> None:
        if self.l1_size < 1 or self.l2_size < 1:
            raise ValueError("l1_size and l2_size must be at least 1")
        if self.ttl <= 0 or self.sweep_interval <= 0:
            raise ValueError("ttl and sweep_interval must be positive")
        if not 0 <= self.compress_level <= 9:
            raise ValueError("compress_level must be 0..9")

    @classmethod
    def from_mapping(cls, table: Any) -> CacheConfig:
        """Build from a config table (unknown keys are an error that names them)."""
        known = set(cls.__dataclass_fields__)
        unknown = set(table) - known
        if unknown:
            raise ValueError(f"unknown cache setting(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**dict(table))


class _Entry:
    __slots__ = ("created_at", "kind", "tick", "value")

    def __init__(self, value: Any, kind: int, created_at: float, tick: int) -> None:
        self.value = value
        self.kind = kind
        self.created_at = created_at
        self.tick = tick  # access order: a counter, so ties under a frozen clock are impossible


#: (dumps, loads) for values that are neither bytes nor str; None: never compress them.
Serializer = tuple[Callable[[Any], bytes], Callable[[bytes], Any]]


class MultiTierCache:
    """L1 dict + L2 pylru LRU, with TTL, promotion, demotion, sweeping and stats."""

    def __init__(
        self,
        clock: IReactorTime,
        config: CacheConfig | None = None,
        serializer: Serializer | None = None,
    ) -> None:
        self.config = config or CacheConfig()
        self._clock = clock
        self._ttl = self.config.ttl
        self._serializer = serializer
        self._compress = self.config.enable_compression
        self._threshold = self.config.compress_threshold
        self._l1: dict[str, _Entry] = {}
        self._l2 = pylru.lrucache(self.config.l2_size, self._evicted)
        self._tick = 0
        # Counters (monotonic, for stats and Prometheus).
        self.l1_hits = 0
        self.l2_hits = 0
        self.misses = 0
        self.sets = 0
        self.removes = 0
        self.promotions = 0
        self.demotions = 0
        self.evictions = 0
        self.expired = 0
        self.sweeps = 0
        self.compressed_values = 0
        self.compression_saved_bytes = 0

    # -- the reference's API ----------------------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        """The value, from L1 or (promoted from) L2; ``default`` on a miss or an expired entry."""
        now = self._clock.seconds()
        entry = self._l1.get(key)
        if entry is not None:
            if now - entry.created_at <= self._ttl:
                self.l1_hits += 1
                self._tick += 1
                entry.tick = self._tick
                return entry.value if entry.kind == _RAW else self._unpack(entry)
            del self._l1[key]
            self.expired += 1
        else:
            l2 = self._l2
            if key in l2:
                entry = l2.peek(key)
                del l2[key]
                if now - entry.created_at <= self._ttl:
                    self.l2_hits += 1
                    self._promote(key, entry)
                    return entry.value if entry.kind == _RAW else self._unpack(entry)
                self.expired += 1
        self.misses += 1
        return default

    def set(self, key: str, value: Any) -> None:
        """Store in L1 (demoting a quarter of L1 first when it is full); the TTL restarts."""
        self.sets += 1
        self._tick += 1
        kind = _RAW
        if self._compress:
            value, kind = self._pack(value)
        entry = _Entry(value, kind, self._clock.seconds(), self._tick)
        l1 = self._l1
        if key not in l1:
            if key in self._l2:
                del self._l2[key]  # the reference left a stale copy behind in L2
            if len(l1) >= self.config.l1_size:
                self._demote()
        l1[key] = entry

    def remove(self, key: str) -> bool:
        """Drop the key from both tiers; True if it was there."""
        found = self._l1.pop(key, None) is not None
        if key in self._l2:
            del self._l2[key]
            found = True
        if found:
            self.removes += 1
        return found

    def __contains__(self, key: str) -> bool:
        """Present and not expired, without counting a hit or changing any order."""
        entry = self._l1.get(key)
        if entry is None and key in self._l2:
            entry = self._l2.peek(key)
        return entry is not None and self._clock.seconds() - entry.created_at <= self._ttl

    def cleanup_expired(self) -> int:
        """Sweep both tiers; returns how many entries were dropped."""
        now, ttl = self._clock.seconds(), self._ttl
        dead = [k for k, e in self._l1.items() if now - e.created_at > ttl]
        for k in dead:
            del self._l1[k]
        dead2 = [k for k, e in self._l2.items() if now - e.created_at > ttl]
        for k in dead2:
            del self._l2[k]
        n = len(dead) + len(dead2)
        self.expired += n
        self.sweeps += 1
        return n

    def clear(self) -> None:
        self._l1.clear()
        self._l2.clear()

    def __len__(self) -> int:
        return len(self._l1) + len(self._l2)

    def tier_of(self, key: str) -> int | None:
        """1 or 2 (where the key is, expired or not), None if absent; for tests and debugging."""
        if key in self._l1:
            return 1
        return 2 if key in self._l2 else None

    def stats(self) -> dict[str, Any]:
        """The reference's CacheStats (hit_rate in %), plus what the tiers did."""
        lookups = self.l1_hits + self.l2_hits + self.misses
        return {
            "l1_size": len(self._l1),
            "l2_size": len(self._l2),
            "l1_capacity": self.config.l1_size,
            "l2_capacity": self.config.l2_size,
            "l1_hits": self.l1_hits,
            "l2_hits": self.l2_hits,
            "misses": self.misses,
            "hit_rate": round(100.0 * (self.l1_hits + self.l2_hits) / lookups, 2)
            if lookups
            else 0.0,
            "sets": self.sets,
            "removes": self.removes,
            "promotions": self.promotions,
            "demotions": self.demotions,
            "evictions": self.evictions,
            "expired": self.expired,
            "sweeps": self.sweeps,
            "ttl_seconds": self._ttl,
            "compression": self._compress,
            "compressed_values": self.compressed_values,
            "compression_saved_bytes": self.compression_saved_bytes,
        }

    # -- tiers ------------------------------------------------------------------------

    def _promote(self, key: str, entry: _Entry) -> None:
        """Move an L2 hit up to L1 (it was already taken out of L2: never in both)."""
        self.promotions += 1
        self._tick += 1
        entry.tick = self._tick
        if len(self._l1) >= self.config.l1_size:
            self._demote()
        self._l1[key] = entry

    def _demote(self) -> None:
        """Move the least recently accessed quarter of L1 down to L2 (expired ones are dropped)."""
        l1, l2 = self._l1, self._l2
        count = max(1, self.config.l1_size // 4)
        now, ttl = self._clock.seconds(), self._ttl
        victims = heapq.nsmallest(count, l1.items(), key=lambda kv: kv[1].tick)
        for key, entry in victims:  # oldest first: the newest of them ends up MRU in L2
            del l1[key]
            if now - entry.created_at > ttl:
                self.expired += 1
                continue
            l2[key] = entry
            self.demotions += 1

    def _evicted(self, key: str, entry: _Entry) -> None:
        """pylru pushes its LRU entry out to make room: that value is gone."""
        self.evictions += 1

    # -- compression --------------------------------------------------------------------

    def _pack(self, value: Any) -> tuple[Any, int]:
        if type(value) is bytes:
            raw, kind = value, _ZBYTES
        elif type(value) is str:
            if len(value) < self._threshold // 4:  # cannot reach the threshold in UTF-8
                return value, _RAW
            raw, kind = value.encode(), _ZSTR
        elif self._serializer is not None:
            raw, kind = self._serializer[0](value), _ZSER
        else:
            return value, _RAW
        packed = compress(raw, self.config)
        if packed is None:
            return value, _RAW
        self.compressed_values += 1
        self.compression_saved_bytes += len(raw) - len(packed)
        return packed, kind

    def _unpack(self, entry: _Entry) -> Any:
        raw = zlib.decompress(entry.value)
        if entry.kind == _ZBYTES:
            return raw
        if entry.kind == _ZSTR:
            return raw.decode()
        assert self._serializer is not None
        return self._serializer[1](raw)


def compress(raw: bytes, config: CacheConfig) -> bytes | None:
    """``raw`` zlib-compressed if it is at least ``compress_threshold`` bytes and shrinks;
    else None (keep it raw). The one compression rule of the cache and of ``BlobCodec``."""
    if len(raw) < config.compress_threshold:
        return None
    packed = zlib.compress(raw, config.compress_level)
    return packed if len(packed) < len(raw) else None


#: orjson both ways: what game snapshots (and any JSON-shaped value) serialise with.
JSON_SERIALIZER: Serializer = (orjson.dumps, orjson.loads)

#: ``BlobCodec`` header bytes: the payload after it is the serialised value as is, or zlib of it.
BLOB_RAW, BLOB_ZLIB = b"J", b"Z"


class BlobCodec:
    """The cache's serializer and compression rule, as self-describing bytes for storage
    outside the process (cluster game snapshots in Redis).

    One header byte says how the rest is stored (``BLOB_RAW`` or ``BLOB_ZLIB``), so a
    reader never needs the writer's settings: a node with compression off still reads a
    compressed snapshot. Compression follows the same ``CacheConfig`` fields as the
    cache (``enable_compression``, ``compress_threshold``, ``compress_level``).
    """

    def __init__(self, config: CacheConfig | None = None, serializer: Serializer | None = None):
        self.config = config or CacheConfig()
        self._dumps, self._loads = serializer or JSON_SERIALIZER
        self.blobs = 0
        self.compressed_blobs = 0
        self.raw_bytes = 0  # serialised sizes, summed
        self.stored_bytes = 0  # sizes written (header included), summed

    def dumps(self, value: Any) -> bytes:
        raw = self._dumps(value)
        packed = compress(raw, self.config) if self.config.enable_compression else None
        blob = BLOB_RAW + raw if packed is None else BLOB_ZLIB + packed
        self.blobs += 1
        self.compressed_blobs += packed is not None
        self.raw_bytes += len(raw)
        self.stored_bytes += len(blob)
        return blob

    def loads(self, blob: bytes) -> Any:
        """The value back; ValueError for bytes no ``dumps`` wrote (unknown header, bad zlib)."""
        head, body = blob[:1], blob[1:]
        if head == BLOB_ZLIB:
            try:
                body = zlib.decompress(body)
            except zlib.error as e:
                raise ValueError(f"corrupt compressed blob: {e}") from None
        elif head != BLOB_RAW:
            raise ValueError(f"not a BlobCodec blob (header {head!r})")
        return self._loads(body)

    def stats(self) -> dict[str, Any]:
        return {
            "blobs": self.blobs,
            "compressed_blobs": self.compressed_blobs,
            "raw_bytes": self.raw_bytes,
            "stored_bytes": self.stored_bytes,
        }


class GameStateCache(MultiTierCache):
    """The game-state keys of the reference: ``game_state:{room_id}``, ``user_game:{user_id}``."""

    @staticmethod
    def room_key(room_id: int) -> str:
        return f"game_state:{room_id}"

    @staticmethod
    def user_key(user_id: int) -> str:
        return f"user_game:{user_id}"


def make_sweeper(cache: MultiTierCache, clock: IReactorTime) -> TimerService:
    """A service that runs ``cleanup_expired`` every ``sweep_interval`` seconds on ``clock``."""

    def sweep() -> None:
        n = cache.cleanup_expired()
        if n:
            _log.debug("cache sweep dropped {n} expired entries", n=n)

    service = TimerService(cache.config.sweep_interval, sweep)
    service.clock = clock
    return service


class CacheCollector(Collector):
    """Prometheus view of a cache's counters (read at scrape time: nothing on the hot path)."""

    def __init__(self, cache: MultiTierCache, prefix: str = "gamed_cache") -> None:
        self._cache = cache
        self._prefix = prefix

    def collect(self) -> Iterator[Metric]:
        c, p = self._cache, self._prefix
        hits = CounterMetricFamily(f"{p}_hits", "Cache hits by tier", labels=["tier"])
        hits.add_metric(["l1"], c.l1_hits)
        hits.add_metric(["l2"], c.l2_hits)
        yield hits
        yield CounterMetricFamily(f"{p}_misses", "Cache lookups that found nothing", value=c.misses)
        entries = GaugeMetricFamily(f"{p}_entries", "Entries held, by tier", labels=["tier"])
        entries.add_metric(["l1"], len(c._l1))
        entries.add_metric(["l2"], len(c._l2))
        yield entries
        yield CounterMetricFamily(
            f"{p}_evictions", "Entries pushed out of L2 by its size bound", value=c.evictions
        )
        yield CounterMetricFamily(
            f"{p}_expired", "Entries dropped because their TTL ran out", value=c.expired
        )
        yield CounterMetricFamily(f"{p}_promotions", "L2 hits moved up to L1", value=c.promotions)
        yield CounterMetricFamily(
            f"{p}_demotions", "L1 entries moved down to L2 when L1 was full", value=c.demotions
        )
        yield CounterMetricFamily(
            f"{p}_compression_saved_bytes",
            "Bytes saved by compressing large values (raw minus compressed, summed over sets)",
            value=c.compression_saved_bytes,
        )

    def describe(self) -> Iterator[Metric]:
        p = self._prefix
        yield CounterMetricFamily(f"{p}_hits", "", labels=["tier"])
        yield CounterMetricFamily(f"{p}_misses", "")
        yield GaugeMetricFamily(f"{p}_entries", "", labels=["tier"])
        for name in ("evictions", "expired", "promotions", "demotions", "compression_saved_bytes"):
            yield CounterMetricFamily(f"{p}_{name}", "")
