"""The repository's own docs stand alone: nothing points at a file outside it."""

from __future__ import annotations

from tests.conftest import REPO


def test_the_readme_leans_on_no_file_outside_the_repository() -> None:
    readme = (REPO / "README.md").read_text()
    assert "SPEC.md" not in readme
    assert "docs/contract.md" in readme


def test_the_contract_states_the_webhook_iv_rule() -> None:
    contract = (REPO / "docs" / "contract.md").read_text()
    assert "padded to 16 with NUL" in contract
    for code in ("1003", "1005", "1006", "1101", "1102", "1108", "1200", "1206"):
        assert f"| {code} |" in contract
