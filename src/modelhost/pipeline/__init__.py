"""Request → engine → ledger: the generation path shared by every generating endpoint."""

from modelhost.pipeline.generation import GenerationPipeline, GenerationPlan, GenerationRun

__all__ = ["GenerationPipeline", "GenerationPlan", "GenerationRun"]
