"""The checks of a transcription request's options against the speech model that serves it."""

from __future__ import annotations

from llmserve.errors import InvalidRequestError


def check_speech_options(
    name: str, runner, task: str, language: str | None, temperature: float
) -> str | None:
    """Raise a 400 naming the field for an option ``runner`` cannot serve; return the language
    normalised (lower case, None when blank)."""
    if task not in ("transcribe", "translate"):
        raise InvalidRequestError(f"unknown task {task!r}", param="task")
    if language is not None:
        language = language.strip().lower() or None
    if language is not None and language not in runner.languages:
        raise InvalidRequestError(
            f"Language {language!r} is not supported by `{name}`; supported: {', '.join(runner.languages)}.",
            param="language",
        )
    if task == "translate" and not runner.multilingual:
        raise InvalidRequestError(f"The model `{name}` is English-only and cannot translate.", param="model")
    if not 0.0 <= temperature <= 1.0:
        raise InvalidRequestError("temperature must be between 0 and 1", param="temperature")
    return language
