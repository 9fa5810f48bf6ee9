"""Experiment specs and their expansion into member run configs.

An experiment is a question answered by many ordinary runs. Its spec is one JSON object:

    {"kind": "sample_efficiency", "name": "mnist-to-digits",
     "source_run": {...a run config...},      # optional: a source trained once (or reused) first
     "base": {...a run config...},            # what every member shares: source, dataset, train
     "methods": ["scratch", "feature_extraction", "fine_tune"],
     "per_class": [1, 2, 5, 10, 20, "all"], "seeds": 3}

Kinds (`KINDS`, a registry, so a new kind is one decorated function):
- `sample_efficiency`: every method x every K (labelled images per class) x every seed.
- `layer_transfer` (Yosinski et al. 2014): the first n blocks of the source transferred, n = 1 ..
  all, frozen (`AnB`) and fine-tuned (`AnB+`), the rest re-initialised; `scratch` is n = 0.
- `grid`: a base config and lists of values for any config keys (`"train.lr": [1e-3, 1e-2]`).

Methods are a registry too (`METHODS`): a method turns the base config into its member's config.
The plan presets are registered here, and `joint`: the target trained together with the source
run's own task on one trunk (multi-task learning instead of transfer: the source run's starting
point, plan and dataset, a head each; it needs the spec's `source_run`). Distillation would
register its own.
A method in the spec is a name, or `{"name": ..., "label": ..., "set": {"train.lr": 1e-4}}`.

Seeds: a count n (seeds 0..n-1) or a list. A seed sets both `train.seed` (initialisation, batch
order) and `dataset.seed` (which K images are drawn, and the validation split), so the spread
over seeds covers the luck of the draw as well as of the initialisation.
"""

from __future__ import annotations

import copy
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..config import ConfigError, RunConfig, TaskConfig
from ..presets import PRESETS
from ..registry import Registry

ALL = "all"  # per_class "all": every labelled training image
SPEC_KEYS = ("kind", "name", "description", "source_run", "base", "methods", "per_class", "seeds", "blocks",
             "grid", "parallel", "version")
DEFAULT_PER_CLASS = (1, 2, 5, 10, 20, None)
DEFAULT_METHODS = ("scratch", "feature_extraction", "fine_tune")


# --- methods ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Method:
    """How a member of this method differs from the base config. With `uses_source_run`, `apply`
    also gets the spec's `source_run` config: `apply(cfg, source)`."""

    apply: Callable[..., RunConfig]
    label: str
    transfer: bool  # False for the from-scratch baseline the others are judged against
    uses_source_run: bool = False

    def member(self, cfg: RunConfig, source: RunConfig | None) -> RunConfig:
        return self.apply(cfg, source) if self.uses_source_run else self.apply(cfg)


METHODS: Registry[Method] = Registry("experiment method")


def _preset_method(preset: str) -> Callable[[RunConfig], RunConfig]:
    def apply(cfg: RunConfig) -> RunConfig:
        cfg.plan.preset = preset
        return cfg

    return apply


_LABELS = {"scratch": "from scratch", "linear_probe": "linear probe", "feature_extraction": "feature extraction", "fine_tune": "fine-tune",
           "freeze_first_n": "freeze first N", "gradual_unfreeze": "gradual unfreezing",
           "discriminative": "discriminative lr"}
for _preset in PRESETS.names():  # one method per plan preset
    METHODS.add(_preset, Method(_preset_method(_preset), _LABELS.get(_preset, _preset), _preset != "scratch"))

JOINT_TASK = "source"  # the source run's task's name in a joint member


def _joint_with_source(cfg: RunConfig, source: RunConfig) -> RunConfig:
    """Multi-task learning instead of transfer: the member starts where the source run started
    (its source and plan: from scratch in the demo) and trains the target together with the source
    run's dataset (a task named `source`, drawn with the member's seed), one head each. The
    member's own schedule stays (auto epochs are reckoned over every task's images) and the target
    stays the primary task (best checkpoint, early stopping, headline)."""
    cfg.source, cfg.plan = copy.deepcopy(source.source), copy.deepcopy(source.plan)
    task = TaskConfig(name=JOINT_TASK, dataset=copy.deepcopy(source.dataset))
    task.dataset.seed = cfg.dataset.seed
    cfg.tasks = [task]
    return cfg


METHODS.add("joint", Method(_joint_with_source, "joint with the source task", True, uses_source_run=True))


@dataclass(frozen=True)
class MethodChoice:
    """A method as the spec names it: the registry entry, its label and extra config values."""

    name: str
    label: str
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def transfer(self) -> bool:
        return METHODS.get(self.name).transfer

    def to_json(self) -> Any:
        if not self.values and self.label == METHODS.get(self.name).label:
            return self.name
        return {"name": self.name, "label": self.label, "set": self.values}


