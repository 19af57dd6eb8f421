"""The passes ``tinygen.compile`` runs over a recorded program, once, before its first replay (the stages
"release", "prune", "reuse" and part of "fuse" in the package's docstring): each takes the steps and returns new
ones that replay to the same state as eager.

  with_activations        a Linear followed by its ReLU (``F.relu(fc(x))``) as one fused node, as nn.Sequential runs
  reused_forwards         a forward on the same arrays as an earlier one of the same op left out (a GAN's
                          discriminator on the fakes, then on their detached copy)
  with_releases           a release step after the last use of each intermediate, so a replay holds no more memory
                          than eager
  without_dead_gradients  gradients the step drops unread (zero_grad before anything reads them) not computed
  with_early_drops        a zero_grad (set to None) moved back over the forwards before it, so that the last
                          call's gradients are not held through them
  fused_backwards         a plain backward's runs of elementwise nodes as one loop (``fusion.fused_plan_steps``)
  with_gradients_in_place a plain backward's nodes writing their gradient into the one they receive, where that
                          array is the plan's own
"""
import copy
from collections import Counter

from ..autograd import engine
from ..autograd.engine import _backward, _grad
from ..capture import gradient_use, replayed, tensors_written
from ..tensor import Tensor
from . import fusion
from .steps import (_new, backward_into_gradient, replay_alias, replay_backward, replay_call, replay_forward,
                    replay_release, replay_requires_grad, tensors_in, tensors_read)


def engine_walks(steps):
    """Whether a program's steps (``(run, operands)`` pairs) have a backward the engine walks (create_graph,
    ``grad()``) or ops that re-read their inputs' nodes after one: its nodes must stay the recorded ones, and the
    graph such a backward walks is not the recording's to see."""
    return any((run is replay_call and operands[0] in (_backward, _grad)) or (run is replay_forward and operands[5])
               for run, operands in steps)


def with_activations(steps, keep):
    """The recorded steps (``Recorder.steps``) with each op that declares ``with_activation`` (``Linear``)
    followed by an activation op on its output (one that declares ``activation``: ReLU, LeakyReLU) as one node of
    the fused op (``LinearActFunction``), where the op says that gives the same bits, the output between them is
    used by nothing else, and, with a gradient, both nodes run in one plain backward that releases them: the fused
    forward at the op's place, its backward at the op's node's place in the plan (the activation's node only passed
    its gradient on to it), the nodes that take the activation's output pointed at the fused node. A step written
    with ``F.relu(fc(x))`` runs as ``nn.Sequential(fc, nn.ReLU())`` does."""
    forwards = [i for i, s in enumerate(steps) if s[0] is replay_forward]
    if engine_walks((s[0], s[1:]) for s in steps):
        return steps
    uses = Counter(key for s in steps for key in {id(t) for t in tensors_in(*s[1:])})  # steps referring to each
    plans = [s[1] for s in steps if s[0] is replay_backward]
    in_plans = Counter(id(step[0]) for plan in plans for step in plan.steps)
    out, dropped, relinked = list(steps), set(), {}
    for i in forwards:
        _, cls, ctx, device, args, outs, _, _ = steps[i]
        fuse = getattr(cls, "with_activation", None)
        h = outs[0]
        if fuse is None or len(outs) != 1 or id(h) in keep or uses[id(h)] != 2:
            continue
        j = next((k for k in forwards if k > i and any(a is h for a in steps[k][4])), None)  # the op that takes h
        if j is None:
            continue
        _, act_cls, act_ctx, _, act_args, act_outs, _, _ = steps[j]
        act = act_cls.__dict__.get("activation")
        if act is None or act_args[0] is not h or (ctx is None) is not (act_ctx is None):
            continue
        fused = fuse(args, act, act_args[1] if len(act_args) > 1 else 0.0)
        if fused is None:
            continue
        fused_cls, fused_args = fused
        extra = (None,) * (len(fused_args) - len(args))  # the fused op's arguments after the op's: no gradient
        node = None
        if ctx is not None:
            plan = next((p for p in plans if any(step[0] is ctx for step in p.steps)), None)
            if plan is None or not plan.release or in_plans[id(ctx)] != 1 or in_plans[id(act_ctx)] != 1:
                continue
            k_op = next(k for k, step in enumerate(plan.steps) if step[0] is ctx)
            k_act = next((k for k, step in enumerate(plan.steps) if step[0] is act_ctx), None)
            op_step, act_step = plan.steps[k_op], plan.steps[k_act] if k_act is not None else None
            # the activation's node: no hooks due after it, its one gradient to the register the op's node reads
            if act_step is None or act_step[5] or act_step[4][0] is None or act_step[4][0][1] is not None or \
                    any(t is not None for t in act_step[4][1:]) or op_step[2] != (act_step[4][0][0],):
                continue
            node = _new(fused_cls)
            node._saved, node._out_data, node.device = (), act_outs[0].data, ctx.device
            node.next_edges = ctx.next_edges + extra
            node.out_meta = act_ctx.out_meta
            fused_cls.forward(node, *fused_args)  # sets what its forward sets on it (a replay sets it again)
            plan.steps = tuple((node, node.array_backward, act_step[2], None, op_step[4] + extra, op_step[5])
                               if k == k_op else s for k, s in enumerate(plan.steps) if k != k_act)
            relinked[id(act_ctx)] = node
            act_outs[0].grad_fn = node
        out[i] = (replay_forward, fused_cls, node, device, fused_args, act_outs, False, None)
        dropped.add(j)
    if relinked:  # the nodes that take the activation's output: their edge to it now leads to the fused node
        for i in forwards:
            ctx = out[i][2]
            if ctx is not None and i not in dropped and any(e is not None and id(e[0]) in relinked
                                                            for e in ctx.next_edges):
                ctx.next_edges = tuple(e if e is None or id(e[0]) not in relinked else (relinked[id(e[0])], e[1])
                                       for e in ctx.next_edges)
    return [s for k, s in enumerate(out) if k not in dropped]


