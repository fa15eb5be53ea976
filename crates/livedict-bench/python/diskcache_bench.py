"""The Python peer of the sqlite suite: `diskcache.Cache` doing N gets or N sets.

    python diskcache_bench.py DIR OP N KEYS VALUE_LEN SEED

OP is `get` or `set`. The cache in DIR is filled with KEYS keys `key:{i}` (VALUE_LEN-byte `bytes`
values, `expire=3600`) if it does not hold them yet; then N operations on keys drawn uniformly
from them (seeded) run in a loop timed with `time.perf_counter` (start-up, imports and filling not
counted): `cache.get(key)` for `get`, `cache.set(key, value, expire=3600)` (overwrites) for `set`.
Prints one line: `ELAPSED_SECONDS COUNT`, COUNT being the hits (get) or writes (set).
"""
import random
import sys
import time

import diskcache

TTL = 3600


def main():
    directory, op, n, keys, value_len, seed = sys.argv[1:7]
    n, keys, value_len, seed = int(n), int(keys), int(value_len), int(seed)
    value = bytes(i % 256 for i in range(value_len))
    names = [f"key:{i}" for i in range(keys)]
    with diskcache.Cache(directory) as cache:
        if len(cache) != keys:
            cache.clear()
            for k in names:
                cache.set(k, value, expire=TTL)
        rng = random.Random(seed)
        order = [names[rng.randrange(keys)] for _ in range(n)]
        count = 0
        if op == "get":
            get = cache.get
            start = time.perf_counter()
            for k in order:
                if get(k) is not None:
                    count += 1
            elapsed = time.perf_counter() - start
        elif op == "set":
            put = cache.set
            start = time.perf_counter()
            for k in order:
                put(k, value, expire=TTL)
                count += 1
            elapsed = time.perf_counter() - start
        else:
            sys.exit(f"unknown op {op!r}")
    print(f"{elapsed:.9f} {count}")


if __name__ == "__main__":
    main()
