"""ONNX model files: read them with ``onnx`` and run them with onnxruntime.

The only module that imports ``onnx`` or ``onnxruntime`` (inside functions: install them with
``pip install 'tilesegd[onnx]'``, or ``tilesegd[onnx-gpu]`` for the CUDA / TensorRT execution
providers). Metadata rules are in :mod:`tilesegd.model.onnx_meta`.

* :func:`read_onnx_spec`: the :class:`~tilesegd.model.model_file.ModelSpec` of a file, parsed with
  ``onnx.load(load_external_data=False)``; no session is built.
* :func:`load_onnx`: a :class:`~tilesegd.model.model_file.LoadedModel` whose ``module`` is an
  :class:`OnnxModel`, the :class:`~tilesegd.model.model_file.Runtime` the engine calls like a torch
  module (torch tensor in, torch logits out, same device).

Checked before any session exists (each a :class:`ModelFileError`, exit 3): a truncated or
corrupt file, metadata problems (see :func:`tilesegd.model.onnx_meta.spec_from_metadata`), and
external-data files outside the model's folder (every tensor's ``location`` must resolve,
symlinks followed, inside the folder of the ``.onnx`` file; nothing is ever fetched).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tilesegd.errors import ModelFileError
from tilesegd.model.onnx_meta import GraphIO, spec_from_metadata, to_logits
from tilesegd.model.spec import LoadedModel, ModelSpec, check_file

if TYPE_CHECKING:  # pragma: no cover
    import onnx
    import torch

log = logging.getLogger(__name__)

_INSTALL = "pip install 'tilesegd[onnx]' (onnx and onnxruntime)"
_FLOAT, _FLOAT16 = 1, 10  # onnx.TensorProto.FLOAT / FLOAT16
_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def require_onnx(runtime: bool = True) -> None:
    """Check that ``onnx`` (and, with ``runtime``, ``onnxruntime``) can be imported.

    Raises:
        ModelFileError: a package is missing; the message says what to install.
    """
    import importlib.util

    for name in ("onnx", "onnxruntime") if runtime else ("onnx",):
        if importlib.util.find_spec(name) is None:
            raise ModelFileError(f"ONNX model files need the {name} package: {_INSTALL}")


def load_proto(path: Path) -> onnx.ModelProto:
    """Parse an ``.onnx`` file without its external data.

    Raises:
        ModelFileError: missing, empty, truncated or corrupt file.
    """
    import onnx

    check_file(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError, onnx errors
        raise ModelFileError(
            f"{path}: not a readable ONNX model ({type(exc).__name__}: {str(exc)[:200]}); the "
            "file may be truncated or corrupt: re-export or re-copy it"
        ) from None
    g = model.graph
    if not g.node or not g.output or not g.input:
        raise ModelFileError(
            f"{path}: the ONNX model has no complete graph (nodes, inputs, outputs); the file "
            "may be truncated: re-export or re-copy it"
        )
    return model


def _graphs(graph: Any) -> Any:
    """``graph`` and every subgraph (If / Loop / Scan bodies) below it."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _graphs(sub)


def _tensors(model: onnx.ModelProto) -> Any:
    """Every TensorProto of the model that may hold external data."""
    graphs = [*_graphs(model.graph)]
    nodes = [n for g in graphs for n in g.node] + [n for f in model.functions for n in f.node]
    for g in graphs:
        yield from g.initializer
        for sp in g.sparse_initializer:
            yield from (sp.values, sp.indices)
    for node in nodes:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors


def check_external_data(model: onnx.ModelProto, path: Path) -> None:
    """Refuse external data outside the model's folder, and missing external-data files.

    Raises:
        ModelFileError: a tensor's ``location`` is absolute, escapes the folder (``..``, a
            symlink), or names a file that does not exist.
    """
    base = path.resolve().parent
    for t in _tensors(model):
        if t.data_location != 1:  # onnx.TensorProto.EXTERNAL
            continue
        loc = next((e.value for e in t.external_data if e.key == "location"), "")
        target = (base / loc).resolve()
        if not loc or os.path.isabs(loc) or not target.is_relative_to(base):
            raise ModelFileError(
                f"{path}: tensor {t.name!r} keeps its data in {loc!r}, not a relative path "
                f"inside the model's folder {base}; refused. Put the data file beside the model "
                "and set its location to the bare file name (onnx.save_model(..., location=NAME))"
            )
        if not target.is_file():
            raise ModelFileError(
                f"{path}: tensor {t.name!r} needs the external data file {target}, which is "
                "missing; copy it beside the model"
            )


def _dims(value_info: Any) -> tuple[int | None, ...] | None:
    tt = value_info.type.tensor_type
    if not tt.HasField("shape"):
        return None
    return tuple(
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim
    )


