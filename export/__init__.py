"""ONNX export of the sampler and generator (``onnx_export``, ``pipeline``: need torch) and their
onnxruntime serving (``runtime``, ``sessions``, ``names``, ``errors``, ``triton``: no torch).

Nothing is imported here, so ``import export.runtime`` never pulls in torch.
"""
