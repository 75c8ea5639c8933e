"""Layers, kernels and the loss that the backbone and the mixers are built from."""
