"""Background removal with ONNX models through onnxruntime.

`BackgroundRemover` is one session per model and device, created on first use
and reused for the life of the process; `predict()` hides the provider and the
pre- and post-processing, which are each model's authors' own:

- u2net and u2netp (`kind` "u2net"): rembg's arithmetic (resize to the
  model's square input with Lanczos, divide by the image maximum, normalise,
  min-max the first output, Lanczos back to the image size), done in float32
  and without the copies rembg's `remove()` makes, so its masks match rembg's
  within a level.
- MODNet (`kind` "modnet"): MODNet's reference inference (its
  `onnx/inference_onnx.py`): the short side scaled to 512 (both sides cut to
  multiples of 32) with OpenCV's area filter, pixels mapped to -1..1, the
  matte times 255, area-resized back. The area average is taken on the 8-bit
  pixels before the (affine) mapping rather than after it, which moves the
  input by at most half a level and saves a float copy of the photograph.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageChops

from compositor.threads import limited, render_threads
from compositor.timings import StageTimings

if TYPE_CHECKING:
    from compositor.weights import ModelSpec

# onnxruntime phones home from a background thread unless this is set before
# it is imported; an offline tool must never do that.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

DEVICES = ("auto", "cpu", "cuda")
_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RemovalOptions:
    model: str = "u2netp"
    device: str = "auto"
    model_home: Path | None = None

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")


class BackgroundRemover:
    """One onnxruntime session for one model on one device."""

    def __init__(self, spec: ModelSpec, weights: Path, device: str = "auto") -> None:
        import onnxruntime as ort

        self.spec = spec
        self.providers = select_providers(device, ort.get_available_providers())
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: provider fall-back is reported by us, once
        if limited() is not None:  # a batch worker: one item, one core
            options.intra_op_num_threads = render_threads()
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(weights), sess_options=options, providers=self.providers)
        self.input_name = self.session.get_inputs()[0].name
        self.active_providers: list[str] = self.session.get_providers()
        if device != "cpu" and _CUDA in self.providers and _CUDA not in self.active_providers:
            _warn_once("CUDA was asked for but onnxruntime could not start it; running on CPU")

    def predict(self, image: Image.Image, timings: StageTimings | None = None) -> Image.Image:
        """The foreground mask ("L", 0-255) at the image's own size."""
        timings = timings if timings is not None else StageTimings()
        if self.spec.kind == "modnet":
            return self._predict_modnet(image, timings)
        with timings.stage("pre"):
            side = self.spec.input_size
            rgb = image if image.mode == "RGB" else image.convert("RGB")
            # reducing_gap: an integer box reduction before the Lanczos pass,
            # 3.5x faster on a 12 MP photo; the input moves by at most 3 levels
            # and the mask stays at IoU 0.999 with rembg's (README, removeBg).
            small = np.asarray(rgb.resize((side, side), Image.Resampling.LANCZOS, reducing_gap=3.0), np.float32)
            small /= max(float(small.max()), 1e-6)
            small -= np.asarray(self.spec.mean, np.float32)
            small /= np.asarray(self.spec.std, np.float32)
            tensor = np.ascontiguousarray(small.transpose(2, 0, 1)[np.newaxis])
        with timings.stage("inference"):
            prediction = self.session.run(None, {self.input_name: tensor})[0][0, 0]
        with timings.stage("post"):
            low, high = float(prediction.min()), float(prediction.max())
            scaled = (prediction - low) / max(high - low, 1e-12) * 255.0
            mask = Image.fromarray(scaled.astype(np.uint8), "L")
            return mask.resize(image.size, Image.Resampling.LANCZOS)

    def _predict_modnet(self, image: Image.Image, timings: StageTimings) -> Image.Image:
        import cv2

        with timings.stage("pre"):
            rgb = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
            width, height = modnet_input_size(image.width, image.height, self.spec.input_size)
            small = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA).astype(np.float32)
            small -= 127.5
            small /= 127.5
            tensor = np.ascontiguousarray(small.transpose(2, 0, 1)[np.newaxis])
        with timings.stage("inference"):
            matte = self.session.run(None, {self.input_name: tensor})[0][0, 0]
        with timings.stage("post"):
            scaled = (matte * 255).astype(np.uint8)
            return Image.fromarray(cv2.resize(scaled, image.size, interpolation=cv2.INTER_AREA), "L")

    def remove(self, image: Image.Image, timings: StageTimings | None = None) -> Image.Image:
        """The image with its alpha multiplied by the mask. Colour is left as
        it is: the mask acts only as alpha, so the premultiplied blend that
        follows shows no halo."""
        timings = timings if timings is not None else StageTimings()
        mask = self.predict(image, timings)
        with timings.stage("post"):
            if image.mode == "RGBA":
                mask = ImageChops.multiply(image.getchannel("A"), mask)
            rgba = image.convert("RGBA")  # always a new image: the caller's stays as it was
            rgba.putalpha(mask)
            return rgba


