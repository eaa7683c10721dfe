"""xmm-enhance: super-resolved and de-noised XMM-Newton EPIC-pn images on a CPU, without SAS."""
import os as _os

__version__ = "0.1.0"

__all__ = ["__version__"]

# ONNX Runtime's official builds collect usage telemetry: on import they write a device id and
# an upload queue under ~/.cache/Microsoft/DeveloperTools. A batch tool run from cron should
# write nothing outside its output folder and send nothing anywhere, so it is off unless the
# user has set the variable (ONNX Runtime's documented switch, read before it initialises).
_os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
