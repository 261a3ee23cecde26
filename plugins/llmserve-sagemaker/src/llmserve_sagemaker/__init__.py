"""SageMaker's /invocations route for llmserve."""
