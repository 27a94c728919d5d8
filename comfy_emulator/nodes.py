"""Node implementations.

Emulated for real (Pillow): EmptyImage, ImageBlur, ImageScale, ImageScaleBy, ImageInvert,
LoadImage, LoadImageMask, SaveImage, PreviewImage, MaskPreview, SaveImageWebsocket, HarnessSlowSampler,
HarnessFail, and the SD pipeline without weights: CheckpointLoaderSimple, LoraLoader,
CLIPTextEncode, EmptyLatentImage, VAEEncode, VAEDecode, KSampler, KSamplerAdvanced,
SamplerCustom, SamplerCustomAdvanced; in media.py, SaveAnimatedWEBP, PreviewAny, PrimitiveString and the
audio chain (EmptyLatentAudio, VAEDecodeAudio, SaveAudio). A sampler paints a deterministic smooth-noise picture from
its seed, prompt texts, model and LoRAs, blended over its input latent by `denoise`.

Every other class of the node set runs as a pass-through (`passthrough`): each output takes the
first input of the same type, or a stand-in (a gray 64x64 IMAGE, an empty MASK / LATENT, or a
Placeholder record). Pass-through output nodes report no UI, so they send no `executed`.

An implementation is `async def impl(ctx, **inputs) -> (outputs_tuple, ui_or_None)`; `ctx` is
the context.NodeContext (sleep, progress, text, interrupt checks, folders).
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageFilter, ImageOps, ImageSequence
from PIL.PngImagePlugin import PngInfo

from .values import (
    DEFAULT_SIZE,
    Clip,
    Conditioning,
    ImageBatch,
    LatentBatch,
    MaskBatch,
    Model,
    Placeholder,
    Vae,
    as_images,
    as_latent,
    default_for,
)

if TYPE_CHECKING:
    from .catalog import NodeSpec
    from .context import NodeContext

NodeResult = tuple[tuple[Any, ...], dict[str, Any] | None]
NodeImpl = Callable[..., Awaitable[NodeResult]]

IMPLS: dict[str, NodeImpl] = {}


def node(name: str) -> Callable[[NodeImpl], NodeImpl]:
    def register(fn: NodeImpl) -> NodeImpl:
        IMPLS[name] = fn
        return fn

    return register


_RESAMPLE = {
    "nearest-exact": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "area": Image.Resampling.BOX,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "bislerp": Image.Resampling.BICUBIC,
}


# -- images --------------------------------------------------------------------------------------


@node("EmptyImage")
async def empty_image(
    ctx: NodeContext, width: int, height: int, batch_size: int = 1, color: int = 0
) -> NodeResult:
    rgb = ((color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF)
    img = Image.new("RGB", (width, height), rgb)
    return (ImageBatch([img] * batch_size),), None


@node("ImageBlur")
async def image_blur(ctx: NodeContext, image: Any, blur_radius: int, sigma: float) -> NodeResult:
    if blur_radius == 0:
        return (image,), None
    f = ImageFilter.GaussianBlur(radius=min(float(sigma), float(blur_radius)))
    return (ImageBatch(i.filter(f) for i in as_images(image)),), None


def _scale(img: Image.Image, method: str, width: int, height: int, crop: str) -> Image.Image:
    w, h = img.size
    if width == 0 and height == 0:
        return img
    if width == 0:
        width = max(1, round(w * height / h))
    elif height == 0:
        height = max(1, round(h * width / w))
    if crop == "center":
        old_aspect, new_aspect = w / h, width / height
        x = y = 0
        if old_aspect > new_aspect:
            x = round((w - w * (new_aspect / old_aspect)) / 2)
        elif old_aspect < new_aspect:
            y = round((h - h * (old_aspect / new_aspect)) / 2)
        img = img.crop((x, y, w - x, h - y))
    return img.resize((width, height), _RESAMPLE.get(method, Image.Resampling.BICUBIC))


@node("ImageScale")
async def image_scale(
    ctx: NodeContext, image: Any, upscale_method: str, width: int, height: int, crop: str = "disabled"
) -> NodeResult:
    return (ImageBatch(_scale(i, upscale_method, width, height, crop) for i in as_images(image)),), None


@node("ImageScaleBy")
async def image_scale_by(ctx: NodeContext, image: Any, upscale_method: str, scale_by: float) -> NodeResult:
    out = []
    for i in as_images(image):
        out.append(
            _scale(
                i,
                upscale_method,
                max(1, round(i.width * scale_by)),
                max(1, round(i.height * scale_by)),
                "disabled",
            )
        )
    return (ImageBatch(out),), None


@node("ImageInvert")
async def image_invert(ctx: NodeContext, image: Any) -> NodeResult:
    return (ImageBatch(ImageOps.invert(i) for i in as_images(image)),), None


def _open_input(ctx: NodeContext, name: str) -> Image.Image:
    path = ctx.folders.annotated(name, ctx.folders.input)
    if path is None or not path.is_file():
        raise FileNotFoundError(f"[Errno 2] No such file or directory: '{name}'")
    return Image.open(path)


@node("LoadImage")
async def load_image(ctx: NodeContext, image: str) -> NodeResult:
    img = _open_input(ctx, image)
    images, masks = [], []
    size = None
    for frame in ImageSequence.Iterator(img):
        frame = ImageOps.exif_transpose(frame)
        if frame.mode == "I":
            frame = frame.point(lambda v: v * (1 / 255))
        rgb = frame.convert("RGB")
        if size is None:
            size = rgb.size
        elif rgb.size != size:
            continue
        if "A" in frame.getbands():
            masks.append(ImageOps.invert(frame.getchannel("A")))
        elif frame.mode == "P" and "transparency" in frame.info:
            masks.append(ImageOps.invert(frame.convert("RGBA").getchannel("A")))
        else:
            masks.append(Image.new("L", (DEFAULT_SIZE, DEFAULT_SIZE), 0))
        images.append(rgb)
    return (ImageBatch(images), MaskBatch(masks)), None


@node("LoadImageMask")
async def load_image_mask(ctx: NodeContext, image: str, channel: str) -> NodeResult:
    img = ImageOps.exif_transpose(_open_input(ctx, image))
    if img.getbands() != ("R", "G", "B", "A"):
        if img.mode == "I":
            img = img.point(lambda v: v * (1 / 255))
        img = img.convert("RGBA")
    c = channel[0].upper()
    if c in img.getbands():
        mask = img.getchannel(c)
        if c == "A":
            mask = ImageOps.invert(mask)
    else:
        mask = Image.new("L", (DEFAULT_SIZE, DEFAULT_SIZE), 0)
    return (MaskBatch([mask]),), None


def _compute_vars(prefix: str, width: int, height: int) -> str:
    now = time.localtime()
    for k, v in (
        ("%width%", str(width)),
        ("%height%", str(height)),
        ("%year%", str(now.tm_year)),
        ("%month%", str(now.tm_mon).zfill(2)),
        ("%day%", str(now.tm_mday).zfill(2)),
        ("%hour%", str(now.tm_hour).zfill(2)),
        ("%minute%", str(now.tm_min).zfill(2)),
        ("%second%", str(now.tm_sec).zfill(2)),
    ):
        prefix = prefix.replace(k, v)
    return prefix


def save_images(ctx: NodeContext, images: Any, prefix: str, kind: str) -> NodeResult:
    """SaveImage / PreviewImage: `{prefix}_{counter:05}_.png`, with the prompt as a tEXt chunk."""
    imgs = as_images(images)
    folder = ctx.folders.output if kind == "output" else ctx.folders.temp
    if "%" in prefix:
        prefix = _compute_vars(prefix, imgs[0].width, imgs[0].height)
    full, filename, counter, subfolder = ctx.folders.save_path(folder, prefix)
    meta = PngInfo()
    if ctx.png_prompt is not None:
        meta.add_text("prompt", json.dumps(ctx.png_prompt))
    extra = ctx.extra_data.get("extra_pnginfo")
    if isinstance(extra, dict):
        for k, v in extra.items():
            meta.add_text(str(k), json.dumps(v))
    results = []
    for batch_number, img in enumerate(imgs):
        file = f"{filename.replace('%batch_num%', str(batch_number))}_{counter:05}_.png"
        img.save(full / file, format="PNG", pnginfo=meta, compress_level=ctx.config.png_compress_level)
        results.append({"filename": file, "subfolder": subfolder, "type": kind})
        counter += 1
    ctx.folders.advance(full, filename, counter)
    return (), {"images": results}


@node("SaveImage")
async def save_image(ctx: NodeContext, images: Any, filename_prefix: str = "ComfyUI") -> NodeResult:
    return save_images(ctx, images, filename_prefix, "output")


@node("PreviewImage")
async def preview_image(ctx: NodeContext, images: Any) -> NodeResult:
    suffix = "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))
    return save_images(ctx, images, f"ComfyUI_temp_{suffix}", "temp")


@node("MaskPreview")
async def mask_preview(ctx: NodeContext, mask: Any) -> NodeResult:
    suffix = "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))
    return save_images(ctx, mask, f"ComfyUI_temp_{suffix}", "temp")


@node("SaveImageWebsocket")
async def save_image_websocket(ctx: NodeContext, images: Any) -> NodeResult:
    """Sends each image as a PNG preview frame through the progress hook, as ComfyUI does."""
    imgs = as_images(images)
    for step, img in enumerate(imgs):
        await ctx.progress(step, len(imgs), ("PNG", img), max_size=1 << 16)
    return (), None


# -- the two harness test nodes ------------------------------------------------------------------


@node("HarnessSlowSampler")
async def harness_slow_sampler(
    ctx: NodeContext,
    image: Any,
    steps: int,
    seconds_per_step: float,
    send_preview: bool = False,
    progress_text: str = "",
) -> NodeResult:
    preview_src = as_images(image)[0] if send_preview else None
    for i in range(steps):
        await ctx.sleep(seconds_per_step)
        ctx.check_interrupt()
        if progress_text:
            ctx.send_text(f"{progress_text} {i + 1}/{steps}")
        await ctx.progress(i + 1, steps, ("JPEG", preview_src) if preview_src is not None else None)
    return (image,), None


@node("HarnessFail")
async def harness_fail(ctx: NodeContext, image: Any) -> NodeResult:
    raise RuntimeError("harness failure")


# -- the SD pipeline, without weights ------------------------------------------------------------


@node("CheckpointLoaderSimple")
async def checkpoint_loader(ctx: NodeContext, ckpt_name: str) -> NodeResult:
    return (Model(ckpt_name), Clip(ckpt_name), Vae(ckpt_name)), None


@node("LoraLoader")
async def lora_loader(
    ctx: NodeContext, model: Any, clip: Any, lora_name: str, strength_model: float, strength_clip: float
) -> NodeResult:
    if isinstance(model, Model) and strength_model != 0:
        model = Model(model.name, model.loras + ((lora_name, strength_model),))
    if isinstance(clip, Clip) and strength_clip != 0:
        clip = Clip(clip.name, clip.loras + ((lora_name, strength_clip),))
    return (model, clip), None


@node("CLIPTextEncode")
async def clip_text_encode(ctx: NodeContext, text: str, clip: Any) -> NodeResult:
    return (Conditioning(text, str(clip)),), None


@node("EmptyLatentImage")
async def empty_latent_image(ctx: NodeContext, width: int, height: int, batch_size: int = 1) -> NodeResult:
    latent = Image.new("RGB", (max(1, width // 8), max(1, height // 8)), (0, 0, 0))
    return ({"samples": LatentBatch([latent] * batch_size)},), None


@node("VAEEncode")
async def vae_encode(ctx: NodeContext, pixels: Any, vae: Any) -> NodeResult:
    out = []
    for img in as_images(pixels):
        w, h = (img.width // 8) * 8 or 8, (img.height // 8) * 8 or 8
        out.append(img.crop((0, 0, w, h)).resize((w // 8, h // 8), Image.Resampling.BOX))
    return ({"samples": LatentBatch(out)},), None


@node("VAEDecode")
async def vae_decode(ctx: NodeContext, samples: Any, vae: Any) -> NodeResult:
    out = [s.resize((s.width * 8, s.height * 8), Image.Resampling.BICUBIC) for s in as_latent(samples)]
    return (ImageBatch(out),), None


def _pattern(material: str, size: tuple[int, int]) -> Image.Image:
    """A smooth, deterministic noise picture: a 4x4 random grid scaled up bicubically."""
    rng = random.Random(hashlib.sha256(material.encode()).digest())
    grid = Image.frombytes("RGB", (4, 4), bytes(rng.getrandbits(8) for _ in range(48)))
    return grid.resize(size, Image.Resampling.BICUBIC)


async def _sample(
    ctx: NodeContext, latent: Any, seed: int, steps: int, denoise: float, material: str
) -> dict[str, Any]:
    samples = as_latent(latent)
    targets = [_pattern(f"{material}|{seed + i}", s.size) for i, s in enumerate(samples)]
    start = _pattern(f"noise|{seed}", samples[0].size) if ctx.config.sampler_previews and steps > 0 else None
    for step in range(1, steps + 1):
        await ctx.sleep(ctx.config.step_seconds)
        preview = None
        if start is not None:
            preview = ("JPEG", Image.blend(start, targets[0], step / steps))
        await ctx.progress(step, steps, preview)
    d = min(max(float(denoise), 0.0), 1.0)
    out = [Image.blend(s.convert("RGB"), t, d) for s, t in zip(samples, targets)]
    result = dict(latent) if isinstance(latent, dict) else {}
    result["samples"] = LatentBatch(out)
    return result


def _material(model: Any, positive: Any, negative: Any, *extra: Any) -> str:
    def text(c: Any) -> str:
        return c.text if isinstance(c, Conditioning) else str(c)

    return "|".join([str(model), text(positive), text(negative), *map(str, extra)])


def _widget(value: Any, name: str, default: Any) -> Any:
    """A widget value of the node that made a Placeholder (e.g. BasicScheduler's steps)."""
    if isinstance(value, Placeholder):
        v = value.inputs.get(name, default)
        return v if isinstance(v, (int, float)) and not isinstance(v, bool) else default
    return default


@node("KSampler")
async def ksampler(
    ctx: NodeContext, model: Any, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str,
    positive: Any, negative: Any, latent_image: Any, denoise: float = 1.0,
) -> NodeResult:  # fmt: skip
    material = _material(model, positive, negative, cfg, sampler_name, scheduler)
    return (await _sample(ctx, latent_image, seed, steps, denoise, material),), None


@node("KSamplerAdvanced")
async def ksampler_advanced(
    ctx: NodeContext, model: Any, add_noise: str, noise_seed: int, steps: int, cfg: float, sampler_name: str,
    scheduler: str, positive: Any, negative: Any, latent_image: Any, start_at_step: int, end_at_step: int,
    return_with_leftover_noise: str,
) -> NodeResult:  # fmt: skip
    run = max(0, min(end_at_step, steps) - start_at_step)
    material = _material(model, positive, negative, cfg, sampler_name, scheduler, add_noise)
    return (await _sample(ctx, latent_image, noise_seed, run, run / steps if steps else 0.0, material),), None


@node("SamplerCustom")
async def sampler_custom(
    ctx: NodeContext, model: Any, add_noise: bool, noise_seed: int, cfg: float, positive: Any, negative: Any,
    sampler: Any, sigmas: Any, latent_image: Any,
) -> NodeResult:  # fmt: skip
    steps = int(_widget(sigmas, "steps", 20))
    denoise = float(_widget(sigmas, "denoise", 1.0))
    out = await _sample(
        ctx, latent_image, noise_seed, steps, denoise, _material(model, positive, negative, cfg, sampler)
    )
    return (out, out), None


@node("SamplerCustomAdvanced")
async def sampler_custom_advanced(
    ctx: NodeContext, noise: Any, guider: Any, sampler: Any, sigmas: Any, latent_image: Any
) -> NodeResult:
    steps = int(_widget(sigmas, "steps", 20))
    denoise = float(_widget(sigmas, "denoise", 1.0))
    seed = int(_widget(noise, "noise_seed", 0))
    out = await _sample(ctx, latent_image, seed, steps, denoise, _material(guider, sampler, sigmas))
    return (out, out), None


# -- everything else -----------------------------------------------------------------------------


async def passthrough(ctx: NodeContext, spec: NodeSpec, inputs: dict[str, Any]) -> NodeResult:
    outputs = []
    widgets = {k: v for k, v in inputs.items() if isinstance(v, (int, float, str, bool))}
    for out_type in spec.outputs:
        value: Any = None
        found = False
        for name, ispec in spec.inputs.items():
            if name in inputs and ispec.type == out_type:
                value, found = inputs[name], True
                break
        outputs.append(value if found else default_for(out_type, spec.name, widgets))
    return tuple(outputs), None
