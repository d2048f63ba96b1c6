"""`bench.hops --runs N`: each agentflux row's ratios to stock, run by run, and medians."""

from __future__ import annotations

import pytest

from bench.hops import (
    AGENTFLUX,
    RAW,
    STOCK,
    HopResult,
    RateRow,
    Row,
    Stats,
    across,
    across_runs,
    parse_args,
)


def stats(p50: float, p99: float) -> Stats:
    return Stats(n=100, p50=p50, p90=p99, p99=p99, mean=p50, ops_per_s=1000 / p50)


def hop(flux_p50: float, flux_cpu: float | None, *, with_flux: bool = True) -> HopResult:
    """A Kafka hop whose stock baseline has p50 2 ms, p99 4 ms and 100 µs of CPU an op."""
    raw, stock = stats(1.0, 2.0), stats(2.0, 4.0)
    rows = [Row("kafka", "raw", RAW, raw, raw), Row("kafka", "stock", STOCK, stock, raw)]
    rates = []
    if with_flux:
        rows.append(
            Row("kafka", "interceptors", AGENTFLUX, stats(flux_p50, 8.0), raw, stock, "stock")
        )
        if flux_cpu is not None:
            rates.append(
                RateRow(
                    "kafka",
                    "interceptors",
                    AGENTFLUX,
                    300,
                    [1.0],
                    [flux_cpu],
                    [1.0],
                    [50.0],
                    [1.0],
                    [100.0],
                    "stock",
                )
            )
    return HopResult("kafka", rows, rates, stock_variant="stock")


def test_ratios_of_each_run_and_their_median() -> None:
    runs = [[hop(2.2, 110.0)], [hop(3.0, 150.0)], [hop(2.0, 90.0)]]
    (row,) = across(runs)
    assert row.label == "kafka [interceptors]"
    assert row.p50 == pytest.approx([1.1, 1.5, 1.0])
    assert row.p99 == pytest.approx([2.0, 2.0, 2.0])
    assert row.cpu == pytest.approx([1.1, 1.5, 0.9])
    assert row.median(row.p50) == pytest.approx(1.1)
    assert row.median(row.cpu) == pytest.approx(1.1)
    table = across_runs(runs)
    (line,) = [row for row in table.splitlines() if row.startswith("| kafka")]
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells == [
        "kafka [interceptors]",
        "1.10x / 1.50x / 1.00x",
        "1.10x",
        "2.00x / 2.00x / 2.00x",
        "2.00x",
        "1.10x / 1.50x / 0.90x",
        "1.10x",
    ]


def test_a_run_without_the_row_or_its_burst_is_left_out_of_the_median() -> None:
    runs = [[hop(2.2, None)], [hop(3.0, 150.0, with_flux=False)], [hop(4.0, 130.0)]]
    (row,) = across(runs)
    assert row.p50 == pytest.approx([1.1, None, 2.0])
    assert row.cpu == pytest.approx([None, None, 1.3])
    assert row.median(row.p50) == pytest.approx(1.55)
    assert row.median(row.cpu) == pytest.approx(1.3)
    assert "1.10x / - / 2.00x" in across_runs(runs)
    assert across_runs([[]]) == "No agentflux row with a stock baseline finished."


def test_runs_must_be_a_positive_whole_number(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_args(["--runs", "3"]).runs == 3
    assert parse_args([]).runs == 1
    for bad in ("0", "two"):
        with pytest.raises(SystemExit):
            parse_args(["--runs", bad])
        assert "--runs" in capsys.readouterr().err
