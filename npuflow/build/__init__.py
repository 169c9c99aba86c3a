"""One-command conversion from a YAML config (the job of ``hb_mapper makertbin``).

* :mod:`.config` - the YAML schema, validation and per-input resolution;
* :mod:`.calibration` - calibration samples from folders of raw files or images;
* :mod:`.artifacts` - staged, atomically published output files;
* :mod:`.pipeline` - :func:`build`, the stages in order;
* :mod:`.template` - the commented template of ``npuflow build --template``.
"""

from .config import BuildConfig, InputSpec, load_config, parse_config, resolve_inputs
from .pipeline import BuildResult, build
from .template import TEMPLATE

__all__ = ["TEMPLATE", "BuildConfig", "BuildResult", "InputSpec", "build", "load_config", "parse_config",
           "resolve_inputs"]
