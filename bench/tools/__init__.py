"""Diagnostic scripts: what the harness costs (speed), bf16 against fp32 (precision), every timm family (families),
speed regressions (regress), budget B against 2B (stability), the GPU check (gpu_check.sh).
"""
