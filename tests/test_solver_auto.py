"""The solver interface: `solver="auto"`'s choice for each kind of solve, the choice recorded
in the solution and in sweeps, the stiffness check of explicit solvers, and the diffrax
contract of the toolkit's solvers (the direction of time, failure codes, error order)."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mirrorflow_jax as mf
from mirrorflow_jax._solver.auto import choose_solver
from mirrorflow_jax._solver.base import newton_tolerances

PID = diffrax.PIDController(rtol=1e-8, atol=1e-10)


@pytest.fixture(scope="module")
def problem():
    return mf.sparse_regression(jax.random.key(0), n=10, d=20, k=2)


@pytest.fixture(scope="module")
def deep_problem():
    return mf.sparse_regression(jax.random.key(0), n=20, d=40, k=3)


def _deep(q, problem, *, eps=1e-3, alpha=0.3, t1=2.0, solver="auto"):
    """The naive smoothed flow of a depth-3 deep diagonal model on ``deep_problem``: every
    solve of it takes one of three solvers (SignFlowKvaerno3, Rodas4, the watched Tsit5,
    whether auto chose it or it was given), shared by the tests of traced (q, ε) and of the
    stiffness check; α, t1, q and ε are values of those programs."""
    flow = mf.SteepestFlow(mf.Lp(q, eps), smoothing_at="naive")
    model = mf.DeepDiagonal.scaled(alpha, depth=3, dim=40)
    return mf.solve_flow(flow, model, problem, t1, solver=solver)


def chosen(flow, params, loss):
    return choose_solver(flow, params, loss, PID).names


@pytest.mark.parametrize(
    "q, eps, placement, expected",
    [
        (2.0, 0.0, "auto", ("Rodas4",)),
        (2.0, 1e-3, "auto", ("Rodas4",)),
        (1.0, 1e-3, "auto", ("SignFlowKvaerno3",)),
        (1.0, 1e-8, "auto", ("SignFlowKvaerno3",)),
        (1.5, 1e-3, "auto", ("Rodas4",)),
        (1.0, 0.0, "auto", ("Tsit5",)),
        (1.5, 0.0, "auto", ("PowerFlowKvaerno5",)),
        (1.25, 0.0, "naive", ("PowerFlowKvaerno5",)),
        # The naive placement has no collapses: Rodas4 down to COARSE_EPS = 1e-4.
        (1.0, 1e-3, "naive", ("Rodas4",)),
        (1.0, 1e-4, "naive", ("Rodas4",)),
        (1.0, 1e-5, "naive", ("SignFlowKvaerno3",)),
    ],
)
def test_auto_choice_for_concrete_geometry(problem, q, eps, placement, expected):
    model = mf.SignedDeepDiagonal.scaled(0.1, depth=2, dim=20)
    flow = mf.SteepestFlow(mf.Lp(q, eps), smoothing_at=placement)
    assert chosen(flow, model, problem) == expected


def test_auto_choice_with_traced_eps_keeps_both_sign_flow_solvers(problem):
    """A traced ε may fall on either side of COARSE_EPS (or be 0, the exact map: Tsit5): with
    the naive placement the choice keeps Rodas4 and SignFlowKvaerno3 and picks by the value;
    with the structured one it is SignFlowKvaerno3 on both sides."""
    model = mf.SignedDeepDiagonal.scaled(0.1, depth=2, dim=20)
    found = {}

    def record(eps, placement):
        choice = choose_solver(
            mf.SteepestFlow(mf.Lp(1.0, eps), smoothing_at=placement), model, problem, PID
        )
        found[placement] = choice.names
        return [choice.index(1.0, e) for e in (1e-3, 1e-4, 1e-5, 0.0)]

    naive = jax.jit(lambda eps: record(eps, "naive"))(1e-3)
    assert found["naive"] == ("Rodas4", "SignFlowKvaerno3", "Tsit5")
    taken = [found["naive"][int(i)] for i in naive]
    assert taken == ["Rodas4", "Rodas4", "SignFlowKvaerno3", "Tsit5"]
    structured = jax.jit(lambda eps: record(eps, "auto"))(1e-3)
    assert found["auto"] == ("SignFlowKvaerno3", "Tsit5")
    assert [found["auto"][int(i)] for i in structured] == ["SignFlowKvaerno3"] * 3 + ["Tsit5"]


def test_auto_choice_follows_model_and_loss_structure(problem):
    flow = mf.SteepestFlow(mf.Lp(1.0, 1e-3))
    model = mf.DeepDiagonal.scaled(0.1, depth=2, dim=20)
    # A plain PyTree (naive smoothing): no factor structure, small enough for dense Rodas4.
    plain = {"w": jnp.full((20,), 0.1), "v": jnp.full((20,), 0.1)}

    def product(p):  # a loss of the product, through a plain callable (no Hessian factor)
        return problem(p["w"] * p["v"])

    (solver,) = choose_solver(flow, plain, product, PID).solvers
    assert isinstance(solver, mf.Rodas4) and solver.structure == "dense"
    # Gradient flow: structured Rodas4 for a toolkit model under a factored loss, the
    # explicit method otherwise.
    gf = mf.SteepestFlow(mf.Lp(2.0))
    (solver,) = choose_solver(gf, model, problem, PID).solvers
    assert isinstance(solver, mf.Rodas4) and solver.structure == "structured"
    assert choose_solver(gf, plain, product, PID).names == ("Tsit5",)
    assert choose_solver(gf, model, lambda x: problem(x), PID).names == ("Tsit5",)
    # A toolkit model under a loss without `hessian_factor`: Rodas4, dense.
    (solver,) = choose_solver(flow, model, lambda x: problem(x), PID).solvers
    assert isinstance(solver, mf.Rodas4) and solver.structure == "dense"
    # A large plain PyTree: dense LU would cost (n × n) per step; the watched explicit one.
    large = jnp.full((2000,), 0.1)
    assert choose_solver(flow, large, lambda x: jnp.sum(x**2), PID).names == ("Tsit5",)
    # Other flows: by their geometry where they have one (MirrorFlow: dense Rodas4 for the
    # stiff smoothed sign flow), else the explicit solver (AdamFlow).
    mirror = mf.MirrorFlow(mf.Lp(1.0, 1e-3), depth=2, c=1.0)
    assert choose_solver(mirror, jnp.zeros(20), problem, PID).names == ("Rodas4",)
    mirror_gf = mf.MirrorFlow(mf.Lp(2.0), depth=2, c=1.0)
    assert choose_solver(mirror_gf, jnp.zeros(20), problem, PID).names == ("Tsit5",)
    adam = mf.AdamFlow(10.0, 1.0)
    assert choose_solver(adam, model, problem, PID).names == ("Tsit5",)


def test_auto_takes_the_controllers_tolerances_and_settles_the_unknowns(problem):
    model = mf.SignedDeepDiagonal.scaled(0.1, depth=2, dim=20)
    controller = diffrax.PIDController(rtol=1e-6, atol=1e-9)
    coupled = mf.SteepestFlow(mf.Lp(1.0, 1e-3), coupled_wd=0.1)
    (solver,) = choose_solver(coupled, model, problem, controller).solvers
    assert (solver.rtol, solver.atol, solver.unknowns) == (1e-6, 1e-9, "entry")
    # A traced β cannot settle them: one velocity per entry takes any β.
    unknowns = []

    def record(beta):
        flow = mf.SteepestFlow(mf.Lp(1.0, 1e-3), coupled_wd=beta)
        unknowns.append(choose_solver(flow, model, problem, controller).solvers[0].unknowns)
        return beta

    jax.jit(record)(0.1)
    assert unknowns == ["entry"]


# One (q, ε) per stiff candidate of the naive placement: SignFlowKvaerno3 (ε below
# COARSE_EPS), Rodas4 and PowerFlowKvaerno5 (the exact map, 1 < q < 2). With q and ε traced
# the watched Tsit5 (the exact sign flow, q = 1 and ε = 0) is a candidate too; that member is
# left out, as Tsit5 on the exact sign flow chatters (a solve that honestly fails).
QS = (1.0, 1.5, 1.5)
EPSS = (1e-5, 1e-3, 0.0)


@pytest.fixture(scope="module")
def concrete(deep_problem):
    """The solve at each (q, ε) of QS, EPSS with both concrete (one solver each), shared by
    the tests of traced (q, ε) below."""
    return [_deep(q, deep_problem, eps=eps) for q, eps in zip(QS, EPSS, strict=True)]


@pytest.fixture(scope="module")
def swept(deep_problem):
    """One sweep over the members of QS, EPSS (q and ε traced, lax.map: one member at a time
    inside one jitted program), shared by the tests of the per-member choice and of its
    record in the sweep."""

    def run(member):
        index = jnp.asarray(member, int)
        return _deep(jnp.asarray(QS)[index], deep_problem, eps=jnp.asarray(EPSS)[index])

    return mf.sweep(run, mf.Grid(member=list(range(len(QS)))), strategy="map")


def test_traced_q_chooses_per_member_and_matches_concrete_solves(swept, concrete):
    """Under jit with q and ε traced (a sweep's lax.map), the solution names every
    candidate, `solver_index` says which ran, and each member equals the solve with q and ε
    concrete (same solver, same steps)."""
    names = swept.attrs["solvers"]
    assert set(names) == {"Tsit5", "SignFlowKvaerno3", "Rodas4", "PowerFlowKvaerno5"}
    for q, reference in enumerate(concrete):
        member = swept.sel(member=q)
        assert names[int(member.solver_index)] == reference.solver, q
        assert bool(member.ok) and bool(reference.ok), q
        assert int(member.num_steps) == int(reference.num_steps), q
        np.testing.assert_allclose(
            member.x.values[-1], reference.x[-1], rtol=0, atol=1e-9, err_msg=f"member {q}"
        )


def test_vmapped_members_each_run_their_own_solver(deep_problem, concrete):
    """Under vmap every branch of the switch runs: a branch must be idle for the members it
    does not take (its checks pass, zero steps), so that each member equals its own solve."""
    batched = jax.vmap(lambda q, eps: _deep(q, deep_problem, eps=eps))(
        jnp.array(QS), jnp.array(EPSS)
    )
    for i, reference in enumerate(concrete):
        # The same solver and steps up to the rounding a batched program reorders (its matrix
        # products sum in another order): the adaptive steps may then differ slightly
        # (measured 854 vs 847 on a depth-2 signed model; here equal, endpoints 1e-15 apart)
        # and the endpoints agree to the solves' global accuracy (1.4e-6 measured there at
        # rtol 1e-8; an idle-branch leak or a wrong solver would be O(1e-2) or more).
        assert abs(int(batched.num_steps[i]) - int(reference.num_steps)) <= 0.02 * int(
            reference.num_steps
        ), QS[i]
        np.testing.assert_allclose(
            batched.x[i, -1], reference.x[-1], rtol=0, atol=1e-5, err_msg=f"q = {QS[i]}"
        )
    assert bool(batched.ok.all())


def test_sweep_records_the_choice(swept):
    chosen_names = [swept.attrs["solvers"][int(i)] for i in swept.solver_index.values]
    assert chosen_names == ["SignFlowKvaerno3", "Rodas4", "PowerFlowKvaerno5"]
    assert bool(swept.ok.all())


def test_solver_argument_is_checked_before_tracing(problem):
    model = mf.SignedDeepDiagonal.scaled(0.1, depth=2, dim=20)
    flow = mf.SteepestFlow(mf.Lp(1.0, 1e-3))
    with pytest.raises(ValueError, match="`solver` must be 'auto' or a diffrax solver"):
        mf.solve_flow(flow, model, problem, 1.0, solver="tsit5")
    with pytest.raises(ValueError, match="SignFlowKvaerno3.*geometry.q"):
        mf.solve_flow(
            mf.SteepestFlow(mf.Lp(2.0)), model, problem, 1.0, solver=mf.SignFlowKvaerno3()
        )


def test_explicit_solver_in_a_stiff_regime_is_reported_not_ok(deep_problem):
    """Tsit5 on the naive smoothed sign flow (ε = 1e-3) of a deep diagonal model: its steps
    are held by stability in the smoothing layer near the minimum. Before the check such
    solves reported `ok` while ending far from the truth (4e-2 on a 40×100 problem); now the
    stiffness check ends them with `stiff`, and the default choice solves them."""
    explicit = _deep(1.0, deep_problem, alpha=0.01, t1=50.0, solver=diffrax.Tsit5())
    assert explicit.result == mf.RESULTS.stiff and not bool(explicit.ok)
    assert int(explicit.num_steps) < 5_000  # ended early, not at max_steps
    default = _deep(1.0, deep_problem, alpha=0.01, t1=50.0)
    assert default.solver == "Rodas4" and bool(default.ok)
    # Gradient flow on the same problem is not stiff for Tsit5: not flagged.
    gf = _deep(2.0, deep_problem, eps=0.0, alpha=0.01, t1=50.0, solver=diffrax.Tsit5())
    assert bool(gf.ok)


def test_stiffness_check_fires_on_a_linear_stiff_problem():
    """y' = −1000 (y − cos t) with Tsit5 at rtol 1e-6 (h·λ held near 3 by stability):
    flagged by the check `solve_flow` applies to explicit solvers (here used with diffrax
    directly); y' = −(y − cos t) is not."""
    from mirrorflow_jax._solver.stiffness import StiffnessCheck, is_stiff

    term = diffrax.ODETerm(lambda t, y, rate: -rate * (y - jnp.cos(t)))
    solver = StiffnessCheck(diffrax.Tsit5())
    loose = diffrax.PIDController(rtol=1e-6, atol=1e-9)  # stability-bound, not accuracy-bound

    def solve(rate):  # one program for both rates
        return diffrax.diffeqsolve(
            term,
            solver,
            0.0,
            10.0,
            None,
            jnp.array([0.0]),
            args=jnp.asarray(rate),
            stepsize_controller=loose,
            saveat=diffrax.SaveAt(t1=True, solver_state=True),
            throw=False,
        )

    assert bool(is_stiff(solver, solve(1000.0).solver_state))
    mild = solve(1.0)
    assert mild.result == diffrax.RESULTS.successful
    assert not bool(is_stiff(solver, mild.solver_state))


# ----------------------------------------------------------------------------- Rodas4's contract


def test_rodas4_integrates_backwards_in_time():
    """t1 < t0: diffrax flips time and puts the sign in the control, which Rodas4 must follow
    (it used to integrate y' = +f there). Compared with Kvaerno5 and the closed forms."""
    controller = diffrax.PIDController(rtol=1e-8, atol=1e-8)

    def field(t, y, args):  # y0' = −y0 and y1' = −t·y1 (t-dependent: ∂f/∂t in the stages)
        return jnp.stack([-y[0], -t * y[1]])

    exact = [np.exp(2.0), np.exp(2.0)]  # from y = 1 at t = 2 back to t = 0: e^2 and e^(4/2)
    for solver in (mf.Rodas4(), diffrax.Kvaerno5()):
        end = diffrax.diffeqsolve(
            diffrax.ODETerm(field),
            solver,
            2.0,
            0.0,
            None,
            jnp.ones(2),
            stepsize_controller=controller,
        ).ys[-1]
        np.testing.assert_allclose(end, exact, rtol=1e-6, err_msg=type(solver).__name__)


def test_rodas4_structured_backwards_returns_to_the_start(problem):
    """The structured path (a SteepestFlow on a toolkit model, time-dependent decay) solved
    forward to t = 1 and back to 0 returns to the initial factors."""
    model = mf.SignedDeepDiagonal.scaled(0.3, depth=2, dim=20)
    flow = mf.SteepestFlow(mf.Lp(1.5, 1e-2), decoupled_wd=lambda t: 0.1 * (1 + t))
    args = mf.FlowArgs(flow, problem, problem(model()))
    term = diffrax.ODETerm(lambda t, y, a: a.flow(t, y, a.loss))
    controller = diffrax.PIDController(rtol=1e-10, atol=1e-12)
    solver = mf.Rodas4(structure="structured")

    def solve(y0, t0, t1):
        sol = diffrax.diffeqsolve(
            term, solver, t0, t1, None, y0, args=args, stepsize_controller=controller
        )
        return jax.tree.map(lambda leaf: leaf[-1], sol.ys)

    zero, one = jnp.asarray(0.0), jnp.asarray(1.0)  # arrays: both directions in one program
    forward = solve(model, zero, one)
    back = solve(forward, one, zero)
    assert float(jnp.max(jnp.abs(forward() - model()))) > 1e-2  # it moved
    np.testing.assert_allclose(back(), model(), rtol=0, atol=1e-7)


def test_rodas4_backsolve_adjoint_matches_checkpointing():
    """BacksolveAdjoint integrates the adjoint backwards in time through the solver: its
    gradient must equal RecursiveCheckpointAdjoint's (and d y(1)/dk = −e^(−k) at k = 1)."""
    controller = diffrax.PIDController(rtol=1e-10, atol=1e-10)

    def end(k, adjoint):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(lambda t, y, k: -k * y),
            mf.Rodas4(),
            0.0,
            1.0,
            None,
            jnp.array([1.0]),
            args=k,
            stepsize_controller=controller,
            adjoint=adjoint,
        )
        return sol.ys[-1, 0]

    backsolve = jax.jit(jax.grad(lambda k: end(k, diffrax.BacksolveAdjoint())))(1.0)
    checkpoint = jax.jit(jax.grad(lambda k: end(k, diffrax.RecursiveCheckpointAdjoint())))(1.0)
    np.testing.assert_allclose([backsolve, checkpoint], -np.exp(-1.0), rtol=1e-6)


