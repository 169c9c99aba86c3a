"""Reading YAML that users write (build configs, quantizer configs, target files) with bounded cost.

``yaml.safe_load`` runs no code, but aliases let a 600-byte file describe a billion values: the
loader itself shares the repeated objects, and the first thing that walks them (validation,
an error message quoting the value) expands them, which cost 1.5 GB before a config error was
printed.  :func:`load` counts the values a document expands to, sharing counted once per
object, and refuses documents over :data:`MAX_VALUES` or referring to themselves before anything
else looks at them.
"""

from __future__ import annotations

from typing import Any

import yaml

#: Far above any real config or target file (the largest bundled target expands to 705 values).
MAX_VALUES = 200_000
#: Deepest nesting accepted (bundled files nest 6 deep); deeper ones would exhaust the recursion
#: of whatever walks the data next (validation, error messages).
MAX_DEPTH = 64
#: libyaml's loader when available: the pure-Python one takes seconds for all bundled targets.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class YamlTooLarge(ValueError):
    """A document that expands to too many values, nests too deeply or contains itself."""


class _UniqueKeyLoader(_LOADER):  # type: ignore[misc,valid-type]
    """The safe loader, refusing a key written twice in one mapping: YAML's loaders keep the last
    silently, so a build config with two ``model_parameters`` groups built the second group's model
    without a word.  Keys a ``<<`` merge brings in may be overridden, as YAML intends."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            if key_node.value in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key_node.value!r} is written twice in one mapping (the second would "
                    f"replace the first), line {key_node.start_mark.line + 1}", key_node.start_mark)
            seen.add(key_node.value)
        return super().construct_mapping(node, deep)


def load(text: str) -> Any:
    """Parse ``text`` with a safe loader; :class:`YamlTooLarge` for documents whose expansion
    would be unbounded, ``yaml.YAMLError`` for malformed ones (a key twice in one mapping included)."""
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506  (a safe loader)
    except RecursionError:
        raise YamlTooLarge("it nests too deeply") from None
    expanded_size(data)
    return data


def expanded_size(data: Any, limit: int = MAX_VALUES) -> int:
    """How many values ``data`` holds once every alias is expanded (``YamlTooLarge`` above
    ``limit``); each shared object is counted once and its count reused, so this is linear in
    the size of the document, not of its expansion."""
    sizes: dict[int, int] = {}
    open_ids: set[int] = set()
    stack: list[tuple[Any, bool, int]] = [(data, False, 0)]
    while stack:
        node, children_done, depth = stack.pop()
        if not isinstance(node, (dict, list)) or (id(node) in sizes and not children_done):
            continue
        if depth > MAX_DEPTH:
            raise YamlTooLarge(f"it nests more than {MAX_DEPTH} levels deep")
        children = [*node.keys(), *node.values()] if isinstance(node, dict) else node
        if children_done:
            open_ids.discard(id(node))
            sizes[id(node)] = total = 1 + sum(sizes.get(id(c), 1) for c in children)
            if total > limit:
                raise YamlTooLarge(f"it expands to more than {limit:,} values (YAML aliases repeating each other)")
            continue
        if id(node) in open_ids:
            raise YamlTooLarge("it contains itself (an alias inside its own anchor)")
        open_ids.add(id(node))
        stack.append((node, True, depth))
        stack.extend((c, False, depth + 1) for c in children)
    return sizes.get(id(data), 1)



def describe(exc: Exception, text: str | None = None) -> str:
    """One line saying what is wrong with a YAML document and where, for an error message
    (``text``: the document, to name the character the problem is at).

    ``str()`` of a PyYAML error puts its context first ("while scanning for the next token"),
    so a message cut to its first line said nothing of the problem (round 24: a tab-indented
    quantizer config read "cannot read quantization config q.yaml: while scanning for the next
    token").  The problem and its line and column come first here, and a tab is named."""
    if not isinstance(exc, yaml.MarkedYAMLError) or not exc.problem:
        return " ".join(str(exc).split())
    said = exc.problem
    mark = exc.problem_mark
    if mark is not None and text is not None:
        lines = text.splitlines()
        line = lines[mark.line] if mark.line < len(lines) else ""
        if line[mark.column:mark.column + 1] == "\t":
            said += " (a tab: YAML indents with spaces only)"
    if mark is not None and "line" not in said:
        said += f", line {mark.line + 1}, column {mark.column + 1}"
    if exc.context:
        said += f" ({exc.context})"
    return " ".join(said.split())
