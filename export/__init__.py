"""export: split a trained TPO model into ONNX graphs and TensorRT engines described by one manifest."""