def reused_forwards(steps, inputs, keep=frozenset()):
    """The recorded steps without each forward of an op that declares ``reusable_forward`` (Linear, the
    convolutions, reshape) where an earlier forward of the same op ran on the same arguments and nothing has
    changed their arrays since: a GAN's discriminator on the generator's output in the generator's step, then on
    its detached copy in the discriminator's step (eager and PyTorch compute it twice). Right after the earlier forward,
    ``same_result`` gives the later node and output tensors what it left on its own node and outputs: the same
    arrays, so the later node's backward runs as it would have. What may change an array between the two: an op's
    forward (the arguments its ``forward_writes`` names: batch norm's running statistics), a recorded call (what
    its ``@replayed(writes=...)`` names: an optimizer step changes its parameters; a call that does not say may
    change any array), a ``requires_grad_`` switch. Arguments count as the same tensor only if the step made them
    (a detached copy is its source), they are the program's inputs, or they are leaves that require grad; outputs
    anything changes in place are never shared, nor two that are both in the step's result (``keep``: ids), which
    the caller may change. Not with a backward the engine walks (create_graph, ``grad()``), whose graph the
    recording cannot see."""
    if engine_walks((s[0], s[1:]) for s in steps):
        return steps
    source = {}  # id(detached copy) -> the tensor it was made from
    writes = {}  # index of a recorded call -> the tensors it says it may change (None: any)
    changed, known, made = set(), {id(t) for t in inputs}, set()  # changed: ids of the tensors a step writes in
    # place; known: of the tensors that hold one array through a replay
    for i, s in enumerate(steps):
        if s[0] is replay_alias:
            source[id(s[2])] = source.get(id(s[1]), s[1])
        elif s[0] is replay_forward:
            changed.update(id(source.get(id(t), t)) for k in s[1].forward_writes for t in tensors_in(s[4][k]))
        elif s[0] is replay_call:
            written = writes[i] = tensors_written(s[1], s[2], s[3])
            args = tensors_read(s[0], s[1:]) if written is None else written  # (None: any argument)
            changed.update(id(source.get(id(t), t)) for t in args)
        for t in s[5] if s[0] is replay_forward else s[6] if s[0] is replay_call else ():
            made.add(id(t))
            if t.grad_fn is not None or not t._requires_grad:  # not a leaf made here (its node saves it unshadowed)
                known.add(id(t))
    same, version, calls = {}, Counter(), 0  # same: id of a reused output -> id of the earlier one

    def ident(t):
        key = id(source.get(id(t), t))
        return same.get(key, key)

    def arg_key(pos, a):
        if isinstance(a, Tensor):
            key, src = ident(a), source.get(id(a), a)
            if key not in known and (key in made or src.grad_fn is not None or not src._requires_grad):
                raise TypeError  # a tensor whose array may change unseen (a .grad, a constant): not compared
            return key, version[key], pos and a._requires_grad
        hash(a)  # an unhashable argument (a list, an array) is not compared
        return type(a), a

    first, reuses = {}, {}  # first: key -> index of the forward; reuses: its index -> the indices that reuse it
    for i, s in enumerate(steps):
        if s[0] is replay_forward:
            cls, ctx, outs = s[1], s[2], s[5]
            key = None
            if cls.reusable_forward and not any(id(t) in changed for t in outs):  # an output is no copy
                try:
                    key = (cls, calls) + tuple(arg_key(k, a) for k, a in enumerate(s[4]))
                except TypeError:
                    pass
            j = first.get(key) if key is not None else None
            if j is not None and (ctx is None or steps[j][2] is not None) and len(outs) == len(steps[j][5]) and not (
                    any(id(t) in keep for t in outs) and any(id(t) in keep for t in steps[j][5])):
                reuses.setdefault(j, []).append(i)
                same.update((id(t), ident(e)) for t, e in zip(outs, steps[j][5]))
                continue
            if key is not None:
                first[key] = i
            for k in cls.forward_writes:
                version.update(ident(t) for t in tensors_in(s[4][k]))
        elif s[0] is replay_call:
            written = writes[i]
            if written is None:
                calls += 1  # it may change any array: nothing before it is compared with anything after
            else:
                version.update(ident(t) for t in written)
        elif s[0] is replay_requires_grad:
            version[ident(s[1])] += 1
    if not reuses:
        return steps
    later = {i for js in reuses.values() for i in js}
    out = []
    for i, s in enumerate(steps):
        if i not in later:
            out.append(s)
            out.extend((replay_call, same_result, (s[2], steps[j][2], s[5], steps[j][5]), {}, steps[j][5], False,
                        steps[j][5]) for j in reuses.get(i, ()))
    return out


