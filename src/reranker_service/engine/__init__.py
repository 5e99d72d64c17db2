"""Model engine: prompt, model, batching. Imports nothing from the HTTP layer or observability
(import-linter checks it); they read its data types instead."""
