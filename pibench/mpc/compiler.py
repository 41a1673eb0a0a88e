"""Compile a (masked) PyTorch model into a `Program` with torch.fx.

Compilation is where secure-inference cost is decided (this module reads torch's graph; the
ops, and what each costs, are made by `pibench.mpc.builder`, which the ONNX importer uses too):
- BatchNorm right after a conv (the conv's only user) is folded into the conv; any
  other BatchNorm (pre-activation BN on a residual sum, a stand-alone BatchNorm1d)
  becomes a per-channel affine op.
- A ReLU with an all-false mask is dropped, an all-true one is a full ReLU, a partial
  one ReLUs only the kept positions (the op carries their flat indices), so
  communication is proportional to kept ReLUs. Masks come from a `MaskedReLU`, from
  SNL-style per-position `alphas` (kept where alpha > 0.01, SNL's threshold), or from
  the `masks` argument by layer name.
- ReLU6 / hardtanh(lo, hi) is lo + relu(x - lo) - relu(x - hi): one relu op with a
  `clamp` attribute that costs *two* ReLUs per position, counted as two in `relus`.
- Identity, eval-mode dropout and reshapes that keep the shape disappear; reshapes
  that keep the batch dimension are local ops; max pooling is kept and its secure
  comparisons are counted.
- A softmax or log-softmax at the very end is dropped with a note (the argmax is unchanged;
  `pibench.mpc.rewrites`).
Anything else fails here, naming the op, the layer and the nearest supported rewrite, not
halfway through a run.
"""

from __future__ import annotations

import copy
import math
import operator
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from pibench.errors import UsageError
from pibench.mpc.builder import ProgramBuilder
from pibench.mpc.fx import bn_affine, fold_bn, has_alphas, trace
from pibench.mpc.program import CompileError, Program
from pibench.mpc.rewrites import rewrite_hint
from pibench.relu import MaskedReLU

