"""Write a VQGAN checkpoint with random weights in the official MaskGIT/MAGE layout (168 keys under "state_dict").

    python scripts/make_random_vqgan.py assets/random_vqgan.ckpt [--seed 0] [--flat] [--ch 32]

For tests, benchmarks and dry runs of tokenisation, training and sampling without the real weights
(``vqgan_jax_strongaug.ckpt``): it loads with ``load_tokenizer("vqgan", checkpoint=...)`` exactly like the real file,
and its codebook is drawn from the encoder's outputs so images map to many different codes -- but the tokens mean
nothing and decoded images are noise. ``--ch`` shrinks the network (a multiple of 32; the real one is 128).
"""

from __future__ import annotations

import argparse

from lit_nat.tokenizers.vqgan import save_random_checkpoint


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="output checkpoint path (.ckpt)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--flat", action="store_true", help="save the bare state_dict, not under a 'state_dict' key")
    parser.add_argument("--ch", type=int, default=128, help="base width (official: 128)")
    args = parser.parse_args(argv)
    arch = {"ch": args.ch} if args.ch != 128 else {}
    path = save_random_checkpoint(args.out, seed=args.seed, wrap=not args.flat, **arch)
    hint = f", ch={args.ch}" if arch else ""
    print(f"wrote random VQGAN weights to {path}; load with load_tokenizer('vqgan', checkpoint={path!r}{hint})")


if __name__ == "__main__":
    main()
