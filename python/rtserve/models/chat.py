"""Chat templates and generation settings of a decoder's Hugging Face folder.

:class:`ChatTemplate` renders ``chat_template`` (from ``chat_template.jinja`` or
``tokenizer_config.json``) the way transformers' ``apply_chat_template`` does: a sandboxed
jinja2 environment with ``trim_blocks`` and ``lstrip_blocks``, the ``raise_exception``,
``strftime_now`` helpers, a ``tojson`` filter that keeps non-ASCII text, the
``{% generation %}`` tag, and the special tokens (``bos_token``, ``eos_token``, ...) as
variables. :func:`read_eos_ids` finds the ids that end generation.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from .._core import UnsupportedError, WeightsError
from .hf import read_json

__all__ = ["ChatTemplate", "read_eos_ids", "read_tokenizer_config"]

SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def read_tokenizer_config(folder: Path) -> dict[str, Any]:
    """``tokenizer_config.json`` as a dict ({} when the folder has none)."""
    path = folder / "tokenizer_config.json"
    if not path.is_file():
        return {}
    config = read_json(path)
    if not isinstance(config, dict):
        raise WeightsError(f"{path}: expected a JSON object, got {type(config).__name__}")
    return config


def token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or ``{"content": ...}``."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


class ChatTemplate:
    """A compiled chat template plus the special tokens it may refer to.

    Example::

        template = ChatTemplate.from_folder(folder)
        template.render([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    """

    def __init__(self, source: str, special_tokens: Mapping[str, Any], origin: str) -> None:
        self.source = source
        self.origin = origin
        self.special_tokens = dict(special_tokens)
        self._template = _compile(source, origin)

    @classmethod
    def from_folder(cls, folder: Path, tokenizer_config: Mapping[str, Any] | None = None) -> ChatTemplate | None:
        """The folder's template (``chat_template.jinja`` first, then tokenizer_config.json), or None."""
        config = read_tokenizer_config(folder) if tokenizer_config is None else tokenizer_config
        special: dict[str, Any] = {}
        for key in SPECIAL_TOKEN_KEYS:
            text = token_text(config.get(key))
            if text is not None:
                special[key] = text
        extra = config.get("additional_special_tokens")
        if isinstance(extra, list):
            special["additional_special_tokens"] = [t for t in (token_text(x) for x in extra) if t is not None]
        jinja_file = folder / "chat_template.jinja"
        if jinja_file.is_file():
            return cls(jinja_file.read_text(encoding="utf-8"), special, str(jinja_file))
        origin = str(folder / "tokenizer_config.json")
        source = config.get("chat_template")
        if isinstance(source, list):  # named templates: [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in source if isinstance(t, Mapping)}
            source = named.get("default")
        if source is None:
            return None
        if not isinstance(source, str):
            raise WeightsError(f"{origin}: chat_template must be a string, got {type(source).__name__}")
        return cls(source, special, origin)

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        **kwargs: Any,
    ) -> str:
        """The prompt text for ``messages`` (a list of ``{"role", "content"}`` dicts).

        Extra keyword arguments become template variables (``tools=...``, say). An error
        raised by the template (``raise_exception``) comes out as ValueError.
        """
        import jinja2

        checked = _check_messages(messages)
        variables = {"tools": None, "documents": None, **self.special_tokens, **kwargs}
        try:
            return str(self._template.render(messages=checked, add_generation_prompt=add_generation_prompt, **variables))
        except jinja2.TemplateError as e:
            raise ValueError(f"chat template of {self.origin}: {e}") from e


def _check_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise TypeError("messages must be a list of {'role': ..., 'content': ...} dicts")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
            raise TypeError(f"messages[{i}] must be a dict with a 'role' string, got {m!r}")
        out.append(dict(m))
    return out


def _compile(source: str, origin: str) -> Any:
    """transformers' ``_compile_jinja_template``."""
    try:
        import jinja2
        from jinja2.ext import Extension
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise ImportError("chat templates need the 'jinja2' package: pip install jinja2") from e

    class GenerationTag(Extension):
        """``{% generation %}...{% endgeneration %}`` marks assistant text; rendered as is."""

        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_render", []), [], [], body).set_lineno(lineno)

        def _render(self, caller: Any) -> str:
            return str(caller())

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt: str) -> str:
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise WeightsError(f"{origin}: chat_template is not a valid jinja2 template ({e})") from e


def read_eos_ids(folder: Path, config: Mapping[str, Any], tokenizer_config: Mapping[str, Any], token_to_id: Any) -> list[int]:
    """Token ids that end generation: generation_config.json's ``eos_token_id`` (an int or a
    list), else config.json's, else tokenizer_config.json's ``eos_token``; [] when none says."""
    path = folder / "generation_config.json"
    sources: list[tuple[str, Any]] = []
    if path.is_file():
        gen = read_json(path)
        if not isinstance(gen, dict):
            raise WeightsError(f"{path}: expected a JSON object, got {type(gen).__name__}")
        sources.append((str(path), gen.get("eos_token_id")))
    sources.append((str(folder / "config.json"), config.get("eos_token_id")))
    for origin, value in sources:
        if value is None:
            continue
        ids = value if isinstance(value, list) else [value]
        if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
            raise WeightsError(f"{origin}: eos_token_id must be an id or a list of ids, got {value!r}")
        return [int(i) for i in ids]
    eos = token_text(tokenizer_config.get("eos_token"))
    if eos is not None:
        found = token_to_id(eos)
        if found is not None:
            return [int(found)]
    return []


def no_template_error(folder: Path) -> UnsupportedError:
    return UnsupportedError(
        f"{folder / 'tokenizer_config.json'}: the model has no chat_template (nor chat_template.jinja), "
        "so chat() cannot format messages; use generate() with a prompt"
    )
