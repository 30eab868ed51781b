"""JAX's persistent compilation cache for the toolkit's programs.

A sweep's solve compiles in seconds and runs in about as long, so a second run of the same
program (a rerun, another process, another session) is dominated by compilation unless the
compiled program is kept on disk. JAX can do that; this module turns it on with a sensible
place and threshold.
"""

import os
import pathlib

ENV = "MIRRORFLOW_CACHE_DIR"
"""Environment variable naming the cache folder; set it empty to leave the cache off."""


def default_cache_dir() -> pathlib.Path | None:
    """``$MIRRORFLOW_CACHE_DIR`` if set (None if set empty), else
    ``$XDG_CACHE_HOME/mirrorflow_jax/jax`` (``~/.cache/mirrorflow_jax/jax``)."""
    if ENV in os.environ:
        value = os.environ[ENV].strip()
        return pathlib.Path(value).expanduser() if value else None
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "mirrorflow_jax" / "jax"


def enable_compilation_cache(
    path: str | os.PathLike | None = None, *, min_compile_seconds: float = 0.5
) -> pathlib.Path | None:
    """Turn on JAX's persistent compilation cache, so that a program compiled once (a sweep's
    solve, an experiment) is loaded from disk by later processes instead of recompiled.

    The `mirrorflow` command does this by default. In library use, call it once before the
    first solve; it only sets JAX's options ``jax_compilation_cache_dir`` and
    ``jax_persistent_cache_min_compile_time_secs``, which a user may set directly instead.
    The cache is keyed by the program, the JAX version and the device, so a stale entry is
    never used; delete the folder to reclaim the space. JAX does not cache a program that
    holds a host callback, which equinox's run-time checks (``eqx.error_if``, used by diffrax
    on save times) are by default: set the environment variable ``EQX_ON_ERROR=nan`` before
    equinox is imported (the `mirrorflow` command does) so that they yield NaN instead, which
    `solve_flow` reports as the result ``nonfinite``.

    **Arguments:** ``path`` the cache folder (default `default_cache_dir`: the environment
    variable ``MIRRORFLOW_CACHE_DIR``, else ``~/.cache/mirrorflow_jax/jax``; an empty
    ``MIRRORFLOW_CACHE_DIR`` leaves the cache off); ``min_compile_seconds`` ≥ 0, programs
    that compile faster than this are not stored.

    **Returns:** the cache folder, or None where the cache was left off.
    """
    if not min_compile_seconds >= 0:
        raise ValueError(
            f"`min_compile_seconds` must lie in [0, inf); got {min_compile_seconds!r}."
        )
    folder = default_cache_dir() if path is None else pathlib.Path(path).expanduser()
    if folder is None:
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(
            f"`path`: cannot create the compilation cache folder {str(folder)[:200]!r} "
            f"({error.strerror}); pass another, or set {ENV}= (empty) to leave it off."
        ) from None
    import jax

    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_seconds))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder
