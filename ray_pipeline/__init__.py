"""ray_pipeline: tune, benchmark, select and train Hugging Face classifiers on Ray.

The public API mirrors the CLI::

    import ray_pipeline
    cfg = ray_pipeline.load_config("config/experiment/demo.yaml", ["hpo.num_samples=2"])
    ray_pipeline.run(cfg, stages=["hpo"])
"""

from ray_pipeline.errors import ConfigError, PipelineError
from ray_pipeline.loading import load_config
from ray_pipeline.pipeline import STAGE_ORDER, run
from ray_pipeline.run_mode import RunMode, get_run_mode
from ray_pipeline.schema import PipelineConfig

__version__ = "0.1.0"

__all__ = [
    "STAGE_ORDER",
    "ConfigError",
    "PipelineConfig",
    "PipelineError",
    "RunMode",
    "get_run_mode",
    "load_config",
    "run",
]
