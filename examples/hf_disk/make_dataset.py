"""Write scikit-learn's bundled digits (offline) as a Hugging Face dataset with ``save_to_disk``: a
``DatasetDict`` with ``train`` and ``test`` splits, an ``image`` column (``Array2D`` 8x8, the 0..16
intensities divided by their documented maximum 16, so nothing is fitted) and a ``label`` ``ClassLabel``
(whose names are the public label set).

    python examples/hf_disk/make_dataset.py [OUT_DIR]   # default: examples/hf_disk/data/digits
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from datasets import Array2D, ClassLabel, Dataset, DatasetDict, Features
from sklearn.datasets import load_digits

TEST_FRACTION = 0.2
SEED = 5


def write_dataset(out_dir: Path) -> dict[str, int]:
    """The dataset on disk; returns the size of each split."""
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)  # the documented 0..16 range: public scaling
    order = np.random.default_rng(SEED).permutation(len(images))
    n_test = int(round(TEST_FRACTION * len(order)))
    features = Features({"image": Array2D(shape=(8, 8), dtype="float32"),
                         "label": ClassLabel(names=[str(d) for d in range(10)])})
    splits = {name: Dataset.from_dict({"image": images[index], "label": digits.target[index].tolist()},
                                      features=features)
              for name, index in (("train", order[n_test:]), ("test", order[:n_test]))}
    DatasetDict(splits).save_to_disk(str(out_dir))
    return {name: len(split) for name, split in splits.items()}


if __name__ == "__main__":
    where = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "data" / "digits"
    for split, n in write_dataset(where).items():
        print(f"{where} [{split}]: {n} records")
