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
"""

import dataclasses
import hashlib
import math
import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import xarray as xr
from jaxtyping import Array, Float, Int, PRNGKeyArray

import mirrorflow_jax as mf
from mirrorflow_jax._progress import Progress  # the sweeps' reporter: bar or log lines
from mirrorflow_jax.experiments._base import Check, check_int, check_numbers, check_range

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


# ----------------------------------------------------------------------------- data and model


class Split(eqx.Module):
    """Inputs in [−1, 1] (pixel/8 − 1) and integer labels."""

    inputs: Float[Array, "n 64"]
    labels: Int[Array, " n"]


def load_digits_tasks(config: Config) -> tuple[Split, Split, Split]:
    """(pretrain, fine-tune train, fine-tune test): digits below ``pretrain_classes`` for
    pretraining; the others, relabelled from 0 and split by a permutation seeded by
    ``config.seed``, for fine-tuning."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    inputs = np.asarray(digits.data) / 8.0 - 1.0
    labels = np.asarray(digits.target)
    new = labels >= config.pretrain_classes
    order = np.random.default_rng(config.seed).permutation(int(new.sum()))
    train, test = order[: config.finetune_train], order[config.finetune_train :]

    def split(x, y):
        return Split(jnp.asarray(x, jnp.result_type(float)), jnp.asarray(y))

    new_x, new_y = inputs[new], labels[new] - config.pretrain_classes
    return (
        split(inputs[~new], labels[~new]),
        split(new_x[train], new_y[train]),
        split(new_x[test], new_y[test]),
    )


class Classifier(eqx.Module):
    """A tanh MLP backbone and a linear head whose weights are a deep diagonal product
    x = w_1 ⊙ … ⊙ w_L (``mf.Padded``, so that heads of every depth share one
    compilation; depth 1 is an ordinary linear head).

    **Fields:** ``layers`` (the backbone's ``eqx.nn.Linear`` layers), ``head`` (x of shape
    (classes·width,)), ``bias`` (classes,).
    """

    layers: tuple[eqx.nn.Linear, ...]
    head: mf.AbstractReparam
    bias: Float[Array, " classes"]

    def features(self, inputs: Float[Array, " 64"]) -> Float[Array, " width"]:
        for layer in self.layers:
            inputs = jnp.tanh(layer(inputs))
        return inputs

    def __call__(self, inputs: Float[Array, " 64"]) -> Float[Array, " classes"]:
        weights = self.head().reshape(self.bias.shape[0], -1)
        return weights @ self.features(inputs) + self.bias


def new_head(key: PRNGKeyArray, classes: int, width: int, scale, depth: int, max_depth: int):
    """A fresh head and bias: w_1 = scale·U(±1/√width) (``eqx.nn.Linear``'s init times
    ``scale``) and w_i = 1 for 2 ≤ i ≤ depth, so x starts at w_1 for every depth, padded to
    ``max_depth``; zero bias."""
    bound = 1.0 / math.sqrt(width)
    w1 = scale * jax.random.uniform(key, (classes * width,), jnp.result_type(float), -bound, bound)
    rows = jnp.arange(max_depth)[:, None]
    factors = jnp.where(rows == 0, w1, jnp.where(rows < depth, 1.0, 0.0))
    return mf.Padded(mf.DeepDiagonal(factors), depth), jnp.zeros(classes, w1.dtype)


def init_classifier(key: PRNGKeyArray, config: Config) -> Classifier:
    """The pretraining model: backbone and a depth-1 head over the pretraining classes."""
    keys = jax.random.split(key, config.hidden_layers + 1)
    sizes = [64] + [config.width] * config.hidden_layers
    layers = tuple(
        eqx.nn.Linear(a, b, key=k, dtype=jnp.result_type(float))
        for a, b, k in zip(sizes[:-1], sizes[1:], keys[:-1], strict=True)
    )
    head, bias = new_head(keys[-1], config.pretrain_classes, config.width, 1.0, 1, 1)
    return Classifier(layers, head, bias)