def test_failed_steps_end_a_constant_step_solve():
    """A field that turns NaN at t = 0.5: under a constant step the solve must end with a
    failure code, not freeze at the last finite state and report success."""
    field = diffrax.ODETerm(lambda t, y, a: jnp.where(t < 0.5, -y, jnp.nan))
    sol = diffrax.diffeqsolve(
        field,
        mf.Rodas4(),
        0.0,
        1.0,
        0.01,
        jnp.array([1.0]),
        stepsize_controller=diffrax.ConstantStepSize(),
        throw=False,
    )
    assert sol.result == diffrax.RESULTS.nonfinite


def test_sign_flow_solver_fails_loudly_under_a_too_large_constant_step(problem):
    """SignFlowKvaerno3 with a constant step its Newton iteration cannot take: a failure
    code (the step used to be kept as y1 = y0 and reported successful)."""
    model = mf.SignedDeepDiagonal.scaled(0.1, depth=2, dim=20)
    flow = mf.SteepestFlow(mf.Lp(1.0, 1e-6))
    sol = mf.solve_flow(
        flow,
        model,
        problem,
        10.0,
        dt0=5.0,
        solver=mf.SignFlowKvaerno3(max_newton=1),
        stepsize_controller=diffrax.ConstantStepSize(),
    )
    assert not bool(sol.ok)
    assert sol.result == mf.RESULTS.nonlinear_divergence


