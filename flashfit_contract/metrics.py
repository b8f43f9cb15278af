"""Every Prometheus metric the server exposes: the one list that the server, the Grafana
dashboard, the alert rules and `flashfit doctor` all read. Pure constants, no imports."""

HTTP_REQUESTS_TOTAL = "http_requests_total"
HTTP_REQUEST_DURATION_SECONDS = "http_request_duration_seconds"
MODEL_INFERENCE_DURATION_SECONDS = "model_inference_duration_seconds"
VECTOR_STORE_SIZE = "vector_store_size"
# 1, labelled with the device the models run on (cpu|cuda) and the CLIP slot's precision.
INFERENCE_DEVICE_INFO = "inference_device_info"
# This worker's GPU memory: held by tensors, reserved by torch's allocator, the device's total
# (all 0 on the CPU).
GPU_MEMORY_ALLOCATED_BYTES = "gpu_memory_allocated_bytes"
GPU_MEMORY_RESERVED_BYTES = "gpu_memory_reserved_bytes"
GPU_MEMORY_TOTAL_BYTES = "gpu_memory_total_bytes"

# Names as they appear in an exposition, histogram series included; queries may use only these
# (plus `up`, which Prometheus itself adds to every target).
EXPOSED_SERIES = frozenset(
    {
        HTTP_REQUESTS_TOTAL,
        f"{HTTP_REQUEST_DURATION_SECONDS}_bucket",
        f"{HTTP_REQUEST_DURATION_SECONDS}_sum",
        f"{HTTP_REQUEST_DURATION_SECONDS}_count",
        f"{MODEL_INFERENCE_DURATION_SECONDS}_bucket",
        f"{MODEL_INFERENCE_DURATION_SECONDS}_sum",
        f"{MODEL_INFERENCE_DURATION_SECONDS}_count",
        VECTOR_STORE_SIZE,
        INFERENCE_DEVICE_INFO,
        GPU_MEMORY_ALLOCATED_BYTES,
        GPU_MEMORY_RESERVED_BYTES,
        GPU_MEMORY_TOTAL_BYTES,
    }
)
PROMETHEUS_BUILTIN_SERIES = frozenset({"up"})
