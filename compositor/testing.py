"""The mirror in-process, for test suites that must not start a server (as
moto's `mock_aws` is for AWS):

    from compositor.testing import mock_background_change

    with mock_background_change() as mock:
        mock.add_source("https://cdn.example.com/cat.png", "tests/cat.png")
        mock.add_fault(operation="replace", code=1005, times=1)
        ...  # code that calls https://openapi.akool.com with requests or httpx, unchanged

Inside, calls with `requests` or `httpx` to upstream's hosts (and to the
result URLs it hands out) are answered by the mirror's own app and back end,
over no socket: an adapter of ours, chosen in `requests.Session.get_adapter`,
answers `requests`, `respx` intercepts `httpx`, and each turns the call into
a request on the app through Starlette's in-process client. Calls to loopback
addresses pass through (a local webhook receiver, a local file server); every
other host is refused, so nothing leaves the machine. While the test's own
`responses` mock (which patches `HTTPAdapter.send`) is open too, it gets
every `requests` call but upstream's, as it would without ours; ours patches
nothing that `responses` patches, so the two start and stop in any order.

The back end is the server's (`Mirror`), run `inline`: no worker processes,
and a job renders in the thread of the info poll that releases it, so a
job finishes on its first poll unless a job policy holds it.
"""

from __future__ import annotations

import functools
import http.client
import inspect
import io
import re
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx

from compositor.client import MirrorControl
from compositor.sourcemap import SourceMap

UPSTREAM_HOSTS = ("openapi.akool.com", "contentapi.akool.com")
# Where the mock's results live: a reserved name (RFC 2606) that no resolver answers.
RESULTS_BASE_URL = "https://mirror.compositor.invalid"
_ANSWERED_HOSTS = (*UPSTREAM_HOSTS, urlsplit(RESULTS_BASE_URL).hostname or "")
_ANSWERED = re.compile(r"https?://(?:" + "|".join(re.escape(h) for h in _ANSWERED_HOSTS) + r")(?::\d+)?(?:[/?#].*)?$")
_LOOPBACK_HOST = r"localhost|127\.\d{1,3}\.\d{1,3}\.\d{1,3}|\[?::1\]?"
_LOOPBACK = re.compile(rf"https?://(?:{_LOOPBACK_HOST})(?::\d+)?(?:[/?#].*)?$")
# What an HTTP client must not pass on to the app: it is about the connection, not the request.
_HOP_HEADERS = {"content-length", "transfer-encoding", "connection", "content-encoding"}

F = TypeVar("F", bound=Callable[..., Any])


