"""Compile a (masked) PyTorch model into a flat MPC program with torch.fx.

The program says *what* to compute: a list of ops in execution order, each reading
earlier ops' outputs. How to compute it securely is a backend's job
(`pibench.mpc.backend`), so another MPC framework can run the same program.

Compilation is where secure-inference cost is decided:
- BatchNorm right after a conv (the conv's only user) is folded into the conv; any
  other BatchNorm (pre-activation BN on a residual sum) becomes a per-channel affine op.
- A MaskedReLU with an all-false mask is dropped, an all-true one is a full ReLU,
  a partial one ReLUs only the kept positions (the op carries their flat indices),
  so communication is proportional to kept ReLUs.
- Identity and eval-mode Dropout disappear; max pooling is kept and its secure
  comparisons are counted.
Anything else fails here, naming the op and the layer, not halfway through a run.

Weights are private: `Program.public()` strips them, which is what the client runs.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import operator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from pibench.relu import MaskedReLU

INPUT = -1  # value id of the program input in `Op.inputs`


class CompileError(ValueError):
    """The model uses an op the MPC compiler does not support (message names op and layer)."""


@dataclass
class Op:
    """One MPC operation; `inputs` are indices of earlier ops (INPUT for the program input).

    `attrs` are public (strides, kept-ReLU indices, ...); `weights` are private tensors,
    None in a public program. `shape` is the per-sample output shape.
    """

    kind: str  # conv, linear, affine, relu, add, flatten, avgpool, maxpool
    layer: str  # source module name (or fx node name for functions)
    inputs: tuple[int, ...]
    shape: tuple[int, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, torch.Tensor | None] = field(default_factory=dict)
    relus: int = 0  # kept ReLUs per sample
    macs: int = 0  # multiply-accumulates per sample
    comparisons: int = 0  # secure comparisons per sample (max pooling)


@dataclass
class Program:
    """A compiled model: ops in order, the input shape, and what compilation folded away."""

    ops: list[Op]
    input_shape: tuple[int, ...]
    notes: list[str] = field(default_factory=list)  # e.g. "folded bn1 into conv1"

    @property
    def relus(self) -> int:
        return sum(op.relus for op in self.ops)

    @property
    def macs(self) -> int:
        return sum(op.macs for op in self.ops)

    @property
    def comparisons(self) -> int:
        return sum(op.comparisons for op in self.ops)

    @property
    def has_weights(self) -> bool:
        return all(w is not None for op in self.ops for w in op.weights.values())

    def public(self) -> "Program":
        """The same program without weight values (shapes kept): what the client may hold."""
        ops = [replace(op, weights={k: None for k in op.weights}) for op in self.ops]
        return Program(ops, self.input_shape, list(self.notes))

    def fingerprint(self) -> str:
        """Digest of everything that fixes the protocol (not weight values); parties compare it."""
        h = hashlib.sha256(json.dumps(list(self.input_shape)).encode())
        for op in self.ops:
            public = {k: v for k, v in op.attrs.items() if not isinstance(v, torch.Tensor)}
            h.update(json.dumps([op.kind, list(op.inputs), list(op.shape), public], sort_keys=True).encode())
            for v in op.attrs.values():
                if isinstance(v, torch.Tensor):
                    h.update(v.numpy().tobytes())
        return h.hexdigest()


class _Tracer(torch.fx.Tracer):
    """Keeps MaskedReLU as one node: its forward branches on the mask."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, MaskedReLU) or super().is_leaf_module(m, qualname)


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Conv weight and bias with an eval-mode BatchNorm folded in."""
    scale, shift = _bn_affine(bn)
    weight = conv.weight.detach() * scale.view(-1, 1, 1, 1)
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros(conv.out_channels)
    return weight, bias * scale + shift


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as y = x * scale + shift per channel."""
    if bn.running_mean is None or bn.running_var is None:
        raise CompileError(f"BatchNorm layer {bn!r} has no running statistics; MPC needs eval-mode BN")
    gamma = bn.weight.detach() if bn.weight is not None else torch.ones_like(bn.running_mean)
    beta = bn.bias.detach() if bn.bias is not None else torch.zeros_like(bn.running_mean)
    scale = gamma / torch.sqrt(bn.running_var + bn.eps)
    return scale, beta - bn.running_mean * scale


