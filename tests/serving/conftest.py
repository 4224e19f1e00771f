"""Fixtures: one store and one shared server for the session, and servers of a test's own."""

from __future__ import annotations

import signal
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.serving.helpers import SMALL_LIMIT, Server, Store


@pytest.fixture(scope="session", autouse=True)
def no_telemetry() -> Iterator[None]:
    """MLflow calls in this process send no usage events: nothing leaves 127.0.0.1."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DO_NOT_TRACK", "true")
        yield


@pytest.fixture(scope="session")
def store(no_telemetry: None, tmp_path_factory: pytest.TempPathFactory) -> Store:
    """The registered models of :class:`~tests.serving.helpers.Store`, built once."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Hint: Inferred schema contains integer", UserWarning)
        return Store(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="package")  # stopped before other packages check for leftovers
def server(store: Store, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The shared server of ``cancer@champion`` (version 1), for tests that move no alias."""
    running = Server(tmp_path_factory.mktemp("shared"), store, "cancer", max_body_bytes=SMALL_LIMIT)
    yield running
    running.stop()


@pytest.fixture
def start(store: Store, tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start servers of the test's own; every one is stopped when the test ends."""
    started: list[Server] = []

    def run(model: str, **options: Any) -> Server:
        started.append(Server(tmp_path / f"server{len(started)}", store, model, **options))
        return started[-1]

    yield run
    for running in started:
        running.stop(signal.SIGKILL)
