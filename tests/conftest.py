import jax
import pytest

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop each module's compiled programs when it ends: a worker otherwise keeps every
    executable of the run in memory (gigabytes by the end of the suite), and modules share
    almost none of them."""
    yield
    jax.clear_caches()
