"""SQL statements per request on the prescription's hot path (create, sign, approve, the
patient's GET with the access code, claim, dispense), through HTTP.

A statement costs about a millisecond of server CPU here (Django compiles it, psycopg
sends it, PostgreSQL runs it), so the count is what the path's throughput rests on
(``python -m bench.rx_bench``). Each step has a budget; a change that adds statements
to a step fails here with the statements listed, and a change that removes some lowers
the budget. Counted on PostgreSQL, where the row locks are real statements.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from tests.conftest import uses_postgres
from tests.rx_helpers import RxScene, fresh_otp

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not uses_postgres(), reason="statement counts are PostgreSQL's"),
]

#: Statements per request (the transaction's BEGIN/COMMIT and savepoints not counted).
BUDGET = {
    "create": 11,
    "sign": 17,
    "approve": 24,
    "code": 6,
    "claim": 16,
    "dispense": 18,
}


def _counted(step: str, call: Callable[[], Any]) -> tuple[Any, int]:
    with CaptureQueriesContext(connection) as queries:
        result = call()
    statements = [
        q["sql"]
        for q in queries.captured_queries
        if not q["sql"].startswith(("SAVEPOINT", "RELEASE SAVEPOINT", "ROLLBACK TO SAVEPOINT"))
        and q["sql"] not in ("BEGIN", "COMMIT")
    ]
    listing = "\n".join(f"  {i + 1:>2}. {sql[:240]}" for i, sql in enumerate(statements))
    assert len(statements) <= BUDGET[step], (
        f"{step}: {len(statements)} statements, budget {BUDGET[step]}:\n{listing}"
    )
    return result, len(statements)


def test_each_step_of_the_path_stays_within_its_statement_budget(department: Any) -> None:
    scene = RxScene(department)
    # The clock stands still: a signature needs a revocation list issued after it, and a
    # busy server's list is a second old at most; a slow run would otherwise count the
    # list being made again (two statements more) when a second boundary passes.
    with time_machine.travel(timezone.now(), tick=False):
        # One path first, uncounted: what a running server has already loaded once (the
        # institution seal certificate, the CRL, the filing of the hospital) is not per request.
        first = scene.active()
        scene.dispense(*scene.claimed(first))

        counts: dict[str, int] = {}
        response, counts["create"] = _counted("create", scene.draft)
        assert response.status_code == 201, response.content
        prescription_id = str(response.json()["id"])

        otp = fresh_otp(scene.doctor.user)  # the authenticator's code, not the server's work
        response, counts["sign"] = _counted("sign", lambda: scene.sign(prescription_id, otp))
        assert response.status_code == 200, response.content
        assert response.json()["status"] == "under_review"

        otp = fresh_otp(scene.pharmacist.user)
        response, counts["approve"] = _counted(
            "approve", lambda: scene.approve(prescription_id, otp)
        )
        assert response.status_code == 200, response.content
        assert response.json()["status"] == "active"

        code, counts["code"] = _counted("code", lambda: scene.access_code(prescription_id))

        response, counts["claim"] = _counted("claim", lambda: scene.claim(prescription_id, code))
        assert response.status_code == 200, response.content
        secret = response.json()["claim_secret"]

        response, counts["dispense"] = _counted(
            "dispense", lambda: scene.dispense(prescription_id, secret)
        )
        assert response.status_code == 200, response.content
        assert response.json()["status"] == "dispensed"
        print("statements per request:", counts)
