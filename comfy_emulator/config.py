"""Configuration of one emulator instance."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Where the recorded `/object_info` of ComfyUI 0.3.64 (480 nodes, with the two harness test
#: nodes) ships inside the package.
DEFAULT_OBJECT_INFO_PATH = Path(__file__).parent / "data" / "object_info_full.json"

#: The model files an instance pretends to have when `EmulatorConfig.models` is not given. The
#: recording was made without any weights (so every model list there is empty); an emulator
#: with empty lists could not run the txt2img graphs the demo and benchmarks use, so it claims
#: a small, typical set instead.
DEFAULT_MODELS: dict[str, list[str]] = {
    "checkpoints": ["v1-5-pruned-emaonly.safetensors", "sd_xl_base_1.0.safetensors"],
    "loras": ["example_lora.safetensors"],
    "vae": ["vae-ft-mse-840000-ema-pruned.safetensors"],
}

#: What the server answers to a client's `feature_flags` message, and on `GET /features`.
SERVER_FEATURES: dict[str, Any] = {"supports_preview_metadata": True, "max_upload_size": 104857600}


def _default_models() -> dict[str, list[str]]:
    return {k: list(v) for k, v in DEFAULT_MODELS.items()}


@dataclass
class EmulatorConfig:
    """Every field is optional.

    Timing: `node_seconds` is slept by every node that runs (cached nodes do not run), except
    the sampler nodes, which sleep `step_seconds` per step instead (HarnessSlowSampler sleeps
    its own `seconds_per_step` input, as the real test node does).

    Node set: `object_info_path` is the `/object_info` body the instance serves and validates
    against. `node_allowlist`, when given, keeps only those classes; `extra_nodes` adds
    definitions (`{class_name: object_info entry}`), which run as pass-through nodes. Together
    they give instances different node sets, like differently equipped ComfyUI servers.

    `models` maps a model folder (`checkpoints`, `loras`, `vae`, `text_encoders`,
    `diffusion_models`, `controlnet`, `upscale_models`, ...) to the file names the instance
    claims to have. They become the options of the loader inputs in `/object_info`, and
    `/prompt` rejects other names like ComfyUI does (`value_not_in_list`).

    Directories default to fresh temporary directories per instance, removed by `stop()`.
    """

    node_seconds: float = 0.0
    step_seconds: float = 0.0
    object_info_path: str | Path | None = None
    extra_nodes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    node_allowlist: Collection[str] | None = None
    models: Mapping[str, list[str]] = field(default_factory=_default_models)
    output_dir: str | Path | None = None
    input_dir: str | Path | None = None
    temp_dir: str | Path | None = None
    history_max: int = 10000
    #: KSampler & co. attach a JPEG preview to each progress step (as ComfyUI does with a
    #: latent previewer enabled). HarnessSlowSampler follows its own `send_preview` input.
    sampler_previews: bool = True
    #: Called as `(prompt_id, node_id, value, max, sent_at)` with each `progress` message sent,
    #: `sent_at` from time.time(): benchmarks measure event latency from the backend's message.
    progress_hook: Callable[[str, str, Any, Any, float], None] | None = None
    #: PNG compression of SaveImage / PreviewImage files (ComfyUI uses 4 and 1). Low is faster.
    png_compress_level: int = 1
    #: Create `example.png` in the input directory at start, as a ComfyUI install ships one.
    example_input_image: bool = True
