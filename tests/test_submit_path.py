"""No job without its answer: a job is stored and charged only in the step
that makes the 1000 answer its caller receives. A failure at any step of the
submit path before that answer leaves no job and no credit spent."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from compositor.mirror import accounts, controls, service
from compositor.mirror.jobs import Job
from tests.inprocess import KEY, SUBMIT, body, credits_used, in_process_mirror


class Broken(RuntimeError):
    pass


def _fail(*_: object, **__: object) -> Any:
    raise Broken("a forced failure")


class _FailingConnection:
    """The store's SQLite connection, failing the statement that starts with `prefix`."""

    def __init__(self, real: sqlite3.Connection, prefix: str) -> None:
        self._real = real
        self._prefix = prefix

    def execute(self, sql: str, *args: Any) -> Any:
        if sql.lstrip().upper().startswith(self._prefix):
            raise sqlite3.OperationalError("disk I/O error")
        return self._real.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def _break_statement(prefix: str) -> Callable[[pytest.MonkeyPatch, Any], None]:
    def apply(monkeypatch: pytest.MonkeyPatch, mirror: Any) -> None:
        monkeypatch.setattr(mirror.store._database, "_db", _FailingConnection(mirror.store._database._db, prefix))

    return apply


STEPS: dict[str, Callable[[pytest.MonkeyPatch, Any], None]] = {
    "the rate check": lambda mp, m: mp.setattr(m.accounts, "check_rate", _fail),
    "validation": lambda mp, m: mp.setattr(service, "validate", _fail),
    "the job policy": lambda mp, m: mp.setattr(controls.Policies, "take", _fail),
    "the credit charge": _break_statement("UPDATE CREDITS"),
    "the job's row": _break_statement("INSERT INTO JOBS"),
    "the answer": lambda mp, m: mp.setattr(Job, "to_api", _fail),
    "the commit": _break_statement("COMMIT"),
}


@pytest.mark.parametrize("step", list(STEPS))
def test_a_failure_at_any_step_of_a_submit_leaves_no_job_and_no_charge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    with in_process_mirror(tmp_path / "data") as (mirror, client):
        with monkeypatch.context() as patched:
            STEPS[step](patched, mirror)
            answer = client.request("POST", SUBMIT, headers=KEY, content=json.dumps(body()))
        assert answer.status_code in (500, 503) and answer.json()["code"] != 1000
        assert mirror.store.jobs() == []
        assert credits_used(mirror) == 0
        after = client.request("POST", SUBMIT, headers=KEY, content=json.dumps(body())).json()
        assert after["code"] == 1000 and [job.id for job in mirror.store.jobs()] == [after["data"]["_id"]]
        assert credits_used(mirror) == accounts.CREDITS_PER_JOB
