"""``python -m llmserve_runpod``: load the models, then take RunPod jobs.

Configuration comes from the environment (``llmserve_runpod.env``); a bad value stops the worker
before any model is loaded, naming the variable. RunPod's own arguments (``--rp_serve_api
--rp_api_port N`` for the local test server, ...) pass through to the SDK.
"""

from __future__ import annotations

import os
import sys

from llmserve.api import LLMServeError, load_app
from llmserve_runpod.env import config_from_env, name_variables, settings_from_env, variables


def main() -> int:
    try:
        config = config_from_env(os.environ)
        settings = settings_from_env(os.environ)
        app = load_app(config)
    except LLMServeError as exc:
        print(f"error: {name_variables(exc.message, variables(os.environ))}", file=sys.stderr)
        return 2
    import runpod

    from llmserve_runpod.handler import Worker

    worker = Worker(app, settings)
    runpod.serverless.start(
        {
            "handler": worker.handler,
            "return_aggregate_stream": True,
            "concurrency_modifier": worker.concurrency,
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
