"""Should the zstd level of Raft log entries adapt to load and entry size? Measured, one thread.

A group-commit entry is a batch of commands (``canidae.core.commands.encode_batch``) compressed
with zstd when larger than ``COMPRESS_OVER`` (``canidae.agent.server.replica.encode_entry``, level
1 today). For batches of single-pack spawns as group commit builds them (1 to 4,000 commands) and
for one bulk spawn of N explicit specs (up to 10,000 packs), this prints the encoded size, and for
zstd levels 1, 3 and 6 the compressed size, the time to compress (paid once, on the leader's
loop) and to decompress (paid on every replica's apply), best of ``--repeat`` runs.

What a level buys is bytes on the Raft wire (twice, to two followers) and in each replica's log
file; what it costs is leader CPU on the request path. ``--disk-mb-s`` and ``--net-mb-s`` turn
the bytes saved into time saved (defaults: a modest SSD's sequential write and loopback) so both
sides read in milliseconds.

    python bench/entry_compression.py [--repeat 7] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from typing import Any

import zstandard

from canidae.core.commands import CreatePacks, encode_batch
from canidae.core.types import PackSpec

LEVELS = (1, 3, 6)


def best(fn: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def spawn(i: int, n: int = 1) -> CreatePacks:
    """A spawn with hash-like names and request id (as uuid4-based ones are: far less compressible
    than counters), and varied resources."""
    specs = tuple(PackSpec.from_dict({"name": f"svc-{hashlib.sha1(b'%d/%d' % (i, k)).hexdigest()[:12]}",
                                      "cpu": 50 * (1 + (i + k) % 8), "mem": 32 * (1 + (i * 7 + k) % 16)})
                  for k in range(n))
    return CreatePacks(id=hashlib.sha1(b"%d" % i).hexdigest()[:32], at=1_765_000_000_000 + 37 * i, term=7,
                       specs=specs)


def measure(data: bytes, repeat: int, disk_mb_s: float, net_mb_s: float) -> dict[str, Any]:
    row: dict[str, Any] = {"bytes": len(data)}
    for level in LEVELS:
        comp = zstandard.ZstdCompressor(level=level)
        blob = comp.compress(data)
        dec = zstandard.ZstdDecompressor()
        c_ms = best(lambda: comp.compress(data), repeat) * 1000  # noqa: B023
        d_ms = best(lambda: dec.decompress(blob), repeat) * 1000  # noqa: B023
        # Every entry is written to 3 logs and sent to 2 followers.
        io_ms = len(blob) / 1e6 * (3 / disk_mb_s + 2 / net_mb_s) * 1000
        row[f"z{level}"] = {"bytes": len(blob), "compress_ms": round(c_ms, 3), "decompress_ms": round(d_ms, 3),
                            "io_ms": round(io_ms, 3)}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--disk-mb-s", type=float, default=500.0)
    ap.add_argument("--net-mb-s", type=float, default=2000.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out: dict[str, Any] = {}
    for n in (16, 256, 4000):
        out[f"batch of {n} spawns"] = measure(encode_batch([spawn(i) for i in range(n)]), args.repeat,
                                              args.disk_mb_s, args.net_mb_s)
    for n in (1000, 10_000):
        out[f"one spawn of {n} specs"] = measure(encode_batch([spawn(0, n)]), args.repeat, args.disk_mb_s,
                                                 args.net_mb_s)
    if args.json:
        print(json.dumps(out, indent=1))
        return
    print(f"{'entry':28} {'bytes':>10}  " + "  ".join(f"{'z' + str(lv) + ' bytes':>10} {'comp ms':>8} "
                                                        f"{'dec ms':>7} {'io ms':>7}" for lv in LEVELS))
    for name, row in out.items():
        print(f"{name:28} {row['bytes']:>10,}  " + "  ".join(
            f"{row[f'z{lv}']['bytes']:>10,} {row[f'z{lv}']['compress_ms']:>8.3f} {row[f'z{lv}']['decompress_ms']:>7.3f} "
            f"{row[f'z{lv}']['io_ms']:>7.3f}" for lv in LEVELS))


if __name__ == "__main__":
    main()
