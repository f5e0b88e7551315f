"""The OpenVINO backend: our backbone converted at a fixed square input size with a dynamic batch, compiled for an
OpenVINO device (CPU, GPU, NPU) at fp32 or bf16 (fp16 on GPUs/NPUs), or int8 on CPUs (NNCF, `ov_int8`), and
cached compiled on disk.

Only the fixed-size path (224 px, what the indexer and queries use) runs here; inputs of any other size (dense
overlays at aspect-preserving sizes) go to the torch backend. Every newly compiled model is checked against torch fp32
on a probe image before it is used or cached, so a conversion that gives wrong numbers falls back instead.
"""

from __future__ import annotations

import hashlib
import io
import threading
import time

import numpy as np
import torch
import torch.nn.functional as F

from engine.runtime import BackendUnavailable, import_openvino, log, ov_cache
from engine.runtime.ov_quick import shared_compiled

# Converted (not yet compiled) models of this process, by weights hash and size: converting traces the whole model
# (seconds even for a small one), compiling for another precision or device does not need it again.
_CONVERTED: dict[tuple[str, int], object] = {}
_CONVERTED_MAX = 4

# Minimum CLS cosine to torch fp32 on the probe image (issue 11's parity targets, which the tests check on photos).
MIN_COSINE = {"f32": 0.9999, "bf16": 0.999, "f16": 0.999, "int8": 0.995}
# Builds that failed in this process, by cache file name, with why: the folder watcher makes an Extractor per batch,
# and a failed conversion or quantisation (seconds to tens of seconds) must not be paid again for each one.
_FAILED: dict[str, str] = {}
HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


class FixedSizeBackbone(torch.nn.Module):
    """The backbone's forward pass with the position embedding precomputed for one input size.

    The pos-embed interpolation (bicubic, with scale factors) cannot be traced; at a fixed size it is a constant.
    Same token layout as `DinoVisionTransformer.prepare_tokens_with_masks`: CLS, registers, patches.
    """

    def __init__(self, model: torch.nn.Module, size: int) -> None:
        super().__init__()
        self.model = model
        grid = size // model.patch_size
        dummy = torch.zeros(1, 1 + grid * grid, model.embed_dim)
        with torch.no_grad():
            pos = model.interpolate_pos_encoding(dummy, size, size).detach().float().clone()
        self.register_buffer("pos", pos, persistent=False)
        self.registers = int(model.num_register_tokens)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Every normed output token: CLS, registers, patches."""
        m, b = self.model, x.shape[0]
        t = m.patch_embed(x)
        t = torch.cat([m.cls_token.expand(b, -1, -1), t], dim=1) + self.pos
        if m.register_tokens is not None:
            t = torch.cat([t[:, :1], m.register_tokens.expand(b, -1, -1), t[:, 1:]], dim=1)
        for blk in m.blocks:
            t = blk(t)
        return m.norm(t)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.tokens(x)
        return t[:, 0], t[:, 1 + self.registers :]


class FixedSizeDinoTxt(torch.nn.Module):
    """dino.txt's image side (engine.models.dinotxt.DinoTxtImageEncoder) at one input size: the frozen backbone's
    tokens through the vision head; the same 'CLS' (encode_image) and patch layout as its forward_features."""

    def __init__(self, encoder: torch.nn.Module, size: int) -> None:
        super().__init__()
        self.backbone = FixedSizeBackbone(encoder.tower.backbone, size)
        self.head = encoder.tower.head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.head(self.backbone.tokens(x))
        cls, patches = t[:, 0], t[:, 1 + self.backbone.registers :]
        return torch.cat([cls, patches.mean(dim=1)], dim=-1), torch.cat([torch.zeros_like(patches), patches], -1)


def fixed_size(model: torch.nn.Module, size: int) -> torch.nn.Module:
    """The traceable fixed-size form of a backbone, or of dino.txt's image side (which has a `tower`)."""
    return (FixedSizeDinoTxt(model, size) if hasattr(model, "tower") else FixedSizeBackbone(model, size)).eval()


def _summary(e: BaseException) -> str:
    """The informative line of an OpenVINO conversion error (which operations it has no rule for)."""
    lines = [ln.strip(" -") for ln in str(e).splitlines() if ln.strip()]
    for ln in lines:
        if "No conversion rule" in ln or "Conversion is failed" in ln:
            return ln
    return lines[0] if lines else type(e).__name__


