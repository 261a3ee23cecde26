"""An example tool-call parser plugin for llmserve."""
