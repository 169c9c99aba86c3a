"""Imports every command module so that each registers itself on the app (one line each), in the
order of the workflow: ``npuflow --help`` and docs/cli.md list the commands in this order."""

from . import targets_cmd  # noqa: F401
from . import check_cmd  # noqa: F401
from . import quantize_cmd  # noqa: F401
from . import analyze_cmd  # noqa: F401
from . import qat_cmd  # noqa: F401
from . import compile_cmd  # noqa: F401
from . import run_cmd  # noqa: F401
from . import info_cmd  # noqa: F401
from . import ort_export_cmd  # noqa: F401
from . import modify_cmd  # noqa: F401
from . import pack_cmd  # noqa: F401
from . import graph_cmd  # noqa: F401
from . import compare_cmd  # noqa: F401
from . import perf_cmd  # noqa: F401
from . import bench_cmd  # noqa: F401
from . import build_cmd  # noqa: F401
from . import prune_cmd  # noqa: F401
