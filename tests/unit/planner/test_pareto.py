"""The serving report's Pareto fronts (per backend, lower-left is better) on hand-made points, and its figures
drawn from hand-made experiments: the fronts they return and what they say when energy is n/a."""

from __future__ import annotations

import math

import pytest

from lem_planner.report_figures import (
    FigureFiles,
    RequestEnergyBox,
    ServingPoint,
    lower_left_fronts,
    request_energy_figure,
    serving_figure,
)


def test_a_point_is_on_its_backends_front_unless_another_of_that_backend_is_lower_on_both() -> None:
    points = [
        ("vllm", 10.0, 2.0),  # 0: front
        ("vllm", 20.0, 1.0),  # 1: front (cheapest)
        ("vllm", 30.0, 1.5),  # 2: beaten by 1 on both
        ("vllm", 5.0, 3.0),  # 3: front (fastest)
        ("pytorch", 30.0, 1.5),  # 4: vllm's 1 beats it, but it is pytorch's best
        ("pytorch", 40.0, 2.0),  # 5: beaten by 4
        ("vllm", 10.0, 2.5),  # 6: front: 0 ties it on TPOT, so nothing is lower on both
        ("vllm", 20.0, 1.0),  # 7: a duplicate of 1: neither is lower on both
    ]
    assert lower_left_fronts(points) == {"vllm": [3, 0, 6, 1, 7], "pytorch": [4]}
    assert lower_left_fronts([]) == {}
    assert lower_left_fronts([("trtllm", 1.0, 1.0)]) == {"trtllm": [0]}


def test_bad_points_are_refused_naming_the_point() -> None:
    with pytest.raises(ValueError, match=r"points\[1\] y must be a finite number"):
        lower_left_fronts([("vllm", 1.0, 1.0), ("vllm", 2.0, math.nan)])
    with pytest.raises(ValueError, match=r"points\[0\] must be a \(backend, x, y\) tuple"):
        lower_left_fronts([(1.0, 2.0)])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"points\[0\] x must be a finite number"):
        lower_left_fronts([("vllm", "fast", 1.0)])  # type: ignore[list-item]


def _point(index: int, backend: str, tpot_ms: float, goodput: float | None, jpt: float | None) -> ServingPoint:
    return ServingPoint(index, backend, tpot_ms, tpot_ms * 0.9, tpot_ms * 1.1, goodput, None, None, jpt, None, None)


def test_serving_figure_returns_each_backends_front_on_both_panels() -> None:
    points = [
        _point(0, "vllm", 20.0, 4.0, 0.30),
        _point(1, "vllm", 35.0, 7.5, 0.20),
        _point(2, "vllm", 50.0, 7.0, 0.25),  # beaten by e1 on TPOT and J/token, and on goodput too
        _point(3, "pytorch", 60.0, 3.0, 0.50),
    ]
    drawn, fronts = serving_figure(points, "n/a (no NVML)")
    assert fronts == {"tpot": {"vllm": [0, 1], "pytorch": [3]}, "goodput": {"vllm": [1], "pytorch": [3]}}
    svg = FigureFiles().inline(drawn, "plot-serving-tpot", "tpot")
    for gid in ("tpot-tpot-front-vllm", "tpot-tpot-front-pytorch", "tpot-goodput-front-vllm", "tpot-tpot-e2"):
        assert f'id="{gid}"' in svg, gid
    assert "p99 TPOT [ms]" in svg and "goodput [requests/s]" in svg and "n/a" not in svg
    partial = FigureFiles().inline(
        serving_figure([*points, _point(4, "vllm", 40.0, None, None)], "n/a (no NVML)")[0], "plot-serving-tpot", "tpot"
    )
    assert "no J/token for e4: energy n/a (no NVML)" in partial


def test_serving_figure_without_energy_says_so_and_still_places_each_experiment() -> None:
    points = [_point(0, "pytorch", 20.0, None, None), _point(1, "pytorch", 35.0, None, None)]
    drawn, fronts = serving_figure(points, "n/a (no NVML): run on cpu")
    assert fronts == {"tpot": {}}  # no goodput: one panel, and no front without J/token
    svg = FigureFiles().inline(drawn, "plot-serving-tpot", "tpot")
    assert "no J/token: energy n/a (no NVML): run on cpu" in svg
    assert 'id="tpot-tpot-e0"' in svg and 'id="tpot-tpot-e1"' in svg and 'id="tpot-energy-na"' in svg


def test_request_energy_boxes_and_an_experiment_without_energy() -> None:
    boxes = [RequestEnergyBox("e0", [1.0, 2.0, 3.0, 4.0], 4), RequestEnergyBox("e1", [], 8)]
    svg = FigureFiles().inline(request_energy_figure(boxes, "n/a (no NVML)"), "plot-request-energy", "reqe")
    assert 'id="reqe-box-0"' in svg and 'id="reqe-na-1"' in svg and "(8 requests)" in svg
    assert "energy per request [J]" in svg
    none = FigureFiles().inline(
        request_energy_figure([RequestEnergyBox("e0", [], 8)], "n/a (no NVML)"), "plot-request-energy", "reqe"
    )
    assert "no per-request energy: energy n/a (no NVML)" in none and "box-0" not in none
