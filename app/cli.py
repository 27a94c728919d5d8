"""The `comfy-gateway` command: serve, migrate, demo, and the admin tasks."""

from __future__ import annotations

import asyncio
import gc
import os
import secrets
from pathlib import Path
from typing import Annotated

import typer
import uvicorn

from app.config import Settings, get_settings

cli = typer.Typer(help="comfy-gateway: a multi-user, durable API in front of ComfyUI.", no_args_is_help=True)


def main() -> None:
    cli()


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default: GATEWAY_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: GATEWAY_PORT).")] = None,
) -> None:
    """Run the gateway (migrates the database first unless GATEWAY_AUTO_MIGRATE=false)."""
    settings = get_settings()
    from app.main import create_app

    app = create_app(settings)
    # The modules imported by now (some 130k objects) live as long as the process. Left to the
    # cyclic GC, every full collection walks all of them: a pause of 50-200 ms on a busy machine,
    # during which the event loop serves no request and the dispatcher sends no prompt. Frozen,
    # they are never walked again. (Done here, not in the app: tests build many apps in one
    # process, and what is frozen is never collected.)
    gc.freeze()
    # Thousands of open streams keep many long-lived objects, and every event sent leaves short-lived
    # cycles (cancel scopes, futures): with CPython's default thresholds (700, 10, 10) young objects
    # are promoted before they die and full collections stop the loop for 100-300 ms. Fewer, larger
    # young collections let them die young (bench/sse.py: p99 from ~200 ms to ~100 ms), and full
    # collections, which walk every stream's objects, come 50x less often than with (.., 20, 100):
    # the 100-200 ms pause a few seconds after 1,000 streams opened is gone (p99 51-93 ms, the rest
    # being the second in which all 50 jobs end).
    gc.set_threshold(20_000, 50, 1000)
    uvicorn.run(
        app,
        host=host or settings.host,
        port=port or settings.port,
        log_level=settings.log_level,
        proxy_headers=True,
    )


@cli.command()
def migrate() -> None:
    """Bring the database schema up to date."""
    from app.db.migrate import upgrade

    settings = get_settings()
    upgrade(settings.database_url)
    typer.echo(f"database is up to date: {settings.database_url}")


async def _with_session(settings: Settings, work):  # noqa: ANN001, ANN202
    from app.db.engine import create_engine, create_sessionmaker
    from app.db.migrate import upgrade_async

    if settings.auto_migrate:
        await upgrade_async(settings.database_url)
    engine = create_engine(settings.database_url)
    try:
        async with create_sessionmaker(engine)() as session:
            result = await work(session)
            await session.commit()
            return result
    finally:
        await engine.dispose()


