"""`python -m kt_core drafts`: the dashboard's setups not yet started, and one as a config file.

    python -m kt_core drafts                       # id, last edit, what it would train
    python -m kt_core drafts show 3f2a9c1b04d5 > my.json && python -m kt_core train my.json

A draft's id is the `?draft=` of the dashboard's URL.
"""

from __future__ import annotations

import time

from .. import drafts
from ..errors import ConfigError
from . import print_json


def register(subparsers) -> None:
    p = subparsers.add_parser("drafts", help="the dashboard's drafts (setups not yet started); `drafts show ID`")
    p.add_argument("action", nargs="?", choices=["list", "show"], default="list")
    p.add_argument("id", nargs="?", help="a draft id (the ?draft= of the dashboard's URL), for `show`")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_drafts)


def _drafts(args) -> int:
    if args.action == "show":
        if not args.id:
            raise ConfigError("`drafts show` needs a draft id", "`python -m kt_core drafts` lists them")
        draft = drafts.load(args.id)
        if draft is None:
            raise ConfigError(f"no draft {args.id}", "`python -m kt_core drafts` lists them")
        cfg = draft.config
        cfg.name = draft.extras.get("run_name", cfg.name) or cfg.name
        print_json(draft.to_dict() if args.json else cfg.to_dict())  # the config alone: `train` takes it
        return 0
    found = drafts.list_drafts()
    if args.json:
        print_json([{"id": d.id, "updated": d.updated, "describe": drafts.describe(d.config), "runs": d.runs}
                    for d in found])
        return 0
    if not found:
        print("no drafts (the dashboard saves one as soon as a setup is edited)")
    for d in found:
        print(f"{d.id}  {time.strftime('%Y-%m-%d %H:%M', time.localtime(d.updated))}  {drafts.describe(d.config)}"
              + (f"  ({len(d.runs)} run(s) started)" if d.runs else ""))
    return 0
