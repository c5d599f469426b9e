"""minisgl backend-mlx: mlx-lm models on Apple silicon and Linux CPU."""
