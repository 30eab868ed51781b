"""Bounded reading of config files: size, encoding, nesting depth and alias expansion are
checked before anything is built from them, and values are shown in messages at bounded length.

A YAML file of a kilobyte can describe a structure of billions of nodes through nested aliases
(``b: [*a, *a, ...]``); it is refused from its composed node graph, where every alias is one
shared node, before the structure is expanded or walked.
"""

import os

import yaml

MAX_CONFIG_BYTES = 100_000  # a config file (or one --set value) larger than this is refused
MAX_DEPTH = 64  # nesting of lists and mappings
MAX_NODES = 20_000  # values after alias expansion

_SHOW = 60  # characters of a value shown in an error message


def show(value, limit: int = _SHOW) -> str:
    """A repr of ``value`` of at most about ``limit`` characters, whatever its size or
    sharing (huge integers are described by their digit count, never converted)."""
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        digits = len(str(abs(value))) if value.bit_length() < 1000 else None
        if digits is not None and digits <= limit:
            return repr(value)
        return f"<an integer of about {int(value.bit_length() * 0.30103) + 1} digits>"
    if isinstance(value, str):
        return repr(value) if len(value) <= limit else repr(value[:limit]) + "…"
    if isinstance(value, list | tuple | dict):
        items = value.items() if isinstance(value, dict) else value
        opening, closing = ("{", "}") if isinstance(value, dict) else ("[", "]")
        parts, used = [], 2
        for item in items:
            text = (
                f"{show(item[0], limit // 2)}: {show(item[1], limit // 2)}"
                if isinstance(value, dict)
                else show(item, limit // 2)
            )
            if used + len(text) > limit:
                parts.append(f"… ({len(value)} items)")
                break
            parts.append(text)
            used += len(text) + 2
        return opening + ", ".join(parts) + closing
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def read_text(path: os.PathLike) -> str:
    """The file's text; `ValueError` (one line) if it is too large or not UTF-8."""
    with open(path, "rb") as file:
        data = file.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ValueError(f"{path} has more than {MAX_CONFIG_BYTES} bytes; a config may not.")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path} is not valid UTF-8 text (byte {error.start} cannot be decoded)."
        ) from None


def _deeper(source: str) -> ValueError:
    return ValueError(f"{source} nests lists or mappings deeper than {MAX_DEPTH} levels.")


def _check_depth(text: str, source: str):
    """Refuse nesting deeper than MAX_DEPTH from the event stream, before composing (which
    recurses once per level); libyaml's parser where available."""
    depth = 0
    for event in yaml.parse(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise _deeper(source)
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _expanded_size(node, source: str) -> int:
    """The number of values ``node`` stands for once every alias is expanded (memoized per
    shared node, so the cost is linear in the file, not in the expansion); refuses nesting
    deeper than MAX_DEPTH and aliases that contain themselves."""
    sizes: dict[int, int] = {}
    in_progress: set[int] = set()

    def size(n, depth: int) -> int:
        key = id(n)
        if key in sizes:
            return sizes[key]
        if key in in_progress:
            raise ValueError(f"{source} holds an alias that refers to itself.")
        if depth > MAX_DEPTH:
            raise _deeper(source)
        in_progress.add(key)
        total = 1
        if isinstance(n, yaml.SequenceNode):
            total += sum(size(child, depth + 1) for child in n.value)
        elif isinstance(n, yaml.MappingNode):
            total += sum(size(k, depth + 1) + size(v, depth + 1) for k, v in n.value)
        if total > MAX_NODES:
            raise ValueError(
                f"{source} expands (through its aliases) to more than {MAX_NODES} values."
            )
        in_progress.discard(key)
        sizes[key] = total
        return total

    return size(node, 0)


def load_yaml(text: str, loader_cls, source: str):
    """``text`` parsed with ``loader_cls`` once size, depth and alias expansion are checked.

    Raises `ValueError` (one line) for a refusal, ``yaml.YAMLError`` for invalid YAML."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ValueError(f"{source} has more than {MAX_CONFIG_BYTES} characters.")
    _check_depth(text, source)
    loader = loader_cls(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, source)
        try:
            return loader.construct_document(node)
        except ValueError as error:  # e.g. an integer beyond Python's digit limit
            raise ValueError(f"{source} holds a value that cannot be read: {error}") from None
    finally:
        loader.dispose()
