"""The one device resolver: config and CLI device names -> torch.device."""
import torch


def resolve_device(name):
    """'auto' -> cuda when available, else cpu; a CUDA device on a machine without one is a ValueError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} but this machine has no CUDA GPU; use cpu or auto")
    return device
