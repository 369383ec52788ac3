"""A Linux TUN device: opening it (device.py) and batched, offload-aware reads and writes (_io.pyx)."""
