"""Where reduced precision stops: encoders may run under bf16 autocast; from the normalised features on,
losses, hard-negative sampling and retrieval similarity are fp32 (method.md box "Precision", 1.8).

``torch.autocast`` casts every matmul inside its region to bf16, whatever dtype the inputs have, so a
``.float()`` on the features alone does not keep a similarity matrix in fp32. :func:`fp32_region`
switches autocast off for the region (for the device type of the tensors it is given) and the code
inside casts its inputs with ``.float()``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def fp32_region(*tensors: torch.Tensor) -> Iterator[None]:
    """Autocast off for the device type of ``tensors`` (CPU when none is given) inside the block."""
    device_type = tensors[0].device.type if tensors else "cpu"
    if device_type not in ("cpu", "cuda", "xpu", "mps", "hpu"):  # meta and friends: nothing to do
        yield
        return
    with torch.autocast(device_type=device_type, enabled=False):
        yield
