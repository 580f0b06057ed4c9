"""abgate exporters: ONNX export, fine-tuning, index building and offline evaluation."""