@replayed(grads=lambda *args: ("reads", ()), writes=lambda *args: (), graph_key=lambda *args: ())
def same_result(ctx, twin, outs, twin_outs):
    """A forward left out by ``reused_forwards``: its output tensors and node (``twin``) take what the same op on
    the same arrays has just left on its own (``outs``, ``ctx``). Returns those tensors, the call's result (so a
    CUDA graph takes it with the device work around it, as a forward: its launches set the arrays again)."""
    for t, o in zip(twin_outs, outs):
        t.data = o.data
    if twin is not None:
        twin._saved, twin._out_data = ctx._saved, ctx._out_data
        vars(twin).clear()
        vars(twin).update(vars(ctx))
    return twin_outs


def fused_backwards(steps, rec, approx):
    """The steps with each plain backward's runs of elementwise nodes fused (``fusion.fused_plan_steps``), unless
    an op re-reads its inputs' nodes (after a create_graph call)."""
    forwards = {}  # id(node) -> (its op's note, its arguments, its output tensor)
    for step in rec.steps:
        if step[0] is replay_forward:
            if step[6]:
                return steps
            note = rec.elementwise.get(id(step[5][0]))
            if note is not None and step[2] is not None:
                forwards[id(step[2])] = (note, step[4], step[5][0])
    if not forwards:
        return steps
    return _with_plans(steps, lambda plan: fusion.fused_plan_steps(plan.steps, plan.roots, forwards, approx))


def _with_plans(steps, rewrite):
    """The steps with each plain backward's plan given the steps ``rewrite(plan)`` returns (a copy of the plan
    where they are new)."""
    out = []
    for run, operands in steps:
        if run is replay_backward:
            plan = operands[0]
            new = rewrite(plan)
            if new is not plan.steps:
                plan = copy.copy(plan)
                plan.steps = new
                operands = (plan,) + operands[1:]
        out.append((run, operands))
    return tuple(out)


def with_gradients_in_place(steps):
    """The steps with each plain backward's nodes that may write their gradient into the one they receive (their
    op declares ``backward_into_gradient``) doing so where that array is the plan's own: its register is filled
    only by ops that declare ``fresh_gradients`` (no root's gradient, no fused run's), so nothing else holds it.
    The result has the same bits, without a new array of that size: a Linear+ReLU's backward at the bottom of an
    MLP holds one batch of activations' gradients less. (The eager engine leaves the arrays it is handed alone.)"""
    return _with_plans(steps, _gradients_in_place)


