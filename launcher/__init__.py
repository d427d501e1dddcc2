"""Run Triton Inference Server with TensorRT-LLM across the pods of a LeaderWorkerSet group."""

__version__ = "0.1.0"
