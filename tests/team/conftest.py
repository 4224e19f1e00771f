"""A team's setup for real: PostgreSQL, S3 on moto and ``mlflow server`` as separate processes.

Session-scoped fixtures, each started once per test session and stopped by its
PID when the session ends:

- ``postgres``: a throwaway cluster started from PostgreSQL's own binaries
  (``initdb`` + ``postgres``; found in PATH, ``/usr/local/bin`` or
  ``/usr/lib/postgresql/*/bin``, the tests skip without them). PostgreSQL
  refuses to run as root, so under root it runs as the ``postgres`` user, or
  ``nobody``, switched to by :class:`subprocess.Popen` itself (no ``runuser``
  in between, so the PID is the postmaster's).
- ``s3``: ``moto_server`` with a bucket ``mlnb``.
- ``mlflow_server``: ``mlflow server`` on that PostgreSQL, proxying artifacts to
  ``s3://mlnb/artifacts``; ``stop()`` and ``start()`` take it down and bring it
  back on the same port.

Everything listens on 127.0.0.1 only. Logs are in the session's temporary
folder (``team*/``); the end of a log is in the error when a process does not
come up. How long each took to start is printed at the end of the session.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.helpers import free_port

BIN = Path(sys.executable).parent
AWS_KEYS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
BUCKET = "mlnb"
#: seconds each service took to come up, printed at the end of the session
STARTUP: dict[str, float] = {}


# --- processes ---------------------------------------------------------------------------------


class Process:
    """One server process: started with its output in ``log``, stopped by its PID.

    ``user`` (a name) runs it as that user; only root can.
    """

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        log: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        user: str | None = None,
    ) -> None:
        self.name = name
        self.args = list(args)
        self.log = log
        self.env = env
        self.cwd = cwd
        self.user = user
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        assert not self.running(), f"{self.name} runs already (PID {self.pid})"
        with open(self.log, "ab") as log:
            log.write(f"--- {time.strftime('%H:%M:%S')} {' '.join(self.args)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                **_as_user(self.user),
            )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        """Send ``sig`` to the PID and wait; SIGKILL it (and children left behind) if need be."""
        if self.proc is None:
            return
        proc = self.proc
        if proc.poll() is None:
            try:
                children = psutil.Process(proc.pid).children(recursive=True)
            except psutil.Error:
                children = []
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            _gone, alive = psutil.wait_procs(children, timeout=5)
            for child in alive:
                with contextlib.suppress(psutil.Error):
                    child.kill()
            psutil.wait_procs(alive, timeout=5)

    def tail(self, chars: int = 4000) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return f"(no log at {self.log})"
        return f"--- end of {self.log}:\n{text[-chars:]}"

    def wait_until(self, ready: Callable[[], bool], what: str, timeout: float) -> float:
        """Poll ``ready()`` until it is true; the seconds it took. Fails with the log's end."""
        started = time.monotonic()
        while True:
            if not self.running():
                code = self.proc.returncode if self.proc is not None else None
                raise AssertionError(f"{self.name} exited ({code}) before {what}\n{self.tail()}")
            if ready():
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise AssertionError(
                    f"{self.name}: not {what} within {timeout:.0f} s\n{self.tail()}"
                )
            time.sleep(0.05)


def _as_user(user: str | None) -> dict[str, Any]:
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def http_answers(url: str, status: int | None = None) -> Callable[[], bool]:
    """A check that ``GET url`` gets an answer (with ``status``, if given)."""

    def check() -> bool:
        try:
            got = httpx.get(url, timeout=2, trust_env=False)
        except httpx.HTTPError:
            return False
        return status is None or got.status_code == status

    return check


def service_env(**extra: str) -> dict[str, str]:
    """This environment without MLFLOW_*/AWS_* settings or AWS config files, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    no_proxy = ",".join(filter(None, [env.get("NO_PROXY", ""), "127.0.0.1,localhost"]))
    env.update(
        DO_NOT_TRACK="true",
        NO_PROXY=no_proxy,
        no_proxy=no_proxy,
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
        **AWS_KEYS,
        **extra,
    )
    return env


@pytest.fixture(scope="session")
def team_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the services log and work."""
    return tmp_path_factory.mktemp("team")


