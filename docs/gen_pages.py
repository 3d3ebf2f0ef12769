"""Pages generated when the site is built (mkdocs-gen-files), so that they
cannot drift from what they describe:

- reference/commands.md, from the command-line parser itself
  (`compositor.cli._build_parser`): every command, its usage and every option
  with its help and default;
- reference/settings.md, from the mirror's one table of settings
  (`compositor.mirror.settings.SETTINGS`): flag, variable, config key, default;
- performance.md, from the benchmarks' result files
  (`benchmarks/results/*.json`, written by `make bench`): no figure is copied
  by hand;
- each hand-written page with a marker line `<!-- results: NAME -->` (batch.md,
  removebg.md, ...): the marker becomes the section of
  `benchmarks/results/NAME.json`, its headings one level under the heading the
  marker sits beneath, or "No results yet" while that file does not exist. The
  page keeps its prose; its measured figures come from the file.

The pages are written only when mkdocs-gen-files runs this script (it runs it with `runpy.run_path`); imported,
it writes nothing, so that tests can call the renderers (tests/test_perf_page.py).
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
DOCS = REPO / "docs"


def _table(headers: Iterable[str], rows: Iterable[Iterable[str]]) -> list[str]:
    """A Markdown table: the header, its separator, a line a row. Cells are written as given (escape with `_cell`)."""
    head = list(headers)
    return [
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


# --- commands ------------------------------------------------------------------------------------------------------


def _subcommands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of each subcommand, depth first, as `prog` names them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield sub.prog, helps.get(name, ""), sub
                yield from _subcommands(sub)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _options(parser: argparse.ArgumentParser) -> list[str]:
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        names = ", ".join(f"`{name}`" for name in action.option_strings) or f"`{action.metavar or action.dest}`"
        if action.option_strings and action.nargs != 0:
            names += f" `{action.metavar or action.dest.upper()}`"
        default = action.default
        shown = "" if default in (None, False, argparse.SUPPRESS) or action.nargs == 0 else f"`{default}`"
        rows.append([names, _cell(action.help or ""), shown])
    return _table(["argument", "what it does", "default"], rows) if rows else []


def commands_page() -> str:
    from compositor.cli import _build_parser

    parser = _build_parser()
    lines = [
        "# Commands",
        "",
        "Generated from the command-line parser when this site is built: every command and every option.",
        "`compositor COMMAND --help` prints the same.",
        "",
    ]
    for prog, summary, sub in _subcommands(parser):
        if any(isinstance(action, argparse._SubParsersAction) for action in sub._actions) and not _options(sub):
            lines += [f"## `{prog}`", "", _cell(summary), ""]
            continue
        lines += [f"## `{prog}`", "", _cell(sub.description or summary), ""]
        lines += ["```text", sub.format_usage().strip(), "```", ""]
        lines += [*_options(sub), ""]
    return "\n".join(lines)


def settings_page() -> str:
    from compositor.mirror.settings import SETTINGS

    lines = [
        "# Settings of `compositor serve`",
        "",
        "Generated from the mirror's one table of settings (`compositor/mirror/settings.py`), which the server"
        " reads them through. Each is taken from its flag, else its variable, else the config file"
        " (`--config FILE`, TOML), else its default.",
        "",
    ]
    rows = []
    for setting in SETTINGS:
        flag = f"`{setting.flag}`" if setting.flag else ""
        env = f"`{setting.env}`" if setting.env else ""
        key = f"`{setting.key}`" if setting.in_file else ""
        help_text = setting.help + ("" if setting.commands == "serve" else f" (read by {setting.commands})")
        rows.append([setting.key, flag, env, key, _cell(setting.default), _cell(help_text)])
    headers = ["setting", "flag", "variable", "in the config file", "default", "what it does"]
    return "\n".join([*lines, *_table(headers, rows), ""])


# --- performance ---------------------------------------------------------------------------------------------------


def _number(value: Any, digits: int = 1) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _figure(value: Any, digits: int = 2) -> str:
    """A measured number for a table cell; empty where a quick run did not measure it."""
    if value is None or isinstance(value, str):
        return value or ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def _ratio(numerator: Any, denominator: Any, digits: int = 3) -> str:
    if not isinstance(numerator, int | float) or not isinstance(denominator, int | float) or not denominator:
        return ""
    return _figure(numerator / denominator, digits)


def _mb(peak: Any) -> str:
    """Peak RSS in MB; 0 is what the harnesses write where they did not measure it (in-process)."""
    return _figure(peak, 0) if peak else ""


def _measured(result: dict[str, Any]) -> list[str]:
    """When and where the run was measured, as far as its file says."""
    machine = result.get("machine") or {}
    cpus = machine.get("cpus") or machine.get("cores") or result.get("cores")
    facts = [
        f"on {machine['date']}" if machine.get("date") else "",
        f"{cpus} CPUs" if cpus else "",
        machine.get("system", ""),
        f"Python {machine['python']}" if machine.get("python") else "",
    ]
    said = ", ".join(fact for fact in facts if fact)
    return [f"Measured {said}.", ""] if said else []


def _met(value: float, goal: float, at_least: bool = False) -> bool:
    return value >= goal if at_least else value <= goal


def _goals(goals: list[tuple[str, Any, Any, bool]]) -> list[str]:
    """(measure, value, goal, at least?) as a table; met or missed is decided here, from the numbers."""
    rows = [
        (measure, value, goal, at_least)
        for measure, value, goal, at_least in goals
        if isinstance(value, int | float) and isinstance(goal, int | float)
    ]
    if not rows:
        return []
    cells = []
    for measure, value, goal, at_least in rows:
        verdict = "met" if _met(value, goal, at_least) else "**missed**"
        digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 3
        cells.append([_cell(measure), _figure(value, digits), f"{'≥' if at_least else '≤'} {goal:g}", verdict])
    return [*_table(["goal", "this run", "target", ""], cells), ""]


TITLES = {
    "render.json": "Render",
    "startup.json": "Start-up: pre-flight and small renders",
    "png.json": "PNG writer",
    "removebg.json": "removeBg",
    "gpu.json": "removeBg on a GPU",
    "batch.json": "Batch",
    "server.json": "Local mirror under load",
    "outbox.json": "The webhook outbox against a dead receiver's backlog",
    "soak.json": "Soak: load while things go wrong",
}
# What writes each result file, where it is not `make bench`.
MADE_BY = {"gpu.json": "`benchmarks/gpu_check.py --json benchmarks/results/gpu.json` on a machine with CUDA"}


def _render(result: dict[str, Any]) -> list[str]:
    cases = result.get("cases") or {}
    lines = [
        f"## {TITLES['render.json']}",
        "",
        "`benchmarks/bench_render.py`: every peer's picture checked against ours first, then each case run"
        f" once to warm up and {_figure(result.get('repeat')) or 'several'} times timed, contenders alternating;"
        " medians, and each process's peak RSS through GNU time. *Our CLI / this* is the CLI's median over this"
        " contender's: below 1, ours is faster.",
        "",
        *_measured(result),
    ]
    for name, contenders in cases.items():
        cli = (contenders.get("compositor CLI") or {}).get("median_s")
        rows = [
            [
                f"**{contender}**" if contender == "compositor CLI" else contender,
                _figure(m.get("median_s"), 3),
                _ratio(cli, m.get("median_s")),
                _mb(m.get("peak_mb")),
                _figure((m.get("png_bytes") or 0) / 1e6 or None, 1),
                _cell(m.get("check", "")),
            ]
            for contender, m in contenders.items()
        ]
        headers = ["contender", "median s", "our CLI / this", "peak RSS MB", "PNG MB", "checked against ours"]
        lines += [f"### {name}", "", *_table(headers, rows), ""]
    stages = result.get("stages_example_3_s") or {}
    if stages:
        lines += [
            "### Our stages, doc example 3",
            "",
            "In-process medians, seconds summed over the threads that ran them (they overlap).",
            "",
            *_table(["stage", "seconds"], ([_cell(stage), _figure(seconds, 3)] for stage, seconds in stages.items())),
            "",
        ]
    copy, apart = result.get("memcopy_3840_s"), result.get("blend_apart_example_3_s") or {}
    if copy or apart:
        alone = sum(apart.values()) if apart else None
        blend = stages.get("blend")
        rows = [
            ["warm canvas copy", _figure(copy and copy * 1000, 1), "1"],
            ["blend stage in the pipeline", _figure(blend and blend * 1000, 1), _ratio(blend, copy, 1)],
            ["blend alone", _figure(alone and alone * 1000, 1), _ratio(alone, copy, 1)],
            *(
                [f"... {_cell(part)}", _figure(seconds * 1000, 1), _ratio(seconds, copy, 1)]
                for part, seconds in apart.items()
            ),
        ]
        lines += [
            "### The blend taken apart",
            "",
            "The placement alone with nothing else running (every strip resized first), against a warm copy of a"
            " 3840x3840 RGBA canvas.",
            "",
            *_table(["", "ms", "/ the canvas copy"], rows),
            "",
        ]
    sweep = result.get("sweep") or []
    if sweep:
        names = list(sweep[0].get("contenders", {}))
        peaked = [n for n in names if n != "compositor (in-process)"]  # in-process: no peak of its own
        rows = [
            [
                f"{entry.get('side')}²",
                *(_figure(entry.get("contenders", {}).get(n, {}).get("median_s"), 3) for n in names),
                *(_mb(entry.get("contenders", {}).get(n, {}).get("peak_mb")) for n in peaked),
            ]
            for entry in sweep
        ]
        headers = ["canvas", *(f"{_cell(n)} s" for n in names), *(f"{_cell(n)} MB" for n in peaked)]
        lines += [
            "### Example 3's geometry, scaled",
            "",
            "Median seconds, and peak RSS in MB.",
            "",
            *_table(headers, rows),
            "",
        ]
    goals = result.get("goals") or []
    if goals:
        lines += ["### Goals", ""]
        lines += _goals(
            [(g.get("measure", ""), g.get("value"), g.get("goal"), "at least" in g.get("measure", "")) for g in goals]
        )
    return lines


def _png(result: dict[str, Any]) -> list[str]:
    rows = []
    for canvas, writers in (result.get("canvases") or {}).items():
        pillow = writers.get("Pillow default (level 6)", {})
        fpng = writers.get("fpng", {})
        rows += [
            [
                _cell(canvas),
                _cell(writer),
                _figure(m.get("median_s"), 3),
                _figure((m.get("bytes") or 0) / 1e6 or None, 2),
                _ratio(m.get("bytes"), pillow.get("bytes")),
                _ratio(m.get("median_s"), fpng.get("median_s"), 2),
            ]
            for writer, m in writers.items()
        ]
    lines = [
        f"## {TITLES['png.json']}",
        "",
        "`benchmarks/bench_png.py`: each writer on 3840x3840 RGBA canvases, every file decoded and compared with"
        " its canvas before it is timed; medians. Then the peak RSS of a fresh process that renders doc example 3"
        " and writes it with each encoder.",
        "",
        *_measured(result),
        *_table(["canvas", "writer", "median s", "MB", "size / Pillow's", "time / fpng's"], rows),
        "",
    ]
    rss = result.get("peak_rss_mb") or {}
    if rss:
        lines += [
            "Peak RSS of `compositor render` doc example 3, by the PNG writer it uses (median of 3):",
            "",
            *_table(["writer", "peak RSS MB"], ([_cell(writer), _mb(mb)] for writer, mb in rss.items())),
            "",
        ]
    goals = result.get("goals") or {}
    lines += _goals([(name, g.get("value"), g.get("goal"), "at least" in name) for name, g in goals.items()])
    return lines


def _removebg(result: dict[str, Any]) -> list[str]:
    size = result.get("size") or []
    goal = result.get("ratio_goal")
    speed = result.get("speed") or {}
    rss = result.get("peak_rss_mb") or {}
    rows = []
    for model, entry in speed.items():
        ratio = entry.get("ratio")
        verdict = ""
        if isinstance(ratio, int | float) and isinstance(goal, int | float):
            verdict = f"≤ {goal:g}: " + ("met" if _met(ratio, goal) else "**missed**")
        rows.append(
            [
                _cell(model),
                _figure(entry.get("ours_s"), 3),
                _figure(entry.get("rembg_s"), 3),
                _figure(ratio, 2),
                verdict,
                _figure(entry.get("iou_vs_rembg"), 4),
                _figure(entry.get("mad_vs_rembg"), 2),
                _mb(rss.get(model)),
            ]
        )
    headers = ["model", "ours s", "rembg.remove s", "ours / rembg", "goal", "IoU vs rembg", "MAD vs rembg"]
    lines = [
        f"## {TITLES['removebg.json']}",
        "",
        "`benchmarks/bench_removebg.py`: our removeBg stage against `rembg.remove()` on a"
        f" {'x'.join(map(str, size)) or 'full-size'} foreground, both in one process, alternating after a"
        " warm-up; medians. The masks are compared (IoU at alpha 128, mean absolute alpha difference), so"
        " neither side is timed doing less work. Peak RSS: one `compositor render` with the model.",
        "",
        *_measured(result),
        *_table([*headers, "peak RSS MB"], rows),
        "",
    ]
    stages = list(dict.fromkeys(stage for entry in speed.values() for stage in entry.get("split_s") or {}))
    if stages:
        rows = [
            [_cell(model), *(_figure((entry.get("split_s") or {}).get(stage), 3) for stage in stages)]
            for model, entry in speed.items()
        ]
        lines += [
            "Our time by stage (seconds, medians):",
            "",
            *_table(["model", *(_cell(stage) for stage in stages)], rows),
            "",
        ]
    quality = result.get("quality") or {}
    if quality:
        rows = [[_cell(name), _figure(m.get("iou"), 4), _figure(m.get("mad"), 2)] for name, m in quality.items()]
        lines += [
            "Quality against rembg's published masks:",
            "",
            *_table(["our model, photo, against", "IoU", "MAD"], rows),
            "",
        ]
    return lines


def _gpu(result: dict[str, Any]) -> list[str]:
    image = result.get("image") or []
    rows = [
        [
            provider,
            ", ".join(f"`{name}`" for name in (result.get(provider) or {}).get("active_providers") or []),
            _figure((result.get(provider) or {}).get("predict_median_s"), 3),
        ]
        for provider in ("cpu", "cuda")
        if provider in result
    ]
    facts = [
        f"onnxruntime {result['onnxruntime']}" if result.get("onnxruntime") else "",
        f"model {result['model']}" if result.get("model") else "",
        f"a {'x'.join(map(str, image))} photograph" if image else "",
    ]
    lines = [
        f"## {TITLES['gpu.json']}",
        "",
        "`benchmarks/gpu_check.py`, run by hand on a machine with CUDA (`make bench` does not run it): onnxruntime's"
        " CUDA provider against its CPU provider on the same photograph, the median of the model's inference after"
        " a warm-up, and the two masks compared.",
        "",
        *([f"Run with {', '.join(fact for fact in facts if fact)}.", ""] if any(facts) else []),
        *_table(["requested", "providers the session got", "median s"], rows),
        "",
    ]
    if isinstance(result.get("mask_iou"), int | float):
        lines += [
            f"Masks, CUDA against CPU: IoU {_figure(result['mask_iou'], 5)} (alpha ≥ 128), at most"
            f" {_figure(result.get('mask_max_abs_difference'))} levels apart,"
            f" {_figure(result.get('mask_mean_abs_difference'), 3)} on average.",
            "",
        ]
    return lines


def _batch(result: dict[str, Any]) -> list[str]:
    runs = result.get("runs") or {}
    workloads = list(dict.fromkeys(workload for run in runs.values() for workload in run))
    rows = [
        [
            _cell(name),
            *(
                cell
                for w in workloads
                for cell in (
                    _figure(run.get(w, {}).get("items_per_s"), 2),
                    _figure(run.get(w, {}).get("seconds"), 1),
                )
            ),
        ]
        for name, run in runs.items()
    ]
    headers = ["run", *(header for w in workloads for header in (f"{_cell(w)}: items/s", "s"))]
    lines = [
        f"## {TITLES['batch.json']}",
        "",
        "`benchmarks/bench_batch.py`: `compositor batch` as a user runs it, on the local pool and on Dask;"
        " each comparison in a phase of its own, each run warmed once, then timed in rounds of its phase's runs in"
        " turn; each figure is the median of its rounds (a cluster's overhead is against the local pool of its"
        " phase).",
        "",
        *_measured(result),
        *_table(headers, rows),
        "",
    ]
    client = result.get("client_peak_mb_10000_items")
    if client:
        lines += [f"Peak RSS of the client for 10,000 tiny items: {_mb(client)} MB.", ""]
    sent = result.get("client_bytes_per_item_1024") or {}
    if sent:
        lines += [
            "What one 1024x1024 item's answer carries to the client (pickled, as it crosses the pool's pipe):"
            f" {_figure(sent.get('client writes'))} bytes when the client writes the result,"
            f" {_figure(sent.get('workers write'))} when the worker writes it to the bucket.",
            "",
        ]
    for place, scaling in (result.get("scaling") or {}).items():
        lines += [
            f"200 renders into a {place}: 1 worker kept {_figure(scaling.get('cores_busy_1'))} cores busy and 2"
            f" workers {_figure(scaling.get('cores_busy_2'))} (the CPU seconds of the batch's processes over its"
            " wall seconds), so at the same CPU seconds 1 to 2 workers could gain at most"
            f" {_figure(scaling.get('ceiling'))}x on this machine; round by round they gained"
            f" {', '.join(_figure(r) + 'x' for r in scaling.get('rounds') or [])}.",
            "",
        ]
    goals = result.get("goals") or []
    lines += _goals(
        [(g.get("measure", ""), g.get("value"), g.get("goal"), "at least" in g.get("measure", "")) for g in goals]
    )
    return lines


def _server(result: dict[str, Any]) -> list[str]:
    headers = ["clients", "jobs", "render workers", "jobs/s", "enqueue p50 ms", "enqueue p99 ms"]
    row = [
        _figure(result.get("clients")),
        _figure(result.get("jobs")),
        _figure(result.get("workers")),
        _figure(result.get("jobs_per_s"), 2),
        _figure(result.get("enqueue_p50_ms"), 1),
        _figure(result.get("enqueue_p99_ms"), 1),
        _figure(result.get("end_to_end_p50_s"), 2),
        _figure(result.get("end_to_end_p99_s"), 2),
    ]
    return [
        f"## {TITLES['server.json']}",
        "",
        f"`benchmarks/bench_server.py`: {result.get('clients', 'N')} clients each submit 1024x1024 jobs to"
        " `compositor serve` on loopback and poll them to completion.",
        "",
        *_measured(result),
        *_table([*headers, "end to end p50 s", "end to end p99 s"], [row]),
        "",
    ]


def _outbox(result: dict[str, Any]) -> list[str]:
    rows = []
    for name, run in (("empty", result["without_backlog"]), ("backlog", result["with_backlog"])):
        rows.append(
            [
                name if name == "empty" else f"{run['backlog']:,} dead notices",
                _number(run["submitted"]),
                _number(run["completed_per_s"]),
                _number(run["webhooks_delivered"]),
                _number(run["submit_p50_ms"]),
                _number(run["submit_p99_ms"]),
            ]
        )
    headers = ["outbox", "submitted", "completed/s", "webhooks delivered", "submit p50 ms", "submit p99 ms"]
    return [
        f"## {TITLES['outbox.json']}",
        "",
        f"`benchmarks/bench_outbox.py`: {result['threads']} threads submit 64x64 jobs for {result['seconds']:.0f} s"
        f" with {result['workers']} render workers, once with an empty outbox and once with"
        f" {result['with_backlog']['backlog']:,} notices pending to a closed port.",
        "",
        *_table(headers, rows),
        "",
        f"Submit p99 with the backlog / without: **{result['submit_p99_ratio']:.2f}** (goal: at most 1.20);"
        f" completion rate with / without: **{result['completion_rate_ratio']:.2f}** (goal: at least 0.80)."
        f" The due-notice query: {result['due_query_ms_empty']:.3f} ms with an empty outbox,"
        f" {result['due_query_ms_backlog']:.3f} ms with the backlog.",
        "",
    ]


def _soak(result: dict[str, Any]) -> list[str]:
    rss = result.get("rss") or [{}]
    first, last = rss[0], rss[-1]
    peak = max((sample.get("server_mb", 0) for sample in rss), default=0)
    hostile = result.get("hostile_submits", {})
    headers = [
        "submitted", "completed", "failed", "lost", "duplicated ids", "duplicated notices", "answers 5xx",
        "hostile submits refused", "jobs/s", "submit p50 / p99 ms", "server RSS first / last (peak) MB",
    ]  # fmt: skip
    row = [
        _number(result["submitted"]),
        _number(result["completed"]),
        _number(result["failed"]),
        _number(result["lost"]),
        _number(result["duplicated_ids"]),
        _number(result["duplicated_status3_notices"]),
        _number(result.get("answers_5xx")),
        f"{_number(hostile.get('refused', 0))} of {_number(sum(hostile.values()))}",
        _number(result["jobs_per_second"], 2),
        f"{result.get('submit_ms', {}).get('p50')} / {result.get('submit_ms', {}).get('p99')}",
        f"{first.get('server_mb')} / {last.get('server_mb')} ({peak})",
    ]
    return [
        f"## {TITLES['soak.json']}",
        "",
        f"`benchmarks/bench_soak.py`: {result['clients']} clients for {result['seconds']} s,"
        f" {result['workers_killed']} render workers killed, webhook receivers that drip, die or answer.",
        "",
        *_table(headers, [row]),
        "",
    ]


def _startup(result: dict[str, Any]) -> list[str]:
    medians = result.get("median_ms") or {}
    lines = [
        f"## {TITLES['startup.json']}",
        "",
        "`benchmarks/bench_startup.py`: whole processes, alternating, a warm-up then the median of"
        f" {_figure(result.get('repeat')) or 'several'}: a bare interpreter, `compositor validate` of example 3,"
        " and a 512x512 render of example 3's geometry through our CLI, the plain Pillow pipeline and pyvips.",
        "",
        *_measured(result),
        *_table(["process", "median ms"], ([_cell(name), _figure(value, 1)] for name, value in medians.items())),
        "",
    ]
    goals = [(g.get("measure", ""), g.get("value"), g.get("goal"), False) for g in result.get("goals") or []]
    return [*lines, *_goals(goals)]


RENDERERS = {
    "render.json": _render,
    "startup.json": _startup,
    "png.json": _png,
    "removebg.json": _removebg,
    "gpu.json": _gpu,
    "batch.json": _batch,
    "server.json": _server,
    "outbox.json": _outbox,
    "soak.json": _soak,
}


def section(name: str) -> list[str]:
    """The section of one result file, or, while the file does not exist, its heading and a line saying so."""
    path = RESULTS / name
    if path.is_file():
        return RENDERERS[name](json.loads(path.read_text()))
    return [
        f"## {TITLES[name]}",
        "",
        f"No results yet: run {MADE_BY.get(name, '`make bench`')} (it writes `benchmarks/results/{name}`).",
        "",
    ]


def performance_page() -> str:
    lines = [
        "# Performance",
        "",
        "Generated from `benchmarks/results/*.json` when this site is built; `make bench` writes those files.",
        "Each benchmark measures its peers in the same run and prints ratios; no figure here is typed by hand.",
        "",
    ]
    for name in RENDERERS:
        lines += section(name)
    return "\n".join(lines)


MARKER = re.compile(r"<!-- results: ([\w-]+) -->")
HEADING = re.compile(r"(#{1,6}) ")


def with_results(text: str) -> str:
    """A hand-written page with each marker line `<!-- results: NAME -->` replaced by the section of
    benchmarks/results/NAME.json, its headings one level under the page's heading above the marker (fenced code is
    neither a heading nor a marker). A marker that names no result file is an error, so the build fails on a typo."""
    lines: list[str] = []
    level, fenced = 1, False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        marker = None if fenced else MARKER.fullmatch(line.strip())
        heading = None if fenced else HEADING.match(line)
        if heading:
            level = len(heading.group(1))
        if not marker:
            lines.append(line)
            continue
        name = f"{marker.group(1)}.json"
        if name not in RENDERERS:
            known = ", ".join(known.removesuffix(".json") for known in RENDERERS)
            raise ValueError(f"{line.strip()}: no result file benchmarks/results/{name} is rendered (known: {known})")
        shift = "#" * (level - 1)  # each section's own heading is ##: one level under a page's # title
        lines += [shift + part if HEADING.match(part) else part for part in section(name)]
    return "\n".join(lines) + ("\n" if text.endswith("\n") else "")


def write_pages() -> None:
    import mkdocs_gen_files

    with mkdocs_gen_files.open("reference/commands.md", "w") as page:
        page.write(commands_page())
    with mkdocs_gen_files.open("reference/settings.md", "w") as page:
        page.write(settings_page())
    with mkdocs_gen_files.open("performance.md", "w") as page:
        page.write(performance_page())
    for path in sorted(DOCS.rglob("*.md")):  # the hand-written pages: their markers become the results' sections
        text = path.read_text()
        done = with_results(text)
        if done != text:
            with mkdocs_gen_files.open(path.relative_to(DOCS).as_posix(), "w") as page:
                page.write(done)


if __name__ in ("<run_path>", "__main__"):  # mkdocs-gen-files runs it with runpy.run_path
    write_pages()
