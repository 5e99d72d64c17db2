"""Model engine: prompt, model, batching. Knows nothing about HTTP."""