def cross_entropy(model: Classifier, data: Split) -> Float[Array, ""]:
    """Mean cross-entropy of the model's logits on ``data``."""
    logits = jax.vmap(model)(data.inputs)
    picked = jnp.take_along_axis(logits, data.labels[:, None], axis=1)[:, 0]
    return jnp.mean(jax.nn.logsumexp(logits, axis=1) - picked)


def accuracy(model: Classifier, data: Split) -> Float[Array, ""]:
    predictions = jnp.argmax(jax.vmap(model)(data.inputs), axis=1)
    return jnp.mean((predictions == data.labels).astype(jnp.result_type(float)))


def _objective(data: Split, model: Classifier) -> Float[Array, ""]:
    return cross_entropy(model, data)


# ----------------------------------------------------------------------------- training


# (uses Adam's direction, q): the methods of the comparison as members of one family
METHODS = {"sgd": (False, 2.0), "adam": (True, 2.0), "adamw": (True, 2.0), "sign": (False, 1.0)}


def adam_or_steepest(adam, q, learning_rate, weight_decay) -> optax.GradientTransformation:
    r"""SGD, sign descent, Adam and AdamW as one optax transform whose hyperparameters are
    arrays, so that one compilation serves all of them:

        θ ← θ − η·(d + α·θ),   d = m̂/(√v̂ + ε) (Adam's direction) if ``adam`` else φ_q(g)

    ``adam`` False: ℓ_p steepest descent (`mf.scale_by_steepest`; q = 2 is SGD, q = 1 sign
    descent, the discrete sign flow). ``adam`` True: Adam (α = 0) or AdamW. Each member equals
    ``optax.sgd``, ``optax.sign_sgd``, ``optax.adam`` and ``optax.adamw`` with optax's defaults.
    """
    moments = optax.scale_by_adam()
    steepest = mf.scale_by_steepest(q)

    def update(grads, state, params=None):
        adam_direction, state = moments.update(grads, state, params)
        steepest_direction, _ = steepest.update(grads, optax.EmptyState(), params)
        direction = jax.tree.map(
            lambda a, s: jnp.where(adam, a, s), adam_direction, steepest_direction
        )
        return direction, state

    return optax.chain(
        optax.GradientTransformation(moments.init, update),
        optax.add_decayed_weights(weight_decay),
        optax.scale_by_learning_rate(learning_rate),
    )


@eqx.filter_jit
def _train(hyper, models, data, num_steps, save_steps):
    """Full-batch training of a batch of models (leading axis: seeds) with
    ``adam_or_steepest(*hyper)``, one compiled call for every method."""
    loss = jax.tree_util.Partial(_objective, data)

    def one(model):
        optimizer = adam_or_steepest(*hyper)
        return mf.run_optimizer(optimizer, model, loss, num_steps, save_steps=save_steps)

    return jax.vmap(one)(models)


def hyperparameters(method: str, learning_rate: float, weight_decay: float = 0.0):
    """The arrays (adam, q, η, α) of one method."""
    adam, q = METHODS[method]
    float_ = jnp.result_type(float)
    return (
        jnp.asarray(adam),
        jnp.asarray(q, float_),
        jnp.asarray(learning_rate, float_),
        jnp.asarray(weight_decay, float_),
    )


def _final(run: mf.DiscreteRun) -> Classifier:
    """The models at the last saved step of a seed-batched run."""
    return jax.tree.map(lambda p: p[:, -1], run.params)


@eqx.filter_jit
def _summarize(run: mf.DiscreteRun, train: Split, test: Split) -> dict[str, Array]:
    """Per seed at the end of a run: training loss, its gradient's norm, train and test
    accuracy and the head's weights x; and the test accuracy at every saved step."""

    def one(model):
        loss, grad = jax.value_and_grad(cross_entropy)(model, train)
        return {
            "loss": loss,
            "grad_norm": optax.tree.norm(grad),
            "train_accuracy": accuracy(model, train),
            "accuracy": accuracy(model, test),
            "head": model.head(),
        }

    curve = jax.vmap(jax.vmap(lambda m: accuracy(m, test)))(run.params)
    return jax.vmap(one)(_final(run)) | {"accuracy_curve": curve}


