"""One typed settings object: every knob overridable by its OPTISERVE_* variable, documented
where users look (README, `optiserve serve --help`), a wrong value named at start, the serve
config winning for per-version knobs, and the environment reaching real replicas."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from serving import settings as S
from tests.helpers import ROOT, ServeProcess, http, run_cli


@pytest.fixture
def env(monkeypatch):
    """Set OPTISERVE_* variables for one test; the cached settings follow and are restored."""
    def set_(**values):
        for k, v in values.items():
            monkeypatch.setenv(S.env_name(k), str(v))
        return S.reload()

    yield set_
    monkeypatch.undo()
    S.reload()


def _other_value(name: str, default):
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 1
    if isinstance(default, float):
        return default / 2 if name == "tune_keep_up" else default * 2 + 1
    if isinstance(default, list):
        return [d + 1 for d in default[:2]]
    return "/elsewhere"


@pytest.mark.parametrize("name", sorted(S.Settings.model_fields))
def test_every_knob_is_read_from_its_variable(env, name):
    default = S.Settings.model_fields[name].default
    value = _other_value(name, default)
    assert getattr(env(**{name: value}), name) == value


def test_a_wrong_value_is_named(env, monkeypatch):
    monkeypatch.setenv("OPTISERVE_MAX_QUEUE_ROWS", "lots")
    monkeypatch.setenv("OPTISERVE_HTTP_IDLE_TIMEOUT_S", "-1")
    with pytest.raises(S.SettingsError) as e:
        S.reload()
    assert "OPTISERVE_MAX_QUEUE_ROWS='lots'" in str(e.value)
    assert "OPTISERVE_HTTP_IDLE_TIMEOUT_S='-1'" in str(e.value)


def test_the_command_line_stops_on_a_wrong_value():
    r = run_cli("repo", "list", env={"OPTISERVE_REQUEST_TIMEOUT_S": "soon"})
    assert r.returncode == 1
    assert "OPTISERVE_REQUEST_TIMEOUT_S='soon'" in " ".join(r.stderr.split())


def test_the_readme_lists_every_knob():
    text = (ROOT / "README.md").read_text()
    start = text.index("<!-- settings table")
    end = text.index("<!-- end of settings table -->")
    table = text[text.index("\n", start) + 1:end].strip()
    assert table == S.markdown_table(), "README's settings table is stale: run " \
                                        "python scripts/gen_settings_doc.py"


def test_serve_help_lists_every_knob():
    r = run_cli("serve", "--help", env={"COLUMNS": "250"})
    assert r.returncode == 0, r.stderr
    for _group, var, _default, _desc in S.describe():
        assert var in r.stdout, var


def test_every_knob_is_documented_with_a_unit_or_meaning():
    for name, field in S.Settings.model_fields.items():
        assert field.description and len(field.description) > 20, name
        if name.endswith("_s"):
            assert "second" in field.description.lower() or "seconds" in field.description, name


#: Module-level names that look like knobs but are protocol or format constants
NOT_KNOBS = {
    "serving/protocol/codec.py": {"_DECOMPRESS_CHUNK"},
    "serving/repository/schema.py": {"SCHEMA_VERSION", "READABLE_SCHEMA_VERSIONS"},
    "optiserve/rollout/state.py": {"STATE_SCHEMA_VERSION"},
    "serving/metrics.py": {"LATENCY_BUCKETS_S", "BATCH_BUCKETS", "AGREEMENT_BUCKETS"},
    "optiserve/local.py": {"RAY_DEFAULT_PORTS"},
    "optiserve/cli/tune.py": {"SLO_NOT_MET"},  # an exit code
}


def _numeric(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, (int, float)) and not isinstance(node.value, bool)
    if isinstance(node, ast.BinOp):
        return _numeric(node.left) and _numeric(node.right)
    if isinstance(node, (ast.Tuple, ast.List)):
        return bool(node.elts) and all(_numeric(e) for e in node.elts)
    return False


def test_no_knob_hides_in_a_module_constant():
    """Numbers that tune behaviour live in serving/settings.py, not as module constants."""
    found = []
    for top in ("serving", "optiserve"):
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel == "serving/settings.py":
                continue
            for node in ast.parse(path.read_text()).body:
                target = node.targets[0] if isinstance(node, ast.Assign) else (
                    node.target if isinstance(node, ast.AnnAssign) else None)
                if not isinstance(target, ast.Name) or not re.fullmatch(r"_?[A-Z][A-Z0-9_]*",
                                                                          target.id):
                    continue
                if node.value is not None and _numeric(node.value) \
                        and target.id not in NOT_KNOBS.get(rel, set()):
                    found.append(f"{rel}: {target.id}")
    assert found == []


def test_the_check_for_hidden_knobs_can_fail(tmp_path):
    tree = ast.parse("TIMEOUT_S = 30.0\nNAME = 'x'\n")
    assert [_numeric(n.value) for n in tree.body] == [True, False]


# ---- where the knobs act ---------------------------------------------------------------------

def test_batching_defaults_come_from_settings_and_the_serve_config_wins(env):
    from serving.config import BatchingConfig
    from serving.repository import BatchingPolicy

    env(max_queue_rows=77, request_timeout_s=4.5, max_inflight_batches=5)
    policy = BatchingConfig().resolve(BatchingPolicy(max_batch_size=8, max_delay_ms=1.0))
    assert (policy.max_queue_rows, policy.timeout_s, policy.max_inflight) == (77, 4.5, 5)
    own = BatchingConfig(max_queue_rows=9, timeout_s=1.0).resolve(
        BatchingPolicy(max_batch_size=8, max_delay_ms=1.0))
    assert (own.max_queue_rows, own.timeout_s) == (9, 1.0)


def test_sizing_follows_its_settings(env):
    from optiserve.sizing import plan

    assert plan(16).threads == 4
    env(max_threads=2, cpus_per_gateway=4)
    lay = plan(16)
    assert lay.threads == 2 and lay.gateway_replicas == 4


def test_the_repository_location_follows_its_setting(env, tmp_path):
    from serving.repository import ModelRepository

    env(repository=tmp_path / "elsewhere")
    assert ModelRepository().root == tmp_path / "elsewhere"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    repo = tmp_path_factory.mktemp("settings") / "repo"
    r = run_cli("optimize", "tests.fixtures.tiny_models:classifier", "--input", "x:FP32:-1,16",
                "--task", "classification", "--name", "tiny", "--variants", "onnx-fp32",
                "--min-time", "0.1", "--batch-sizes", "1,8", "--repository", str(repo), "-q")
    assert r.returncode == 0, r.stderr
    return repo


def test_the_environment_reaches_the_replicas(tiny, tmp_path):
    """A real server started with OPTISERVE_MAX_BODY_BYTES small refuses a body past it (the
    gateway replica, a Ray worker, read the variable), and answers one under it."""
    import json

    from serving.config import build_serve_config

    doc = build_serve_config(str(Path(tiny).resolve()), [("tiny", 1)])
    server = ServeProcess(doc, tmp_path, env={"OPTISERVE_MAX_BODY_BYTES": "600"}).start()
    try:
        row = [0.5] * 16

        def body(rows: int) -> bytes:
            return json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [rows, 16],
                                           "data": row * rows}]}).encode()

        ok = http("POST", f"{server.url}/v2/models/tiny/infer", body(1),
                  {"content-type": "application/json"})
        assert ok[0] == 200, ok
        big = body(8)
        assert len(big) > 600
        status, _h, answer = http("POST", f"{server.url}/v2/models/tiny/infer", big,
                                  {"content-type": "application/json"})
        assert status == 413 and b"600" in answer, (status, answer)
    finally:
        server.stop()
