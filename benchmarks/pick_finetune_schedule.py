"""Pick the fine-tuning schedule from a pseudo-target gate, by a rule fixed in advance.

Reads ``pseudo_target_quality.json`` (``benchmarks/pseudo_target_quality.py``, run on training
faces only) and prints the ``flipnet finetune`` options of the setting with the lowest
FD-lowlevel among those whose targets keep identity (cosine to the LQ >= ``--min-identity``);
if none does, the setting that keeps identity best::

    python benchmarks/pick_finetune_schedule.py out/ptq-latent-keep/pseudo_target_quality.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def pick(rows: list[dict], min_identity: float = 0.97) -> str:
    """``--respaced-steps S --t0 T --tau U --factor N`` of the chosen pseudo-target row (the rows
    with a ``setting``: the pseudo targets, not the LQ and restorer reference rows)."""
    settings = [(row, "--respaced-steps {respaced_steps} --t0 {t0} --tau {tau} "
                      "--factor {factor}".format(**row["setting"]))
                for row in rows if row.get("setting")]
    if not settings:
        raise SystemExit("no pseudo-target rows (rows with a setting) in the table; tables "
                         "written before the setting field: rerun pseudo_target_quality.py")
    keep = [s for s in settings if s[0]["id_cos_to_lq"] >= min_identity]
    if keep:
        return min(keep, key=lambda s: s[0]["fd_lowlevel"])[1]
    return max(settings, key=lambda s: s[0]["id_cos_to_lq"])[1]


def main() -> None:
    """Print the chosen setting's ``flipnet finetune`` options."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("table", type=Path, help="pseudo_target_quality.json")
    ap.add_argument("--min-identity", type=float, default=0.97)
    args = ap.parse_args()
    print(pick(json.loads(args.table.read_text())["rows"], args.min_identity))


if __name__ == "__main__":
    main()
