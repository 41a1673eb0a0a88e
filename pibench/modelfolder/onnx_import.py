"""Translate an ONNX file straight into a pibench MPC program (no torch module in between).

ONNX graphs of CNNs are already the flat op lists a program is, so each supported
node becomes the op the torch.fx compiler makes for the same layer (both make their ops
through one program builder, `pibench.mpc.builder`): a torch model
exported with `torch.onnx.export` and imported here compiles to the same program
(same fingerprint, ReLU count and bytes) as `pibench.export` of the module. Going
through an ONNX-to-torch converter instead would add a dependency whose generated
modules the fx compiler would then have to support too.

A `Softmax` or `LogSoftmax` whose output is the model's is dropped with a note (the argmax
is unchanged, `pibench.mpc.rewrites`). Anything else outside `SUPPORTED_OPS` fails before any
file is written, naming the op type, the node and the nearest supported rewrite; a file that
is not ONNX, or is truncated, fails on load.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pibench.errors import PibenchError
from pibench.modelfolder.export import log_dropped_final, write_program_folder
from pibench.modelfolder.folder import ModelCard, sha256_file
from pibench.mpc.builder import ProgramBuilder, batchnorm_affine, fold_affine
from pibench.mpc.program import Program
from pibench.mpc.rewrites import rewrite_hint

SUPPORTED_OPS = ("Add", "AveragePool", "BatchNormalization", "Clip", "Concat", "Constant", "Conv", "Dropout",
                 "Flatten", "Gemm", "GlobalAveragePool", "Identity", "MaxPool", "ReduceMean", "Relu", "Reshape",
                 "Squeeze", "Unsqueeze")
FINAL_OPS = {"Softmax": "softmax", "LogSoftmax": "log_softmax"}  # dropped where they make the model's output


class OnnxImportError(PibenchError, ValueError):
    """The ONNX file cannot be imported; the message names the node or the file problem."""


def load_onnx(path: str | Path) -> Any:
    """The checked ONNX model (with inferred shapes); one clear error for a file that is not valid ONNX."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise OnnxImportError(f"{path}: no such file")
    try:
        model = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(model)
        return onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except (DecodeError, onnx.checker.ValidationError, onnx.shape_inference.InferenceError, RuntimeError,
            ValueError) as e:
        reason = " ".join(str(e).split())[:200]
        raise OnnxImportError(f"{path}: not a valid ONNX model ({reason}); the file is truncated, corrupt or "
                              "not ONNX") from e


def import_onnx(path: str | Path, folder: str | Path, masks: dict[str, torch.Tensor] | None = None, *,
                name: str | None = None, dataset: str = "random", accuracy: float | None = None,
                method: str = "onnx") -> ModelCard:
    """Translate `path` into a program and write it as a model folder (nothing is written on failure)."""
    import onnx

    program = program_from_onnx(load_onnx(path), masks or {})
    log_dropped_final(program)
    provenance = {"source": "onnx", "onnx_version": onnx.__version__, "torch_version": torch.__version__,
                  "source_file": Path(path).name, "source_sha256": sha256_file(Path(path))}
    return write_program_folder(program, folder, name=name, dataset=dataset, accuracy=accuracy, method=method,
                                provenance=provenance)


def program_from_onnx(model: Any, masks: dict[str, torch.Tensor]) -> Program:
    """The program of a checked ONNX model; `masks` ({Relu/Clip node name: boolean mask}) linearize ReLUs."""
    outputs = {o.name for o in model.graph.output}
    for node in model.graph.node:
        final = node.op_type in FINAL_OPS and node.output[0] in outputs
        if node.op_type not in SUPPORTED_OPS and not final:
            where = " before the model's output" if node.op_type in FINAL_OPS else ""
            raise OnnxImportError(f"unsupported ONNX op {node.op_type}{where} (node {node.name!r}): "
                                  f"{rewrite_hint(node.op_type)}; pibench imports {', '.join(SUPPORTED_OPS)}")
    return _Translator(model, masks).program()


def _attrs(node: Any) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


