"""Mirror maps induced by balanced deep diagonal models, and the x-space mirror flow
(docs/theory.md §4, §6).

For x = w_1 ⊙ … ⊙ w_L under a λ-balanced init (|w_i|^q − |w_1|^q = c for i ≥ 2, w_i > 0) the
factor flow dw_i/dt = −φ_q(g)·φ_q(∂x/∂w_i) induces, per coordinate,

    dx/dt = −h(x)·φ_q(∇f(x)),   h = Σ_i ∏_{j≠i} |w_j|^q = (a + c)^(L−1) + (L−1)·a·(a + c)^(L−2),

where a = |w_1|^q solves |x|^q = a·(a + c)^(L−1). Since d|x|^q/da = h, the potential's gradient
∇R = ∫ dx/h has the one-dimensional form (with ρ = |w_1| = a^(1/q))

    ∇R(x) = sign(x)·G(ρ),     G(ρ) = ∫_0^ρ (r^q + c)^(−(L−1)(q−1)/q) dr,

and, integrating by parts, R(x) = |x|·G(ρ) − ∫_0^ρ r·(r^q + c)^((L−1)(2−q)/q) dr.
At q = 2, L = 2 this is the hyperbolic entropy ∇R(x) = ½·arcsinh(2x/c).

At c = 0 (the uniform init w_1 = … = w_L) a = |x|^(q/L), so h(x) = L·|x|^(q(L−1)/L) and, with
e = (L−1)(q−1) and n = 2 + (L−1)(2−q), G(ρ) = ρ^(1−e)/(1−e) and R = ρ^n·(1/(1−e) − 1/n) for
e < 1; for e ≥ 1 the integral diverges at 0 (∇R and R are +∞ off x = 0), and only h, the flow's
metric, is finite.
"""

import abc
import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
from jaxtyping import Array, ArrayLike

from ._custom_types import Loss, ScalarLike, Schedule
from ._flow import AbstractDecayedFlow, checked_decay
from ._geometry import Lp
from ._solve import solve_flow
from ._validate import as_float, check_int, check_range

# Composite Gauss–Legendre rule on [0, 1]: 16 panels × 16 nodes.
_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(16)
_PANELS = 16
_T = ((np.arange(_PANELS)[:, None] + (_NODES[None] + 1) / 2) / _PANELS).ravel()
_W = np.tile(_WEIGHTS / (2 * _PANELS), _PANELS)


def _jit_on_arrays(method):
    """``eqx.filter_jit`` for a method whose arguments are converted to arrays first, so that
    calls with Python floats share one compilation per shape instead of one per value."""
    jitted = eqx.filter_jit(method)

    @functools.wraps(method)
    def wrapper(self, *args):
        return jitted(self, *(jnp.asarray(arg) for arg in args))

    return wrapper


def _integrate_from_zero(integrand, rho: Array, knee: Array) -> Array:
    """∫_0^ρ integrand(r) dr, elementwise, for integrands with a knee near r = ``knee``.

    [0, min(ρ, knee)] is mapped by r = s·τ² (smoothing the r^q behaviour at 0) and
    [min(ρ, knee), ρ] by r = s·e^v (the integrand is a power law there).
    """
    t, w = jnp.asarray(_T, rho.dtype), jnp.asarray(_W, rho.dtype)
    s = jnp.minimum(rho, knee)[..., None]
    r_near = s * t * t
    near = jnp.sum(w * integrand(r_near) * 2 * s * t, axis=-1)
    span = jnp.log(jnp.where(rho > 0, rho, 1.0)[..., None] / jnp.where(s > 0, s, 1.0))
    r_far = s * jnp.exp(span * t)
    far = jnp.sum(w * integrand(r_far) * r_far * span, axis=-1)
    return near + jnp.where(rho > jnp.squeeze(s, -1), far, 0.0)


