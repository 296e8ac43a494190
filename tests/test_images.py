"""PNG grids written for people to look at."""

import torch

from treesdk.images import save_grid


def test_save_grid_writes_upscaled_png(tmp_path):
    from PIL import Image

    images = torch.rand(5, 3, 8, 8)
    path = save_grid(images, tmp_path / "grid.png", nrow=3, scale=4)
    with Image.open(path) as img:
        # 3 columns, 2 rows of 8 px tiles with 1 px borders, times 4
        assert img.size == ((3 * 9 + 1) * 4, (2 * 9 + 1) * 4)
        pixel = img.getpixel((4 * 1, 4 * 1))
    assert pixel == tuple(round(float(v) * 255) for v in images[0, :, 0, 0])


def test_default_scale_makes_tiny_tiles_visible(tmp_path):
    from PIL import Image

    path = save_grid(torch.rand(4, 1, 8, 8), tmp_path / "sub" / "grid.png")
    with Image.open(path) as img:  # 2 x 2 grid, scale ceil(64 / 8) = 8
        assert img.size == ((2 * 9 + 1) * 8, (2 * 9 + 1) * 8)
