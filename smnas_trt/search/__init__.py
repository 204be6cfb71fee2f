"""SM-NAS search: Pareto utilities, the predictor gate, structural and modular stages, executors, run store."""

from smnas_trt.search.config import SearchConfig, load_search_config, parse_search_config
from smnas_trt.search.engine import (
    CONFIG_FILE,
    FRONT_FILE,
    STORE_FILE,
    TABLE_FILE,
    RunDir,
    Search,
    SearchResult,
    is_run_dir,
    load_front,
    load_frozen_config,
    open_run,
    run_search,
)
from smnas_trt.search.executors import InProcessExecutor, RayExecutor, make_executor
from smnas_trt.search.pareto import (
    crowding_distance,
    dominates,
    hypervolume_2d,
    non_dominated_sort,
    pareto_front,
    select_survivors,
)
from smnas_trt.search.store import Candidate, Generation, Reference, RunStore

__all__ = [
    "CONFIG_FILE",
    "FRONT_FILE",
    "STORE_FILE",
    "TABLE_FILE",
    "Candidate",
    "Generation",
    "InProcessExecutor",
    "RayExecutor",
    "Reference",
    "RunDir",
    "RunStore",
    "Search",
    "SearchConfig",
    "SearchResult",
    "crowding_distance",
    "dominates",
    "hypervolume_2d",
    "is_run_dir",
    "load_front",
    "load_frozen_config",
    "load_search_config",
    "make_executor",
    "non_dominated_sort",
    "open_run",
    "pareto_front",
    "parse_search_config",
    "run_search",
    "select_survivors",
]
