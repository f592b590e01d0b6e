"""ONNX export, parity checks and quantisation (torch; run once, never on the device)."""
