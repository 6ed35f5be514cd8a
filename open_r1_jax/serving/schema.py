"""Request bodies of the OpenAI API subset the server implements (pydantic: a wrong field is named in
the 400 answer). Unknown fields are ignored, as OpenAI-compatible servers do, so clients that send
``user``, ``logit_bias`` and the like still work; fields that change results and are not implemented
(``logprobs``, ``echo``, ``best_of``, ``tools``...) are refused by name rather than ignored."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

UNSUPPORTED = ("logprobs", "top_logprobs", "echo", "best_of", "suffix", "tools", "functions", "response_format")


class Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, lt=2**32)
    n: int = Field(1, ge=1, le=16)
    stream: bool = False

    @model_validator(mode="after")
    def _refuse_unsupported(self):
        for name in UNSUPPORTED:
            value = (self.model_extra or {}).get(name)
            if value not in (None, False) and not (name == "best_of" and value == 1):
                raise ValueError(f"{name}: not supported by this server")
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop: at most 4 non-empty strings")
        return self

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class CompletionRequest(Sampling):
    prompt: str | list[str] | list[int] = Field(..., description="text, texts, or token ids")

    @model_validator(mode="after")
    def _some_prompt(self):
        if isinstance(self.prompt, list) and not self.prompt:
            raise ValueError("prompt: an empty list; give a text, texts or token ids")
        return self

    def prompts(self) -> list[str | list[int]]:
        if isinstance(self.prompt, str):
            return [self.prompt]
        if self.prompt and all(isinstance(x, int) for x in self.prompt):
            return [list(self.prompt)]
        return list(self.prompt)


class Message(BaseModel):
    role: Literal["system", "user", "assistant", "tool"]
    content: str


class ChatRequest(Sampling):
    messages: list[Message] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # the newer name of max_tokens
