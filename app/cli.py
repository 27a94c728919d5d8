"""The `comfy-gateway` command: serve, migrate, demo, and the admin tasks."""

from __future__ import annotations

import asyncio
import os
import secrets
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

    uvicorn.run(
        create_app(settings),
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


@cli.command("create-user")
def create_user(
    name: str,
    admin: Annotated[bool, typer.Option("--admin", help="Give the user admin rights.")] = False,
    with_key: Annotated[bool, typer.Option("--with-key", help="Also create a key and print it.")] = False,
) -> None:
    """Create a user; prints its id (and a key, with --with-key)."""
    from app.domain import users

    async def work(session):  # noqa: ANN001, ANN202
        user = await users.create_user(session, name=name, is_admin=admin)
        secret = (await users.create_key(session, user))[1] if with_key else None
        return user.id, secret

    user_id, secret = asyncio.run(_with_session(get_settings(), work))
    typer.echo(f"user id: {user_id}")
    if secret:
        typer.echo(f"api key: {secret}")
        typer.echo("(the key is shown this once; it is stored only as a hash)", err=True)


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
        return (await users.create_key(session, user, name=name))[1]

    secret = asyncio.run(_with_session(get_settings(), work))
    if secret is None:
        typer.echo(f"no user {user_id!r}", err=True)
        raise typer.Exit(1)
    typer.echo(secret)
    typer.echo("(the key is shown this once; it is stored only as a hash)", err=True)


@cli.command()
def demo(
    port: Annotated[int, typer.Option(help="The gateway's port.")] = 8000,
    comfy_port: Annotated[int, typer.Option(help="The emulated ComfyUI's port.")] = 8188,
    step_seconds: Annotated[float, typer.Option(help="Emulated sampler time per step.")] = 0.05,
) -> None:
    """Run the gateway on SQLite with the bundled ComfyUI emulator, and print how to use it."""
    from comfy_emulator import Emulator, EmulatorConfig

    from app.main import create_app

    key = os.environ.get("GATEWAY_ADMIN_API_KEY") or "cgw_demo_" + secrets.token_urlsafe(24)
    data = os.path.abspath("./data/demo")
    settings = Settings(
        database_url=os.environ.get("GATEWAY_DATABASE_URL", f"sqlite+aiosqlite:///{data}/gateway.db"),
        storage_dir=os.environ.get("GATEWAY_STORAGE_DIR", f"{data}/outputs"),
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

Interactive API docs: {base}/docs   ·   Ctrl-C stops.
"""
        )
        server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
        try:
            await server.serve()
        finally:
            await emulator.stop()

    asyncio.run(run())


if __name__ == "__main__":
    main()
