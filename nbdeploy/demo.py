"""Voila demo pages: one generated notebook per deployment, and the Voila server that shows it.

``write_demo`` builds ``NBDEPLOY_HOME/demos/<name>.ipynb`` from the registered model's signature
and metadata: a parameters cell (endpoint URL, token, model name) at the top, the demo spec, and
the standalone page code of :mod:`nbdeploy._demo_template`, so the file runs anywhere with
numpy, pillow and ipywidgets. ``launch_demo`` serves it with Voila on 127.0.0.1 as a detached
subprocess recorded in ``demos/<name>.json``, so another process (the CLI, a restarted kernel)
can find it again and ``stop_demo`` it without ever signalling a recycled pid.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import pprint
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nbdeploy import _procs, _settings
from nbdeploy._errors import DeployError, NbdeployError
from nbdeploy.artifact import ModelArtifact

TEMPLATE_FILE = Path(__file__).with_name("_demo_template.py")
DEFAULT_TOP_K = 5
KERNEL_NAME = "python3"
CULL_IDLE_SECONDS = 900

# Voila servers started by this interpreter, so their exit status is collected (no zombies).


@dataclass
class DemoServer:
    """A running Voila server showing one deployment's demo page."""

    name: str
    url: str
    port: int
    pid: int
    notebook: str
    log_path: str
    start_time: str | None = None

    @property
    def alive(self) -> bool:
        return _procs.alive(self.pid, self.start_time)

    def stop(self) -> bool:
        return stop_demo(self.name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return self.url

    def _repr_html_(self) -> str:
        """The link through the Jupyter server this kernel runs under when there is one (a
        remote user's browser reaches only that), the direct 127.0.0.1 link second."""
        from html import escape

        try:
            primary = links(self.name)["demo"] or self.url
        except (DeployError, OSError):
            primary = self.url
        shown = f'<a href="{escape(primary)}" target="_blank">{escape(primary)}</a>'
        if primary != self.url:
            shown += (
                f' (direct: <a href="{escape(self.url)}" target="_blank">{escape(self.url)}</a>)'
            )
        return f"demo of <b>{escape(self.name)}</b>: {shown}"


def demo_path(name: str) -> Path:
    return _settings.demos_dir() / f"{name}.ipynb"


def _record_path(name: str) -> Path:
    return _settings.demos_dir() / f"{name}.json"


def _log_path(name: str) -> Path:
    return _settings.demos_dir() / f"{name}.voila.log"


def _class_output(artifact: ModelArtifact) -> str | None:
    """The output the top-k chart reads: the one recorded as probabilities (else logits); for
    older artifacts, the one whose width matches the labels, else a 2-D float output."""
    recorded = artifact.metadata.get("outputs") or {}
    for kind in ("probabilities", "logits"):
        name = next((n for n, info in recorded.items() if info.get("kind") == kind), None)
        if name is not None:
            return name
    outputs = artifact.signature.outputs
    if artifact.labels:
        count = len(artifact.labels)
        for spec in outputs:
            width = spec.shape[-1] if spec.shape else None
            if width == count or (count == 2 and width == 1):
                return spec.name
    for spec in outputs:
        if len(spec.shape) == 2 and spec.dtype.startswith("float"):
            return spec.name
    return outputs[0].name if outputs else None


def _with_column_names(preprocessing: dict[str, Any], metadata: dict[str, Any]) -> dict[str, Any]:
    """The form's fields completed from what the export recorded: a one-matrix model's
    ``feature_names`` (else x0, x1, ...); for a DataFrame model, each column's name and the
    categories its encoder knows (beside those seen in the sample)."""
    if preprocessing.get("kind") != "tabular":
        return preprocessing
    spec = copy.deepcopy(preprocessing)
    columns = spec.get("columns") or []
    if spec.get("layout") == "columns":
        recorded = [c for c in metadata.get("columns") or [] if isinstance(c, dict)]
        by_name = {str(c.get("name")): c for c in recorded}
        if len(recorded) == len(columns) and not all(c["input"] in by_name for c in columns):
            by_name = {c["input"]: r for c, r in zip(columns, recorded, strict=True)}
        for column in columns:
            known = by_name.get(column["input"])
            if known is None:
                continue
            column["name"] = str(known.get("name") or column["name"])
            if column.get("kind") == "categorical" and known.get("categories"):
                seen = set(column.get("categories") or [])
                column["categories"] = sorted(seen | {str(c) for c in known["categories"]})
        spec["feature_names"] = [c["name"] for c in columns]
        return spec
    recorded = [str(c.get("name")) for c in metadata.get("columns") or [] if isinstance(c, dict)]
    names = [str(n) for n in metadata.get("feature_names") or recorded]
    count = len(columns) or int(spec.get("features") or 0)
    if names and not spec.get("feature_names") and len(names) == count:
        spec["feature_names"] = names
        for column, name in zip(columns, names, strict=True):
            column["name"] = name
    return spec


def demo_spec(artifact: ModelArtifact, *, top_k: int = DEFAULT_TOP_K) -> dict[str, Any]:
    """Everything the page needs to know about the model, as plain JSON-able data.

    Uses the preprocessing recorded at deploy time; without it, infers one from the signature
    and the recorded input kind (no sample: images are assumed to be scaled to [0, 1]).
    ``outputs`` is what the export recorded each output to be (label, probabilities, logits,
    value): the page shows probabilities as the endpoint returns them and applies softmax only
    to logits. ``accepts_nan`` names the inputs a blank number may be sent to as missing.
    """
    from nbdeploy.preprocess import describe_inputs

    preprocessing = artifact.metadata.get("preprocessing") or describe_inputs(
        artifact.signature, None, kind=artifact.input_kind
    )
    outputs = artifact.metadata.get("outputs") or None
    labels = artifact.labels
    class_output = _class_output(artifact)
    if not labels and outputs and class_output in outputs:
        labels = outputs[class_output].get("classes") or None
    return {
        "model": artifact.name,
        "version": artifact.version,
        "variant": artifact.variant,
        "framework": artifact.framework,
        "kind": preprocessing["kind"],
        "preprocessing": _with_column_names(preprocessing, artifact.metadata),
        "inputs": [spec.to_dict() for spec in artifact.signature.inputs],
        "output": class_output,
        "outputs": outputs,
        "accepts_nan": list(artifact.metadata.get("accepts_nan") or []),
        "labels": labels,
        "top_k": int(top_k),
    }


def _intro(spec: dict[str, Any]) -> str:
    what = {
        "image": "Upload a picture (or draw one) and press **Predict**.",
        "tabular": "Fill in the form (or pick an example row) and press **Predict**.",
        "text": "Type some text and press **Predict**.",
    }.get(spec["kind"], "Edit the request's inputs (JSON) and press **Predict**.")
    facts = [f"version {spec['version']}", spec["variant"], spec["framework"]]
    return (
        f"# {spec['model']}: live demo\n\n"
        f"{' · '.join(str(f) for f in facts if f)}. {what} The page calls the model's Open"
        " Inference Protocol (V2) endpoint and shows the top labels and the request latency."
    )


def build_notebook(spec: dict[str, Any], *, url: str, token: str | None) -> Any:
    """The demo notebook: parameters first, then the spec, the page code and its display."""
    import nbformat
    from nbformat import v4

    parameters = v4.new_code_cell(
        "# Parameters: where the endpoint is and how to call it.\n"
        f"ENDPOINT_URL = {url!r}\n"
        f"TOKEN = {token!r}\n"
        f"MODEL_NAME = {spec['model']!r}"
    )
    parameters.metadata["tags"] = ["parameters"]
    spec_cell = v4.new_code_cell(f"DEMO = {pprint.pformat(spec, width=100, sort_dicts=False)}")
    code_cell = v4.new_code_cell(TEMPLATE_FILE.read_text())
    for cell in (spec_cell, code_cell):
        cell.metadata["jupyter"] = {"source_hidden": True}
    notebook = v4.new_notebook(
        cells=[
            v4.new_markdown_cell(_intro(spec)),
            parameters,
            spec_cell,
            code_cell,
            v4.new_code_cell("show_demo(ENDPOINT_URL, TOKEN, MODEL_NAME, DEMO)"),
        ],
        metadata={
            "kernelspec": {
                "name": KERNEL_NAME,
                "display_name": "Python 3 (ipykernel)",
                "language": "python",
            },
            "language_info": {"name": "python"},
            "nbdeploy": {"model": spec["model"], "version": spec["version"]},
        },
    )
    nbformat.validate(notebook)
    return notebook


def write_demo(
    name: str,
    *,
    directory: str | Path | None = None,
    top_k: int = DEFAULT_TOP_K,
) -> Path:
    """(Re)generate the demo notebook of the active deployment ``name``; returns its path.

    The file holds the endpoint's token, so it is written readable by its owner only.
    """
    import nbformat

    from nbdeploy.deployment import current_record
    from nbdeploy.repository import ModelRepository

    serving = current_record(name)
    artifact = ModelRepository().get(name, serving.version)
    notebook = build_notebook(
        demo_spec(artifact, top_k=top_k), url=serving.url, token=serving.token
    )
    target = Path(directory) / f"{name}.ipynb" if directory is not None else demo_path(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    _write_private(target, lambda handle: nbformat.write(notebook, handle))
    return target


def _write_private(path: Path, write: Callable[[Any], None]) -> None:
    """Write a file only its owner may read (it holds a token or says where a server is),
    through a temp file + rename so a reader never sees half of it."""
    scratch = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        write(handle)
    os.replace(scratch, path)


# ``python -m voila``, minus one import: jsonschema loads ``rfc3987_syntax`` (if installed) for
# its "iri" format check, and that module compiles a Lark grammar at import time, about 2.5 s of
# Voila's start on a small CPU for a check Voila never needs. Blocking it makes jsonschema skip
# that one format, as it does wherever the package is absent.
VOILA_BOOTSTRAP = (
    "import sys; sys.modules.setdefault('rfc3987_syntax', None); "
    "from voila.app import main; sys.exit(main())"
)


def voila_command(notebook: Path, port: int) -> list[str]:
    """Voila from this interpreter, bound to 127.0.0.1 on exactly ``port``, sources stripped."""
    return [
        sys.executable,
        "-c",
        VOILA_BOOTSTRAP,
        str(notebook),
        "--no-browser",
        f"--port={port}",
        "--Voila.ip=127.0.0.1",
        "--Voila.port_retries=0",
        "--strip_sources=True",
        "--show_tracebacks=False",
        "--theme=light",
        # A kernel per page view: reclaim those whose browser left without closing them.
        f"--MappingKernelManager.cull_idle_timeout={CULL_IDLE_SECONDS}",
        "--MappingKernelManager.cull_interval=60",
    ]


def voila_env() -> dict[str, str]:
    """This environment, with this interpreter's kernelspec first and the same NBDEPLOY_HOME.

    Voila picks the notebook's ``python3`` kernel from the Jupyter data path; putting
    ``sys.prefix/share/jupyter`` first makes it this venv's ipykernel, not a user-wide one.
    """
    env = dict(os.environ)
    data_dir = str(Path(sys.prefix) / "share" / "jupyter")
    env["JUPYTER_PATH"] = os.pathsep.join(p for p in (data_dir, env.get("JUPYTER_PATH")) if p)
    env["NBDEPLOY_HOME"] = str(_settings.home())
    env["PYTHONUNBUFFERED"] = "1"
    package_parent = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    return env


def launch_demo(
    name: str,
    *,
    port: int | None = None,
    open_browser: bool = False,
    timeout: float = 60.0,
) -> DemoServer:
    """Write the demo of ``name`` and serve it with Voila on 127.0.0.1; returns the server.

    A demo server already running for ``name`` is reused (Voila reads the notebook on every
    page load, so it shows the regenerated file) unless a different ``port`` is asked for.
    """
    from nbdeploy.runtimes.base import ensure_port_free, free_port

    notebook = write_demo(name)
    current = running_demo(name)
    if current is not None and (port is None or port == current.port):
        server = current
    else:
        if current is not None:
            stop_demo(name)
        if port is not None:
            ensure_port_free(port)
        server = _start(name, notebook, port if port is not None else free_port(), timeout)
    if open_browser:
        import webbrowser

        webbrowser.open(server.url)
    return server


def _start(name: str, notebook: Path, port: int, timeout: float) -> DemoServer:
    log_path = _log_path(name)
    pid, started = _procs.spawn(
        voila_command(notebook, port), log_path=log_path, cwd=notebook.parent, env=voila_env()
    )
    server = DemoServer(
        name=name,
        url=f"http://127.0.0.1:{port}/",
        port=port,
        pid=pid,
        notebook=str(notebook),
        log_path=str(log_path),
        start_time=started,
    )
    _record_path(name).write_text(json.dumps(server.to_dict(), indent=2))
    deadline = time.monotonic() + timeout
    while not _answers(server.port):
        exited = not server.alive
        if exited or time.monotonic() > deadline:
            tail = _tail(log_path)
            stop_demo(name)
            state = "exited" if exited else f"did not answer within {timeout:.0f} s"
            raise DeployError(f"the Voila server for {name!r} {state}; its log ends with:\n{tail}")
        time.sleep(0.1)
    return server


def _answers(port: int) -> bool:
    """True once Voila's HTTP server responds (a static route: loading the page runs a kernel)."""
    url = f"http://127.0.0.1:{port}/voila/static/"
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=1.0):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _load_record(path: Path) -> DemoServer | None:
    try:
        return DemoServer(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def running_demo(name: str) -> DemoServer | None:
    """The demo server of ``name`` when one runs."""
    server = _load_record(_record_path(name))
    if server is None or not server.alive:
        return None
    return server


def running_demos() -> list[DemoServer]:
    """Every demo server started from this NBDEPLOY_HOME that is still running."""
    servers = (_load_record(path) for path in sorted(_settings.demos_dir().glob("*.json")))
    return [server for server in servers if server is not None and server.alive]


def stop_demo(name: str, timeout: float = 10.0) -> bool:
    """Stop the demo server of ``name``; True if one was running. Voila shuts its kernels down."""
    record = _record_path(name)
    server = _load_record(record)
    stopped = False
    if server is not None and server.alive:
        _procs.terminate(server.pid, timeout=timeout, term_group=False)
        stopped = True
    with contextlib.suppress(FileNotFoundError):
        record.unlink()
    return stopped


def voila_extension_path(name: str, root_dir: str | Path) -> str:
    """The demo's path under a Jupyter server's own Voila extension: ``voila/render/...``.

    Append it to the server's base URL. The demo must lie under the server's ``root_dir``
    (e.g. start JupyterLab in NBDEPLOY_HOME, or ``write_demo(name, directory=...)`` inside it).
    """
    notebook = demo_path(name).resolve()
    root = Path(root_dir).expanduser().resolve()
    try:
        relative = notebook.relative_to(root)
    except ValueError:
        raise DeployError(
            f"the demo {notebook} is outside the Jupyter server's root {root}; write it inside"
            f" with write_demo({name!r}, directory=...)"
        ) from None
    return f"voila/render/{relative.as_posix()}"


def inline_demo(name: str, *, top_k: int = DEFAULT_TOP_K) -> Any:
    """The demo of the active deployment ``name`` as a widget for the notebook's cell output.

    The very page the Voila demo runs (``_demo_template.DemoApp`` built from the same
    :func:`demo_spec`), calling the same endpoint from the kernel, with the page's style.
    """
    from nbdeploy import _demo_template as page
    from nbdeploy.deployment import current_record
    from nbdeploy.repository import ModelRepository

    serving = current_record(name)
    artifact = ModelRepository().get(name, serving.version)
    spec = demo_spec(artifact, top_k=top_k)
    return page.show_demo(serving.url, serving.token, spec["model"], spec)


# --- where the Jupyter server this kernel runs under is (written by the server extension) -----


def _jupyter_record(pid: int) -> Path:
    return _settings.home() / "jupyter" / f"{pid}.json"


def record_jupyter_server(*, base_url: str, root_dir: str, voila: bool) -> Path:
    """Note that a Jupyter server with nbdeploy's extension runs in this process: its base URL,
    root dir and whether Voila's extension is loaded, so its kernels link through it."""
    path = _jupyter_record(os.getpid())
    path.parent.mkdir(parents=True, exist_ok=True)
    info = {
        "pid": os.getpid(),
        "start_time": _procs.start_time(os.getpid()),
        "base_url": base_url if base_url.endswith("/") else base_url + "/",
        "root_dir": str(root_dir),
        "voila": bool(voila),
    }
    _write_private(path, lambda handle: json.dump(info, handle))
    return path


def forget_jupyter_server() -> None:
    """Remove this process's Jupyter server record (the server is shutting down)."""
    with contextlib.suppress(OSError):
        _jupyter_record(os.getpid()).unlink()


def jupyter_server() -> dict[str, Any] | None:
    """The Jupyter server this process is (the extension's own process) or runs under (a kernel
    it started), as recorded by nbdeploy's server extension; None outside Jupyter."""
    launcher = os.environ.get("JPY_PARENT_PID", "")  # set by jupyter_client for its kernels
    candidates = [os.getpid(), os.getppid()] + ([int(launcher)] if launcher.isdigit() else [])
    for pid in dict.fromkeys(candidates):
        try:
            info = json.loads(_jupyter_record(pid).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(info, dict) and _procs.alive(pid, info.get("start_time")):
            return info
    return None


def links(name: str) -> dict[str, str | None]:
    """Where to open the endpoint and the demo of ``name``: through the Jupyter server this
    runs under when there is one (a path under its base URL, so a remote user's browser
    reaches it), else directly; the direct 127.0.0.1 URLs as ``*_direct``."""
    from nbdeploy.deployment import current_record
    from nbdeploy.vocabulary import PROXY_PREFIX

    serving = current_record(name)
    running = running_demo(name)
    demo_direct = running.url if running is not None else None
    found = {
        "endpoint": serving.url,
        "endpoint_direct": serving.url,
        "demo": demo_direct,
        "demo_direct": demo_direct,
    }
    server = jupyter_server()
    if server is None:
        return found
    base = str(server.get("base_url") or "/")
    found["endpoint"] = f"{base}{PROXY_PREFIX}/{name}/"
    if server.get("voila"):
        through = _voila_path(name, str(server.get("root_dir")))
        if through is not None:
            found["demo"] = base + through
    return found


def demo_url(name: str, jupyter_root: str | None = None) -> str | None:
    """Where the demo of ``name`` opens: under a Jupyter server's Voila extension when its
    notebook lies under ``jupyter_root`` (a path relative to Jupyter's base URL), else the URL
    of its running demo server, else None."""
    through = _voila_path(name, jupyter_root) if jupyter_root is not None else None
    if through is not None:
        return through
    server = running_demo(name)
    return server.url if server is not None else None


def _voila_path(name: str, root_dir: str) -> str | None:
    if not demo_path(name).exists():
        return None
    try:
        return voila_extension_path(name, root_dir)
    except NbdeployError:
        return None
