#!/usr/bin/env python
"""Why the coded bitstream is smaller than the likelihood estimate: a test on section 4's models.

For each trained model of the paired R-D test (checkpoints kept with ``paired_rd.py
--model-dir``) and each held-out photo, the bits of y three ways: the actual bitstream of
``compress()``; -log2 of the eval forward's likelihoods (model sigma, bounded by b_sigma); and
-log2 of the likelihoods with each sigma replaced by the scale-table entry that CompressAI's coder
uses for it (``build_indexes``: the smallest table scale >= sigma). If rounding sigma up to the
table is why the bitstream is smaller, the third estimate matches the bitstream.

    python studies/coded_gap.py --model-dir DIR --out docs/studies
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import lic_quant as lq  # noqa: E402
from studies import common, paired_rd  # noqa: E402


@torch.no_grad()
def y_bits(model, x: torch.Tensor) -> dict:
    gc = model.gaussian_conditional
    y = model.g_a(x)
    z = model.h_a(y)
    z_strings = model.entropy_bottleneck.compress(z)
    z_hat = model.entropy_bottleneck.decompress(z_strings, z.size()[-2:])
    scales, means = model.h_s(z_hat).chunk(2, 1)
    indexes = gc.build_indexes(scales)
    y_strings = gc.compress(y, indexes, means=means)
    table = gc.scale_table.to(scales.dtype)[indexes.long()]
    bound = float(gc.lower_bound_scale.bound.reshape(-1)[0])

    def bits(s):
        _, lik = lq.gaussian_quantize(y, s, means, mode="ste", scale_bound=bound,
                                      zero_center=True, seed=0)
        return -torch.log2(lik)

    model_bits, table_bits = bits(scales), bits(table)
    # Symbols outside the coder's table range go out by escape codes (a few bits each), while
    # the estimate charges them up to -log2(likelihood_bound) = 30 bits.
    tail = table_bits > 20
    return {"y_bits_coded": 8 * sum(len(s) for s in y_strings),
            "y_bits_model": float(model_bits.sum()), "y_bits_table": float(table_bits.sum()),
            "y_bits_table_tail": float(table_bits[tail].sum()), "tail_elements": int(tail.sum()),
            "z_bits_coded": 8 * sum(len(s) for s in z_strings), "elements": y.numel()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", required=True)
    p.add_argument("--out", default="studies_out")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out = common.ensure_dir(os.path.join(args.out, "rd"))
    done = common.read_csv(os.path.join(out, "paired_rd.csv"))
    sizes = paired_rd.SIZES["cpu"]
    rows = []
    for r in done:
        seed, arm = int(r["seed"]), r["arm"]
        cfg = paired_rd.arm_config(sizes, arm, seed)
        key = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]
        if not os.path.exists(os.path.join(args.model_dir, f"msh_{cfg['mode']}_{key}.pt")):
            continue  # (train_model would train it: only measure the kept ones)
        model, _ = common.train_model(cfg, torch.device("cpu"), args.model_dir)
        model.update(force=True)
        for name in paired_rd.HELD_OUT:
            img = common.center_crop(common.photo(name), sizes["eval_size"])
            b = y_bits(model, img[None])
            rows.append({"seed": seed, "arm": arm, "image": name, **b,
                         "gap_model_percent": 100 * (b["y_bits_model"] - b["y_bits_coded"])
                         / b["y_bits_model"],
                         "gap_table_percent": 100 * (b["y_bits_table"] - b["y_bits_coded"])
                         / b["y_bits_table"],
                         "gap_table_no_tail_percent": 100 * (b["y_bits_table"]
                                                             - b["y_bits_table_tail"]
                                                             - b["y_bits_coded"])
                         / b["y_bits_table"]})
            print(rows[-1], file=sys.stderr)
    print(common.write_csv(os.path.join(out, "coded_gap.csv"), rows))


if __name__ == "__main__":
    main()