def _method_choice(item: Any) -> MethodChoice:
    if isinstance(item, str):
        item = {"name": item}
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise ConfigError(f"experiment method {json.dumps(item)} is not a method",
                          f"give a name ({', '.join(METHODS.names())}) or {{\"name\": ..., \"set\": {{...}}}}")
    unknown = sorted(set(item) - {"name", "label", "set"})
    if unknown:
        raise ConfigError(f"unknown key(s) in experiment method {item['name']!r}: {', '.join(unknown)}",
                          "valid keys: name, label, set")
    entry = METHODS.entry(item["name"])  # an unknown name lists the valid ones
    values = item.get("set") or {}
    if not isinstance(values, dict):
        raise ConfigError(f"method {item['name']!r}: set must be an object of config keys",
                          "for example {\"train.lr\": 0.0001}")
    return MethodChoice(entry.name, str(item.get("label") or entry.meta.get("label") or entry.obj.label), values)


# --- dotted config keys -------------------------------------------------------------------------

def set_key(config: dict, dotted: str, value: Any) -> None:
    """Set `train.lr` (say) in a run config dict; a key that is not in the config fails."""
    parts = dotted.split(".")
    node = config
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            where = ".".join(parts[:i]) or "the config"
            keys = ", ".join(node) if isinstance(node, dict) else "none (not an object)"
            raise ConfigError(f"experiment key {dotted!r}: {part!r} is not a key of {where}",
                              f"valid keys there: {keys}")
        if i == len(parts) - 1:
            node[part] = copy.deepcopy(value)
        else:
            node = node[part]


def _full_config(data: Any, what: str) -> dict:
    """A run config dict with every key present (defaults filled in), validated."""
    if not isinstance(data, dict):
        raise ConfigError(f"experiment {what} must be a run config object", "see examples/quick.json")
    return RunConfig.from_dict(data).to_dict()


# --- the spec -----------------------------------------------------------------------------------

@dataclass
class Member:
    """One run of the experiment: `key` names it within the experiment, `coords` place it."""

    key: str
    coords: dict[str, Any]
    config: RunConfig


