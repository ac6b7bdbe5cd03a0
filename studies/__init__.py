"""Studies of the quantization surrogates with lic_quant (docs/studies.md): mismatch.py,
gradient_bias_variance.py, rate_distortion.py; run_all.py runs them all."""
