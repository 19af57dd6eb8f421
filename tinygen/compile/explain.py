"""``Compiled.explain()``: a recorded program as text, one line a step."""
from ..autograd.engine import _backward, _grad
from . import fusion
from .passes import same_result
from .steps import (GRAPH, backward_into_gradient, replay_alias, replay_backward, replay_call, replay_forward,
                    replay_release, set_grad)


def tensor_text(t):
    return f"{tuple(t.data.shape)} {t.data.dtype} {t._device}"


def count(n, what, many=None):
    return f"{n} {what if n == 1 else many or what + 's'}"


def described(run, operands):
    """``_step_text``, or a plain line where a step of an unusual kind (a custom op's) cannot be described: a
    listing for reading is never a reason for a step to fail."""
    try:
        return _step_text(run, operands)
    except Exception as e:  # noqa: BLE001 - see the docstring
        return f"{getattr(run, '__name__', type(run).__name__).strip('_')} (not described: {type(e).__name__})"


def _step_text(run, operands):
    """One step of a program as a line of ``Compiled.explain``."""
    if run is replay_forward:
        cls, ctx = operands[0], operands[1]
        name = ctx.name().removesuffix("Backward") if ctx is not None else cls.__name__.removesuffix("Function")
        return f"forward   {name} -> {tensor_text(operands[4][0])}"
    if isinstance(run, fusion.FusedRun):
        names = ", ".join(step[1][0].__name__ for step in run.steps)
        kind = "one CuPy kernel" if run.device else "one Numba loop"
        return f"fused     {len(run.steps)} ops ({names}) on {run.shape} {run.dtype}: {kind}"
    if run is replay_backward:
        plan = operands[0]
        leaves = {id(t) for t in plan.delivered()}
        names = ", ".join(step[0].name() for step in plan.steps)
        to = count(len(leaves), "leaf", "leaves")
        ran = len(plan.nodes()) - len(plan.dropped)  # a fused run's nodes each count
        into = sum(step[1] is backward_into_gradient for step in plan.steps)
        into = f"; {into} of them may write into the gradient they receive" if into else ""
        return f"backward  {count(ran, 'node')} ({names}) -> .grad of {to}{into}"
    if run is replay_call:
        fn = operands[0]
        if fn in (_backward, _grad):
            return f"backward  {fn.__name__.strip('_')}() walked by the engine (create_graph, inputs= or grad())"
        if fn is same_result:
            ctx, _, outs, _ = operands[1]
            name = ctx.name().removesuffix("Backward") if ctx is not None else "an op"
            return f"reuse     {name} -> {tensor_text(outs[0])}: the forward above, on the same arrays"
        if fn is set_grad:
            tensor, value = operands[1]
            what = "None" if value is None else "a tensor"
            return f"set       .grad = {what} on a tensor of shape {tuple(tensor.shape)}"
        owner = operands[1][0] if operands[1] else None
        if owner is not None and getattr(type(owner), getattr(fn, "__name__", ""), None) is not None:
            return f"call      {type(owner).__name__}.{fn.__name__}"  # Adam.step, not Optimizer.step
        return f"call      {getattr(fn, '__qualname__', repr(fn))}"
    if run is replay_release:
        parts = [count(len(operands[0]), "tensor")] if operands[0] else []
        parts += [f"what {count(len(operands[1]), 'node')} saved"] if operands[1] else []
        return "release   " + ", ".join(parts)
    if run is replay_alias:
        return "alias     (a detached or viewed tensor on the same array)"
    return f"requires_grad_({operands[1]}) on a tensor of shape {tuple(operands[0].shape)}"


def listing(compiled, sources=False):
    """The text of ``Compiled.explain``."""
    lines = [f"{compiled.__name__}: {len(compiled._programs)} program(s), {compiled.records} recorded, "
             f"{compiled.replays} replayed, {compiled.graph_replays} with CUDA graphs"]
    for i, program in enumerate(compiled._programs.values(), 1):
        if program is GRAPH:
            lines.append(f"program {i}: none; a backward after the call goes through a gradient graph "
                         f"(create_graph) that a replay would not keep, so its calls run eagerly")
            continue
        dead = f", {count(len(program.left_out), 'gradient')} nothing reads left out" if program.left_out else ""
        spares, spare = 0, program.spare
        while spare is not None:
            spares, spare = spares + 1, spare.spare
        handed = (f"; hands on the graph of {count(len(program.handoff.ids), 'result tensor')} for a backward "
                  f"after the call" + (f" ({count(spares, 'spare program')})" if spares else "")
                  ) if program.handoff is not None else ""
        lines.append(f"program {i}: {program.signature_text}; {len(program.steps)} steps{dead}{handed}")
        where = {}  # id(step) -> its CUDA graph ("graph 1", ...) or "host"
        if program.graphed is not None:
            segments = 0
            for kind, item in program.graphed.items:
                if kind == "host":
                    where[id(item)] = "host"
                else:
                    segments += 1
                    where.update((id(step), f"graph {segments}") for step in item.steps)
        for j, (step, text) in enumerate(zip(program.steps, program.step_texts), 1):
            column = f"{where.get(id(step), ''):9s}" if where else ""
            lines.append(f"  {j:4d}  {column}{text}")
            indent = " " * (18 + len(column))
            if sources and isinstance(step[0], fusion.FusedRun):
                lines.extend(indent + line for line in step[0].source.splitlines())
            if sources and step[0] is replay_backward:  # its fused runs' code, each under its name
                for fused in (s[0] for s in step[1][0].steps if s[1] is fusion.FUSED):
                    lines.append(indent + fused.name() + ":")
                    lines.extend(indent + line for line in fused.listing().splitlines())
    return "\n".join(lines)
