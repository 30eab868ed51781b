"""The fine-tuning experiment's configuration."""

import dataclasses

import numpy as np

from mirrorflow_jax.experiments._base import check_int, check_numbers, check_range

OPTIMIZERS = ("sgd_small", "sgd_tuned", "adam_small", "adamw_small", "sign_small")
NUM_DIGITS = 10


@dataclasses.dataclass(frozen=True)
class Config:
    """The fine-tuning experiment (defaults: the full-size run).

    - ``num_seeds`` ≥ 2 independent pretrain + fine-tune runs (vmapped), from ``seed``.
    - ``pretrain_classes``: pretrain on digits 0…c−1, fine-tune on the 10 − c others.
    - ``finetune_train``: fine-tuning examples (the rest of those digits is the test set).
    - ``width``, ``hidden_layers``: the tanh MLP backbone.
    - ``small_lr``: the small rate shared by SGD, Adam, AdamW and sign descent.
    - ``sgd_rates``: the grid that tunes SGD's rate (lowest mean final training loss).
    - ``weight_decay``: AdamW's decoupled decay in the main comparison.
    - ``head_init_scale``: the new head's init, relative to a fresh ``eqx.nn.Linear``'s
      U(±1/√width); ``init_scales``: the values swept for SGD at the small rate.
    - ``hessian_k``, ``lanczos_iters``: extreme Hessian eigenvalues at each end, Krylov size.
    - ``factor_depths``, ``factor_lr``, ``factor_weight_decay``: the factorized-head variant
      (AdamW with decay 0 and ``factor_weight_decay``, per depth, ``finetune_steps`` steps).
    - ``sparsity_threshold``: |x_j| ≤ threshold·max|x| counts x_j as zero.
    - ``num_saves``: saved steps of the loss and accuracy curves.
    """

    num_seeds: int = 5
    seed: int = 0
    pretrain_classes: int = 5
    finetune_train: int = 300
    width: int = 64
    hidden_layers: int = 2
    pretrain_steps: int = 300
    pretrain_lr: float = 1e-2
    finetune_steps: int = 500
    small_lr: float = 1e-3
    sgd_rates: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 3e-1, 1.0, 3.0)
    weight_decay: float = 1e-2
    head_init_scale: float = 1.0
    init_scales: tuple[float, ...] = (0.0, 0.1, 1.0)
    hessian_k: int = 3
    lanczos_iters: int = 40
    factor_depths: tuple[int, ...] = (1, 3)
    factor_lr: float = 1e-2
    factor_weight_decay: float = 0.5
    sparsity_threshold: float = 1e-3
    num_saves: int = 26

    def __post_init__(self):
        for name in ("sgd_rates", "init_scales", "factor_depths"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        check_int("num_seeds", self.num_seeds, 2)
        check_int("seed", self.seed, 0)
        check_int("pretrain_classes", self.pretrain_classes, 2, NUM_DIGITS - 2)
        check_int("finetune_train", self.finetune_train, 10, 700)
        check_int("width", self.width, 2)
        check_int("hidden_layers", self.hidden_layers, 1)
        for name in ("pretrain_steps", "finetune_steps"):
            check_int(name, getattr(self, name), 1)
        check_int("hessian_k", self.hessian_k, 1)
        check_int("lanczos_iters", self.lanczos_iters, 2 * self.hessian_k)
        check_int("num_saves", self.num_saves, 2)
        for name in ("pretrain_lr", "small_lr", "factor_lr"):
            check_range(name, getattr(self, name), 0.0, lo_open=True)
        for name in ("weight_decay", "head_init_scale"):
            check_range(name, getattr(self, name), 0.0)
        check_range("factor_weight_decay", self.factor_weight_decay, 0.0, lo_open=True)
        check_range("sparsity_threshold", self.sparsity_threshold, 0.0, 1.0, lo_open=True)
        check_numbers("sgd_rates", self.sgd_rates, 0.0, lo_open=True)
        check_numbers("init_scales", self.init_scales, 0.0)
        check_numbers("factor_depths", self.factor_depths, 1, integer=True)


def _save_steps(config: Config) -> np.ndarray:
    steps = np.linspace(0, config.finetune_steps, config.num_saves).round().astype(int)
    return np.unique(steps)
