"""Experiments: one module each, configured by one YAML file in ``mirrorflow_jax/configs/``.

Every module follows the contract in `mirrorflow_jax.experiments._base` (``Config``, ``run``,
``figures``, ``checks``) and uses only the public API of `mirrorflow_jax`, exactly as a user
would. ``mirrorflow run <name>`` runs one; ``mirrorflow list`` lists them.

To add an experiment, write the module and add one line to `EXPERIMENTS`.
"""

import importlib
import types

EXPERIMENTS: dict[str, str] = {
    "saddle_escape": "mirrorflow_jax.experiments.saddle_escape",
    "balance": "mirrorflow_jax.experiments.balance",
    "regime_map": "mirrorflow_jax.experiments.regime_map",
    "saddle_to_saddle": "mirrorflow_jax.experiments.saddle_to_saddle",
    "sparse_regression": "mirrorflow_jax.experiments.sparse_regression",
    "classification": "mirrorflow_jax.experiments.classification",
    "finetune": "mirrorflow_jax.experiments.finetune",
    "weight_decay": "mirrorflow_jax.experiments.weight_decay",
}
"""Experiment name (the ``experiment:`` key of its YAML) → module path, imported lazily."""


def load(name: str) -> types.ModuleType:
    """The module of experiment ``name``; ValueError naming the known ones otherwise."""
    if name not in EXPERIMENTS:
        raise ValueError(f"`experiment` must be one of {sorted(EXPERIMENTS)}; got {name!r}.")
    return importlib.import_module(EXPERIMENTS[name])
