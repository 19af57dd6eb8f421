"""Draw the graph that produced a tensor, as Mermaid or Graphviz (dot) text.

    print(tinygen.viz.to_mermaid(loss))        # paste into any Mermaid renderer
    open("g.dot", "w").write(tinygen.viz.to_dot(loss, params=dict(model.named_parameters())))
"""
from .autograd.engine import _toposort
from .autograd.function import Function


def _graph(tensor, params):
    names = {id(t): n for n, t in (params or {}).items()}
    nodes, edges, leaves = [], [], {}
    if tensor.grad_fn is None:
        leaves[id(tensor)] = tensor
        return nodes, edges, leaves, names
    for node in reversed(_toposort([tensor.grad_fn])):  # inputs first, as the forward ran
        nodes.append(node)
        for e in node.next_edges:
            if e is None:
                continue
            src = e[0]
            if not isinstance(src, Function):
                leaves[id(src)] = src
            edges.append((src, node))
    return nodes, edges, leaves, names


def _shape(shape):
    return str(tuple(shape))


def _labels(tensor, params):
    nodes, edges, leaves, names = _graph(tensor, params)
    label, ident = {}, {}
    for k, leaf in enumerate(leaves.values()):
        ident[id(leaf)] = f"leaf{k}"
        name = names.get(id(leaf), "leaf")
        label[id(leaf)] = f"{name} {_shape(leaf.shape)} {leaf.dtype.name}"
    for k, node in enumerate(nodes):
        ident[id(node)] = f"op{k}"
        shape, dtype = node.out_meta[0]
        label[id(node)] = f"{node.name()} {_shape(shape)} {dtype.name}"
    return nodes, edges, leaves, label, ident


def to_mermaid(tensor, params=None):
    """Mermaid flowchart text of the graph behind ``tensor`` (op names, output shapes and dtypes)."""
    nodes, edges, leaves, label, ident = _labels(tensor, params)
    lines = ["flowchart BT"]
    for leaf in leaves.values():
        lines.append(f'    {ident[id(leaf)]}(["{label[id(leaf)]}"])')
    for node in nodes:
        lines.append(f'    {ident[id(node)]}["{label[id(node)]}"]')
    for src, dst in edges:
        lines.append(f"    {ident[id(src)]} --> {ident[id(dst)]}")
    return "\n".join(lines) + "\n"


def to_dot(tensor, params=None):
    """Graphviz dot text of the graph behind ``tensor``; render with ``dot -Tpng``."""
    nodes, edges, leaves, label, ident = _labels(tensor, params)
    lines = ["digraph tinygen {", "    rankdir=BT;", '    node [fontname="Helvetica", fontsize=10];']
    for leaf in leaves.values():
        lines.append(f'    {ident[id(leaf)]} [label="{label[id(leaf)]}", shape=ellipse, style=filled, '
                     f'fillcolor=lightblue];')
    for node in nodes:
        lines.append(f'    {ident[id(node)]} [label="{label[id(node)]}", shape=box];')
    for src, dst in edges:
        lines.append(f"    {ident[id(src)]} -> {ident[id(dst)]};")
    lines.append("}")
    return "\n".join(lines) + "\n"
