"""The package's shape, as the architecture page describes it: no import
circle, layers that import only downwards, commands that load only what they
use, and one parse per body in batch. Structural tests: they read the import
graph and `sys.modules`, never a clock."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "compositor"
EXAMPLE_3 = REPO / "fixtures" / "requests" / "example-3-template-and-color.json"

# Lowest first. A module may import its own layer and the ones before it, never one after it.
LAYERS: dict[str, tuple[str, ...]] = {
    "engine": (
        "codes", "text", "geometry", "layout", "report", "errors", "references", "request", "budget", "files",
        "sourcemap", "outbound", "sources", "preflight", "preview", "timings", "threads", "heap", "raster", "weights",
        "removebg", "png", "encode", "engine", "catalogue", "signals", "logs", "storage", "folderlock",
    ),
    "executors": ("pool", "executors", "batch"),
    "mirror": ("mirror",),
    "clients and test doubles": ("client", "testing", "pytest_plugin"),
    "commands": ("commands", "cli"),
}  # fmt: skip
# What the engine never imports: the web server, the cluster, the test doubles.
NOT_IN_THE_ENGINE = ("fastapi", "starlette", "uvicorn", "dask", "distributed", "pytest", "respx", "responses")


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Every module `name` imports, anywhere in it (at the top, in a function, under TYPE_CHECKING)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            submodules = {f"{module}.{alias.name}" for alias in node.names} & set(known)
            found.update(submodules or {module})  # `from compositor import text` imports compositor.text
    return found - {name}


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {name: {m for m in _imports(name, path, known) if m in known} for name, path in known.items()}


def _layer(module: str) -> int:
    first = module.split(".")[1] if module.count(".") else ""
    for index, members in enumerate(LAYERS.values()):
        if first in members:
            return index
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS (and to docs/architecture.md)")


def test_every_module_belongs_to_a_layer() -> None:
    for module in _modules():
        if module != "compositor":
            _layer(module)


def test_the_package_has_no_import_circle() -> None:
    graph = _graph()
    circles = []
    state: dict[str, int] = {}  # 1: on the path being walked, 2: done

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                walk(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            walk(module, [module])
    assert circles == [], f"import circles: {circles}"


def test_no_module_imports_a_higher_layer() -> None:
    upward = [
        f"{module} ({list(LAYERS)[_layer(module)]}) imports {target} ({list(LAYERS)[_layer(target)]})"
        for module, targets in _graph().items()
        if module != "compositor"
        for target in targets
        if target != "compositor" and _layer(target) > _layer(module)
    ]
    assert upward == []


def test_the_engine_never_imports_the_server_the_cluster_or_test_doubles() -> None:
    known = _modules()
    engine = {name for name in known if name != "compositor" and _layer(name) == 0}
    found = [
        f"{name} imports {module}"
        for name in sorted(engine)
        for module in _imports(name, known[name], known)
        if module.split(".")[0] in NOT_IN_THE_ENGINE
    ]
    assert found == []


# --- what each command loads --------------------------------------------------------------------------------------

HEAVY = ("numpy", "PIL", "cv2", "onnxruntime", "rembg", "fastapi", "uvicorn", "dask", "distributed", "httpx")

_PROBE = """
import json, os, sys
from compositor.cli import main
try:
    main(sys.argv[1:])
finally:
    print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)), file=sys.stderr)
"""


def _loaded_by(tmp_path: Path, *argv: str) -> list[str]:
    probe = tmp_path / "probe.py"
    probe.write_text(_PROBE.format(heavy=HEAVY))
    done = subprocess.run(
        [sys.executable, str(probe), *argv], capture_output=True, text=True, timeout=300, cwd=REPO, check=False
    )
    return json.loads(done.stderr.strip().splitlines()[-1])


def test_validate_loads_no_heavy_module(tmp_path: Path) -> None:
    assert _loaded_by(tmp_path, "validate", str(EXAMPLE_3)) == []
    assert _loaded_by(tmp_path, "validate", str(EXAMPLE_3), "--json", "--strict") == []


def test_validating_a_catalogue_loads_no_heavy_module(tmp_path: Path) -> None:
    assert _loaded_by(tmp_path, "validate", str(REPO / "fixtures" / "requests")) == []


def test_models_list_loads_no_heavy_module(tmp_path: Path) -> None:
    assert _loaded_by(tmp_path, "models", "list") == []


def test_render_without_remove_bg_loads_the_imaging_libraries_only(tmp_path: Path) -> None:
    loaded = _loaded_by(
        tmp_path,
        *("render", str(EXAMPLE_3), "-o", str(tmp_path / "out.png")),
        *("--source-map", str(REPO / "fixtures" / "source-map.json")),
    )
    assert (tmp_path / "out.png").is_file()
    assert loaded == ["PIL", "cv2", "numpy"]


def test_submit_of_a_body_of_urls_loads_the_http_client_and_no_imaging_library(tmp_path: Path) -> None:
    # Nothing listens on port 9 of loopback: the call fails at once, after the imports it needs.
    loaded = _loaded_by(
        tmp_path, "submit", str(EXAMPLE_3), "--base-url", "http://127.0.0.1:9", "--api-key", "x", "-o", "x.png"
    )
    assert "httpx" in loaded
    assert not {"numpy", "PIL", "cv2", "onnxruntime", "fastapi", "uvicorn", "dask"} & set(loaded)


def test_import_compositor_and_validate_load_no_heavy_module() -> None:
    code = (
        "import json, sys, compositor\n"
        "report = compositor.validate({'canvas_size': '8x8'})\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(done.stdout) == []


def test_compositor_render_is_still_there_on_first_use() -> None:
    import compositor

    assert callable(compositor.render) and compositor.render.__module__ == "compositor.engine"
    assert sorted(compositor.__all__) == sorted(compositor._HOMES)
    with pytest.raises(AttributeError):
        compositor.no_such_name  # noqa: B018


# --- one parse per body ---------------------------------------------------------------------------------------------


def test_batch_parses_each_body_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from compositor import batch, request

    calls = []
    real = request._Validator.run

    def counted(self: request._Validator, body: object, *, strict: bool) -> request.ValidationReport:
        calls.append(body)
        return real(self, body, strict=strict)

    monkeypatch.setattr(request._Validator, "run", counted)
    body = {
        "canvas_size": "16x16",
        "color_code": "#112233",
        "origin_img": "data:image/png;base64,"
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==",
        "modify_origin_img_size": "4x4",
        "overlay_origin_x": 2,
        "overlay_origin_y": 2,
    }
    outcome = batch.render_item(body, str(REPO), None, "u2netp")
    assert outcome.code == 1000 and outcome.png is not None
    assert len(calls) == 1