def modnet_input_size(width: int, height: int, reference: int) -> tuple[int, int]:
    """MODNet's reference sizing (`get_scale_factor`): the short side to
    `reference` when the image is smaller than it on both sides or larger on
    both, else as it is; then each side cut down to a multiple of 32."""
    new_width, new_height = width, height
    if max(width, height) < reference or min(width, height) > reference:
        if width >= height:
            new_height, new_width = reference, int(width / height * reference)
        else:
            new_width, new_height = reference, int(height / width * reference)
    return max(32, new_width - new_width % 32), max(32, new_height - new_height % 32)


def select_providers(device: str, available: list[str]) -> list[str]:
    """The onnxruntime providers for a device setting, CPU always last."""
    if device == "cpu":
        return [_CPU]
    if _CUDA in available:
        return [_CUDA, _CPU]
    if device == "cuda":
        _warn_once(f"CUDA was asked for but this onnxruntime offers only {', '.join(available)}; running on CPU")
    return [_CPU]


_sessions: dict[tuple[str, str, str], BackgroundRemover] = {}
_sessions_lock = threading.Lock()
_loads: dict[str, int] = {}
_warned: set[str] = set()


def get_remover(options: RemovalOptions) -> BackgroundRemover:
    """The process's session for these options, created on first use."""
    key = (options.model, options.device, str(options.model_home or ""))
    with _sessions_lock:
        remover = _sessions.get(key)
        if remover is None:
            # Imported here: a render without removeBg never needs the model registry.
            from compositor.weights import ModelDamagedError, corrupt_message, get_spec, loadable_path

            spec = get_spec(options.model)
            weights = loadable_path(options.model, options.model_home)  # its content checked, once a process
            try:
                remover = BackgroundRemover(spec, weights, options.device)
            except Exception as exc:  # onnxruntime's own (InvalidProtobuf, Fail, ...): their text names the path
                log.debug("model %s could not be loaded from %s: %s", options.model, weights, exc)
                problem = f"could not be loaded by onnxruntime ({type(exc).__name__}): its file may be damaged"
                raise ModelDamagedError(corrupt_message(options.model, options.model_home, problem)) from None
            _sessions[key] = remover
            _loads[options.model] = _loads.get(options.model, 0) + 1
        return remover


def model_loads() -> dict[str, int]:
    """How many times this process has loaded each model (once each, unless sessions were reset)."""
    with _sessions_lock:
        return dict(_loads)


def remove_background(image: Image.Image, options: RemovalOptions | None = None) -> Image.Image:
    """The image with its alpha multiplied by the foreground mask, computed at
    the image's natural resolution (SPEC.md, composite step 3)."""
    return get_remover(options or RemovalOptions()).remove(image)


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


def reset_sessions() -> None:
    """Forget every session (tests, and after the model home changes)."""
    with _sessions_lock:
        _sessions.clear()
        _warned.clear()
