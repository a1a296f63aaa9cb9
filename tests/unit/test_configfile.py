"""The config file: layering (defaults <- file <- env <- flags), sources, and start-stopping errors
that name the file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from corral.cli.main import cli
from corral.configfile import ConfigError, describe, key_lines, load_config, load_settings
from corral.names import ModelName

EXAMPLE = """\
# corral.toml
num_parallel = 3
keep_alive = "10m"
allow_from = ["10.0.0.0/8", "192.168.1.5"]
trusted_proxies = ["127.0.0.1"]
models_dir = "{store}"
jwt_secret = "s3cret"

[allow_from_routes]
"/metrics" = ["127.0.0.2"]

[models."llama3:8b"]
num_ctx = 8192
num_parallel = 1
keep_alive = 600
main_gpu = 1

[models."team/coder"]
num_gpu = 0
"""


def write(tmp_path: Path, text: str, name: str = "corral.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_file_values_and_their_lines(tmp_path: Path) -> None:
    path = write(tmp_path, EXAMPLE.format(store=tmp_path / "store"))
    loaded = load_config({"CORRAL_HOME": str(tmp_path)}, path)
    s = loaded.settings
    assert s.num_parallel == 3 and s.keep_alive_seconds == 600
    assert s.allow_from == ("10.0.0.0/8", "192.168.1.5")
    assert s.allow_from_routes == {"/metrics": ("127.0.0.2",)}
    assert s.models_dir == tmp_path / "store"
    llama = s.defaults_for(ModelName.parse("registry.ollama.ai/library/LLAMA3:8b"))
    assert llama is not None and llama.num_ctx == 8192 and llama.num_parallel == 1 and llama.main_gpu == 1
    assert llama.keep_alive_seconds == 600 and llama.options == {"num_ctx": 8192, "main_gpu": 1}
    coder = s.defaults_for(ModelName.parse("team/coder:latest"))
    assert coder is not None and coder.options == {"num_gpu": 0}
    assert s.defaults_for(ModelName.parse("llama3:70b")) is None
    assert loaded.sources["num_parallel"] == f"file {path}:2"
    assert loaded.sources["models"] == f"file {path}:6"
    assert loaded.sources['models."llama3:8b".num_ctx'] == f"file {path}:13"
    assert loaded.sources["home"] == "env CORRAL_HOME" and "max_queue" not in loaded.sources


def test_env_overrides_file_and_flags_override_env(tmp_path: Path) -> None:
    path = write(tmp_path, 'num_parallel = 3\nhost = "127.0.0.1:9"\nmax_queue = 7\n')
    env = {"CORRAL_NUM_PARALLEL": "5", "CORRAL_HOST": "127.0.0.1:10"}
    loaded = load_config(env, path, {"host": "127.0.0.1:11", "tls_cert": None})
    assert loaded.settings.num_parallel == 5 and loaded.settings.max_queue == 7
    assert loaded.settings.host == "127.0.0.1:11"
    assert loaded.sources["num_parallel"] == "env CORRAL_NUM_PARALLEL"
    assert loaded.sources["max_queue"] == f"file {path}:3"
    assert loaded.sources["host"] == "flag"


def test_discovery_home_file_and_corral_config(tmp_path: Path) -> None:
    write(tmp_path, "max_queue = 9\n", "config.toml")
    assert load_config({"CORRAL_HOME": str(tmp_path)}).settings.max_queue == 9
    other = write(tmp_path, "max_queue = 11\n", "other.toml")
    assert load_config({"CORRAL_HOME": str(tmp_path), "CORRAL_CONFIG": str(other)}).settings.max_queue == 11
    assert load_config({"CORRAL_HOME": str(tmp_path / "none")}).path is None
    with pytest.raises(ConfigError, match=r"config file .*missing\.toml not found"):
        load_config({"CORRAL_HOME": str(tmp_path)}, tmp_path / "missing.toml")


def test_settings_load_is_the_edge(tmp_path: Path) -> None:
    path = write(tmp_path, "max_queue = 13\n")
    assert load_settings({"CORRAL_HOME": str(tmp_path)}, path, num_parallel=2).max_queue == 13


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("num_parallel = 2\nnum_paralel = 4\n", r":2: unknown key 'num_paralel' \(did you mean 'num_parallel'\?\)"),
        ("\n\nnum_parallel = \"four\"\n", r":3: num_parallel: expected an integer, got a string"),
        ("noprune = 1\n", r":1: noprune: expected a boolean \(true/false\), got an integer"),
        ("allow_from = \"10.0.0.0/8\"\n", r":1: allow_from: expected an array of strings, got a string"),
        ("num_parallel = 0\n", r":1: num_parallel: Input should be greater than or equal to 1"),
        ("keep_alive = \"5 minutes\"\n", r":1: keep_alive: invalid duration '5 minutes'"),
        ("allow_from = [\"10.0.0.0/33\"]\n", r":1: allow_from: '10.0.0.0/33' is not an IP address or network"),
        ("[allow_from_routes]\nmetrics = [\"127.0.0.1\"]\n", r"allow_from_routes: route prefix 'metrics'"),
        ("models = \"/srv/models\"\n", r":1: models: expected \[models.\"name\"\] tables .*models_dir"),
        ("[models.\"llama3:8b\"]\nnum_ctx = 1\nnum_batch = 2\n",
         r":3: unknown key 'num_batch' in \[models.\"llama3:8b\"\]"),
        ("[models.\"llama3:8b\"]\nnum_ctx = \"big\"\n", r":2: models.\"llama3:8b\".num_ctx: expected an integer"),
        ("[models.\"llama3:8b\"]\nkeep_alive = \"soon\"\n", r":2: models.\"llama3:8b\".keep_alive: invalid"),
        ("[models.\"bad name!\"]\nnum_ctx = 1\n", r":1: invalid model name 'bad name!'"),
        ("num_parallel = \n", r"invalid TOML: .*line 1"),
    ],
)
def test_errors_name_file_line_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=expected) as info:
        load_config({}, path)
    assert str(path) in info.value.message


def test_env_errors_name_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"env CORRAL_NUM_PARALLEL: num_parallel"):
        load_config({"CORRAL_NUM_PARALLEL": "many"}, None)
    with pytest.raises(ConfigError, match=r"env CORRAL_ALLOW_FROM: allow_from: 'nope'"):
        load_config({"CORRAL_ALLOW_FROM": "10.0.0.0/8, nope"}, None)


def test_env_lists_and_route_table() -> None:
    s = load_config({"CORRAL_ALLOW_FROM": "10.0.0.0/8, 192.168.1.5", "CORRAL_TRUSTED_PROXIES": "127.0.0.1",
                     "CORRAL_ALLOW_FROM_ROUTES": "/metrics=127.0.0.2,10.1.0.0/16; /api/keys=127.0.0.1"},
                    None).settings
    assert s.allow_from == ("10.0.0.0/8", "192.168.1.5") and s.trusted_proxies == ("127.0.0.1",)
    assert s.allow_from_routes == {"/metrics": ("127.0.0.2", "10.1.0.0/16"), "/api/keys": ("127.0.0.1",)}


def test_key_lines_scanner() -> None:
    text = ('a = 1\nb = """\nc = 2\n"""\n[t]\nd.e = 3\n[models."x:1"]  # comment\n'
            "'f' = 4\n[[arr]]\ng = 5\n")
    lines = key_lines(text)
    assert lines[("a",)] == 1 and lines[("b",)] == 2 and ("c",) not in lines
    assert lines[("t", "d", "e")] == 6 and lines[("models", "x:1")] == 7
    assert lines[("models", "x:1", "f")] == 8 and lines[("arr", "g")] == 10


def test_describe_masks_secrets_and_shows_sources(tmp_path: Path) -> None:
    path = write(tmp_path, EXAMPLE.format(store=tmp_path / "store"))
    rows = {key: (value, source) for key, value, source in
            describe(load_config({"CORRAL_MAX_QUEUE": "9"}, path))}
    assert rows["jwt_secret"] == ("****", f"file {path}:7")
    assert rows["max_queue"] == ("9", "env CORRAL_MAX_QUEUE")
    assert rows["context_length"] == ("0", "default")
    assert rows["allow_from"] == ("10.0.0.0/8, 192.168.1.5", f"file {path}:4")
    assert rows['models."llama3:8b".num_ctx'] == ("8192", f"file {path}:13")
    assert rows["models_dir"][1] == f"file {path}:6"


@pytest.mark.timeout(60)  # a serve that accepted the bad file would run in-process until stopped
def test_cli_config_show_and_serve_refuses_a_bad_file(tmp_path: Path) -> None:
    good = write(tmp_path, '[models."smollm2:135m"]\nnum_ctx = 1024\n', "good.toml")
    env = {"CORRAL_HOME": str(tmp_path), "CORRAL_NUM_PARALLEL": "2"}
    shown = CliRunner().invoke(cli, ["config", "show", "--config", str(good)], env=env)
    assert shown.exit_code == 0, shown.stderr
    assert f"config file: {good}" in shown.stdout
    lines = {line.split()[0]: line for line in shown.stdout.splitlines() if line.strip()}
    assert lines["num_parallel"].split()[1:] == ["2", "env", "CORRAL_NUM_PARALLEL"]
    assert lines['models."smollm2:135m".num_ctx'].split()[1:] == ["1024", "file", f"{good}:2"]
    bad = write(tmp_path, "max_queue = 5\nnum_thraed = 2\n", "bad.toml")
    served = CliRunner().invoke(cli, ["serve", "--config", str(bad)], env=env)
    assert served.exit_code == 1
    assert f"{bad}:2: unknown key 'num_thraed' (did you mean 'num_thread'?)" in served.stderr
