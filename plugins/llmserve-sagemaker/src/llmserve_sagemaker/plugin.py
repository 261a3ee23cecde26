"""Registers the SageMaker routes and the ``SM_LLMSERVE_*`` settings through llmserve's hooks."""

from __future__ import annotations

import os

from llmserve.api import hookimpl
from llmserve_sagemaker.environment import settings
from llmserve_sagemaker.invocations import make_blueprint


@hookimpl
def llmserve_protocols(register):
    register("sagemaker", make_blueprint, capabilities=frozenset())


@hookimpl
def llmserve_serve_settings(given):
    return settings(os.environ)