@dataclass
class ExperimentSpec:
    kind: str = "sample_efficiency"
    name: str = ""
    description: str = ""
    base: dict = field(default_factory=dict)  # a run config (dict), validated
    source_run: dict | None = None  # a run config trained once, first; members transfer from it
    methods: list[MethodChoice] = field(default_factory=list)
    per_class: list[int | None] = field(default_factory=lambda: list(DEFAULT_PER_CLASS))  # K values
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    blocks: list[str] | None = None  # layer_transfer: the blocks in order (default: the source's)
    grid: dict[str, list] = field(default_factory=dict)
    parallel: int | None = None  # members at a time (default: settings)
    version: int = 1

    @classmethod
    def from_dict(cls, data: Any) -> "ExperimentSpec":
        if not isinstance(data, dict):
            raise ConfigError("an experiment spec must be a JSON object", "see examples/sample_efficiency.json")
        unknown = sorted(set(data) - set(SPEC_KEYS))
        if unknown:
            raise ConfigError(f"unknown key(s) in the experiment spec: {', '.join(unknown)}",
                              f"valid keys: {', '.join(SPEC_KEYS)}")
        kind = data.get("kind", "sample_efficiency")
        KINDS.entry(kind)  # an unknown kind lists the valid ones
        spec = cls(kind=kind, name=str(data.get("name") or kind), description=str(data.get("description") or ""))
        spec.base = _full_config(data.get("base", {}), "base")
        if data.get("source_run") is not None:
            spec.source_run = _full_config(data["source_run"], "source_run")
        default_methods = DEFAULT_METHODS if kind == "sample_efficiency" else ()
        spec.methods = [_method_choice(m) for m in data.get("methods", default_methods)]
        labels = [m.label for m in spec.methods]
        if len(set(labels)) != len(labels):
            raise ConfigError("two experiment methods have the same label", "give each a distinct \"label\"")
        if kind == "sample_efficiency":
            spec.per_class = _per_class_list(data.get("per_class", list(DEFAULT_PER_CLASS)))
        else:  # optional: one K for every member (a grid may also list dataset.per_class)
            spec.per_class = _per_class_list(data["per_class"]) if "per_class" in data else []
        spec.seeds = _seed_list(data.get("seeds", 3 if kind != "grid" else 1))
        blocks = data.get("blocks")
        if blocks is not None and (not isinstance(blocks, list) or not all(isinstance(b, str) for b in blocks)):
            raise ConfigError("experiment blocks must be a list of block names", "see `python -m kt_core inspect SOURCE`")
        spec.blocks = blocks
        grid = data.get("grid", {})
        if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
            raise ConfigError("experiment grid must map config keys to non-empty lists of values",
                              "for example {\"train.lr\": [0.001, 0.01]}")
        spec.grid = grid
        parallel = data.get("parallel")
        if parallel is not None and (not isinstance(parallel, int) or isinstance(parallel, bool) or parallel < 1):
            raise ConfigError(f"experiment parallel is {parallel!r}", "use a whole number of 1 or more, or null")
        spec.parallel = parallel
        spec.version = int(data.get("version", 1))
        KINDS.get(kind).check(spec)
        return spec

    @classmethod
    def from_file(cls, path: str | Path) -> "ExperimentSpec":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"experiment spec {path} does not exist", "check the path; examples/ has specs") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read experiment spec {path}: {exc}", "give a JSON text file") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}",
                              "fix the JSON; examples/sample_efficiency.json is a complete example") from None
        return cls.from_dict(data)

    def to_dict(self) -> dict:
        """The spec as JSON that `from_dict` reads back to this spec (the driver re-reads it).
        A grid's or layer sweep's `per_class` is optional: left out when it has none."""
        per_class = {"per_class": [ALL if k is None else k for k in self.per_class]} if (
            self.per_class or self.kind == "sample_efficiency") else {}
        return {"kind": self.kind, "name": self.name, "description": self.description,
                "source_run": self.source_run, "base": self.base,
                "methods": [m.to_json() for m in self.methods], **per_class, "seeds": list(self.seeds),
                "blocks": self.blocks, "grid": self.grid, "parallel": self.parallel, "version": self.version}

    def members(self, source_run: str | None = None, blocks: list[str] | None = None) -> list[Member]:
        """Every member run of the experiment, in the order they are run.

        `source_run`: the id of the trained `source_run` (the members transfer from it). `blocks`:
        the source's block names, for a layer_transfer spec that does not list them.
        """
        base = copy.deepcopy(self.base)
        if self.source_run is not None:
            if source_run is None:
                raise ConfigError("this experiment trains its source first", "expand it with the source run's id")
            base["source"] = {**base["source"], "kind": "run", "path": source_run, "arch": None, "weights": None}
        members = KINDS.get(self.kind).expand(self, base, blocks)
        keys = [m.key for m in members]
        assert len(set(keys)) == len(keys), "member keys must be unique"
        return members

    def member_config(self, base: dict, key: str, values: dict[str, Any], seed: int) -> RunConfig:
        cfg = copy.deepcopy(base)
        for dotted, value in values.items():
            set_key(cfg, dotted, value)
        cfg["train"]["seed"] = seed
        cfg["dataset"]["seed"] = seed
        cfg["name"] = f"{self.name}: {key}"
        return RunConfig.from_dict(cfg)


def _per_class_list(value: Any) -> list[int | None]:
    items = value if isinstance(value, list) else [value]
    out = []
    for k in items:
        if k is None or k == ALL:  # JSON null or "all"
            out.append(None)
        elif isinstance(k, int) and not isinstance(k, bool) and k >= 1:
            out.append(k)
        else:
            raise ConfigError(f"experiment per_class value {json.dumps(k)} is not a K",
                              "use whole numbers of 1 or more, or \"all\"")
    if not out or len(set(out)) != len(out):
        raise ConfigError("experiment per_class is empty or lists a K twice", "for example [1, 5, 10, \"all\"]")
    return sorted(out, key=lambda k: float("inf") if k is None else k)


def _seed_list(value: Any) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ConfigError(f"experiment seeds is {value}", "give a count of 1 or more, or a list of seeds")
        return list(range(value))
    if isinstance(value, list) and value and all(isinstance(s, int) and not isinstance(s, bool) for s in value) \
            and len(set(value)) == len(value):
        return list(value)
    raise ConfigError(f"experiment seeds is {json.dumps(value)}", "give a count (3) or a list of distinct seeds ([0, 1, 2])")


def k_label(k: int | None) -> str:
    return ALL if k is None else str(k)


# --- kinds --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Kind:
    check: Callable[[ExperimentSpec], None]
    expand: Callable[[ExperimentSpec, dict, list[str] | None], list[Member]]
    description: str


KINDS: Registry[Kind] = Registry("experiment kind")


def _check_sample_efficiency(spec: ExperimentSpec) -> None:
    if not spec.methods:
        raise ConfigError("a sample_efficiency experiment needs methods", f"for example {list(DEFAULT_METHODS)}")
    joint = [m.name for m in spec.methods if METHODS.get(m.name).uses_source_run]
    if joint and spec.source_run is None:
        raise ConfigError(f"method {joint[0]!r} trains the target together with the source run's task, "
                          "but the experiment has no source_run",
                          "give the source as a source_run the experiment trains first (the demo's source), "
                          f"or leave out {joint[0]!r}")


