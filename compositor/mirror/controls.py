"""The test controls' state and rules: fault rules, the job policy and the
request journal. Nothing here knows about HTTP (`control_routes.py` turns
requests into calls on these) or about jobs' storage (`service.py` stamps a
policy on a job and asks the fault rules before answering).

Every parse function takes what a user sent (JSON from the control plane,
keyword arguments in the mock, a table from a scenario file) and raises
`ControlInputError` naming the field, before anything changes.
"""

from __future__ import annotations

import math
import random
import threading
import time
import tomllib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compositor import text
from compositor.errors import ApiCode

API_OPERATIONS = ("replace", "info", "getToken")
OPERATIONS = (*API_OPERATIONS, "webhook", "*")
FAULT_CODES = {
    ApiCode.PARAMETER_ERROR: "parameter error",
    ApiCode.TOO_FREQUENT: "operation is too frequent",
    ApiCode.QUOTA_NOT_ENOUGH: "quota is not enough",
    ApiCode.INVALID_AUTHORIZATION: "invalid authorization, or the token has expired",
    ApiCode.AUTHORIZATION_EMPTY: "authorization cannot be empty",
    ApiCode.ACCOUNT_BANNED: "the account has been banned",
}
FAULT_HTTP_STATUSES = (429, 500, 502, 503)
MAX_LATENCY_MS = 600_000  # ten minutes: longer is a hang, and a test should say so with `drop`
JOURNAL_SIZE = 1000
# Bounds on what the controls hold, so that no caller can grow the server without end: every rule is
# matched on every API call, and each keeps its own seeded generator (a few KB).
MAX_FAULT_RULES = 1000
MAX_CLIENT_ID_CHARS = 256
MAX_REASON_CHARS = 1000
MAX_SCENARIO_BYTES = 1024 * 1024


