"""Classroom support for the notebooks: exercise checkers, figure saving, reuse of earlier notebooks' code.

Each notebook's checkers live in a module named after its topic; they are all re-exported here, so a
notebook says `from paligemma.exercises import check_rms_norm`. A checker compares the learner's
function with the package and, when they differ, says in one line what the usual mistake was.
`save_figure` and `measured` (figures.py) let a notebook run from any folder without touching the
committed figures; `from_notebook` (pieces.py) reuses a function built in an earlier notebook.
"""

from . import (attention, cache_size, decoder, gemma_family, generation, kv_cache, multimodal, nano, overview,
               performance, real_gemma, real_speed, rmsnorm, rope, siglip, weights)
from .checking import ExerciseError, check_close, run_candidate
from .figures import measured, save_figure
from .pieces import from_notebook
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
from .cache_size import *  # noqa: F401,F403
from .gemma_family import *  # noqa: F401,F403
from .real_gemma import *  # noqa: F401,F403
from .real_speed import *  # noqa: F401,F403

__all__ = ["ExerciseError", "check_close", "run_candidate", "save_figure", "measured", "from_notebook"]
for _module in (overview, rmsnorm, rope, attention, kv_cache, decoder, siglip, multimodal, generation, weights, nano,
                performance, cache_size, gemma_family, real_gemma, real_speed):
    __all__ += _module.__all__
