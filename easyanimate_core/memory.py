"""Where models live between uses, and how their weights are stored, as context managers that leave nothing behind.

Modes (the names the command line and the loader node offer):

* ``full``: every model stays on the compute device.
* ``model_cpu_offload``: each model (text encoder, transformer, VAE) waits on the offload device and moves to the
  compute device only while it is used.
* ``model_cpu_offload_and_qfloat8``: the same, with the transformer's and the text encoder's linear weights stored
  as optimum-quanto qfloat8 (scaled fp8); norms, biases, embeddings, the patch embedding, the timestep and text
  projections, the modulation layers and the output projection stay in the model dtype.
* ``model_cpu_offload_and_fp8_cast``: the plain float8_e4m3fn cast of the official code (no scaling, same kept
  layers), computed layer by layer in the model dtype: for parity with the official fp8 results.
* ``sequential_cpu_offload``: weights stay on the offload device and each layer visits the compute device only for
  its own forward (accelerate's hooks); the slowest mode and the one with the least VRAM.
* ``block_swap``: the first ``blocks_on_gpu`` transformer blocks and every small layer stay on the compute device;
  the other blocks stream in one at a time (the next one prefetched on a side CUDA stream) and leave after use.

Every context manager puts modules back and removes its hooks in a ``finally``: an interrupt or an error never
leaves a model on the wrong device or hooked.
"""

from __future__ import annotations

import fnmatch
import functools
import itertools
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .chunking import whole_tensors

logger = logging.getLogger(__name__)

MEMORY_MODES: tuple[str, ...] = ("full", "model_cpu_offload", "model_cpu_offload_and_qfloat8",
                                 "model_cpu_offload_and_fp8_cast", "sequential_cpu_offload", "block_swap")
FP8_MODES = {"model_cpu_offload_and_qfloat8": "qfloat8", "model_cpu_offload_and_fp8_cast": "fp8_cast"}
# Share of the free memory an estimate may use. Estimates count the tensors PyTorch returns; convolution and GEMM
# workspaces, the caching allocator's rounding and fragmentation, and tensors of other threads come on top of them,
# so a fifth of the free memory is left for those.
MEMORY_MARGIN = 0.8
_MEMINFO = Path("/proc/meminfo")
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


def execution_device(module: nn.Module) -> torch.device:
    """Where ``module`` computes: accelerate's execution device while offload hooks hold it, else its weights'."""
    for child in module.modules():
        device = getattr(getattr(child, "_hf_hook", None), "execution_device", None)
        if device is not None:
            return torch.device(device)
    return next(module.parameters()).device


def canonical_device(device: torch.device | str) -> torch.device:
    """``device`` as tensors on it report it: an accelerator without an index gets the current one ("cuda" ->
    "cuda:0")."""
    device = torch.device(device)
    if device.type == "cpu" or device.index is not None:
        return device
    backend = getattr(torch, device.type, None)
    if not hasattr(backend, "current_device"):  # meta and other devices without an index
        return device
    return torch.device(device.type, backend.current_device() if backend.is_available() else 0)


def _tensor_bytes(tensor: torch.Tensor) -> int:
    if hasattr(tensor, "__tensor_flatten__"):  # quanto's fp8 weights: count the stored payload and scales
        names, _ = tensor.__tensor_flatten__()
        return sum(_tensor_bytes(getattr(tensor, name)) for name in names)
    return tensor.numel() * tensor.element_size()


def module_bytes(module: nn.Module) -> int:
    return sum(_tensor_bytes(t) for t in (*module.parameters(), *module.buffers()))


def free_memory(device: torch.device | str) -> int | None:
    """Bytes that tensors on ``device`` can still take, or None where that is unknown (then nothing is planned from it).

    CUDA: the driver's free memory plus what PyTorch's caching allocator holds unused. CPU: ``MemAvailable`` of
    ``/proc/meminfo`` (Linux).
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type != "cpu":
        return None
    try:
        lines = _MEMINFO.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024  # the file counts kB
    return None


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None without glibc (looked up once: ``find_library`` runs ``ldconfig``)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None


def _release_freed_host_memory() -> None:
    """Hand memory freed by a conversion back to the system: glibc otherwise keeps the old bf16 weights' pages."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _kept(name: str, keep: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in keep)


