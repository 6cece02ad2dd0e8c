"""A YAML composer that hostile input cannot crash, recurse to death or blow up.

Shared by the validator (config.py) and the light readers of a jobs file (paths.py: `state_dir`
and `store` for the read-only commands, job names for completion), which must not segfault on a
file that `validate` reports as an error. Imports nothing heavy: PyYAML comes with the loader.
"""

from __future__ import annotations

from typing import Any

import yaml

from cronpy.errors import ConfigError, Problem

# Limits on hostile input, each far above any real jobs file (a 10,000-job file nests 4 levels
# deep and uses no aliases). Past them the file is refused with its line, before anything is built.
MAX_DEPTH = 64  #: nested mappings/lists; libyaml's C composer recursed and segfaulted at ~100,000
MAX_ALIAS_NODES = 100_000  #: nodes that aliases (`*name`, `<<: *name`) may add by expansion, in all

_STR_TAG = "tag:yaml.org,2002:str"


def compose_node(loader: Any, source: str) -> yaml.Node | None:
    """The document's root node (None for an empty stream), composed from `loader`'s events.

    PyYAML's composers recurse (the C one segfaults on 100,000 `[`, the Python one raises
    RecursionError at ~500 levels) and let an alias stand for its anchor's whole subtree, so
    nine levels of `&a [*b, *b, …]` mean 387 million nodes for whoever walks the tree. This one
    keeps an explicit stack, refuses nesting deeper than MAX_DEPTH, and counts what each alias
    would add: past MAX_ALIAS_NODES the document is refused. Raises ConfigError (with the line)
    for those, yaml.YAMLError for a syntax error.
    """
    ev = yaml.events
    loader.get_event()  # StreamStart
    if loader.check_event(ev.StreamEndEvent):
        return None
    loader.get_event()  # DocumentStart
    anchors: dict[str, tuple[yaml.Node, int]] = {}  # name -> (node, expanded size)
    expanded = 0
    tags: dict[str, str] = {}  # plain scalar -> resolved tag (most values repeat: `10m`, `true`)
    # Each open collection: [node, pending mapping key or None, anchor, expanded size so far].
    stack: list[list[Any]] = []
    root: yaml.Node | None = None

    def refuse(mark: Any, message: str) -> ConfigError:
        return ConfigError(source, [Problem(mark.line + 1 if mark is not None else None, "", message)])

    while True:
        event = loader.get_event()
        kind = type(event)
        size = 1
        node: yaml.Node
        if kind is ev.ScalarEvent:
            tag = event.tag
            if tag is None or tag == "!":
                if event.implicit[0]:
                    tag = tags.get(event.value)
                    if tag is None:
                        tag = tags[event.value] = loader.resolve(yaml.ScalarNode, event.value, event.implicit)
                else:
                    tag = _STR_TAG
            node = yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark, event.style)
            anchor = event.anchor
        elif kind is ev.MappingStartEvent or kind is ev.SequenceStartEvent:
            if len(stack) >= MAX_DEPTH:
                raise refuse(event.start_mark, f"nested more than {MAX_DEPTH} levels deep")
            cls = yaml.MappingNode if kind is ev.MappingStartEvent else yaml.SequenceNode
            tag = event.tag
            if tag is None or tag == "!":
                tag = loader.resolve(cls, None, event.implicit)
            stack.append([cls(tag, [], event.start_mark, None, event.flow_style), None, event.anchor, 1])
            continue
        elif kind is ev.MappingEndEvent or kind is ev.SequenceEndEvent:
            node, _, anchor, size = stack.pop()
            node.end_mark = event.end_mark
        elif kind is ev.AliasEvent:
            if event.anchor not in anchors:
                raise refuse(event.start_mark, f"alias *{event.anchor} refers to no anchor defined before it")
            node, size = anchors[event.anchor]
            expanded += size
            if expanded > MAX_ALIAS_NODES:
                raise refuse(event.start_mark, f"aliases expand to more than {MAX_ALIAS_NODES:,} values "
                             "(an alias bomb?): use `defaults:` or fewer aliases")
            anchor = None
        elif kind is ev.DocumentEndEvent:
            if not loader.check_event(ev.StreamEndEvent):
                extra = loader.get_event()
                raise refuse(extra.start_mark, "expected a single document, found another (`---`)")
            return root
        else:  # pragma: no cover - libyaml emits nothing else inside a document
            raise refuse(event.start_mark, f"unexpected YAML event {kind.__name__}")
        if anchor is not None:
            anchors[anchor] = (node, size)
        if not stack:
            root = node
            continue
        top = stack[-1]
        top[3] += size
        if isinstance(top[0], yaml.MappingNode):
            if top[1] is None:
                top[1] = node
            else:
                top[0].value.append((top[1], node))
                top[1] = None
        else:
            top[0].value.append(node)
