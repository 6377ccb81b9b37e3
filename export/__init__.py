"""export: split a trained TPO model into ONNX graphs and TensorRT engines described by one manifest."""

# Options of `tpo export`, here (no torch, no onnx) so that registering the command needs neither.
DEFAULT_OPSET = 18
EXPORTERS = ("dynamo", "torchscript")
LLM_GRAPHS = ("plain", "gqa")  # past/present graph (any provider, TensorRT) or the GQA graph (ORT GenAI builder)
