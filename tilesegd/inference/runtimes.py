"""The runtimes a model can run under (``--runtime``); names only, no torch, so the config and
the CLI can list them without importing the engine."""

# auto: the best available for the device; eager: torch as is; compile: torch.compile;
# cudagraph: CUDA graphs over fixed batches; tensorrt: torch-tensorrt (the [tensorrt] extra)
RUNTIMES = ("auto", "eager", "compile", "cudagraph", "tensorrt")
