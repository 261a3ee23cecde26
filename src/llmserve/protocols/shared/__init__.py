"""What the protocol plugins share: request parsing, prompts, sampling-params mapping, streams,
SSE and chat templates. Protocols reach these through ``llmserve.api``."""
