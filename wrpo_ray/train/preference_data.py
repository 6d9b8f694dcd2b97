"""Preference rows in either accepted input format, normalised to one shape, and the SFT split.

Two input formats are accepted:

* this project's (docs/schemas.md): ``prompt_id``, ``prompt`` (text) or ``messages``, the responses as
  strings ``y_ws``, ``y_wt``, ``y_l`` (pairwise: ``chosen``/``rejected``, or ``y_wt``/``y_l`` for DPO-on and
  ``y_ws``/``y_l`` for DPO-hybrid; SFT: ``y_ws`` or ``response``), optional ``ref_logps``;
* the paper's released format (conversational): ``prompt`` (text, one message such as
  ``{"role": "user", "content": ...}`` as released, or a list of messages), ``chosen = [y_ws, y_wt]`` and
  ``rejected = [y_l]``, each response a string, an assistant message, or a conversation that ends with the
  assistant turn (with or without the prompt turns in front). The release is a ``datasets`` DatasetDict
  saved with ``save_to_disk``; ``data.prompts.iter_input_rows`` reads one of its splits.

Every row becomes ``{"prompt_id", "messages", "responses", "ref_logps"}`` or a quarantine reason whose text
before ``':'`` is its kind: ``missing_prompt``, ``invalid_messages``, ``invalid_prompt_id``, ``missing_turn``,
``empty_response``, ``invalid_ref_logps``.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, Literal, get_args

from wrpo_ray.data.prompts import ROLES, derive_prompt_id

Kind = Literal["wrpo", "pairwise", "sft"]
Pair = Literal["on", "hybrid"]

WRPO_NAMES = ("y_ws", "y_wt", "y_l")
PAIRWISE_NAMES = ("chosen", "rejected")
SFT_NAMES = ("response",)


class _Rejected(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def response_names(n: int) -> tuple[str, ...]:
    """Names of the responses of an example with ``n`` of them, as used in quarantine reasons."""
    known = {3: WRPO_NAMES, 2: PAIRWISE_NAMES, 1: SFT_NAMES}
    return known.get(n, tuple(f"response_{i}" for i in range(n)))


def normalize_preference_row(
    row: dict[str, Any], kind: Kind, *, pair: Pair = "on"
) -> tuple[dict[str, Any] | None, str | None]:
    """``(example, None)`` for a usable row, ``(None, reason)`` otherwise.

    ``responses`` holds ``(y_ws, y_wt, y_l)`` for ``wrpo``, ``(chosen, rejected)`` for ``pairwise`` and
    ``(y_ws,)`` for ``sft``. ``pair`` picks the chosen response of a pairwise example from WRPO data:
    ``on`` uses ``y_wt`` (DPO-on), ``hybrid`` uses ``y_ws`` (DPO-hybrid). Three reference log-probs on a
    pairwise example are narrowed to the two responses used; SFT examples carry none.
    """
    if kind not in get_args(Kind):
        raise ValueError(f"kind must be one of {get_args(Kind)}, got {kind!r}")
    if pair not in get_args(Pair):
        raise ValueError(f"pair must be one of {get_args(Pair)}, got {pair!r}")
    try:
        return _normalize(row, kind, pair), None
    except _Rejected as e:
        return None, e.reason


def in_sft_split(prompt_id: str, seed: int, fraction: float = 1 / 3) -> bool:
    """Whether a prompt belongs to the SFT split: a hash of seed and prompt_id, independent of row order."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    digest = hashlib.sha256(f"{seed}:{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


# --- row layout ---------------------------------------------------------------------------------------


def _normalize(row: Any, kind: Kind, pair: Pair) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise _Rejected(f"invalid_messages: row is {type(row).__name__}, not a mapping")
    if _is_paper_format(row):
        picks, ref_index = _paper_picks(row, kind, pair)
    else:
        picks, ref_index = _project_picks(row, kind, pair)
    messages = _prompt_messages(row)
    if messages is None:
        messages = _prompt_from_conversations([raw for _, raw in picks])
    if messages is None:
        raise _Rejected("missing_prompt")
    responses = [_response_text(name, raw) for name, raw in picks]
    ref_logps = None if kind == "sft" else _ref_logps(row.get("ref_logps"), len(picks), ref_index)
    return {
        "prompt_id": _prompt_id(row, messages),
        "messages": messages,
        "responses": responses,
        "ref_logps": ref_logps,
    }


def _is_paper_format(row: dict[str, Any]) -> bool:
    return _as_list(row.get("chosen")) is not None or _as_list(row.get("rejected")) is not None


Picks = list[tuple[str, Any]]


def _project_picks(row: dict[str, Any], kind: Kind, pair: Pair) -> tuple[Picks, tuple[int, ...] | None]:
    """The (name, raw value) of each response, and which of three ref log-probs belong to them."""
    if kind == "wrpo":
        return [(name, row.get(name)) for name in WRPO_NAMES], (0, 1, 2)
    if kind == "sft":
        name = "response" if row.get("y_ws") is None and row.get("response") is not None else "y_ws"
        return [(name, row.get(name))], None
    if row.get("chosen") is not None or row.get("rejected") is not None:
        return [(name, row.get(name)) for name in PAIRWISE_NAMES], None
    chosen = "y_wt" if pair == "on" else "y_ws"
    return [(chosen, row.get(chosen)), ("y_l", row.get("y_l"))], (WRPO_NAMES.index(chosen), 2)


def _paper_picks(row: dict[str, Any], kind: Kind, pair: Pair) -> tuple[Picks, tuple[int, ...] | None]:
    chosen = _response_list("chosen", row.get("chosen"))
    rejected = _response_list("rejected", row.get("rejected"))

    def at(items: list[Any], i: int) -> Any:
        return items[i] if i < len(items) else None

    if kind == "wrpo":
        return [("y_ws", at(chosen, 0)), ("y_wt", at(chosen, 1)), ("y_l", at(rejected, 0))], (0, 1, 2)
    if kind == "sft":
        return [("y_ws", at(chosen, 0))], None
    if len(chosen) == 1:
        return [("chosen", chosen[0]), ("rejected", at(rejected, 0))], None
    index = 1 if pair == "on" else 0
    return [(WRPO_NAMES[index], at(chosen, index)), ("y_l", at(rejected, 0))], (index, 2)


def _response_list(field: str, value: Any) -> list[Any]:
    """The responses of a ``chosen``/``rejected`` column: a list, where one conversation counts as one."""
    if value is None:
        return []
    if isinstance(value, str | dict):
        return [value]
    items = _as_list(value)
    if items is None:
        raise _Rejected(f"invalid_messages: {field} is {type(value).__name__}")
    if _is_conversation(items):
        return [items]
    return items


def _is_conversation(items: list[Any]) -> bool:
    """A list of messages with a non-assistant turn is one conversation, not a list of responses."""
    return bool(items) and all(isinstance(m, dict) for m in items) and any(m.get("role") != "assistant" for m in items)


# --- prompt --------------------------------------------------------------------------------------------


def _prompt_messages(row: dict[str, Any]) -> list[dict[str, str]] | None:
    if row.get("messages") is not None:
        return _checked_prompt(_messages("messages", row["messages"]))
    prompt = row.get("prompt")
    if prompt is None:
        return None
    if isinstance(prompt, str):
        if not prompt.strip():
            raise _Rejected("missing_prompt: prompt is empty")
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, dict):
        return _checked_prompt(_messages("prompt", [prompt]))
    return _checked_prompt(_messages("prompt", prompt))


