"""The batching engine: continuous batching of generation requests over one base model and many
LoRA adapters, in-place KV cache, prefix cache, batched mixed-adapter LoRA layers.

Below the HTTP server (`serve`) and the evaluation (`evaluate`), so both run the model the same
way: the server puts it behind the OpenAI-compatible API, the evaluation measures the fine-tuned
adapter as such a server would serve it. It knows adapters only as `AdapterSource` (a key and a
PEFT directory), not as registry records.
"""

from specialize.batching.adapter_files import AdapterDir, AdapterLoadError, AdapterSource
from specialize.batching.adapters import ResidentAdapters
from specialize.batching.engine import Engine
from specialize.batching.requests import Completion, EngineStopped, QueueFull, SamplingParams

__all__ = [
    "AdapterDir",
    "AdapterLoadError",
    "AdapterSource",
    "Completion",
    "Engine",
    "EngineStopped",
    "QueueFull",
    "ResidentAdapters",
    "SamplingParams",
]