class AbstractMirror(eqx.Module):
    r"""A mirror map: a strictly convex potential R on R^d, its gradient ∇R and the
    gradient's inverse, elementwise for the separable potentials of the toolkit
    (`DeepDiagonalMirror`, `SquareDiffMirror`). `implicit_bias` takes any subclass.

    Subclass it with ``potential``, ``grad`` and ``grad_inverse``; the Bregman divergence
    ``bregman`` follows from them.
    """

    @abc.abstractmethod
    def potential(self, x: ArrayLike) -> Array:
        """R(x), a scalar."""

    @abc.abstractmethod
    def grad(self, x: ArrayLike) -> Array:
        """∇R(x), shaped like x."""

    @abc.abstractmethod
    def grad_inverse(self, z: ArrayLike) -> Array:
        """The x with ∇R(x) = z, shaped like z."""

    def bregman(self, x: ArrayLike, y: ArrayLike) -> Array:
        """D_R(x, y) = R(x) − R(y) − ⟨∇R(y), x − y⟩ ≥ 0, zero exactly at x = y."""
        x, y = jnp.asarray(x), jnp.asarray(y)
        return self.potential(x) - self.potential(y) - jnp.sum(self.grad(y) * (x - y))


class DeepDiagonalMirror(AbstractMirror):
    r"""The mirror map R_{q,L,c} of a balanced deep diagonal model (docs/theory.md §4).

    **Fields:** ``q`` ∈ [1, 2]; ``depth`` L ≥ 1 (static); ``c`` ≥ 0, the balance constant
    (a scalar or one per coordinate). At c = 0 (the uniform init) ``metric`` is
    L·|x|^(q(L−1)/L) and ``grad``, ``potential``, ``grad_inverse`` use their closed forms
    (module docstring), which are infinite (``grad_inverse``: NaN) when (L−1)(q−1) ≥ 1.

    **Example:**

    ```python
    mirror = mf.DeepDiagonalMirror(q=2.0, depth=2, c=0.5)
    x = jnp.array([-1.0, 0.0, 2.0])
    mirror.grad(x)  # = 0.5 * arcsinh(2 x / 0.5)
    ```
    """

    q: Array
    c: Array
    depth: int = eqx.field(static=True)

    def __init__(self, q: ScalarLike, depth: int, c: ArrayLike):
        check_range("q", q, 1.0, 2.0)
        check_int("depth", depth, 1)
        check_range("c", c, 0.0)
        self.q = as_float(q)
        self.c = as_float(c)
        self.depth = depth

    @property
    def exponent(self) -> Array:
        """m = q(L − 1)/L: at c = 0, ∇²R(x) ∝ 1/|x|^m."""
        return self.q * (self.depth - 1) / self.depth

    @property
    def is_legendre(self) -> Array:
        """m ≤ 1: exactly when ∇R maps onto all of R (G unbounded), so R is of Legendre type."""
        return self.exponent <= 1 + 1e-12

    @_jit_on_arrays
    def first_factor(self, x: ArrayLike) -> Array:
        """a = |w_1|^q, the root of a·(a + c)^(L−1) = |x|^q (Newton in log a, which is convex
        and increasing there, from the upper bound |x|^(q/L)); differentiable in x."""
        x = jnp.asarray(x)
        absx = jnp.abs(x)
        safe = jnp.where(absx > 0, absx, 1.0)
        c = jnp.broadcast_to(self.c, x.shape)

        def residual(u, args):
            c_i, log_x = args
            return u + (self.depth - 1) * jnp.log(jnp.exp(u) + c_i) - self.q * log_x

        def solve(c_i, log_x):
            u0 = self.q * log_x / self.depth
            sol = optx.root_find(
                residual,
                optx.Newton(rtol=1e-13, atol=1e-13),
                u0,
                (c_i, log_x),
                max_steps=200,
                throw=False,  # NaN, not an error that would stop every member of a batch
            )
            return jnp.where(sol.result == optx.RESULTS.successful, sol.value, jnp.nan)

        u = jax.vmap(solve)(c.ravel(), jnp.log(safe).ravel()).reshape(x.shape)
        return jnp.where(absx > 0, jnp.exp(u), 0.0)

    @_jit_on_arrays
    def metric(self, x: ArrayLike) -> Array:
        """h(x) = (∇²R(x))⁻¹ = (a + c)^(L−1) + (L−1)·a·(a + c)^(L−2), elementwise."""
        a = self.first_factor(x)
        L = self.depth
        if L == 1:
            return jnp.ones_like(a)
        return (a + self.c) ** (L - 1) + (L - 1) * a * (a + self.c) ** (L - 2)

    def _rho(self, x):
        return self.first_factor(x) ** (1 / self.q)

    def _uniform(self, shape) -> tuple[Array, Array]:
        """(c == 0, c with zeros replaced by 1) broadcast to ``shape``: the quadratures run on
        the safe c and the closed forms of c = 0 replace them where c == 0, so that neither
        branch produces inf or NaN (or NaN gradients) where it is not selected."""
        c = jnp.broadcast_to(self.c, shape)
        uniform = c == 0
        return uniform, jnp.where(uniform, 1.0, c)

    def _uniform_power(self, rho: Array, uniform: Array, exponent: Array) -> Array:
        """ρ^(1−e)/(1−e) where c == 0 and e < 1, +∞ where c == 0 and e ≥ 1 (ρ > 0), else 0."""
        finite = exponent < 1
        power = 1 - jnp.where(finite, exponent, 0.5)
        r = jnp.where(uniform, rho, 1.0)
        value = jnp.where(finite | (r == 0), r**power / power, jnp.inf)
        return jnp.where(uniform, value, 0.0)

    def _g(self, rho: Array) -> Array:
        k = (self.depth - 1) * (self.q - 1) / self.q
        uniform, c = self._uniform(rho.shape)
        knee = c ** (1 / self.q)
        quadrature = _integrate_from_zero(lambda r: (r**self.q + c[..., None]) ** (-k), rho, knee)
        closed = self._uniform_power(rho, uniform, (self.depth - 1) * (self.q - 1))
        return jnp.where(uniform, closed, quadrature)

    @_jit_on_arrays
    def grad(self, x: ArrayLike) -> Array:
        """∇R(x) = sign(x)·G(|w_1|), elementwise (by quadrature; it reduces to ½·arcsinh(2x/c)
        at q = 2, L = 2, to sign(x)·arctan(|w_1|/√c)/√c at q = 2, L = 3 and to w_1 at q = 1)."""
        x = jnp.asarray(x)
        return jnp.sign(x) * self._g(self._rho(x))

    @_jit_on_arrays
    def potential(self, x: ArrayLike) -> Array:
        """R(x) = Σ_j [|x_j|·G(ρ_j) − ∫_0^ρ_j r (r^q + c)^((L−1)(2−q)/q) dr], with R(0) = 0."""
        x = jnp.asarray(x)
        rho = self._rho(x)
        e = (self.depth - 1) * (2 - self.q) / self.q
        uniform, c = self._uniform(rho.shape)
        knee = c ** (1 / self.q)
        inner = _integrate_from_zero(lambda r: r * (r**self.q + c[..., None]) ** e, rho, knee)
        n = 2 + (self.depth - 1) * (2 - self.q)
        inner = jnp.where(uniform, jnp.where(uniform, rho, 1.0) ** n / n, inner)
        return jnp.sum(jnp.abs(x) * self._g(rho) - inner)

    @_jit_on_arrays
    def grad_inverse(self, z: ArrayLike) -> Array:
        """x with ∇R(x) = z: solves G(ρ) = |z| for ρ, then x = sign(z)·ρ·(ρ^q + c)^((L−1)/q).

        Only defined for |z| below sup G, which is infinite exactly when ``is_legendre``;
        NaN where no root exists.
        """
        z = jnp.asarray(z)
        uniform, c = self._uniform(z.shape)

        def solve(c_i, target):
            single = DeepDiagonalMirror(self.q, self.depth, c_i)

            def fn(log_rho, _):
                return jnp.log(single._g(jnp.exp(log_rho))) - jnp.log(target)

            guess = jnp.log(jnp.maximum(target, 1e-300))
            sol = optx.root_find(
                fn, optx.Newton(rtol=1e-12, atol=1e-12), guess, max_steps=200, throw=False
            )
            return jnp.where(sol.result == optx.RESULTS.successful, sol.value, jnp.nan)

        absz = jnp.abs(z)
        safe = jnp.where(absz > 0, absz, 1.0)
        rho = jnp.exp(jax.vmap(solve)(c.ravel(), safe.ravel())).reshape(z.shape)
        x = rho * (rho**self.q + c) ** ((self.depth - 1) / self.q)
        # c = 0: G(ρ) = ρ^(1−e)/(1−e) = |z| gives ρ = ((1−e)|z|)^(1/(1−e)) and x = ρ^L
        e = (self.depth - 1) * (self.q - 1)
        power = 1 - jnp.where(e < 1, e, 0.5)
        uniform_x = jnp.where(e < 1, (power * safe) ** (self.depth / power), jnp.nan)
        x = jnp.where(uniform, uniform_x, x)
        return jnp.where(absz > 0, jnp.sign(z) * x, 0.0)


