"""tpo-edge: train, export and deploy Task-Preference-Optimized video MLLMs on NVIDIA GPUs and Jetson."""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
version = {}
exec((ROOT / "tpo_core" / "__init__.py").read_text(), version)

# What `runtime/` imports (tests/test_packaging.py runs an export folder with torch, transformers and peft blocked).
RUNTIME = [
    "numpy>=1.24",
    "onnxruntime>=1.18",
    "tokenizers>=0.22",
    # clip reading; PyPI has decord wheels for x86-64 only: on aarch64 (Jetson, Grace) build it from source
    'decord>=0.6; platform_machine == "x86_64" or platform_machine == "AMD64"',
    "av>=12",  # annotated MP4 writer, network streams (stall detection), the PyAV reader fallback
    "opencv-python-headless>=4.8",  # cameras, resizing, drawing
]
# The PyTorch model (tpo_core): reference inference, loading checkpoints, the tokenizer.model conversion.
# torch: install the build for your machine first (CPU: `pip install torch==2.13.0`); any >=2.3 works.
MODEL = [
    "torch>=2.3",
    "transformers>=5.17,<6",  # SAM2-video, BLIP-2 Q-Former and Mistral modules (tpo_core/modeling/hf_compat.py)
    "peft>=0.18.1",  # LoRA; 0.18 is the first release for transformers 5
    "safetensors>=0.4",
    "scipy>=1.10",  # Hungarian matching in the losses
    "pillow>=9",  # PNG masks (OpenCV cannot read PNGs in a process that imported decord)
    "sentencepiece>=0.2",  # tokenizer.model -> tokenizers (with protobuf)
    "protobuf>=4",
    "tqdm>=4.66",
]
EXPORT = [*MODEL, "onnx>=1.16", "onnxscript>=0.2"]
TRAIN = [*MODEL, "accelerate>=1.13", "matplotlib>=3.7"]
GQA = ["onnxruntime-genai>=0.18"]
TEST = sorted({*EXPORT, *TRAIN, *GQA, "pytest>=8", "ruff>=0.6", "hypothesis>=6", "tensorrt-rtx>=1.0", "triton>=3.0"})

setup(
    name="tpo-edge",
    version=version["__version__"],
    description="Task-Preference-Optimized video MLLMs from training to low-latency deployment on NVIDIA GPUs",
    long_description=(ROOT / "README.md").read_text() if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["tpo_core", "tpo_core.*", "export", "export.*", "runtime", "runtime.*"]),
    package_data={"tpo_core": ["assets/**/*", "assets/*/*", "assets/*"]},
    include_package_data=True,
    # base install = the runtime: run an export folder (manifest + ONNX graphs) on ONNX Runtime; no torch
    install_requires=RUNTIME,
    extras_require={
        "export": EXPORT,  # tpo export / verify / demo / ask: the PyTorch model + the ONNX exporters
        "train": TRAIN,  # tpo train / eval / data synth
        # CUDA engines, the fused Triton kernels (mask decode, preprocessing), NVDEC decoding (x86-64 wheels)
        "gpu": ["onnxruntime-gpu>=1.18", "triton>=3.0", "pynvvideocodec>=2.2; platform_machine == 'x86_64'"],
        # `tpo export --llm-graph gqa`: ONNX Runtime GenAI's model builder (build time only; on CUDA machines
        # onnxruntime-genai-cuda, which ships the same builder, sits beside onnxruntime-gpu)
        "gqa": GQA,
        "trt": ["tensorrt-rtx>=1.0"],  # builds engines anywhere (also CPU-only machines); runs on RTX GPUs
        "tensorrt": ["tensorrt>=10.3"],  # servers; on Jetson use the JetPack TensorRT instead
        # the suite and `tpo demo`: export + train, lint, TensorRT-RTX builds on CPU, and triton, whose CPU
        # interpreter (TRITON_INTERPRET=1) tests the fused mask kernel on machines without a GPU
        "test": TEST,
        # every feature, less onnxruntime-gpu (it installs the same `onnxruntime` module as the base's onnxruntime:
        # add [gpu] on CUDA machines) and full TensorRT (servers only; JetPack brings it on Jetson)
        "all": sorted({*EXPORT, *TRAIN, *GQA, "tensorrt-rtx>=1.0", "triton>=3.0"}),
    },
    entry_points={
        "console_scripts": ["tpo=runtime.cli:main"],
        # each part registers its subcommands on the `tpo` umbrella (runtime/cli.py)
        "tpo_edge.commands": ["core=tpo_core.cli:add_parsers", "export=export.cli:add_parsers",
                              "runtime=runtime.commands:add_parsers"],
    },
    classifiers=["Programming Language :: Python :: 3", "License :: OSI Approved :: Apache Software License"],
)
