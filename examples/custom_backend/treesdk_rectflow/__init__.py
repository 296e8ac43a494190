"""A small rectified-flow model in plain torch as a treesdk backend (``rectflow-example``).

Conventions (treesdk's): ``x_sigma = (1 - sigma) * x0 + sigma * noise``, sigma 1 = noise, the model
predicts ``v = noise - x0``. Latents are the images themselves, ``[3, size, size]`` in ``[-1, 1]``.
A prompt is encoded as the mean of frozen random word embeddings (words hashed with CRC32), so any
string is a valid prompt and a prompt's row never depends on its batch mates.
"""

from __future__ import annotations

import contextlib
import math
import zlib
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from treesdk.interfaces import Cond, VelocityModel

__all__ = ["RectFlowBackend", "RectFlowNet"]

VOCAB = 512


def sigma_features(sigma: Tensor, dim: int = 16) -> Tensor:
    """Fourier features of sigma ``[B]`` -> ``[B, dim]``."""
    freqs = torch.exp(torch.arange(dim // 2, device=sigma.device) * (math.log(1000.0) / (dim // 2)))
    angles = sigma[:, None].float() * freqs[None] * math.pi
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class RectFlowNet(nn.Module):
    """Three convolutions with FiLM conditioning on (prompt, sigma), plus a low-rank adapter
    (``adapter_down``/``adapter_up``, 1x1 convolutions, ``up`` zero-initialised) on the middle one."""

    def __init__(self, size: int = 16, width: int = 32, text_dim: int = 32, rank: int = 4) -> None:
        super().__init__()
        self.size = size
        self.words = nn.Embedding(VOCAB, text_dim)
        self.inp = nn.Conv2d(3, width, 3, padding=1)
        self.film = nn.Linear(text_dim + 16, 2 * width)
        self.mid = nn.Conv2d(width, width, 3, padding=1)
        self.out = nn.Conv2d(width, 3, 3, padding=1)
        self.adapter_down = nn.Conv2d(width, rank, 1, bias=False)
        self.adapter_up = nn.Conv2d(rank, width, 1, bias=False)
        nn.init.zeros_(self.adapter_up.weight)
        self.adapter_enabled = True

    def encode(self, prompts: Sequence[str]) -> Tensor:
        rows = []
        for prompt in prompts:
            ids = [zlib.crc32(w.encode()) % VOCAB for w in prompt.lower().split()] or [0]
            rows.append(self.words(torch.tensor(ids, device=self.words.weight.device)).mean(0))
        return torch.stack(rows)

    def forward(self, x: Tensor, sigma: Tensor, text: Tensor) -> Tensor:
        scale, shift = self.film(torch.cat([text, sigma_features(sigma)], dim=1)).chunk(2, dim=1)
        h = torch.nn.functional.silu(self.inp(x)) * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
        mid = self.mid(h)
        if self.adapter_enabled:
            mid = mid + self.adapter_up(self.adapter_down(h))
        return self.out(torch.nn.functional.silu(mid))


class RectFlowBackend(VelocityModel):
    """The example backend. Options: ``size`` (image side, 16), ``shift`` (time shift of the grid,
    1 = none), ``rank`` (adapter rank), ``seed`` (weight init), ``device``, ``resolution`` (alias
    of ``size``, as treesdk's CLI passes it)."""

    name = "rectflow-example"

    def __init__(self, size: int = 16, shift: float = 1.0, rank: int = 4, seed: int = 0,
                 device: str | torch.device | None = None, resolution: int | None = None) -> None:
        torch.manual_seed(seed)
        self.net = RectFlowNet(size=int(resolution or size), rank=rank)
        self.shift = float(shift)
        self._device = torch.device(device or "cpu")
        self.net.to(self._device).eval()
        for name, param in self.net.named_parameters():
            param.requires_grad_(name.startswith("adapter_"))

    # -- the model contract ------------------------------------------------------------------

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (3, self.net.size, self.net.size)

    @property
    def device(self) -> torch.device:
        return self._device

    def encode(self, prompts: Sequence[str]) -> Cond:
        with torch.no_grad():
            return {"text": self.net.encode(list(prompts))}

    def velocity(self, x: Tensor, sigma: Tensor, cond: Cond) -> Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=self._device).expand(x.shape[0])
        return self.net(x.to(self._device, torch.float32), sigma, cond["text"].to(self._device)).to(x.dtype)

    @torch.no_grad()
    def decode(self, x: Tensor) -> Tensor:
        return ((x.float().clamp(-1, 1) + 1) / 2).to(self._device)

    def sigmas(self, num_steps: int) -> Tensor:
        """``linspace(1, 0, T + 1)`` with the time shift ``s * t / (1 + (s - 1) t)``."""
        t = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float32)
        return self.shift * t / (1 + (self.shift - 1) * t)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.net.parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items() if k.startswith("adapter_")}

    def load_trainable_state_dict(self, state: Mapping[str, Tensor]) -> None:
        own = {k: v for k, v in self.net.state_dict(keep_vars=True).items() if k.startswith("adapter_")}
        if set(state) != set(own):
            raise KeyError(f"adapter state mismatch: missing {sorted(set(own) - set(state))}, "
                           f"unexpected {sorted(set(state) - set(own))}")
        with torch.no_grad():
            for key, param in own.items():
                param.copy_(state[key])

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        """The base model: the adapter switched off for the duration."""
        self.net.adapter_enabled = False
        try:
            yield
        finally:
            self.net.adapter_enabled = True

    # -- one product default -----------------------------------------------------------------

    def default_prompts(self) -> list[str]:
        return ["a red square", "a blue circle on green", "a yellow star at night"]

    # -- its own sampler (the conformance suite's parity reference) ----------------------------

    @torch.no_grad()
    def sample(self, prompts: list[str], num_steps: int, seed: int) -> Tensor:
        """Euler ODE from ``randn((B, 3, size, size), generator=seed)``, written independently."""
        x = torch.randn((len(prompts), *self.latent_shape), generator=torch.Generator().manual_seed(seed))
        x = x.to(self._device)
        text = self.net.encode(prompts)
        grid = self.sigmas(num_steps).tolist()
        for s, s_next in zip(grid[:-1], grid[1:]):
            x = x + (s_next - s) * self.net(x, torch.full((len(prompts),), s, device=self._device), text)
        return x
