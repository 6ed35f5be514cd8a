"""Chat templates: conversations ``[{"role", "content"}, ...]`` -> text, as transformers renders them.

A template is a Jinja string with transformers' variables (``messages``, ``add_generation_prompt``,
``eos_token``), stored where transformers keeps it: ``"chat_template"`` in ``tokenizer_config.json``
beside the model (``template_for``); the SFT stage writes its template there and the export copies it.
The default is ChatML (``<|im_start|>role\\ncontent<|im_end|>\\n``; with a byte tokenizer its markers are
plain text the model learns).

``segments`` cuts a conversation into (text, trained?) pieces: the loss of supervised fine-tuning
covers what the assistant says and the end of its turn, never the prompt or the role headers
(TRL's ``assistant_only_loss``). It renders growing prefixes of the conversation, so the template
must render a conversation's prefix as a prefix of its text (ChatML and the usual templates do);
one that does not is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

DEFAULT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
END_OF_TURN = "<|im_end|>"  # the default template's stop string for generation
ROLES = ("system", "user", "assistant", "tool")


class ChatTemplateError(ValueError):
    """A template that cannot be rendered, or that does not render prefixes as prefixes."""


def _compile(template: str):
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=False, lstrip_blocks=False)
    try:
        return env.from_string(template)
    except Exception as e:  # jinja2.TemplateSyntaxError and friends
        raise ChatTemplateError(f"chat template does not compile: {e}") from e


class ChatTemplate:
    def __init__(self, template: str = "", eos_token: str = ""):
        self.source = template or DEFAULT_TEMPLATE
        self.eos_token = eos_token
        self._t = _compile(self.source)

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        try:
            return self._t.render(
                messages=messages, add_generation_prompt=add_generation_prompt, eos_token=self.eos_token
            )
        except Exception as e:
            raise ChatTemplateError(f"chat template failed to render: {e}") from e

    def segments(self, messages: list[dict], trained_from: int = 0) -> list[tuple[str, bool]]:
        """(text, trained?) pieces whose concatenation is ``render(messages)``: assistant messages at
        index >= ``trained_from`` are trained (content and end of turn), everything else is not."""
        out: list[tuple[str, bool]] = []
        done = ""
        for i, m in enumerate(messages):
            full = self.render(messages[: i + 1])
            if m["role"] == "assistant" and i >= trained_from:
                head = self.render(messages[:i], add_generation_prompt=True)
                self._check_prefix(done, head, i)
                self._check_prefix(head, full, i)
                out += [(head[len(done) :], False), (full[len(head) :], True)]
            else:
                self._check_prefix(done, full, i)
                out.append((full[len(done) :], False))
            done = full
        return [(text, trained) for text, trained in out if text]

    @staticmethod
    def _check_prefix(a: str, b: str, i: int) -> None:
        if not b.startswith(a):
            raise ChatTemplateError(
                f"chat template: the rendering of messages[:{i}] is not a prefix of the next one, so "
                "the assistant's tokens cannot be located; use a template that renders turn by turn"
            )


def template_for(model_dir: str | Path | None) -> str:
    """The ``chat_template`` of ``tokenizer_config.json`` beside a model (run, checkpoint or export), or ""."""
    if not model_dir:
        return ""
    path = Path(model_dir)
    for d in (path, *path.parents[:3]):  # a checkpoints/<step> folder looks up to its run
        cfg = d / "tokenizer_config.json"
        if cfg.is_file():
            try:
                return json.loads(cfg.read_text()).get("chat_template", "") or ""
            except (ValueError, AttributeError):
                return ""
    return ""


def save_template(run_dir: Path, template: str) -> None:
    """Record the template a run was trained with, where transformers and ``template_for`` look."""
    path = run_dir / "tokenizer_config.json"
    cfg = json.loads(path.read_text()) if path.is_file() else {}
    cfg["chat_template"] = template
    path.write_text(json.dumps(cfg, indent=2))
