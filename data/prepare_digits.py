"""Tokenise scikit-learn's digits into train/val token shards: ``python data/prepare_digits.py --root data/digits``."""

from __future__ import annotations

import argparse

from lit_nat.demos.digits import prepare_digits


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", default="data/digits", help="data root to write meta.json and shards into")
    parser.add_argument("--val-per-class", type=int, default=18, help="samples of each class held out for val")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and the sample order")
    parser.add_argument("--samples-per-shard", type=int, default=128, help="samples per tar shard")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing preparation in --root")
    args = parser.parse_args(argv)
    try:
        meta = prepare_digits(args.root, args.val_per_class, args.seed, args.samples_per_shard, args.overwrite)
    except FileExistsError as err:
        parser.exit(1, f"{err} (--overwrite)\n")
    for name, split in meta.splits.items():
        print(f"{args.root}: {name}: {split.num_samples} samples in {len(split.shards)} shards")


if __name__ == "__main__":
    main()
