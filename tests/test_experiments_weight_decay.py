"""The weight_decay experiment (the measured Table 1) on a one-solve config."""

import pytest

from mirrorflow_jax.experiments import weight_decay


def test_coupled_q2_depth2_exponent_is_one():
    config = weight_decay.Config(depths=(2,), qs=(2.0,), decays=("coupled",), t1=200.0)
    ds = weight_decay.run(config)
    row = ds.sel(depth=2, q=2.0, decay="coupled")
    assert bool(row.ok)
    assert abs(float(row.p_grad) - 1.0) < 1e-4
    checks = weight_decay.checks(ds)
    assert len(checks) == 2 and all(c.held for c in checks)
    assert set(weight_decay.figures(ds)) == {"penalty_table"}


@pytest.mark.parametrize(
    ("field", "value"),
    [("depths", (1,)), ("strength", 0.0), ("decays", ("both",)), ("target_max", 0.5)],
)
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"`{field}`"):
        weight_decay.Config(**{field: value})
