"""Request → engine → ledger, with no HTTP in it: admission, planning from a neutral input,
one settlement for every model request, and the assembly of answers from engine events.

    inputs.py      what a request asks for, whatever its wire format
    admission.py   count the request before any work (429 here)
    planning.py    input + model → GenerationPlan(s): template, tokens, grammar, sizing
    generation.py  run a plan on its engine; `Pipeline` builds runs and settlements
    settlement.py  reserve → pending row → settle once: limits, ledger, observer
    assembly.py    engine events → content text, function calls, finish reasons
    embeddings.py  embed under the same settlement
    engine_errors.py  engine errors → what the client is told (the one translation)
    forwarding.py  inputs → an OpenAI-compatible upstream's request body
"""

from modelhost.pipeline.generation import GenerationPlan, GenerationRun, Pipeline

__all__ = ["GenerationPlan", "GenerationRun", "Pipeline"]
