"""The docs' before-and-after picture of pre-flight shows what the code says:
its 'before' body gets exactly the four warnings the caption names, and its
'after' body, which follows them, gets none."""

from __future__ import annotations

import json
from pathlib import Path

from compositor.preflight import preflight
from compositor.request import validate
from compositor.sourcemap import load_source_map
from compositor.sources import SourcePolicy

ROOT = Path(__file__).resolve().parent.parent
REQUESTS = ROOT / "fixtures" / "requests"


def _warned_fields(name: str) -> list[str]:
    report = validate(json.loads((REQUESTS / name).read_text()))
    assert report.ok and report.request is not None and report.warnings == []
    policy = SourcePolicy(base_dir=REQUESTS, source_map=load_source_map(ROOT / "fixtures" / "source-map.json"))
    errors, warnings = preflight(report.request, policy)
    assert errors == []
    return [problem.field for problem in warnings]


def test_the_before_body_gets_the_four_warnings_the_caption_names() -> None:
    assert _warned_fields("preflight-before.json") == [
        "modify_template_size",
        "modify_origin_img_size",
        "overlay_origin_x",
        "color_code",
    ]


def test_the_body_that_follows_them_gets_none() -> None:
    assert _warned_fields("preflight-after.json") == []


def test_the_picture_is_in_the_docs() -> None:
    assert (ROOT / "docs" / "preflight.png").is_file()
    assert "(preflight.png)" in (ROOT / "docs" / "guide.md").read_text()