class MirrorFlow(AbstractDecayedFlow):
    r"""The x-space steepest mirror flow of a balanced deep diagonal model (docs/theory.md §4, §6):

        dx/dt = −h_{c(t)}(x)·φ_q^ε(∇f(x)) − L·α(t)·x,     dc/dt = −q·α(t)·c,

    i.e. d∇R_{c}(x)/dt = −φ_q^ε(∇f(x)) plus the decoupled weight-decay terms: α shrinks the
    balance constant, c(t) = c₀·exp(−q∫α), and contracts the product x = ∏ w_i at rate Lα.
    The smoothing acts on ∇f(x), the smoothed mirror flow that the structured factor flow
    reproduces exactly. State: ``(x, c)``; ``params_of`` returns x.

    **Fields:** ``geometry`` (`Lp`), ``depth``, ``c`` (initial balance constant ≥ 0, scalar or
    per coordinate; c = 0 is the uniform init w_1 = … = w_L, where h(x) = L·|x|^(q(L−1)/L)
    and x = 0 stays 0), ``decoupled_wd`` (α ≥ 0 or a schedule t ↦ α(t)).
    """

    geometry: Lp
    c: Array
    decoupled_wd: Array | Schedule
    depth: int = eqx.field(static=True)

    def __init__(
        self, geometry: Lp, *, depth: int, c: ArrayLike, decoupled_wd: ScalarLike | Schedule = 0.0
    ):
        check_int("depth", depth, 1)
        check_range("c", c, 0.0)
        decoupled_wd = checked_decay(decoupled_wd)
        self.geometry = geometry
        self.c = as_float(c)
        self.decoupled_wd = decoupled_wd
        self.depth = depth

    def mirror(self, c: ArrayLike | None = None) -> DeepDiagonalMirror:
        """The mirror map at balance constant ``c`` (default: the initial one)."""
        return DeepDiagonalMirror(self.geometry.q, self.depth, self.c if c is None else c)

    def init(self, params: Array):
        return params, jnp.broadcast_to(self.c, jnp.shape(params)).astype(jnp.result_type(params))

    def params_of(self, state) -> Array:
        return state[0]

    def smoothing_for(self, params) -> str:
        return "structured"

    def __call__(self, t: ScalarLike, state, loss: Loss):
        x, c = state
        g = jax.grad(loss)(x)
        alpha = self.decay_rate(t)
        h = self.mirror(c).metric(x)
        return -h * self.geometry.map(g) - self.depth * alpha * x, -self.geometry.q * alpha * c


