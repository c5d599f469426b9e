"""minisgl backend-hf: transformers causal LMs with attention on the paged KV pool."""
