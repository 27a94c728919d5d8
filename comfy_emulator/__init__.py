"""A ComfyUI emulator for tests, benchmarks and demos.

It behaves like ComfyUI 0.3.64 as recorded in tests/data/recordings/ (HTTP routes and bodies,
WebSocket messages and their order and targeting, binary preview frames, history, validation
errors, caching), runs small real image nodes with Pillow, emulates the SD pipeline without
weights, and can inject faults. See `Emulator` and `EmulatorConfig`.
"""

from .config import DEFAULT_MODELS, EmulatorConfig
from .emulator import Emulator

__all__ = ["DEFAULT_MODELS", "Emulator", "EmulatorConfig"]
