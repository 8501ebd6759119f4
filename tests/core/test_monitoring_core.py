"""nbd.stats, nbd.drift and nbd.requests end to end: a real deployment, real traffic."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import numpy as np
import pytest

import nbdeploy as nbd
from nbdeploy import cli
from nbdeploy._errors import DeployError, InputError
from tests.helpers.waiting import wait_for


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    features, labels = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(features))
    return features[order].astype(np.float32), labels[order]


def classifier(features: np.ndarray, labels: np.ndarray, seed: int = 0):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=300, random_state=seed).fit(features, labels)


def test_stats_count_requests_and_split_versions(digits, cleanup) -> None:
    features, labels = digits
    ep = nbd.deploy(
        classifier(features[:600], labels[:600]),
        sample=features[:8],
        name="watched",
        runtime="process",
    )
    nbd.deploy(
        classifier(features[:300], labels[:300], seed=1),
        sample=features[:8],
        name="watched",
        runtime="process",
        canary=30,
    )
    for i in range(200):
        ep.predict(features[i : i + 1])
    report = nbd.stats("watched", window=60)
    assert report.total.requests >= 200 and report.total.request_rate > 0
    assert report.total.error_rate == 0.0
    assert report.total.p50_ms is not None and report.total.p99_ms >= report.total.p50_ms
    shares = {row.version: row.share for row in report.versions}
    assert abs(shares[2] - 0.3) < 0.05, shares
    assert report.series and json.dumps(report.to_dict())
    assert "req/s" in report.table()
    with pytest.raises(InputError, match="window"):
        nbd.stats("watched", window=0)
    with pytest.raises(DeployError, match="no active deployment"):
        nbd.stats("nothing")


def test_drift_flags_the_shifted_feature(
    digits, cleanup, capsys: pytest.CaptureFixture[str]
) -> None:
    features, labels = digits
    ep = nbd.deploy(
        classifier(features[:600], labels[:600]),
        sample=features[:8],
        calibration=features[:800],
        name="drifting",
        runtime="process",
    )
    assert nbd.get("drifting").artifact.metadata["profile"]["rows"] == 808
    for start in range(800, 1700, 10):
        ep.predict(features[start : start + 10])
    assert wait_for(lambda: nbd.drift("drifting").rows >= 900)
    calm = nbd.drift("drifting")
    assert calm.worst.psi < 0.1, calm.table()
    assert nbd.get("drifting").view().drift is None

    shifted = features[800:1800].copy()
    shifted[:, 20] += 2 * features[:, 20].std()
    for start in range(0, 1000, 10):
        ep.predict(shifted[start : start + 10])
    # The server observes answered rows off the request path, so the shifted rows reach its
    # window (the last 1,000 rows) a little after their answers: wait until they have pushed
    # the score past the threshold, not just until input[20] is the worst feature.
    assert wait_for(lambda: nbd.drift("drifting").worst.psi > 0.2)
    report = nbd.drift("drifting")
    assert report.worst.psi > 0.2 and report.drifted[0] == "input[20]"
    assert nbd.get("drifting").view().drift.startswith("input[20] PSI")
    assert json.dumps(report.to_dict()) and "input[20]" in report.table()
    capsys.readouterr()
    assert cli.main(["ls"]) == 0
    assert "input[20] PSI" in capsys.readouterr().out  # `nbdeploy ls` flags it


def test_drift_needs_a_reference(tmp_path: Path, cleanup) -> None:
    from tests.helpers.onnx_models import save_linear

    nbd.deploy(save_linear(tmp_path / "m.onnx"), name="no-profile", runtime="process")
    with pytest.raises(DeployError, match="no reference profile"):
        nbd.drift("no-profile")
    assert nbd.get("no-profile").view().drift is None


def test_request_log_reads_back_as_a_frame(
    digits, nbdeploy_home: Path, cleanup, capsys: pytest.CaptureFixture[str]
) -> None:
    features, labels = digits
    ep = nbd.deploy(
        classifier(features[:300], labels[:300]),
        sample=features[:8],
        name="logged",
        runtime="process",
        log_requests=1.0,
    )
    for i in range(5):
        ep.predict(features[i : i + 2])
    assert wait_for(lambda: len(nbd.requests("logged")) >= 10)
    frame = nbd.requests("logged")
    assert {"t", "version", "input[0]", "input[63]"} <= set(frame.columns)
    np.testing.assert_allclose(frame["input[5]"].to_numpy()[:2], features[:2, 5])
    log = nbdeploy_home / "requests" / "logged" / "requests.jsonl"
    assert stat.S_IMODE(log.stat().st_mode) & 0o077 in (0, 0o040)
    with pytest.raises(InputError, match="log_requests"):
        nbd.deploy(
            classifier(features[:300], labels[:300]),
            sample=features[:8],
            name="logged",
            runtime="process",
            log_requests=2,
        )
    assert cli.main(["ls"]) == 0
    assert "logged" in capsys.readouterr().out