class BackgroundChangeMock(MirrorControl):
    """The running mock: the control methods of `MirrorControl` (add_fault,
    set_job_policy, fail_job, jobs, requests, webhooks, reset, ...), plus
    `add_source` and `client_id_for`."""

    def __init__(self, *, webhook_attempts: int = 3, webhook_first_delay_s: float = 0.2) -> None:
        from compositor.mirror.responses import create_app
        from compositor.mirror.service import Mirror, MirrorSettings
        from compositor.mirror.webhooks import RetryPolicy

        self._folder = Path(tempfile.mkdtemp(prefix="compositor-mock-"))
        self._sources = self._folder / "sources"
        self._sources.mkdir()
        settings = MirrorSettings(
            data_dir=self._folder / "data",
            clients=(),
            public_base_url=RESULTS_BASE_URL,
            workers=1,
            file_roots=(Path("/"),),  # the test's own files, by path
            inline=True,
            open_accounts=True,
            local_only=True,
            controls_open=True,
            page_hosts=(urlsplit(RESULTS_BASE_URL).hostname or "",),  # the controls' own calls name this host
            webhook_retry=RetryPolicy(
                attempts=webhook_attempts, first_delay_s=webhook_first_delay_s, max_delay_s=5.0, timeout_s=5.0
            ),
        )
        self.mirror = Mirror(settings)
        self._app = _InProcessClient(create_app(self.mirror))
        super().__init__(RESULTS_BASE_URL, http=self._app)  # type: ignore[arg-type]
        self._added = 0
        self.started_by = threading.get_ident()

    # --- what the mock adds to the controls -------------------------------
    def add_source(self, url: str, source: str | Path | bytes) -> None:
        """Let a body's `url` (or every URL under a prefix ending in "/") read
        from a local file or folder, or from these bytes, instead of the network."""
        if isinstance(source, bytes):
            if url.endswith("/"):
                raise ValueError("url: a prefix (ending in /) maps to a folder, not to bytes")
            self._added += 1
            path = self._sources / f"source-{self._added}"
            path.write_bytes(source)
        else:
            path = Path(source).resolve()
            if not path.exists():
                raise FileNotFoundError(f"add_source: no file or folder {source}")
        self.mirror.add_sources(SourceMap.from_entries({url: path}))

    def add_source_map(self, path: str | Path) -> None:
        """Every entry of a source map file (the JSON that `--source-map` takes), as `add_source` would add it."""
        from compositor.sourcemap import load_source_map

        self.mirror.add_sources(load_source_map(Path(path)))

    def client_id_for(self, api_key: str) -> str:
        """The client id the mock gives callers with this `x-api-key` (as fault rules and the journal name it)."""
        from compositor.mirror.accounts import open_client

        return open_client(api_key)[0]

    # --- life --------------------------------------------------------------
    def start(self) -> BackgroundChangeMock:
        self._app.open()
        self.mirror.start()
        try:
            _INTERCEPTION.enter(self)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        _INTERCEPTION.leave(self)
        try:
            self.mirror.stop()
            self._app.close()
        finally:
            shutil.rmtree(self._folder, ignore_errors=True)

    # --- a call, in and out ------------------------------------------------
    def _forward(self, method: str, url: str, headers: dict[str, str], content: bytes | None) -> httpx.Response:
        parts = urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        kept = {name: value for name, value in headers.items() if name.lower() not in _HOP_HEADERS}
        return self._app.request(method, target or "/", headers=kept, content=content)

    def _answer_requests(self, request: Any) -> tuple[int, dict[str, str], bytes]:
        import requests
        from urllib3.exceptions import ProtocolError

        from compositor.mirror.connections import ConnectionDropped

        body = request.body.encode() if isinstance(request.body, str) else request.body
        try:
            answer = self._forward(request.method, request.url, dict(request.headers), body)
        except ConnectionDropped:
            # What requests raises when a server closes the connection without answering.
            raise requests.exceptions.ConnectionError(
                ProtocolError("Connection aborted.", ConnectionResetError("Remote end closed connection"))
            ) from None
        headers = {name: value for name, value in answer.headers.items() if name.lower() not in _HOP_HEADERS}
        return answer.status_code, headers, answer.content

    def _answer_httpx(self, request: httpx.Request) -> httpx.Response:
        from compositor.mirror.connections import ConnectionDropped

        try:
            answer = self._forward(request.method, str(request.url), dict(request.headers), request.read())
        except ConnectionDropped:
            raise httpx.RemoteProtocolError(
                "Server disconnected without sending a response.", request=request
            ) from None
        headers = [(name, value) for name, value in answer.headers.items() if name.lower() not in _HOP_HEADERS]
        return httpx.Response(answer.status_code, headers=headers, content=answer.content)


class _InProcessClient:
    """Requests on the ASGI app, from any thread, over no socket: httpx's
    ASGI transport, driven on an event loop of its own (an anyio portal)."""

    def __init__(self, app: Any) -> None:
        self._app = app
        self._portal: Any = None
        self._portal_cm: Any = None
        self._client: httpx.AsyncClient | None = None

    def open(self) -> None:
        import anyio.from_thread

        self._portal_cm = anyio.from_thread.start_blocking_portal()
        self._portal = self._portal_cm.__enter__()
        # raise_app_exceptions: a dropped connection comes out as ConnectionDropped, for the caller to translate.
        transport = httpx.ASGITransport(app=self._app, raise_app_exceptions=True)
        self._client = httpx.AsyncClient(transport=transport, base_url=RESULTS_BASE_URL, timeout=None)

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        assert self._client is not None, "the mock is not running"
        return self._portal.call(functools.partial(self._client.request, method, url, **kwargs))  # type: ignore[no-any-return]

    def close(self) -> None:
        if self._client is not None:
            self._portal.call(self._client.aclose)
            self._client = None
        if self._portal_cm is not None:
            self._portal_cm.__exit__(None, None, None)
            self._portal_cm = None


