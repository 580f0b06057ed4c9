"""An LRU cache of query embeddings, in front of the micro-batcher's ONNX call.

Why: production query streams repeat heavily (head queries, pagination, retries), and an encoder is a pure
function of its model files and the text, so a repeated query need not run ONNX again. The key is
(encoder checksum, output dimensions, exact query text): two arms with different encoders, or one encoder
truncated to different Matryoshka dimensions, never share an entry, and a reload to a new model (a new
checksum) cannot serve stale vectors. The text is not normalised: the tokenizer might not do the same.

Capacity 0 turns the cache off (the default: benchmarks against other servers must measure the encoder, not
the cache). Thread-safe: micro-batches of several encoders run in worker threads at once. Stored vectors are
read-only copies, so a caller cannot change an entry in place.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np


class QueryCache:
    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"query cache capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self._entries: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(encoder, query: str) -> tuple:
        return (encoder.checksum, encoder.dimension, query)

    def get(self, key: tuple) -> np.ndarray | None:
        with self._lock:
            vector = self._entries.get(key)
            if vector is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return vector

    def put(self, key: tuple, vector: np.ndarray) -> None:
        if self.capacity == 0:
            return
        vector = np.array(vector, dtype=np.float32, copy=True)
        vector.flags.writeable = False
        with self._lock:
            self._entries[key] = vector
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def encode(self, encoder, queries: list[str]) -> np.ndarray:
        """Vectors for `queries` (in order): cached ones looked up, the rest (each distinct text once) encoded
        in one call and stored."""
        keys = [self.key(encoder, q) for q in queries]
        found = [self.get(k) for k in keys]
        missing = list(dict.fromkeys(q for q, v in zip(queries, found) if v is None))
        if missing:
            fresh = dict(zip(missing, encoder.encode(missing, batch_size=len(missing))))
            for q in missing:
                self.put(self.key(encoder, q), fresh[q])
            found = [v if v is not None else fresh[q] for q, v in zip(queries, found)]
        return np.stack(found).astype(np.float32, copy=False)

    def stats(self) -> dict:
        with self._lock:
            return {"hits": self.hits, "misses": self.misses, "size": len(self._entries),
                    "capacity": self.capacity}
