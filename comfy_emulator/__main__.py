"""`python -m comfy_emulator`: run an emulator as a process until SIGINT / SIGTERM.

Faults are injected over HTTP under `/emulator/...` (see server.py). SIGUSR1 revives an
instance that `POST /emulator/kill` stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence

from .config import EmulatorConfig
from .emulator import Emulator


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="comfy-emulator", description="An emulated ComfyUI 0.3.64 server.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8188)
    p.add_argument("--step-seconds", type=float, default=0.0, help="time per sampler step")
    p.add_argument("--node-seconds", type=float, default=0.0, help="time each non-sampler node takes")
    p.add_argument("--output-dir", default=None)
    p.add_argument("--input-dir", default=None)
    p.add_argument("--temp-dir", default=None)
    p.add_argument(
        "--object-info", default=None, help="an /object_info JSON to serve instead of the recorded one"
    )
    p.add_argument(
        "--models", default=None, help='JSON {"checkpoints": [...], "loras": [...]} of model files to claim'
    )
    p.add_argument("--nodes", default=None, help="comma-separated allowlist of node classes")
    p.add_argument("--history-max", type=int, default=10000)
    p.add_argument("--no-previews", action="store_true", help="samplers send no preview images")
    p.add_argument("--log-level", default="WARNING")
    return p


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    cfg = EmulatorConfig(
        node_seconds=args.node_seconds,
        step_seconds=args.step_seconds,
        object_info_path=args.object_info,
        output_dir=args.output_dir,
        input_dir=args.input_dir,
        temp_dir=args.temp_dir,
        history_max=args.history_max,
        sampler_previews=not args.no_previews,
    )
    if args.models:
        cfg.models = json.loads(args.models)
    if args.nodes:
        cfg.node_allowlist = [n.strip() for n in args.nodes.split(",") if n.strip()]
    return cfg


async def serve(args: argparse.Namespace) -> None:
    emu = Emulator(config_from_args(args))
    await emu.start(args.host, args.port)
    print(f"comfy-emulator listening on {emu.base_url}", flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if hasattr(signal, "SIGUSR1"):
        loop.add_signal_handler(signal.SIGUSR1, lambda: emu.in_background(emu.revive()))
    try:
        await stop.wait()
    finally:
        await emu.stop()


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