class ControlInputError(ValueError):
    """A control call that cannot be taken: `field` names what is wrong, and nothing was changed."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


def _number(raw: dict[str, Any], name: str, low: float, high: float, *, integer: bool) -> Any:
    value = raw.get(name)
    if value is None:
        return None
    ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok_type or (isinstance(value, float) and not math.isfinite(value)):
        raise ControlInputError(name, f"must be {'an integer' if integer else 'a number'}")
    if not low <= value <= high:
        raise ControlInputError(name, f"must be from {_plain(low)} to {_plain(high)}")
    return value


def _plain(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


def _flag(raw: dict[str, Any], name: str) -> bool:
    value = raw.get(name, False)
    if not isinstance(value, bool):
        raise ControlInputError(name, "must be true or false")
    return value


def _unknown_fields(raw: object, known: tuple[str, ...], what: str) -> dict[str, Any]:
    """`raw` as a dict of known fields whose text is all valid Unicode: every
    control input (HTTP, the mock, a scenario file) passes here first."""
    if not isinstance(raw, dict):
        raise ControlInputError("body", f"must be a JSON object ({what})")
    bad_text = text.unencodable_field(raw)
    if bad_text is not None:
        raise ControlInputError(bad_text, text.MESSAGE)
    for name in raw:
        if name not in known:
            raise ControlInputError(str(name), f"is not a field of {what} (known: {', '.join(known)})")
    return raw


@dataclass
class FaultRule:
    """One fault: which calls it matches, what it does to them, how often."""

    id: str
    operation: str = "*"
    client_id: str | None = None
    code: int | None = None
    http_status: int | None = None
    drop: bool = False
    tamper: bool = False
    latency_ms: float = 0
    probability: float = 1.0
    seed: int | None = None
    times: int | None = None
    hits: int = 0
    _draws: random.Random = field(default_factory=random.Random, repr=False)

    @property
    def spent(self) -> bool:
        return self.times is not None and self.hits >= self.times

    @property
    def message(self) -> str:
        return FAULT_CODES[ApiCode(self.code)] if self.code is not None else ""

    def matches(self, operation: str, client_id: str | None) -> bool:
        if self.spent:
            return False
        if self.operation == "*":
            if operation not in API_OPERATIONS:  # webhook deliveries are faulted by "webhook" rules only
                return False
        elif self.operation != operation:
            return False
        return self.client_id is None or self.client_id == client_id

    def as_dict(self) -> dict[str, Any]:
        rule: dict[str, Any] = {"id": self.id, "operation": self.operation, "client_id": self.client_id}
        for name in ("code", "http_status"):
            if getattr(self, name) is not None:
                rule[name] = getattr(self, name)
        for name in ("drop", "tamper"):
            if getattr(self, name):
                rule[name] = True
        rule |= {"latency_ms": self.latency_ms, "probability": self.probability, "seed": self.seed}
        rule |= {"times": self.times, "hits": self.hits}
        return rule


FAULT_FIELDS = (
    "operation",
    "client_id",
    "code",
    "http_status",
    "drop",
    "tamper",
    "latency_ms",
    "probability",
    "seed",
    "times",
)


def parse_fault(raw: object, rule_id: str) -> FaultRule:
    """A fault rule from what a user sent; ControlInputError names the first bad field."""
    raw = _unknown_fields(raw, FAULT_FIELDS, "a fault rule")
    operation = raw.get("operation", "*")
    if operation not in OPERATIONS:
        raise ControlInputError("operation", f"must be one of {', '.join(OPERATIONS)}")
    client_id = raw.get("client_id")
    if client_id is not None and (
        not isinstance(client_id, str) or not client_id or len(client_id) > MAX_CLIENT_ID_CHARS
    ):
        raise ControlInputError("client_id", f"must be a non-empty string of at most {MAX_CLIENT_ID_CHARS} characters")
    code = _number(raw, "code", 0, 10_000, integer=True)
    if code is not None and code not in FAULT_CODES:
        raise ControlInputError("code", f"must be one of {', '.join(str(int(c)) for c in FAULT_CODES)}")
    status = _number(raw, "http_status", 0, 999, integer=True)
    if status is not None and status not in FAULT_HTTP_STATUSES:
        raise ControlInputError("http_status", f"must be one of {', '.join(map(str, FAULT_HTTP_STATUSES))}")
    drop, tamper = _flag(raw, "drop"), _flag(raw, "tamper")
    effects = [name for name, on in (("code", code is not None), ("http_status", status is not None)) if on]
    effects += [name for name, on in (("drop", drop), ("tamper", tamper)) if on]
    if len(effects) > 1:
        raise ControlInputError(effects[1], f"a rule has one effect: both {effects[0]} and {effects[1]} were given")
    if operation == "webhook" and effects and effects[0] in ("code", "http_status"):
        raise ControlInputError(effects[0], "a webhook rule drops, delays or tampers (drop, latency_ms, tamper)")
    if tamper and operation != "webhook":
        raise ControlInputError("tamper", 'only a rule for the operation "webhook" tampers')
    latency = _number(raw, "latency_ms", 0, MAX_LATENCY_MS, integer=False) or 0
    if not effects and not latency:
        raise ControlInputError("code", "a rule needs an effect: code, http_status, drop, tamper or latency_ms")
    probability = _number(raw, "probability", 0, 1, integer=False)
    seed = _number(raw, "seed", -(2**63), 2**63 - 1, integer=True)
    times = _number(raw, "times", 1, 2**31, integer=True)
    return FaultRule(
        id=rule_id,
        operation=operation,
        client_id=client_id,
        code=code,
        http_status=status,
        drop=drop,
        tamper=tamper,
        latency_ms=latency,
        probability=1.0 if probability is None else float(probability),
        seed=seed,
        times=times,
        _draws=random.Random(seed),
    )


class Faults:
    """The fault rules, in the order added. Safe to share between threads."""

    def __init__(self) -> None:
        self._rules: list[FaultRule] = []
        self._lock = threading.Lock()
        self._next_id = 1

    def add(self, raw: object) -> FaultRule:
        with self._lock:
            rule = parse_fault(raw, f"fault-{self._next_id}")
            if len(self._rules) >= MAX_FAULT_RULES:
                raise ControlInputError(
                    "faults", f"there are {MAX_FAULT_RULES} rules already, the most a mirror holds: remove some first"
                )
            self._next_id += 1
            self._rules.append(rule)
            return rule

    def rules(self) -> list[dict[str, Any]]:
        with self._lock:
            return [rule.as_dict() for rule in self._rules]

    def remove(self, rule_id: str) -> bool:
        with self._lock:
            kept = [rule for rule in self._rules if rule.id != rule_id]
            removed = len(kept) != len(self._rules)
            self._rules = kept
            return removed

    def clear(self) -> None:
        with self._lock:
            self._rules = []

    def any(self) -> bool:
        """Whether any rule can still fire (without a lock: a rule added this instant may be missed once)."""
        return any(not rule.spent for rule in self._rules)

    def fire(self, operation: str, client_id: str | None) -> FaultRule | None:
        """The first rule that matches this call and fires (its probability
        drawn from its own seeded generator, so a run repeats), now counted."""
        with self._lock:
            for rule in self._rules:
                if not rule.matches(operation, client_id):
                    continue
                # Drawn even at probability 1, so a rule's sequence does not depend on the others'.
                if rule._draws.random() < rule.probability:
                    rule.hits += 1
                    return rule
            return None


@dataclass(frozen=True)
class JobPolicy:
    """How a job progresses: status 1 for its first `queueing_polls` info
    polls, 2 for the next `processing_polls`, then it renders (or fails
    with `fail`)."""

    queueing_polls: int = 0
    processing_polls: int = 0
    fail: str | None = None

    @property
    def is_default(self) -> bool:
        return self == JobPolicy()


POLICY_FIELDS = ("queueing_polls", "processing_polls", "fail", "times")


def parse_policy(raw: object) -> tuple[JobPolicy, int | None]:
    """A job policy and for how many jobs (None: every job)."""
    raw = _unknown_fields(raw, POLICY_FIELDS, "a job policy")
    queueing = _number(raw, "queueing_polls", 0, 10_000, integer=True) or 0
    processing = _number(raw, "processing_polls", 0, 10_000, integer=True) or 0
    fail = raw.get("fail")
    if fail is not None and (not isinstance(fail, str) or not fail.strip() or len(fail) > MAX_REASON_CHARS):
        raise ControlInputError(
            "fail", f"must be a reason: a non-empty string of at most {MAX_REASON_CHARS} characters, or null"
        )
    times = _number(raw, "times", 1, 2**31, integer=True)
    return JobPolicy(queueing, processing, fail), times


class Policies:
    """The policy the next jobs get. Safe to share between threads."""

    def __init__(self) -> None:
        self._policy = JobPolicy()
        self._left: int | None = None
        self._lock = threading.Lock()

    def set(self, raw: object) -> dict[str, Any]:
        policy, times = parse_policy(raw)
        with self._lock:
            self._policy, self._left = policy, times
            return self._describe()

    def current(self) -> dict[str, Any]:
        with self._lock:
            return self._describe()

    def take(self) -> JobPolicy | None:
        """The policy for a job being submitted now (None: the default), counted against `times`."""
        with self._lock:
            if self._policy.is_default:
                return None
            policy = self._policy
            if self._left is not None:
                self._left -= 1
                if self._left <= 0:
                    self._policy, self._left = JobPolicy(), None
            return policy

    def _describe(self) -> dict[str, Any]:
        p = self._policy
        described = {"queueing_polls": p.queueing_polls, "processing_polls": p.processing_polls, "fail": p.fail}
        return described | {"times": self._left}


class Journal:
    """The last API calls, oldest first. Entries hold only the fields below:
    never a header, a query, a body, a key or a token."""

    def __init__(self, size: int = JOURNAL_SIZE) -> None:
        self._entries: deque[dict[str, Any]] = deque(maxlen=size)
        self._lock = threading.Lock()

    def record(
        self,
        *,
        method: str,
        path: str,
        operation: str,
        client_id: str | None,
        http_status: int | None,
        code: int | None,
        latency_ms: float,
        fault: str | None,
    ) -> None:
        entry = {
            "time": int(time.time() * 1000),
            "method": method,
            "path": path,
            "operation": operation,
            "client_id": client_id,
            "http_status": http_status,
            "code": code,
            "latency_ms": round(latency_ms, 1),
            "fault": fault,
        }
        with self._lock:
            self._entries.append(entry)

    def entries(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


class Controls:
    """Everything a test can set or read, in one place, so that reset is one call."""

    def __init__(self) -> None:
        self.faults = Faults()
        self.policies = Policies()
        self.journal = Journal()

    def reset(self) -> None:
        self.faults.clear()
        self.policies.set({})
        self.journal.clear()


@dataclass(frozen=True)
class Scenario:
    """Fault rules and a job policy to start with, from a TOML file."""

    faults: tuple[dict[str, Any], ...] = ()
    policy: dict[str, Any] | None = None

    def apply(self, controls: Controls) -> None:
        for rule in self.faults:
            controls.faults.add(rule)
        if self.policy is not None:
            controls.policies.set(self.policy)


def load_scenario(path: Path) -> Scenario:
    """A scenario file: `[[faults]]` tables (fault rules) and one `[policy]`
    table (a job policy). Every rule is checked here, so a bad file stops the
    start with one line naming the table and the field."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_SCENARIO_BYTES + 1)
        if len(data) > MAX_SCENARIO_BYTES:
            raise ControlInputError(str(path), f"is larger than {MAX_SCENARIO_BYTES} bytes, the most a scenario holds")
        raw = tomllib.loads(data.decode("utf-8"))
    except OSError as exc:
        raise ControlInputError(str(path), f"cannot be read ({exc.strerror or exc})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ControlInputError(str(path), f"is not valid TOML ({exc})") from None
    except RecursionError:
        raise ControlInputError(str(path), "is nested too deeply to be a scenario") from None
    for name in raw:
        if name not in ("faults", "policy"):
            raise ControlInputError(f"{path}: {name}", "is not a table of a scenario (known: faults, policy)")
    faults = raw.get("faults", [])
    if not isinstance(faults, list):
        raise ControlInputError(f"{path}: faults", "must be [[faults]] tables")
    if len(faults) > MAX_FAULT_RULES:
        raise ControlInputError(f"{path}: faults", f"has {len(faults)} rules; a mirror holds at most {MAX_FAULT_RULES}")
    for index, rule in enumerate(faults):
        try:
            parse_fault(rule, "check")
        except ControlInputError as exc:
            raise ControlInputError(f"{path}: faults[{index}].{exc.field}", exc.message) from None
    policy = raw.get("policy")
    if policy is not None:
        try:
            parse_policy(policy)
        except ControlInputError as exc:
            raise ControlInputError(f"{path}: policy.{exc.field}", exc.message) from None
    return Scenario(tuple(faults), policy)