def solve_mirror_flow(flow: MirrorFlow, x0: ArrayLike, loss: Loss, t1: ScalarLike, **kwargs):
    """Integrate a `MirrorFlow` from x0: `solve_flow` with the same options and solution.

        dx/dt = −h_{c(t)}(x)·φ_q^ε(∇f(x)) − L·α(t)·x,    x(0) = x0

    **Arguments:** ``flow`` a `MirrorFlow`; ``x0`` initial effective weights, shape (dim,);
    ``loss`` f(x); ``t1`` the final time; ``kwargs`` any keyword of `solve_flow`.

    **Returns:** a `FlowSolution` whose ``params`` and ``x`` are the x trajectory.
    """
    return solve_flow(flow, as_float(x0), loss, t1, **kwargs)


class SquareDiffMirror(AbstractMirror):
    r"""The potential Q_α of x = u⊙u − v⊙v under gradient flow from u = v = α
    (Woodworth et al. 2020):

        Q_α(x) = α²·Σ_j q(x_j/α²),   q(z) = 2 − √(4 + z²) + z·arcsinh(z/2),

    so ∇Q_α(x) = arcsinh(x/(2α²)). Small α approaches the ℓ1 norm (rich regime), large α a
    scaled ℓ2 norm (kernel regime).

    **Arguments:** ``alpha`` > 0, the init scale u = v = α.
    """

    alpha: Array

    def __init__(self, alpha: ScalarLike):
        check_range("alpha", alpha, 0.0, lo_open=True)
        self.alpha = as_float(alpha)

    def grad(self, x: ArrayLike) -> Array:
        return jnp.arcsinh(jnp.asarray(x) / (2 * self.alpha**2))

    def grad_inverse(self, z: ArrayLike) -> Array:
        return 2 * self.alpha**2 * jnp.sinh(jnp.asarray(z))

    def potential(self, x: ArrayLike) -> Array:
        z = jnp.asarray(x) / self.alpha**2
        return self.alpha**2 * jnp.sum(2 - jnp.sqrt(4 + z * z) + z * jnp.arcsinh(z / 2))


