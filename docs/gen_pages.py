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
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mkdocs_gen_files

from compositor.cli import _build_parser
from compositor.mirror.settings import SETTINGS

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


RENDERERS = {"outbox.json": _outbox, "soak.json": _soak}


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


with mkdocs_gen_files.open("reference/commands.md", "w") as page:
    page.write(commands_page())
with mkdocs_gen_files.open("reference/settings.md", "w") as page:
    page.write(settings_page())
with mkdocs_gen_files.open("performance.md", "w") as page:
    page.write(performance_page())
