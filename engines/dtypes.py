"""Which dtype a local model runs in when the user says ``auto`` (``engines.dtypes``).

bfloat16 halves the weights' memory traffic and, on hardware with native bf16 matrix instructions,
doubles the arithmetic rate: on a GPU that supports it, and on a CPU with AVX512-BF16 or AMX, the
transformers engine generates in bf16 by default. A CPU without them (AVX2 only) emulates bf16 in
oneDNN, several times slower than float32, so there ``auto`` stays float32. ``dtype="float32"``
forces full precision anywhere.
"""

from __future__ import annotations


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX512-BF16 or AMX): there bf16 roughly
    doubles generation speed; without them (AVX2 only) oneDNN emulates bf16 and it is several times
    slower than float32."""
    try:
        import torch

        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):  # an older torch: read the kernel's CPU flags
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as f:
                flags = next((line for line in f if line.startswith("flags")), "").split()
        except OSError:
            return False
        return "avx512_bf16" in flags or "amx_bf16" in flags


def auto_dtype(device) -> str:
    """``dtype="auto"``: bfloat16 on a GPU that supports it and on a CPU with native bf16 matrix
    instructions (cpu_has_fast_bf16), float32 elsewhere."""
    import torch

    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    if device.type == "cpu":
        return "bfloat16" if cpu_has_fast_bf16() else "float32"
    return "float32"


def score_dtype_for(score_dtype: str | None, dtype: str, model_dtype, device):
    """The torch dtype scoring runs in. ``None``/"auto": float32 where ``dtype="auto"`` picked bf16 on a
    CPU (bf16 there is for generation speed; labels keep float32's p_a), else the model's own dtype."""
    import torch

    if score_dtype not in (None, "auto", "float32", "bfloat16", "float16"):
        raise ValueError(f"score_dtype must be one of auto, float32, bfloat16, float16, got {score_dtype!r}")
    if score_dtype not in (None, "auto"):
        return getattr(torch, score_dtype)
    if dtype == "auto" and device.type == "cpu" and model_dtype == torch.bfloat16:
        return torch.float32
    return model_dtype