@eqx.filter_jit
def _pretrain(keys, data: Split, config: Config):
    """Pretrained backbones (per seed, Adam on the full pretraining set) and their accuracy."""
    models = jax.vmap(lambda key: init_classifier(key, config))(keys)
    hyper = hyperparameters("adam", config.pretrain_lr)
    run = _train(hyper, models, data, config.pretrain_steps, None)
    final = _final(run)
    return final.layers, jax.vmap(accuracy, in_axes=(0, None))(final, data)


@eqx.filter_jit
def _with_new_head(layers, keys, config: Config, scale, depth):
    """The pretrained backbones (per seed) with fresh heads for the fine-tuning classes;
    ``scale`` and ``depth`` are arrays, so every head compiles once."""
    classes = NUM_DIGITS - config.pretrain_classes
    max_depth = max(config.factor_depths)
    heads, biases = jax.vmap(
        lambda k: new_head(k, classes, config.width, scale, depth, max_depth)
    )(keys)
    return Classifier(layers, heads, biases)


@eqx.filter_jit
def _spectra(run: mf.DiscreteRun, train: Split, keys, config: Config):
    """Extreme Hessian eigenvalues of the training loss at the end of a run whose heads have
    depth 1, over the models' real parameters (the head's padding rows, which would add zero
    eigenvalues, are dropped)."""

    def one(model, key):
        head = mf.DeepDiagonal(model.head.model.factors[:1])
        return mf.hessian_eigenvalues(
            cross_entropy,
            Classifier(model.layers, head, model.bias),
            train,
            k=config.hessian_k,
            num_iters=config.lanczos_iters,
            key=key,
        )

    return jax.vmap(one)(_final(run), keys)


def sparsity(x, threshold: float):
    """The fraction of entries with |x_j| ≤ threshold·max_j |x_j| (along the last axis)."""
    size = np.abs(np.asarray(x))
    return np.mean(size <= threshold * size.max(axis=-1, keepdims=True), axis=-1)


# ----------------------------------------------------------------------------- run


def _stage_cache(workdir, config: Config):
    """Stage results (dicts of arrays) saved as netCDF under ``workdir`` and reloaded when the
    same configuration is run again at the same float precision; nothing is saved without a
    workdir."""

    def as_numpy(result):
        return {key: np.asarray(value) for key, value in result.items()}

    if workdir is None:
        return lambda name, compute: as_numpy(compute())
    tag = f"{config!r}|{jnp.result_type(float)}"
    folder = pathlib.Path(workdir) / f"finetune-{hashlib.sha256(tag.encode()).hexdigest()[:12]}"
    folder.mkdir(parents=True, exist_ok=True)

    def cached(name, compute):
        path = folder / f"{name}.nc"
        if path.exists():
            stored = mf.load_dataset(path)
            return {key: stored[key].values for key in stored.data_vars}
        result = as_numpy(compute())
        dims = {key: [f"{key}_{i}" for i in range(v.ndim)] for key, v in result.items()}
        mf.save_dataset(xr.Dataset({k: (dims[k], v) for k, v in result.items()}), path)
        return result

    return cached


def _save_steps(config: Config) -> np.ndarray:
    steps = np.linspace(0, config.finetune_steps, config.num_saves).round().astype(int)
    return np.unique(steps)


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


def run(config: Config = Config(), *, workdir=None, progress: bool = False) -> xr.Dataset:
    """Pretrain, fine-tune with every optimizer, sweep SGD's rate and the head's init scale,
    take Hessian spectra and run the factorized-head variant; one labelled Dataset.

    Every fine-tuning run is one seed-vmapped call of the same compiled program (same save
    steps; method, rates, decay, head scale and depth enter as arrays). Stage results are
    checkpointed under ``workdir``, so a rerun of the same config resumes."""
    pretrain, train, test = load_digits_tasks(config)
    cached = _stage_cache(workdir, config)
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


def confidence_interval(values, axis: int = -1, level: float = 0.95):
    """(mean, half-width) of the t-distribution confidence interval over ``axis``."""
    from scipy import stats

    values = np.asarray(values)
    count = values.shape[axis]
    sem = values.std(axis=axis, ddof=1) / math.sqrt(count)
    return values.mean(axis=axis), stats.t.ppf(0.5 + level / 2, count - 1) * sem


