"""Run a compiled `Program` in SecretFlow SPU (protocols CHEETAH and SEMI2K) between two parties.

Each program op becomes one SPU executable, compiled from a JAX function built from the
*public* program (shapes, strides, kept-ReLU indices), so both parties compile the same
bytes (`SpuBackend.digest` lets them check) and every op can be timed and counted on
its own. Values live in the SPU runtime as secret-shared variables named `x` (the
input), `v<i>` (op i's output) and `w<n>` (weights).

SPU 0.9.5 rejects private inputs, so the owners secret-share: the server shares every
weight once per model (setup), the client shares each input; the server sends its
share of the logits to the client only.

A partial ReLU gathers the kept positions (public indices), ReLUs them, concatenates
them with the untouched ones and restores the order with one more public gather: all
local but the ReLU, so its cost follows the kept ReLUs. (The scatter-add form costs
the same bytes but is several times slower under SEMI2K.) A clamp (ReLU6) is
lo + relu(x - lo) - relu(x - hi), both ReLUs in one comparison over a concatenation,
as in the CrypTen backend.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, Callable

import numpy as np
import torch

from pibench.mpc.backend import Backend
from pibench.mpc.program import INPUT, Op, Program, pool_padding
from pibench.mpc.protocols import CLIENT, SERVER
from pibench.mpc.spu.link import SpuLink, import_spu

# 64-bit ring, 18 fractional bits: logits agree with plaintext to ~1e-4 on ResNet18-sized
# programs, with 2^45 of headroom for the integer part.
FIELD = "FM64"
FRACTION_BITS = 18
PROTOCOL_KINDS = {"cheetah": "CHEETAH", "semi2k": "SEMI2K"}


def runtime_config(protocol: str) -> Any:
    """SPU's runtime settings for a pibench protocol name (cheetah | semi2k)."""
    libspu = import_spu()
    if protocol not in PROTOCOL_KINDS:
        raise ValueError(f"unknown SPU protocol {protocol!r}; use one of {', '.join(PROTOCOL_KINDS)}")
    cfg = libspu.RuntimeConfig(protocol=getattr(libspu.ProtocolKind, PROTOCOL_KINDS[protocol]),
                               field=getattr(libspu.FieldType, FIELD), fxp_fraction_bits=FRACTION_BITS)
    cfg.enable_pphlo_profile = True  # makes every run log its link traffic (see pibench.mpc.spu.link)
    return cfg


# -- the ops as JAX functions ------------------------------------------------------------------
def _window(attrs: dict[str, Any], size: tuple[int, ...], out: tuple[int, ...]) -> dict[str, Any]:
    """reduce_window arguments; ceil_mode's extra windows as padding at the end (see `pool_padding`)."""
    (kh, kw), (sh, sw), (ph, pw) = attrs["kernel"], attrs["stride"], attrs["padding"]
    if attrs.get("ceil_mode"):
        pad_h, pad_w = pool_padding(size[-2], kh, sh, ph, out[-2]), pool_padding(size[-1], kw, sw, pw, out[-1])
    else:
        pad_h, pad_w = (ph, ph), (pw, pw)
    return {"window_dimensions": (1, 1, kh, kw), "window_strides": (1, 1, sh, sw),
            "padding": ((0, 0), (0, 0), pad_h, pad_w)}


def _relu(bounds: tuple[float, float] | None) -> Callable[[Any], Any]:
    import jax.numpy as jnp

    if bounds is None:
        return lambda x: jnp.maximum(x, 0)
    lo, hi = bounds

    def clamp(x: Any) -> Any:
        both = jnp.maximum(jnp.concatenate([x - lo, x - hi], axis=0), 0)
        return both[: x.shape[0]] - both[x.shape[0]:] + lo

    return clamp


def _partial(index: np.ndarray, size: int, fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    import jax.numpy as jnp

    kept = np.sort(index)
    rest = np.setdiff1d(np.arange(size), kept)
    order = np.argsort(np.concatenate([kept, rest]))

    def partial(x: Any) -> Any:
        flat = x.reshape(x.shape[0], -1)
        both = jnp.concatenate([fn(flat[:, kept]), flat[:, rest]], axis=1)
        return both[:, order].reshape(x.shape)

    return partial


def op_function(op: Op, input_shapes: list[tuple[int, ...]]) -> Callable[..., Any]:
    """The op as a JAX function of (inputs..., weights by name...)."""
    import jax
    import jax.numpy as jnp

    a = op.attrs
    if op.kind == "add":
        return lambda x, y: x + y
    if op.kind == "relu":
        fn = _relu(a.get("clamp"))
        return fn if "index" not in a else _partial(np.asarray(a["index"]), math.prod(input_shapes[0][1:]), fn)
    if op.kind == "concat":
        return lambda *xs: jnp.concatenate(xs, axis=a["dim"])
    if op.kind in ("flatten", "reshape"):
        return lambda x: x.reshape(x.shape[0], *op.shape)
    if op.kind == "linear":
        return lambda x, weight_t, bias: x @ weight_t + bias
    if op.kind == "affine":
        return lambda x, scale, shift: x * scale + shift
    if op.kind == "conv":
        def conv(x: Any, weight: Any, bias: Any) -> Any:
            (ph, pw) = a["padding"]
            y = jax.lax.conv_general_dilated(
                x, weight, window_strides=a["stride"], padding=((ph, ph), (pw, pw)), rhs_dilation=a["dilation"],
                feature_group_count=a["groups"], dimension_numbers=("NCHW", "OIHW", "NCHW"))
            return y + bias
        return conv
    if op.kind == "avgpool":
        area = a["kernel"][0] * a["kernel"][1]  # count_include_pad, as the compiler requires
        return lambda x: jax.lax.reduce_window(x, 0.0, jax.lax.add, **_window(a, input_shapes[0], op.shape)) / area
    if op.kind == "maxpool":
        return lambda x: jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, **_window(a, input_shapes[0], op.shape))
    raise ValueError(f"the SPU backend cannot run op kind {op.kind!r} (layer {op.layer})")


