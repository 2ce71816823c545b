"""Exercise checkers for the notebooks: compare a learner's function with the package and explain what differs.

Each notebook's checkers live in a module named after its topic; they are all re-exported here, so a
notebook says `from paligemma.exercises import check_rms_norm`.
"""

from . import (attention, decoder, gemma_family, generation, kv_cache, multimodal, nano, overview, performance,
               real_gemma, rmsnorm, rope, siglip, weights)
from .checking import ExerciseError, check_close, run_candidate
from .overview import *  # noqa: F401,F403
from .rmsnorm import *  # noqa: F401,F403
from .rope import *  # noqa: F401,F403
from .attention import *  # noqa: F401,F403
from .kv_cache import *  # noqa: F401,F403
from .decoder import *  # noqa: F401,F403
from .siglip import *  # noqa: F401,F403
from .multimodal import *  # noqa: F401,F403
from .generation import *  # noqa: F401,F403
from .weights import *  # noqa: F401,F403
from .nano import *  # noqa: F401,F403
from .performance import *  # noqa: F401,F403
from .gemma_family import *  # noqa: F401,F403
from .real_gemma import *  # noqa: F401,F403

__all__ = ["ExerciseError", "check_close", "run_candidate"]
for _module in (overview, rmsnorm, rope, attention, kv_cache, decoder, siglip, multimodal, generation, weights, nano,
                performance, gemma_family, real_gemma):
    __all__ += _module.__all__
