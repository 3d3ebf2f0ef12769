"""Pages generated when the site is built (mkdocs-gen-files), so that they
cannot drift from what they describe:

- reference/commands.md, from the command-line parser itself
  (`compositor.cli._build_parser`): every command, its usage and every option
  with its help and default;
- reference/settings.md, from the mirror's one table of settings
  (`compositor.mirror.settings.SETTINGS`): flag, variable, config key, default;
- performance.md, from the benchmarks' result files
  (`benchmarks/results/*.json`, written by `make bench`): no figure is copied
  by hand.

The pages are written only when mkdocs-gen-files runs this script (it runs it with `runpy.run_path`); imported,
it writes nothing, so that tests can call the renderers (tests/test_perf_page.py).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"


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
    rows = ["| argument | what it does | default |", "|---|---|---|"]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        names = ", ".join(f"`{name}`" for name in action.option_strings) or f"`{action.metavar or action.dest}`"
        if action.option_strings and action.nargs != 0:
            names += f" `{action.metavar or action.dest.upper()}`"
        default = action.default
        shown = "" if default in (None, False, argparse.SUPPRESS) or action.nargs == 0 else f"`{default}`"
        rows.append(f"| {names} | {_cell(action.help or '')} | {shown} |")
    return rows if len(rows) > 2 else []


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
        "| setting | flag | variable | in the config file | default | what it does |",
        "|---|---|---|---|---|---|",
    ]
    for setting in SETTINGS:
        flag = f"`{setting.flag}`" if setting.flag else ""
        env = f"`{setting.env}`" if setting.env else ""
        key = f"`{setting.key}`" if setting.in_file else ""
        help_text = setting.help + ("" if setting.commands == "serve" else f" (read by {setting.commands})")
        lines.append(f"| {setting.key} | {flag} | {env} | {key} | {_cell(setting.default)} | {_cell(help_text)} |")
    return "\n".join([*lines, ""])


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
    lines = ["| goal | this run | target | |", "|---|---|---|---|"]
    for measure, value, goal, at_least in rows:
        verdict = "met" if _met(value, goal, at_least) else "**missed**"
        digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 3
        lines.append(
            f"| {_cell(measure)} | {_figure(value, digits)} | {'≥' if at_least else '≤'} {goal:g} | {verdict} |"
        )
    return [*lines, ""]


def _render(result: dict[str, Any]) -> list[str]:
    cases = result.get("cases") or {}
    lines = [
        "## Render",
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
        lines += [
            f"### {name}",
            "",
            "| contender | median s | our CLI / this | peak RSS MB | PNG MB | checked against ours |",
            "|---|---|---|---|---|---|",
        ]
        for contender, m in contenders.items():
            label = f"**{contender}**" if contender == "compositor CLI" else contender
            lines.append(
                f"| {label} | {_figure(m.get('median_s'), 3)} | {_ratio(cli, m.get('median_s'))}"
                f" | {_mb(m.get('peak_mb'))} | {_figure((m.get('png_bytes') or 0) / 1e6 or None, 1)}"
                f" | {_cell(m.get('check', ''))} |"
            )
        lines.append("")
    stages = result.get("stages_example_3_s") or {}
    if stages:
        lines += [
            "### Our stages, doc example 3",
            "",
            "In-process medians, seconds summed over the threads that ran them (they overlap).",
            "",
            "| stage | seconds |",
            "|---|---|",
            *(f"| {_cell(stage)} | {_figure(seconds, 3)} |" for stage, seconds in stages.items()),
            "",
        ]
    copy, apart = result.get("memcopy_3840_s"), result.get("blend_apart_example_3_s") or {}
    if copy or apart:
        alone = sum(apart.values()) if apart else None
        lines += [
            "### The blend taken apart",
            "",
            "The placement alone with nothing else running (every strip resized first), against a warm copy of a"
            " 3840x3840 RGBA canvas.",
            "",
            "| | ms | / the canvas copy |",
            "|---|---|---|",
            f"| warm canvas copy | {_figure(copy and copy * 1000, 1)} | 1 |",
            f"| blend stage in the pipeline | {_figure(stages.get('blend') and stages['blend'] * 1000, 1)}"
            f" | {_ratio(stages.get('blend'), copy, 1)} |",
            f"| blend alone | {_figure(alone and alone * 1000, 1)} | {_ratio(alone, copy, 1)} |",
            *(
                f"| ... {_cell(part)} | {_figure(seconds * 1000, 1)} | {_ratio(seconds, copy, 1)} |"
                for part, seconds in apart.items()
            ),
            "",
        ]
    sweep = result.get("sweep") or []
    if sweep:
        names = list(sweep[0].get("contenders", {}))
        lines += [
            "### Example 3's geometry, scaled",
            "",
            "Median seconds, and peak RSS in MB.",
            "",
            "| canvas | " + " | ".join(f"{_cell(n)} s" for n in names) + " | "
            + " | ".join(f"{_cell(n)} MB" for n in names if n != "compositor (in-process)") + " |",
            "|---" * (1 + 2 * len(names) - ("compositor (in-process)" in names)) + "|",
        ]  # fmt: skip
        for entry in sweep:
            measured = entry.get("contenders", {})
            seconds = [_figure(measured.get(n, {}).get("median_s"), 3) for n in names]
            peaks = [_mb(measured.get(n, {}).get("peak_mb")) for n in names if n != "compositor (in-process)"]
            lines.append(f"| {entry.get('side')}² | " + " | ".join(seconds) + " | " + " | ".join(peaks) + " |")
        lines.append("")
    goals = result.get("goals") or []
    if goals:
        lines += ["### Goals", ""]
        lines += _goals(
            [(g.get("measure", ""), g.get("value"), g.get("goal"), "at least" in g.get("measure", "")) for g in goals]
        )
    return lines


def _png(result: dict[str, Any]) -> list[str]:
    lines = [
        "## PNG writer",
        "",
        "`benchmarks/bench_png.py`: each writer on 3840x3840 RGBA canvases, every file decoded and compared with"
        " its canvas before it is timed; medians. Then the peak RSS of a fresh process that renders doc example 3"
        " and writes it with each encoder.",
        "",
        *_measured(result),
        "| canvas | writer | median s | MB | size / Pillow's | time / fpng's |",
        "|---|---|---|---|---|---|",
    ]
    for canvas, writers in (result.get("canvases") or {}).items():
        pillow = writers.get("Pillow default (level 6)", {})
        fpng = writers.get("fpng", {})
        for writer, m in writers.items():
            lines.append(
                f"| {_cell(canvas)} | {_cell(writer)} | {_figure(m.get('median_s'), 3)}"
                f" | {_figure((m.get('bytes') or 0) / 1e6 or None, 2)} | {_ratio(m.get('bytes'), pillow.get('bytes'))}"
                f" | {_ratio(m.get('median_s'), fpng.get('median_s'), 2)} |"
            )
    lines.append("")
    rss = result.get("peak_rss_mb") or {}
    if rss:
        lines += [
            "Peak RSS of `compositor render` doc example 3, by the PNG writer it uses (median of 3):",
            "",
            "| writer | peak RSS MB |",
            "|---|---|",
            *(f"| {_cell(writer)} | {_mb(mb)} |" for writer, mb in rss.items()),
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
    lines = [
        "## removeBg",
        "",
        "`benchmarks/bench_removebg.py`: our removeBg stage against `rembg.remove()` on a"
        f" {'x'.join(map(str, size)) or 'full-size'} foreground, both in one process, alternating after a"
        " warm-up; medians. The masks are compared (IoU at alpha 128, mean absolute alpha difference), so"
        " neither side is timed doing less work. Peak RSS: one `compositor render` with the model.",
        "",
        *_measured(result),
        "| model | ours s | rembg.remove s | ours / rembg | goal | IoU vs rembg | MAD vs rembg | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model, entry in speed.items():
        ratio = entry.get("ratio")
        verdict = ""
        if isinstance(ratio, int | float) and isinstance(goal, int | float):
            verdict = f"≤ {goal:g}: " + ("met" if _met(ratio, goal) else "**missed**")
        lines.append(
            f"| {_cell(model)} | {_figure(entry.get('ours_s'), 3)} | {_figure(entry.get('rembg_s'), 3)}"
            f" | {_figure(ratio, 2)} | {verdict} | {_figure(entry.get('iou_vs_rembg'), 4)}"
            f" | {_figure(entry.get('mad_vs_rembg'), 2)} | {_mb(rss.get(model))} |"
        )
    lines.append("")
    stages = list(dict.fromkeys(stage for entry in speed.values() for stage in entry.get("split_s") or {}))
    if stages:
        lines += [
            "Our time by stage (seconds, medians):",
            "",
            "| model | " + " | ".join(_cell(stage) for stage in stages) + " |",
            "|---" * (1 + len(stages)) + "|",
            *(
                f"| {_cell(model)} | "
                + " | ".join(_figure((entry.get("split_s") or {}).get(stage), 3) for stage in stages)
                + " |"
                for model, entry in speed.items()
            ),
            "",
        ]
    quality = result.get("quality") or {}
    if quality:
        lines += [
            "Quality against rembg's published masks:",
            "",
            "| our model, photo, against | IoU | MAD |",
            "|---|---|---|",
            *(
                f"| {_cell(name)} | {_figure(m.get('iou'), 4)} | {_figure(m.get('mad'), 2)} |"
                for name, m in quality.items()
            ),
            "",
        ]
    return lines


def _batch(result: dict[str, Any]) -> list[str]:
    runs = result.get("runs") or {}
    workloads = list(dict.fromkeys(workload for run in runs.values() for workload in run))
    lines = [
        "## Batch",
        "",
        "`benchmarks/bench_batch.py`: `compositor batch` as a user runs it, on the local pool and on Dask;"
        " each run warmed once, then timed.",
        "",
        *_measured(result),
        "| run | " + " | ".join(f"{_cell(w)}: items/s | s" for w in workloads) + " |",
        "|---" * (1 + 2 * len(workloads)) + "|",
    ]
    for name, run in runs.items():
        cells = [
            f"{_figure(run.get(w, {}).get('items_per_s'), 2)} | {_figure(run.get(w, {}).get('seconds'), 1)}"
            for w in workloads
        ]
        lines.append(f"| {_cell(name)} | " + " | ".join(cells) + " |")
    lines.append("")
    client = result.get("client_peak_mb_10000_items")
    if client:
        lines += [f"Peak RSS of the client for 10,000 tiny items: {_mb(client)} MB.", ""]
    goals = result.get("goals") or []
    lines += _goals(
        [(g.get("measure", ""), g.get("value"), g.get("goal"), "at least" in g.get("measure", "")) for g in goals]
    )
    return lines


def _server(result: dict[str, Any]) -> list[str]:
    return [
        "## Local mirror under load",
        "",
        f"`benchmarks/bench_server.py`: {result.get('clients', 'N')} clients each submit 1024x1024 jobs to"
        " `compositor serve` on loopback and poll them to completion.",
        "",
        *_measured(result),
        "| clients | jobs | render workers | jobs/s | enqueue p50 ms | enqueue p99 ms | end to end p50 s"
        " | end to end p99 s |",
        "|---|---|---|---|---|---|---|---|",
        f"| {_figure(result.get('clients'))} | {_figure(result.get('jobs'))} | {_figure(result.get('workers'))}"
        f" | {_figure(result.get('jobs_per_s'), 2)} | {_figure(result.get('enqueue_p50_ms'), 1)}"
        f" | {_figure(result.get('enqueue_p99_ms'), 1)} | {_figure(result.get('end_to_end_p50_s'), 2)}"
        f" | {_figure(result.get('end_to_end_p99_s'), 2)} |",
        "",
    ]


def _outbox(result: dict[str, Any]) -> list[str]:
    lines = [
        "## The webhook outbox against a dead receiver's backlog",
        "",
        f"`benchmarks/bench_outbox.py`: {result['threads']} threads submit 64x64 jobs for {result['seconds']:.0f} s"
        f" with {result['workers']} render workers, once with an empty outbox and once with"
        f" {result['with_backlog']['backlog']:,} notices pending to a closed port.",
        "",
        "| outbox | submitted | completed/s | webhooks delivered | submit p50 ms | submit p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for name, run in (("empty", result["without_backlog"]), ("backlog", result["with_backlog"])):
        label = name if name == "empty" else f"{run['backlog']:,} dead notices"
        lines.append(
            f"| {label} | {_number(run['submitted'])} | {_number(run['completed_per_s'])}"
            f" | {_number(run['webhooks_delivered'])} | {_number(run['submit_p50_ms'])}"
            f" | {_number(run['submit_p99_ms'])} |"
        )
    lines += [
        "",
        f"Submit p99 with the backlog / without: **{result['submit_p99_ratio']:.2f}** (goal: at most 1.20);"
        f" completion rate with / without: **{result['completion_rate_ratio']:.2f}** (goal: at least 0.80)."
        f" The due-notice query: {result['due_query_ms_empty']:.3f} ms with an empty outbox,"
        f" {result['due_query_ms_backlog']:.3f} ms with the backlog.",
        "",
    ]
    return lines


def _soak(result: dict[str, Any]) -> list[str]:
    rss = result.get("rss") or [{}]
    first, last = rss[0], rss[-1]
    peak = max((sample.get("server_mb", 0) for sample in rss), default=0)
    hostile = result.get("hostile_submits", {})
    return [
        "## Soak: load while things go wrong",
        "",
        f"`benchmarks/bench_soak.py`: {result['clients']} clients for {result['seconds']} s,"
        f" {result['workers_killed']} render workers killed, webhook receivers that drip, die or answer.",
        "",
        "| submitted | completed | failed | lost | duplicated ids | duplicated notices | answers 5xx"
        " | hostile submits refused | jobs/s | submit p50 / p99 ms | server RSS first / last (peak) MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {_number(result['submitted'])} | {_number(result['completed'])} | {_number(result['failed'])}"
        f" | {_number(result['lost'])} | {_number(result['duplicated_ids'])}"
        f" | {_number(result['duplicated_status3_notices'])} | {_number(result.get('answers_5xx'))}"
        f" | {_number(hostile.get('refused', 0))} of {_number(sum(hostile.values()))}"
        f" | {_number(result['jobs_per_second'], 2)}"
        f" | {result.get('submit_ms', {}).get('p50')} / {result.get('submit_ms', {}).get('p99')}"
        f" | {first.get('server_mb')} / {last.get('server_mb')} ({peak}) |",
        "",
    ]


def _startup(result: dict[str, Any]) -> list[str]:
    medians = result.get("median_ms") or {}
    lines = [
        "## Start-up: pre-flight and small renders",
        "",
        "`benchmarks/bench_startup.py`: whole processes, alternating, a warm-up then the median of"
        f" {_figure(result.get('repeat')) or 'several'}: a bare interpreter, `compositor validate` of example 3,"
        " and a 512x512 render of example 3's geometry through our CLI, the plain Pillow pipeline and pyvips.",
        "",
        *_measured(result),
        "| process | median ms |",
        "|---|---|",
        *(f"| {_cell(name)} | {_figure(value, 1)} |" for name, value in medians.items()),
        "",
    ]
    goals = [(g.get("measure", ""), g.get("value"), g.get("goal"), False) for g in result.get("goals") or []]
    return [*lines, *_goals(goals)]


RENDERERS = {
    "render.json": _render,
    "startup.json": _startup,
    "png.json": _png,
    "removebg.json": _removebg,
    "batch.json": _batch,
    "server.json": _server,
    "outbox.json": _outbox,
    "soak.json": _soak,
}


def performance_page() -> str:
    lines = [
        "# Performance",
        "",
        "Generated from `benchmarks/results/*.json` when this site is built; `make bench` writes those files.",
        "Each benchmark measures its peers in the same run and prints ratios; no figure here is typed by hand.",
        "",
    ]
    shown = 0
    for name, render in RENDERERS.items():
        path = RESULTS / name
        if path.is_file():
            lines += render(json.loads(path.read_text()))
            shown += 1
    if not shown:
        lines += ["No results yet: run `make bench`.", ""]
    return "\n".join(lines)


def write_pages() -> None:
    import mkdocs_gen_files

    with mkdocs_gen_files.open("reference/commands.md", "w") as page:
        page.write(commands_page())
    with mkdocs_gen_files.open("reference/settings.md", "w") as page:
        page.write(settings_page())
    with mkdocs_gen_files.open("performance.md", "w") as page:
        page.write(performance_page())


if __name__ in ("<run_path>", "__main__"):  # mkdocs-gen-files runs it with runpy.run_path
    write_pages()
