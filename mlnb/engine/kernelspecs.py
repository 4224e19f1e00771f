"""The names of the Jupyter kernels installed here, found without importing jupyter_client.

Checking a spec's kernels is the first thing every ``mlnb run`` and ``mlnb
check`` does, and importing jupyter_client for it (with zmq, its asyncio
clients and IPython's paths) costs a command a sixth of a second, more than
the rest of loading a spec. :func:`installed_kernels` looks where
``jupyter_client``'s ``KernelSpecManager`` looks by default — every
``jupyter_path("kernels")`` folder, then IPython's ``kernels`` folder, then
ipykernel's own ``python3`` kernel when ipykernel is importable — and takes a
folder holding a ``kernel.json`` as a kernel, named in lower case.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

#: the kernel ipykernel provides when no kernelspec of that name is installed
NATIVE_KERNEL = "python3"


def kernel_dirs() -> list[Path]:
    """Where kernelspecs are looked for, first found first: Jupyter's data path, then IPython's."""
    from jupyter_core.paths import jupyter_path

    dirs = [Path(d) for d in jupyter_path("kernels")]
    ipython = os.environ.get("IPYTHONDIR") or os.path.join(os.path.expanduser("~"), ".ipython")
    dirs.append(Path(ipython) / "kernels")
    return dirs


def installed_kernels() -> frozenset[str]:
    """Names of the Jupyter kernels installed here (empty if they cannot be listed)."""
    found: set[str] = set()
    try:
        for folder in kernel_dirs():
            if folder.is_dir():
                found.update(
                    p.name.lower() for p in folder.iterdir() if (p / "kernel.json").is_file()
                )
        if NATIVE_KERNEL not in found and importlib.util.find_spec("ipykernel") is not None:
            found.add(NATIVE_KERNEL)
    except Exception:
        return frozenset()
    return frozenset(found)
