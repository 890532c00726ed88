"""Models: loading (real GGUF default, any HF dir, tiny random), tokenisation, reward heads."""
