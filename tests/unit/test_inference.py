"""The shape check `launcher infer` (the chart's helm test) applies to an answer."""

from __future__ import annotations

import json

import pytest

from launcher.inference import answer_problem

GOOD = {"model_name": "ensemble", "outputs": [
    {"name": "text_output", "datatype": "BYTES", "shape": [1, 1], "data": ["pong"]},
    {"name": "RANKS", "datatype": "INT32", "shape": [1], "data": [2]}]}


def test_a_well_formed_answer_passes() -> None:
    assert answer_problem(json.dumps(GOOD).encode()) is None


@pytest.mark.parametrize(("body", "problem"), [
    (b"<html>", "not JSON"),
    (b'{"outputs": []}', "no outputs"),
    (b'{"error": "x"}', "no outputs"),
    (b'[1]', "no outputs"),
    (json.dumps({"outputs": [{"name": "a", "shape": [1], "data": [1]}]}).encode(), "lacks name, datatype"),
    (json.dumps({"outputs": [{"name": "a", "datatype": "FP32", "shape": [2, 2], "data": [1]}]}).encode(),
     "output a: shape [2, 2] holds 4 elements but data has 1"),
])
def test_malformed_answers_are_named(body: bytes, problem: str) -> None:
    found = answer_problem(body)
    assert found is not None and problem in found