def _expand_sample_efficiency(spec: ExperimentSpec, base: dict, blocks) -> list[Member]:
    out = []
    source = RunConfig.from_dict(spec.source_run) if spec.source_run is not None else None
    for method, k, seed in itertools.product(spec.methods, spec.per_class, spec.seeds):
        key = f"{method.label} K={k_label(k)} seed={seed}"
        cfg = spec.member_config(base, key, {"dataset.per_class": k, **method.values}, seed)
        cfg = METHODS.get(method.name).member(cfg, source)
        out.append(Member(key, {"method": method.label, "per_class": k, "seed": seed}, cfg.validate()))
    return out


KINDS.add("sample_efficiency", Kind(_check_sample_efficiency, _expand_sample_efficiency,
                                    "accuracy against labelled images per class (K), per method"))

LAYER_VARIANTS = ("AnB", "AnB+")  # transferred blocks frozen / fine-tuned (Yosinski et al. 2014)


def _check_layer_transfer(spec: ExperimentSpec) -> None:
    if len(spec.per_class) > 1:
        raise ConfigError("a layer_transfer experiment takes one per_class", "give one K, or run a sample_efficiency experiment")
    if spec.source_run is None and spec.base["source"]["kind"] == "arch" and not spec.base["source"].get("weights"):
        raise ConfigError("a layer_transfer experiment needs trained source weights",
                          "give a source_run to train first, a checkpoint file, a run, or named weights")


def _expand_layer_transfer(spec: ExperimentSpec, base: dict, blocks: list[str] | None) -> list[Member]:
    names = [b for b in (spec.blocks or blocks or []) if b != "head"]
    if not names:
        raise ConfigError("a layer_transfer experiment needs the source's blocks", "list them under \"blocks\"")
    out = []
    k = spec.per_class[0] if spec.per_class else base["dataset"]["per_class"]
    for seed in spec.seeds:  # n = 0: every block re-initialised: the from-scratch baseline
        key = f"scratch n=0 seed={seed}"
        cfg = spec.member_config(base, key, {"dataset.per_class": k, "plan.preset": "scratch"}, seed)
        out.append(Member(key, {"variant": "scratch", "n": 0, "seed": seed}, cfg))
    for variant, n, seed in itertools.product(LAYER_VARIANTS, range(1, len(names) + 1), spec.seeds):
        rules = [{"pattern": b, "transfer": False, "freeze": False} for b in names[n:]]
        rules += [{"pattern": b, "transfer": True, "freeze": variant == "AnB"} for b in names[:n]]
        rules.append({"pattern": "head", "transfer": False, "freeze": False})  # always a new head
        key = f"{variant} n={n} seed={seed}"
        cfg = spec.member_config(base, key, {"dataset.per_class": k, "plan.preset": "fine_tune",
                                             "plan.rules": rules}, seed)
        out.append(Member(key, {"variant": variant, "n": n, "seed": seed, "block": names[n - 1]}, cfg))
    return out


KINDS.add("layer_transfer", Kind(_check_layer_transfer, _expand_layer_transfer,
                                 "accuracy against the number of transferred blocks, frozen (AnB) and fine-tuned (AnB+)"))


def _check_grid(spec: ExperimentSpec) -> None:
    if len(spec.per_class) > 1:
        raise ConfigError("a grid takes per_class values in its grid", "use \"grid\": {\"dataset.per_class\": [1, 5]}")
    if not spec.grid:
        raise ConfigError("a grid experiment needs a grid", "for example \"grid\": {\"train.lr\": [0.001, 0.01]}")
    probe = copy.deepcopy(spec.base)
    for dotted, values in spec.grid.items():
        set_key(probe, dotted, values[0])  # an unknown key fails now, not at the first member


def _value_label(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _expand_grid(spec: ExperimentSpec, base: dict, blocks) -> list[Member]:
    keys = list(spec.grid)
    out = []
    for values in itertools.product(*(spec.grid[k] for k in keys)):
        for seed in spec.seeds:
            point = dict(zip(keys, values))
            key = " ".join(f"{k}={_value_label(v)}" for k, v in point.items()) + f" seed={seed}"
            fixed = {"dataset.per_class": spec.per_class[0]} if spec.per_class else {}
            cfg = spec.member_config(base, key, {**fixed, **point}, seed)
            out.append(Member(key, {**point, "seed": seed}, cfg))
    return out


KINDS.add("grid", Kind(_check_grid, _expand_grid, "a base config with lists of values for any config keys"))


def is_spec(data: Any) -> bool:
    """Whether parsed JSON is an experiment spec (it names a `kind` and a `base`), not a run config."""
    return isinstance(data, dict) and "base" in data and "kind" in data
