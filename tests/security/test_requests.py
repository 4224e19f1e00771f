"""Attacks on request parsing, against a real ``mlnb serve`` process on 127.0.0.1.

Each body is small on the wire and costly to parse: a CSV header of tens of
thousands of columns, a Parquet file whose few hundred kilobytes decode to
50 million rows, JSON objects whose keys make a table of millions of cells,
JSON nested a thousand deep. Each must be refused with a 413 that names the
limit, in well under a second, without the server's memory growing; normal
requests in every format keep their answers.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlnb.serving.parsing import DEFAULT_LIMITS
from tests.serving.helpers import FORMATS, Server, Store, rows_of

pytestmark = pytest.mark.filterwarnings("ignore:Hint. Inferred schema contains integer:UserWarning")

CSV, PARQUET = "text/csv", "application/vnd.apache.parquet"
#: what a refusal may take on a loaded machine (it takes a few hundredths of a second idle;
#: each of these bodies took seconds to minutes before it was bounded)
SECONDS = 2.0


def wide_csv(columns: int) -> bytes:
    """A header of ``columns`` short names and one row of zeros."""
    names = ",".join(f"c{np.base_repr(i, 36)}" for i in range(columns))
    return (names + "\n" + ",".join(["0"] * columns) + "\n").encode()


def parquet_bomb(rows: int = 50_000_000) -> bytes:
    """One int64 column of ``rows`` zeros: a few hundred kilobytes, 400 MB decoded."""
    buffer = io.BytesIO()
    chunk = pa.table({"mean radius": pa.array(np.zeros(1_000_000, dtype=np.int64))})
    with pq.ParquetWriter(buffer, chunk.schema, compression="zstd") as writer:
        for _ in range(rows // 1_000_000):
            writer.write_table(chunk, row_group_size=10_000_000)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    return Store(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def server(store: Store, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server(tmp_path_factory.mktemp("served"), store, "cancer")
    yield running
    running.stop()


def peak_rss_mb(server: Server) -> float:
    """The server process's peak resident memory so far (VmHWM), in MB."""
    status = Path(f"/proc/{server.proc.pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def attack(server: Server, content: bytes, media: str) -> tuple[httpx.Response, float, float]:
    """Post one body; its answer, the seconds it took and the server's peak memory growth."""
    before = peak_rss_mb(server)
    started = time.perf_counter()
    answer = httpx.post(
        f"{server.url}/invocations",
        content=content,
        headers={"content-type": media},
        timeout=120,
    )
    return answer, time.perf_counter() - started, peak_rss_mb(server) - before


def refused(answer: httpx.Response, limit: str) -> str:
    assert answer.status_code == 413, answer.text
    body = answer.json()
    assert body["error_code"] == "REQUEST_LIMIT_EXCEEDED"
    assert f"its limit {limit}" in body["message"]
    return str(body["message"])


@pytest.mark.parametrize(
    ("columns", "size"), [(37_000, 250_000), (560_000, 4_400_000)], ids=["250 KB", "4.4 MB"]
)
def test_a_csv_header_of_many_columns_is_refused_before_pandas_reads_it(
    server: Server, columns: int, size: int
) -> None:
    body = wide_csv(columns)
    assert abs(len(body) - size) < size * 0.1
    answer, took, grew = attack(server, body, CSV)
    message = refused(answer, "max_columns")
    assert f"{columns:,} columns" in message
    assert took < SECONDS, f"{took:.2f} s"
    assert grew < 50, f"{grew:.0f} MB"


def test_a_quoted_header_is_counted_as_csv_reads_it(server: Server) -> None:
    names = ",".join(f'"a,\nb{i}"' for i in range(5_000))  # commas and line breaks in quotes
    answer, took, _ = attack(server, (names + "\n").encode(), CSV)
    assert "5,000 columns" in refused(answer, "max_columns")
    assert took < SECONDS, f"{took:.2f} s"


def test_a_parquet_bomb_is_refused_from_its_footer(server: Server) -> None:
    body = parquet_bomb()
    assert len(body) < 1_000_000  # 50 million rows in well under a megabyte
    answer, took, grew = attack(server, body, PARQUET)
    assert "50,000,000 rows" in refused(answer, "max_rows")
    assert took < SECONDS, f"{took:.2f} s"
    assert grew < 50, f"{grew:.0f} MB"


def test_objects_with_keys_of_their_own_are_refused_before_the_table_is_made(
    server: Server,
) -> None:
    records = [{f"key{i}": 0} for i in range(5_000)]  # 5,000 × 5,000 cells as a table
    body = httpx.Request("POST", "/", json={"dataframe_records": records}).content
    answer, took, grew = attack(server, body, "application/json")
    assert "5,000 columns" in refused(answer, "max_columns")
    assert took < SECONDS, f"{took:.2f} s"
    assert grew < 50, f"{grew:.0f} MB"


def test_too_many_rows_of_json_are_refused(server: Server, store: Store) -> None:
    rows = DEFAULT_LIMITS.max_rows + 1
    body = b'{"instances": [' + b",".join([b"[0]"] * rows) + b"]}"
    answer, took, _ = attack(server, body, "application/json")
    assert f"{rows:,} rows" in refused(answer, "max_rows")
    assert took < SECONDS, f"{took:.2f} s"


def test_a_value_nested_a_thousand_deep_is_refused_not_a_crash(
    server: Server, store: Store
) -> None:
    record: dict[str, object] = {name: 0.5 for name in store.X.columns}
    record["mean radius"] = "[" * 10  # brackets inside strings do not count
    record["mean texture"] = "deep"
    body = orjson.dumps({"dataframe_records": [record]})
    deep = body.replace(b'"deep"', b"[" * 1000 + b"]" * 1000)
    answer, took, _ = attack(server, deep, "application/json")
    assert "1,003 levels of nesting" in refused(answer, "max_json_depth")
    assert took < SECONDS, f"{took:.2f} s"


@pytest.mark.parametrize("shape", FORMATS)
def test_requests_within_the_limits_are_answered_as_before(
    server: Server, store: Store, shape: str
) -> None:
    rows = rows_of(store)
    answer = server.predict(**FORMATS[shape](rows))
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"] == store.predict("1", rows)


def test_one_long_row_among_short_ones_is_refused_before_the_table_is_made(
    server: Server, store: Store
) -> None:
    rows = [[0.5] * 30] * 20_000 + [[0] * 3_000]  # pandas would make 20,001 × 3,000 cells
    body = orjson.dumps({"dataframe_split": {"columns": list(store.X.columns), "data": rows}})
    answer, took, grew = attack(server, body, "application/json")
    assert "60,003,000 values" in refused(answer, "max_cells")
    assert took < SECONDS, f"{took:.2f} s"
    assert grew < 50, f"{grew:.0f} MB"
