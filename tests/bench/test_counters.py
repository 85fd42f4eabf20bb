"""The deterministic counters behind docs/BENCHMARKS.md's "Round trips: what a ping costs"."""

from __future__ import annotations

from bench.api_calls import BytecodeCounter
from bench.write_cost import measure


def _short() -> int:
    return 1


def _longer(n: int) -> int:
    total = 0
    for i in range(n):
        total += i
    return total


def test_bytecode_counter_charges_each_function_its_own_bytecodes_and_repeats_exactly() -> None:
    runs = []
    for _ in range(2):
        counter = BytecodeCounter()
        counter.enable()
        _short()
        _longer(10)
        counter.disable()
        runs.append(counter.counts)
    assert runs[0] == runs[1]
    by_name = {where.rsplit("(", 1)[1].rstrip(")"): n for where, n in runs[0].items()}
    assert 0 < by_name["_short"] < by_name["_longer"]
    counter = BytecodeCounter()
    counter.enable()
    _longer(20)
    counter.disable()
    more = {where.rsplit("(", 1)[1].rstrip(")"): n for where, n in counter.counts.items()}
    assert more["_longer"] > by_name["_longer"]  # ten more turns of the loop


def test_write_cost_times_both_shapes_of_a_write_over_a_real_socket() -> None:
    got = measure(200, rounds=2, writes=200)
    assert set(got) == {"write", "writev"}
    for total, system in got.values():
        # getrusage's user and system times are rounded apart: system may exceed the total
        # by a rounding error when user time rounds to 0.
        assert total > 0 and 0 <= system <= total + 1e-6
