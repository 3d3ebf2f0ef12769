"""The documentation site builds with warnings as errors, its generated pages
say what the code does, and nothing a user can set on the command line goes
undocumented."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from compositor.cli import _build_parser

REPO = Path(__file__).resolve().parent.parent
QUIET = {"NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}


def _commands(parser: argparse.ArgumentParser, prog: str = "compositor"):  # type: ignore[no-untyped-def]
    """Each command's name and parser, the top level's first, depth first."""
    yield prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, f"{prog} {name}")


def _every_option(parser: argparse.ArgumentParser):  # type: ignore[no-untyped-def]
    for prog, command in _commands(parser):
        for action in command._actions:
            if not isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                yield prog, action


def test_every_option_of_every_command_says_what_it_does() -> None:
    undocumented = [
        f"{prog} {'/'.join(action.option_strings) or action.dest}"
        for prog, action in _every_option(_build_parser())
        if not (action.help or "").strip()
    ]
    assert undocumented == []


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **QUIET},
        timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    return out


def test_the_site_builds_with_warnings_as_errors(site: Path) -> None:
    assert (site / "index.html").is_file()


def test_the_commands_page_lists_every_command_and_option(site: Path) -> None:
    page = (site / "reference" / "commands" / "index.html").read_text()
    for prog, action in _every_option(_build_parser()):
        for name in action.option_strings:
            assert name in page, f"{prog} {name}"
        assert prog in page


def test_the_python_api_page_carries_the_docstrings(site: Path) -> None:
    import compositor

    page = (site / "reference" / "python" / "index.html").read_text()
    first_line = (compositor.render.__doc__ or "").strip().splitlines()[0]
    assert first_line and first_line.split()[0] in page


def test_no_page_loads_anything_from_another_host(site: Path) -> None:
    import re

    for page in site.rglob("*.html"):
        for tag in re.findall(r"<(?:script|link|img)\b[^>]*>", page.read_text()):
            assert not re.search(r"""(?:src|href)=["']?(?:https?:)?//""", tag), (page, tag)


def test_every_serve_flag_is_a_setting_and_every_setting_flag_is_served() -> None:
    from compositor.mirror.settings import SETTINGS

    serve = next(sub for prog, sub in _commands(_build_parser()) if prog == "compositor serve")
    flags = {name for action in serve._actions for name in action.option_strings if name.startswith("--")}
    flags.discard("--help")
    served = {s.flag for s in SETTINGS if s.flag and "serve" in [c.strip() for c in s.commands.split(",")]}
    assert flags == served


def test_every_variable_and_config_key_the_code_reads_is_a_setting() -> None:
    import re

    from compositor.mirror.settings import SETTINGS

    source = "\n".join(path.read_text() for path in (REPO / "compositor").rglob("*.py"))
    variables = set(re.findall(r"COMPOSITOR_[A-Z][A-Z_]*", source))
    assert variables <= {s.env for s in SETTINGS if s.env}, variables - {s.env for s in SETTINGS}
    config = (REPO / "compositor" / "mirror" / "config.py").read_text()
    keys = set(re.findall(r'file\.get\("([a-z_]+)"', config)) - {"client"}
    assert keys <= {s.key for s in SETTINGS if s.in_file}, keys - {s.key for s in SETTINGS}


def test_the_settings_page_names_every_setting(site: Path) -> None:
    from compositor.mirror.settings import SETTINGS

    page = (site / "reference" / "settings" / "index.html").read_text()
    for setting in SETTINGS:
        assert setting.key in page and (setting.env or "") in page and (setting.flag or "") in page
