"""The nbdeploy inference server: Open Inference Protocol (V2) over HTTP for ONNX models.

This package is copied alone into the endpoint image, next to an empty ``nbdeploy/__init__.py``:
it imports nothing else from nbdeploy and only stdlib, numpy, onnxruntime, starlette, uvicorn
and prometheus_client. Run it with ``python -m nbdeploy.serve --model-repository DIR``.
"""

__version__ = "0.1.0"
