"""The fine-tuning experiment's optimizers (one optax family for SGD, sign descent, Adam
and AdamW), training runs, summaries and Hessian spectra."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array

import mirrorflow_jax as mf

from ._config import NUM_DIGITS, Config
from ._model import (
    Classifier,
    Split,
    _objective,
    accuracy,
    cross_entropy,
    init_classifier,
    new_head,
)

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
