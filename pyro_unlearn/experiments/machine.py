"""What a run ran on: recorded with every reproduction's and benchmark's results."""

from __future__ import annotations

import os
import platform

import pyro
import torch

import pyro_unlearn as pu

__all__ = ["cpu_model", "machine_info"]


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one, else what :mod:`platform`
    says).

    Example::

        >>> isinstance(cpu_model(), str)
        True
    """
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device | str, dtype: torch.dtype) -> dict[str, object]:
    """What a run ran on: versions, CPU, cores, torch threads, device and dtype (and the GPU on
    CUDA), plus the load average at the start: other processes on the machine skew every timing.

    Arguments:
        device: the device the run's tensors live on.
        dtype: their floating-point type.

    Returns:
        A JSON-able dict: ``torch``, ``pyro``, ``pyro_unlearn``, ``python``, ``platform``,
        ``cpu``, ``cpu_count``, ``torch_threads``, ``device``, ``dtype``, ``loadavg_start``
        (where the OS has one) and, on CUDA, ``gpu`` and ``cuda``.

    Example::

        >>> info = machine_info("cpu", torch.float64)
        >>> info["device"], info["dtype"], info["pyro_unlearn"] == pu.__version__
        ('cpu', 'float64', True)
    """
    device = torch.device(device)
    info: dict[str, object] = {
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "pyro_unlearn": pu.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
    }
    if hasattr(os, "getloadavg"):
        info["loadavg_start"] = [round(v, 2) for v in os.getloadavg()]
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info
