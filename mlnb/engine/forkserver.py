"""Start kernels by forking a process that has already imported ipykernel.

A kernel's start-up is mostly importing IPython and ipykernel: about half a
second of CPU each time. A fork server pays it once per pipeline run; each
kernel is then a ``fork()`` of that process running ``IPKernelApp`` with its
own connection file, environment and directory — the same program
``python -m ipykernel_launcher`` runs, so a notebook sees an ordinary fresh
kernel (its own process, nothing of a previous stage).

It plugs into jupyter_client as a provisioner: :class:`ForkProvisioner` asks
the server for a process instead of ``Popen``, and everything else (connection
files, ports, shutdown) stays jupyter_client's. Kernels whose command is not
this interpreter's ``ipykernel_launcher`` start the ordinary way, as do all
kernels where ``fork`` is missing or the server fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from jupyter_client.provisioning import LocalProvisioner


class ForkedProcess:
    """The part of :class:`subprocess.Popen` that jupyter_client uses, for a forked pid.

    The fork server lets the system reap its children, so an exit status is
    not known: a vanished process reports ``-SIGKILL``.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        # Popen's pipes, which LocalProvisioner closes after a kernel exits: none here
        self.stdin = self.stdout = self.stderr = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                self.returncode = -signal.SIGKILL
            except PermissionError:
                pass
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout or 0)
            time.sleep(0.01)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServer:
    """A ``python -m mlnb._zygote`` process and the pipe that drives it."""

    def __init__(self, preload: Sequence[str] = ()) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None
        self._failed = False
        self._preload = list(preload)
        self.flags: list[str] = []

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, flags: Sequence[str] = ()) -> None:
        """Start the server process with interpreter ``flags`` (its imports run meanwhile)."""
        with self._lock:
            if self._proc is not None or self._failed or not hasattr(os, "fork"):
                return
            self.flags = list(flags)
            self._proc = subprocess.Popen(
                [sys.executable, *self.flags, "-m", "mlnb.engine._zygote", *self._preload],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                bufsize=1,
                start_new_session=True,
            )
            self._ready = False

    def usable_for(self, cmd: list[str]) -> list[str] | None:
        """The kernel's arguments if ``cmd`` runs this interpreter's ipykernel launcher.

        The server starts on first use, with the interpreter flags of that
        command (``ipykernel install`` writes ``-Xfrozen_modules=off``, for
        example); a command with other flags starts the ordinary way.
        """
        if self._failed or "ipykernel_launcher" not in cmd:
            return None
        index = cmd.index("ipykernel_launcher")
        flags = cmd[1 : index - 1]
        if index < 2 or cmd[index - 1] != "-m" or not all(f.startswith("-") for f in flags):
            return None
        if not _same_interpreter(cmd[0], sys.executable):
            return None
        self.start(flags)
        return cmd[index + 1 :] if self.flags == flags else None

    def spawn(self, argv: list[str], env: Mapping[str, str], cwd: str, stderr: str | None) -> int:
        """Fork a kernel; return its pid.

        Raises:
            OSError: the server is not running or did not answer.
        """
        request = json.dumps({"argv": argv, "env": dict(env), "cwd": cwd, "stderr": stderr})
        with self._lock:
            proc = self._proc
            if proc is None or proc.stdin is None or proc.stdout is None:
                raise OSError("the kernel fork server is not running")
            try:
                if not self._ready:
                    if not proc.stdout.readline().strip():
                        raise OSError("the kernel fork server did not start")
                    self._ready = True
                proc.stdin.write(request + "\n")
                proc.stdin.flush()
                answer = proc.stdout.readline()
                return int(json.loads(answer)["pid"])
            except (OSError, ValueError, KeyError) as exc:
                self._failed = True
                raise OSError(f"the kernel fork server failed: {exc}") from exc

    def stop(self) -> None:
        """End the server (its kernels are stopped by their managers)."""
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.stdin:
                proc.stdin.close()
            proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


def _same_interpreter(a: str, b: str) -> bool:
    """Whether two interpreter paths run the same environment (``python`` and
    ``python3`` of one virtual environment do; the base interpreter it links to does not)."""
    first, second = os.path.abspath(a), os.path.abspath(b)
    return os.path.dirname(first) == os.path.dirname(second) and (
        os.path.realpath(first) == os.path.realpath(second)
    )


class ForkProvisioner(LocalProvisioner):
    """A jupyter_client provisioner that forks kernels from a :class:`ForkServer`."""

    server: ForkServer | None = None
    stderr_path: str | None = None

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> Any:
        server = self.server
        argv = server.usable_for(cmd) if server is not None else None
        if server is None or argv is None:
            return await super().launch_kernel(cmd, **kwargs)
        env = kwargs.get("env") or dict(os.environ)
        cwd = str(kwargs.get("cwd") or Path.cwd())
        try:
            pid = server.spawn(argv, env, cwd, self.stderr_path)
        except OSError:
            return await super().launch_kernel(cmd, **kwargs)
        # jupyter_client types its process as Popen; it uses only what ForkedProcess has
        self.process = cast("subprocess.Popen[Any]", ForkedProcess(pid))
        self.pid = pid
        self.pgid = pid  # the child makes itself a session (and group) leader
        self.cwd = cwd
        return self.connection_info
