"""scikit-learn's handwritten digits as tensors, and the fixed halves the digit models train on.

``sklearn.datasets.load_digits`` ships with scikit-learn (no download): 1797 images of 8x8 pixels,
integer values 0..16, labels 0..9. Here the images become float32 ``[N, 1, 8, 8]`` in ``[0, 1]``
(value / 16) and the labels int64 ``[N]``.

Splits (by position in the dataset, fixed forever so recorded accuracies stay comparable):

* ``"even"``: indices 0, 2, 4, ... (899 images): trains the ``digit-classifier`` reward.
* ``"odd"``: indices 1, 3, 5, ... (898 images): trains the held-out ``digit-evaluator``.
* ``"all"``: every image: trains the flow model of the ``digits`` backend.

Each classifier's accuracy is recorded on the *other* half.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

__all__ = ["SPLITS", "load_digit_images"]

SPLITS = ("all", "even", "odd")


@lru_cache(maxsize=1)
def _load_all() -> tuple[Tensor, Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.from_numpy(data.images).to(torch.float32).div_(16.0).unsqueeze(1).contiguous()
    labels = torch.from_numpy(data.target).to(torch.int64).contiguous()
    return images, labels


def load_digit_images(split: str = "all") -> tuple[Tensor, Tensor]:
    """``(images [N, 1, 8, 8] float32 in [0, 1], labels [N] int64)`` of ``split`` (see module doc)."""
    if split not in SPLITS:
        raise ValueError(f"unknown digits split {split!r}; expected one of {SPLITS}")
    images, labels = _load_all()
    if split == "all":
        return images.clone(), labels.clone()
    start = 0 if split == "even" else 1
    return images[start::2].clone(), labels[start::2].clone()
