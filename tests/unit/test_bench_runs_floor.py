"""`bench.runs`' bare + state side: its round trips and how the tables show it."""

from __future__ import annotations

from bench.runs import (
    BARE,
    FLOOR,
    FLUX,
    REDIS_ROWS,
    SEGMENTS,
    STATE_TRIPS,
    breakdown_table,
    cost_table,
    floor_commands,
    parse_args,
)


def test_the_floor_makes_the_mesh_s_round_trips_on_the_way_to_the_answer() -> None:
    # 26 a run in the mesh: these 19, the indexer's 2 after the answer, and StreamRun's
    # XREADs, which the floor makes as the bare chain does (woken by its events).
    assert sum(floor_commands(step) for step in STATE_TRIPS) == 19
    assert {step for *_, step in REDIS_ROWS if step} == set(STATE_TRIPS)
    kinds = {kind for before, after in STATE_TRIPS.values() for kind in before + after}
    assert kinds == {"state", "event"}
    # accepted, planned, the tool's started and finished: the answer is the bare chain's
    events = [k for before, after in STATE_TRIPS.values() for k in before + after if k == "event"]
    assert len(events) == 4


def test_the_cost_table_counts_the_floor_s_commands() -> None:
    costs = {"run: redis gateway": 2.0, "stream: redis gateway": 7.0}
    table = cost_table(costs, 1.0, 4.0)
    assert table.splitlines()[0].rstrip("| ").endswith(FLOOR)
    rows = {line.split("|")[1].strip(): line for line in table.splitlines()[2:]}
    assert rows["Redis commands, composer"].rstrip("| ").endswith("6")  # 4 + its pipeline
    assert "7 (4 XREAD BLOCK)" in rows["Redis commands, gateway's StreamRun"]
    assert rows["Redis commands in all"].rstrip("| ").endswith("25")  # 19 + 2 + 4
    assert FLOOR not in cost_table(costs, 1.0, None)


def test_the_breakdown_sets_agentflux_beside_the_floor_when_it_ran() -> None:
    n = len(SEGMENTS)
    got = {BARE: ([1.0] * n, 9.0, 10), FLUX: ([3.0] * n, 30.0, 10)}
    assert FLOOR not in breakdown_table(got)
    got[FLOOR] = ([2.0] * n, 15.0, 10)
    table = breakdown_table(got)
    header, *_, whole = table.splitlines()
    assert f"{FLUX} - {FLOOR}" in header
    assert whole.split("|")[-2].strip() == "+15.00"  # 30 - 15
    assert "10 bare + state" in whole


def test_the_floor_is_a_side_unless_left_out() -> None:
    assert parse_args([]).floor is True
    assert parse_args(["--no-floor"]).floor is False
