"""Saving labelled results: netCDF with provenance attributes, written atomically."""

import json
import os
import pathlib
import tempfile

import jax
import xarray as xr


def provenance() -> dict[str, str]:
    """Package, jax and backend versions recorded with every saved result."""
    from . import __version__

    return {
        "mirrorflow_jax_version": __version__,
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
    }


def _umask() -> int:
    """The process's umask (read by setting it and restoring it at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_dataset(ds: xr.Dataset, path: str | os.PathLike) -> pathlib.Path:
    """Write ``ds`` to netCDF (h5netcdf engine) with provenance attrs; atomic rename, so an
    interrupted write never leaves a corrupt file at ``path``.

    **Arguments:** ``ds`` an ``xarray.Dataset`` (non-scalar attrs are stored as JSON);
    ``path`` the target file. **Returns:** ``path`` as a ``pathlib.Path``.
    """
    path = pathlib.Path(path)
    ds = ds.assign_attrs(provenance())
    ds.attrs = {
        k: v if isinstance(v, str | int | float) else json.dumps(v) for k, v in ds.attrs.items()
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".nc.tmp")
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a plain new file would not be
        ds.to_netcdf(tmp, engine="h5netcdf")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def load_dataset(path: str | os.PathLike) -> xr.Dataset:
    """Load a result written by `save_dataset` fully into memory.

    **Arguments:** ``path`` of a netCDF file. **Returns:** an ``xarray.Dataset`` (the file is
    closed again); its attrs hold the provenance that `save_dataset` recorded.
    """
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        return ds.load()