def _num_params(config: Config) -> int:
    """The number of fine-tuned parameters with a depth-1 head."""
    sizes = [64] + [config.width] * config.hidden_layers + [NUM_DIGITS - config.pretrain_classes]
    return sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))


def _eig_labels(k: int) -> list[str]:
    return [f"smallest_{i + 1}" for i in range(k)] + [f"largest_{k - i}" for i in range(k)]


def _dataset(config, *, tuned, pretrain_accuracy, sweep, main, init, factor, settings):
    def by_optimizer(field, *dims):
        values = np.stack([main[f"{name}__{field}"] for name in OPTIMIZERS])
        return ("optimizer", "seed", *dims), values

    def by_depth(field):
        values = np.stack([factor[f"{depth}__{field}"] for depth in config.factor_depths])
        return ("depth", "factor_wd", "seed", "head")[: values.ndim], values

    mean, half = confidence_interval(by_optimizer("accuracy")[1])
    heads = by_depth("head")
    data = {
        "pretrain_accuracy": (("seed",), pretrain_accuracy),
        "learning_rate": (("optimizer",), np.array([settings[n][1] for n in OPTIMIZERS])),
        "test_accuracy": by_optimizer("accuracy"),
        "accuracy_mean": (("optimizer",), mean),
        "accuracy_ci": (("optimizer",), half),
        "train_accuracy": by_optimizer("train_accuracy"),
        "final_loss": by_optimizer("loss"),
        "grad_norm": by_optimizer("grad_norm"),
        "loss_curve": by_optimizer("loss_curve", "step"),
        "accuracy_curve": by_optimizer("accuracy_curve", "step"),
        "hessian_eigenvalues": by_optimizer("eigenvalues", "eig"),
        "hessian_residuals": by_optimizer("residuals", "eig"),
        "rate_sweep_loss": (("sgd_rate", "seed"), sweep["loss"]),
        "rate_sweep_accuracy": (("sgd_rate", "seed"), sweep["accuracy"]),
        "init_sweep_loss": (("init_scale", "seed"), init["loss"]),
        "init_sweep_accuracy": (("init_scale", "seed"), init["accuracy"]),
        "factor_head": heads,
        "factor_sparsity": (heads[0][:-1], sparsity(heads[1], config.sparsity_threshold)),
        "factor_accuracy": by_depth("accuracy"),
    }
    classes = NUM_DIGITS - config.pretrain_classes
    coords = {
        "optimizer": list(OPTIMIZERS),
        "seed": np.arange(config.num_seeds),
        "step": _save_steps(config),
        "eig": _eig_labels(config.hessian_k),
        "sgd_rate": list(config.sgd_rates),
        "init_scale": list(config.init_scales),
        "depth": list(config.factor_depths),
        "factor_wd": [0.0, config.factor_weight_decay],
        "head": np.arange(classes * config.width),
    }
    attrs = {
        "experiment": "finetune",
        "config": repr(config),
        "tuned_sgd_rate": tuned,
        "chance_accuracy": 1.0 / classes,
        "sparsity_threshold": config.sparsity_threshold,
        "num_params": _num_params(config),
        "float_dtype": str(jnp.result_type(float)),
    }
    return xr.Dataset(data, coords=coords, attrs=attrs)


# ----------------------------------------------------------------------------- report

LABELS = {
    "sgd_small": "SGD, small η",
    "sgd_tuned": "SGD, tuned η",
    "adam_small": "Adam, small η",
    "adamw_small": "AdamW, small η",
    "sign_small": "sign descent, small η",
}
CURVATURE_THRESHOLD = -0.05  # λ_min/λ_max at or below this is clear negative curvature


def _mean(da) -> float:
    return float(da.mean())


def curvature_ratio(ds: xr.Dataset) -> xr.DataArray:
    """λ_min/λ_max of the Hessian at the end of fine-tuning, per optimizer and seed."""
    eig = ds.hessian_eigenvalues
    return eig.isel(eig=0) / eig.isel(eig=-1)


def _gain(ds: xr.Dataset, accuracy) -> xr.DataArray:
    """(accuracy − chance)/(Adam-at-the-small-rate accuracy − chance)."""
    chance = ds.attrs["chance_accuracy"]
    return (accuracy - chance) / (ds.accuracy_mean.sel(optimizer="adam_small") - chance)


