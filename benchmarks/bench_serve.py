"""Benchmark: ``mlnb serve`` against ``mlflow models serve`` on the same model and load.

Run with ``.venv/bin/python benchmarks/bench_serve.py``. In one run, on this
machine, everything on 127.0.0.1:

* a fresh SQLite MLflow store in a temporary folder with two registered
  models on the breast cancer data (signatures inferred from an input
  example): ``cheap``, a StandardScaler + LogisticRegression pipeline whose
  predict takes a fraction of a millisecond (serving dominates), and
  ``forest``, the example project's 200-tree random forest, whose predict
  takes about 20 ms (the model dominates);
* per model, servers started and stopped by PID: ``mlnb serve -m
  models:/NAME/1`` with ``--workers 1`` and ``--workers 2`` (prediction log
  on, a tokens file: every request carries a bearer token and is checked),
  ``mlflow models serve -m models:/NAME/1 --env-manager local`` with
  ``--workers 1`` and ``2``, and a no-op ASGI app on the same uvicorn stack
  (uvloop, httptools) that answers without parsing or predicting: the
  ceiling that the load generator and the machine allow;
* a load generator in a separate process (so it shares no GIL with a server):
  ``--clients`` threads, each with its own keep-alive ``httpx.Client``, posting
  the same ``dataframe_split`` body back to back for ``--seconds`` after a
  warm-up; at 1 row and at 100 rows per request.

The servers are measured in turn, ``--rounds`` times, so that each meets the
same machine (a shared one varies by the minute); the best round of each is
printed, with every round's requests/s beside it. Printed: requests/s, rows/s,
p50 and p99 latency (ms, as the client sees it), non-200 answers, the server's
CPU time per request (user + system, its child processes included), and
mlnb's ratios at the same worker count; and, for ``mlnb --workers 1``, the
p99 measured inside the server (the bucket of its own latency histogram that
holds 99 % of the case's requests). MLflow telemetry is switched off, so
nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

MODELS = ("cheap", "forest")
SERVERS = ("no-op", "mlnb-w1", "mlnb-w2", "mlflow-w1", "mlflow-w2")
SIZES = (1, 100)
TOKEN = "bench-" + "0" * 27  # a predict token of the mlnb server; the others ignore the header
JSON_HEADERS = {"content-type": "application/json", "authorization": f"Bearer {TOKEN}"}
NO_TELEMETRY = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
PORT = object()  # stands for the server's port in a command line
NO_OP = """
import sys, uvicorn
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    body = b'{"predictions": [0]}'
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), loop="uvloop", http="httptools",
            lifespan="off", access_log=False, log_level="warning")
"""  # the ceiling: the same HTTP stack and load generator, no parsing, no model


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def register(store: Path) -> tuple[str, Any]:
    """Train and register both models in a new SQLite store; return its URI and the data."""
    import mlflow
    from mlflow import MlflowClient
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    uri = f"sqlite:///{store / 'mlflow.db'}"
    X, y = load_breast_cancer(return_X_y=True, as_frame=True)
    fitted = {
        "cheap": make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(X, y),
        "forest": RandomForestClassifier(n_estimators=200, random_state=0).fit(X, y),
    }
    client = MlflowClient(uri)
    experiment = client.create_experiment("bench", artifact_location=(store / "art").as_uri())
    mlflow.set_tracking_uri(uri)
    try:
        for name, model in fitted.items():
            with mlflow.start_run(experiment_id=experiment):
                mlflow.sklearn.log_model(
                    model,
                    name="model",
                    input_example=X.head(3),
                    pip_requirements=["scikit-learn"],
                    registered_model_name=name,
                    skops_trusted_types=["sklearn.tree._tree.Tree"],  # as the example's train
                )
            client.set_registered_model_alias(name, "champion", "1")
    finally:
        mlflow.set_tracking_uri(None)
    return uri, X


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a server and the processes it started, each by its PID."""
    import psutil

    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    for process in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    _, alive = psutil.wait_procs(children, timeout=10)
    for process in alive:
        process.kill()