def _prompt_from_conversations(raws: list[Any]) -> list[dict[str, str]] | None:
    """The prompt turns in front of the first response given as a full conversation."""
    for raw in raws:
        items = _as_list(raw)
        if items and len(items) > 1 and _is_conversation(items):
            messages = _messages("conversation", items)
            return _checked_prompt(messages[:-1])
    return None


def _checked_prompt(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    if not messages:
        raise _Rejected("missing_prompt: no prompt turns")
    if messages[-1]["role"] != "user":
        raise _Rejected("invalid_messages: the last prompt turn must be a user turn")
    if not messages[-1]["content"].strip():
        raise _Rejected("missing_prompt: the last user turn is empty")
    return messages


def _messages(field: str, value: Any) -> list[dict[str, str]]:
    items = _as_list(value)
    if items is None:
        raise _Rejected(f"invalid_messages: {field} is {type(value).__name__}, not a list of messages")
    out = []
    for j, m in enumerate(items):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise _Rejected(f"invalid_messages: {field} turn {j} has no valid role")
        if not isinstance(m.get("content"), str):
            raise _Rejected(f"invalid_messages: {field} turn {j} content is not text")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _prompt_id(row: dict[str, Any], messages: list[dict[str, str]]) -> str:
    pid = row.get("prompt_id")
    if pid is None:
        return derive_prompt_id(messages)
    if isinstance(pid, bool) or not isinstance(pid, str | int) or not str(pid).strip():
        raise _Rejected(f"invalid_prompt_id: {pid!r}")
    return str(pid)


# --- responses and reference log-probs -----------------------------------------------------------------


def _response_text(name: str, raw: Any) -> str:
    """The text of one response; of a conversation, its last turn (any prompt turns in front are not part of it)."""
    if raw is None:
        raise _Rejected(f"missing_turn: {name}")
    if isinstance(raw, str):
        text = raw
    elif isinstance(raw, dict):
        text = _assistant_turn(name, _messages(name, [raw]))
    elif _as_list(raw) is not None:
        turns = _messages(name, raw)
        if not turns:
            raise _Rejected(f"missing_turn: {name}")
        text = _assistant_turn(name, turns)
    else:
        raise _Rejected(f"invalid_messages: {name} is {type(raw).__name__}")
    if not text.strip():
        raise _Rejected(f"empty_response: {name}")
    return text


def _assistant_turn(name: str, turns: list[dict[str, str]]) -> str:
    if turns[-1]["role"] != "assistant":
        raise _Rejected(f"invalid_messages: {name} does not end with an assistant turn")
    return turns[-1]["content"]


def _ref_logps(value: Any, n: int, index: tuple[int, ...] | None) -> list[float] | None:
    if value is None:
        return None
    items = _as_list(value)
    if items is None:
        raise _Rejected(f"invalid_ref_logps: {type(value).__name__}, not a list of floats")
    if len(items) == 3 and n == 2 and index is not None:
        items = [items[i] for i in index]
    if len(items) != n:
        raise _Rejected(f"invalid_ref_logps: expected {n} values, got {len(items)}")
    out = []
    for x in items:
        if isinstance(x, bool) or not hasattr(x, "__float__"):
            raise _Rejected(f"invalid_ref_logps: {x!r} is not a number")
        x = float(x)
        if not math.isfinite(x) or x > 0:
            raise _Rejected(f"invalid_ref_logps: {x!r} is not a log-probability (finite, <= 0)")
        out.append(x)
    return out


def _as_list(value: Any) -> list[Any] | None:
    """A list from a list, tuple or array (Arrow and Ray Data hand out numpy arrays); None for anything else."""
    if isinstance(value, list | tuple):
        return list(value)
    if isinstance(value, str | bytes | dict) or not hasattr(value, "tolist"):
        return None
    out = value.tolist()
    return out if isinstance(out, list) else None
