"""A model's chat template: how a conversation becomes the text the model reads.

Kept with the models (not the data layer) because loading a tokenizer gives it a template when it
has none, and everything above (training rows, evaluation prompts, served requests) renders
prompts through these same functions.
"""

from __future__ import annotations

from typing import Any

# ChatML, as SmolLM2 and TRL's `setup_chat_format` use it; given to tokenizers that have no chat
# template of their own (tiny test tokenizers, base models), so every model renders prompts the same way.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def ensure_chat_template(tokenizer: Any) -> None:
    """Give a tokenizer without a chat template the default one (in place)."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def render_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The text the model sees before it answers."""
    ensure_chat_template(tokenizer)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def render_reply(tokenizer: Any, messages: list[dict[str, str]], completion: str) -> str:
    """The text of the supervised reply, including the template's end-of-turn marker."""
    prompt = render_prompt(tokenizer, messages)
    full = tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": completion}], tokenize=False
    )
    if full.startswith(prompt):
        return full[len(prompt) :]
    return completion + (tokenizer.eos_token or "")


def prompt_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    return tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]
