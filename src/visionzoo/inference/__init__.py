"""Inference: any model file (checkpoint, safetensors, TorchScript, torch.export, ONNX) loaded, evaluated,
predicted with, exported, quantised, benchmarked and run offline."""