def _gradients_in_place(plan):
    own = {r: False for r, leaf in plan.roots if leaf is None}  # register -> only new arrays summed into it
    for step in plan.steps:
        if step[1] is fusion.FUSED:
            own.update((r, False) for r in step[0].outputs)
            continue
        fresh = step[1] is not None and _declares(step[0], "fresh_gradients")
        for t in step[4]:
            if t is not None and t[1] is None:
                own[t[0]] = own.get(t[0], True) and fresh
    new = tuple((step[0], backward_into_gradient) + step[2:]
                if step[1] not in (None, fusion.FUSED) and len(step[2]) == 1 and own.get(step[2][0])
                and _declares(step[0], "backward_into_gradient") else step for step in plan.steps)
    return new if any(step[1] is backward_into_gradient for step in new) else plan.steps


def _declares(node, name):
    """Whether the class that defines the node's ``array_backward`` declares ``name`` (a subclass that writes its
    own says nothing of it)."""
    owner = next(k for k in type(node).__mro__ if "array_backward" in k.__dict__)
    return bool(owner.__dict__.get(name))


def without_dead_gradients(steps):
    """The steps with the gradients nothing reads left out of their backward plans: a leaf's gradient that a
    plain backward delivers and the step then drops unread (``zero_grad()``, set to None). In a GAN step, the
    discriminator's weight gradients from the generator's backward: JAX's tracing never computes them. Between
    the backward and the drop, only calls that say which gradients they read (``@replayed(grads=...)``: other
    optimizers' steps and zero_grads, schedulers) and requires_grad switches may come; anything else may read the
    gradient, so it is kept. A replay leaves the same state as eager. Leaves with post-accumulate-grad hooks are
    kept (``guards_hold`` records anew if one gets a hook later), and so is everything when the step has a backward
    the engine walks (create_graph, ``grad()``): it may pass through any node. Returns (steps, the leaves left
    out)."""
    plans = [operands[0] for run, operands in steps if run is replay_backward]
    if not plans or engine_walks(steps):
        return steps, frozenset()
    shared = Counter(id(step[0]) for plan in plans for step in plan.steps)
    out, left_out = list(steps), set()
    for i, (run, operands) in enumerate(steps):
        if run is replay_backward and operands[0].release:
            dead = _dropped_unread(operands[0], steps[i + 1:])
            if dead:
                out[i] = (run, (operands[0].without(dead, shared),) + operands[1:])
                left_out |= dead
    return tuple(out), frozenset(left_out)


def _dropped_unread(plan, later):
    """The ids of the leaves whose gradient from ``plan`` the steps ``later`` drop before anything may read it."""
    hooked = engine._post_accumulate_hooks
    open_ = {id(t) for t in plan.delivered() if id(t) not in hooked}
    dead = set()
    for run, operands in later:
        if not open_:
            break
        if run is replay_release or run is replay_requires_grad:
            continue
        said = gradient_use(*operands[:3]) if run is replay_call else None
        if said is None:
            break
        kind, tensors = said
        touched = open_.intersection(id(t) for t in tensors)
        open_ -= touched
        if kind == "drops":
            dead |= touched
    return dead


def with_early_drops(steps):
    """The steps with the first call that drops gradients unread (``zero_grad()``, set to None) moved back over
    the forwards before it, to just after the last call before them: ``loss = f(x); opt.zero_grad();
    loss.backward()`` then does not hold the last call's gradients through its forward, as eager does, so its
    peak is lower by them. Not over a call (it may read a gradient) nor when a backward comes first; a forward
    cannot read one (a .grad the step's code passes to an op is refused unless it is the leaf's after the call:
    ``Recorder.stale_grad_read``). The same state as eager after the call, and the same bits. Returns a tuple of
    steps."""
    if engine_walks(steps):
        return steps
    start = 0  # where the call may go: after the last call before it
    for i, (run, operands) in enumerate(steps):
        if run is replay_call:
            said = gradient_use(*operands[:3])
            if said is None or said[0] != "drops":
                start = i + 1
            elif any(steps[k][0] is replay_forward for k in range(start, i)):
                return (*steps[:start], steps[i], *steps[start:i], *steps[i + 1:])
            else:
                return steps
        elif run not in (replay_forward, replay_alias, replay_release, replay_requires_grad):
            return steps  # a backward
    return steps


