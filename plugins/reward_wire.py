"""The JSON wire format of remote rewards, as Flow-Factory's reward servers speak it.

Request, ``POST {url}/compute`` with ``Content-Type: application/json``::

    {"prompts": ["a cat", ...], "images": ["<base64 PNG>", ...]}

one base64-encoded PNG (8-bit RGB) per prompt, in order. Response, status 200::

    {"rewards": [0.83, ...]}

one number per image, in the same order. ``GET {url}/health`` answers 2xx when the server is up.
This is the request ``reward_server/example_server.py`` of X-GenGroup/Flow-Factory reads (its
``prompts``/``images`` keys; ``extra`` is optional and not sent), so a server written from that
template scores treesdk's images unchanged. Flow-Factory's own client spells the keys ``prompt``
and ``image``; :func:`read_request` accepts both spellings, so that client works with
``treesdk serve-reward`` too.

Images are quantised to 8 bits on the way: ``round(x * 255)`` of images float in [0, 1], the same
rounding the in-process JPEG rewards use, and the server sees ``uint8 / 255``. Only JSON crosses
the wire: nothing is unpickled or evaluated.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from treesdk.errors import UserError


class WireFormatError(UserError):
    """A request or response that does not follow the wire format (the message says which part)."""


def quantize(images: Tensor) -> Tensor:
    """Images float ``[B, 3, H, W]`` in [0, 1] as the server sees them: ``round(x * 255) / 255``, float32."""
    return (images.detach().float().clamp(0, 1) * 255).round() / 255


def encode_images(images: Tensor) -> list[str]:
    """Images float ``[B, 3, H, W]`` (or ``[B, 1, H, W]``) in [0, 1] -> B base64 strings of 8-bit RGB PNGs."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise WireFormatError(f"remote rewards send images [B, 3, H, W] (or [B, 1, H, W]); got shape {tuple(images.shape)}")
    arrays = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    if arrays.shape[1] == 1:
        arrays = arrays.repeat(1, 3, 1, 1)
    out = []
    for array in arrays.permute(0, 2, 3, 1).numpy():
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(array), mode="RGB").save(buffer, format="PNG")
        out.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return out


def decode_image(text: str, index: int) -> Tensor:
    """One base64 PNG/JPEG string -> float32 ``[3, H, W]`` in [0, 1] (``uint8 / 255``)."""
    try:
        data = base64.b64decode(text, validate=True)
        with Image.open(io.BytesIO(data)) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (binascii.Error, ValueError, OSError) as exc:
        raise WireFormatError(f"images[{index}] is not a base64-encoded image ({type(exc).__name__}: {exc})") from exc
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255


def build_request(images: Tensor, prompts: Sequence[str]) -> dict[str, Any]:
    """The JSON body of ``POST /compute`` for ``images`` and their ``prompts``."""
    if len(prompts) != images.shape[0]:
        raise WireFormatError(f"{images.shape[0]} images but {len(prompts)} prompts")
    return {"prompts": list(prompts), "images": encode_images(images)}


def read_request(body: Any) -> tuple[list[Tensor], list[str]]:
    """A decoded JSON request -> (images float ``[3, H, W]`` each, prompts); keys ``prompts``/``images``
    or Flow-Factory's client spelling ``prompt``/``image``."""
    if not isinstance(body, dict):
        raise WireFormatError(f"the request must be a JSON object with 'prompts' and 'images', got {type(body).__name__}")
    prompts = body.get("prompts", body.get("prompt"))
    images = body.get("images", body.get("image"))
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise WireFormatError("'prompts' must be a list of strings")
    if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
        raise WireFormatError("'images' must be a list of base64 strings (one PNG per prompt)")
    if len(images) != len(prompts):
        raise WireFormatError(f"{len(images)} images but {len(prompts)} prompts; send one image per prompt")
    return [decode_image(text, i) for i, text in enumerate(images)], prompts


def read_scores(body: Any, expected: int) -> list[float]:
    """A decoded JSON response -> ``expected`` finite floats; anything else is a :class:`WireFormatError`
    saying what came back."""
    if isinstance(body, dict) and body.get("error"):
        raise WireFormatError(f"the server reported an error: {str(body['error'])[:200]}")
    if not isinstance(body, dict) or "rewards" not in body:
        shown = sorted(body)[:5] if isinstance(body, dict) else type(body).__name__
        raise WireFormatError(f"the response has no 'rewards' list (got {shown}); expected {{\"rewards\": [one number per image]}}")
    values = body["rewards"]
    if not isinstance(values, list):
        raise WireFormatError(f"'rewards' is a {type(values).__name__}, expected a list of numbers")
    if len(values) != expected:
        raise WireFormatError(f"the server returned {len(values)} scores for {expected} images")
    out = []
    for i, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise WireFormatError(f"score {i} is {value!r}, not a number")
        if not math.isfinite(float(value)):
            raise WireFormatError(f"score {i} is {value!r} (not finite)")
        out.append(float(value))
    return out
