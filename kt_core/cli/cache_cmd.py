"""`python -m kt_core cache`: what the cache folder holds, its limit, and clearing it.

    python -m kt_core cache                        # bytes and entries per area, the limit
    python -m kt_core cache clear                  # decoded datasets, shared outputs and extracted zips (rebuilt on demand)
    python -m kt_core cache clear --area uploads   # the uploaded files too (runs that used them cannot resume)
"""

from __future__ import annotations

from .. import cachedir
from . import print_json


def register(subparsers) -> None:
    p = subparsers.add_parser("cache", help="the cache folder: size per area and its limit; `cache clear`")
    p.add_argument("action", nargs="?", choices=["show", "clear"], default="show")
    p.add_argument("--area", action="append", choices=cachedir.EVICTABLE + cachedir.KEPT,
                   help="what `clear` removes (repeatable; default: the rebuildable areas, "
                        f"{' and '.join(cachedir.EVICTABLE)})")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cache)


def _mb(n: int) -> str:
    return f"{n / 2**20:,.1f} MB"


def _cache(args) -> int:
    if args.action == "clear":
        removed = cachedir.clear(tuple(args.area or cachedir.EVICTABLE))
        freed = sum(e.bytes for e in removed)
        if args.json:
            print_json({"removed": len(removed), "bytes": freed})
        else:
            print(f"removed {len(removed)} cache entries, {_mb(freed)}")
        return 0
    usage = cachedir.usage()
    if args.json:
        print_json(usage)
        return 0
    print(f"{usage['cache_dir']}: {_mb(usage['total_bytes'])} of {_mb(usage['limit_bytes'])} (KT_CACHE_MAX_BYTES)")
    for area, row in usage["areas"].items():
        kind = "evicted least recently used first" if row["evictable"] else "kept: cleared only with --area " + area
        print(f"  {area:<12} {_mb(row['bytes']):>12}  {row['entries']:>5} entries  ({kind})")
    return 0