def with_releases(steps, inputs, keep, with_graph=()):
    """The program's steps with a release after the last use of each intermediate, so that a replay holds no
    more memory than eager: the input tensors, ops' outputs, detached copies and the new tensors of recorded calls,
    not part of the result ``keep``; and the attributes of an op's node after the last backward through it.

    A replayed node saves intermediates as shadows (new tensors on the same arrays, ``_shadow``), so an array
    goes when the backward releases the node, as in eager; a backward call uses only what its graph's nodes keep
    otherwise. After a create_graph call (whose new nodes keep intermediates the recording cannot see) a backward
    uses every intermediate and node made before it. What the graph of the result's tensors ``with_graph`` keeps
    (a backward after the call goes through it) is never released. Returns a tuple of steps."""
    inputs = [t for t in inputs if id(t) not in keep]
    intermediates = {id(t): t for t in inputs}
    for run, operands in steps:
        made = operands[4] if run is replay_forward else operands[1:] if run is replay_alias else \
            operands[5] if run is replay_call else ()
        for t in made:
            if id(t) not in keep:
                intermediates.setdefault(id(t), t)
    # a shadow of a leaf made in the step that requires grad would take its gradient: those are not shadowed
    shadowable = frozenset(k for k, t in intermediates.items() if t.grad_fn is not None or not t._requires_grad)
    unshadowable = set(intermediates) - shadowable
    last = {id(t): 0 for t in inputs}  # id -> the step after which it goes
    made, nodes, by_node, relinked, out = list(inputs), {}, {}, False, []
    for i, (run, operands) in enumerate(steps):
        uses, new, walked = (), (), ()
        if run is replay_forward:
            operands = operands[:6] + (shadowable,)
            uses, new = tensors_read(run, operands), operands[4]
            relinked = relinked or operands[5]
            if operands[1] is not None:
                by_node[id(operands[1])] = operands
        elif run is replay_alias:
            uses, new = tensors_read(run, operands), operands[1:]
        elif run is replay_backward or (run is replay_call and operands[0] in (_backward, _grad)):
            if relinked:
                uses, walked = made, by_node
            else:
                walked, graph = _graph(tensors_in(operands[1][0]), by_node, unshadowable)
                uses = tensors_read(run, operands) + graph  # the roots, their gradients, grad()'s inputs
        elif run is replay_call:
            uses, new = tensors_read(run, operands), operands[5]
        out.append((run, operands))
        for t in uses:
            if id(t) in intermediates:
                last[id(t)] = i
        for t in new:
            if id(t) in intermediates and id(t) not in last:
                last[id(t)] = i
                made.append(t)
        for key in walked:
            if key in by_node:
                nodes[key] = i
    if with_graph:  # (a graph made after a create_graph call is not recorded here: record() keeps none)
        walked, graph = _graph(with_graph, by_node, unshadowable)
        for t in graph:
            last.pop(id(t), None)
        for key in walked:
            nodes.pop(key, None)
    after = {}
    for key, i in last.items():
        after.setdefault(i, ([], []))[0].append(intermediates[key])
    for key, i in nodes.items():
        after.setdefault(i, ([], []))[1].append(by_node[key][1])
    for i in sorted(after, reverse=True):
        out.insert(i + 1, (replay_release, tuple(map(tuple, after[i]))))
    return tuple(out)


def _graph(roots, by_node, unshadowable):
    """The recorded nodes in the graph behind ``roots`` (ids), and the program's tensors they keep other than as
    shadows: tensors in a node's attributes, and the arguments and outputs of a node that may save an
    unshadowable one."""
    found, seen = [], set()
    todo = [t.grad_fn for t in roots if t.grad_fn is not None]
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        found.extend(tensors_in(*getattr(node, "__dict__", {}).values()))
        operands = by_node.get(id(node))
        if operands is not None and any(id(t) in unshadowable for t in tensors_in(operands[3], operands[4])):
            found.extend(tensors_read(replay_forward, operands))
            found.extend(operands[4])
        todo.extend(e[0] for e in getattr(node, "next_edges", ()) if e is not None and not isinstance(e[0], Tensor))
    return seen, found