class _Interception:
    """The patches of `requests` and `httpx`, one set for the whole process
    however many mocks are open: installed when the first starts, removed
    when the last stops, in whatever order they stop (also among a test's
    own `responses` or `respx` mocks). A call goes to the newest mock opened
    by the calling thread, else to the newest open."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: list[BackgroundChangeMock] = []
        self._patches: list[Any] = []

    def enter(self, mock: BackgroundChangeMock) -> None:
        with self._lock:
            if not self._open:
                self._install()
            self._open.append(mock)

    def leave(self, mock: BackgroundChangeMock) -> None:
        with self._lock:
            if mock not in self._open:
                return
            self._open.remove(mock)
            if not self._open:
                for patch in reversed(self._patches):
                    patch.stop()
                    if hasattr(patch, "reset"):
                        patch.reset()
                self._patches.clear()

    def current(self) -> BackgroundChangeMock:
        with self._lock:
            if not self._open:
                raise RuntimeError("no compositor mock is open")
            mine = [mock for mock in self._open if mock.started_by == threading.get_ident()]
            return (mine or self._open)[-1]

    def _install(self) -> None:
        import respx

        requests_patch = _RequestsPatch(self)
        requests_patch.start()
        self._patches.append(requests_patch)
        httpx_mock = respx.MockRouter(assert_all_mocked=True, assert_all_called=False)
        httpx_mock.route(url__regex=_ANSWERED.pattern).mock(side_effect=self._answer_httpx)
        httpx_mock.route(url__regex=_LOOPBACK.pattern).pass_through()
        httpx_mock.route().mock(side_effect=_refuse_httpx)
        httpx_mock.start()
        self._patches.append(httpx_mock)

    def _answer_requests(self, request: Any) -> tuple[int, dict[str, str], bytes]:
        return self.current()._answer_requests(request)

    def is_open(self) -> bool:
        with self._lock:
            return bool(self._open)

    def _answer_httpx(self, request: httpx.Request) -> httpx.Response:
        return self.current()._answer_httpx(request)


_INTERCEPTION = _Interception()


class _RequestsPatch:
    """`requests.Session.get_adapter`, wrapped: where requests' own network
    adapter would be chosen, upstream's URLs get one that the open mock
    answers and other hosts one that refuses; loopback, and everything under a
    test's own `responses` mock, keep the adapter chosen. Not
    `HTTPAdapter.send`, which `responses` patches: two `mock.patch`es of one
    attribute, stopped out of order, put back each other's patch (ours after
    theirs stopped, theirs after ours), and a patch that the other's stop
    overwrote no longer answers while it is open."""

    def __init__(self, interception: _Interception) -> None:
        self._interception = interception
        self._real: Any = None
        self._hook: Any = None

    def start(self) -> None:
        import requests

        self._real = requests.Session.__dict__["get_adapter"]
        real, patch = self._real, self

        def get_adapter(session: requests.Session, url: str) -> Any:
            return patch.adapter_for(session, url, real)

        self._hook = get_adapter
        requests.Session.get_adapter = get_adapter  # type: ignore[method-assign,assignment]

    def adapter_for(self, session: Any, url: str, real: Callable[[Any, str], Any]) -> Any:
        import requests

        chosen = real(session, url)
        # Stopped (and put back by a patch of someone else's), or a transport of the test's own: not ours to take.
        if not self._interception.is_open() or not isinstance(chosen, requests.adapters.HTTPAdapter):
            return chosen
        if _ANSWERED.match(url):
            return _AnsweringAdapter(self._interception, chosen)
        if _LOOPBACK.match(url) or _is_mocked(requests.adapters.HTTPAdapter.__dict__.get("send")):
            return chosen
        return _REFUSING

    def stop(self) -> None:
        import requests

        if requests.Session.__dict__.get("get_adapter") is self._hook:
            requests.Session.get_adapter = self._real  # type: ignore[method-assign]
        # Else whoever patched it since puts our hook back as they stop: it passes every call on while no mock is open.


def _is_mocked(send: Any) -> bool:
    """Whether `HTTPAdapter.send` is somebody's mock (`responses`'s), not requests' own network."""
    return not (getattr(send, "__module__", None) == "requests.adapters" and send.__qualname__ == "HTTPAdapter.send")


