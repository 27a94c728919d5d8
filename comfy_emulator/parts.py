"""The parts of one emulated server that outlive a restart, shared by its routes and its worker.

The package's imports form a DAG with this module in the middle: parts.py imports only the leaf
modules (config, catalog, files, validation, ws, faults); execution.py and the route modules take
a Parts; emulator.py, at the top, builds one and wires the rest. Nothing imports emulator.py but
the package's entry points.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .catalog import NodeCatalog
from .config import DEFAULT_OBJECT_INFO_PATH, EmulatorConfig
from .faults import Faults
from .files import Folders
from .validation import Validator
from .ws import SocketHub


@dataclass(eq=False)
class Parts:
    config: EmulatorConfig
    folders: Folders
    catalog: NodeCatalog
    validator: Validator
    hub: SocketHub
    faults: Faults
    #: Ids of the prompts `POST /prompt` accepted, in order (kept across restarts).
    prompts_received: list[str] = field(default_factory=list)
    # prompt id -> the X-Gateway-Replica header of its POST /prompt (None without one).
    prompt_senders: dict[str, str | None] = field(default_factory=dict)
    #: Ids of the prompts that started executing (cached or not), in order.
    executed_prompts: list[str] = field(default_factory=list)
    #: The bodies of `POST /interrupt` (`{}` when there was none), in order.
    interrupts: list[Any] = field(default_factory=list)

    @classmethod
    def build(cls, config: EmulatorConfig) -> Parts:
        folders = Folders(config.input_dir, config.output_dir, config.temp_dir)
        catalog = NodeCatalog(
            config.object_info_path or DEFAULT_OBJECT_INFO_PATH,
            models=config.models,
            allowlist=config.node_allowlist,
            extra_nodes=config.extra_nodes,
            list_input_images=folders.list_input_images,
        )
        return cls(config, folders, catalog, Validator(catalog, folders), SocketHub(), Faults())