class _Translator:
    """Walks the ONNX graph and reads its attributes and constants; `build` makes the ops."""

    def __init__(self, model: Any, masks: dict[str, torch.Tensor]) -> None:
        from onnx import numpy_helper

        graph = model.graph
        self.graph = graph
        self.build = ProgramBuilder({k: torch.as_tensor(v).to(torch.bool) for k, v in masks.items()},
                                    OnnxImportError)
        self.constants: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self.shapes: dict[str, tuple[int, ...]] = {}
        for info in [*graph.input, *graph.value_info, *graph.output]:
            dims = info.type.tensor_type.shape.dim
            self.shapes[info.name] = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims)
        inputs = [i for i in graph.input if i.name not in self.constants]
        if len(inputs) != 1 or len(self.shapes[inputs[0].name]) < 2 or -1 in self.shapes[inputs[0].name][1:]:
            raise OnnxImportError("the ONNX model must have one input of a fixed per-sample shape, e.g. "
                                  f"(N, 3, 32, 32); it has {[(i.name, self.shapes[i.name]) for i in inputs]}")
        self.input = inputs[0].name
        self.build.input(self.input)
        self.consumers: dict[str, list[Any]] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.folded: set[str] = set()  # BatchNormalization nodes folded into their Conv

    def program(self) -> Program:
        for i, node in enumerate(self.graph.node):
            self._node(node, node.name or f"{node.op_type}_{i}")
        (output,) = [o.name for o in self.graph.output]
        return self.build.program(self.shapes[self.input][1:], output)

    # -- helpers ---------------------------------------------------------------------------
    def _shape(self, name: str, node: Any) -> tuple[int, ...]:
        shape = self.shapes.get(name)
        if shape is None or -1 in shape[1:]:
            raise OnnxImportError(f"cannot infer the shape of {name!r} (node {node.name!r}, {node.op_type})")
        return shape[1:]

    def _const(self, name: str, node: Any) -> np.ndarray:
        if name not in self.constants:
            raise OnnxImportError(f"node {node.name!r} ({node.op_type}): input {name!r} must be a constant")
        return self.constants[name]

    def _out_shape(self, node: Any) -> tuple[int, ...]:
        return self._shape(node.output[0], node)

    def _alias(self, node: Any, x: str) -> None:
        self.build.alias(node.output[0], x)

    def _unsupported(self, node: Any, what: str) -> OnnxImportError:
        return OnnxImportError(f"unsupported ONNX {node.op_type} (node {node.name!r}): {what}")

    # -- nodes -----------------------------------------------------------------------------
    def _node(self, node: Any, layer: str) -> None:
        from onnx import numpy_helper

        a = _attrs(node)
        op = node.op_type
        x = node.input[0] if node.input else None
        if op in FINAL_OPS:  # the model's output (program_from_onnx checked): the logits before it
            if len(self._shape(x, node)) != 1 or a.get("axis", -1) not in (1, -1):
                raise self._unsupported(node, "a softmax over other than the class axis of (N, classes) logits")
            self.build.drop_final(node.output[0], layer, x, FINAL_OPS[op])
        elif op == "Constant":
            if "value" not in a:
                raise self._unsupported(node, f"a constant given as {sorted(a)}")
            self.constants[node.output[0]] = numpy_helper.to_array(a["value"])
        elif op in ("Identity", "Dropout") and x in self.constants:  # e.g. a shared zero bias
            self.constants[node.output[0]] = self.constants[x]
        elif op in ("Identity", "Dropout"):
            self._alias(node, x)  # inference mode: dropout is the identity
        elif op == "Conv":
            self._conv(node, layer, a)
        elif op == "BatchNormalization":
            if node.name in self.folded:
                self._alias(node, x)
            else:
                scale, shift = self._bn(node, a)
                self.build.emit(node.output[0], "affine", layer, [x], self._out_shape(node),
                                weights={"scale": scale, "shift": shift})
        elif op == "Relu":
            self._relu(node, layer)
        elif op == "Clip":
            self._clip(node, layer, a)
        elif op == "Add":
            if any(i in self.constants for i in node.input) or self._shape(node.input[0], node) != \
                    self._shape(node.input[1], node):
                raise self._unsupported(node, "add of a constant or of different shapes (broadcasting)")
            self.build.emit(node.output[0], "add", layer, list(node.input), self._out_shape(node))
        elif op == "Concat":
            dim = a["axis"] % (len(self._out_shape(node)) + 1)
            if dim == 0:
                raise self._unsupported(node, "concat along the batch dimension")
            self.build.emit(node.output[0], "concat", layer, list(node.input), self._out_shape(node),
                            attrs={"dim": dim})
        elif op == "MaxPool":
            self._maxpool(node, layer, a)
        elif op == "AveragePool":
            self._avgpool(node, layer, a)
        elif op == "GlobalAveragePool":
            self.build.global_avg(node.output[0], layer, x, self._shape(x, node), flatten=False)
        elif op == "ReduceMean":
            axes = a.get("axes")
            if axes is None and len(node.input) > 1:
                axes = self._const(node.input[1], node).tolist()
            rank = len(self._shape(x, node)) + 1
            if rank != 4 or sorted(int(d) % 4 for d in (axes or [])) != [2, 3]:
                raise self._unsupported(node, f"mean over axes {axes} (only over (2, 3) of N, C, H, W)")
            self.build.global_avg(node.output[0], layer, x, self._shape(x, node), flatten=not a.get("keepdims", 1))
        elif op in ("Flatten", "Reshape", "Squeeze", "Unsqueeze"):
            self._reshape(node, layer, a)
        elif op == "Gemm":
            self._gemm(node, layer, a)

    def _conv(self, node: Any, layer: str, a: dict[str, Any]) -> None:
        w = torch.from_numpy(self._const(node.input[1], node).copy()).float()
        b = (torch.from_numpy(self._const(node.input[2], node).copy()).float() if len(node.input) > 2 and node.input[2]
             else torch.zeros(w.shape[0]))
        pads = list(a.get("pads", [0, 0, 0, 0]))
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or len(w.shape) != 4 or pads[:2] != pads[2:]:
            raise self._unsupported(node, f"a conv that is not 2-d with symmetric explicit pads (pads {pads})")
        users = self.consumers.get(node.output[0], [])
        if len(users) == 1 and users[0].op_type == "BatchNormalization":
            w, b = fold_affine(w, b, *self._bn(users[0], _attrs(users[0])))
            self.folded.add(users[0].name)
            self.build.notes.append(f"folded {users[0].name} into {layer}")
        attrs = {"stride": tuple(int(s) for s in a.get("strides", (1, 1))), "padding": (pads[0], pads[1]),
                 "dilation": tuple(int(d) for d in a.get("dilations", (1, 1))), "groups": int(a.get("group", 1))}
        self.build.conv(node.output[0], layer, node.input[0], self._out_shape(node), w, b, attrs)

    def _bn(self, node: Any, a: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        gamma, beta, mean, var = (torch.from_numpy(self._const(n, node).copy()).float() for n in node.input[1:5])
        return batchnorm_affine(gamma, beta, mean, var, float(a.get("epsilon", 1e-5)))

    def _relu(self, node: Any, layer: str, clamp: tuple[float, float] | None = None) -> None:
        self.build.relu(node.output[0], layer, node.input[0], self._out_shape(node), clamp=clamp)

    def _clip(self, node: Any, layer: str, a: dict[str, Any]) -> None:
        bounds = [a.get("min"), a.get("max")]
        for i in (1, 2):
            if len(node.input) > i and node.input[i]:
                bounds[i - 1] = float(self._const(node.input[i], node))
        lo, hi = bounds
        if lo == 0 and hi is None:
            self._relu(node, layer)
        elif lo is not None and hi is not None and lo < hi and math.isfinite(lo) and math.isfinite(hi):
            self._relu(node, layer, clamp=(float(lo), float(hi)))
        else:
            raise self._unsupported(node, f"clip to ({lo}, {hi}) (finite lo < hi, or min=0 only)")

    def _pool_attrs(self, node: Any, a: dict[str, Any]) -> dict[str, Any]:
        pads = list(a.get("pads", [0, 0, 0, 0]))
        kernel = tuple(int(k) for k in a["kernel_shape"])
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or len(kernel) != 2 or pads[:2] != pads[2:] \
                or tuple(a.get("dilations", (1, 1))) != (1, 1):
            raise self._unsupported(node, f"pooling that is not 2-d with symmetric explicit pads (pads {pads})")
        return {"kernel": kernel, "stride": tuple(int(s) for s in a.get("strides", (1, 1))),
                "padding": (int(pads[0]), int(pads[1]))}

    def _maxpool(self, node: Any, layer: str, a: dict[str, Any]) -> None:
        if len(node.output) > 1 and node.output[1]:
            raise self._unsupported(node, "max pooling that returns indices")
        self.build.maxpool(node.output[0], layer, node.input[0], self._out_shape(node), **self._pool_attrs(node, a),
                           ceil_mode=bool(a.get("ceil_mode")))

    def _avgpool(self, node: Any, layer: str, a: dict[str, Any]) -> None:
        attrs = self._pool_attrs(node, a)
        if a.get("ceil_mode") or (not a.get("count_include_pad", 0) and attrs["padding"] != (0, 0)):
            raise self._unsupported(node, "average pooling with ceil_mode or padding not counted in the average")
        self.build.avgpool(node.output[0], layer, node.input[0], self._out_shape(node), **attrs)

    def _reshape(self, node: Any, layer: str, a: dict[str, Any]) -> None:
        """Flatten(axis=1), or a Reshape/Squeeze/Unsqueeze that keeps the batch dimension."""
        x, y = node.input[0], node.output[0]
        full_in, full_out = self.shapes.get(x), self.shapes.get(y)
        if node.op_type == "Flatten" and a.get("axis", 1) != 1:
            raise self._unsupported(node, f"flatten from axis {a.get('axis')} (only from axis 1)")
        if full_in is None or full_out is None or not full_out or full_out[0] != full_in[0]:
            raise self._unsupported(node, f"a reshape from {full_in} to {full_out} that does not keep the batch")
        self.build.reshape(y, layer, x, self._shape(y, node), self._shape(x, node))

    def _gemm(self, node: Any, layer: str, a: dict[str, Any]) -> None:
        if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
            raise self._unsupported(node, "Gemm with transA or alpha/beta other than 1")
        w = torch.from_numpy(self._const(node.input[1], node).copy()).float()
        weight_t = w.t().contiguous() if a.get("transB", 0) else w
        bias = (torch.from_numpy(self._const(node.input[2], node).copy()).float().reshape(-1)
                if len(node.input) > 2 and node.input[2] else torch.zeros(weight_t.shape[1]))
        if bias.numel() != weight_t.shape[1]:
            raise self._unsupported(node, f"a bias of shape {tuple(bias.shape)} for {weight_t.shape[1]} outputs")
        self.build.linear(node.output[0], layer, node.input[0], self._out_shape(node), weight_t, bias)
