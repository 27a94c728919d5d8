from pathlib import Path

from app.config import Settings

ROOT = Path(__file__).parents[3]


def test_env_example_documents_every_setting_and_loads() -> None:
    text = (ROOT / ".env.example").read_text()
    documented = {line.split("=", 1)[0] for line in text.splitlines() if line.startswith("GATEWAY_")}
    expected = {"GATEWAY_" + name.upper() for name in Settings.model_fields}
    assert documented == expected
    settings = Settings(_env_file=ROOT / ".env.example")
    assert settings.comfyui_urls == ["http://127.0.0.1:8188"]
    assert settings.outbound_allowlist == []
    assert settings.admin_api_key in (None, "")


def test_comma_separated_lists(monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("GATEWAY_COMFYUI_URLS", "http://a:8188/, http://b:8188")
    monkeypatch.setenv("GATEWAY_OUTBOUND_ALLOWLIST", "10.0.0.0/8,hooks.internal")
    settings = Settings(_env_file=None)
    assert settings.comfyui_urls == ["http://a:8188", "http://b:8188"]
    assert settings.outbound_allowlist == ["10.0.0.0/8", "hooks.internal"]


def test_raw_workflow_node_lists_and_limit_ranges(monkeypatch) -> None:  # noqa: ANN001
    import pytest
    from pydantic import ValidationError

    defaults = Settings(_env_file=None)
    assert "LoadImageOutput" in defaults.raw_workflow_deny_nodes and defaults.raw_workflow_allow_nodes == []
    assert (defaults.default_weight, defaults.max_param_string_length, defaults.max_workflow_nodes) == (
        1,
        10_000,
        500,
    )
    monkeypatch.setenv("GATEWAY_RAW_WORKFLOW_DENY_NODES", "")
    monkeypatch.setenv("GATEWAY_RAW_WORKFLOW_ALLOW_NODES", "EmptyImage, SaveImage")
    settings = Settings(_env_file=None)
    assert settings.raw_workflow_deny_nodes == [] and settings.raw_workflow_allow_nodes == [
        "EmptyImage",
        "SaveImage",
    ]
    # A default limit of 0 would lock every user out: refused at start.
    with pytest.raises(ValidationError):
        Settings(_env_file=None, default_rate_per_minute=0)


def test_a_short_bootstrap_admin_key_is_refused_at_start_without_echoing_it() -> None:
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as refused:
        Settings(_env_file=None, admin_api_key="cgw_short_secret_1")
    message = str(refused.value)
    assert "GATEWAY_ADMIN_API_KEY" in message and "24" in message
    assert "cgw_short_secret_1" not in message
    # Long enough, or unset (an empty value is unset), starts.
    assert Settings(_env_file=None, admin_api_key="cgw_" + "k" * 20).admin_api_key == "cgw_" + "k" * 20
    assert Settings(_env_file=None, admin_api_key="").admin_api_key == ""


def test_server_secrets_from_files(tmp_path: Path) -> None:
    import pytest
    from pydantic import ValidationError

    secret = tmp_path / "signing"
    secret.write_text("from-a-file\n")
    assert Settings(_env_file=None, signing_secret_file=secret).signing_secret == "from-a-file"
    assert Settings(_env_file=None, signing_secret_file="").signing_secret is None
    with pytest.raises(ValidationError, match="not both"):
        Settings(_env_file=None, signing_secret_file=secret, signing_secret="another")
    with pytest.raises(ValidationError, match="GATEWAY_WEBHOOK_SECRET_KEY_FILE cannot be read"):
        Settings(_env_file=None, webhook_secret_key_file=tmp_path / "missing")
