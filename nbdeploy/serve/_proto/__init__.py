"""Generated protobuf code for the Open Inference Protocol's gRPC service (KServe / Triton V2),
vendored from tritonclient 2.73.0 (BSD-3-Clause, see LICENSE here): ``service_pb2`` holds the
``inference.GRPCInferenceService`` messages, ``model_config_pb2`` the ones they import.

They are registered in ``POOL``, a descriptor pool of their own, so that a process which also
imports ``tritonclient.grpc`` (a test, a notebook) does not get the same ``inference.*`` names
twice in protobuf's default pool. Needs protobuf >= 6.33.5, < 7 (the generated code checks it).
"""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
