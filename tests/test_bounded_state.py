"""Bounded state: what callers can make the mirror hold has documented caps,
and what would pass them is refused with the field named, changing nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compositor.mirror.controls import (
    JOURNAL_SIZE,
    MAX_CLIENT_ID_CHARS,
    MAX_FAULT_RULES,
    MAX_SCENARIO_BYTES,
    ControlInputError,
    Faults,
    Journal,
    load_scenario,
)
from tests.inprocess import in_process_mirror

JSON = {"content-type": "application/json"}


def test_fault_rules_stop_at_their_cap_naming_the_field() -> None:
    faults = Faults()
    for _ in range(MAX_FAULT_RULES):
        faults.add({"code": 1003})
    with pytest.raises(ControlInputError) as refused:
        faults.add({"code": 1003})
    assert refused.value.field == "faults" and len(faults.rules()) == MAX_FAULT_RULES
    faults.remove(faults.rules()[0]["id"])
    faults.add({"code": 1005})  # room again once one is removed


def test_the_control_plane_answers_400_at_the_cap(tmp_path: Path) -> None:
    with in_process_mirror(tmp_path / "data") as (mirror, client):
        for _ in range(MAX_FAULT_RULES):
            mirror.controls.faults.add({"latency_ms": 1})
        answer = client.request("POST", "/_mirror/faults", content=json.dumps({"code": 1003}), headers=JSON)
        assert answer.status_code == 400 and answer.json()["field"] == "faults"


def test_a_client_id_in_a_rule_has_a_length_cap() -> None:
    with pytest.raises(ControlInputError) as refused:
        Faults().add({"code": 1003, "client_id": "c" * (MAX_CLIENT_ID_CHARS + 1)})
    assert refused.value.field == "client_id"


def test_the_journal_keeps_its_size() -> None:
    journal = Journal()
    for index in range(JOURNAL_SIZE + 50):
        journal.record(
            method="GET", path=f"/{index}", operation="info", client_id=None, http_status=200, code=1000,
            latency_ms=1.0, fault=None,
        )  # fmt: skip
    entries = journal.entries()
    assert len(entries) == JOURNAL_SIZE and entries[0]["path"] == "/50"


def test_a_scenario_over_its_size_is_refused_in_one_line(tmp_path: Path) -> None:
    scenario = tmp_path / "big.toml"
    scenario.write_text("# padding\n" * (MAX_SCENARIO_BYTES // 10 + 1))
    with pytest.raises(ControlInputError, match="larger than"):
        load_scenario(scenario)


def test_a_scenario_with_more_rules_than_a_mirror_holds_is_refused(tmp_path: Path) -> None:
    scenario = tmp_path / "many.toml"
    scenario.write_text("[[faults]]\ncode = 1003\n" * (MAX_FAULT_RULES + 1))
    with pytest.raises(ControlInputError) as refused:
        load_scenario(scenario)
    assert refused.value.field.endswith(": faults")