def set_up_runtime(runtime: Any, io: Any, link: SpuLink) -> None:
    """Run one tiny conv + ReLU so that a new runtime does its one-time setup now.

    CHEETAH generates its HE keys and base OTs on first use (seconds and ~10 MB); doing
    it here books that as session setup instead of the first model's first inference.
    """
    import jax
    import jax.numpy as jnp
    import spu.utils.frontend as frontend

    libspu = import_spu()

    def conv_relu(x: Any, w: Any) -> Any:
        y = jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NCHW", "OIHW", "NCHW"))
        return jnp.maximum(y, 0)

    x, w = np.ones((1, 2, 4, 4), np.float32), np.ones((2, 2, 3, 3), np.float32)
    secret = libspu.Visibility.VIS_SECRET
    executable, _ = frontend.compile(frontend.Kind.JAX, conv_relu, [x, w], {}, ["setup.x", "setup.w"],
                                     [secret, secret], lambda out: ["setup.y"])
    runtime.set_var("setup.x", link.share_from(io, CLIENT, x))
    runtime.set_var("setup.w", link.share_from(io, SERVER, w))
    runtime.run(executable)
    for name in ("setup.x", "setup.w", "setup.y"):
        runtime.del_var(name)


# -- the backend --------------------------------------------------------------------------------
class SpuBackend(Backend):
    """A program's ops as SPU executables on one party's runtime; values are runtime variable names.

    The server's program carries the weights, the client's is public; the executables
    depend only on the public part. Per inference: `share_input`, `run_program`,
    `reveal_to_client`.
    """

    def __init__(self, program: Program, rank: int, runtime: Any, io: Any, link: SpuLink) -> None:
        if rank == SERVER and not program.has_weights:
            raise ValueError("the server's program must carry the weights")
        super().__init__(program)
        self.rank, self.runtime, self.io, self.link = rank, runtime, io, link
        self.libspu = import_spu()
        self.shapes: dict[str, tuple[int, ...]] = {}  # weight variable -> shape
        self.executables: dict[tuple[int, int], Any] = {}  # (op index, batch) -> executable
        self.batch = 0  # inputs of the current inference (set by share_input)

    # -- setup ----------------------------------------------------------------------------
    def share_weights(self) -> None:
        """Secret-share every weight from the server (one-time setup per model)."""

        def share(value: torch.Tensor | None, shape: tuple[int, ...]) -> str:
            name = f"w{len(self.shapes)}"
            self.shapes[name] = shape
            plain = value.numpy().astype(np.float32) if self.rank == SERVER else None
            self.runtime.set_var(name, self.link.share_from(self.io, SERVER, plain))
            return name

        self.load_weights(share)

    def compile(self, batch: int) -> str:
        """Compile every op for `batch` inputs; a digest of the executables to compare with the peer's."""
        digest = hashlib.sha256()
        for i in range(len(self.program.ops)):
            digest.update(self._executable(i, batch).code)
        return digest.hexdigest()

    def _executable(self, index: int, batch: int) -> Any:
        key = (index, batch)
        if key not in self.executables:
            import spu.utils.frontend as frontend

            op = self.program.ops[index]
            inputs = [(batch, *(self.program.input_shape if j == INPUT else self.program.ops[j].shape))
                      for j in op.inputs]
            names = [self._name(j) for j in op.inputs] + list(self.weights[index].values())
            examples = [np.zeros(s, np.float32) for s in inputs]
            examples += [np.zeros(self.shapes[w], np.float32) for w in self.weights[index].values()]
            fn = op_function(op, inputs)
            secret = self.libspu.Visibility.VIS_SECRET
            self.executables[key], _ = frontend.compile(
                frontend.Kind.JAX, fn, examples, {}, names, [secret] * len(names), lambda out: [self._name(index)])
        return self.executables[key]

    @staticmethod
    def _name(index: int) -> str:
        return "x" if index == INPUT else f"v{index}"

    # -- inference ------------------------------------------------------------------------
    def share_input(self, x: torch.Tensor | None, shape: tuple[int, ...]) -> str:
        """The client's input as the runtime variable "x"; the server learns only its shape."""
        self.batch = shape[0]
        plain = x.numpy().astype(np.float32) if self.rank == CLIENT else None
        self.runtime.set_var("x", self.link.share_from(self.io, CLIENT, plain))
        return "x"

    def apply(self, index: int, op: Op, args: list[Any]) -> str:
        self.runtime.run(self._executable(index, self.batch))
        return self._name(index)

    def reveal_to_client(self, name: str) -> torch.Tensor | None:
        """Open the output to the client only (the server sends its share); frees the inference's values."""
        share = self.runtime.get_var(name)
        if self.rank == SERVER:
            self.link.send_share(share)
            out = None
        else:
            out = torch.from_numpy(np.asarray(self.io.reconstruct([share, self.link.recv_share()]))).double()
        for i in range(len(self.program.ops)):
            self.runtime.del_var(self._name(i))
        self.runtime.del_var("x")
        return out

    def free_weights(self) -> None:
        for name in self.shapes:
            self.runtime.del_var(name)
