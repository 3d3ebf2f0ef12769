from __future__ import annotations

from pathlib import Path

import pytest

from compositor.mirror import config
from compositor.mirror.accounts import Accounts, Client
from compositor.mirror.api_error import ApiError

SECRET = "0123456789abcdef"


def test_a_non_loopback_bind_without_a_client_is_refused(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="refusing"):
        config.load({"host": "0.0.0.0", "data_dir": tmp_path}, environ={})


def test_loopback_without_a_client_gets_a_development_client_that_persists(tmp_path: Path) -> None:
    first = config.load({"data_dir": tmp_path}, environ={})
    second = config.load({"data_dir": tmp_path}, environ={})
    assert first.development_client is not None
    assert first.development_client == second.development_client
    assert first.settings.clients == (first.development_client,)


def test_flags_beat_the_environment_which_beats_the_file(tmp_path: Path) -> None:
    file = tmp_path / "mirror.toml"
    file.write_text(f'port = 1111\nworkers = 3\n[[client]]\nid = "f"\nsecret = "{SECRET}"\n')
    environ = {"COMPOSITOR_PORT": "2222", "COMPOSITOR_CLIENTS": f"e:{SECRET}"}
    loaded = config.load({"config": file, "data_dir": tmp_path}, environ=environ)
    assert (loaded.port, loaded.settings.workers, loaded.settings.clients[0].client_id) == (2222, 3, "e")
    flagged = config.load({"config": file, "data_dir": tmp_path, "port": 3333, "client": [f"c:{SECRET}"]}, environ)
    assert (flagged.port, flagged.settings.clients[0].client_id) == (3333, "c")


@pytest.mark.parametrize("text", ["no-colon", "id:short-secret"])
def test_a_malformed_client_is_refused(text: str) -> None:
    with pytest.raises(config.ConfigError):
        config.parse_client(text)


def test_the_rate_window_slides() -> None:
    client = Client("c", SECRET, rate_limit_per_minute=2)
    accounts = Accounts([client], b"k" * 32)
    accounts.check_rate(client, now=0.0)
    accounts.check_rate(client, now=1.0)
    with pytest.raises(ApiError) as caught:
        accounts.check_rate(client, now=59.0)
    assert caught.value.code == 1005
    accounts.check_rate(client, now=60.5)


def _as_documented(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def test_each_documented_default_is_the_value_load_uses() -> None:
    from compositor.mirror.settings import SETTINGS

    plain = [setting for setting in SETTINGS if setting.value is not None]
    assert len(plain) >= 10
    for setting in plain:
        assert setting.default.split(" (")[0] == _as_documented(setting.value), setting.key


def test_with_nothing_set_the_mirror_has_the_tables_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from compositor.mirror.settings import BY_KEY

    monkeypatch.chdir(tmp_path)  # the default data dir, "data", lands here
    loaded = config.load({}, environ={})
    settings, retry = loaded.settings, loaded.settings.webhook_retry
    value = {key: setting.value for key, setting in BY_KEY.items()}
    assert (loaded.host, loaded.port, settings.data_dir) == (value["host"], value["port"], Path(value["data_dir"]))
    assert (settings.result_ttl_s, settings.model) == (value["result_ttl"], value["model"])
    assert settings.memory_budget == value["memory_budget_mb"] * 1024 * 1024
    assert settings.allow_object_storage is value["allow_object_storage"]
    assert (settings.expiry_interval_s, settings.body_limit) == (value["expiry_interval_s"], value["max_body_bytes"])
    assert settings.source_deadline_s == value["source_deadline_s"]
    assert (retry.attempts, retry.first_delay_s, retry.max_delay_s, retry.timeout_s) == (
        value["webhook_attempts"], value["webhook_first_delay_s"], value["webhook_max_delay_s"],
        value["webhook_timeout_s"],
    )  # fmt: skip


@pytest.mark.parametrize("name", ["allow_object_storage", "allow_private_networks"])
def test_a_yes_or_no_setting_that_is_neither_names_its_variable_and_config_key(tmp_path: Path, name: str) -> None:
    variable = f"COMPOSITOR_{name.upper()}"
    with pytest.raises(config.ConfigError) as caught:
        config.load({"data_dir": tmp_path}, environ={variable: "maybe"})
    message = str(caught.value)
    assert variable in message and name in message and "'maybe'" in message, message
    file = tmp_path / "mirror.toml"
    file.write_text(f'{name} = "maybe"\n')
    with pytest.raises(config.ConfigError, match=name):
        config.load({"config": file, "data_dir": tmp_path}, environ={})
