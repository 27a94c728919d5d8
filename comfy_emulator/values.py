"""The values that flow along links between emulated nodes.

ComfyUI passes torch tensors; the emulator passes Pillow images. An IMAGE is an ImageBatch of
RGB images, a MASK a MaskBatch of "L" images, a LATENT a dict `{"samples": LatentBatch}` whose
"latents" are RGB images at 1/8 of the pixel size (so VAEDecode is an upscale). Models, CLIP and
conditioning are small records, so a sampler can derive a deterministic picture from them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image

DEFAULT_SIZE = 64


class ImageBatch(list):  # list[Image.Image]
    def __str__(self) -> str:
        w, h = self[0].size if self else (0, 0)
        return f"tensor(<IMAGE {len(self)}x{h}x{w}x3>, shape=torch.Size([{len(self)}, {h}, {w}, 3]))"

    __repr__ = __str__


class MaskBatch(list):  # list[Image.Image], mode "L"
    def __str__(self) -> str:
        w, h = self[0].size if self else (0, 0)
        return f"tensor(<MASK {len(self)}x{h}x{w}>, shape=torch.Size([{len(self)}, {h}, {w}]))"

    __repr__ = __str__


class LatentBatch(list):  # list[Image.Image] at 1/8 size
    def __str__(self) -> str:
        w, h = self[0].size if self else (0, 0)
        return f"tensor(<LATENT {len(self)}x4x{h}x{w}>, shape=torch.Size([{len(self)}, 4, {h}, {w}]))"

    __repr__ = __str__


@dataclass(frozen=True)
class Model:
    name: str
    loras: tuple[tuple[str, float], ...] = ()

    def __str__(self) -> str:
        return f"<ModelPatcher {self.name}{''.join(f' +{n}@{s}' for n, s in self.loras)}>"


@dataclass(frozen=True)
class Clip:
    name: str
    loras: tuple[tuple[str, float], ...] = ()

    def __str__(self) -> str:
        return f"<CLIP {self.name}>"


@dataclass(frozen=True)
class Vae:
    name: str

    def __str__(self) -> str:
        return f"<VAE {self.name}>"


@dataclass(frozen=True)
class Conditioning:
    text: str
    clip: str = ""

    def __str__(self) -> str:
        return f"[[tensor(<CONDITIONING {self.text[:40]!r}>), {{'pooled_output': tensor(...)}}]]"


@dataclass
class Placeholder:
    """What a pass-through node produces for an output type it cannot derive from its inputs."""

    type: str
    class_type: str
    inputs: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"<{self.type} from {self.class_type}>"


def gray_image(size: tuple[int, int] = (DEFAULT_SIZE, DEFAULT_SIZE)) -> Image.Image:
    return Image.new("RGB", size, (128, 128, 128))


def default_for(type_: Any, class_type: str, inputs: dict[str, Any]) -> Any:
    """A stand-in value of an output type, usable by the real nodes downstream."""
    if type_ == "IMAGE":
        return ImageBatch([gray_image()])
    if type_ == "MASK":
        return MaskBatch([Image.new("L", (DEFAULT_SIZE, DEFAULT_SIZE), 0)])
    if type_ == "LATENT":
        return {"samples": LatentBatch([Image.new("RGB", (DEFAULT_SIZE // 8, DEFAULT_SIZE // 8), (0, 0, 0))])}
    return Placeholder(type_ if isinstance(type_, str) else "COMBO", class_type, dict(inputs))


def as_images(value: Any) -> list[Image.Image]:
    if isinstance(value, ImageBatch) and value:
        return list(value)
    if isinstance(value, MaskBatch) and value:
        return [m.convert("RGB") for m in value]
    return [gray_image()]


def as_latent(value: Any) -> list[Image.Image]:
    if isinstance(value, dict) and isinstance(value.get("samples"), LatentBatch) and value["samples"]:
        return list(value["samples"])
    return [Image.new("RGB", (DEFAULT_SIZE // 8, DEFAULT_SIZE // 8), (0, 0, 0))]


def format_value(x: Any) -> Any:
    """How ComfyUI shows an input in `execution_error.current_inputs`."""
    if x is None or isinstance(x, (int, float, bool, str)):
        return x
    return str(x)
