"""Write scikit-learn's bundled breast-cancer data (569 records, 30 numeric features) as a cross-silo
federation: ``hospitals.csv`` with a ``site`` column (three hospitals of unequal size), one file per
hospital under ``sites/`` (what each data owner would hold on its own machine), and ``test.csv``, a
held-out set the server keeps, and ``schema.toml``: the label set and each feature's range, taken from
the summary-statistics table in the dataset's published description (UCI WDBC, shipped as the scikit-learn
``DESCR``), never computed from the records. Runs offline: the data ships inside scikit-learn.

    python examples/tabular_sites/make_data.py [OUT_DIR]   # default: examples/tabular_sites/data
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
from sklearn.datasets import load_breast_cancer

SITES = {"st-marys": 0.45, "city-general": 0.35, "riverside": 0.20}  # each hospital's share of the records
TEST_FRACTION = 0.2
SEED = 7
LABELS = ("malignant", "benign")  # the public label set, in class-index order
_STAT_ROW = re.compile(r"^(?P<name>[a-z ]+) \((?P<kind>mean|standard error|worst)\):"
                       r"\s+(?P<lo>[\d.]+)\s+(?P<hi>[\d.]+)$")


def published_ranges(description: str) -> dict[str, tuple[float, float]]:
    """Each feature column's (min, max) from the description's "Summary Statistics" table."""
    ranges = {}
    for line in description.splitlines():
        match = _STAT_ROW.match(line.strip())
        if match:
            name, kind = match["name"].strip().replace(" ", "_"), match["kind"]
            column = {"mean": f"mean_{name}", "standard error": f"{name}_error", "worst": f"worst_{name}"}[kind]
            ranges[column] = (float(match["lo"]), float(match["hi"]))
    return ranges


def schema_text(ranges: dict[str, tuple[float, float]]) -> str:
    """The federation's public schema (dpfl's ``data-schema``): labels and min-max ranges."""
    lines = ["# Public schema: labels and the published min/max of every feature (UCI WDBC description).",
             f"labels = {list(LABELS)!r}".replace("'", '"'), ""]
    for column, (lo, hi) in ranges.items():
        lines += [f"[features.{column}]", f"range = [{lo}, {hi}]", ""]
    return "\n".join(lines)


def write_federation(out_dir: Path) -> dict[str, int]:
    """The CSV files; returns the record count of each file written."""
    bunch = load_breast_cancer(as_frame=True)
    frame = bunch.frame.rename(columns=lambda c: c.replace(" ", "_"))
    frame["target"] = frame["target"].map(dict(enumerate(LABELS)))  # scikit-learn: 0 malignant, 1 benign
    ranges = published_ranges(bunch.DESCR)
    if sorted(ranges) != sorted(c for c in frame.columns if c != "target"):
        raise SystemExit("the published summary table does not name every feature; check scikit-learn's DESCR")
    rng = np.random.default_rng(SEED)
    frame = frame.iloc[rng.permutation(len(frame))].reset_index(drop=True)
    n_test = int(round(TEST_FRACTION * len(frame)))
    test, train = frame.iloc[:n_test], frame.iloc[n_test:].copy()
    cuts = np.cumsum([int(round(share * len(train))) for share in SITES.values()])[:-1]
    train["site"] = np.select([np.arange(len(train)) < c for c in cuts], list(SITES)[:-1], list(SITES)[-1])
    (out_dir / "sites").mkdir(parents=True, exist_ok=True)
    counts = {"hospitals.csv": len(train), "test.csv": len(test)}
    (out_dir / "schema.toml").write_text(schema_text(ranges))
    train.to_csv(out_dir / "hospitals.csv", index=False)
    test.to_csv(out_dir / "test.csv", index=False)
    for site, rows in train.groupby("site"):
        rows.drop(columns="site").to_csv(out_dir / "sites" / f"{site}.csv", index=False)
        counts[f"sites/{site}.csv"] = len(rows)
    return counts


if __name__ == "__main__":
    where = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "data"
    for name, n in write_federation(where).items():
        print(f"{where / name}: {n} records")
