"""Where the server's own secrets come from, and the warning when they live in the database."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from app.storage.signing import UrlSigner
from tests.integration.conftest import Gateway


def _key_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "GATEWAY_WEBHOOK_SECRET_KEY" in r.getMessage()
    ]


async def test_a_start_without_server_secrets_warns_that_the_database_alone_reveals_webhook_secrets(
    idle_gateway,
    caplog: pytest.LogCaptureFixture,  # noqa: ANN001
) -> None:
    caplog.set_level(logging.WARNING)
    await idle_gateway()
    warnings = _key_warnings(caplog)
    assert warnings and "database" in warnings[0], warnings


async def test_secrets_from_the_environment_or_files_start_without_the_warning(
    idle_gateway,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,  # noqa: ANN001
) -> None:
    caplog.set_level(logging.WARNING)
    await idle_gateway(signing_secret="s" * 40, webhook_secret_key="w" * 40)
    (tmp_path / "signing").write_text("signing-secret-from-a-file-0123456789\n")
    (tmp_path / "webhook").write_text("webhook-key-from-a-file-0123456789\n")
    gateway: Gateway = await idle_gateway(
        signing_secret_file=tmp_path / "signing", webhook_secret_key_file=tmp_path / "webhook"
    )
    assert _key_warnings(caplog) == []
    settings = gateway.state.settings
    # The trailing newline of a secret file is not part of the secret.
    assert settings.signing_secret == "signing-secret-from-a-file-0123456789"
    assert settings.webhook_secret_key == "webhook-key-from-a-file-0123456789"
    # Output URLs are signed with the secret from the file: a signature made with it is accepted.
    expires, signature = UrlSigner("signing-secret-from-a-file-0123456789", 60).sign("job", "output")
    assert gateway.state.signer.verify("job", "output", expires, signature)
