"""The kernel fork server's process: import ipykernel once, fork a kernel per request.

Started by :class:`mlnb.engine.forkserver.ForkServer` as ``python -m mlnb.engine._zygote``.
It reads one JSON request per line on stdin (``argv``, ``env``, ``cwd``,
``stderr``) and answers ``{"pid": N}`` on stdout. Modules named on its command
line are imported too, before the first fork (a monitor preloads what its
drift notebook imports, so each check's kernel has them at no cost). Each child becomes its own
session leader, takes the requested environment and directory, re-seeds
``random`` and runs ``IPKernelApp`` exactly as ``python -m ipykernel_launcher``
would, with the connection file of the request. The server stays single
threaded (fork-safe) and exits when its stdin closes, i.e. when mlnb goes.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import random
import signal
import sys
import traceback
from typing import Any

PRELOAD = (
    "ipykernel.kernelapp",
    "ipykernel.ipkernel",
    "ipykernel.zmqshell",
    "ipykernel.debugger",
    "IPython.core.interactiveshell",
    "IPython.core.oinspect",
    "IPython.core.debugger",
    "IPython.core.completerlib",
    "tornado.platform.asyncio",
    "psutil",
    "pdb",
    "sqlite3",
)

#: the backend ipykernel sets (MPLBACKEND) where the environment names none
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"


def _child(request: dict[str, Any]) -> None:
    code = 1
    try:
        os.setsid()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        devnull = os.open(os.devnull, os.O_RDWR)
        stderr = devnull
        if request.get("stderr"):
            stderr = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        os.dup2(stderr, 2)
        os.environ.clear()
        os.environ.update(request["env"])
        os.environ["JPY_PARENT_PID"] = str(os.getppid())
        os.chdir(request["cwd"])
        matplotlib = sys.modules.get("matplotlib")
        if matplotlib is not None:
            # preloaded, it read MPLBACKEND from the server's environment: take the
            # kernel's, or the inline backend that ipykernel makes the default
            with contextlib.suppress(Exception):
                matplotlib.rcParams["backend"] = os.environ.get("MPLBACKEND") or INLINE_BACKEND
        random.seed()
        # ipykernel read JPY_PARENT_PID when the server imported it, before this fork:
        # name the parent on the command line, so the kernel exits when the server does
        # (and the server exits when mlnb does: its stdin closes)
        argv = [*request["argv"], f"--IPKernelApp.parent_handle={os.getppid()}"]
        sys.argv = ["ipykernel_launcher", *argv]
        from ipykernel.kernelapp import IPKernelApp

        IPKernelApp.launch_instance(argv=argv)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def main() -> None:
    """Serve fork requests until stdin closes."""
    import importlib

    # what a kernel imports on its way up, measured with -X importtime
    for module in (*PRELOAD, *sys.argv[1:]):
        with contextlib.suppress(Exception):
            importlib.import_module(module)

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the system
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is mlnb's to handle
    out = sys.stdout
    out.write('{"ready": true}\n')
    out.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request)
        out.write(json.dumps({"pid": pid}) + "\n")
        out.flush()
    # nothing to flush or clean up (each kernel is its own process), while tearing
    # down an interpreter that preloaded mlflow or alibi-detect takes 1-4 s
    os._exit(0)


if __name__ == "__main__":
    main()
