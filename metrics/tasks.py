"""The task registry now lives in the bottom layer, ``ecgtasks.registry``; this module re-exports it, so
``from metrics.tasks import get_task`` keeps working."""

from ecgtasks.registry import *  # noqa: F401,F403
from ecgtasks.registry import _AVB1, _REGISTRY  # noqa: F401
