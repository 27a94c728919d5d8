"""Output nodes whose files are not still images, and text outputs: real files, small.

- ImageBatch: two batches as one (the second scaled to the first's size, as ComfyUI does).
- SaveAnimatedWEBP: an animated WEBP of the batch (Pillow), listed under `images` with
  `"animated": [true]`, as ComfyUI's comfy_extras/nodes_images.py does.
- VHS_VideoCombine (the ComfyUI-VideoHelperSuite custom node, the usual way video leaves a
  workflow): with `format: "image/gif"` a real animated GIF (Pillow), listed under `gifs` as that
  node lists its files (`format`, `frame_rate`); the video formats need ffmpeg, which the emulator
  does not carry. Its definition is in VIDEO_NODE_DEFINITIONS, for `extra_nodes`.
- PreviewAny: `{"text": [str(source)]}` (comfy_extras/nodes_preview_any.py); PrimitiveString feeds it.
- EmptyLatentAudio -> VAEDecodeAudio -> SaveAudio: a sine tone of the latent's length, saved under
  `audio` in `audio/` (SaveAudio's default prefix). ComfyUI encodes FLAC with PyAV; the emulator
  writes a WAV (the standard library's `wave`), so the file is real audio but `.wav`. The recorded
  /object_info lacks these three (torchaudio was not installed), so their definitions are in
  AUDIO_NODE_DEFINITIONS, for `EmulatorConfig(extra_nodes=...)`.
"""

from __future__ import annotations

import io
import math
import struct
import wave
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .nodes import NodeResult, _compute_vars, node
from .values import ImageBatch, as_images

if TYPE_CHECKING:
    from .context import NodeContext

SAMPLE_RATE = 8000


@dataclass(frozen=True)
class AudioLatent:
    seconds: float
    batch_size: int


@dataclass(frozen=True)
class Audio:
    seconds: float


def _save_target(ctx: NodeContext, prefix: str, width: int = 0, height: int = 0) -> tuple[Any, str, int, str]:
    if "%" in prefix:
        prefix = _compute_vars(prefix, width, height)
    return ctx.folders.save_path(ctx.folders.output, prefix)


@node("ImageBatch")
async def image_batch(ctx: NodeContext, image1: Any, image2: Any) -> NodeResult:
    first, second = as_images(image1), as_images(image2)
    size = first[0].size
    return (
        ImageBatch(list(first) + [img if img.size == size else img.resize(size) for img in second]),
    ), None


@node("SaveAnimatedWEBP")
async def save_animated_webp(
    ctx: NodeContext,
    images: Any,
    filename_prefix: str = "ComfyUI",
    fps: float = 6.0,
    lossless: bool = True,
    quality: int = 80,
    method: str = "default",
) -> NodeResult:
    frames = as_images(images)
    full, filename, counter, subfolder = _save_target(ctx, filename_prefix, frames[0].width, frames[0].height)
    file = f"{filename}_{counter:05}_.webp"
    frames[0].save(
        full / file,
        format="WEBP",
        save_all=True,
        append_images=frames[1:],
        duration=round(1000 / fps),
        lossless=lossless,
        quality=quality,
        method={"default": 4, "fastest": 0, "slowest": 6}.get(method, 4),
    )
    ctx.folders.advance(full, filename, counter + 1)
    return (), {"images": [{"filename": file, "subfolder": subfolder, "type": "output"}], "animated": [True]}


@node("VHS_VideoCombine")
async def video_combine(
    ctx: NodeContext,
    images: Any,
    frame_rate: float = 8.0,
    loop_count: int = 0,
    filename_prefix: str = "AnimateDiff",
    format: str = "image/gif",
    pingpong: bool = False,
    save_output: bool = True,
) -> NodeResult:
    if format != "image/gif":
        raise ValueError(f"the emulator writes only image/gif, not {format}")
    frames = list(as_images(images))
    if pingpong:
        frames += frames[-2:0:-1]
    full, filename, counter, subfolder = _save_target(ctx, filename_prefix, frames[0].width, frames[0].height)
    file = f"{filename}_{counter:05}.gif"
    frames[0].save(
        full / file,
        format="GIF",
        save_all=True,
        append_images=frames[1:],
        duration=round(1000 / frame_rate),
        loop=loop_count,
    )
    ctx.folders.advance(full, filename, counter + 1)
    entry = {
        "filename": file,
        "subfolder": subfolder,
        "type": "output",
        "format": format,
        "frame_rate": frame_rate,
    }
    return (), {"gifs": [entry]}


