"""Kernels of backend-sgl: Triton for CUDA, and plain torch references with the same signatures.

The torch references define what each kernel computes; tests compare the two, and the
references also let the model code run on a CPU for tests without a GPU.
"""