def test_rodas4_error_estimate_has_local_order_four():
    """The embedded estimate's size shrinks like h^4 (its `error_order`): halving h divides
    it by about 2^4 on a smooth nonlinear field."""
    term = diffrax.ODETerm(lambda t, y, a: -(y**2) + jnp.sin(t))
    solver = mf.Rodas4()
    y0 = jnp.array([1.0])
    error = jax.jit(lambda h: solver.step(term, 0.0, h, y0, None, None, False)[1][0])
    sizes = [float(jnp.abs(error(h))) for h in (0.02, 0.01, 0.005)]
    ratios = np.array(sizes[:-1]) / np.array(sizes[1:])
    assert solver.error_order(term) == 4
    np.testing.assert_allclose(np.log2(ratios), 4.0, atol=0.25)  # 3 would be order 3


def test_newton_test_takes_traced_controller_tolerances(problem):
    """The Newton solvers' tests are relative to the step-size controller's tolerances also
    when these are traced (a swept rtol, an atol scaled with a swept init): `solve_flow` hands
    them over in `FlowArgs`. (They used to fall back to 1e-8 / 1e-10 there: a looser Newton
    test than the step control under a tighter traced rtol.) The solver's own tolerances
    still take precedence, and without a controller's the defaults hold."""
    model = mf.SignedDeepDiagonal.scaled(0.1, depth=2, dim=20)
    args = mf.FlowArgs(mf.SteepestFlow(mf.Lp(1.0, 1e-3)), problem, jnp.asarray(1.0))

    def with_tolerances(rtol, atol):
        return eqx.tree_at(
            lambda a: (a.rtol, a.atol), args, (rtol, atol), is_leaf=lambda x: x is None
        )

    for cls in (mf.SignFlowKvaerno3, mf.PowerFlowKvaerno3, mf.PowerFlowKvaerno5):
        traced = jax.jit(
            lambda r, a, c=cls: jnp.stack(newton_tolerances(c(), with_tolerances(r, a)))
        )
        np.testing.assert_array_equal(traced(1e-11, 1e-13), [1e-11, 1e-13])
        assert newton_tolerances(cls(rtol=1e-6, atol=1e-7), with_tolerances(1e-3, 1e-3)) == (
            1e-6,
            1e-7,
        )
        assert newton_tolerances(cls(), args) == (1e-8, 1e-10)
    # Through solve_flow, with the controller traced: the solve matches the concrete one.
    flow = mf.SteepestFlow(mf.Lp(1.5))

    def solve(rtol, atol):
        controller = diffrax.PIDController(rtol=rtol, atol=atol)
        return mf.solve_flow(
            flow,
            model,
            problem,
            2.0,
            solver=mf.PowerFlowKvaerno5(),
            stepsize_controller=controller,
        )

    concrete, traced = solve(1e-6, 1e-9), jax.jit(solve)(1e-6, 1e-9)
    assert bool(concrete.ok) and bool(traced.ok)
    assert abs(int(traced.num_steps) - int(concrete.num_steps)) <= 0.02 * int(concrete.num_steps)
    np.testing.assert_allclose(traced.x[-1], concrete.x[-1], rtol=0, atol=1e-6)
