"""Words, fonts and synthetic renders of the built-in ``glyphs`` text-rendering backend.

Everything here is offline: the fonts are the TrueType files matplotlib ships under
``matplotlib.get_data_path()/fonts/ttf`` (DejaVu Sans/Serif/Mono with bold and oblique variants,
STIX, Computer Modern), rendered with Pillow.

Conventions:

* an image is float32 ``[N, 1, H, W]`` in ``[0, 1]``, dark text (0) on a light background (near 1),
  ``H, W = IMAGE_SHAPE``;
* words are upper-case A-Z, ``MIN_LEN``..``MAX_LEN`` letters; :data:`TRAIN_WORDS` and
  :data:`HELDOUT_WORDS` are disjoint and fixed forever, so accuracies recorded on held-out words
  stay comparable.
"""

from __future__ import annotations

import random
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "ALPHABET", "FONT_FILES", "HELDOUT_WORDS", "IMAGE_SHAPE", "MAX_LEN", "MIN_LEN", "TRAIN_WORDS",
    "clean_render", "font_paths", "random_render", "render_batch",
]  # fmt: skip

#: (height, width) of every glyphs image in pixels
IMAGE_SHAPE: tuple[int, int] = (32, 96)
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
MIN_LEN, MAX_LEN = 3, 5

_WORDS = """
ACE ACT ADD AGE AID AIM AIR ALL ANT APE ARM ART ASK BAD BAG BAN BAT BED BEE BIG BOX BOY BUG BUS
BUY CAB CAN CAP CAR CAT COW CRY CUP CUT DAY DEN DIG DOG DOT DRY EAR EAT EGG END EYE FAN FAR FIG
FIT FIX FLY FOG FOX FUN GAP GAS GEM GUM GUN HAT HEN HIT HOP HOT HUB HUG ICE INK JAM JAR JAW JET
JOB JOY KEY KID KIT LAB LAP LEG LID LIP LOG LOW MAP MAT MIX MOB MUD NET NEW NUT OAK OIL OWL PAN
PEN PET PIG PIN POT RAT RED RIB RUG RUN SAD SAW SEA SKY SUN TAX TEA TEN TIP TOP TOY VAN WAX WEB
WIN ZIP ZOO
ARCH AUTO BABY BACK BAKE BALL BAND BANK BARN BATH BEAR BEEF BELL BELT BIKE BIRD BLUE BOAT BODY
BOLD BONE BOOK BOOT BOWL BULB CAFE CAKE CALM CAMP CARD CART CASH CAVE CHEF CITY CLAY CLUB COAL
COAT CODE COIN COLD CONE COOK CORN CRAB DARK DATA DEER DESK DIVE DOOR DOVE DRUM DUCK DUST EAST
EDGE EXIT FACE FARM FAST FILM FIRE FISH FLAG FOOD FORK FROG GAME GATE GIFT GOAT GOLD GOLF HAND
HARP HILL HOME HOOK HORN JAZZ JUMP KING KITE LAKE LAMP LAND LEAF LIFT LINK LION LOCK LOVE MAIL
MASK MILK MOON NAIL NEST NOTE OPEN OVEN PARK PEAR PINK PIPE PLUM POOL PORT QUIZ RAIN RICE RING
ROAD ROCK ROOF ROPE ROSE SAFE SAIL SALT SAND SHIP SHOE SHOP SNOW SOAP SOCK SOFA SOUP STAR STOP
SWAN TAXI TENT TIDE TREE TUBE VASE VOTE WALL WAVE WELL WIND WOLF WOOD WORD YARD ZERO ZONE
ANGEL APPLE BEACH BENCH BERRY BLOCK BOARD BRAIN BREAD BRICK BRUSH CABIN CANDY CHAIR CHALK CHEST
CLOCK CLOUD COAST CRANE CROWN DANCE DREAM DRINK EAGLE EARTH FENCE FIELD FLAME FLOOR FRUIT GHOST
GLASS GLOVE GRAPE GRASS HEART HONEY HORSE HOTEL HOUSE JEWEL JUICE KNIFE LEMON LIGHT MANGO MAPLE
MONEY MOUSE MUSIC NIGHT NORTH OCEAN OLIVE ONION PAINT PAPER PEACH PEARL PHONE PIANO PIZZA PLANE
PLANT PLATE QUEEN RADIO RIVER ROBOT SALAD SHARK SHEEP SHELF SHIRT SKATE SMILE SNAKE SOUTH SPOON
STONE STORM SUGAR TABLE TIGER TOAST TORCH TOWER TRAIN TRUCK WATCH WATER WHALE WHEEL WORLD ZEBRA
"""
_ALL = sorted(set(_WORDS.split()))
assert all(w.isalpha() and w.isupper() and MIN_LEN <= len(w) <= MAX_LEN for w in _ALL)
# every 6th word (in sorted order) is held out: about 1/6 of each length, fixed forever
HELDOUT_WORDS: tuple[str, ...] = tuple(w for i, w in enumerate(_ALL) if i % 6 == 3)
TRAIN_WORDS: tuple[str, ...] = tuple(w for i, w in enumerate(_ALL) if i % 6 != 3)

