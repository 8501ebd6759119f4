"""Versions side by side through the notebook surfaces: the magics, the DeployPanel and the REST
routes of the server extension, against real two-version deployments on the process runtime.

The first tests need no deployment (what a surface refuses before calling the core); the rest
deploy v1, then v2 as a canary, and drive promote / rollback / traffic / compare through the
surface under test.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from IPython.core.interactiveshell import InteractiveShell
from tornado.httpclient import HTTPClientError
from traitlets.config import Config

import nbdeploy as nbd
from nbdeploy import DeployPanel
from nbdeploy.jupyter import parse_weights
from nbdeploy.jupyter.magics import DeployMagicError
from nbdeploy.jupyter.render import DeploymentTable, VersionsView, traffic_text
from nbdeploy.vocabulary import DeploymentView, VersionView
from tests.helpers.onnx_models import linear_model, save_linear
from tests.helpers.views import deployment_view

NAME = "twin"
X = np.random.default_rng(3).standard_normal((64, 4)).astype(np.float32)


def view(versions: list[VersionView], guard: str | None = None) -> DeploymentView:
    return deployment_view(NAME, versions, guard=guard)


CANARY = [
    VersionView(1, 90, "stable", requests=90, errors=0, p50_ms=1.5, p99_ms=3.25),
    VersionView(2, 10, "canary", requests=10, errors=1, agreement=0.875),
]


@pytest.fixture
def stop_all() -> Iterator[None]:
    yield
    for endpoint in nbd.deployments():
        endpoint.stop()


@pytest.fixture
def ip(stop_all: None) -> Iterator[InteractiveShell]:
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "nbdeploy")
    magic = shell.magics_manager.registry["DeployMagic"]
    added = set(shell.user_ns)
    shell.run_line_magic("config", 'DeployMagic.runtime = "process"')
    yield shell
    for name, trait in magic.traits(config=True).items():
        setattr(magic, name, trait.default())
    for name in set(shell.user_ns) - added:
        del shell.user_ns[name]


@pytest.fixture
def paths(tmp_path: Path) -> tuple[str, str, str]:
    """Three linear models with different weights: v1, its successor v2, and a v3."""
    return tuple(str(save_linear(tmp_path / f"v{seed}.onnx", seed=seed)) for seed in (0, 1, 2))


def two_versions(paths: tuple[str, ...], **canary: object) -> nbd.Endpoint:
    """v1 stable, v2 beside it as a 10% canary (or as ``canary`` says)."""
    nbd.deploy(paths[0], name=NAME, runtime="process")
    return nbd.deploy(paths[1], name=NAME, runtime="process", **(canary or {"canary": 10}))


# --------------------------------------------------------------------- shown, not deployed


def test_the_split_reads_as_one_line_only_when_versions_share() -> None:
    assert traffic_text(CANARY) == "v1 90% · v2 10% (canary)"
    assert traffic_text([VersionView(1, 100, "stable")]) is None
    shadow = [VersionView(1, 100, "stable"), VersionView(2, 0, "shadow")]
    assert traffic_text(shadow) == "v1 100% · v2 0% (shadow)"
    assert traffic_text([VersionView(1, 100, "stable"), VersionView(2, 0, "idle")]) is None


def test_versions_view_and_deployments_table_show_split_and_guard() -> None:
    shown = VersionsView.of(view(CANARY, guard="p99 4.1 ms > max_p99_ms 1 over 20 requests"))
    text = repr(shown)
    assert text.splitlines()[0] == "twin (stable v1) traffic: v1 90% · v2 10%"
    assert "guard: p99 4.1 ms > max_p99_ms 1 over 20 requests" in text
    assert "87.5%" in text and "canary" in text and "3.25" in text
    assert "<table" in shown._repr_html_() and "guard:" in shown._repr_html_()

    table = DeploymentTable([view(CANARY)])
    assert "traffic" in repr(table) and "v1 90% · v2 10% (canary)" in repr(table)
    assert "guard" not in repr(table), "no guard column while no guard tripped"
    guarded = DeploymentTable([view(CANARY, guard="error rate 0.5 > 0.1")])
    assert "guard" in repr(guarded).splitlines()[0]
    assert "error rate 0.5 &gt; 0.1" in guarded._repr_html_()


def test_weights_parse_from_pairs() -> None:
    assert parse_weights(["1=90", "2:10%"]) == {1: 90, 2: 10}
    with pytest.raises(nbd.InputError, match="expected VERSION=PERCENT pairs"):
        parse_weights(["1=50", "two=50"])
    with pytest.raises(nbd.InputError, match="version 1 is given twice"):
        parse_weights(["1=50", "1=50"])


@pytest.mark.parametrize(
    ("magic", "line", "message"),
    [
        ("deploy", "path --canary 10 --shadow", "--canary and --shadow exclude each other"),
        ("deploy", "path --canari 10", "(did you mean --canary?)"),
        ("deploy", "path --canary ten", "argument --canary: invalid int value: 'ten'"),
        ("deploy", "path --canary 10 --max-p99ms 5", "(did you mean --max-p99-ms?)"),
        ("deploy", "path --min-agreement high", "invalid float value: 'high'"),
        ("promote", "", "the following arguments are required: NAME"),
        ("promote", "twin --verison 2", "(did you mean --version?)"),
        ("rollback", "twin --version two", "invalid int value: 'two'"),
        ("traffic", "twin 1=50 2", "expected VERSION=PERCENT pairs such as 1=90 2=10; got '2'"),
        ("traffic", "twin 1=50 1=50", "version 1 is given twice"),
        ("compare", "twin a b c", "%compare takes NAME, then at most X and y; got 'a b c'"),
        ("compare", "twin x_tset", "X: no variable named 'x_tset'"),
        ("compare", "twin x_test[:4] nosuch", "y: no variable named 'nosuch'"),
    ],
)
def test_bad_input_to_the_version_magics_is_one_readable_line(
    ip: InteractiveShell, paths: tuple[str, ...], magic: str, line: str, message: str
) -> None:
    ip.user_ns.update(path=paths[0], x_test=X)
    with pytest.raises(DeployMagicError) as caught:
        ip.run_line_magic(magic, line)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
    assert nbd.deployments() == []


def test_the_version_magics_are_registered_with_help(
    ip: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("promote", "rollback", "traffic", "compare"):
        assert name in ip.magics_manager.magics["line"]
    ip.run_cell("%deploy?")
    text = capsys.readouterr().out
    for option in ("--canary", "--shadow", "--max-error-rate", "--min-agreement", "--max-p99-ms"):
        assert option in text


# --------------------------------------------------------------------- the magics, for real


def test_magics_canary_traffic_compare_promote_rollback(
    ip: InteractiveShell, paths: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    _, weight, bias = linear_model(seed=0)
    ip.user_ns.update(v1=paths[0], v2=paths[1], x_test=X, y_test=(X @ weight + bias).argmax(1))
    ip.run_line_magic("deploy", f"v1 --name {NAME}")
    capsys.readouterr()

    endpoint = ip.run_line_magic("deploy", f"v2 --name {NAME} --canary 10")

    out = capsys.readouterr().out
    assert f"{NAME} v2 is running on the process runtime" in out
    assert "traffic:  v1 90% · v2 10% (canary)" in out
    assert endpoint.version == 1 and endpoint.traffic == {1: 90, 2: 10}

    shown = ip.run_line_magic("traffic", NAME)
    assert isinstance(shown, VersionsView) and shown.traffic == {1: 90, 2: 10}
    assert "v1 90% · v2 10% (canary)" in repr(ip.run_line_magic("deployments", ""))

    split = ip.run_line_magic("traffic", f"{NAME} 1=50 2=50")
    assert split.traffic == {1: 50, 2: 50} and nbd.traffic(NAME) == {1: 50, 2: 50}
    for _ in range(8):
        endpoint.predict(X[:4])

    live = ip.run_line_magic("compare", NAME)
    assert live.source == "live" and live.reference == 1
    assert sorted(row.version for row in live.versions) == [1, 2]
    assert sum(row.requests for row in live.versions) >= 8
    assert "<table" in live._repr_html_()

    offline = ip.run_line_magic("compare", f"{NAME} x_test y_test")
    assert offline.source == "offline"
    assert {row.version: row.metric for row in offline.versions} == {1: "accuracy", 2: "accuracy"}
    assert offline.get(1).score == 1.0, "y holds v1's own top classes"
    assert offline.get(1).requests == offline.get(2).compared == len(X)

    with pytest.raises(DeployMagicError, match="must add up to 100|sum"):
        ip.run_line_magic("traffic", f"{NAME} 1=50 2=20")
    assert nbd.traffic(NAME) == {1: 50, 2: 50}, "a refused split changes nothing"

    promoted = ip.run_line_magic("promote", NAME)
    assert promoted.version == 2 and promoted.traffic[2] == 100
    assert repr(promoted).startswith(f"promoted v2: {NAME} (stable v2)")
    assert nbd.get(NAME).version == 2

    back = ip.run_line_magic("rollback", NAME)
    assert back.version == 1 and back.traffic[1] == 100
    assert nbd.get(NAME).version == 1


def test_magic_rollback_drops_a_canary_and_guards_show_in_the_listing(
    ip: InteractiveShell, paths: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    ip.user_ns.update(v1=paths[0], v2=paths[1], v3=paths[2])
    ip.run_line_magic("deploy", f"v1 --name {NAME}")
    ip.run_line_magic("deploy", f"v2 --name {NAME} --canary 20")

    back = ip.run_line_magic("rollback", NAME)
    assert back.version == 1 and back.traffic == {1: 100}
    assert nbd.traffic(NAME) == {1: 100}

    endpoint = ip.run_line_magic(
        "deploy", f"v3 --name {NAME} --canary 50 --max-p99-ms 0.000001 --min-requests 2"
    )
    deadline = time.monotonic() + 30
    while nbd.get(NAME).view().guard is None and time.monotonic() < deadline:
        endpoint.predict(X[:2])
        time.sleep(0.05)
    listing = repr(ip.run_line_magic("deployments", ""))
    guard = nbd.get(NAME).view().guard
    assert guard and "p99" in guard
    assert listing.splitlines()[0].split()[-1] == "guard" and guard in listing
    assert nbd.traffic(NAME)[1] == 100, "the guard gave the stable version all traffic back"


# --------------------------------------------------------------------- the panel


def _click(panel: DeployPanel, button: object) -> None:
    button.click()  # type: ignore[attr-defined]
    panel.wait(timeout=300)
    assert not panel.busy


def test_panel_rows_show_versions_and_promote_stop_version_rollback(
    paths: tuple[str, ...], stop_all: None
) -> None:
    two_versions(paths)
    panel = DeployPanel(namespace={})
    row = panel.deployment_rows[NAME]

    assert sorted(row.version_lines) == [1, 2]
    stable, canary = row.version_lines[1], row.version_lines[2]
    assert "<b>v1</b> &middot; 90% &middot; stable" in stable.label.value
    assert "<b>v2</b> &middot; 10% &middot; canary" in canary.label.value
    assert "requests" in canary.label.value and "errors" in canary.label.value
    assert stable.promote_button.layout.display == "none", "nothing to promote on the stable"
    assert canary.promote_button.layout.display != "none"

    _click(panel, canary.promote_button)
    assert panel.last_error is None, panel.log_text
    assert f"promoted {NAME} v2" in panel.log_text
    assert nbd.get(NAME).version == 2
    assert "stable" in row.version_lines[2].label.value

    nbd.deploy(paths[2], name=NAME, runtime="process", canary=30)
    panel.refresh()
    third = row.version_lines[3]
    third.stop_button.click()
    assert row.asking and not panel.busy
    assert row.question.value == f"stop version 3 of {NAME}? its traffic goes to the stable version"
    row.cancel_button.click()
    assert not row.asking and 3 in nbd.traffic(NAME)

    third.stop_button.click()
    _click(panel, row.confirm_button)
    assert panel.last_error is None, panel.log_text
    assert f"stopped version 3 of {NAME}" in panel.log_text
    assert 3 not in nbd.traffic(NAME) and 3 not in row.version_lines

    _click(panel, row.rollback_button)
    assert panel.last_error is None, panel.log_text
    assert f"rolled back {NAME} to v1" in panel.log_text
    assert nbd.get(NAME).version == 1


def test_panel_shows_a_guard_reason(paths: tuple[str, ...], stop_all: None) -> None:
    endpoint = two_versions(paths, canary=50, guards={"max_p99_ms": 0.000001, "min_requests": 2})
    deadline = time.monotonic() + 30
    while nbd.get(NAME).view().guard is None and time.monotonic() < deadline:
        endpoint.predict(X[:2])
        time.sleep(0.05)
    panel = DeployPanel(namespace={})
    value = panel.deployment_rows[NAME].guard_view.value
    assert value.startswith("<span style='color:#cf222e'>guard: ") and "p99" in value


# --------------------------------------------------------------------- the REST routes


@pytest.fixture
def jp_server_config() -> Config:
    return Config({"ServerApp": {"jpserver_extensions": {"nbdeploy.jupyter.server": True}}})


async def fetch_json(jp_fetch, *parts: str, **kwargs) -> dict:
    response = await jp_fetch("nbdeploy", "api", "deployments", *parts, **kwargs)
    assert response.headers["Content-Type"].startswith("application/json")
    return json.loads(response.body)


async def fetch_error(jp_fetch, *parts: str, **kwargs) -> tuple[int, str]:
    with pytest.raises(HTTPClientError) as caught:
        await jp_fetch("nbdeploy", "api", "deployments", *parts, **kwargs)
    return caught.value.code, json.loads(caught.value.response.body)["error"]


@pytest.mark.parametrize(
    ("parts", "method", "body", "message"),
    [
        (("traffic",), "PUT", "", 'expected {"weights": {"1": 90, "2": 10}} as body'),
        (("traffic",), "PUT", '{"weights": []}', "expected {"),
        (("traffic",), "PUT", '{"weights": {"one": 100}}', "version must be a positive integer"),
        (("traffic",), "PUT", '{"weights": {"1": "100"}}', "must be an integer percent"),
        (("traffic",), "PUT", '{"weights": {"1": true}}', "must be an integer percent"),
        (("traffic",), "PUT", "[1]", "expected a JSON object as body"),
        (("promote",), "POST", '{"version": "2"}', "version must be a positive integer"),
        (("promote",), "POST", '{"version": 0}', "version must be a positive integer"),
        (("rollback",), "POST", '{"version": 1.5}', "version must be a positive integer"),
        (("versions", "two"), "DELETE", None, "version must be a positive integer; got 'two'"),
        (("versions", "0"), "DELETE", None, "version must be a positive integer"),
    ],
)
async def test_rest_refuses_malformed_requests_with_400(
    jp_fetch, parts: tuple[str, ...], method: str, body: str | None, message: str
) -> None:
    code, error = await fetch_error(jp_fetch, NAME, *parts, method=method, body=body)
    assert code == 400 and message in error


async def test_rest_unknown_deployment_is_404(jp_fetch) -> None:
    for parts, method, body in [
        (("promote",), "POST", ""),
        (("traffic",), "PUT", '{"weights": {"1": 100}}'),
        (("traffic",), "GET", None),
        (("compare",), "GET", None),
        (("versions", "2"), "DELETE", None),
    ]:
        code, error = await fetch_error(jp_fetch, "ghost", *parts, method=method, body=body)
        assert code == 404 and "'ghost'" in error, (parts, error)


async def test_rest_versions_traffic_compare_promote_stop_version(
    jp_fetch, paths: tuple[str, ...], stop_all: None
) -> None:
    endpoint = two_versions(paths)

    (row,) = (await fetch_json(jp_fetch))["deployments"]
    assert row["version"] == 1 and row["guard"] is None
    assert [(v["version"], v["weight"], v["role"]) for v in row["versions"]] == [
        (1, 90, "stable"),
        (2, 10, "canary"),
    ]
    assert await fetch_json(jp_fetch, NAME, "traffic") == {
        "name": NAME,
        "weights": {"1": 90, "2": 10},
    }

    row = await fetch_json(
        jp_fetch, NAME, "traffic", method="PUT", body='{"weights": {"1": 50, "2": 50}}'
    )
    assert {v["version"]: v["weight"] for v in row["versions"]} == {1: 50, 2: 50}
    code, error = await fetch_error(
        jp_fetch, NAME, "traffic", method="PUT", body='{"weights": {"1": 50, "2": 20}}'
    )
    assert code == 400 and "100" in error
    code, error = await fetch_error(
        jp_fetch, NAME, "traffic", method="PUT", body='{"weights": {"1": 50, "9": 50}}'
    )
    assert code == 404 and error == f"{NAME} has no version 9; its registered versions are [1, 2]"
    assert nbd.traffic(NAME) == {1: 50, 2: 50}

    for _ in range(6):
        endpoint.predict(X[:4])
    report = await fetch_json(jp_fetch, NAME, "compare")
    assert report["source"] == "live" and report["reference"] == 1
    assert sorted(v["version"] for v in report["versions"]) == [1, 2]

    code, error = await fetch_error(jp_fetch, NAME, "versions", "1", method="DELETE")
    assert code == 409, error
    row = await fetch_json(jp_fetch, NAME, "versions", "2", method="DELETE")
    assert [v["version"] for v in row["versions"]] == [1]
    assert nbd.traffic(NAME) == {1: 100}

    nbd.deploy(paths[2], name=NAME, runtime="process", shadow=True)
    row = await fetch_json(jp_fetch, NAME, "promote", method="POST", body="")
    assert row["version"] == 3
    assert nbd.get(NAME).version == 3 and nbd.traffic(NAME)[3] == 100
    row = await fetch_json(jp_fetch, NAME, "rollback", method="POST", body='{"version": 1}')
    assert row["version"] == 1 and nbd.traffic(NAME)[1] == 100