class BiasSolution(eqx.Module):
    """The result of `implicit_bias`.

    **Fields:** ``x`` the argmin, shape (d,); ``residual`` max_i |(Ax − b)_i|, how far ``x`` is
    from interpolating; ``converged`` whether the final Newton refinement met its tolerance
    (a boolean array); ``num_steps`` the BFGS and Newton steps taken.
    """

    x: Array
    residual: Array
    converged: Array
    num_steps: Array


@jax.custom_jvp
def _dual(nu, mirror, z0, A, b):
    """R*(z₀ + Aᵀν) − bᵀν, with R*(z) = ⟨z, x(z)⟩ − R(x(z)) and x(z) = (∇R)⁻¹(z)."""
    z = z0 + A.T @ nu
    x = mirror.grad_inverse(z)
    return jnp.sum(z * x) - mirror.potential(x) - b @ nu


@_dual.defjvp
def _dual_jvp(primals, tangents):
    """∇R* = (∇R)⁻¹, so the dual's gradient in ν is A·x(ν) − b: no derivative of the root
    find in ``grad_inverse`` or of the quadrature in ``potential`` is needed (the tangents of
    the other arguments are dropped: only ν is optimized)."""
    nu, mirror, z0, A, b = primals
    z = z0 + A.T @ nu
    x = mirror.grad_inverse(z)
    value = jnp.sum(z * x) - mirror.potential(x) - b @ nu
    return value, (A @ x - b) @ tangents[0]