def _parse_limits(pairs: list[str]) -> dict:
    """`--limit name=value` options, checked like the admin API's `limits` (values are JSON: 5, true)."""
    import json

    from pydantic import ValidationError

    from app.domain.limits import LIMIT_NAMES, Limits

    values: dict = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep:
            raise typer.BadParameter(f"{pair!r}: write name=value, e.g. max_queued=10", param_hint="--limit")
        try:
            values[name.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            values[name.strip()] = raw
    try:
        return Limits.model_validate(values).model_dump(exclude_none=True)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise typer.BadParameter(
            f"{problems} (limits: {', '.join(LIMIT_NAMES)})", param_hint="--limit"
        ) from None


@cli.command("create-user")
def create_user(
    name: str,
    admin: Annotated[bool, typer.Option("--admin", help="Give the user admin rights.")] = False,
    with_key: Annotated[bool, typer.Option("--with-key", help="Also create a key and print it.")] = False,
    limit: Annotated[
        list[str] | None,
        typer.Option(
            "--limit",
            help="A limit of the user's own, as name=value (repeatable), e.g. --limit max_queued=10.",
        ),
    ] = None,
) -> None:
    """Create a user; prints its id (and a key, with --with-key)."""
    from app.domain import users

    limits = _parse_limits(limit or [])

    async def work(session):  # noqa: ANN001, ANN202
        user = await users.create_user(session, name=name, is_admin=admin, limits=limits)
        key = await users.create_key(session, user) if with_key else None
        return user.id, key

    user_id, key = asyncio.run(_with_session(get_settings(), work))
    typer.echo(f"user id: {user_id}")
    if key:
        typer.echo(f"api key: {key[1]}")
        typer.echo(f"(key id {key[0].id}; the key is shown this once, it is stored only as a hash)", err=True)


@cli.command("list-users")
def list_users(
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many (newest first).")] = 100,
) -> None:
    """List users, newest first: id, name, admin, disabled, and the limits set for each."""
    import json

    from app.domain import users

    async def work(session):  # noqa: ANN001, ANN202
        rows, _ = await users.list_users(session, limit=limit, cursor=None)
        return [users.user_view(u, get_settings()) for u in rows]

    for view in asyncio.run(_with_session(get_settings(), work)):
        flags = " ".join(f for f, on in (("admin", view["is_admin"]), ("disabled", view["disabled"])) if on)
        own = (
            json.dumps(view["limit_overrides"], separators=(",", ":"))
            if view["limit_overrides"]
            else "defaults"
        )
        typer.echo(f"{view['id']}  {view['name']}  {flags or '-'}  limits: {own}")


@cli.command("list-backends")
def list_backends() -> None:
    """List the backend pool: id, URL, state, source, unfinished jobs on it.

    Health and capabilities are known only to a running gateway: see GET /v1/admin/backends.
    """
    from app.db import backends as repo

    async def work(session):  # noqa: ANN001, ANN202
        return [
            (row, (await repo.jobs_on(session, row.url, limit=0))[0])
            for row in await repo.all_backends(session)
        ]

    for row, jobs in asyncio.run(_with_session(get_settings(), work)):
        typer.echo(f"{row.id}  {row.url}  {row.state}  {row.source}  jobs: {jobs}")


@cli.command("add-backend")
def add_backend(url: str) -> None:
    """Add a ComfyUI server to the pool; running gateways start using it on their next poll."""
    from app.domain import backend_registry
    from app.domain.errors import DomainError

    async def work(session):  # noqa: ANN001, ANN202
        return await backend_registry.add_backend(session, url)

    try:
        row = asyncio.run(_with_session(get_settings(), work))
    except DomainError as exc:
        typer.echo(exc.detail, err=True)
        raise typer.Exit(1) from None
    typer.echo(f"backend id: {row.id}")


@cli.command("disable-user")
def disable_user(
    user_id: str,
    enable: Annotated[bool, typer.Option("--enable", help="Enable the user again instead.")] = False,
) -> None:
    """Disable a user: its keys are refused (401) from their next request. --enable undoes it."""
    from app.domain import users
    from app.domain.errors import DomainError

    async def work(session):  # noqa: ANN001, ANN202
        return await users.update_user(session, user_id, disabled=not enable)

    try:
        asyncio.run(_with_session(get_settings(), work))
    except DomainError as exc:
        typer.echo(exc.detail, err=True)
        raise typer.Exit(1) from None
    typer.echo(f"user {user_id} {'enabled' if enable else 'disabled'}")


@cli.command("revoke-key")
def revoke_key(key_id: str) -> None:
    """Revoke an API key by its id: it is refused (401) from its next request."""
    from sqlalchemy import select

    from app.db.models import ApiKey
    from app.domain import users

    async def work(session):  # noqa: ANN001, ANN202
        key = (await session.execute(select(ApiKey).where(ApiKey.id == key_id))).scalar_one_or_none()
        if key is None:
            return False
        await users.revoke_key(session, key.user_id, key.id)
        return True

    if not asyncio.run(_with_session(get_settings(), work)):
        typer.echo(f"no key {key_id!r}", err=True)
        raise typer.Exit(1)
    typer.echo(f"key {key_id} revoked")


@cli.command("create-key")
def create_key(
    user_id: str, name: Annotated[str | None, typer.Option(help="A label for the key.")] = None
) -> None:
    """Create an API key for a user and print it, once."""
    from app.db.models import User
    from app.domain import users

    async def work(session):  # noqa: ANN001, ANN202
        user = await session.get(User, user_id)
        if user is None:
            return None
        row, secret = await users.create_key(session, user, name=name)
        return row.id, secret

    created = asyncio.run(_with_session(get_settings(), work))
    if created is None:
        typer.echo(f"no user {user_id!r}", err=True)
        raise typer.Exit(1)
    key_id, secret = created
    typer.echo(secret)
    typer.echo(f"(key id {key_id}; the key is shown this once, it is stored only as a hash)", err=True)


@cli.command()
def demo(
    port: Annotated[int, typer.Option(help="The gateway's port.")] = 8000,
    comfy_port: Annotated[int, typer.Option(help="The emulated ComfyUI's port.")] = 8188,
    step_seconds: Annotated[float, typer.Option(help="Emulated sampler time per step.")] = 0.05,
) -> None:
    """Run the gateway on SQLite with the bundled ComfyUI emulator, and print how to use it."""
    from app.main import create_app
    from comfy_emulator import Emulator, EmulatorConfig

    key = os.environ.get("GATEWAY_ADMIN_API_KEY") or "cgw_demo_" + secrets.token_urlsafe(24)
    data = os.path.abspath("./data/demo")
    settings = Settings(
        database_url=os.environ.get("GATEWAY_DATABASE_URL", f"sqlite+aiosqlite:///{data}/gateway.db"),
        storage_dir=Path(os.environ.get("GATEWAY_STORAGE_DIR", f"{data}/outputs")),
        comfyui_urls=[f"http://127.0.0.1:{comfy_port}"],
        admin_api_key=key,
        port=port,
    )

    async def run() -> None:
        emulator = Emulator(EmulatorConfig(step_seconds=step_seconds, node_seconds=0.01))
        await emulator.start(host="127.0.0.1", port=comfy_port)
        base = f"http://127.0.0.1:{port}"
        typer.echo(
            f"""
comfy-gateway demo: gateway {base}  ·  emulated ComfyUI {emulator.base_url}  ·  data in {data}

  admin key:  {key}

  curl -s {base}/v1/templates -H 'Authorization: Bearer {key}'
  curl -s {base}/v1/generate -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\
       -d '{{"template": "txt2img", "params": {{"prompt": "a lighthouse at dusk"}}}}'
  curl -N {base}/v1/jobs/<job id>/events -H 'Authorization: Bearer {key}'

Console (log in with the admin key): {base}/console   ·   interactive API docs: {base}/docs   ·   Ctrl-C stops.
"""
        )
        server = uvicorn.Server(
            uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
        )
        try:
            await server.serve()
        finally:
            await emulator.stop()

    asyncio.run(run())


if __name__ == "__main__":
    main()
