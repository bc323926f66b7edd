"""No pickle from disk; the dashboard stays on 127.0.0.1 and off by default; token auth stays on."""

import pickle
import re
from pathlib import Path

import pytest

from conftest import REPO

SOURCES = sorted(p for d in ("nanogpt", "tune", "benchmarks") for p in (REPO / d).rglob("*.py"))


def test_project_code_never_unpickles_from_disk():
    assert SOURCES
    for path in SOURCES:
        text = path.read_text()
        assert not re.search(r"\bpickle\.loads?\(|cloudpickle\.load", text), path
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, f"{path}: {call}"


class _Boom:
    def __reduce__(self):
        return (Path.write_text, (Path("/tmp/nanogpt-tune-pwned"), "pwned"))


def test_malicious_checkpoint_is_refused_not_executed(tmp_path):
    from nanogpt.checkpoint import CheckpointError, load_model

    marker = Path("/tmp/nanogpt-tune-pwned")
    marker.unlink(missing_ok=True)
    ckpt = tmp_path / "evil"
    ckpt.mkdir()
    (ckpt / "config.json").write_text('{"model": {"block_size": 8, "vocab_size": 5, "n_layer": 1, "n_head": 1, "n_embd": 8}}')
    (ckpt / "tokenizer.json").write_text('{"kind": "char", "chars": ["a", "b", "c", "d"]}')
    with open(ckpt / "model.pt", "wb") as f:
        pickle.dump({"model": _Boom()}, f)
    with pytest.raises(CheckpointError):
        load_model(ckpt)
    assert not marker.exists(), "the checkpoint's pickle payload ran"


@pytest.mark.parametrize("dashboard", [False, True])
def test_local_ray_dashboard_only_on_loopback(monkeypatch, dashboard, tmp_path):
    import os

    import ray

    from tune.config import build_parser, config_from_args
    from tune.ray_env import init_ray

    seen = {}
    monkeypatch.setattr(ray, "init", lambda **kw: seen.update(kw))
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2})
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    config = config_from_args(build_parser().parse_args(["--results-dir", str(tmp_path)]))
    init_ray(config, address=None, dashboard=dashboard)
    assert seen["address"] == "local"
    assert seen["include_dashboard"] is dashboard
    assert seen["dashboard_host"] == "127.0.0.1"
    # token authentication stays Ray's default: nothing set in the environment or passed to ray.init
    assert "RAY_AUTH_MODE" not in os.environ
    assert not any("auth" in k.lower() for k in seen) and "_system_config" not in seen


def test_token_auth_is_never_disabled():
    for path in SOURCES:
        text = path.read_text()
        assert not re.search(r"RAY_AUTH_MODE[\"'\]]*\s*[=:,]\s*[\"']disabled", text), path
        assert "0.0.0.0" not in text, path


def test_local_clusters_started_at_once_agree_on_one_private_token(tmp_path, monkeypatch):
    """Ray writes a missing ~/.ray/auth_token with a plain open('w'): clusters started side by side on a new machine
    each wrote their own and a joining node read the other's. ensure_token makes it once, exclusively, owner-only,
    and never replaces one that exists."""
    import stat
    import threading

    from tune.ray_env import ensure_token

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    threads = [threading.Thread(target=ensure_token) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    token = tmp_path / ".ray" / "auth_token"
    first = token.read_text()
    assert len(first) == 64 and int(first, 16) >= 0
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert [p.name for p in token.parent.iterdir()] == ["auth_token"], "no temp files left"
    ensure_token()
    assert token.read_text() == first
