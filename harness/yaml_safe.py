"""YAML from users, read with bounded work: the one loader of suites and device profiles.

`yaml.safe_load` is safe from code execution, not from cost. An alias bomb ("billion laughs": ten
aliases of ten aliases ... nine levels deep) loads in milliseconds as shared lists, but everything
downstream walks it as the tree it stands for: pydantic, the repr in an error message, json.dumps
into suite.json (10⁹ leaves: minutes and ~5 GB). So the composed node graph is measured as that
tree before a single value is constructed, and refused past the limits below. Duplicate keys,
which YAML forbids and PyYAML resolves silently to the last one, are refused with both lines.

Every refusal is a `YamlInputError` whose message is one line without the file name (callers
prefix it): no traceback for a binary, UTF-16, 50,000-deep or self-referencing file.
"""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from harness.errors import HarnessError

MAX_BYTES = 64 << 10  # 25× the largest shipped suite (2.5 KB); libyaml parses it in ~0.05 s
MAX_NODES = 50_000  # values after alias expansion, keys included
MAX_DEPTH = 32  # nesting after alias expansion; suites nest 5 deep (profiles.gpu.limits.x.y)

_MERGE_TAG = "tag:yaml.org,2002:merge"
_WIDE_BOMS = (  # UTF-32 first: its little-endian mark starts with UTF-16's
    (codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16"),
)  # fmt: skip


class YamlInputError(HarnessError, ValueError):
    """A YAML file or text that is refused; the message is one line, without the file's name."""


def one_line(text: str) -> str:
    """`text` with every line break and control character escaped (a message stays one line)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def read_yaml(path: str | Path) -> Any:
    """The YAML document in the file at `path`: UTF-8, at most MAX_BYTES, bounded (see module)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise YamlInputError(f"cannot read the file: {exc.strerror}") from None
    if len(data) > MAX_BYTES:
        raise YamlInputError(f"the file is larger than the limit of {MAX_BYTES >> 10} KiB")
    return load_yaml(_decode(data))


def load_yaml(text: str) -> Any:
    """The single YAML document in `text`, or YamlInputError (one line) if it is refused."""
    bad = yaml.reader.Reader.NON_PRINTABLE.search(text)
    if bad:
        line, column = _position(text, bad.start())
        raise YamlInputError(f"character U+{ord(bad.group()[0]):04X} at line {line}, column "
                             f"{column} is not allowed in YAML (a binary file?)")  # fmt: skip
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or type(exc).__name__
        if "nesting depth" in problem and mark:  # libyaml stops at 1000 levels itself; say ours
            raise YamlInputError(
                f"values nest deeper than {MAX_DEPTH} levels at line {mark.line + 1}; "
                f"the limit is {MAX_DEPTH}"
            ) from None
        raise YamlInputError(one_line(f"not valid YAML{at}: {problem}")) from None
    except yaml.YAMLError as exc:  # a ReaderError past the check above, or an unmarked error
        raise YamlInputError(one_line(f"not valid YAML: {' '.join(str(exc).split())}")) from None
    finally:
        loader.dispose()


def _decode(data: bytes) -> str:
    for bom, encoding in _WIDE_BOMS:
        if data.startswith(bom):
            raise YamlInputError(f"the file is {encoding} text (byte-order mark); "
                                 "save it as UTF-8")  # fmt: skip
    if b"\x00" in data:
        raise YamlInputError(f"the file holds a NUL byte at offset {data.index(0)}: binary, or "
                             "UTF-16 without a byte-order mark? save it as UTF-8 text")  # fmt: skip
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise YamlInputError(f"the file is not UTF-8 text: byte 0x{data[exc.start]:02x} at offset "
                             f"{exc.start}; save it as UTF-8") from None  # fmt: skip


def _position(text: str, index: int) -> tuple[int, int]:
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


def _check_expansion(root: Node) -> None:
    """Refuse a node graph that, expanded into the tree it stands for, is too big or too deep.

    The graph is a DAG (aliases share nodes) unless an alias refers to a value that contains it.
    Each node is measured once (memoized), so a bomb costs its size on disk, not its expansion;
    the recursion stops at MAX_DEPTH.
    """
    sizes: dict[int, int] = {}
    heights: dict[int, int] = {}
    open_nodes: set[int] = set()

    def measure(node: Node, depth: int) -> int:
        key = id(node)
        line = node.start_mark.line + 1
        if key in open_nodes:
            raise YamlInputError(f"the alias at line {line} refers to a value that contains it")
        if depth + heights.get(key, 1) > MAX_DEPTH:
            raise YamlInputError(
                f"values nest deeper than {MAX_DEPTH} levels at line {line} "
                f"(aliases expanded); the limit is {MAX_DEPTH}"
            )
        if key in sizes:
            return sizes[key]
        if isinstance(node, SequenceNode):
            children = node.value
        elif isinstance(node, MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            children = []
        open_nodes.add(key)
        size, height = 1, 1
        for child in children:
            size += measure(child, depth + 1)
            height = max(height, 1 + heights[id(child)])
            if size > MAX_NODES:
                raise YamlInputError(f"the document expands to more than {MAX_NODES:,} values "
                                     f"(aliases of aliases, at line {line}?); the limit is "
                                     f"{MAX_NODES:,}")  # fmt: skip
        open_nodes.discard(key)
        sizes[key], heights[key] = size, height
        return size

    measure(root, 0)


class _Checks:
    """Constructor overrides: duplicate keys refused, any construction failure one marked line."""

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)  # type: ignore[misc]
        except (yaml.YAMLError, YamlInputError):
            raise
        except (ValueError, OverflowError, TypeError) as exc:  # e.g. a 5000-digit int, 2001-13-45
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read this value: {exc}", node.start_mark
            ) from None

    def construct_mapping(self, node: Node, deep: bool = False) -> Any:
        if isinstance(node, MappingNode):
            first: dict[Any, Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:  # `<<: *base` may be overridden, by design
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    earlier = first.setdefault(key, key_node)
                except TypeError:  # unhashable: the base class says so
                    continue
                if earlier is not key_node:
                    text = repr(key) if len(repr(key)) <= 60 else repr(key)[:57] + "..."
                    raise YamlInputError(one_line(
                        f"duplicate key {text} at line {key_node.start_mark.line + 1} (first at "
                        f"line {earlier.start_mark.line + 1}); give each key once"))  # fmt: skip
        return super().construct_mapping(node, deep=deep)  # type: ignore[misc]


class _PyLoader(_Checks, yaml.SafeLoader):
    """PyYAML's own parser: its composer recurses, so nesting is cut off before RecursionError."""

    _depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise YamlInputError(f"values nest deeper than {MAX_DEPTH} levels at line "
                                     f"{mark.line + 1}; the limit is {MAX_DEPTH}")  # fmt: skip
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


if yaml.__with_libyaml__:

    class _CLoader(_Checks, yaml.CSafeLoader):
        """libyaml's parser (~5× faster); it refuses nesting past 1000 levels itself."""

    _Loader: type = _CLoader
else:
    _Loader = _PyLoader
