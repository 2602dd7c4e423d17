"""Devices as ``edgeinfer.backends.cuda.device_info()`` describes them, shared by the TensorRT policy tests
(tests/edgeinfer/trt_policy): a Jetson AGX Orin with JetPack 6 and an x86 workstation with an RTX 3090."""

ORIN = {"tensorrt_version": "10.3.0.30", "tensorrt_cuda": "12", "cuda_python": "12.6", "gpu_name": "Orin", "compute_capability": "8.7",
        "integrated": True, "dla_cores": 2, "platform": "linux-aarch64"}
RTX = {"tensorrt_version": "10.3.0.30", "tensorrt_cuda": "12", "gpu_name": "NVIDIA GeForce RTX 3090",
       "compute_capability": "8.6", "integrated": False, "dla_cores": 0, "platform": "linux-x86_64"}
