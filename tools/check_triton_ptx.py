"""Compiles lic_quant's Triton kernels for an NVIDIA GPU without one and checks the machine code
for what would break the bitwise agreement with the C++/CUDA kernels (lic_quant/_triton_kernels.py):
every fma in the PTX is one the source asks for (the count equals that of a build with floating-point
fusion disabled, so nothing was contracted), no approximate division, and no flush-to-zero
arithmetic apart from the reciprocal estimate that reciprocal_rn refines to the IEEE result.

    TRITON_INTERPRET=0 python tools/check_triton_ptx.py [--arch 90]

Prints one JSON object per kernel variant and exits 1 if a check fails, 2 if the toolchain
(Triton's bundled ptxas) is unavailable. Used by tests/test_triton.py in a subprocess.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

os.environ["TRITON_INTERPRET"] = "0"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--eb-layers", type=int, default=2,
                        help="layers of the EntropyBottleneck variants (5: CompressAI's default, "
                             "about ten minutes of compilation on 2 cores; 2 by default)")
    args = parser.parse_args()
    try:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError as exc:
        print(json.dumps({"unavailable": str(exc)}))
        return 2
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from lic_quant import _triton_kernels as K

    bin_dir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    nvdisasm = os.path.join(bin_dir, "nvdisasm")

    def compile_variant(fn, sig, const, num_warps, fusion=True):
        src = ASTSource(fn=fn, signature=sig,
                        constexprs={(list(sig).index(k),): v for k, v in const.items()})
        return triton.compile(src, target=GPUTarget("cuda", args.arch, 32),
                              options={"num_warps": num_warps, "enable_fp_fusion": fusion})

    fwd_sig = {"y_ptr": "*fp32", "mu_ptr": "*fp32", "sigma_ptr": "*fp32", "seed_ptr": "*i64",
               "temp_ptr": "*fp64", "y_hat_ptr": "*fp32", "lik_ptr": "*fp32", "n_elements": "i32",
               "index_base": "i64", "scale_bound": "fp32", "likelihood_bound": "fp32",
               "MODE": "constexpr", "ZERO_CENTER": "constexpr", "HAS_MEANS": "constexpr",
               "IS_BF16": "constexpr", "ON_GPU": "constexpr", "BLOCK": "constexpr",
               "FAMILY": "constexpr", "RATE": "constexpr", "ALIGNED": "constexpr",
               "sample_size": "constexpr", "chunks": "constexpr"}
    bwd_sig = {"g_yhat_ptr": "*i16", "g_lik_ptr": "*fp32", "y_ptr": "*i16", "mu_ptr": "*i16",
               "sigma_ptr": "*i16", "seed_ptr": "*i64", "temp_ptr": "*fp64", "gy_ptr": "*i16",
               "gmu_ptr": "*i16", "gs_ptr": "*i16", "n_elements": "i64", "index_base": "i64",
               "scale_bound": "fp32", "likelihood_bound": "fp32", "MODE": "constexpr",
               "ZERO_CENTER": "constexpr", "HAS_MEANS": "constexpr", "HAS_GYHAT": "constexpr",
               "NEED_GY": "constexpr", "NEED_GMU": "constexpr", "NEED_GS": "constexpr",
               "IS_BF16": "constexpr", "ON_GPU": "constexpr", "BLOCK": "constexpr",
               "FAMILY": "constexpr", "RATE": "constexpr", "sample_size": "constexpr"}
    # rate=False launches pass sample_size = chunks = 1, which Triton specializes as constants;
    # rate=True ones write float64 chunk sums and pass them as integers.
    plain_fwd = dict(RATE=False, ALIGNED=True, sample_size=1, chunks=1)
    plain_bwd = dict(RATE=False, sample_size=1)
    rate_fwd_sig = dict(fwd_sig, lik_ptr="*fp64", sample_size="i64", chunks="i64")
    rate_bwd_sig = dict(bwd_sig, sample_size="i64")
    noise_sig = {"seed_ptr": "*i64", "out_ptr": "*fp32", "n_elements": "i32",
                 "index_base": "i64", "ON_GPU": "constexpr", "BLOCK": "constexpr"}
    fwd16_sig = dict(fwd_sig, y_ptr="*fp16", mu_ptr="*fp16", sigma_ptr="*fp16", y_hat_ptr="*fp16")
    variants = [
        ("forward mixed fp16", K.quantize_forward_kernel, fwd16_sig,
         dict(MODE=2, ZERO_CENTER=True, HAS_MEANS=True, IS_BF16=False, ON_GPU=True, BLOCK=1024,
              FAMILY=0, **plain_fwd), 4),
        ("forward sua fp32", K.quantize_forward_kernel, fwd_sig,
         dict(MODE=3, ZERO_CENTER=True, HAS_MEANS=True, IS_BF16=False, ON_GPU=True, BLOCK=1024,
              FAMILY=0, **plain_fwd), 4),
        ("backward noise bf16", K.quantize_backward_kernel, bwd_sig,
         dict(MODE=0, ZERO_CENTER=False, HAS_MEANS=True, HAS_GYHAT=True, NEED_GY=True,
              NEED_GMU=True, NEED_GS=True, IS_BF16=True, ON_GPU=True, BLOCK=4096, FAMILY=0,
              **plain_bwd), 8),
        # rate=True (docs/spec.md section 8): chunk sums (an unaligned sample size) and the
        # backward from one bits' gradient per sample.
        ("forward sua fp32 rate", K.quantize_forward_kernel, rate_fwd_sig,
         dict(MODE=3, ZERO_CENTER=True, HAS_MEANS=True, IS_BF16=False, ON_GPU=True, BLOCK=1024,
              FAMILY=0, RATE=True, ALIGNED=False), 8),
        ("backward noise bf16 rate", K.quantize_backward_kernel, rate_bwd_sig,
         dict(MODE=0, ZERO_CENTER=False, HAS_MEANS=True, HAS_GYHAT=True, NEED_GY=True,
              NEED_GMU=True, NEED_GS=True, IS_BF16=True, ON_GPU=True, BLOCK=4096, FAMILY=0,
              RATE=True), 8),
        ("noise", K.uniform_noise_kernel, noise_sig, dict(ON_GPU=True, BLOCK=1024), 4),
    ]
    # The other likelihood families: the fp32 sua forward and the bf16 noise backward of each.
    for family, name in list(enumerate(K.FAMILIES))[1:]:
        for label, kernel, sig, const, warps in variants[1:3]:
            variants.append((f"{label} {name}", kernel, sig, dict(const, FAMILY=family), warps))
    # Mixtures (docs/spec.md section 7): K and the layouts are run-time integers, the component
    # loops run-time loops; logits and zero_center on, every layout mode, rate=True.
    strides = ("mu", "sigma", "w")
    mix_fwd_sig = {"y_ptr": "*fp32", "mu_ptr": "*fp32", "sigma_ptr": "*fp32", "w_ptr": "*fp32",
                   "seed_ptr": "*i64", "temp_ptr": "*fp64", "y_hat_ptr": "*fp32",
                   "lik_ptr": "*fp32", "n_elements": "i32", "index_base": "i64",
                   "scale_bound": "fp32", "likelihood_bound": "fp32", "K": "i32", "inner": "i32",
                   **{f"{t}_{part}": "i32" for t in strides
                      for part in ("stride", "outer", "inner")},
                   **dict.fromkeys(("MODE", "ZERO_CENTER", "LOGITS", "IS_BF16", "ON_GPU", "BLOCK",
                                    "FAMILY", "LAYOUT", "RATE", "ALIGNED", "sample_size",
                                    "chunks"), "constexpr")}
    grads = ("gmu", "gs", "gw")
    mix_bwd_sig = {"g_yhat_ptr": "*i16", "g_lik_ptr": "*fp32", "y_ptr": "*i16", "mu_ptr": "*i16",
                   "sigma_ptr": "*i16", "w_ptr": "*i16", "seed_ptr": "*i64", "temp_ptr": "*fp64",
                   "gy_ptr": "*i16", "gmu_ptr": "*i16", "gs_ptr": "*i16", "gw_ptr": "*i16",
                   "n_elements": "i64", "index_base": "i64", "scale_bound": "fp32",
                   "likelihood_bound": "fp32", "K": "i32", "inner": "i32",
                   **{f"{t}_{part}": "i32" for t in strides + grads
                      for part in ("stride", "outer", "inner")},
                   **dict.fromkeys(("MODE", "ZERO_CENTER", "LOGITS", "HAS_GYHAT", "NEED_GY",
                                    "NEED_GMU", "NEED_GS", "NEED_GW", "IS_BF16", "ON_GPU",
                                    "BLOCK", "FAMILY", "LAYOUT", "RATE", "sample_size"),
                                   "constexpr")}
    mix_fwd = dict(MODE=3, ZERO_CENTER=True, LOGITS=True, IS_BF16=False, ON_GPU=True,
                   BLOCK=1024, FAMILY=0, LAYOUT=1, **plain_fwd)
    mix_bwd = dict(MODE=0, ZERO_CENTER=True, LOGITS=True, HAS_GYHAT=True, NEED_GY=True,
                   NEED_GMU=True, NEED_GS=True, NEED_GW=True, IS_BF16=True, ON_GPU=True,
                   BLOCK=1024, FAMILY=0, LAYOUT=1, **plain_bwd)
    # The family's mass and slopes are the functions checked above; what is new is the mixture's
    # own float code (softmax, centre, sums over k, the per-component gradients), the same in
    # every family and layout.
    variants += [
        ("mixture forward sua fp32", K.mixture_forward_kernel, mix_fwd_sig, mix_fwd, 8),
        ("mixture backward noise bf16", K.mixture_backward_kernel, mix_bwd_sig, mix_bwd, 8),
        ("mixture backward noise bf16 probabilities, some gradients", K.mixture_backward_kernel,
         mix_bwd_sig, dict(mix_bwd, LOGITS=False, ZERO_CENTER=False, HAS_GYHAT=False,
                           NEED_GY=False, NEED_GS=False), 8),
        ("mixture forward sua fp32 rate", K.mixture_forward_kernel,
         dict(mix_fwd_sig, lik_ptr="*fp64", sample_size="i64", chunks="i64"),
         dict(mix_fwd, RATE=True, ALIGNED=False), 8),
        ("mixture backward noise bf16 rate", K.mixture_backward_kernel,
         dict(mix_bwd_sig, sample_size="i64"), dict(mix_bwd, RATE=True), 8),
    ]
    # The EntropyBottleneck (docs/spec.md section 9): forward (fp32, sua) and backward (bf16,
    # noise, every output) with --eb-layers layers.
    eb_layers = args.eb_layers
    eb_slots = 2 if eb_layers == 1 else 15 * eb_layers - 17
    eb_fwd_sig = {"z_ptr": "*fp32", "med_ptr": "*fp32", "cst_ptr": "*fp32", "seed_ptr": "*i64",
                  "temp_ptr": "*fp64", "z_hat_ptr": "*fp32", "lik_ptr": "*fp32",
                  "n_elements": "i64", "C": "i64", "S": "i64", "likelihood_bound": "fp32",
                  "L": "constexpr", "SLOTS": "constexpr", "MODE": "constexpr",
                  "IS_BF16": "constexpr", "ON_GPU": "constexpr", "BLOCK": "constexpr"}
    eb_bwd_sig = {"g_zhat_ptr": "*i16", "g_lik_ptr": "*fp32", "z_ptr": "*i16", "med_ptr": "*i16",
                  "cst_ptr": "*fp32", "seed_ptr": "*i64", "temp_ptr": "*fp64", "g_z_ptr": "*i16",
                  "partial_ptr": "*fp32", "C": "i64", "S": "i64", "per_channel": "i64",
                  "chunks": "i64", "n_tasks": "i64", "blocks": "i64", "likelihood_bound": "fp32",
                  "L": "constexpr",
                  "SLOTS": "constexpr", "MODE": "constexpr", "IS_BF16": "constexpr",
                  "HAS_GZHAT": "constexpr", "NEED_GZ": "constexpr", "NEED_PARAMS": "constexpr",
                  "ON_GPU": "constexpr", "TASKS": "constexpr"}
    variants += [
        (f"entropy bottleneck forward sua fp32 L={eb_layers}", K.eb_forward_kernel, eb_fwd_sig,
         dict(L=eb_layers, SLOTS=eb_slots, MODE=3, IS_BF16=False, ON_GPU=True, BLOCK=256), 4),
        (f"entropy bottleneck backward noise bf16 L={eb_layers}", K.eb_backward_kernel,
         eb_bwd_sig, dict(L=eb_layers, SLOTS=eb_slots, MODE=0, IS_BF16=True, HAS_GZHAT=True,
                          NEED_GZ=True, NEED_PARAMS=True, ON_GPU=True, TASKS=1), 1),
    ]
    failed = False
    for name, fn, sig, const, nw in variants:
        try:
            ck = compile_variant(fn, sig, const, nw)
            unfused = compile_variant(fn, sig, const, nw, fusion=False)
        except (TypeError, AttributeError, KeyError) as exc:  # another Triton's compile API
            print(json.dumps({"unavailable": f"triton {triton.__version__}: {exc!r}"[:300]}))
            return 2
        except Exception as exc:  # noqa: BLE001 - no ptxas, unsupported arch, ...
            if "ptxas" in str(exc).lower():
                print(json.dumps({"unavailable": str(exc)[:300]}))
                return 2
            raise
        ptx = ck.asm["ptx"]
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(ck.asm["cubin"])
            f.flush()
            sass = subprocess.run([nvdisasm, f.name], capture_output=True, text=True).stdout
        rcp = ptx.count("rcp.approx.ftz.f32")
        # float32 only: the rate forward's float64 log2 and sums (libdevice) may contract and use
        # a float64 reciprocal estimate; they only order the per-sample sums, which the contract
        # lets differ across backends (docs/spec.md section 8), never a float32 value.
        res = {
            "kernel": name,
            "ptx_fma": len(re.findall(r"\bfma\.rn\.f32", ptx)),
            "ptx_fma_unfused_build": len(re.findall(r"\bfma\.rn\.f32", unfused.asm["ptx"])),
            "ptx_div_approx": ptx.count("div.full") + ptx.count("div.approx"),
            "ptx_ftz_other": ptx.count(".ftz.f32") - rcp,
            "ptx_rcp_estimate": rcp,
            "ptx_mul_rn": ptx.count("mul.rn.f32"),
            "sass_ffma": len(re.findall(r"\bFFMA\b", sass)),
        }
        res["ok"] = (res["ptx_fma"] == res["ptx_fma_unfused_build"] and res["ptx_div_approx"] == 0
                     and res["ptx_ftz_other"] == 0)
        failed |= not res["ok"]
        print(json.dumps(res))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
