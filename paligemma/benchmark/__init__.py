"""`python -m paligemma.benchmark`: prefill and decode speed of this package against transformers, side by side.

Random weights (nothing is downloaded); transformers gets the very same weights through save/load.
Every number comes from this one run on this one machine, so the ratios are fair comparisons.
"""

from .cli import main
from .load_memory import load_peak_memory
from .report import device_description, format_table
from .speed import (DTYPES, benchmark_config, decode_rate, make_inputs, measure_all, memory_bandwidth_gbps,
                    no_cache_generate, run, transformers_candidates)

__all__ = ["DTYPES", "benchmark_config", "decode_rate", "device_description", "format_table", "load_peak_memory",
           "main", "make_inputs", "measure_all", "memory_bandwidth_gbps", "no_cache_generate", "run",
           "transformers_candidates"]