def table(ds: xr.Dataset) -> str:
    """The accuracy table (mean ± 95% t-interval over seeds) as Markdown."""
    rows = [
        "| optimizer | η | test accuracy | train loss | λ_min | λ_max |",
        "|---|---|---|---|---|---|",
    ]
    for name in ds.optimizer.values:
        sel = ds.sel(optimizer=name)
        eig = sel.hessian_eigenvalues.mean("seed").values
        rows.append(
            f"| {LABELS[name]} | {float(sel.learning_rate):g} | "
            f"{float(sel.accuracy_mean):.1%} ± {float(sel.accuracy_ci):.1%} | "
            f"{_mean(sel.final_loss):.3g} | {eig[0]:.3g} | {eig[-1]:.3g} |"
        )
    return "\n".join(rows)


def _stall_detail(ds: xr.Dataset) -> str:
    gains = _gain(ds, ds.rate_sweep_accuracy.mean("seed"))
    recovered = ds.sgd_rate.values[gains.values >= 0.9]
    rate_accuracy = ds.rate_sweep_accuracy.mean("seed").values
    init_accuracy = ds.init_sweep_accuracy.mean("seed").values
    rates = ", ".join(
        f"η={r:g}: {a:.1%}" for r, a in zip(ds.sgd_rate.values, rate_accuracy, strict=True)
    )
    scales = ", ".join(
        f"{s:g}: {a:.1%}" for s, a in zip(ds.init_scale.values, init_accuracy, strict=True)
    )
    first = f"from η={recovered.min():g} on" if recovered.size else "at no rate tried"
    return (
        f"Rate sweep (SGD test accuracy): {rates}; SGD reaches 90% of Adam's gain over chance "
        f"{first}. Head-init sweep at the small rate (scale: accuracy): {scales}."
    )


