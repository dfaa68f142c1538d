"""The engine's settings, fixed when it is built: :class:`EngineOptions`.

No torch here, so the run configuration (:meth:`tilesegd.config.RunConfig.engine_options`, the
one place a run's options become engine settings) and the Dask workers' engine cache can build
and compare them cheaply. The other half of what an engine is built from, the tile geometry,
is :class:`tilesegd.inference.geometry.Geometry`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineOptions:
    """How an engine runs its network: everything but the model and the tile geometry.

    Frozen and hashable: an engine never changes its settings after it is built, and the
    settings are the key of the Dask workers' engine cache (:mod:`tilesegd.batch.cluster`).

    Attributes:
        device: ``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        precision: ``auto`` (fp16 on CUDA, fp32 on the CPU), ``fp32``, ``fp16`` or ``bf16``
            (autocast on the device).
        runtime: ``auto`` (CUDA: TensorRT if installed, else CUDA graphs; CPU: eager),
            ``eager``, ``compile``, ``cudagraph`` or ``tensorrt``
            (:mod:`tilesegd.inference.accel`).
        save_probs: also return softmax probabilities, (B, K, h, w) float16.
        confidence: also return the top class's softmax probability as uint8
            ``floor(100 p)`` (0-100), computed on the device next to the argmax.
        min_confidence: a probability in (0, 1): where the top class's probability is below it,
            the confidence value gets the :data:`~tilesegd.model.spec.CONFIDENCE_LOW` bit
            (+128); implies ``confidence``.
        trim_batches: run a short slice of tiles without padding once that was verified to give
            the same logits bit for bit (``False``: always pad to the full batch; benchmarks and
            tests compare the two).
    """

    device: str = "auto"
    precision: str = "auto"
    runtime: str = "auto"
    save_probs: bool = False
    confidence: bool = False
    min_confidence: float | None = None
    trim_batches: bool = True

    @property
    def computes_confidence(self) -> bool:
        """Whether the engine returns confidence values (``confidence`` or a threshold)."""
        return self.confidence or self.min_confidence is not None


DEFAULT_OPTIONS = EngineOptions()
"""The default settings (a frozen instance, shared)."""
