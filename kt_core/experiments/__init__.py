"""Experiments: one question answered by many ordinary runs (see spec.py for the spec format).

- `spec`: the spec, its kinds and methods (registries), and its expansion into member configs;
- `folder`: the experiment folder contract: layout, lookup, read / write / create / list;
- `control`: start / stop / resume / delete (as the launcher is for runs);
- `driver`: the process that trains the members N at a time, sharing what can be shared;
- `results`: the members' results, aggregated per chart point, and the verdict in words;
- `report`: the chart (Plotly), the CSV and the self-contained HTML report.
"""

from .control import delete_experiment, resume_experiment, start_experiment, stop_experiment
from .folder import create_experiment, experiment_dir, experiments_root, list_experiments, read_experiment
from .spec import KINDS, METHODS, ExperimentSpec, Member, is_spec

__all__ = ["ExperimentSpec", "Member", "KINDS", "METHODS", "is_spec", "create_experiment", "start_experiment",
           "stop_experiment", "resume_experiment", "delete_experiment", "read_experiment", "list_experiments",
           "experiment_dir", "experiments_root"]
