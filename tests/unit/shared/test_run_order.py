"""The dispatch order of a campaign's runs for each structure, and that a seed replays a shuffled order."""

from __future__ import annotations

from lem_shared.dispatch import run_order


def test_interleaved_runs_every_experiment_once_per_cycle_in_file_order() -> None:
    assert run_order(2, 3, "interleaved", seed=1) == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)]


def test_grouped_runs_all_cycles_of_one_experiment_together() -> None:
    assert run_order(2, 3, "grouped", seed=1) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]


def test_shuffled_keeps_cycles_whole_and_the_seed_replays_the_order() -> None:
    order = run_order(6, 4, "shuffled", seed=42)
    assert order == run_order(6, 4, "shuffled", seed=42)
    assert [c for _, c in order] == sorted(c for _, c in order)  # cycle by cycle
    for cycle in range(4):
        assert sorted(e for e, c in order if c == cycle) == list(range(6))
    per_cycle = [tuple(e for e, c in order if c == cycle) for cycle in range(4)]
    assert len(set(per_cycle)) > 1  # cycles are shuffled independently
    assert order != run_order(6, 4, "shuffled", seed=43)