def fp8_targets(module: nn.Module, keep: tuple[str, ...], within: str = "") -> list[str]:
    """Names of the Linears of ``module`` under ``within`` (a submodule name; "" = all) not matched by ``keep`` and
    not stored in fp8 yet (quanto's QLinear holds a ``weight_qtype``, fp8_cast an fp8 weight), so a second call
    skips them. Works on any layer namespace's Linears, ComfyUI's included (they subclass ``nn.Linear``)."""
    scope = module.get_submodule(within) if within else module
    return [name for name, layer in scope.named_modules(prefix=within)
            if isinstance(layer, nn.Linear) and not hasattr(layer, "weight_qtype")
            and layer.weight.dtype not in FP8_DTYPES and not _kept(name, keep)]


def store_weights_in(module: nn.Module, dtype: torch.dtype, keep: tuple[str, ...], within: str = "") -> None:
    """Give the Linears :func:`fp8_targets` names a weight of ``dtype`` (their bias keeps its dtype). On a model
    still being built (on meta, before its weights are read) this is the storage choice of fp8_cast."""
    for name in fp8_targets(module, keep, within):
        layer = module.get_submodule(name)
        if type(layer) is nn.Linear:
            raise TypeError(f"{name} is a torch.nn.Linear, which computes in its weight's dtype: build the model with "
                            f"the layer namespace's Linear (ops.adopt_linears) before storing it in {dtype}.")
        layer.weight = nn.Parameter(layer.weight.detach().to(dtype), requires_grad=False)


def check_fp8_kind(kind: str | None) -> None:
    """Refuse an fp8 storage kind other than None, "qfloat8" or "fp8_cast" (before any weight is read)."""
    if kind not in (None, "qfloat8", "fp8_cast"):
        raise ValueError(f"fp8 kind {kind!r}: expected 'qfloat8' or 'fp8_cast' (or None for the model dtype).")


def store_in_fp8(module: nn.Module, kind: str, keep: tuple[str, ...] | None = None, *, within: str = "") -> nn.Module:
    """Store ``module``'s linear weights in fp8 in place (``kind`` = "qfloat8" or "fp8_cast"), except ``keep``.

    ``keep`` holds fnmatch patterns of full module names; by default the model's own ``HIGH_PRECISION``. fp8_cast
    only changes the weights' dtype: the namespace's Linear (``ops.Linear``) computes in its input's dtype.
    ``within`` limits the conversion to one submodule, so a loader can convert each block as soon as it is read
    (``loading.load_transformer(fp8=...)``)."""
    check_fp8_kind(kind)
    keep = module.HIGH_PRECISION if keep is None else keep
    if kind == "fp8_cast":
        store_weights_in(module, torch.float8_e4m3fn, keep, within)
    elif targets := fp8_targets(module, keep, within):
        from optimum.quanto import freeze, qfloat8, quantize

        quantize(module, weights=qfloat8, include=targets)  # exact names: fnmatch without wildcards
        for name in targets:
            freeze(module.get_submodule(name))
    _release_freed_host_memory()  # per block while loading, too: else the freed bf16 blocks pile up in the heap
    return module


