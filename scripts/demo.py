"""The whole loop, told as a story: train, serve, drift, retrain, shadow, promote, serve v2.

``make demo`` runs this. It works in a fresh project folder ``demo/`` (a copy
of ``pipelines/`` and ``notebooks/`` with its own embedded store
``demo/mlflow.db``), drives the real commands (``mlnb run``, ``mlnb serve``,
``mlnb monitor --once``, ``mlnb status``) and talks to the service over HTTP
on 127.0.0.1. Its monitor promotes on live evidence: the retrained version is
shadowed by the service and becomes champion once it wins on labeled
traffic. Every process it starts, it stops by its PID.

    python scripts/demo.py [--folder demo] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SHIFT = 1.5  # the recalibrated instrument reads every measurement 50 % higher
BATCH = 10  # rows per request
#: the demo's promotion: a retrained challenger is confirmed on the shadow's labeled traffic
ONLINE = "{online: {metric: accuracy, min_labels: 150, min_improvement: 0.02}}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=REPO / "demo")
    args = parser.parse_args()
    story = Story(args.folder.resolve())
    try:
        story.tell()
    finally:
        story.close()
    return 0


class Story:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.server: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.figures: dict[str, Any] = {}

    # -- the plot ------------------------------------------------------------------

    def tell(self) -> None:
        started = time.perf_counter()
        self.setup()
        rows, labels = self.data()
        today, drifted, later = rows.iloc[:200], rows.iloc[200:400], rows.iloc[400:]
        today_labels, drifted_labels = labels.iloc[:200], labels.iloc[200:400]
        later_labels = labels.iloc[400:]

        self.chapter("1. Train and promote v1")
        self.mlnb("run", "pipelines/cancer.yaml")
        champion = self.champion()
        self.say(f"→ v{champion['version']} is champion: {champion['reason']}")

        self.chapter("2. Serve it, shadowing whichever version is challenger")
        self.serve("--shadow", "challenger")
        self.say(f"→ mlnb serve cancer --shadow challenger (pid {self.server.pid}) on {self.url}")

        self.chapter("3. Traffic, with labels arriving later")
        accuracy, versions = self.traffic(today, today_labels)
        self.say(
            f"→ {len(today)} rows in {len(today) // BATCH} requests, answered by "
            f"{_versions(versions)}; labels sent to /feedback; live accuracy {accuracy:.3f}"
        )

        self.chapter("4. The monitor checks: nothing to do")
        code = self.mlnb("monitor", "pipelines/monitor.yaml", "--once", check=False)
        check = self.last_check()
        self.say(f"→ exit {code}: {check['decision']}")
        self.say(f"  drift: {check['drift']}")

        self.chapter(f"5. The data shifts: a recalibrated instrument reads ×{SHIFT}")
        shifted = drifted * SHIFT
        drift_arrived = time.time()
        accuracy, versions = self.traffic(shifted, drifted_labels)
        self.say(
            f"→ {len(shifted)} shifted rows answered by {_versions(versions)}; "
            f"live accuracy falls to {accuracy:.3f}"
        )

        self.chapter("6. The monitor detects the drift and retrains; the gate passes v2 offline")
        code = self.mlnb("monitor", "pipelines/monitor.yaml", "--once", check=False)
        check = self.last_check()
        self.say(f"→ exit {code}: {check['decision']}")
        self.say(f"  evidence: {check['evidence']}")
        challenger = self.version_of("challenger")
        if code != 3 or challenger == self.champion()["version"]:
            raise SystemExit(f"the retrain did not register a challenger to confirm (exit {code})")
        self.say(f"  champion stays v{self.champion()['version']}; v{challenger} is challenger")

        self.chapter(f"7. The service shadows v{challenger} on live traffic")
        waited = self.until_shadowing(challenger)
        fresh = later * SHIFT
        accuracy, versions = self.traffic(fresh, later_labels)
        self.say(
            f"→ shadowing v{challenger} {waited:.1f} s after the check; {len(fresh)} new shifted "
            f"rows answered by {_versions(versions)} (accuracy {accuracy:.3f}), each scored by "
            f"v{challenger} too and logged under the same request id"
        )

        self.chapter("8. The monitor confirms v2 on the live labels and promotes it")
        code = self.mlnb("monitor", "pipelines/monitor.yaml", "--once", check=False)
        check = self.last_check()
        self.say(f"→ exit {code}: {check['decision']}")
        if check["online"]:
            self.say(f"  online: {check['online']}")
        if code != 4:
            raise SystemExit(f"the live comparison did not promote v{challenger} (exit {code})")

        self.chapter("9. The service answers with the new champion")
        champion = self.champion()
        waited, version = self.until_version(champion["version"], fresh.iloc[:BATCH])
        since_drift = time.time() - drift_arrived
        self.say(
            f"→ v{version} answers {waited:.1f} s after the check ended; {since_drift:.1f} s "
            f"from the first drifted request to v{version} answering: the traffic, the "
            "retrain, the gate, the shadow's live evidence and the promotion"
        )

        self.chapter("10. mlnb status")
        self.mlnb("status")
        self.say(f"\nthe whole story took {time.perf_counter() - started:.0f} s")
        mlnb = os.path.relpath(Path(sys.executable).parent / "mlnb", self.folder)
        self.say(f"look around: cd {_rel(self.folder)} && {mlnb} ui")

    # -- the props -----------------------------------------------------------------

    def setup(self) -> None:
        if self.folder.exists():
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True)
        for name in ("pipelines", "notebooks"):
            shutil.copytree(REPO / name, self.folder / name)
        monitor = self.folder / "pipelines" / "monitor.yaml"
        lines = monitor.read_text().splitlines()
        promotion = [i for i, line in enumerate(lines) if line.startswith("promotion:")]
        if len(promotion) != 1:
            raise SystemExit(f"{monitor} has no one promotion: line to make online")
        lines[promotion[0]] = f"promotion: {ONLINE}   # the demo: champion moves on live evidence"
        monitor.write_text("\n".join(lines) + "\n")
        self.say(f"a fresh project in {_rel(self.folder)} (store: {_rel(self.folder)}/mlflow.db)")

    def data(self) -> tuple[Any, Any]:
        """The data set's rows in a fixed shuffled order: 250 for today, the rest for later."""
        from sklearn.datasets import load_breast_cancer

        frame = load_breast_cancer(as_frame=True).frame
        frame.columns = [c.replace(" ", "_") for c in frame.columns]
        frame = frame.sample(frac=1.0, random_state=7).reset_index(drop=True)
        return frame.drop(columns="target"), frame["target"]

    def mlnb(self, *args: str, check: bool = True) -> int:
        self.say(f"$ mlnb {' '.join(args)}", dim=True)
        env = {**os.environ, "DO_NOT_TRACK": "true", "NO_COLOR": "1", "COLUMNS": "110"}
        done = subprocess.run(
            [sys.executable, "-m", "mlnb", *args],
            cwd=self.folder,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for line in done.stdout.rstrip().splitlines():
            self.say(f"    {line}", dim=True)
        if check and done.returncode != 0:
            raise SystemExit(f"mlnb {' '.join(args)} failed with exit {done.returncode}")
        return done.returncode

    def serve(self, *options: str) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        log = (self.folder / "serve.log").open("wb")
        self.server = subprocess.Popen(
            [sys.executable, "-m", "mlnb", "serve", "cancer", "--port", str(port), *options],
            cwd=self.folder,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "DO_NOT_TRACK": "true"},
        )
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.server.poll() is not None:
                raise SystemExit(f"mlnb serve exited; see {self.folder / 'serve.log'}")
            try:
                with urllib.request.urlopen(f"{self.url}/ping", timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        raise SystemExit("mlnb serve did not answer within 120 s")

    def predict(self, rows: Any) -> dict[str, Any]:
        body = {"dataframe_split": {"columns": list(rows.columns), "data": rows.values.tolist()}}
        return _post(f"{self.url}/invocations", body)

    def traffic(self, rows: Any, labels: Any) -> tuple[float, set[str]]:
        right, versions = 0, set()
        for start in range(0, len(rows), BATCH):
            batch = rows.iloc[start : start + BATCH]
            truth = labels.iloc[start : start + BATCH].tolist()
            answer = self.predict(batch)
            versions.add(str(answer["model_version"]))
            right += sum(int(p) == t for p, t in zip(answer["predictions"], truth, strict=True))
            _post(f"{self.url}/feedback", {"request_id": answer["request_id"], "labels": truth})
        return right / len(rows), versions

    def until_version(self, version: str, rows: Any) -> tuple[float, str]:
        started = time.time()
        while time.time() - started < 60:
            answer = self.predict(rows)
            if str(answer["model_version"]) == str(version):
                return time.time() - started, str(version)
            time.sleep(0.1)
        raise SystemExit(f"the service still answers with v{answer['model_version']} after 60 s")

    def until_shadowing(self, version: str) -> float:
        """Seconds until the service's shadow is ``version``."""
        started = time.time()
        while time.time() - started < 60:
            with urllib.request.urlopen(f"{self.url}/mlnb/health", timeout=10) as response:
                shadow = json.loads(response.read()).get("shadow") or {}
            if str(shadow.get("model_version")) == str(version):
                return time.time() - started
            time.sleep(0.1)
        raise SystemExit(f"the service does not shadow v{version} after 60 s: {shadow}")

    def version_of(self, alias: str) -> str:
        from mlflow import MlflowClient

        uri = f"sqlite:///{self.folder / 'mlflow.db'}"
        client = MlflowClient(uri, uri)
        return str(client.get_model_version_by_alias("cancer", alias).version)

    def champion(self) -> dict[str, Any]:
        from mlflow import MlflowClient

        uri = f"sqlite:///{self.folder / 'mlflow.db'}"
        client = MlflowClient(uri, uri)
        version = client.get_model_version_by_alias("cancer", "champion")
        return {
            "version": str(version.version),
            "reason": version.tags.get("mlnb.gate.reason", ""),
        }

    def last_check(self) -> dict[str, str]:
        from mlflow import MlflowClient

        uri = f"sqlite:///{self.folder / 'mlflow.db'}"
        client = MlflowClient(uri, uri)
        experiment = client.get_experiment_by_name("cancer-monitor")
        run = client.search_runs(
            [experiment.experiment_id],
            filter_string="tags.`mlnb.kind` = 'monitor-check'",
            order_by=["start_time DESC"],
            max_results=1,
        )[0]
        tags = run.data.tags
        return {
            "decision": tags.get("mlnb.monitor.decision", ""),
            "drift": tags.get("mlnb.drift.reason", ""),
            "evidence": tags.get("mlnb.monitor.evidence", ""),
            "online": tags.get("mlnb.online.comparison", ""),
        }

    def chapter(self, title: str) -> None:
        self.say(f"\n{title}", bold=True)

    def say(self, text: str, bold: bool = False, dim: bool = False) -> None:
        if sys.stdout.isatty() and (bold or dim):
            text = f"\033[{'1' if bold else '2'}m{text}\033[0m"
        print(text, flush=True)

    def close(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.send_signal(signal.SIGTERM)
            try:
                self.server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _versions(versions: set[str]) -> str:
    return ", ".join(f"v{v}" for v in sorted(versions))


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
