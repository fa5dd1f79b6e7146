"""Pure-Python statements of Effect's routing algorithms, written from Effect's published
behaviour (its string hash, shard ids and `HashRing.ts`), to check the Rust port against on
random inputs."""

from __future__ import annotations

import bisect
import math


def to_i32(x: int) -> int:
    x &= 0xFFFFFFFF
    return x - (1 << 32) if x & 0x80000000 else x


def optimize(n: int) -> int:
    u = n & 0xFFFFFFFF
    return to_i32((u & 0xBFFFFFFF) | ((u >> 1) & 0x40000000))


def hash_string(s: str) -> int:
    b = s.encode("utf-16-le", "surrogatepass")
    codes = [b[i] | (b[i + 1] << 8) for i in range(0, len(b), 2)]
    h = 5381
    for c in reversed(codes):
        h = to_i32(h * 33) ^ c
    return optimize(h)


def shard_id(entity_id: str, shards_per_group: int = 300) -> int:
    return abs(hash_string(entity_id)) % shards_per_group + 1


class Ring:
    """Effect's HashRing: nodes in insertion order, a stably sorted list of virtual nodes."""

    def __init__(self, base_weight: int = 128) -> None:
        self.base_weight = max(base_weight, 1)
        self.nodes: dict[str, float] = {}
        self.ring: list[tuple[int, str]] = []
        self.total = 0.0

    def add(self, key: str, weight: float = 1.0) -> None:
        weight = max(weight, 0.1)
        if key in self.nodes:
            if self.nodes[key] == weight:
                return
            self.total -= self.nodes[key]
            self.total += weight
            self.nodes[key] = weight
            self.ring = [v for v in self.ring if v[1] != key]
        else:
            self.nodes[key] = weight
            self.total += weight
        vnodes = math.floor(weight * self.base_weight + 0.5)
        self.ring.extend((hash_string(f"{key}:{i}"), key) for i in range(vnodes, 0, -1))
        self.ring.sort(key=lambda v: v[0])

    def remove(self, key: str) -> None:
        weight = self.nodes.pop(key)
        self.ring = [v for v in self.ring if v[1] != key]
        self.total -= weight

    def _index(self, h: int, exclude: set[str] | None = None) -> tuple[int, int]:
        ring = self.ring
        n = len(ring)
        lo = bisect.bisect_left([v[0] for v in ring], h)
        a = lo - 1 if lo == n else lo
        dist_a = abs(ring[a][0] - h)
        if exclude is None:
            b = lo - 1
            if b < 0:
                return a, dist_a
            dist_b = abs(ring[b][0] - h)
            return (a, dist_a) if dist_a <= dist_b else (b, dist_b)
        if ring[a][1] not in exclude:
            return a, dist_a
        for i in range(1, max(lo, n - lo)):
            for index in (lo - i, lo + i):
                if 0 <= index < n and ring[index][1] not in exclude:
                    return index, abs(ring[index][0] - h)
        return a, dist_a

    def shards(self, count: int) -> list[str] | None:
        if not self.ring:
            return None
        owners: list[str | None] = [None] * count
        allocations: dict[str, int] = {}
        exclude: set[str] = set()
        hashes = [hash_string(f"shard-{s}") for s in range(count)]

        def cap(node: str) -> float:
            return max(1, math.floor(count * (self.nodes[node] / self.total)))

        distances = []
        for shard in range(count):
            index, distance = self._index(hashes[shard])
            distances.append((shard, self.ring[index][1], distance))
        distances.sort(key=lambda d: d[2])
        for shard, node, _ in distances:
            if node in exclude:
                continue
            owners[shard] = node
            allocations[node] = allocations.get(node, 0) + 1
            if allocations[node] >= cap(node):
                exclude.add(node)
        all_at_max = len(exclude) == len(self.nodes)
        for shard in range(count):
            if owners[shard] is not None:
                continue
            index, _ = self._index(hashes[shard], None if all_at_max else exclude)
            node = self.ring[index][1]
            owners[shard] = node
            if all_at_max:
                continue
            allocations[node] = allocations.get(node, 0) + 1
            if allocations[node] >= cap(node):
                exclude.add(node)
                if len(exclude) == len(self.nodes):
                    all_at_max = True
        assigned = [o for o in owners if o is not None]
        assert len(assigned) == count, "every shard gets an owner"
        return assigned