def checks(ds: xr.Dataset) -> list[Check]:
    """The fine-tuning predictions of docs/theory.md §5, §6 and §8, as measured."""
    acc, ci = ds.accuracy_mean, ds.accuracy_ci
    chance = ds.attrs["chance_accuracy"]

    def shown(name):
        return f"{float(acc.sel(optimizer=name)):.1%} ± {float(ci.sel(optimizer=name)):.1%}"

    def accuracy_of(name):
        return float(acc.sel(optimizer=name))

    def loss_of(name):
        return float(ds.final_loss.sel(optimizer=name).mean())

    pretrain = _mean(ds.pretrain_accuracy)
    gain = float(_gain(ds, acc.sel(optimizer="sgd_small")))
    ratio = curvature_ratio(ds).mean("seed")
    grad = ds.grad_norm.mean("seed")
    eig = ds.hessian_eigenvalues.mean("seed")
    residual = float(ds.hessian_residuals.max() / np.abs(ds.hessian_eigenvalues).max())
    sparse = ds.factor_sparsity.mean("seed")
    deep = sparse.isel(depth=-1, factor_wd=1)
    others = float(sparse.where(sparse != deep).max())
    lr_small = float(ds.learning_rate.sel(optimizer="sgd_small"))
    stalled = gain < 0.5
    return [
        Check(
            "pretraining_learned",
            pretrain,
            ">= 0.9",
            0.0,
            pretrain >= 0.9,
            "Pretraining accuracy on the pretraining digits (the backbone that is fine-tuned).",
        ),
        Check(
            "sgd_small_rate_stalls",
            gain,
            "< 0.5 (fraction of Adam's accuracy gain over chance)",
            0.5,
            stalled,
            f"SGD at η={lr_small:g} {'stalled' if stalled else 'did NOT stall'}: test accuracy "
            f"{shown('sgd_small')} (chance {chance:.0%}) against Adam at the same rate "
            f"{shown('adam_small')}; final training loss {loss_of('sgd_small'):.3g} against "
            f"{loss_of('adam_small'):.3g}. " + _stall_detail(ds),
        ),
        Check(
            "sgd_tuned_rate_recovers",
            accuracy_of("sgd_tuned") - accuracy_of("adam_small"),
            ">= -0.05 (accuracy minus Adam's)",
            0.05,
            accuracy_of("sgd_tuned") >= accuracy_of("adam_small") - 0.05,
            f"SGD at the tuned rate η={ds.attrs['tuned_sgd_rate']:g} (lowest training loss in the "
            f"rate sweep): {shown('sgd_tuned')}; Adam at η={lr_small:g}: {shown('adam_small')}.",
        ),
        Check(
            "sign_descent_learns_like_adam",
            accuracy_of("sign_small") - accuracy_of("adam_small"),
            "|accuracy minus Adam's| <= 0.05",
            0.05,
            abs(accuracy_of("sign_small") - accuracy_of("adam_small")) <= 0.05,
            f"Sign descent (the discrete sign flow, the paper's proxy for Adam) at "
            f"η={lr_small:g}: {shown('sign_small')}; AdamW: {shown('adamw_small')}.",
        ),
        Check(
            "sgd_small_negative_curvature",
            float(ratio.sel(optimizer="sgd_small")),
            f"<= {CURVATURE_THRESHOLD} (λ_min/λ_max)",
            abs(CURVATURE_THRESHOLD),
            float(ratio.sel(optimizer="sgd_small")) <= CURVATURE_THRESHOLD,
            f"Hessian of the training loss after small-rate SGD: λ_min = "
            f"{float(eig.sel(optimizer='sgd_small').isel(eig=0)):.3g}, λ_max = "
            f"{float(eig.sel(optimizer='sgd_small').isel(eig=-1)):.3g} (seed means), with "
            f"gradient norm {float(grad.sel(optimizer='sgd_small')):.3g}: negative curvature "
            "with a gradient that has not vanished, i.e. still in the saddle's neighbourhood "
            "rather than at a stationary point.",
        ),
        Check(
            "adam_no_clear_negative_curvature",
            float(ratio.sel(optimizer="adam_small")),
            f"> {CURVATURE_THRESHOLD} (λ_min/λ_max)",
            abs(CURVATURE_THRESHOLD),
            float(ratio.sel(optimizer="adam_small")) > CURVATURE_THRESHOLD,
            "λ_min/λ_max per optimizer: "
            + ", ".join(f"{n}: {float(ratio.sel(optimizer=n)):.3g}" for n in ds.optimizer.values)
            + ".",
        ),
        Check(
            "lanczos_converged",
            residual,
            "<= 1e-2 (largest Ritz residual / largest |λ|)",
            1e-2,
            residual <= 1e-2,
            "Each reported eigenvalue lies within its Ritz residual of a Hessian eigenvalue.",
        ),
        Check(
            "adamw_sparse_only_with_depth_and_decay",
            float(deep) - others,
            ">= 0.5 (sparsity gain over the other three settings)",
            0.5,
            float(deep) - others >= 0.5,
            f"Fraction of head weights with |x| <= {_threshold(ds):g}·max|x| after AdamW: "
            + ", ".join(
                f"L={int(d)}, wd={float(w):g}: {float(sparse.sel(depth=d, factor_wd=w)):.1%}"
                for d in ds.depth.values
                for w in ds.factor_wd.values
            )
            + ".",
        ),
    ]


def _threshold(ds: xr.Dataset) -> float:
    return float(ds.attrs["sparsity_threshold"])


def _band(ax, x, values, label, **kwargs):
    """Mean over the last axis with its 95% t-interval as a shaded band."""
    mean, half = confidence_interval(values)
    (line,) = ax.plot(x, mean, label=label, **kwargs)
    ax.fill_between(x, mean - half, mean + half, color=line.get_color(), alpha=0.2)


