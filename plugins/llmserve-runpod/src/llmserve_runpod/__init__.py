"""A RunPod serverless worker running llmserve in process, with worker-vllm's inputs and
configuration; and ``/openai/v1/...`` on the HTTP server."""
