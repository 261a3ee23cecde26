"""The built-in audio protocol plugin: OpenAI's speech-to-text routes, mounted when a
speech-to-text model is served."""

from __future__ import annotations

from quart import Blueprint

from llmserve.api import TRANSCRIBE, document, hookimpl
from llmserve.protocols.audio import realtime, routes
from llmserve.protocols.audio import schemas as s

_TAGS = ["audio"]


def _multipart(model) -> dict:
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


def make_blueprint() -> Blueprint:
    """/v1/audio/transcriptions, /v1/audio/translations and the /v1/realtime WebSocket."""
    bp = Blueprint("audio", __name__)
    answers = (s.Transcription, s.TranscriptionVerbose)
    for path, view, request_model, summary in (
        ("/v1/audio/transcriptions", routes.create_transcription, s.TranscriptionRequest,
         "Transcribe audio; `stream: true` sends transcript.text.delta / .done events."),
        ("/v1/audio/translations", routes.create_translation, s.TranslationRequest,
         "Translate audio into English text."),
    ):  # fmt: skip
        view = document(
            summary, request=request_model, response=answers, tags=_TAGS, **_multipart(request_model)
        )(view)
        bp.add_url_rule(path, view_func=view, methods=["POST"])
    summary = (
        "WebSocket (vLLM's Realtime API): input_audio_buffer.append / .commit in, "
        "transcription.delta / .done out."
    )
    bp.add_websocket("/v1/realtime", view_func=document(summary, tags=_TAGS)(realtime.realtime))
    return bp


@hookimpl
def llmserve_protocols(register) -> None:
    register("audio", make_blueprint, capabilities=frozenset({TRANSCRIBE}))
