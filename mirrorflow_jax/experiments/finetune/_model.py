"""The fine-tuning experiment's data (scikit-learn's digits) and model (an MLP with a
deep diagonal head)."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

import mirrorflow_jax as mf

from ._config import Config


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