def weights_hash(model: torch.nn.Module) -> str:
    """blake2b over the folded backbone's tensors (names, shapes, float32 values)."""
    h = hashlib.blake2b(digest_size=32)
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to(torch.float32).contiguous().cpu() if tensor.is_floating_point() else tensor.cpu()
        h.update(name.encode())
        h.update(repr(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def probe_image(size: int) -> torch.Tensor:
    """A deterministic photo-like input (smooth gradients and edges, ImageNet-normalised range)."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    r = torch.sin(3 * xx) * 1.5
    g = torch.where(xx * xx + yy * yy < 0.4, 1.2, -0.8)
    b = torch.cos(2 * yy + xx) * 1.2
    return torch.stack([r, g, b])[None]


class OpenVinoRuntime:
    """A compiled OpenVINO model of the backbone at `input_size`; raises BackendUnavailable when it cannot be had."""

    name = "openvino"

    def __init__(self, folded: torch.nn.Module, precision: str, device: str = "CPU", input_size: int = 224,
                 use_cache: bool = True, calibration: torch.Tensor | None = None) -> None:
        """`calibration`: (N,3,S,S) photos for int8 (default: the sample library, `ov_int8.calibration_images`)."""
        if precision not in (*HINTS, "int8"):
            raise BackendUnavailable(f"OpenVINO runs fp32, bf16, fp16 or int8 here, not {precision}")
        if precision == "int8" and device != "CPU":
            raise BackendUnavailable(f"int8 runs on OpenVINO's CPU device here, not {device}")
        ov = import_openvino()
        self.precision = precision
        self.input_size = input_size
        self.device = device
        self.calibration = calibration  # None: the sample library, decoded only if the model must be quantised
        if precision == "int8":
            from engine.device import cpu_has_fast_bf16
            from engine.runtime import ov_int8

            nncf_version = ov_int8.nncf_version()  # raises BackendUnavailable without NNCF, before any work
            self.hint = "bf16" if cpu_has_fast_bf16() else "f32"  # for the operations left in float
            cal = (ov_int8.sample_digest(input_size) if calibration is None
                   else ov_int8.calibration_digest(calibration))
            key_precision = f"int8-{self.hint}-{cal}"
            key_version = f"{ov.get_version()}+nncf{nncf_version}"
        else:
            self.hint = HINTS[precision]
            key_precision, key_version = self.hint, ov.get_version()
        self.timings: dict[str, float] = {}
        self.cache_status = "off"
        self.probe_cosine: float | None = None
        core = ov.Core()
        # Listing the devices loads every plugin (the GPU one probes OpenCL): only for the devices that need it.
        if device != "CPU" and device.split(".")[0] not in {d.split(".")[0] for d in core.available_devices}:
            have = ", ".join(core.available_devices)
            raise BackendUnavailable(f"OpenVINO sees no {device} device (it has: {have})")
        self.config = {"INFERENCE_PRECISION_HINT": self.hint, "PERFORMANCE_HINT": "LATENCY"}
        t = time.perf_counter()
        digest = weights_hash(folded)
        self.timings["hash_s"] = time.perf_counter() - t
        key = ov_cache.CacheKey(digest, input_size, key_precision,
                                f"{device}:{core.get_property(device, 'FULL_DEVICE_NAME')}", key_version,
                                ov_cache.conversion_code())
        self.key = key
        self.cache_path = ov_cache.cache_folder() / key.filename() if use_cache else None
        if key.filename() in _FAILED:
            raise BackendUnavailable(f"{_FAILED[key.filename()]} (earlier in this session; not tried again)")
        try:
            self._build(ov, core, folded, key, use_cache)
        except BackendUnavailable as e:
            _FAILED[key.filename()] = str(e)
            raise

    # ------------------------------------------------------------------------------------------- building
    def _build(self, ov, core, folded: torch.nn.Module, key: ov_cache.CacheKey, use_cache: bool) -> None:
        compiled = self._from_cache(core, key) if use_cache else None
        if compiled is None:
            compiled = self._convert_and_compile(ov, core, folded, key.weights)
            if self.cache_path is not None:
                self._store(compiled, key)
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.lock = threading.Lock()
        if self.cache_status != "hit":  # a cached blob passed this check when it was built, and its checksum holds
            t = time.perf_counter()
            self._check(folded)
            self.timings["check_s"] = time.perf_counter() - t

    def _from_cache(self, core, key: ov_cache.CacheKey):
        assert self.cache_path is not None
        shared = shared_compiled(self.cache_path)  # the quick start imported this very blob already
        if shared is not None:
            self.cache_status = "hit"
            return shared
        try:
            blob = ov_cache.load(self.cache_path, key)
        except ov_cache.CacheInvalid as e:
            log.warning("compiled-model cache %s is %s; rebuilding it", self.cache_path, e)
            self.cache_status = "rebuilt"
            return None
        if blob is None:
            self.cache_status = "new"
            return None
        t = time.perf_counter()
        try:
            compiled = core.import_model(io.BytesIO(blob), self.device, self.config)
        except Exception as e:  # OpenVINO raises RuntimeError subclasses for a blob it rejects
            log.warning("compiled-model cache %s could not be loaded (%s); rebuilding it", self.cache_path,
                        str(e).splitlines()[0] if str(e) else type(e).__name__)
            self.cache_status = "rebuilt"
            return None
        self.timings["import_s"] = time.perf_counter() - t
        self.cache_status = "hit"
        return compiled

    def _convert_and_compile(self, ov, core, folded: torch.nn.Module, digest: str):
        import warnings

        t = time.perf_counter()
        model = _CONVERTED.get((digest, self.input_size))
        if model is None:
            wrapper = fixed_size(folded, self.input_size)
            example = torch.zeros(1, 3, self.input_size, self.input_size)
            try:
                with torch.no_grad(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # TracerWarnings for the shape checks, constant here
                    model = ov.convert_model(wrapper, example_input=example,
                                             input=[ov.PartialShape([-1, 3, self.input_size, self.input_size])])
            except Exception as e:
                raise BackendUnavailable(f"OpenVINO could not convert the model ({_summary(e)})") from e
            if len(_CONVERTED) >= _CONVERTED_MAX:
                _CONVERTED.pop(next(iter(_CONVERTED)))
            _CONVERTED[(digest, self.input_size)] = model
        self.timings["convert_s"] = time.perf_counter() - t
        if self.precision == "int8":
            from engine.runtime import ov_int8

            t = time.perf_counter()
            images = ov_int8.calibration_images(self.input_size) if self.calibration is None else self.calibration
            model = ov_int8.quantize(model, images)
            self.timings["quantize_s"] = time.perf_counter() - t
        t = time.perf_counter()
        try:
            compiled = core.compile_model(model, self.device, self.config)
        except Exception as e:
            raise BackendUnavailable(f"OpenVINO could not compile the model for {self.device} ({e})") from e
        self.timings["compile_s"] = time.perf_counter() - t
        return compiled

    def _store(self, compiled, key: ov_cache.CacheKey) -> None:
        assert self.cache_path is not None
        try:
            buf = compiled.export_model()
            payload = buf.getvalue() if hasattr(buf, "getvalue") else bytes(buf)
            ov_cache.save(self.cache_path, key, payload)
        except (OSError, RuntimeError) as e:  # a read-only data folder: run without the cache
            log.warning("could not write the compiled-model cache %s (%s)", self.cache_path, e)

    def _check(self, folded: torch.nn.Module) -> None:
        x = probe_image(self.input_size)
        with torch.inference_mode():
            ref = F.normalize(folded.forward_features(x)["x_norm_clstoken"], dim=-1)
        got = F.normalize(self.run(x)["x_norm_clstoken"].float(), dim=-1)
        cos = float((ref * got).sum())
        floor = MIN_COSINE["int8" if self.precision == "int8" else self.hint]
        if not cos >= floor:  # also catches NaN
            if self.cache_path is not None:
                self.cache_path.unlink(missing_ok=True)
            raise BackendUnavailable(f"OpenVINO's {self.precision} output differs from torch's (CLS cosine "
                                     f"{cos:.5f} < {floor})")
        self.probe_cosine = cos

    # -------------------------------------------------------------------------------------------- running
    def run(self, x: torch.Tensor, patches: bool = True) -> dict[str, torch.Tensor]:
        if x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(f"the OpenVINO model runs {self.input_size}x{self.input_size} inputs, got "
                             f"{tuple(x.shape[-2:])}")
        arr = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        with self.lock:
            out = self.request.infer({0: arr})
            cls = np.array(out[0], dtype=np.float32, copy=True)  # the request reuses its output buffers
            patch = np.array(out[1], dtype=np.float32, copy=True) if patches else None
        if patch is None:
            return {"x_norm_clstoken": torch.from_numpy(cls)}
        return {"x_norm_clstoken": torch.from_numpy(cls), "x_norm_patchtokens": torch.from_numpy(patch)}
