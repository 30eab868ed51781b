"""Fine-tuning: small-rate SGD against Adam, AdamW and sign descent, with Hessian spectra and a
deep-diagonal factorized head (docs/theory.md §5, §6, §8).

A small tanh MLP is pretrained on the digits 0…(c−1) of scikit-learn's bundled 8×8 digits
(no download), then fine-tuned, backbone and a new head together, on the other digits. Five
optimizers run from the same pretrained models, as members of one optax transform whose
hyperparameters are arrays (one compilation for all), vmapped over seeds: SGD at the small
rate, SGD at a rate tuned on the training loss, Adam and AdamW at the small rate, and sign
descent (the discrete sign flow) at the small rate. The paper predicts that
small-rate SGD barely learns while the sign-like methods do, and that SGD ends where the Hessian
still has clear negative eigenvalues. Two sweeps say what it takes for SGD to stall (its rate
and the scale of the new head's initialization), and a variant factorizes the head's weights
as x = w_1 ⊙ … ⊙ w_L to test whether AdamW becomes sparse only with depth *and* weight decay.

The package: ``_config`` (Config), ``_model`` (data and model), ``_training`` (the optimizer
family, training runs, summaries, Hessian spectra), ``_report`` (the Dataset, table, checks and
figures); `run` here ties the stages together, each checkpointed with the sweeps' self-checking
files (`stage_checkpoints`).
"""

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from mirrorflow_jax.experiments._base import Progress, stage_checkpoints

from ._config import NUM_DIGITS, OPTIMIZERS, Config, _save_steps
from ._model import (
    Classifier,
    Split,
    accuracy,
    cross_entropy,
    init_classifier,
    load_digits_tasks,
    new_head,
)
from ._report import LABELS, _dataset, checks, confidence_interval, curvature_ratio, figures, table
from ._training import (
    METHODS,
    _pretrain,
    _spectra,
    _summarize,
    _train,
    _with_new_head,
    adam_or_steepest,
    hyperparameters,
    sparsity,
)

__all__ = [
    "LABELS",
    "METHODS",
    "NUM_DIGITS",
    "OPTIMIZERS",
    "STAGES",
    "Classifier",
    "Config",
    "Split",
    "accuracy",
    "adam_or_steepest",
    "checks",
    "confidence_interval",
    "cross_entropy",
    "curvature_ratio",
    "figures",
    "hyperparameters",
    "init_classifier",
    "load_digits_tasks",
    "new_head",
    "run",
    "sparsity",
    "table",
]

# The stages of a run, each checkpointed on its own (`stage_checkpoints`).
STAGES = ("rate_sweep", "main", "init_sweep", "factorized")


def _tuned_rate(rates, losses) -> float:
    """The rate with the lowest mean final training loss (non-finite losses lose)."""
    mean = np.where(np.isfinite(losses), losses, np.inf).mean(axis=1)
    return float(rates[int(np.argmin(mean))])


def _settings(config: Config, tuned: float) -> dict[str, tuple[str, float, float]]:
    """(kind, learning rate, weight decay) of each optimizer of the main comparison."""
    return {
        "sgd_small": ("sgd", config.small_lr, 0.0),
        "sgd_tuned": ("sgd", tuned, 0.0),
        "adam_small": ("adam", config.small_lr, 0.0),
        "adamw_small": ("adamw", config.small_lr, config.weight_decay),
        "sign_small": ("sign", config.small_lr, 0.0),
    }


def run(config: Config, *, workdir=None, progress: bool = False) -> xr.Dataset:
    """Pretrain, fine-tune with every optimizer, sweep SGD's rate and the head's init scale,
    take Hessian spectra and run the factorized-head variant; one labelled Dataset.

    Every fine-tuning run is one seed-vmapped call of the same compiled program (same save
    steps; method, rates, decay, head scale and depth enter as arrays). Stage results are
    checkpointed under ``workdir``, so a rerun of the same config resumes."""
    pretrain, train, test = load_digits_tasks(config)
    cached = stage_checkpoints(workdir, "finetune", config, STAGES)
    keys = jax.random.split(jax.random.key(config.seed), (4, config.num_seeds))
    init_keys, head_keys, lanczos_keys, factor_keys = keys
    save_steps = jnp.asarray(_save_steps(config))
    bar = Progress(5, desc="finetune", unit="stage", show=progress).start()

    def finetune(method, lr, wd, models):
        hyper = hyperparameters(method, lr, wd)
        return _train(hyper, models, train, config.finetune_steps, save_steps)

    layers, pretrain_accuracy = _pretrain(init_keys, pretrain, config)
    pretrain_accuracy = np.asarray(pretrain_accuracy)
    bar.update()

    def new_models(scale, depth=1, keys=head_keys):
        scale = jnp.asarray(scale, jnp.result_type(float))
        return _with_new_head(layers, keys, config, scale, jnp.asarray(depth))

    def summarize_all(runs):
        """Each final metric of `_summarize`, stacked over ``runs`` (leading axis)."""
        metrics = [_summarize(run_, train, test) for run_ in runs]
        keys = ("loss", "grad_norm", "train_accuracy", "accuracy")
        return {key: np.stack([m[key] for m in metrics]) for key in keys}

    def rate_sweep():
        models = new_models(config.head_init_scale)
        return summarize_all(finetune("sgd", lr, 0.0, models) for lr in config.sgd_rates)

    sweep = cached("rate_sweep", rate_sweep)
    tuned = _tuned_rate(np.asarray(config.sgd_rates), sweep["loss"])
    settings = _settings(config, tuned)
    bar.update()

    def main():
        out = {}
        for name, (kind, lr, wd) in settings.items():
            run_ = finetune(kind, lr, wd, new_models(config.head_init_scale))
            spectrum = _spectra(run_, train, lanczos_keys, config)
            metrics = _summarize(run_, train, test) | {
                "loss_curve": run_.loss,
                "eigenvalues": spectrum.eigenvalues,
                "residuals": spectrum.residuals,
            }
            del metrics["head"]
            out |= {f"{name}__{key}": value for key, value in metrics.items()}
        return out

    main_out = cached("main", main)
    bar.update()

    def init_sweep():
        models = (new_models(scale) for scale in config.init_scales)
        return summarize_all(finetune("sgd", config.small_lr, 0.0, m) for m in models)

    init_out = cached("init_sweep", init_sweep)
    bar.update()

    def factorized():
        out = {}
        for depth in config.factor_depths:
            models = new_models(config.head_init_scale, depth, factor_keys)
            runs = [
                finetune("adamw", config.factor_lr, wd, models)
                for wd in (0.0, config.factor_weight_decay)
            ]
            metrics = [_summarize(run_, train, test) for run_ in runs]
            out[f"{depth}__head"] = [m["head"] for m in metrics]
            out[f"{depth}__accuracy"] = [m["accuracy"] for m in metrics]
        return out

    factor_out = cached("factorized", factorized)
    bar.update()
    bar.close()
    return _dataset(
        config,
        tuned=tuned,
        pretrain_accuracy=pretrain_accuracy,
        sweep=sweep,
        main=main_out,
        init=init_out,
        factor=factor_out,
        settings=settings,
    )
