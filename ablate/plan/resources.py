"""Will a trial fit in memory? A rough upper estimate, checked before anything is built, so that
a study with absurd sizes stops with one line instead of exhausting the machine."""

import os

from ablate.core.errors import AblateError

FLOAT = 4  # bytes: weights, gradients, Adam moments and activations are float32 (bf16 on CUDA is less)


def train_bytes(model, batch_size: int) -> int:
    """Weights, gradients and two Adam moments (16 bytes per parameter), plus activations kept for
    the backward pass: the logits, per layer a few widths of every token, and a T×T map per head
    (attention-like mixers; an overestimate for the others, which is the safe side)."""
    d, t, v, layers = model.d_model, model.context, model.vocab_size, model.n_layers
    ffn = (3 if model.ffn_type == "swiglu" else 2) * d * model.ffn_dim if model.ffn else 0
    params = v * d + layers * (4 * d * model.qkv_dim + ffn + t * (t + 1) // 2)
    per_token = 3 * v + layers * (12 * d + 4 * model.qkv_dim + 3 * model.ffn_dim * model.ffn + 2 * model.n_heads * t)
    return FLOAT * (4 * params + batch_size * t * per_token)


def available_bytes(device: str) -> tuple[int, str]:
    """What the trial's device has: the GPU's memory, else the RAM available now."""
    if device.startswith("cuda") or device == "auto":
        import torch

        if torch.cuda.is_available():
            index = int(device.split(":")[1]) if ":" in device else 0
            return torch.cuda.get_device_properties(index).total_memory, "GPU memory"
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024, "available RAM"
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "RAM"


class DoesNotFit(AblateError):
    """A trial's sizes would not fit in the memory here."""


def check_fits(model, batch_size: int, device: str) -> None:
    need = train_bytes(model, batch_size)
    have, what = available_bytes(device)
    if need > have:
        sizes = ", ".join(f"{k} {getattr(model, k):,}" for k in ("vocab_size", "context", "d_model", "n_layers"))
        raise DoesNotFit(
            f"model sizes ({sizes}) with train.batch_size {batch_size:,} need about {need / 2**30:,.1f} GiB "
            f"to train (estimated: parameters, optimizer state, activations), more than the "
            f"{have / 2**30:,.1f} GiB of {what} here"
        )
