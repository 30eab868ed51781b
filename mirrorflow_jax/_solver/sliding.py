"""Filippov sliding points of the structure-preserving sign flow, for `SignFlowKvaerno3`'s
stages.

The structure-preserving smoothing keeps sign(∂x/∂w_i) exact, and with coupled decay β the
scaled gradient (∂F/∂w_i)/|∂x/∂w_i| has the term β·w_i/|∂x/∂w_i|. Where the factors of a part
of a coordinate reach 0 together and that sign (or that term) flips with them, both sides push
them back to 0: the field is discontinuous there, and error-controlled solvers shrink their
steps without end. A stage instead parks such entries at 0 (where the field's own velocity is
0) and restarts a part resting at 0 when its velocity turns, with equal factors of one sign:
the limit of the balanced init α → 0. `stage_signs` does this for one velocity per coordinate,
`entry_stage` (with `restart_guess`) for one per factor entry. ``signs_of(rows)`` gives
sign(∂x/∂w) at factor rows, ``velocity_at(rows)`` the per-entry velocity map
φ^ε((∂F/∂w_i)/|∂x/∂w_i|) there, and ``fixed`` marks padding entries
(`AbstractReparam.padding`), which are 0 with ∂x/∂w_i = 0 too but are never a resting part.
"""

import jax
import jax.numpy as jnp

# The size of the factors from which a part resting at 0 restarts, per entry: the limit of a
# vanishing balanced part, small enough not to show in x at any tolerance.
_SEED = 1e-30


def resting_signs(base, sign, u, signs_of, fixed):
    """``sign`` (the sign of ∂x/∂w_i at ``base``), with the sign for entries of a part resting
    at 0 (w_i = 0 and ∂x/∂w_i = 0: every factor of the part is 0) that grow again under the
    velocity u. Such a part restarts with its factors equal in size and of one sign s = ±1,
    the limit of the balanced start from factors s·α as α → 0 (the sign flow leaves it in
    time O(α), docs/theory.md §5); ``signs_of(rows)`` gives sign(∂x/∂w) at factor rows. It grows
    when the velocity −sign(∂x/∂w_i)·u_j under that pattern points along s; a part that
    cannot (an even-depth product whose sign u opposes) stays at rest."""
    resting = (base == 0) & (sign == 0) & ~fixed
    for pattern in (1.0, -1.0):
        trial = signs_of(jnp.where(resting, pattern, base))
        grows = resting & (sign == 0) & (-trial * u * pattern > 0)
        sign = jnp.where(grows, trial, sign)
    return sign


def stage_signs(base, restart, point, signs_of, fixed):
    """The signs σ of a stage from ``base`` (velocity −σ·u) and the entries it parks at 0.

    σ is the sign of ∂x/∂w at the base, or `resting_signs`' for a part resting at 0, decided
    on the velocity ``restart()`` (u where the precision resolves it, else 0; called only
    when some part rests). An
    entry is parked when the velocity carries it across 0 (``point(σ)``, the stage point for
    the guess u, lies on the other side) and the sign of its own ∂x/∂w_i flips there, so that
    it would move back: both sides push it to 0, a Filippov sliding point (the balanced
    factors of a coordinate at even depth, or u in u⊙u, reaching 0 together), where the
    flow's own velocity is 0 (∂x/∂w_i vanishes with the other factors of the part). The
    checks that need more than the base's signs run only when some entry rests or crosses."""
    sign = signs_of(base)
    sign = jax.lax.cond(
        jnp.any((base == 0) & (sign == 0) & ~fixed),
        lambda: resting_signs(base, sign, restart(), signs_of, fixed),
        lambda: sign,
    )
    predicted = point(sign)
    crosses = (sign != 0) & (base != 0) & (jnp.sign(predicted) == -jnp.sign(base))
    parked = jax.lax.cond(
        jnp.any(crosses),
        lambda: crosses & (signs_of(predicted) == -sign),
        lambda: jnp.zeros_like(crosses),
    )
    return sign, parked


def restart_guess(base, u, velocity_at, signs_of, fixed):
    """The guess u with, for entries of a part resting at 0, its restart velocity or 0 (see
    `entry_stage`)."""
    zero = (base == 0) & ~fixed

    def restart():
        resting = zero & (signs_of(base) == 0)
        guess, chosen = jnp.where(resting, 0.0, u), jnp.zeros_like(resting)
        for pattern in (1.0, -1.0):
            trial = velocity_at(jnp.where(resting, pattern * _SEED, base))
            grows = resting & ~chosen & (-trial * pattern > 0)
            guess, chosen = jnp.where(grows, trial, guess), chosen | grows
        return guess

    return jax.lax.cond(jnp.any(zero), restart, lambda: u)


def entry_stage(start, base, u, step, point, velocity_at, signs_of, fixed):
    """`stage_signs` for per-entry unknowns under the structure-preserving smoothing (with
    coupled decay β): the guess u (for a part resting at 0, its restart velocity or 0; for a
    parked entry, the velocity on the base's side, which it keeps as the next stage's guess);
    the parked entries; and whether each parked entry reaches 0 within the stage.

    A resting part restarts from factors of one sign s = ±1 and vanishing size when its
    velocity there, −φ^ε((∂F/∂w_i)/|∂x/∂w_i|) = ``-velocity_at(rows)``, points along s (at
    depth 2, where β·w_i/|∂x/∂w_i| stays ±β, when |∇f| exceeds β; deeper, the decay term
    wins near 0 and the part stays). An entry is parked when the base or the guess's stage
    point (``point(u)``) lies across 0 from its value at the step's ``start`` and the
    velocity there points back: the decay holds a collapsing part at 0, where
    β·w_i/|∂x/∂w_i| jumps from +∞ to −∞. Parking is consistent if the velocity on the base's
    side can carry the base to 0 within the stage, of length a = ``step`` (the selection −B/a
    then lies between the two sides' velocities). The checks run only when some entry rests
    or crosses."""
    u = restart_guess(base, u, velocity_at, signs_of, fixed)
    predicted = point(u)
    side = jnp.sign(start)
    crosses = (side != 0) & ((jnp.sign(base) == -side) | (jnp.sign(predicted) == -side))

    def park():
        beyond = velocity_at(jnp.where(jnp.sign(predicted) == -side, predicted, base))
        parked = crosses & (beyond * u < 0)
        near = jnp.where(jnp.sign(base) == -side, beyond, u)  # the velocity on the base's side
        reaches = (base * near >= 0) & (jnp.abs(base) <= step * jnp.abs(near))
        return jnp.where(parked, near, u), parked, parked & reaches

    nothing = jnp.zeros_like(crosses)
    return jax.lax.cond(jnp.any(crosses), park, lambda: (u, nothing, nothing))
