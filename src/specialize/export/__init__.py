"""Export a trained run for deployment: merged transformers weights, GGUF for llama.cpp, PEFT
adapter directories for vLLM / LoRAX. Each export carries a model card and is checked before it
is renamed into place."""

from specialize.export.run import FORMATS, ExportResult, export_run

__all__ = ["FORMATS", "ExportResult", "export_run"]
