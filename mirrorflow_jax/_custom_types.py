"""Type aliases shared across the package (jaxtyping, with shapes)."""

from collections.abc import Callable
from typing import Any, TypeAlias

from jaxtyping import Array, ArrayLike, Float, PyTree, Real

Scalar: TypeAlias = Float[Array, ""]
ScalarLike: TypeAlias = Real[ArrayLike, ""]
Vector: TypeAlias = Float[Array, " dim"]
Factors: TypeAlias = Float[Array, "depth dim"]
Params: TypeAlias = PyTree[Float[Array, "..."]]
Loss: TypeAlias = Callable[[Any], Scalar]
Schedule: TypeAlias = Callable[[ScalarLike], ScalarLike]