@dataclass(frozen=True)
class Placement:
    mode: str
    compute: torch.device
    offload: torch.device
    blocks_on_gpu: int | None = None  # block_swap: transformer blocks kept on the compute device; None: those that fit
    # Called with the bytes a model needs before it moves to the compute device (ComfyUI frees other models).
    make_room: Callable[[int], None] | None = None

    def __post_init__(self) -> None:
        # One spelling per device, so that placements compare equal to the devices tensors report ("cuda" vs
        # "cuda:0" made block swap fetch every streamed block twice).
        object.__setattr__(self, "compute", canonical_device(self.compute))
        object.__setattr__(self, "offload", canonical_device(self.offload))
        if self.mode not in MEMORY_MODES:
            raise ValueError(f"memory mode {self.mode!r}: expected one of {MEMORY_MODES}.")
        if self.blocks_on_gpu is not None and self.blocks_on_gpu < 0:
            raise ValueError(f"blocks_on_gpu = {self.blocks_on_gpu}: expected 0 or more, or None for as many as fit.")

    @property
    def resting_device(self) -> torch.device:
        return self.compute if self.mode == "full" else self.offload

    @property
    def fp8(self) -> str | None:
        return FP8_MODES.get(self.mode)

    @contextmanager
    def active(self, module: nn.Module, working_bytes: int = 0) -> Iterator[nn.Module]:
        """``module`` ready to run on the compute device for the block; afterwards exactly as before.

        ``working_bytes`` are the activations expected beside the weights (the transformer's:
        ``EasyAnimateTransformer.activation_bytes``): ComfyUI is asked to free room for them too, and block_swap's
        automatic block count leaves them free."""
        if self.mode == "full":
            yield module
        elif self.mode == "sequential_cpu_offload":
            with _sequential(module, self.compute, self.offload):
                yield module
        elif self.mode == "block_swap" and hasattr(module, "repeated_blocks"):
            # The transformer keeps its first blocks_on_gpu blocks; the text encoder, used once, keeps none.
            resident = self.blocks_on_gpu if hasattr(module, "transformer_blocks") else 0
            with _block_swap(module, module.repeated_blocks(), self.compute, resident, self.make_room, working_bytes):
                yield module
        else:
            with _whole(module, self.compute, self.offload, self.make_room, working_bytes):
                yield module


def _empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


@contextmanager
def _whole(module: nn.Module, compute, offload, make_room, working_bytes: int) -> Iterator[None]:
    if make_room is not None and compute != offload:
        make_room(module_bytes(module) + working_bytes)
    try:
        module.to(compute)
        yield
    finally:
        module.to(offload)
        _empty_cache(compute)


@contextmanager
def _sequential(module: nn.Module, compute, offload) -> Iterator[None]:
    """accelerate's per-layer offload hooks; they park the weights on the meta device, so the original tensors are
    put back when the hooks go."""
    from accelerate import cpu_offload
    from accelerate.hooks import remove_hook_from_submodules

    module.to(offload)
    owners = dict(module.named_modules())
    saved = [(owners[name.rpartition(".")[0]], name.rpartition(".")[2], kind, tensor)
             for kind, named in (("_parameters", module.named_parameters()), ("_buffers", module.named_buffers()))
             for name, tensor in named]
    own_forward = {name for name, child in owners.items() if "forward" in vars(child)}
    try:
        cpu_offload(module, execution_device=compute)
        with whole_tensors():  # the hooks copy each layer's weights per call: chunks would copy them per chunk
            yield
    finally:
        remove_hook_from_submodules(module)
        for owner, attr, kind, tensor in saved:
            getattr(owner, kind)[attr] = tensor
        # accelerate puts the old forward back as an instance attribute (a bound method: a reference cycle that
        # also hides later patches of the class); modules that had none get none.
        for name, child in owners.items():
            if name not in own_forward:
                vars(child).pop("forward", None)
        _empty_cache(compute)


def _blocks_that_fit(block_bytes: list[int], fixed_bytes: int, compute: torch.device) -> int:
    """How many of the first blocks fit in :data:`MEMORY_MARGIN` of the free memory of ``compute`` beside
    ``fixed_bytes`` (the other resident weights and the activations) and two streamed blocks in flight."""
    free = free_memory(compute)
    if free is None:
        return 0
    budget = MEMORY_MARGIN * free - fixed_bytes
    if sum(block_bytes) <= budget:
        count = len(block_bytes)
    else:
        budget -= 2 * max(block_bytes)
        count = next((i for i, total in enumerate(itertools.accumulate(block_bytes)) if total > budget), len(block_bytes))
    logger.info("block_swap: %d of %d blocks stay on %s (%.2f GiB free, %d%% usable; %.2f GiB for the other weights "
                "and the activations)", count, len(block_bytes), compute, free / 2**30, round(MEMORY_MARGIN * 100),
                fixed_bytes / 2**30)
    return count


