"""The webhook outbox in the job store: notices written with the state
change that owes them, in order per job, and never hidden behind a busy
receiver's backlog."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compositor.mirror.accounts import Client
from compositor.mirror.database import now_ms
from compositor.mirror.jobs import COMPLETED, PROCESSING, JobStore
from compositor.mirror.outbox import lane_of
from tests.test_mirror import Receiver, receiver  # noqa: F401  (receiver is a fixture)

CLIENT = Client("alpha", "a" * 32)


def job_with_hook(store: JobStore, url: str) -> str:
    job = store.create(CLIENT, {"canvas_size": "8x8", "webhookUrl": url})
    return job.id


def test_each_state_change_queues_its_notice_in_the_same_store(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    job_id = job_with_hook(store, "http://receiver.example/hook")
    claimed = store.claim_next()
    assert claimed is not None and claimed.id == job_id
    store.complete(job_id, "r.png", "http://mirror/results/r.png")
    notices = store.outbox.notices(job_id)
    assert [n["status"] for n in notices] == [PROCESSING, COMPLETED]
    assert notices[1]["result_url"] == "http://mirror/results/r.png"
    store.close()
    reopened = JobStore(tmp_path / "jobs.sqlite3")  # a restart keeps what is owed
    assert [n["state"] for n in reopened.outbox.notices(job_id)] == ["pending", "pending"]


def test_a_jobs_later_notice_waits_for_its_earlier_one(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    job_id = job_with_hook(store, "http://receiver.example/hook")
    store.claim_next()
    store.complete(job_id, "r.png", "u")
    first = store.outbox.due_notices(10**15, set(), limit=10)
    assert [n.status for n in first] == [PROCESSING]
    store.outbox.notice_attempted(
        first[0].id, delivered=False, http_status=503, error="HTTP 503", retry_at_ms=10**15 + 5
    )
    # the failed one is not due yet, and the next waits for it
    assert store.outbox.due_notices(10**15, set(), limit=10) == []
    store.outbox.notice_attempted(first[0].id, delivered=True, http_status=200, error=None, retry_at_ms=None)
    assert [n.status for n in store.outbox.due_notices(10**15, set(), limit=10)] == [COMPLETED]


def test_a_busy_receivers_backlog_does_not_hide_another_receivers_notice(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    for _ in range(40):
        job_with_hook(store, "http://slow.example:8000/hook")
        store.claim_next()
    fast = job_with_hook(store, "http://fast.example/hook")
    store.claim_next()
    due = store.outbox.due_notices(10**15, {lane_of("alpha", "slow.example:8000")}, limit=5)
    assert [n.job_id for n in due] == [fast]


def test_a_retried_job_does_not_notify_processing_twice(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    job_id = job_with_hook(store, "http://receiver.example/hook")
    store.claim_next()
    store.requeue(job_id)
    store.claim_next()
    assert [n["status"] for n in store.outbox.notices(job_id)] == [PROCESSING]


def test_a_client_at_its_limit_does_not_hide_another_clients_notice(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    for port in range(40):  # one client, many receivers: a per-receiver limit alone would not stop it
        job_with_hook(store, f"http://slow.example:{8000 + port}/hook")
        store.claim_next()
    other = Client("beta", "b" * 32)
    fast = store.create(other, {"canvas_size": "8x8", "webhookUrl": "http://fast.example/hook"}).id
    store.claim_next()
    assert [n.job_id for n in store.outbox.due_notices(10**15, set(), {"alpha"}, limit=5)] == [fast]


def test_a_webhook_url_that_does_not_parse_is_refused_by_validation() -> None:
    from compositor import validate

    for url in ("http://[abc", "http://127.0.0.1:abc/x", "http://127.0.0.1:99999/x"):
        report = validate({"canvas_size": "8x8", "origin_img": "a.png", "modify_origin_img_size": "4x4",
                           "overlay_origin_x": 0, "overlay_origin_y": 0, "webhookUrl": url})  # fmt: skip
        assert [e.field for e in report.errors] == ["webhookUrl"], url


def test_a_notice_being_delivered_is_not_due_again(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    job_with_hook(store, "http://receiver.example/hook")
    store.claim_next()
    [first] = store.outbox.due_notices(10**15, set(), limit=10)
    assert store.outbox.due_notices(10**15, set(), limit=10, in_flight={first.id}) == []


def test_the_outbox_delivers_each_notice_once_to_a_slow_receiver(tmp_path: Path) -> None:
    import http.server
    import threading
    import time
    from collections import Counter

    from compositor.mirror.webhooks import RetryPolicy, WebhookDispatcher
    from compositor.outbound import OutboundPolicy

    received: Counter[str] = Counter()

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["content-length"]))
            time.sleep(0.3)  # slow, but well inside the deadline
            received[self.headers.get("x-nonce", "") + self.path] += 1
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    store = JobStore(tmp_path / "jobs.sqlite3")
    jobs = []
    for index in range(6):
        jobs.append(job_with_hook(store, f"http://127.0.0.1:{httpd.server_address[1]}/hook/{index}"))
        store.claim_next()
    outbox = WebhookDispatcher(store.outbox, lambda _: "a" * 32, RetryPolicy(timeout_s=5), OutboundPolicy(deadline_s=5))
    outbox.start()
    try:
        deadline = time.monotonic() + 90
        while any(n["state"] != "delivered" for j in jobs for n in store.outbox.notices(j)):
            assert time.monotonic() < deadline, "waited 90 s for the six notices to be delivered"
            time.sleep(0.1)
        time.sleep(1.0)  # anything sent twice would land by now (a negative check: a slow machine only weakens it)
    finally:
        outbox.stop()
        httpd.shutdown()
    assert all(n["state"] == "delivered" and n["attempts"] == 1 for j in jobs for n in store.outbox.notices(j))
    assert sorted(received.values()) == [1] * 6


def test_one_clients_busy_lane_does_not_hold_another_clients_notices_to_the_same_receiver(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    for _ in range(20):
        job_with_hook(store, "http://shared.example:9000/a")
        store.claim_next()
    other = Client("beta", "b" * 32)
    theirs = store.create(other, {"canvas_size": "8x8", "webhookUrl": "http://shared.example:9000/b"}).id
    store.claim_next()
    busy = {lane_of("alpha", "shared.example:9000")}
    assert [n.job_id for n in store.outbox.due_notices(10**15, busy, limit=5)] == [theirs]


def test_a_failing_receiver_backs_off_its_whole_lane_and_a_delivery_clears_it(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    for _ in range(3):
        job_with_hook(store, "http://dead.example:9/hook")
        store.claim_next()
    fine = store.create(Client("beta", "b" * 32), {"canvas_size": "8x8", "webhookUrl": "http://dead.example:9/x"}).id
    store.claim_next()
    first, *_ = store.outbox.due_notices(now_ms(), set(), limit=1)
    store.outbox.notice_attempted(
        first.id,
        delivered=False,
        http_status=None,
        error="refused",
        retry_at_ms=now_ms(),
        lane_delay_ms=lambda n: 60_000,
    )
    # The dead lane waits a minute, whatever its notices' own times say; the other client's lane does not.
    assert [n.job_id for n in store.outbox.due_notices(now_ms() + 1000, set(), limit=10)] == [fine]
    later = store.outbox.due_notices(now_ms() + 61_000, set(), limit=10, per_lane=10)
    assert len([n for n in later if n.client_id == "alpha"]) == 3
    store.outbox.notice_attempted(first.id, delivered=True, http_status=200, error=None, retry_at_ms=None)
    assert (
        len([n for n in store.outbox.due_notices(now_ms(), set(), limit=10, per_lane=10) if n.client_id == "alpha"])
        == 2
    )


def test_due_notices_are_found_through_indexes_not_a_scan_of_what_is_pending(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    plans = []
    for sql in (
        "SELECT lane FROM lanes WHERE ready_ms <= 1 AND lane NOT IN ('x') AND client_id NOT IN ('y')"
        " ORDER BY ready_ms LIMIT 32",
        "SELECT * FROM webhooks WHERE lane = 'x' AND state = 'pending' AND head = 1 AND due_ms <= 1"
        " ORDER BY due_ms, id LIMIT 4",
        "SELECT MIN(due_ms) FROM webhooks WHERE lane = 'x' AND state = 'pending' AND head = 1",
        "SELECT 1 FROM webhooks WHERE job_id = 'j' AND state = 'pending'",
    ):
        plans.append(" | ".join(row[3] for row in store._database._db.execute("EXPLAIN QUERY PLAN " + sql)))
    assert all("USING" in plan and "INDEX" in plan for plan in plans), plans
    assert not any(plan.startswith("SCAN") for plan in plans), plans


def test_an_outbox_made_before_lanes_gets_them_at_start(tmp_path: Path) -> None:
    import sqlite3

    store = JobStore(tmp_path / "jobs.sqlite3")
    job_id = job_with_hook(store, "http://receiver.example/hook")
    store.claim_next()
    store.complete(job_id, "r.png", "u")
    store.close()
    old = sqlite3.connect(tmp_path / "jobs.sqlite3")  # as a data dir made before lanes has it
    for statement in ("DROP INDEX webhooks_by_job", "DROP INDEX webhooks_due", "DROP TABLE lanes"):
        old.execute(statement)
    old.execute("ALTER TABLE webhooks DROP COLUMN head")
    old.execute("ALTER TABLE webhooks DROP COLUMN lane")
    old.commit()
    old.close()
    reopened = JobStore(tmp_path / "jobs.sqlite3")
    [first] = reopened.outbox.due_notices(10**15, set(), limit=10)
    assert first.status == PROCESSING
    reopened.outbox.notice_attempted(first.id, delivered=True, http_status=200, error=None, retry_at_ms=None)
    assert [n.status for n in reopened.outbox.due_notices(10**15, set(), limit=10)] == [COMPLETED]


def test_notices_read_just_before_a_reset_are_not_delivered_after_it(
    tmp_path: Path,
    receiver: Receiver,  # noqa: F811
) -> None:
    """The reset (the dispatcher forgets, the store forgets its jobs) lands between the dispatcher reading the
    due notices and starting their deliveries: nothing goes out."""
    import time

    from compositor.mirror.webhooks import RetryPolicy, WebhookDispatcher
    from compositor.outbound import OutboundPolicy

    store = JobStore(tmp_path / "jobs.sqlite3")
    job_with_hook(store, receiver.url)
    store.claim_next()
    dispatcher = WebhookDispatcher(store.outbox, lambda _: "a" * 32, RetryPolicy(), OutboundPolicy(deadline_s=5))
    read = store.outbox.due_notices
    reads: list[int] = []

    def read_then_a_reset(*args: Any, **kwargs: Any) -> Any:
        due = read(*args, **kwargs)
        if due and not reads:
            dispatcher.forget()
            store.forget_all()
        reads.append(len(due))
        return due

    store.outbox.due_notices = read_then_a_reset  # type: ignore[method-assign]
    dispatcher.start()
    try:
        deadline = time.monotonic() + 60
        while not reads:
            assert time.monotonic() < deadline, "waited 60 s for the dispatcher to read the outbox"
            time.sleep(0.05)
        time.sleep(1.5)  # a delivery would land by now (a negative check: a slow machine only weakens it)
    finally:
        dispatcher.stop()
    assert reads[0] == 1 and receiver.payloads == []
