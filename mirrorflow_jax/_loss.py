"""Losses given as closures: the arrays a closure captures are passed as traced arguments, so
that a new closure over new data reuses the compiled program.

``jit`` keys its cache on everything that is not an array, and a plain Python function is
compared by identity: ``lambda x: f(x, A, b)`` built afresh for every data set compiles afresh
for every data set, with A and b baked into the program as constants. `traced_closure` splits
such a function into a static template (its code, globals and the captured values that hold no
array) and the captured arrays, a PyTree that is traced like any other argument.
"""

import types

import equinox as eqx
import jax
import numpy as np


def _holds_jax_arrays(value) -> bool:
    """True if ``value`` holds a JAX array and no NumPy array (a captured NumPy array stays a
    constant: the function may compute with it in NumPy, which a traced value would break)."""
    leaves = jax.tree.leaves(value)
    numpy = any(isinstance(leaf, np.ndarray | np.generic) for leaf in leaves)
    return not numpy and any(isinstance(leaf, jax.Array) for leaf in leaves)


class _Template:
    """The static part of a closure: code, globals, defaults and the cells it keeps (``None``
    where a cell's contents are passed in). Equal to another template exactly when it would
    rebuild the same function from the same lifted values (compared by identity)."""

    def __init__(self, fn: types.FunctionType, lifted: tuple[bool, ...]):
        self.code = fn.__code__
        self.globals = fn.__globals__
        self.name = fn.__name__
        self.defaults = fn.__defaults__
        self.kwdefaults = fn.__kwdefaults__
        self.cells = tuple(
            None if lift else cell for cell, lift in zip(fn.__closure__, lifted, strict=True)
        )

    def _key(self):
        kept = (self.globals, self.defaults, self.kwdefaults, *self.cells)
        return self.code, tuple(id(obj) for obj in kept)

    def __eq__(self, other):
        return type(other) is _Template and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def __call__(self, x, values):
        contents = iter(values)
        closure = tuple(
            types.CellType(next(contents)) if cell is None else cell for cell in self.cells
        )
        fn = types.FunctionType(self.code, self.globals, self.name, self.defaults, closure)
        fn.__kwdefaults__ = self.kwdefaults
        return fn(x)


class _ClosureLoss(eqx.Module):
    """A closure f(x) with the arrays it captured held as traced fields."""

    template: _Template = eqx.field(static=True)
    values: tuple

    def __call__(self, x):
        return self.template(x, self.values)


def traced_closure(loss):
    """``loss`` with the arrays its closure captured lifted into traced fields, if it is a plain
    Python function that captured any; otherwise ``loss`` itself (equinox Modules such as
    `LeastSquares`, functions without captured arrays, other callables).

    Only the function's own captured variables holding JAX arrays are lifted (a captured PyTree
    of them, e.g. a dict of arrays or an equinox Module, counts); NumPy arrays, and arrays
    captured by another closure it calls, stay constants of the compiled program. The lifted
    function is rebuilt from the values captured at the time of the call, so it computes
    exactly what ``loss`` computes then.
    """
    if type(loss) is not types.FunctionType or not loss.__closure__:
        return loss
    contents = []
    for cell in loss.__closure__:
        try:
            contents.append(cell.cell_contents)
        except ValueError:  # an empty cell (a variable not yet bound)
            contents.append(None)
    lifted = tuple(_holds_jax_arrays(value) for value in contents)
    if not any(lifted):
        return loss
    values = tuple(value for value, lift in zip(contents, lifted, strict=True) if lift)
    return _ClosureLoss(_Template(loss, lifted), values)
