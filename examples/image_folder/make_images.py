"""Write scikit-learn's bundled handwritten digits (1,797 greyscale 8x8 images, offline) as an image folder:
``data/train/<digit>/<n>.png`` and ``data/test/<digit>/<n>.png``, one folder per class, the layout a data
owner's own photos would have.

    python examples/image_folder/make_images.py [OUT_DIR]   # default: examples/image_folder/data
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

TEST_FRACTION = 0.2
SEED = 11


def write_image_folder(out_dir: Path) -> dict[str, int]:
    """PNG files per class; returns how many images each split holds."""
    digits = load_digits()
    pixels = np.round(digits.images * (255 / 16)).astype(np.uint8)  # 0..16 intensities to 8-bit grey
    order = np.random.default_rng(SEED).permutation(len(pixels))
    n_test = int(round(TEST_FRACTION * len(order)))
    counts = {}
    for split, index in (("test", order[:n_test]), ("train", order[n_test:])):
        for k in index:
            folder = out_dir / split / str(int(digits.target[k]))
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels[k], mode="L").save(folder / f"{int(k):04d}.png")
        counts[split] = len(index)
    return counts


if __name__ == "__main__":
    where = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "data"
    for split, n in write_image_folder(where).items():
        print(f"{where / split}: {n} images")
