"""What to do about an op a program cannot hold: the nearest supported rewrite, named in the error,
and the one op that is dropped instead, a softmax or log-softmax at the very end.

A final softmax (or log-softmax) is monotone per row, so it leaves the argmax, and with it the
benchmark's top-1 agreement and accuracy, unchanged; a program outputs the logits before it.
Anywhere else it changes what the following layers compute and is refused.
"""

from __future__ import annotations

from pibench.mpc.program import Program

# The note a program carries when its final softmax was dropped (`dropped_final` reads it back).
FINAL_NOTE = "dropped the final {kind} at layer {layer!r}: it leaves the argmax unchanged, so the program outputs " \
             "the logits before it"

# Op name (lower case, as torch or ONNX spells it) -> the nearest rewrite with supported ops.
_ACTIVATION = "replace it with nn.ReLU (or ReLU6) and fine-tune; ReLU-family activations are what MPC computes"
REWRITES = {
    **{name: _ACTIVATION for name in ("gelu", "silu", "swish", "mish", "elu", "selu", "celu", "leakyrelu",
                                       "leaky_relu", "prelu", "hardswish", "hardsigmoid", "sigmoid", "tanh",
                                       "softplus")},
    "softmax": "only a softmax at the very end can be dropped (the argmax is unchanged); inside the model, remove "
               "it or replace it with a ReLU",
    "log_softmax": "only a log-softmax at the very end can be dropped (the argmax is unchanged); inside the model, "
                   "remove it",
    "logsoftmax": "only a log-softmax at the very end can be dropped (the argmax is unchanged); inside the model, "
                  "remove it",
    "layernorm": "use BatchNorm2d (folded into the conv before it) or BatchNorm1d",
    "layer_norm": "use BatchNorm2d (folded into the conv before it) or BatchNorm1d",
    "groupnorm": "use BatchNorm2d (folded into the conv before it)",
    "group_norm": "use BatchNorm2d (folded into the conv before it)",
    "instancenorm2d": "use BatchNorm2d (folded into the conv before it)",
    "adaptivemaxpool2d": "use nn.MaxPool2d with a fixed kernel, or nn.AdaptiveAvgPool2d",
    "adaptive_max_pool2d": "use nn.MaxPool2d with a fixed kernel, or nn.AdaptiveAvgPool2d",
    "globalmaxpool": "use MaxPool with the feature map's size as kernel, or GlobalAveragePool",
    "mul": "a product of two activations needs a secure product pibench does not compile; a constant scale "
           "belongs in the conv or BatchNorm before it",
    "matmul": "use nn.Linear (a product with weights)",
    "upsample": "not expressible with pibench's ops (conv, pooling, add, concat); remove the upsampling",
    "interpolate": "not expressible with pibench's ops (conv, pooling, add, concat); remove the upsampling",
}


def rewrite_hint(op: str) -> str:
    """The nearest supported rewrite of an op, or a pointer to the supported list."""
    return REWRITES.get(op.lower().replace("nn.", ""), "rewrite it with the supported ops")


def final_note(program: Program) -> str | None:
    """The program's note that its final softmax / log-softmax was dropped, if it was."""
    return next((note for note in program.notes if note.startswith("dropped the final ")), None)


def dropped_final(program: Program) -> str | None:
    """"softmax" or "log_softmax" when the program's final one was dropped, else None."""
    note = final_note(program)
    return note.split()[3] if note else None
