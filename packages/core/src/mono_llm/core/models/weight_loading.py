"""Copying a checkpoint tensor into the parameter it names, with the checks every model's
`load_weights` makes: a tensor that matches no parameter, or one of another shape, stops the
load with the tensor's name instead of leaving a layer silently random or half-copied."""

from __future__ import annotations

import torch
from torch import nn

from mono_llm.core.errors import UnsupportedModelError


def checkpoint_param(
    params: dict[str, nn.Parameter], target: str, source: str | None = None
) -> nn.Parameter:
    """The parameter `target` of `params`; `source` is the checkpoint name the error cites
    when the model renamed the tensor (fused q/k/v, for instance)."""
    param = params.get(target)
    if param is None:
        name = target if source is None else source
        raise UnsupportedModelError(f"checkpoint tensor {name} matches no model parameter")
    return param


def copy_checkpoint_tensor(param: nn.Parameter, name: str, tensor: torch.Tensor) -> None:
    """Copy `tensor` (any device, any dtype: converted while copied) into `param`."""
    if param.shape != tensor.shape:
        raise UnsupportedModelError(
            f"checkpoint tensor {name} has shape {tuple(tensor.shape)}, the model "
            f"expects {tuple(param.shape)}"
        )
    param.data.copy_(tensor)
