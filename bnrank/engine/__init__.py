"""The engine: pure PyTorch + MONAI. Nothing here imports a web framework, a database or a task queue."""