def load(
    url: str, body: bytes, clients: int, seconds: float, warmup: float, rate: float | None = None
) -> dict[str, Any]:
    """The load generator (run in its own process): ``clients`` threads, in a closed loop, or
    with ``rate`` at that many requests per second in all (each latency counted from when its
    request was due, so a server that falls behind is not spared its queue)."""
    start_at = time.perf_counter() + warmup
    interval = clients / rate if rate else 0.0
    end_at = start_at + seconds
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    sent = [0] * clients

    def client(i: int) -> None:
        with httpx.Client(timeout=30) as http:
            request = http.build_request("POST", url, content=body, headers=JSON_HEADERS)
            due = time.perf_counter() + interval * i / clients
            while True:
                t0 = time.perf_counter()
                if interval:
                    if due > t0:
                        time.sleep(due - t0)
                    t0, due = due, due + interval
                if t0 >= end_at:
                    return
                response = http.send(request)
                t1 = time.perf_counter()
                sent[i] += 1
                if t0 >= start_at:
                    latencies[i].append(t1 - t0)
                    if response.status_code != 200:
                        errors[i] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = sorted(t for per in latencies for t in per)
    count = len(every)
    return {
        "requests": count,
        "sent": sum(sent),
        "errors": sum(errors),
        "rps": count / seconds,
        "p50_ms": every[count // 2] * 1e3 if count else float("nan"),
        "p99_ms": every[min(count - 1, int(count * 0.99))] * 1e3 if count else float("nan"),
    }


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process and its children so far."""
    import psutil

    total = 0.0
    root = psutil.Process(pid)
    for process in [root, *root.children(recursive=True)]:
        times = process.cpu_times()
        total += times.user + times.system
    return total


def measure(url: str, body: bytes, args: argparse.Namespace, pid: int) -> dict[str, Any]:
    """Run :func:`load` in a separate process; add the server's CPU time per request."""
    config = json.dumps(
        {
            "url": url,
            "clients": args.clients,
            "seconds": args.seconds,
            "warmup": args.warmup,
            "rate": getattr(args, "rate", None),
        }
    )
    with tempfile.NamedTemporaryFile(suffix=".json") as payload:
        payload.write(body)
        payload.flush()
        before = cpu_seconds(pid)
        done = subprocess.run(
            [sys.executable, __file__, "--load", config, payload.name],
            capture_output=True,
            text=True,
            check=True,
            timeout=args.seconds + args.warmup + 120,
        )
    result = json.loads(done.stdout)
    result["cpu_ms"] = (cpu_seconds(pid) - before) / max(result["sent"], 1) * 1e3
    return result


def bodies(X: Any) -> dict[int, bytes]:
    return {
        n: json.dumps({"dataframe_split": X.head(n).to_dict(orient="split")}).encode()
        for n in SIZES
    }


class Running:
    """A server process started for the benchmark."""

    def __init__(self, name: str, command: list[Any], env: dict[str, str], cwd: Path) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.output = (cwd / f"{name}.log").open("wb")
        self.proc = subprocess.Popen(
            [str(self.port) if part == PORT else str(part) for part in command],
            env=env,
            cwd=cwd,
            stdout=self.output,
            stderr=subprocess.STDOUT,
        )

    def close(self) -> None:
        stop(self.proc)
        self.output.close()


def load_arguments(description: str) -> argparse.ArgumentParser:
    """The command line of a benchmark that drives :func:`load`: clients, seconds, rounds."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--seconds", type=float, default=6.0, help="measured seconds per case")
    parser.add_argument("--warmup", type=float, default=1.5, help="unmeasured seconds first")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per case; the best is kept")
    return parser


def main() -> None:
    parser = load_arguments(__doc__.splitlines()[0])
    parser.add_argument("--load", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        config = json.loads(args.load[0])
        body = Path(args.load[1]).read_bytes()
        print(json.dumps(load(config["url"], body, **{k: config[k] for k in config if k != "url"})))
        return

    os.environ.update(NO_TELEMETRY)  # before MLflow is imported: nothing leaves 127.0.0.1
    root = Path(tempfile.mkdtemp(prefix="mlnb-bench-serve-"))
    print(f"store and logs in {root}", file=sys.stderr)
    uri, X = register(root)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(NO_TELEMETRY, MLFLOW_TRACKING_URI=uri)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    (root / "tokens").write_text(f"predict {TOKEN} bench\n")
    rounds: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    inside: dict[tuple[str, int], float] = {}
    for model in MODELS:
        measure_model(model, root, uri, env, bodies(X), args, rounds, inside)
    logged = sum(
        1 for path in (root / "predictions").glob("predictions-*.jsonl") for _ in path.open()
    )
    report(rounds, inside, args)
    print(f"\nmlnb logged {logged} predictions in {root / 'predictions'}")


def commands(model: str, root: Path) -> dict[str, list[Any]]:
    """The servers of one model, by name."""
    mlnb = [
        sys.executable,
        "-m",
        "mlnb.cli",
        "serve",
        "-m",
        f"models:/{model}/1",
        "-p",
        PORT,
        "--log-dir",
        root / "predictions",
        "--tokens",
        root / "tokens",
    ]
    mlflow = [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "-m",
        f"models:/{model}/1",
        "--env-manager",
        "local",
        "-p",
        PORT,
        "-h",
        "127.0.0.1",
    ]
    return {
        "no-op": [sys.executable, "-c", NO_OP, PORT],
        "mlnb-w1": [*mlnb, "--workers", 1],
        "mlnb-w2": [*mlnb, "--workers", 2],
        "mlflow-w1": [*mlflow, "--workers", 1],
        "mlflow-w2": [*mlflow, "--workers", 2],
    }  # fmt: skip


def measure_model(
    model: str,
    root: Path,
    uri: str,
    env: dict[str, str],
    sized: dict[int, bytes],
    args: argparse.Namespace,
    rounds: dict[tuple[str, str, int], list[dict[str, Any]]],
    inside: dict[tuple[str, int], float],
) -> None:
    """Start one model's servers, load each in turn, stop them."""
    servers: list[Running] = []
    try:
        for name, command in commands(model, root).items():
            servers.append(Running(f"{model}-{name}", command, env, root))
        for server in servers:
            wait_ready(f"{server.url}/ping", server.proc)
        for n, body in sized.items():
            for _ in range(args.rounds):
                for server in servers:  # alternate, so all meet the same machine
                    name = server.name.removeprefix(f"{model}-")
                    url = f"{server.url}/invocations"
                    check = httpx.post(url, content=body, headers=JSON_HEADERS)
                    check.raise_for_status()
                    before = histogram(server.url) if name == "mlnb-w1" else None
                    result = measure(url, body, args, server.proc.pid)
                    if before is not None:
                        inside[(model, n)] = min(
                            inside.get((model, n), float("inf")),
                            p99_within(before, histogram(server.url)),
                        )
                    rounds.setdefault((model, name, n), []).append(result)
                    print(
                        f"  {model:6} {name:9} {n:3} row(s): {result['rps']:6.0f} req/s",
                        file=sys.stderr,
                    )
    finally:
        for server in servers:
            server.close()


def histogram(url: str) -> dict[float, float]:
    """mlnb's latency histogram of ``/invocations``: requests answered within each bound (s)."""
    from prometheus_client.parser import text_string_to_metric_families

    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.labels.get("endpoint") == "invocations" and sample.name.endswith("_bucket"):
                buckets[float(sample.labels["le"])] = sample.value
    return buckets


def p99_within(before: dict[float, float], after: dict[float, float]) -> float:
    """The smallest histogram bound (ms) holding 99 % of the requests answered in between."""
    counts = {bound: after[bound] - before.get(bound, 0.0) for bound in sorted(after)}
    total = counts[float("inf")]
    for bound, count in counts.items():
        if total and count >= 0.99 * total:
            return bound * 1e3
    return float("inf")


def report(
    rounds: dict[tuple[str, str, int], list[dict[str, Any]]],
    inside: dict[tuple[str, int], float],
    args: argparse.Namespace,
) -> None:
    """Print the best round of each case side by side, and every round's requests/s."""
    best = {key: max(results, key=lambda r: r["rps"]) for key, results in rounds.items()}
    print(
        f"\n{args.clients} clients, {args.seconds:g} s per case after {args.warmup:g} s warm-up, "
        f"best of {args.rounds} alternating rounds; "
        f"{os.cpu_count()} CPUs shared by servers and load generator"
    )
    for model in MODELS:
        head = (
            f"{'rows':>4} | {'server':9} | {'req/s':>8} | {'rows/s':>9} | {'p50 ms':>7} | "
            f"{'p99 ms':>7} | {'errors':>6} | {'server CPU ms/req':>17} | every round, req/s"
        )
        print(f"\nmodel {model}\n{head}\n{'-' * len(head)}")
        for n in SIZES:
            for name in SERVERS:
                result = best[(model, name, n)]
                every = ", ".join(f"{r['rps']:.0f}" for r in rounds[(model, name, n)])
                print(
                    f"{n:>4} | {name:9} | {result['rps']:8.0f} | {result['rps'] * n:9.0f} | "
                    f"{result['p50_ms']:7.2f} | {result['p99_ms']:7.2f} | {result['errors']:6d} | "
                    f"{result['cpu_ms']:17.3f} | {every}"
                )
            for workers in ("w1", "w2"):
                mlnb, mlflow = (
                    best[(model, f"mlnb-{workers}", n)],
                    best[(model, f"mlflow-{workers}", n)],
                )
                ratio = mlnb["rps"] / mlflow["rps"]
                p99 = mlflow["p99_ms"] / mlnb["p99_ms"]
                print(
                    f"{n:>4} | ratio {workers}  | {ratio:7.1f}x | {ratio:8.1f}x | "
                    f"p99 {p99:.1f}x lower"
                )
            ceiling = best[(model, "mlnb-w1", n)]["rps"] / best[(model, "no-op", n)]["rps"]
            print(
                f"{n:>4} | mlnb-w1 reaches {ceiling:.0%} of the no-op server's requests/s; "
                f"its p99 inside the server is within {inside[(model, n)]:g} ms"
            )


if __name__ == "__main__":
    main()
