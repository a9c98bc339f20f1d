"""One model-name check wherever a name enters: the whole string must be a name (a trailing
newline used to pass `re.match` with `$`, and flowed into directories, ConfigMap names and
PromQL literals)."""

from __future__ import annotations

import pytest

from serving.repository.schema import check_model_name
from tests.helpers import run_cli

BAD = ["minilm\n", "minilm\r\n", " minilm", "minilm ", "", "-minilm", "a" * 64, "min/ilm",
       'm"}', "m\x00"]


@pytest.mark.parametrize("name", BAD)
def test_the_check_refuses_anything_but_a_whole_name(name):
    with pytest.raises(ValueError, match="is invalid"):
        check_model_name(name)


@pytest.mark.parametrize("name", ["minilm", "a", "m-1.2_x", "A" * 63])
def test_names_pass(name):
    assert check_model_name(name) == name


def test_every_entry_point_uses_it():
    from serving.config import GatewayConfig, VersionArgs
    from serving.repository import parse_ref
    from optiserve.rollout.state import RolloutSpec

    for build in (lambda: parse_ref("minilm\n:1"), lambda: parse_ref("minilm\n"),
                  lambda: GatewayConfig.model_validate(
                      {"models": {"minilm\n": {"versions": {1: {}}, "stable": 1}}}),
                  lambda: VersionArgs(repository="/r", model="minilm\n", version=1),
                  lambda: RolloutSpec(model="minilm\n", stable=1, canary=2)):
        with pytest.raises(ValueError, match="is invalid"):
            build()


def test_the_command_line_refuses_it(tmp_path):
    r = run_cli("rollout", "start", "minilm\n", "--canary", "2", "--state-dir",
                str(tmp_path / "s"), "--repository", str(tmp_path / "r"))
    assert r.returncode != 0 and "is invalid" in " ".join(r.stderr.split()), r.stderr
    r = run_cli("repo", "show", "minilm\n:1", "--repository", str(tmp_path / "r"))
    assert r.returncode != 0 and "is invalid" in " ".join(r.stderr.split()), r.stderr
