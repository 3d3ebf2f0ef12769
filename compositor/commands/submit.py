"""`compositor submit`: a body to the mirror or upstream, waited for and downloaded."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from compositor.commands.common import EXIT_INVALID, EXIT_OK, EXIT_UNUSABLE, body_error_envelope, load_body, one_line


def add_parser(commands: argparse._SubParsersAction) -> None:
    submit = commands.add_parser("submit", help="send a body to the mirror or upstream, wait, download the result")
    submit.add_argument("request", help="request body (JSON file, or - for stdin)")
    submit.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8080 or https://openapi.akool.com")
    submit.add_argument("--api-key", help="x-api-key (the client secret); or --token")
    submit.add_argument("--token", help="a Bearer token from getToken")
    submit.add_argument("-o", "--output", required=True, help="where to save the result")
    submit.add_argument("--timeout", type=float, default=600, help="seconds to wait for the job (default 600)")
    submit.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import httpx

    from compositor.client import ApiCallError, BackgroundChangeClient

    loaded = load_body(args.request)
    if isinstance(loaded, int):
        return loaded
    body, base = loaded
    if not isinstance(body, dict):
        print(json.dumps(body_error_envelope("must be a JSON object")))
        return EXIT_INVALID
    if not args.api_key and not args.token:
        print("compositor: --api-key or --token is required", file=sys.stderr)
        return EXIT_UNUSABLE
    try:
        client = BackgroundChangeClient(args.base_url, api_key=args.api_key, token=args.token)
        job = client.run(body, base_dir=base, timeout=args.timeout)
        client.download(job, Path(args.output))
    except ApiCallError as exc:
        print(json.dumps(exc.envelope))
        return EXIT_INVALID if exc.code == 1003 else EXIT_UNUSABLE
    except (OSError, TimeoutError, ValueError, httpx.HTTPError, httpx.InvalidURL) as exc:
        print(f"compositor: {one_line(exc)}", file=sys.stderr)
        return EXIT_UNUSABLE
    print(f"{job['_id']}: status {job['image_status']}, saved {args.output}", file=sys.stderr)
    return EXIT_OK