#: font files (matplotlib's ttf folder) the renders draw from; the first is the clean reference font
FONT_FILES: tuple[str, ...] = (
    "DejaVuSans-Bold.ttf", "DejaVuSans.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "cmr10.ttf", "cmss10.ttf", "cmtt10.ttf",
)  # fmt: skip


def font_paths() -> list[Path]:
    """Absolute paths of :data:`FONT_FILES` (``FileNotFoundError`` naming a missing one)."""
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    paths = [folder / name for name in FONT_FILES]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"glyphs fonts missing from matplotlib's font folder: {missing}")
    return paths


@lru_cache(maxsize=512)
def _font(index: int, size: int):
    from PIL import ImageFont

    return ImageFont.truetype(str(font_paths()[index]), size)


def _draw(word: str, font_index: int, size: int, dx: float, dy: float, slant: float, stroke: int,
          ink: float, paper: float) -> np.ndarray:
    """One render as float32 ``[H, W]`` in [0, 1]: ``word`` centred, offset by ``(dx, dy)`` px,
    sheared by ``slant`` (x shift per px of height), ``stroke`` px of extra outline."""
    from PIL import Image, ImageDraw

    h, w = IMAGE_SHAPE
    scale = 4  # draw at 4x and downsample: antialiased strokes
    font = _font(font_index, size * scale)
    canvas = Image.new("L", (w * scale, h * scale), 0)
    draw = ImageDraw.Draw(canvas)
    left, top, right, bottom = draw.textbbox((0, 0), word, font=font, stroke_width=stroke * scale)
    x = (w * scale - (right - left)) / 2 - left + dx * scale
    y = (h * scale - (bottom - top)) / 2 - top + dy * scale
    draw.text((x, y), word, fill=255, font=font, stroke_width=stroke * scale, stroke_fill=255)
    if slant:
        cy = h * scale / 2
        canvas = canvas.transform(canvas.size, Image.AFFINE, (1, slant, -slant * cy, 0, 1, 0), Image.BILINEAR)
    canvas = canvas.resize((w, h), Image.BOX)
    mask = np.asarray(canvas, dtype=np.float32) / 255.0
    return paper + (ink - paper) * mask


def clean_render(word: str, font_index: int = 0) -> Tensor:
    """The reference render of ``word``: font ``FONT_FILES[font_index]``, size 22, centred, black on
    white; float32 ``[1, H, W]`` in [0, 1]."""
    return torch.from_numpy(_draw(word, font_index, 22, 0.0, 0.0, 0.0, 0, 0.0, 1.0)).unsqueeze(0)


def random_render(word: str, rng: random.Random) -> np.ndarray:
    """A training render of ``word`` with random font, size, position, slant, stroke and
    background/ink levels; float32 ``[H, W]`` in [0, 1]."""
    h, w = IMAGE_SHAPE
    size = rng.randint(16, 26) if len(word) <= 4 else rng.randint(15, 23)
    return _draw(
        word,
        rng.randrange(len(FONT_FILES)),
        size,
        dx=rng.uniform(-6, 6),
        dy=rng.uniform(-3, 3),
        slant=rng.uniform(-0.25, 0.25) if rng.random() < 0.5 else 0.0,
        stroke=1 if rng.random() < 0.15 else 0,
        ink=rng.uniform(0.0, 0.2),
        paper=rng.uniform(0.8, 1.0),
    )


def render_batch(words: list[str], rng: random.Random) -> Tensor:
    """:func:`random_render` of each word, stacked: float32 ``[N, 1, H, W]`` in [0, 1]."""
    return torch.from_numpy(np.stack([random_render(wd, rng) for wd in words])).unsqueeze(1)