def figures(ds: xr.Dataset) -> dict:
    """``accuracy_table``, ``curves``, ``hessian``, ``stall`` and ``sparsity`` figures."""
    import matplotlib.pyplot as plt

    out = {}
    names = list(ds.optimizer.values)
    chance = ds.attrs["chance_accuracy"]

    fig, (text, bars) = plt.subplots(
        2, 1, figsize=(9, 6), gridspec_kw={"height_ratios": [1, 1.3]}, constrained_layout=True
    )
    rows = [line.strip("|").split("|") for line in table(ds).splitlines()]
    text.axis("off")
    cells = text.table(cellText=rows[2:], colLabels=rows[0], loc="center")
    cells.auto_set_column_width(list(range(len(rows[0]))))
    cells.auto_set_font_size(False)
    cells.set_fontsize(9)
    cells.scale(1, 1.3)
    y = np.arange(len(names))
    bars.barh(y, ds.accuracy_mean.values, xerr=ds.accuracy_ci.values, capsize=3)
    bars.axvline(chance, color="gray", ls=":", label="chance")
    bars.set(yticks=y, yticklabels=[LABELS[n] for n in names], xlabel="test accuracy", xlim=(0, 1))
    bars.invert_yaxis()
    bars.legend(loc="lower right")
    fig.suptitle(f"Fine-tuning on new digits, mean ± 95% CI over {ds.seed.size} seeds")
    out["accuracy_table"] = fig

    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for name in names:
        curve = ds.sel(optimizer=name)
        _band(loss_ax, ds.step.values, curve.loss_curve.values.T, LABELS[name])
        _band(acc_ax, ds.step.values, curve.accuracy_curve.values.T, LABELS[name])
    loss_ax.set(xlabel="step", ylabel="training loss", yscale="log")
    acc_ax.set(xlabel="step", ylabel="test accuracy", ylim=(0, 1))
    acc_ax.axhline(chance, color="gray", ls=":")
    loss_ax.legend()
    out["curves"] = fig

    fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
    for i, name in enumerate(names):
        eig = ds.hessian_eigenvalues.sel(optimizer=name).values
        ax.scatter(np.full(eig[:, 0].size, i), eig[:, 0], marker="v", color="C3")
        ax.scatter(np.full(eig[:, -1].size, i), eig[:, -1], marker="^", color="C0")
    ax.axhline(0.0, color="gray", lw=0.8)
    ax.set_yscale("symlog", linthresh=1e-4)
    ax.set_xticks(range(len(names)), [LABELS[n] for n in names], rotation=20)
    ax.set(ylabel="Hessian eigenvalue", title="λ_min (▼) and λ_max (▲) after fine-tuning")
    out["hessian"] = fig

    fig, (rate_ax, init_ax) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    _band(rate_ax, ds.sgd_rate.values, ds.rate_sweep_accuracy.values, "SGD", marker="o")
    init_x = np.arange(ds.init_scale.size)
    _band(init_ax, init_x, ds.init_sweep_accuracy.values, "SGD, small η", marker="o")
    for ax in (rate_ax, init_ax):
        ax.axhline(float(ds.accuracy_mean.sel(optimizer="adam_small")), color="C1", ls="--")
        ax.axhline(chance, color="gray", ls=":")
        ax.set(ylabel="test accuracy", ylim=(0, 1))
    rate_ax.set(xscale="log", xlabel="SGD learning rate η", title="Adam at the small η: dashed")
    init_ax.set_xticks(init_x, [f"{s:g}" for s in ds.init_scale.values])
    init_ax.set(xlabel="new head's init scale", title="SGD at the small η vs the head's init")
    out["stall"] = fig

    fig, (bar_ax, hist_ax) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    settings = [(d, w) for d in ds.depth.values for w in ds.factor_wd.values]
    for i, (d, w) in enumerate(settings):
        label = f"L={int(d)}, wd={float(w):g}"
        values = ds.factor_sparsity.sel(depth=d, factor_wd=w).values
        mean, half = confidence_interval(values)
        bar_ax.bar(i, mean, yerr=half, capsize=3, color=f"C{i}")
        size = np.abs(ds.factor_head.sel(depth=d, factor_wd=w).values).ravel()
        hist_ax.hist(np.log10(np.maximum(size, 1e-12)), bins=60, histtype="step", label=label)
    bar_ax.set_xticks(range(len(settings)), [f"L={int(d)}\nwd={float(w):g}" for d, w in settings])
    bar_ax.set(ylabel=f"fraction |x| ≤ {_threshold(ds):g}·max|x|", title="AdamW head sparsity")
    hist_ax.set(xlabel="log10 |x|", ylabel="count", title="Head weights after AdamW")
    hist_ax.legend()
    out["sparsity"] = fig
    return out