def graph_io(model: onnx.ModelProto, path: Path) -> GraphIO:
    """The graph's one image input and its first output.

    Raises:
        ModelFileError: not exactly one non-initializer input, a non-tensor input or output,
            or an input type other than float32 / float16.
    """
    init = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in init]
    if len(inputs) != 1:
        raise ModelFileError(
            f"{path}: the graph has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
            "tilesegd feeds one image tensor (batch, channels, height, width)"
        )
    inp, out = inputs[0], model.graph.output[0]
    for v in (inp, out):
        if not v.type.HasField("tensor_type"):
            raise ModelFileError(f"{path}: graph input / output {v.name!r} is not a tensor")
    if inp.type.tensor_type.elem_type not in (_FLOAT, _FLOAT16):
        raise ModelFileError(
            f"{path}: the graph's input {inp.name!r} has element type "
            f"{inp.type.tensor_type.elem_type} (onnx.TensorProto); tilesegd feeds float32 or "
            "float16 images"
        )
    return GraphIO(
        inp.name,
        _dims(inp),
        inp.type.tensor_type.elem_type == _FLOAT16,
        out.name,
        _dims(out),
        len(model.graph.output),
        out.type.tensor_type.elem_type == _FLOAT,
    )


def _read(path: Path) -> tuple[ModelSpec, GraphIO]:
    model = load_proto(path)
    check_external_data(model, path)
    io = graph_io(model, path)
    props = {p.key: p.value for p in model.metadata_props}
    spec = spec_from_metadata(props, io, str(path))
    if io.fixed_hw:  # the tile geometry must not outgrow the graph's input
        extra = {**spec.extra, "max_tile_size": min(io.fixed_hw)}
        spec = dataclasses.replace(spec, extra=extra)
    if io.n_outputs > 1:
        log.warning(
            "%s: the graph has %d outputs; tilesegd uses the first, %r",
            path,
            io.n_outputs,
            io.output_name,
        )
    return spec, io


def read_onnx_spec(path: str | os.PathLike[str]) -> ModelSpec:
    """The spec of an ONNX model file, from its metadata (no session is built).

    Raises:
        ModelFileError: see the module docstring; ``onnx`` not installed.
    """
    require_onnx(runtime=False)
    return _read(Path(path))[0]


def onnx_providers(device: torch.device, available: list[str]) -> list[Any]:
    """onnxruntime execution providers for ``device``, best first.

    CPU: ``CPUExecutionProvider``. CUDA device N: ``TensorrtExecutionProvider`` and
    ``CUDAExecutionProvider`` (``device_id`` N) where ``available`` lists them, then the CPU.
    """
    if device.type != "cuda":
        return ["CPUExecutionProvider"]
    opts = {"device_id": device.index or 0}
    return [(p, dict(opts)) for p in _GPU_PROVIDERS if p in available] + ["CPUExecutionProvider"]


def _session(path: Path, device: torch.device) -> Any:
    import onnxruntime as ort
    import torch

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # errors only
    if device.type == "cpu":  # the same thread budget as torch's kernels
        so.intra_op_num_threads = torch.get_num_threads()
        so.inter_op_num_threads = 1
    # idle threads sleep instead of spinning: the reader / writer threads share the cores
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = onnx_providers(device, ort.get_available_providers())
    try:
        return ort.InferenceSession(str(path), sess_options=so, providers=providers)
    except Exception as exc:  # onnxruntime's InvalidGraph / Fail / NotImplemented ...
        detail = " ".join(str(exc).split())[:300]
        raise ModelFileError(
            f"{path}: onnxruntime cannot load this model ({type(exc).__name__}: {detail}); it "
            "may be truncated or corrupt, or need a newer onnxruntime (opset) or operators it "
            "lacks"
        ) from None


