"""The runtimes a model can run under (``--runtime``); names only, no torch, so the config and
the CLI can list them without importing the engine."""

# auto: the best available for the device (CPU: onnxruntime when installed, else eager);
# eager: torch as is; compile: torch.compile; cudagraph: CUDA graphs over fixed batches;
# tensorrt: torch-tensorrt (the [tensorrt] extra); onnxruntime: the model file converted once to
# ONNX (tilesegd.model.convert) and run by onnxruntime (the [onnx] extra)
RUNTIMES = ("auto", "eager", "compile", "cudagraph", "tensorrt", "onnxruntime")
