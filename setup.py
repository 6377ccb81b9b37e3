"""tpo-edge: train, export and deploy Task-Preference-Optimized video MLLMs on NVIDIA GPUs and Jetson."""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
version = {}
exec((ROOT / "tpo_core" / "__init__.py").read_text(), version)

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
    install_requires=[
        # torch: install the build for your machine first (CPU: `pip install torch==2.13.0`); any >=2.3 works.
        "torch>=2.3",
        "transformers>=4.56,<5",  # 4.56 brought the SAM2 video classes; 5.x is not yet validated
        "peft>=0.13",
        "accelerate>=1.0",
        "safetensors>=0.4",
        "numpy>=1.24",
        "scipy>=1.10",
        "decord>=0.6",
        "av>=12",
        "pillow>=9",  # PNG masks (OpenCV cannot read PNGs in a process that imported decord)
        "opencv-python-headless>=4.8",
        "tokenizers>=0.20",
        "sentencepiece>=0.2",
        "protobuf>=4",
        "onnx>=1.16",
        "onnxscript>=0.2",
        "onnxruntime>=1.18",
        "optimum-onnx>=0.1",
        "tqdm>=4.66",
        "rich>=13",
        "matplotlib>=3.7",
    ],
    extras_require={
        "gpu": ["onnxruntime-gpu>=1.18", "triton>=3.0"],
        # `tpo export --llm-graph gqa`: ONNX Runtime GenAI's model builder (build time only; on CUDA machines
        # onnxruntime-genai-cuda, which ships the same builder, sits beside onnxruntime-gpu)
        "gqa": ["onnxruntime-genai>=0.18"],
        "trt": ["tensorrt-rtx>=1.0"],  # builds engines anywhere (also CPU-only machines); runs on RTX GPUs
        "tensorrt": ["tensorrt>=10.3"],  # servers; on Jetson use the JetPack TensorRT instead
        # triton: its CPU interpreter (TRITON_INTERPRET=1) tests the fused mask kernel on machines without a GPU
        "test": ["pytest>=8", "ruff>=0.6", "tensorrt-rtx>=1.0", "triton>=3.0", "onnxruntime-genai>=0.18"],
    },
    entry_points={"console_scripts": ["tpo=tpo_core.cli:main"]},
    classifiers=["Programming Language :: Python :: 3", "License :: OSI Approved :: Apache Software License"],
)