def load_onnx(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> LoadedModel:
    """Load an ONNX model file into an :class:`OnnxModel` on ``device``.

    Raises:
        ModelFileError: see the module docstring; onnx / onnxruntime not installed.
    """
    import torch

    require_onnx()
    path = Path(path)
    spec, io = _read(path)
    dev = torch.device(device)
    session = _session(path, dev)
    return LoadedModel(OnnxModel(session, io, spec, dev, str(path)), spec, path, "onnx")


def session_model(
    path: str | os.PathLike[str], spec: ModelSpec, device: str | torch.device = "cpu"
) -> OnnxModel:
    """An :class:`OnnxModel` of the ``.onnx`` file at ``path`` that runs under ``spec`` (the
    spec of the model file it was converted from: :mod:`tilesegd.model.convert`), ignoring the
    file's own metadata.

    Raises:
        ModelFileError: onnxruntime cannot load the file, or it is not installed.
    """
    import torch

    require_onnx()
    path = Path(path)
    io = graph_io(load_proto(path), path)
    dev = torch.device(device)
    return OnnxModel(_session(path, dev), io, spec, dev, str(path))


class OnnxModel:
    """An onnxruntime session behind the engine's :class:`~tilesegd.model.model_file.Runtime`.

    ``model(x)``: float32 ``x`` (B, C, H, W) torch tensor (CPU or CUDA, any memory format) ->
    float32 logits (B, K, H, W) on ``x``'s device (:func:`tilesegd.model.onnx_meta.to_logits` turns
    probabilities and one-channel outputs into logits). A graph with a fixed input size gets
    smaller tiles zero-padded to it (bottom / right; the output is cropped back); a fixed batch
    size gets the batch in chunks of it (the last padded with zero tiles).

    On CUDA with the CUDA execution provider the input and output are bound to device memory
    (onnxruntime IO binding; no host round trip): the torch stream is synchronised first, and
    onnxruntime synchronises its own before returning. Without a GPU provider the session runs
    on the CPU and tensors are copied (with a warning). The CUDA path is untested here (no GPU).

    Attributes:
        session: the ``onnxruntime.InferenceSession``.
        io: the graph's interface.
        spec: the model's spec.
        providers: the execution providers the session uses.
    """

    def __init__(
        self, session: Any, io: GraphIO, spec: ModelSpec, device: torch.device, source: str
    ) -> None:
        self.session = session
        self.io = io
        self.spec = spec
        self.source = source
        self.providers: list[str] = list(session.get_providers())
        self.runtime = "onnxruntime"  # what run.json records (Engine.runtime)
        self._output = spec.output
        self._thresh = spec.seg_thresh
        self._bind = device.type == "cuda" and any(p in self.providers for p in _GPU_PROVIDERS)
        self._device_id = device.index or 0
        if device.type == "cuda" and not self._bind:
            log.warning(
                "%s: onnxruntime has no CUDA provider here (pip install 'tilesegd[onnx-gpu]'); "
                "the ONNX model runs on the CPU",
                source,
            )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        n, _, h, w = x.shape
        fixed = self.io.fixed_hw
        if fixed and (h > fixed[0] or w > fixed[1]):
            raise ModelFileError(
                f"{self.source}: the ONNX graph takes {fixed[0]}x{fixed[1]} inputs only, not "
                f"{h}x{w} tiles; use --tile-size {min(fixed)} (or re-export the model with "
                "`tilesegd export --format onnx --dynamic-size`)"
            )
        if fixed and (h, w) != fixed:  # padded like nodata (see ModelSpec.nodata_fill)
            fill = torch.tensor(self.spec.nodata_fill, dtype=x.dtype, device=x.device)
            fill = fill.view(1, -1, 1, 1)
            x = torch.nn.functional.pad(x - fill, (0, fixed[1] - w, 0, fixed[0] - h)) + fill
        b = self.io.fixed("input", 0)
        if b is None or b == n:
            out = self._run(x)
        else:
            parts = []
            for i in range(0, n, b):
                c = x[i : i + b]
                if len(c) < b:
                    c = torch.cat([c, c.new_zeros((b - len(c), *c.shape[1:]))])
                parts.append(self._run(c))
            out = torch.cat(parts)[:n]
        if out.ndim != 4:
            raise ModelFileError(
                f"{self.source}: the ONNX model output has shape {tuple(out.shape)}; tilesegd "
                "needs per-pixel class scores (batch, classes, height, width)"
            )
        return to_logits(out[:, :, :h, :w], self.spec.num_classes, self._output, self._thresh)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        import numpy as np
        import torch

        if self._bind and x.is_cuda:
            return self._run_cuda(x)
        dtype = torch.float16 if self.io.input_fp16 else torch.float32
        arr = x.detach().to("cpu", dtype).contiguous().numpy()
        y = self.session.run([self.io.output_name], {self.io.input_name: arr})[0]
        return torch.from_numpy(np.asarray(y)).to(x.device)

    def _run_cuda(self, x: torch.Tensor) -> torch.Tensor:
        import numpy as np
        import torch

        dtype = torch.float16 if self.io.input_fp16 else torch.float32
        x = x.to(dtype).contiguous()
        torch.cuda.current_stream(x.device).synchronize()  # onnxruntime runs on its own stream
        binding = self.session.io_binding()
        np_type = np.float16 if self.io.input_fp16 else np.float32
        binding.bind_input(
            self.io.input_name, "cuda", self._device_id, np_type, tuple(x.shape), x.data_ptr()
        )
        k = self.io.fixed("output", 1)
        if k is None or not self.io.output_fp32:  # onnxruntime allocates; a copy via the host
            binding.bind_output(self.io.output_name, "cuda", self._device_id)
            self.session.run_with_iobinding(binding)
            return torch.from_numpy(binding.copy_outputs_to_cpu()[0]).to(x.device)
        out = torch.empty((x.shape[0], k, *x.shape[2:]), dtype=torch.float32, device=x.device)
        binding.bind_output(
            self.io.output_name,
            "cuda",
            self._device_id,
            np.float32,
            tuple(out.shape),
            out.data_ptr(),
        )
        self.session.run_with_iobinding(binding)
        return out


def write_metadata(path: str | os.PathLike[str], props: dict[str, str]) -> None:
    """Set ``metadata_props`` keys of an ``.onnx`` file in place (other keys are kept).

    Raises:
        OSError: the file cannot be read or written.
    """
    import onnx

    model = onnx.load(str(path))
    keep = [(p.key, p.value) for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    for key, value in [*keep, *props.items()]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