@contextmanager
def _block_swap(module: nn.Module, blocks: list[nn.Module], compute, blocks_on_gpu: int | None, make_room,
                working_bytes: int) -> Iterator[None]:
    """Resident: every tensor outside ``blocks`` and the first ``blocks_on_gpu`` blocks (None: as many as fit).
    Streamed: the rest.

    No weight is copied back: each parameter keeps its host tensor, pointing at a device copy only while needed. A
    streamed block is fetched on a side CUDA stream while the block before it computes (the last one fetches the
    first for the next call); the compute stream waits for that copy before the block runs, and the copies are
    recorded on the compute stream so the allocator never reuses their memory under a running kernel. Host copies
    of streamed weights are page-locked in place for the duration, so the copies can overlap the compute.
    """
    block_bytes = [module_bytes(b) for b in blocks]
    total_bytes = module_bytes(module)
    other_bytes = total_bytes - sum(block_bytes)
    if blocks_on_gpu is None:
        if make_room is not None:
            make_room(total_bytes + working_bytes)
        blocks_on_gpu = _blocks_that_fit(block_bytes, other_bytes + working_bytes, compute)
    elif make_room is not None:
        in_flight = 2 * max(block_bytes[blocks_on_gpu:], default=0)
        make_room(other_bytes + sum(block_bytes[:blocks_on_gpu]) + in_flight + working_bytes)
    streamed = blocks[blocks_on_gpu:]
    streamed_params = {p for block in streamed for p in block.parameters()}
    side = torch.cuda.Stream(compute) if compute.type == "cuda" else None
    current = torch.cuda.current_stream(compute) if side is not None else None
    tensors = [*module.parameters(), *module.buffers()]
    host = {t: t.data for t in tensors}
    handles, registered = [], []

    def fetch(block: nn.Module) -> None:
        if side is None:
            for p in block.parameters():
                p.data = host[p].to(compute)
            return
        side.wait_stream(current)
        with torch.cuda.stream(side):
            for p in block.parameters():
                p.data = host[p].to(compute, non_blocking=True)

    def before(index: int):
        def hook(block, args):
            if next(block.parameters()).device != compute:
                fetch(block)
            if side is not None:
                current.wait_stream(side)
                for p in block.parameters():
                    p.data.record_stream(current)
            following = streamed[(index + 1) % len(streamed)]
            if following is not block:
                fetch(following)

        return hook

    def after(block, args, output):
        for p in block.parameters():
            p.data = host[p]
        return output

    try:
        if side is not None:
            registered += _page_lock([host[p] for p in streamed_params])
        for t in tensors:
            if t not in streamed_params:
                t.data = host[t].to(compute)
        for index, block in enumerate(streamed):
            handles.append(block.register_forward_pre_hook(before(index)))
            handles.append(block.register_forward_hook(after))
        if streamed:
            fetch(streamed[0])
        yield
    finally:
        for handle in handles:
            handle.remove()
        if side is not None:
            current.wait_stream(side)
            side.synchronize()  # the last prefetch may still read page-locked host memory that is unlocked below
        for t, data in host.items():
            t.data = data
        for pointer in registered:
            torch.cuda.cudart().cudaHostUnregister(pointer)
        _empty_cache(compute)


def _page_lock(tensors: list[torch.Tensor], min_bytes: int = 1 << 20) -> list[int]:
    """Page-lock host tensors in place (no copy; ``pin_memory()`` would copy them into power-of-two blocks, 1.8x
    the weights) so their copies to the GPU run beside the compute. Tensors under ``min_bytes`` stay pageable: they
    may share a page with a neighbour, which can be locked only once, and copy quickly anyway."""
    cudart = torch.cuda.cudart()
    locked = []
    for tensor in tensors:
        size = tensor.numel() * tensor.element_size()
        if tensor.device.type != "cpu" or size < min_bytes or tensor.is_pinned() or not tensor.is_contiguous():
            continue
        if int(cudart.cudaHostRegister(tensor.data_ptr(), size, 0)) == 0:
            locked.append(tensor.data_ptr())
        elif hasattr(cudart, "cudaGetLastError"):
            cudart.cudaGetLastError()  # leave no sticky error for the next kernel launch check
    return locked