SNL_THRESHOLD = 1e-2  # SNL's official code keeps a ReLU where its alpha > 0.01 (`--threshold`)
# Shape propagation runs on this many inputs, so an op that mixes the batch dimension
# (a reshape of the whole batch, a concat along dim 0) shows up and is refused.
_TRACE_BATCH = 2
SUPPORTED = ("conv, linear, batchnorm (folded or stand-alone), (masked) relu, relu6/hardtanh/clamp, add, "
             "concat along channels, flatten/view/reshape keeping the batch, mean over (H, W), "
             "avg/adaptive-avg/max pooling (max with ceil_mode), eval-mode dropout and identity")


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _arg(node: torch.fx.Node, index: int, name: str, default: Any = None) -> Any:
    """A call's argument by position or keyword."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


_SHAPE_METHODS = {"size", "dim"}
_SHAPE_FUNCTIONS = {getattr, operator.getitem, operator.mul, operator.floordiv, operator.add, operator.sub}
_RELU_FUNCTIONS = {torch.relu, torch.relu_, F.relu, F.relu_}
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_CAT_FUNCTIONS = {torch.cat, torch.concat, torch.concatenate}
_DROPOUT_FUNCTIONS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout}
_SOFTMAX = {nn.Softmax: "softmax", nn.LogSoftmax: "log_softmax", F.softmax: "softmax", torch.softmax: "softmax",
            F.log_softmax: "log_softmax", torch.log_softmax: "log_softmax", "softmax": "softmax",
            "log_softmax": "log_softmax"}  # module class, function or method name -> kind


class _Compiler:
    """Walks the fx graph and reads torch's modules and call arguments; `build` makes the ops."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...], masks: dict[str, torch.Tensor]) -> None:
        self.model = model
        self.modules = dict(model.named_modules())
        self.input_shape = tuple(input_shape)
        self.build = ProgramBuilder(masks, CompileError)
        self.output: torch.fx.Node | None = None
        self.folded: set[torch.fx.Node] = set()  # BN nodes already folded into their conv
        self.calls: dict[str, int] = {}  # module path -> times called so far (a ReLU module used twice)

    def compile(self) -> Program:
        graph_module = trace(self.model)
        ShapeProp(graph_module).propagate(torch.zeros(_TRACE_BATCH, *self.input_shape))
        for node in graph_module.graph.nodes:
            self._node(node)
        return self.build.program(self.input_shape, self.output)

    # -- helpers -----------------------------------------------------------------------
    def _emit(self, node: torch.fx.Node, kind: str, layer: str, inputs: list[torch.fx.Node], **kw: Any) -> None:
        self.build.emit(node, kind, layer, inputs, self._shape(node), **kw)

    def _alias(self, node: torch.fx.Node, source: torch.fx.Node) -> None:
        self.build.alias(node, source)

    def _unsupported(self, node: torch.fx.Node, what: str, op: str | None = None) -> CompileError:
        """One line: the op, its layer, the nearest supported rewrite (by `op`'s name), the supported list."""
        layer = node.target if node.op == "call_module" else node.name
        return CompileError(f"unsupported op {what} at layer {layer!r}: {rewrite_hint(op or what.split()[0])}; "
                            f"pibench's MPC compiler supports {SUPPORTED}")

    def _softmax(self, node: torch.fx.Node, kind: str, x: torch.fx.Node, dim: Any) -> None:
        """Drop a softmax / log-softmax over the classes that is the model's output (the argmax stays)."""
        final = list(node.users) and all(user.op == "output" for user in node.users)
        if not final or len(self._shape(node)) != 1 or dim not in (1, -1):
            raise self._unsupported(node, f"{kind}" + ("" if final else " before the model's output"), kind)
        self.build.drop_final(node, str(node.target if node.op == "call_module" else node.name), x, kind)

    @staticmethod
    def _is_tensor(node: Any) -> bool:
        return isinstance(node, torch.fx.Node) and isinstance(node.meta.get("tensor_meta"), TensorMetadata)

    def _shape(self, node: torch.fx.Node) -> tuple[int, ...]:
        """Per-sample shape of the node's value (from shape propagation)."""
        return tuple(node.meta["tensor_meta"].shape[1:])

    def _layer(self, node: torch.fx.Node) -> str:
        """The op's layer name: the module path (with @k for its k-th reuse) or the fx node name."""
        if node.op != "call_module":
            return node.name
        name = str(node.target)
        k = self.calls.get(name, 0)
        self.calls[name] = k + 1
        return name if k == 0 else f"{name}@{k}"

    # -- nodes ---------------------------------------------------------------------------
    def _node(self, node: torch.fx.Node) -> None:
        if node.op == "placeholder":
            self.build.input(node)
            return
        if node.op == "get_attr":
            raise self._unsupported(node, f"parameter {node.target} used outside its module")
        if node.op == "output":
            result = node.args[0]
            if not isinstance(result, torch.fx.Node):
                raise self._unsupported(node, "output that is not a single tensor")
            self.output = result
            return
        if not self._is_tensor(node):
            if (node.op == "call_method" and node.target in _SHAPE_METHODS) or \
                    (node.op == "call_function" and node.target in _SHAPE_FUNCTIONS):
                return  # shape arithmetic (x.size(0), x.shape[0] * 2): public, feeds reshapes only
            raise self._unsupported(node, f"{node.op} {getattr(node.target, '__name__', node.target)} "
                                          "that does not return one tensor")
        if node.meta["tensor_meta"].shape[:1] != (_TRACE_BATCH,):
            raise self._unsupported(node, f"{node.op} {getattr(node.target, '__name__', node.target)} "
                                          "that changes the batch dimension")
        if node.op == "call_module":
            self._module(node, self.modules[node.target])
        elif node.op == "call_function":
            self._function(node)
        elif node.op == "call_method":
            self._method(node)
        else:
            raise self._unsupported(node, f"{node.op} {node.target}")

    def _module(self, node: torch.fx.Node, m: nn.Module) -> None:
        name = self._layer(node)
        (x,) = node.args if len(node.args) == 1 else (None,)
        if x is None or node.kwargs:
            raise self._unsupported(node, f"{type(m).__name__} with {len(node.args)} inputs")
        if isinstance(m, (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)):
            self._alias(node, x)  # the model is in eval mode: dropout is the identity
        elif isinstance(m, nn.Conv2d):
            self._conv(node, name, m, x)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if node in self.folded:
                self._alias(node, x)
            else:
                scale, shift = bn_affine(m)
                self._emit(node, "affine", name, [x], weights={"scale": scale, "shift": shift})
        elif isinstance(m, MaskedReLU):
            self._relu(node, name, x, m.mask)
        elif has_alphas(m):
            self._relu(node, name, x, self._alpha_mask(name, m))
        elif isinstance(m, nn.ReLU):
            self._relu(node, name, x)
        elif isinstance(m, nn.Hardtanh):  # ReLU6 is Hardtanh(0, 6)
            self._clamp(node, name, x, m.min_val, m.max_val)
        elif isinstance(m, nn.Linear):
            b = m.bias.detach() if m.bias is not None else torch.zeros(m.out_features)
            self.build.linear(node, name, x, self._shape(node), m.weight.detach().t().contiguous(), b)
        elif isinstance(m, (nn.Flatten, nn.Unflatten)):
            self._reshape(node, name, x)
        elif isinstance(m, nn.AvgPool2d):
            self._avgpool(node, name, x, m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad,
                          m.divisor_override)
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            self._adaptive_avg(node, name, x)
        elif isinstance(m, nn.MaxPool2d):
            self._maxpool(node, name, x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode,
                          m.return_indices)
        elif type(m) in _SOFTMAX:
            self._softmax(node, _SOFTMAX[type(m)], x, m.dim)
        else:
            raise self._unsupported(node, type(m).__name__)

    def _function(self, node: torch.fx.Node) -> None:
        fn = node.target
        x = node.args[0] if node.args else None
        if fn in _ADD_FUNCTIONS:
            self._add(node)
        elif fn in _RELU_FUNCTIONS:
            self._relu(node, node.name, x)
        elif fn is F.relu6:
            self._clamp(node, node.name, x, 0.0, 6.0)
        elif fn is F.hardtanh:
            self._clamp(node, node.name, x, _arg(node, 1, "min_val", -1.0), _arg(node, 2, "max_val", 1.0))
        elif fn is torch.clamp:
            self._clamp(node, node.name, x, _arg(node, 1, "min"), _arg(node, 2, "max"))
        elif fn in _CAT_FUNCTIONS:
            self._concat(node, x, _arg(node, 1, "dim", 0))
        elif fn in (torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze):
            self._reshape(node, node.name, x)
        elif fn is torch.mean:
            self._mean(node, x)
        elif fn is F.adaptive_avg_pool2d:
            self._adaptive_avg(node, node.name, x)
        elif fn is F.avg_pool2d:
            kernel = _arg(node, 1, "kernel_size")
            self._avgpool(node, node.name, x, kernel, _arg(node, 2, "stride") or kernel, _arg(node, 3, "padding", 0),
                          _arg(node, 4, "ceil_mode", False), _arg(node, 5, "count_include_pad", True),
                          _arg(node, 6, "divisor_override"))
        elif fn is F.max_pool2d:
            kernel = _arg(node, 1, "kernel_size")
            self._maxpool(node, node.name, x, kernel, _arg(node, 2, "stride") or kernel, _arg(node, 3, "padding", 0),
                          _arg(node, 4, "dilation", 1), _arg(node, 5, "ceil_mode", False),
                          _arg(node, 6, "return_indices", False))
        elif fn in _DROPOUT_FUNCTIONS:
            if _arg(node, 2, "training", True):
                raise self._unsupported(node, f"{fn.__name__} with training=True (random at inference; pass "
                                              "training=self.training)")
            self._alias(node, x)
        elif fn in _SOFTMAX:
            self._softmax(node, _SOFTMAX[fn], x, _arg(node, 1, "dim"))
        else:
            name = getattr(fn, "__name__", str(fn))
            raise self._unsupported(node, f"function {name}", name)

    def _method(self, node: torch.fx.Node) -> None:
        method, x = node.target, node.args[0]
        if method in ("relu", "relu_"):
            self._relu(node, node.name, x)
        elif method in ("clamp", "clamp_", "clip"):
            self._clamp(node, node.name, x, _arg(node, 1, "min"), _arg(node, 2, "max"))
        elif method in ("add", "add_"):
            self._add(node)
        elif method in ("flatten", "view", "reshape", "squeeze", "unsqueeze", "contiguous"):
            self._reshape(node, node.name, x)
        elif method == "mean":
            self._mean(node, x)
        elif method in _SOFTMAX:
            self._softmax(node, _SOFTMAX[method], x, _arg(node, 1, "dim"))
        else:
            raise self._unsupported(node, f"method .{method}()", method)

    # -- ops ---------------------------------------------------------------------------------
    def _conv(self, node: torch.fx.Node, name: str, m: nn.Conv2d, x: torch.fx.Node) -> None:
        if m.padding_mode != "zeros" or isinstance(m.padding, str):
            raise self._unsupported(node, f"Conv2d with padding={m.padding!r}, padding_mode={m.padding_mode!r}")
        users = list(node.users)
        bn = self.modules.get(str(users[0].target)) if len(users) == 1 and users[0].op == "call_module" else None
        if isinstance(bn, nn.BatchNorm2d):
            weight, bias = fold_bn(m, bn)
            self.folded.add(users[0])
            self.build.notes.append(f"folded {users[0].target} into {name}")
        else:
            weight = m.weight.detach()
            bias = m.bias.detach() if m.bias is not None else torch.zeros(m.out_channels)
        self.build.conv(node, name, x, self._shape(node), weight, bias,
                        {"stride": _pair(m.stride), "padding": _pair(m.padding), "dilation": _pair(m.dilation),
                         "groups": m.groups})

    def _alpha_mask(self, name: str, m: nn.Module) -> torch.Tensor:
        """SNL's binarization: a position keeps its ReLU where alpha > 0.01."""
        alphas = m.alphas.detach()
        if not bool(((alphas == 0) | (alphas == 1)).all()):
            self.build.notes.append(f"{name}: alphas are not binarized; compiled as SNL's code binarizes them "
                                    f"(ReLU where alpha > {SNL_THRESHOLD})")
        return (alphas > SNL_THRESHOLD)[0]

    def _relu(self, node: torch.fx.Node, name: str, x: torch.fx.Node, mask: torch.Tensor | None = None,
              clamp: tuple[float, float] | None = None) -> None:
        self.build.relu(node, name, x, self._shape(node), mask, clamp)

    def _clamp(self, node: torch.fx.Node, name: str, x: torch.fx.Node, lo: Any, hi: Any) -> None:
        numbers = all(isinstance(b, (int, float)) and math.isfinite(b) for b in (lo, hi))
        if lo == 0 and hi is None:  # clamp(min=0) is a ReLU
            self._relu(node, name, x)
        elif numbers and lo < hi:
            self._relu(node, name, x, clamp=(lo, hi))
        else:
            raise self._unsupported(node, f"clamp/hardtanh with bounds ({lo}, {hi}) (finite lo < hi, or min=0 only)")

    def _add(self, node: torch.fx.Node) -> None:
        """a + b of two tensors (operator, torch.add or Tensor.add); a scaling `alpha` has no op here."""
        if len(node.args) != 2 or node.kwargs:
            raise self._unsupported(node, f"add with {len(node.args)} arguments and keywords {sorted(node.kwargs)}")
        a, b = node.args
        if not (self._is_tensor(a) and self._is_tensor(b)):
            raise self._unsupported(node, "add of a tensor and a constant")
        if self._shape(a) != self._shape(b):
            raise self._unsupported(node, f"add of shapes {self._shape(a)} and {self._shape(b)} (broadcasting)")
        self._emit(node, "add", node.name, [a, b])

    def _concat(self, node: torch.fx.Node, xs: Any, dim: int) -> None:
        ndim = len(self._shape(node)) + 1
        dim = dim + ndim if dim < 0 else dim
        if not isinstance(xs, (list, tuple)) or not all(self._is_tensor(x) for x in xs) or dim == 0:
            raise self._unsupported(node, f"cat along dim {dim} (only tensors, along a dimension after the batch)")
        self._emit(node, "concat", node.name, list(xs), attrs={"dim": dim})

    def _reshape(self, node: torch.fx.Node, name: str, x: torch.fx.Node) -> None:
        """A reshape that keeps the batch dimension (checked by shape propagation)."""
        self.build.reshape(node, name, x, self._shape(node), self._shape(x))

    def _mean(self, node: torch.fx.Node, x: torch.fx.Node) -> None:
        """x.mean((2, 3)) (global average pooling), with or without keepdim."""
        dims = _arg(node, 1, "dim")
        dims = (dims,) if isinstance(dims, int) else tuple(dims or ())
        in_shape = self._shape(x)
        if len(in_shape) != 3 or sorted(d % 4 for d in dims) != [2, 3]:
            raise self._unsupported(node, f"mean over dims {dims} of a {len(in_shape) + 1}-d tensor "
                                          "(only over (2, 3) of N, C, H, W)")
        self.build.global_avg(node, node.name, x, in_shape, flatten=not _arg(node, 2, "keepdim", False))

    def _adaptive_avg(self, node: torch.fx.Node, name: str, x: torch.fx.Node) -> None:
        _, h, w = self._shape(x)
        _, oh, ow = self._shape(node)
        if h % oh or w % ow:
            raise self._unsupported(node, f"AdaptiveAvgPool2d from {h}x{w} to {oh}x{ow} (sizes must divide)")
        k = (h // oh, w // ow)
        self.build.avgpool(node, name, x, self._shape(node), k, k, (0, 0))

    def _avgpool(self, node: torch.fx.Node, name: str, x: torch.fx.Node, kernel: Any, stride: Any, padding: Any,
                 ceil_mode: bool, count_include_pad: bool, divisor_override: Any) -> None:
        if ceil_mode or (not count_include_pad and _pair(padding) != (0, 0)) or divisor_override:
            raise self._unsupported(node, "avg pooling with ceil_mode/count_include_pad=False/divisor_override")
        self.build.avgpool(node, name, x, self._shape(node), _pair(kernel), _pair(stride or kernel), _pair(padding))

    def _maxpool(self, node: torch.fx.Node, name: str, x: torch.fx.Node, kernel: Any, stride: Any, padding: Any,
                 dilation: Any, ceil_mode: bool, return_indices: bool) -> None:
        if return_indices or _pair(dilation) != (1, 1):
            raise self._unsupported(node, "max pooling with return_indices/dilation")
        self.build.maxpool(node, name, x, self._shape(node), _pair(kernel), _pair(stride or kernel), _pair(padding),
                           bool(ceil_mode))


def compile_model(model: nn.Module, input_shape: tuple[int, ...] | None = None,
                  masks: dict[str, torch.Tensor] | None = None) -> Program:
    """Compile an eval-mode copy of `model` (input_shape defaults to model.pibench_args).

    `masks` ({ReLU layer name: boolean per-sample mask}) override the model's own masks;
    a layer name is the module path (with "@k" for a module's k-th reuse) or the fx
    node name of a functional ReLU.
    """
    if input_shape is None:
        args = getattr(model, "pibench_args", None)
        if not args:
            raise UsageError("compile_model needs input_shape for a model not built by pibench.models.create_model")
        input_shape = (args["in_chans"], args["input_size"], args["input_size"])
    model = copy.deepcopy(model).eval()
    return _Compiler(model, input_shape, masks or {}).compile()