class _Compiler:
    def __init__(self, model: nn.Module, input_shape: tuple[int, ...]) -> None:
        self.model = model
        self.modules = dict(model.named_modules())
        self.input_shape = tuple(input_shape)
        self.ops: list[Op] = []
        self.notes: list[str] = []
        self.value: dict[torch.fx.Node, int] = {}  # fx node -> op index (or INPUT)
        self.folded: set[torch.fx.Node] = set()  # BN nodes already folded into their conv

    def compile(self) -> Program:
        graph_module = torch.fx.GraphModule(self.model, _Tracer().trace(self.model))
        ShapeProp(graph_module).propagate(torch.zeros(1, *self.input_shape))
        for node in graph_module.graph.nodes:
            self._node(node)
        return Program(self.ops, self.input_shape, self.notes)

    # -- helpers -----------------------------------------------------------------------
    def _emit(self, node: torch.fx.Node, kind: str, layer: str, inputs: list[torch.fx.Node], **kw: Any) -> None:
        shape = self._shape(node)
        weights = kw.pop("weights", {})
        attrs = kw.pop("attrs", {})
        attrs["weight_shapes"] = {k: list(v.shape) for k, v in weights.items()}
        op = Op(kind, layer, tuple(self.value[i] for i in inputs), shape, attrs, weights, **kw)
        self.ops.append(op)
        self.value[node] = len(self.ops) - 1

    def _alias(self, node: torch.fx.Node, source: torch.fx.Node) -> None:
        self.value[node] = self.value[source]

    def _unsupported(self, node: torch.fx.Node, what: str) -> CompileError:
        return CompileError(f"unsupported op {what} at layer {node.target if node.op == 'call_module' else node.name!r} "
                            f"({node.format_node()}); pibench's MPC compiler supports conv, linear, batchnorm, "
                            "(masked) relu, add, flatten, avg/adaptive-avg/max pooling, dropout and identity")

    @staticmethod
    def _shape(node: torch.fx.Node) -> tuple[int, ...]:
        """Per-sample shape of the node's value (from shape propagation)."""
        return tuple(node.meta["tensor_meta"].shape[1:])

    # -- nodes ---------------------------------------------------------------------------
    def _node(self, node: torch.fx.Node) -> None:
        if node.op == "placeholder":
            self.value[node] = INPUT
        elif node.op == "output":
            result = node.args[0]
            if not isinstance(result, torch.fx.Node):
                raise self._unsupported(node, "output that is not a single tensor")
            if self.value[result] != len(self.ops) - 1:
                raise CompileError("the model's output is not its last op; pibench programs end with the logits")
        elif node.op == "call_module":
            self._module(node, self.modules[node.target])
        elif node.op == "call_function":
            self._function(node)
        elif node.op == "call_method":
            self._method(node)
        else:
            raise self._unsupported(node, f"{node.op} {node.target}")

    def _module(self, node: torch.fx.Node, m: nn.Module) -> None:
        name = str(node.target)
        (x,) = node.args if len(node.args) == 1 else (None,)
        if x is None or node.kwargs:
            raise self._unsupported(node, f"{type(m).__name__} with {len(node.args)} inputs")
        if isinstance(m, (nn.Identity, nn.Dropout)):
            self._alias(node, x)
        elif isinstance(m, nn.Conv2d):
            self._conv(node, name, m, x)
        elif isinstance(m, nn.BatchNorm2d):
            if node in self.folded:
                self._alias(node, x)
            else:
                scale, shift = _bn_affine(m)
                self._emit(node, "affine", name, [x], weights={"scale": scale, "shift": shift})
        elif isinstance(m, MaskedReLU):
            self._masked_relu(node, name, m, x)
        elif isinstance(m, nn.ReLU):
            self._relu(node, name, x)
        elif isinstance(m, nn.Linear):
            w = m.weight.detach()
            b = m.bias.detach() if m.bias is not None else torch.zeros(m.out_features)
            self._emit(node, "linear", name, [x], weights={"weight_t": w.t().contiguous(), "bias": b},
                       macs=m.in_features * m.out_features)
        elif isinstance(m, nn.Flatten):
            self._flatten(node, name, x, m.start_dim, m.end_dim)
        elif isinstance(m, nn.AvgPool2d):
            if m.ceil_mode or (not m.count_include_pad and m.padding not in (0, (0, 0))) or m.divisor_override:
                raise self._unsupported(node, "AvgPool2d with ceil_mode/count_include_pad=False/divisor_override")
            k = _pair(m.kernel_size)
            self._emit(node, "avgpool", name, [x],
                       attrs={"kernel": k, "stride": _pair(m.stride or m.kernel_size), "padding": _pair(m.padding)})
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            self._adaptive_avg(node, name, x)
        elif isinstance(m, nn.MaxPool2d):
            if m.ceil_mode or m.return_indices or _pair(m.dilation) != (1, 1):
                raise self._unsupported(node, "MaxPool2d with ceil_mode/return_indices/dilation")
            k = _pair(m.kernel_size)
            out = math.prod(self._shape(node))
            self._emit(node, "maxpool", name, [x], comparisons=out * (k[0] * k[1] - 1),
                       attrs={"kernel": k, "stride": _pair(m.stride or m.kernel_size), "padding": _pair(m.padding)})
        else:
            raise self._unsupported(node, type(m).__name__)

    def _conv(self, node: torch.fx.Node, name: str, m: nn.Conv2d, x: torch.fx.Node) -> None:
        if m.padding_mode != "zeros" or isinstance(m.padding, str):
            raise self._unsupported(node, f"Conv2d with padding={m.padding!r}, padding_mode={m.padding_mode!r}")
        users = list(node.users)
        bn = self.modules.get(str(users[0].target)) if len(users) == 1 and users[0].op == "call_module" else None
        if isinstance(bn, nn.BatchNorm2d):
            weight, bias = _fold_bn(m, bn)
            self.folded.add(users[0])
            self.notes.append(f"folded {users[0].target} into {name}")
        else:
            weight = m.weight.detach()
            bias = m.bias.detach() if m.bias is not None else torch.zeros(m.out_channels)
        out = math.prod(self._shape(node))
        k = m.kernel_size
        self._emit(node, "conv", name, [x], weights={"weight": weight, "bias": bias},
                   macs=out * (m.in_channels // m.groups) * k[0] * k[1],
                   attrs={"stride": _pair(m.stride), "padding": _pair(m.padding),
                          "dilation": _pair(m.dilation), "groups": m.groups})

    def _masked_relu(self, node: torch.fx.Node, name: str, m: MaskedReLU, x: torch.fx.Node) -> None:
        if m.mask is None:
            self._relu(node, name, x)
            return
        kept = int(m.mask.sum())
        if kept == 0:
            self.notes.append(f"dropped {name} (mask all false)")
            self._alias(node, x)
        elif kept == m.mask.numel():
            self._relu(node, name, x)
        else:
            index = m.mask.flatten().nonzero().flatten().to(torch.long).cpu()
            self._emit(node, "relu", name, [x], relus=kept, attrs={"index": index})

    def _relu(self, node: torch.fx.Node, name: str, x: torch.fx.Node) -> None:
        self._emit(node, "relu", name, [x], relus=math.prod(self._shape(node)))

    def _flatten(self, node: torch.fx.Node, name: str, x: torch.fx.Node, start: int, end: int) -> None:
        ndim = len(node.args[0].meta["tensor_meta"].shape) if isinstance(node.args[0], torch.fx.Node) else 0
        if start != 1 or end not in (-1, ndim - 1):
            raise self._unsupported(node, f"flatten(start_dim={start}, end_dim={end}) (only flatten from dim 1)")
        self._emit(node, "flatten", name, [x])

    def _flatten_call(self, node: torch.fx.Node) -> None:
        """torch.flatten(x, ...) or x.flatten(...), dims given by position or keyword."""
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
        self._flatten(node, node.name, node.args[0], start, end)

    def _add(self, node: torch.fx.Node) -> None:
        """a + b of two tensors (operator, torch.add or Tensor.add); a scaling `alpha` has no op here."""
        if len(node.args) != 2 or node.kwargs:
            raise self._unsupported(node, f"add with {len(node.args)} arguments and keywords {sorted(node.kwargs)}")
        a, b = node.args
        if not (isinstance(a, torch.fx.Node) and isinstance(b, torch.fx.Node)):
            raise self._unsupported(node, "add of a tensor and a constant")
        self._emit(node, "add", node.name, [a, b])

    def _adaptive_avg(self, node: torch.fx.Node, name: str, x: torch.fx.Node) -> None:
        _, h, w = self._shape(x)
        _, oh, ow = self._shape(node)
        if h % oh or w % ow:
            raise self._unsupported(node, f"AdaptiveAvgPool2d from {h}x{w} to {oh}x{ow} (sizes must divide)")
        k = (h // oh, w // ow)
        self._emit(node, "avgpool", name, [x], attrs={"kernel": k, "stride": k, "padding": (0, 0)})

    def _function(self, node: torch.fx.Node) -> None:
        fn = node.target
        if fn in (operator.add, torch.add):
            self._add(node)
        elif fn is torch.flatten:
            self._flatten_call(node)
        elif fn in (torch.relu, nn.functional.relu):
            self._relu(node, node.name, node.args[0])
        else:
            raise self._unsupported(node, f"function {getattr(fn, '__name__', fn)}")

    def _method(self, node: torch.fx.Node) -> None:
        if node.target == "flatten":
            self._flatten_call(node)
        elif node.target == "relu":
            self._relu(node, node.name, node.args[0])
        elif node.target == "add":
            self._add(node)
        else:
            raise self._unsupported(node, f"method .{node.target}()")


def compile_model(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> Program:
    """Compile an eval-mode copy of `model` (input_shape defaults to model.pibench_args)."""
    if input_shape is None:
        args = getattr(model, "pibench_args", None)
        if not args:
            raise ValueError("compile_model needs input_shape for a model not built by pibench.models.create_model")
        input_shape = (args["in_chans"], args["input_size"], args["input_size"])
    model = copy.deepcopy(model).eval()
    try:
        return _Compiler(model, input_shape).compile()
    except torch.fx.proxy.TraceError as e:
        raise CompileError(f"cannot trace {type(model).__name__} with torch.fx: {e}") from e
