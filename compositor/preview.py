"""Quick previews: the same request at a smaller scale, rendered by the same
engine, so what a person sees while editing is the real composite."""

from __future__ import annotations

from typing import Any

from compositor.geometry import parse_size
from compositor.sources import SourcePolicy, load_image


def scaled_body(body: dict[str, Any], max_side: int, policy: SourcePolicy) -> tuple[dict[str, Any], float]:
    """`body` with every size and offset scaled so the canvas's long side is at
    most `max_side`; the factor used (1.0 when it already fits). A template of
    natural size is given its scaled natural size, which needs its header."""
    canvas = parse_size(body["canvas_size"])
    factor = min(1.0, max_side / max(canvas.width, canvas.height))
    if factor == 1.0:
        return dict(body), 1.0
    scaled = dict(body)

    def size(text: str) -> str:
        parsed = parse_size(text)
        return f"{max(1, round(parsed.width * factor))}x{max(1, round(parsed.height * factor))}"

    scaled["canvas_size"] = size(body["canvas_size"])
    scaled["modify_origin_img_size"] = size(body["modify_origin_img_size"])
    if body.get("template_url"):
        if not body.get("modify_template_size"):
            natural = load_image(body["template_url"], "template_url", policy).size
            scaled["modify_template_size"] = size(f"{natural[0]}x{natural[1]}")
        else:
            scaled["modify_template_size"] = size(body["modify_template_size"])
    for name in ("overlay_origin_x", "overlay_origin_y", "overlay_template_x", "overlay_template_y"):
        if isinstance(body.get(name), (int, float)) and not isinstance(body.get(name), bool):
            scaled[name] = round(body[name] * factor)
    return scaled, factor