@eqx.filter_jit
def _bias(mirror, A, b, x0, max_steps):
    z0 = mirror.grad(x0)

    def dual(nu, _):
        return _dual(nu, mirror, z0, A, b)

    def interpolation_gap(nu, _):
        return A @ mirror.grad_inverse(z0 + A.T @ nu) - b

    nu0 = jnp.zeros(A.shape[0], A.dtype)
    solver = optx.BFGS(rtol=1e-13, atol=1e-13)
    coarse = optx.minimise(dual, solver, nu0, max_steps=max_steps, throw=False)
    # BFGS stops on small steps and value changes; Newton on the dual's gradient A·x(ν) − b
    # (Jacobian A·diag(h(x))·Aᵀ, positive definite) then drives the residual to rounding level
    fine = optx.root_find(
        interpolation_gap,
        optx.Newton(rtol=1e-12, atol=1e-12),
        coarse.value,
        max_steps=20,
        throw=False,
    )
    converged = fine.result == optx.RESULTS.successful
    x = mirror.grad_inverse(z0 + A.T @ jnp.where(converged, fine.value, coarse.value))
    return BiasSolution(
        x=x,
        residual=jnp.max(jnp.abs(A @ x - b)),
        converged=converged,
        num_steps=coarse.stats["num_steps"] + fine.stats["num_steps"],
    )


def implicit_bias(
    mirror: AbstractMirror, A: ArrayLike, b: ArrayLike, x0: ArrayLike, *, max_steps: int = 10_000
) -> BiasSolution:
    r"""The mirror-descent limit on an underdetermined regression: argmin_{Ax=b} D_R(x, x₀).

    Solved through the convex dual: with x(ν) = (∇R)⁻¹(∇R(x₀) + Aᵀν), ν ∈ R^n minimizes
    R*(∇R(x₀) + Aᵀν) − bᵀν, whose gradient is A·x(ν) − b (BFGS with line search, then
    Newton's method on A·x(ν) = b from its point, optimistix; R*(z) = ⟨z, x(z)⟩ − R(x(z))).
    ``mirror`` is an `AbstractMirror` (`DeepDiagonalMirror`, `SquareDiffMirror` or your own
    subclass).
    Independent of any flow. Compiled once per mirror type and shapes: further calls with
    other values of c, A, b, x₀ reuse the program.

    **Arguments:** ``mirror`` as above; ``A`` (n, d) and ``b`` (n,) with n ≤ d; ``x0`` the
    initialization, shape (d,); ``max_steps`` ≥ 1, the BFGS step budget (Newton takes at
    most 20 more).

    **Returns:** a `BiasSolution`: the argmin ``x`` with its ``residual`` max_i |(Ax − b)_i|
    and a ``converged`` flag (check both before trusting ``x``; where Newton failed, ``x`` is
    BFGS's point, and may be inf or NaN when Ax = b has no solution).

    **Example:**

    ```python
    problem = mf.sparse_regression(jax.random.key(0), n=8, d=12, k=3)
    mirror = mf.DeepDiagonalMirror(q=2.0, depth=2, c=0.5)
    bias = mf.implicit_bias(mirror, problem.A, problem.b, jnp.zeros(12))
    bias.x, bias.residual, bias.converged  # residual ~ 1e-15, converged True
    ```
    """
    check_int("max_steps", max_steps, 1)
    if not isinstance(mirror, AbstractMirror):
        raise ValueError(
            "`mirror` must be an AbstractMirror (DeepDiagonalMirror, SquareDiffMirror, or a "
            f"subclass with potential, grad and grad_inverse); got {type(mirror).__name__}."
        )
    A, b, x0 = as_float(A), as_float(b), as_float(x0)
    if A.ndim != 2 or b.shape != A.shape[:1] or x0.shape != A.shape[1:]:
        raise ValueError(
            "`A`, `b` and `x0` must have shapes (n, d), (n,) and (d,); got "
            f"{A.shape}, {b.shape} and {x0.shape}."
        )
    return _bias(mirror, A, b, x0, max_steps)
