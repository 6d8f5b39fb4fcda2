"""A model's eval-mode program as an ONNX graph, translated primitive by primitive from its jaxpr.

The jaxpr is traced with the portable kernels and a symbolic batch size, so the graph holds
plain ONNX Conv/MatMul/elementwise nodes, its weights as initializers, and a dynamic batch axis.
Only the primitives our models use are translated; any other one is a clear error naming it.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jax_core

from lightnets_jax.export.program import eval_program

OPSET = 17
_ELEMENTWISE = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "max": "Max", "min": "Min"}
_INLINED = {"pjit": "jaxpr", "jit": "jaxpr", "custom_jvp_call": "call_jaxpr", "closed_call": "call_jaxpr"}


def to_onnx(model, variables: dict[str, Any], batch: int | None = None):
    """The eval-mode model as an ``onnx.ModelProto`` taking float32 ``(batch, *example shape)``
    inputs named ``input`` and giving ``logits`` (None: any batch size)."""
    import onnx

    forward, spec = eval_program(model, variables, batch)
    closed = jax.make_jaxpr(forward)(spec)
    graph = _Graph()
    names = graph.inline(closed.jaxpr, closed.consts, ["input"])
    graph.nodes.append(onnx.helper.make_node("Identity", names, ["logits"]))
    dims = lambda avals: [d if isinstance(d, int) else "batch" for d in avals.shape]
    proto = onnx.helper.make_graph(
        graph.nodes, type(model).__name__,
        [onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, dims(closed.jaxpr.invars[0].aval))],
        [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, dims(closed.jaxpr.outvars[0].aval))],
        graph.initializers)
    onnx_model = onnx.helper.make_model(proto, opset_imports=[onnx.helper.make_opsetid("", OPSET)],
                                        producer_name="lightnets_jax")
    onnx.checker.check_model(onnx_model)
    return onnx_model


class _Graph:
    def __init__(self):
        self.nodes, self.initializers, self._count = [], [], 0

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def constant(self, value, hint: str = "const") -> str:
        import onnx

        name = self.fresh(hint)
        self.initializers.append(onnx.numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], **attributes) -> str:
        import onnx

        out = self.fresh(op.lower())
        self.nodes.append(onnx.helper.make_node(op, inputs, [out], **attributes))
        return out

    def inline(self, jaxpr, consts, inputs: list[str]) -> list[str]:
        env: dict[Any, str] = {}
        for var, value in zip(jaxpr.constvars, consts):
            env[var] = self.constant(np.asarray(value), "weight")
        env.update(zip(jaxpr.invars, inputs))

        def read(atom) -> str:
            if isinstance(atom, jax_core.Literal):
                return self.constant(np.asarray(atom.val, dtype=atom.aval.dtype))
            return env[atom]

        for eqn in jaxpr.eqns:
            name = eqn.primitive.name
            if name in ("max", "min") and (clip := _clip_bound(eqn.invars)) is not None:
                index, bound = clip  # the literal is not read: no initializer for it
                env[eqn.outvars[0]] = self._activation(name, read(eqn.invars[1 - index]), bound)
                continue
            args = [read(a) for a in eqn.invars]
            if name in _INLINED:
                inner = eqn.params[_INLINED[name]]
                outs = self.inline(inner.jaxpr, inner.consts, args)
            else:
                outs = [self.translate(name, args, eqn)]
            env.update(zip(eqn.outvars, outs))
        return [read(v) for v in jaxpr.outvars]

    def translate(self, name: str, args: list[str], eqn) -> str:
        params, in_avals = eqn.params, [v.aval for v in eqn.invars]
        out_shape = eqn.outvars[0].aval.shape
        if name in _ELEMENTWISE:
            return self.node(_ELEMENTWISE[name], args)
        if name == "rsqrt":
            return self.node("Reciprocal", [self.node("Sqrt", args)])
        if name == "convert_element_type":
            if params["new_dtype"] != jnp.float32:
                raise NotImplementedError(f"ONNX export: a cast to {params['new_dtype']}")
            return self.node("Cast", args, to=1)  # TensorProto.FLOAT
        if name == "transpose":
            return self.node("Transpose", args, perm=list(params["permutation"]))
        if name == "reshape":
            return self.node("Reshape", [args[0], self.constant(_static_shape(out_shape), "shape")])
        if name == "broadcast_in_dim":
            return self._broadcast(args[0], in_avals[0].shape, out_shape, params["broadcast_dimensions"])
        if name == "reduce_sum":
            return self.node("ReduceSum", [args[0], self.constant(np.asarray(params["axes"], np.int64), "axes")], keepdims=0)
        if name == "conv_general_dilated":
            return self._conv(args, params)
        if name == "dot_general":
            return self._matmul(args, in_avals, params)
        if name == "reduce_window_sum":
            return self._window_sum(args[0], params)
        raise NotImplementedError(f"ONNX export has no translation for the JAX primitive {name!r}")

    def _activation(self, name: str, operand: str, bound: float) -> str:
        """``max``/``min`` of ``operand`` and a constant as ONNX's Relu or Clip, which onnxruntime
        fuses into the Conv before them; Max and Min with a constant it leaves as passes."""
        if name == "max" and bound == 0:
            return self.node("Relu", [operand])
        limit = self.constant(np.float32(bound))
        return self.node("Clip", [operand, "", limit] if name == "min" else [operand, limit])

    def _broadcast(self, operand, in_shape, out_shape, dims) -> str:
        aligned = [1] * len(out_shape)
        for source, target in enumerate(dims):
            aligned[target] = in_shape[source]
        reshaped = self.node("Reshape", [operand, self.constant(_static_shape(aligned), "shape")])
        if all(isinstance(d, int) for d in out_shape):
            return self.node("Expand", [reshaped, self.constant(np.asarray(out_shape, np.int64), "shape")])
        return reshaped  # a symbolic batch: ONNX's elementwise ops broadcast the rest (all our uses)

    def _conv(self, args, params) -> str:
        if any(d != 1 for d in params["lhs_dilation"]) or params["batch_group_count"] != 1:
            raise NotImplementedError("ONNX export: transposed or batch-grouped convolutions")
        lhs_spec, rhs_spec, out_spec = params["dimension_numbers"]
        x = self.node("Transpose", [args[0]], perm=list(lhs_spec))
        kernel = self.node("Transpose", [args[1]], perm=list(rhs_spec))
        pads = [p[0] for p in params["padding"]] + [p[1] for p in params["padding"]]
        y = self.node("Conv", [x, kernel], strides=list(params["window_strides"]), pads=pads,
                      dilations=list(params["rhs_dilation"]), group=params["feature_group_count"])
        return self.node("Transpose", [y], perm=[int(i) for i in np.argsort(out_spec)])

    def _matmul(self, args, in_avals, params) -> str:
        (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = params["dimension_numbers"]
        lhs_rank, rhs_rank = len(in_avals[0].shape), len(in_avals[1].shape)
        if lhs_batch or rhs_batch or tuple(lhs_contract) != (lhs_rank - 1,) or rhs_rank != 2:
            raise NotImplementedError(f"ONNX export: dot_general with dimension numbers {params['dimension_numbers']}")
        rhs = args[1] if tuple(rhs_contract) == (0,) else self.node("Transpose", [args[1]], perm=[1, 0])
        return self.node("MatMul", [args[0], rhs])

    def _window_sum(self, operand, params) -> str:
        window, strides = params["window_dimensions"], params["window_strides"]
        if any(p != (0, 0) for p in map(tuple, params["padding"])) or window[0] != 1 or window[-1] != 1:
            raise NotImplementedError(f"ONNX export: reduce_window_sum over {window} with padding {params['padding']}")
        rank = len(window)
        x = self.node("Transpose", [operand], perm=[0, rank - 1, *range(1, rank - 1)])  # NHWC -> NCHW
        mean = self.node("AveragePool", [x], kernel_shape=list(window[1:-1]), strides=list(strides[1:-1]))
        total = self.node("Mul", [mean, self.constant(np.float32(np.prod(window)))])
        return self.node("Transpose", [total], perm=[0, *range(2, rank), 1])


def _clip_bound(invars) -> tuple[int, float] | None:
    """(index, value) of a scalar float literal operand of a binary max or min, else None."""
    for index, atom in enumerate(invars):
        if isinstance(atom, jax_core.Literal) and np.ndim(atom.val) == 0 and atom.aval.dtype == jnp.float32:
            return index, float(atom.val)
    return None


def _static_shape(shape) -> np.ndarray:
    """A shape for ONNX Reshape: the symbolic batch axis becomes -1 (at most one may be symbolic)."""
    symbolic = [i for i, d in enumerate(shape) if not isinstance(d, int)]
    if len(symbolic) > 1:
        raise NotImplementedError(f"ONNX export: reshape to {shape}")
    return np.asarray([-1 if not isinstance(d, int) else d for d in shape], np.int64)