class _AnsweringAdapter:
    """In place of `adapter` for one call: the open mock answers, and the
    response is built, and retried on a status its `max_retries` names, as
    `responses` does it (without the waits)."""

    def __init__(self, interception: _Interception, adapter: Any) -> None:
        self._interception = interception
        self._adapter = adapter

    def send(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        import requests
        from urllib3.exceptions import MaxRetryError

        retries = self._adapter.max_retries
        while True:
            response = self._adapter.build_response(request, self._answer(request))
            if not retries.is_retry(
                method=request.method,
                status_code=response.status_code,
                has_retry_after="Retry-After" in response.headers,
            ):
                return response
            try:
                retries = retries.increment(method=request.method, url=response.url, response=response.raw)
            except MaxRetryError as exc:
                if retries.raise_on_status:
                    raise requests.exceptions.RetryError(exc, request=request) from None
                return response

    def _answer(self, request: Any) -> Any:
        from urllib3 import HTTPHeaderDict, HTTPResponse

        status, answered, content = self._interception._answer_requests(request)
        headers = HTTPHeaderDict(answered)
        # The original response's headers: what requests reads Set-Cookie from.
        original = HTTPResponse(body=io.BytesIO(), msg=headers, preload_content=False)  # type: ignore[arg-type]
        return HTTPResponse(
            body=io.BytesIO(content),
            headers=headers,
            status=status,
            reason=http.client.responses.get(status),
            original_response=original,  # type: ignore[arg-type]
            preload_content=False,
            request_method=request.method,
        )

    def close(self) -> None:
        pass


class _RefusingAdapter:
    """What a host that is neither upstream's nor loopback gets: a refused connection."""

    def send(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        import requests

        host = urlsplit(request.url).hostname
        raise requests.ConnectionError(
            f"compositor's mock lets nothing leave this machine: {host} is not upstream's or loopback", request=request
        )

    def close(self) -> None:
        pass


_REFUSING = _RefusingAdapter()


def _refuse_httpx(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError(
        f"compositor's mock lets nothing leave this machine: {request.url.host} is not upstream's or loopback",
        request=request,
    )


class MockBackgroundChange:
    """`mock_background_change()`: a context manager (yielding the running
    `BackgroundChangeMock`) and a decorator (a fresh mock for each call of the
    function, sync or async)."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._mocks: list[BackgroundChangeMock] = []  # entered again while open: each entry its own mock

    def __enter__(self) -> BackgroundChangeMock:
        mock = BackgroundChangeMock(**self._options).start()
        self._mocks.append(mock)
        return mock

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._mocks:
            self._mocks.pop().stop()

    def __call__(self, function: F) -> F:
        options = self._options
        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                with MockBackgroundChange(**options):
                    return await function(*args, **kwargs)

            return run_async  # type: ignore[return-value]

        @functools.wraps(function)
        def run(*args: Any, **kwargs: Any) -> Any:
            with MockBackgroundChange(**options):
                return function(*args, **kwargs)

        return run  # type: ignore[return-value]


def mock_background_change(**options: Any) -> MockBackgroundChange:
    """The in-process mirror; see the module's docstring. Options:
    `webhook_attempts` (3) and `webhook_first_delay_s` (0.2), so a test
    sees retries end quickly."""
    return MockBackgroundChange(**options)
