"""YAML for documents people write by hand (tenant policies, agent templates): strict.

PyYAML implements YAML 1.1, where ``21:00`` is the base-60 integer 1260, ``NO`` and ``on`` are
booleans and ``010`` is octal 8: in a policy those are quiet hours, a country and an id. The
loaders here resolve booleans and numbers as YAML 1.2's core schema does (a number with a
leading zero stays a string: neither reading is safe to guess) and refuse duplicate keys,
which PyYAML would silently overwrite. Written on PyYAML's resolver tables because no
maintained package offers a YAML 1.2 core-schema *safe* loader with duplicate-key errors.

>>> import yaml
>>> yaml.load("quiet: 21:00\\ncountry: NO\\nid: 010\\nok: true", Loader=strict_loader())
{'quiet': '21:00', 'country': 'NO', 'id': '010', 'ok': True}
"""

from __future__ import annotations

import functools
import re
from collections.abc import Hashable
from typing import Any

import yaml

__all__ = ["strict_loader"]

_Resolvers = dict[str | None, list[tuple[str, re.Pattern[str]]]]

_CORE = {
    "bool": (r"true|True|TRUE|false|False|FALSE", "tTfF"),
    "int": (r"[-+]?(?:0|[1-9][0-9]*)", "-+0123456789"),
    "float": (
        r"[-+]?(?:(?:\.[0-9]+|[0-9]+\.[0-9]*)(?:[eE][-+]?[0-9]+)?|[0-9]+[eE][-+]?[0-9]+)"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)",
        "-+0123456789.",
    ),
}


def _resolvers(timestamps: bool) -> _Resolvers:
    dropped = {f"tag:yaml.org,2002:{name}" for name in _CORE}
    if not timestamps:
        dropped.add("tag:yaml.org,2002:timestamp")
    resolvers: _Resolvers = {
        first: [(tag, rx) for tag, rx in entries if tag not in dropped]
        for first, entries in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    for name, (pattern, firsts) in _CORE.items():
        regex = re.compile(f"^(?:{pattern})$")
        for first in firsts:
            resolvers.setdefault(first, []).append((f"tag:yaml.org,2002:{name}", regex))
    return resolvers


@functools.cache
def strict_loader(*, timestamps: bool = True) -> type[yaml.SafeLoader]:
    """A ``yaml.SafeLoader`` with YAML 1.2 core-schema scalars and duplicate keys refused;
    ``timestamps=False`` also keeps dates and times as strings (the caller parses them)."""

    class StrictLoader(yaml.SafeLoader):
        yaml_implicit_resolvers = _resolvers(timestamps)

        def construct_mapping(
            self, node: yaml.MappingNode, deep: bool = False
        ) -> dict[Hashable, Any]:
            seen: set[tuple[str, str]] = set()
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode):
                    key = (key_node.tag, key_node.value)
                    if key in seen:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"duplicate key {key_node.value!r}", key_node.start_mark
                        )
                    seen.add(key)
            return super().construct_mapping(node, deep)

    return StrictLoader