@node("PrimitiveString")
async def primitive_string(ctx: NodeContext, value: str) -> NodeResult:
    return (value,), None


@node("PreviewAny")
async def preview_any(ctx: NodeContext, source: Any) -> NodeResult:
    return (), {"text": [source if isinstance(source, str) else str(source)]}


@node("EmptyLatentAudio")
async def empty_latent_audio(ctx: NodeContext, seconds: float = 47.6, batch_size: int = 1) -> NodeResult:
    return (AudioLatent(seconds, batch_size),), None


@node("VAEDecodeAudio")
async def vae_decode_audio(ctx: NodeContext, samples: Any, vae: Any) -> NodeResult:
    seconds = samples.seconds if isinstance(samples, AudioLatent) else 1.0
    return (Audio(seconds),), None


def wav_bytes(seconds: float, frequency: float = 440.0) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        n = int(seconds * SAMPLE_RATE)
        out.writeframes(
            b"".join(
                struct.pack("<h", int(8000 * math.sin(2 * math.pi * frequency * i / SAMPLE_RATE)))
                for i in range(n)
            )
        )
    return buf.getvalue()


@node("SaveAudio")
async def save_audio(ctx: NodeContext, audio: Any, filename_prefix: str = "audio/ComfyUI") -> NodeResult:
    full, filename, counter, subfolder = _save_target(ctx, filename_prefix)
    file = f"{filename}_{counter:05}_.wav"
    (full / file).write_bytes(wav_bytes(audio.seconds if isinstance(audio, Audio) else 1.0))
    ctx.folders.advance(full, filename, counter + 1)
    return (), {"audio": [{"filename": file, "subfolder": subfolder, "type": "output"}]}


# From ComfyUI's comfy_extras/nodes_audio.py (not in the recording: see the module docstring).
AUDIO_NODE_DEFINITIONS: dict[str, dict[str, Any]] = {
    "EmptyLatentAudio": {
        "input": {
            "required": {
                "seconds": ["FLOAT", {"default": 47.6, "min": 1.0, "max": 1000.0, "step": 0.1}],
                "batch_size": ["INT", {"default": 1, "min": 1, "max": 4096}],
            }
        },
        "output": ["LATENT"],
        "output_is_list": [False],
        "output_name": ["LATENT"],
        "category": "latent/audio",
    },
    "VAEDecodeAudio": {
        "input": {"required": {"samples": ["LATENT"], "vae": ["VAE"]}},
        "output": ["AUDIO"],
        "output_is_list": [False],
        "output_name": ["AUDIO"],
        "category": "latent/audio",
    },
    "SaveAudio": {
        "input": {
            "required": {"audio": ["AUDIO"], "filename_prefix": ["STRING", {"default": "audio/ComfyUI"}]},
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        },
        "output": [],
        "output_is_list": [],
        "output_name": [],
        "output_node": True,
        "category": "audio",
    },
}


# From ComfyUI-VideoHelperSuite's videohelpersuite/nodes.py (a custom node: not in stock /object_info).
VIDEO_NODE_DEFINITIONS: dict[str, dict[str, Any]] = {
    "VHS_VideoCombine": {
        "input": {
            "required": {
                "images": ["IMAGE"],
                "frame_rate": ["FLOAT", {"default": 8, "min": 1, "step": 1}],
                "loop_count": ["INT", {"default": 0, "min": 0, "max": 100, "step": 1}],
                "filename_prefix": ["STRING", {"default": "AnimateDiff"}],
                "format": [["image/gif", "image/webp", "video/h264-mp4", "video/webm"]],
                "pingpong": ["BOOLEAN", {"default": False}],
                "save_output": ["BOOLEAN", {"default": True}],
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO", "unique_id": "UNIQUE_ID"},
        },
        "output": ["VHS_FILENAMES"],
        "output_is_list": [False],
        "output_name": ["Filenames"],
        "output_node": True,
        "category": "Video Helper Suite 🎥🅥🅗🅢",
    },
}
