"""Images for people: PNG files and contact sheets (PIL only)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

RED = (220, 30, 30)


def to_pil(image: np.ndarray) -> Image.Image:
    """A uint8 [H, W, C] array (C = 1 or 3) as a PIL image."""
    if image.shape[-1] == 1:
        return Image.fromarray(image[..., 0], mode="L")
    return Image.fromarray(image, mode="RGB")


def png_bytes(image: np.ndarray) -> bytes:
    """One uint8 [H, W, C] image as PNG bytes (lossless)."""
    buf = io.BytesIO()
    to_pil(image).save(buf, format="PNG")
    return buf.getvalue()


def contact_sheet(
    images: np.ndarray,
    framed: Sequence[bool] | np.ndarray | None = None,
    cols: int | None = None,
    cell: int = 48,
    pad: int = 4,
    captions: Sequence[str] | None = None,
) -> Image.Image:
    """A grid of ``images`` (uint8 [N, H, W, C]); rows where ``framed`` is true get a red frame
    (the paper's Fig. 4 marks generated images so). Small images are upscaled (nearest) to
    ``cell`` pixels so 8x8 digits stay legible; ``captions`` go under each cell, one line per
    ``\n``, each cut to the cell's width."""
    n = images.shape[0]
    cols = cols or max(1, int(np.ceil(np.sqrt(n))))
    rows = max(1, int(np.ceil(n / cols)))
    lines = [str(c).split("\n") for c in captions] if captions else []
    fits = max(1, (cell + 2 * pad - 2) // 6)  # Pillow's default font: about 6 px a character
    cap_h = 12 * max((len(x) for x in lines), default=0)
    step_x, step_y = cell + 2 * pad, cell + 2 * pad + cap_h
    sheet = Image.new("RGB", (cols * step_x, rows * step_y), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    framed = np.zeros(n, bool) if framed is None else np.asarray(framed, bool)
    for i in range(n):
        r, c = divmod(i, cols)
        x0, y0 = c * step_x + pad, r * step_y + pad
        tile = to_pil(images[i]).convert("RGB").resize((cell, cell), Image.Resampling.NEAREST)
        sheet.paste(tile, (x0, y0))
        if framed[i]:
            draw.rectangle([x0 - 3, y0 - 3, x0 + cell + 2, y0 + cell + 2], outline=RED, width=3)
        for k, text in enumerate(lines[i] if lines else ()):
            draw.text((x0 - pad + 1, y0 + cell + 2 + 12 * k), text[:fits], fill=(0, 0, 0))
    return sheet
