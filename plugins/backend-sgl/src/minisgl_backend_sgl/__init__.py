"""minisgl backend-sgl: the fast CUDA path."""