# --- PostgreSQL --------------------------------------------------------------------------------


def postgres_bin() -> Path | None:
    """The folder with PostgreSQL's ``initdb`` and ``postgres``, newest version first."""
    candidates: list[Path] = []
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).parent)
    candidates.append(Path("/usr/local/bin"))

    def version(folder: str) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", Path(folder).parent.name))

    versioned = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += [Path(f) for f in sorted(versioned, key=version, reverse=True)]
    for folder in candidates:
        if all(os.access(folder / name, os.X_OK) for name in ("initdb", "postgres")):
            return folder
    return None


def postgres_user() -> str | None:
    """Whom PostgreSQL runs as: us, unless we are root (which it refuses)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    pytest.skip("running as root, and neither a 'postgres' nor a 'nobody' user to run PostgreSQL")


@dataclass
class Postgres:
    host: str
    port: int
    user: str
    dbname: str
    process: Process

    @property
    def uri(self) -> str:
        """The SQLAlchemy URI of the ``mlflow`` database (psycopg 3)."""
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{self.dbname}"

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def connect(self, dbname: str | None = None) -> Any:
        import psycopg

        return psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            dbname=dbname or self.dbname,
            autocommit=True,
            connect_timeout=5,
        )


@pytest.fixture(scope="session")
def postgres(team_dir: Path) -> Iterator[Postgres]:
    """A PostgreSQL cluster of its own, with a database ``mlflow`` for ``mlflow server``."""
    psycopg = pytest.importorskip("psycopg")
    folder = postgres_bin()
    if folder is None:
        pytest.skip(
            "PostgreSQL's initdb/postgres not found in PATH, /usr/local/bin or "
            "/usr/lib/postgresql/*/bin (Debian: apt-get install postgresql)"
        )
    user = postgres_user()
    # outside pytest's folders, which only we may enter: PostgreSQL may run as another user
    data_root = Path(tempfile.mkdtemp(prefix="mlnb-team-pg-"))
    try:
        sockets = data_root / "sockets"
        sockets.mkdir()
        if user is not None:
            entry = pwd.getpwnam(user)
            for path in (data_root, sockets):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        started = time.monotonic()
        initdb_args = [
            str(folder / "initdb"), "-A", "trust", "-U", "mlnb", "-D", str(data_root / "pg"),
            "-E", "UTF8", "--no-locale", "--no-sync",
        ]  # fmt: skip
        initdb = subprocess.run(
            initdb_args,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=data_root,
            **_as_user(user),
        )
        if initdb.returncode != 0:
            raise AssertionError(
                f"initdb failed ({initdb.returncode}):\n{initdb.stdout}\n{initdb.stderr}"
            )
        port = free_port()
        args = [
            str(folder / "postgres"), "-D", str(data_root / "pg"),
            "-p", str(port), "-k", str(sockets), "-h", "127.0.0.1",
            # a throwaway cluster: no waiting for the disk
            "-F", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
        ]  # fmt: skip
        process = Process(
            "postgres",
            args,
            log=team_dir / "postgres.log",
            cwd=data_root,
            user=user,
        )
        process.start()
        try:
            server = Postgres("127.0.0.1", port, "mlnb", "mlflow", process)

            def accepts() -> bool:
                try:
                    server.connect("postgres").close()
                except psycopg.OperationalError:
                    return False
                return True

            process.wait_until(accepts, "accepting connections", timeout=60)
            with server.connect("postgres") as conn:
                conn.execute("CREATE DATABASE mlflow")
            STARTUP["postgres (initdb + start)"] = time.monotonic() - started
            yield server
        finally:
            process.stop(signal.SIGINT)  # fast shutdown: disconnects clients still connected
    finally:
        shutil.rmtree(data_root, ignore_errors=True)


# --- S3 on moto --------------------------------------------------------------------------------


@dataclass
class S3:
    endpoint: str
    bucket: str
    process: Process
    started: float

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=AWS_KEYS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=AWS_KEYS["AWS_SECRET_ACCESS_KEY"],
            region_name=AWS_KEYS["AWS_DEFAULT_REGION"],
        )

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2")
        found = pages.paginate(Bucket=self.bucket, Prefix=prefix)
        return [item["Key"] for page in found for item in page.get("Contents", [])]


@pytest.fixture(scope="session")
def _moto(team_dir: Path) -> Iterator[S3]:
    """``moto_server`` started but not waited for, so that it boots while PostgreSQL starts."""
    port = free_port()
    process = Process(
        "moto_server",
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        log=team_dir / "moto.log",
        env=service_env(),
        cwd=team_dir,
    )
    started = time.monotonic()
    process.start()
    try:
        yield S3(f"http://127.0.0.1:{port}", BUCKET, process, started)
    finally:
        process.stop()


@pytest.fixture(scope="session")
def s3(_moto: S3) -> S3:
    """An S3 endpoint (``moto_server``) with the bucket ``mlnb``: ``.endpoint``, ``.bucket``."""
    pytest.importorskip("boto3")
    _moto.process.wait_until(http_answers(_moto.endpoint), "answering HTTP", timeout=60)
    _moto.client().create_bucket(Bucket=_moto.bucket)
    STARTUP["s3 (moto_server)"] = time.monotonic() - _moto.started
    return _moto


# --- mlflow server -----------------------------------------------------------------------------


class MlflowServer:
    """``mlflow server`` on ``postgres``, artifacts proxied to ``s3://<bucket>/artifacts``."""

    def __init__(self, postgres: Postgres, s3: S3, folder: Path, timeout: float = 90) -> None:
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.timeout = timeout
        self.starts: list[float] = []
        args = [
            str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port),
            "--backend-store-uri", postgres.uri,
            "--serve-artifacts", "--artifacts-destination", f"s3://{s3.bucket}/artifacts",
            "--workers", "1",
        ]  # fmt: skip
        self.process = Process(
            "mlflow server",
            args,
            log=folder / "mlflow-server.log",
            env=service_env(
                MLFLOW_S3_ENDPOINT_URL=s3.endpoint,
                # no job runner (huey consumers) beside the server: mlnb runs no MLflow jobs
                MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
            ),
            cwd=folder,
        )

    @property
    def pid(self) -> int | None:
        """The ``mlflow server`` process's PID (uvicorn runs as its child), None when stopped."""
        return self.process.pid if self.process.running() else None

    def start(self) -> float:
        """Start the server on its port and wait for ``/health``; the seconds it took."""
        started = time.monotonic()
        self.process.start()
        try:
            self.process.wait_until(
                http_answers(f"{self.uri}/health", 200), "answering /health", self.timeout
            )
        except BaseException:
            self.process.stop()
            raise
        took = time.monotonic() - started
        self.starts.append(took)
        return took

    def stop(self) -> None:
        """Take the server down (SIGTERM to its PID; it stops uvicorn) and wait until it is."""
        self.process.stop(signal.SIGTERM)

    def tail(self, chars: int = 4000) -> str:
        return self.process.tail(chars)


@pytest.fixture(scope="session")
def mlflow_server(_moto: S3, postgres: Postgres, s3: S3, team_dir: Path) -> Iterator[MlflowServer]:
    """A running ``mlflow server``: ``.uri``, ``.pid``, ``stop()`` and ``start()``."""
    server = MlflowServer(postgres, s3, team_dir)
    try:
        STARTUP["mlflow server (first start, migrations)"] = server.start()
        yield server
    finally:
        server.stop()
        if len(server.starts) > 1:
            restarts = server.starts[1:]
            STARTUP["mlflow server (restart, mean)"] = sum(restarts) / len(restarts)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if STARTUP:
        took = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in STARTUP.items())
        terminalreporter.write_line(f"team services started: {took}")
