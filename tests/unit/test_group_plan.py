"""Which models a group serves, and the settings it comes from: the hostfile, the
`distributed` parameter (a model setting that never reaches sampling) and the share of
memory each host holds. End to end: tests/test_group.py."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import pytest

from ollmlx.config import ConfigError, Settings, load_settings
from ollmlx.errors import StatusError
from ollmlx.hostfile import parse_hostfile
from ollmlx.options import parse_parameter, resolve_sampling
from ollmlx.protocol import Sampling
from ollmlx.serving.group import GroupPlan, host_share, plan_group
from ollmlx.store.catalog import StoredModel
from ollmlx.store.modelfile import parse_modelfile
from ollmlx.store.names import parse_name
from ollmlx.store.spec import ModelSpec

LOCAL = {"ssh": "127.0.0.1", "ips": ["127.0.0.1"]}
FAR = {"ssh": "mac2.local", "ips": ["192.168.2.2"]}


def hostfile(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "hosts.json"
    path.write_text(json.dumps(data))
    return path


def test_a_hostfile_in_mlx_launch_format_is_read_once_into_the_settings(tmp_path: Path) -> None:
    path = hostfile(tmp_path, {"hosts": [{"ssh": "localhost", "ips": ["10.0.0.1"]}, FAR]})
    settings = load_settings({"OLLMLX_HOSTFILE": str(path), "OLLMLX_DISTRIBUTED": "auto"})
    assert settings.hostfile is not None
    assert settings.hostfile.names == ["localhost", "mac2.local"]
    assert settings.hostfile.backend == "ring"
    assert settings.distributed_auto
    # This machine's entry runs without ssh: mlx.launch runs 127.0.0.1 directly.
    assert settings.hostfile.launcher_json()["hosts"] == [
        {"ssh": "127.0.0.1", "ips": ["10.0.0.1"], "rdma": []},
        {"ssh": "mac2.local", "ips": ["192.168.2.2"], "rdma": []},
    ]


def test_a_bare_list_and_jaccl_with_its_rdma_devices_are_accepted(tmp_path: Path) -> None:
    jaccl = {
        "backend": "jaccl",
        "hosts": [
            {**LOCAL, "rdma": [None, ["rdma_en2", "rdma_en3"]]},
            {**FAR, "rdma": [["rdma_en2", "rdma_en3"], None]},
        ],
    }
    parsed = parse_hostfile(hostfile(tmp_path, jaccl))
    assert parsed.backend == "jaccl"
    assert parsed.launcher_json()["hosts"][1]["rdma"] == [["rdma_en2", "rdma_en3"], None]
    assert len(parse_hostfile(hostfile(tmp_path, [LOCAL, FAR])).hosts) == 2


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"hosts": [LOCAL, {"ips": ["1.2.3.4"]}]}, 'host 1: "ssh" must be a host name'),
        ({"hosts": [LOCAL, {"ssh": "b", "ips": "1.2.3.4"}]}, '"ips" must be a list'),
        ({"backend": "jaccl", "hosts": [LOCAL, FAR]}, 'jaccl needs one "rdma" entry per host'),
        ({"envs": ["NOEQUALS"], "hosts": [LOCAL, FAR]}, '"envs" must be a list of "NAME=value"'),
        ({"servers": []}, 'expected {"hosts": [...]}'),
    ],
)
def test_every_hostfile_problem_is_a_config_error_naming_the_entry(
    tmp_path: Path, data: object, message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("{", r"\{")):
        parse_hostfile(hostfile(tmp_path, data))


def test_group_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="OLLMLX_DISTRIBUTED=auto needs OLLMLX_HOSTFILE"):
        load_settings({"OLLMLX_DISTRIBUTED": "auto"})
    with pytest.raises(ConfigError, match="OLLMLX_DISTRIBUTED: expected auto or off"):
        load_settings({"OLLMLX_DISTRIBUTED": "always"})
    with pytest.raises(ConfigError, match="OLLMLX_GROUP_TIMEOUT: must be at least 2s"):
        load_settings({"OLLMLX_GROUP_TIMEOUT": "1s"})
    assert load_settings({}).hostfile is None
    assert load_settings({"OLLMLX_GROUP_TIMEOUT": "90s"}).group_timeout == 90


def test_distributed_is_a_model_setting_that_never_reaches_sampling() -> None:
    parsed = parse_modelfile("FROM x\nPARAMETER distributed Tensor\nPARAMETER temperature 0.5\n")
    assert parsed.parameters == {"distributed": "tensor", "temperature": 0.5}
    with pytest.raises(StatusError, match="must be tensor or pipeline"):
        parse_parameter("distributed", "ring")
    sampling = resolve_sampling(Settings(), parsed.parameters, {"distributed": "pipeline"})
    assert sampling == Sampling(temperature=0.5, num_ctx=Settings().default_num_ctx)


def stored(tmp_path: Path, model_type: str = "llama", **parameters: str) -> StoredModel:
    model_dir = tmp_path / model_type
    model_dir.mkdir(exist_ok=True)
    (model_dir / "config.json").write_text(json.dumps({"model_type": model_type}))
    return StoredModel(
        name=parse_name("m"),
        manifest=ModelSpec(parameters=dict(parameters)),
        model_dir=model_dir,
        adapter_dir=None,
        digest="d",
        modified_at=datetime.now(timezone.utc),
    )


def test_which_models_a_group_serves(tmp_path: Path) -> None:
    hosts = parse_hostfile(hostfile(tmp_path, [LOCAL, FAR, FAR]))
    settings = Settings(memory_budget=1000, hostfile=hosts)
    auto = replace(settings, distributed_auto=True)
    # Asked for: whatever its size.
    assert plan_group(settings, stored(tmp_path, distributed="tensor"), 10) == GroupPlan(
        "tensor", hosts
    )
    # Automatic: only when it does not fit here and a third of it fits each host.
    assert plan_group(settings, stored(tmp_path), 2000) is None
    assert plan_group(auto, stored(tmp_path), 900) is None
    assert plan_group(auto, stored(tmp_path), 2000) == GroupPlan("tensor", hosts)
    assert plan_group(auto, stored(tmp_path), 3001) is None
    # Pipeline when the model has no shard().
    assert plan_group(auto, stored(tmp_path, "qwen3_next"), 2000) == GroupPlan("pipeline", hosts)
    assert plan_group(auto, stored(tmp_path, "phi3"), 2000) is None
    assert host_share(2000, GroupPlan("tensor", hosts)) == 667
    assert host_share(2000, None) == 2000


def test_a_group_that_cannot_be_is_a_400(tmp_path: Path) -> None:
    with pytest.raises(StatusError, match="OLLMLX_HOSTFILE is not set") as raised:
        plan_group(Settings(), stored(tmp_path, distributed="tensor"), 10)
    assert raised.value.status == 400
    hosts = parse_hostfile(hostfile(tmp_path, [LOCAL, FAR]))
    with pytest.raises(StatusError, match="no pipeline parallelism in mlx-lm"):
        plan_group(Settings(hostfile=hosts), stored(tmp_path, distributed="pipeline"), 10)
