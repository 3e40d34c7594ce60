"""Import OpenVINO, NNCF and ONNX Runtime without their usage telemetry.

``import openvino`` (2026.4) creates an ``openvino_telemetry`` client in
``openvino.tools.ovc`` and sends an "import" event, and ``import nncf``
(3.4) creates one too. Both clients count a missing consent file
(``~/intel/openvino_telemetry``) as consent, and they write a client id and
usage counters under ``~/intel``. Both packages fall back to a no-op stub when
``openvino_telemetry`` cannot be imported, so this module imports them while
``sys.modules["openvino_telemetry"]`` is ``None`` (which makes that import
raise ImportError), then restores the entry.

ONNX Runtime 1.32 on Linux writes a device id and an event database under
``~/.cache/Microsoft/DeveloperTools/.onnxruntime`` and uploads usage events
when it is imported, unless ``ORT_DISABLE_TELEMETRY`` is set (newer releases
read ``ORT_TELEMETRY_DISABLED``). Both variables are set, unless the user set
them, before ONNX Runtime is imported here.

A package that was imported before these functions run keeps the client it
created. So import defectscope's runtime or export before other OpenVINO or
ONNX Runtime code.
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

TELEMETRY_MODULE = "openvino_telemetry"
ONNXRUNTIME_OPT_OUT = ("ORT_DISABLE_TELEMETRY", "ORT_TELEMETRY_DISABLED")


def import_without_telemetry(name: str) -> ModuleType:
    """Import module ``name`` (``openvino``, ``nncf`` or ``onnxruntime``) with its telemetry off.

    Raises ``ImportError`` when the module is not installed.
    """
    if name in sys.modules:
        return sys.modules[name]
    if name == "onnxruntime":
        for variable in ONNXRUNTIME_OPT_OUT:
            os.environ.setdefault(variable, "1")
        return importlib.import_module(name)
    missing = object()
    previous = sys.modules.get(TELEMETRY_MODULE, missing)
    sys.modules[TELEMETRY_MODULE] = None  # type: ignore[assignment]
    try:
        # openvino.tools.ovc binds its telemetry module when first imported, and nncf imports openvino.
        if name != "openvino" and "openvino" not in sys.modules:
            importlib.import_module("openvino")
        return importlib.import_module(name)
    finally:
        if previous is missing:
            del sys.modules[TELEMETRY_MODULE]
        else:
            sys.modules[TELEMETRY_MODULE] = previous
