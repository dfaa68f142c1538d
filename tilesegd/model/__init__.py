"""Model files: their spec, TorchScript / ONNX loading, the measured halo."""
