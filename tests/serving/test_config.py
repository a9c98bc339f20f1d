"""The serve config: Ray's schema plus optiserve's typed parts, errors naming the field."""

from __future__ import annotations

import copy

import pytest

from serving.config import (
    ConfigError,
    build_serve_config,
    gateway_user_config,
    validate_serve_config,
)


def config():
    return build_serve_config("/models", [("minilm", 1), ("minilm", 2), ("tiny", 3)])


def test_built_config_is_valid_and_newest_is_stable():
    doc = validate_serve_config(config(), repository_check=False)
    routes = gateway_user_config(doc)["models"]
    assert routes["minilm"]["stable"] == 2 and set(routes["minilm"]["versions"]) == {1, 2}
    names = [a["name"] for a in doc["applications"]]
    assert names == ["optiserve", "minilm-v1", "minilm-v2", "tiny-v3"]


@pytest.mark.parametrize("edit, message", [
    (lambda d: gateway_user_config(d)["models"]["minilm"].update(canary=2, canary_weight=150),
     "models.minilm.canary_weight: Input should be less than or equal to 100"),
    (lambda d: gateway_user_config(d)["models"]["minilm"].update(canary=2),
     "canary (2) must differ from stable (2)"),
    (lambda d: gateway_user_config(d)["models"]["minilm"].update(canary=7),
     "canary (7) must be one of the served versions [1, 2]"),
    (lambda d: gateway_user_config(d)["models"]["minilm"].update(shadow=0.5),
     "canary_weight and shadow need a canary version"),
    (lambda d: gateway_user_config(d)["models"]["minilm"]["versions"][1].update(max_batch_size=0),
     "models.minilm.versions[1].max_batch_size: Input should be greater than 0"),
    (lambda d: gateway_user_config(d)["models"]["minilm"].update(weight=3),
     "models.minilm.weight: Extra inputs are not permitted"),
    (lambda d: d["applications"][1]["deployments"][0]["user_config"].update(intra_op_threads=-1),
     "applications[1].deployments[0].user_config.intra_op_threads"),
    (lambda d: d["applications"][2]["args"].update(version="two"),
     "applications[2].args.version"),
    (lambda d: d["applications"].pop(3), "tiny:3 has no application; add one named 'tiny-v3'"),
    (lambda d: d["applications"][1].update(name="wrong"),
     "applications[1].name: the application serving minilm:1 must be named 'minilm-v1'"),
])
def test_invalid_configs_name_the_field(edit, message):
    doc = copy.deepcopy(config())
    edit(doc)
    with pytest.raises(ConfigError) as err:
        validate_serve_config(doc, repository_check=False)
    assert message in str(err.value)


def test_missing_versions_in_the_repository_are_reported(tmp_path):
    with pytest.raises(ConfigError, match=r"applications\[1\]\.args: model 'minilm' has no "
                                          r"published version"):
        validate_serve_config(build_serve_config(str(tmp_path), [("minilm", 1)]))


def test_serve_cli_refuses_an_invalid_config_file_before_starting_anything(tmp_path):
    import yaml

    from tests.helpers import run_cli

    doc = config()
    gateway_user_config(doc)["models"]["minilm"].update(canary=1, canary_weight=150)
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = run_cli("serve", "--config", str(path), timeout=60)
    assert result.returncode != 0
    assert ("applications[0].deployments[0].user_config.models.minilm.canary_weight: "
            "Input should be less than or equal to 100") in " ".join(result.stderr.split())
    path.write_text("applications: [unclosed")
    result = run_cli("serve", "--config", str(path), timeout=60)
    assert result.returncode != 0 and "is not valid YAML" in result.stderr
