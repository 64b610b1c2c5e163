"""2:4 inference: a pruned model's linears holding semi-structured weights (issue 21).

As PyTorch's semi-structured tutorial does it, each `nn.Linear` keeps its module and gets
`nn.Parameter(to_sparse_semi_structured(weight))`; the model's own `F.linear` calls then run
cuSPARSELt or CUTLASS. Only on CUDA, in fp16 or bf16. A model pruned with `--pattern 2:4` is
saved with its zeros stored (a plain Hugging Face directory); this conversion after loading is
what runs it as 2:4, e.g. `python -m dpruner perplexity --semi-structured cuSPARSELt`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from dpruner.errors import DprunerError
from dpruner.models import prunable_weights

# The kernel name -> the tensor subclass that calls it.
KERNELS = {
    "cuSPARSELt": "SparseSemiStructuredTensorCUSPARSELT",
    "CUTLASS": "SparseSemiStructuredTensorCUTLASS",
}
DTYPES = ("float16", "bfloat16")


def check_target(device: str, dtype: str, kernel: str) -> None:
    """One clear error before any model loads, where the kernels cannot run."""
    if kernel not in KERNELS:
        raise DprunerError(f"unknown 2:4 kernel '{kernel}'; choose one of {', '.join(KERNELS)}")
    if not device.startswith("cuda"):
        raise DprunerError(f"2:4 inference ({kernel}) needs a CUDA device, got --device {device}")
    if dtype not in DTYPES:
        raise DprunerError(f"2:4 inference needs --dtype float16 or bfloat16, got {dtype}")


def kernel_converter(kernel: str) -> Callable[[torch.Tensor], torch.Tensor]:
    return getattr(torch.sparse, KERNELS[kernel]).from_dense


def is_two_four(weight: torch.Tensor) -> bool:
    """At least 2 zeros in every 4 consecutive inputs of every row."""
    d_out, d_in = weight.shape
    if d_in % 4:
        return False
    return bool(((weight.reshape(d_out, d_in // 4, 4) == 0).sum(-1) >= 2).all())


def convert_linear(module: nn.Linear, convert: Callable[[torch.Tensor], torch.Tensor]) -> None:
    module.weight = nn.Parameter(convert(module.weight.detach()), requires_grad=False)


def to_semi_structured(
    model: nn.Module,
    kernel: str = "cuSPARSELt",
    convert: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> list[str]:
    """Give every prunable linear its semi-structured weight; returns their weight names.

    Every weight is checked first, so a model that is not 2:4 is refused unchanged.
    """
    weights = prunable_weights(model)
    for name, module in weights.items():
        if not isinstance(module, nn.Linear):
            raise DprunerError(f"{name}: 2:4 kernels need nn.Linear, got {type(module).__name__}")
        if not is_two_four(module.weight):
            raise DprunerError(
                f"{name} is not 2:4 sparse (2 zeros in every 4 inputs): prune with --pattern 2:4"
            )
    convert = convert or kernel_converter(kernel)
    for module in weights.values():
        convert_linear(module, convert)
    return list(weights)
